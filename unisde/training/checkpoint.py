"""Atomic training checkpoints and run metadata.

Layout of an output directory (a diffusers pipeline folder plus training state)::

    OUTPUT_DIR/
      model_index.json, unet/, scheduler/, README.md   the exported pipeline (see unisde.training.export)
      unisde_run.json                                  what defines the run (refuses to mix two runs)
      checkpoint-<step>/                               one checkpoint (below)
      logs/                                            trackers

A checkpoint folder (layout ``FORMAT`` 2) holds::

    model.safetensors               model weights (accelerate's ``save_state``)
    optimizer.bin, scheduler.bin    optimizer and LR-schedule state (accelerate, ``torch.save``); scaler.pt with fp16
    unisde_rng_<rank>.safetensors   each rank's torch CPU (and CUDA/XPU/MPS), numpy and python RNG states
    unisde_ema.safetensors          EMA weights (``--use_ema``); its scalars as JSON in the file's metadata
    unisde_checkpoint.json          manifest: layout version, step, data position (micro-batches seen), run
                                    fingerprint, accelerate's micro-step counter, every file with its size in bytes
    random_states_<rank>.pkl        accelerate's own pickled copy of the RNG states: written, never read

What resume loads (:func:`load_checkpoint`): safetensors and JSON as they are, and the pickled optimizer,
scheduler and scaler files only through ``torch.load(weights_only=True)``. :func:`validate_checkpoint` refuses,
before anything is loaded, a checkpoint holding a pickle that names anything ``weights_only`` does not allow (a
pickle can run code when it is loaded), a pickle that is not a ``torch.save`` archive, or an accelerate
custom-object pickle (``custom_checkpoint_<i>.pkl``, which this layout never writes); the error names the file.
Checkpoints of layout 1 (earlier unisde: EMA in ``custom_checkpoint_0.pkl``, RNG only in
``random_states_<rank>.pkl``) load through the same ``weights_only`` path, numpy arrays allowed for the RNG.

Saving: every rank writes into ``.checkpoint-<step>.tmp``, then the main process writes the manifest and renames
the folder into place with ``os.replace``; re-saving an existing step first renames the old folder to
``.checkpoint-<step>.old``. A run killed at any point leaves the previous checkpoint either in place or as that
``.old`` folder: :func:`recover_interrupted_saves` (run by every rank when training starts, before "latest" is
resolved) puts a complete ``.old`` back as ``checkpoint-<step>``, and :func:`remove_stale_temporaries` then deletes
what is left (an uncommitted ``.tmp`` included). A checkpoint folder without a matching manifest is
reported as corrupt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import Callable

logger = logging.getLogger("unisde.train")

MANIFEST = "unisde_checkpoint.json"
RUN_FILE = "unisde_run.json"
FORMAT = 2
"""Checkpoint layout version recorded in the manifest (a manifest without one is layout 1)."""
EMA_FILE = "unisde_ema.safetensors"
RNG_FILE = "unisde_rng_{rank}.safetensors"
LEGACY_EMA_FILE = "custom_checkpoint_0.pkl"
LEGACY_RNG_FILE = "random_states_{rank}.pkl"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_SAVE_LEFTOVER_RE = re.compile(r"^\.checkpoint-(\d+)\.(tmp|old|del)$")
_CUSTOM_PICKLE_RE = re.compile(r"^custom_checkpoint_\d+\.pkl$")
_RNG_PICKLE_RE = re.compile(r"^random_states_\d+\.pkl$")
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
_NUMPY_GLOBALS = (
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
)
"""Globals an accelerate RNG pickle (numpy's MT19937 key array) may name beyond torch's ``weights_only`` set."""
PIPELINE_ENTRIES = ("model_index.json", "unet", "scheduler", "README.md")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str, data) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace`` (never a half-written file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints (those with a manifest) in ``output_dir`` as sorted (step, path) pairs."""
    if not os.path.isdir(output_dir):
        return []
    out = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, MANIFEST)):
            out.append((int(m.group(1)), path))
    return sorted(out)


def latest_checkpoint(output_dir: str) -> str | None:
    """Path of the complete checkpoint with the highest step, or None."""
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def _torch_pickle_names(full: str) -> list[str] | None:
    """The globals (``module.name``) the pickle inside the ``torch.save`` archive ``full`` would import, read from
    its opcodes without unpickling anything; None where this torch cannot tell (before 2.5)."""
    import torch

    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    return None if scan is None else list(scan(full))


def _check_pickle(path: str, rel: str, fmt: int) -> None:
    """CheckpointError naming ``rel`` unless it is a pickle unisde would load only with ``weights_only=True``."""
    import zipfile

    name = os.path.basename(rel)
    if fmt >= FORMAT and _CUSTOM_PICKLE_RE.match(name):
        raise CheckpointError(
            f"checkpoint {path!r} holds {rel}, an accelerate custom-object pickle that unisde never "
            "writes (its EMA and RNG states are safetensors); refusing to load a checkpoint that "
            "was altered after it was saved"
        )
    full = os.path.join(path, rel)
    if not zipfile.is_zipfile(full):
        raise CheckpointError(
            f"checkpoint {path!r}: {rel} is not a torch.save archive; unisde does not load raw "
            "pickles (unpickling can run arbitrary code), so this checkpoint is refused"
        )
    try:
        names = _torch_pickle_names(full)
    except Exception as exc:  # a damaged archive: nothing in it can be trusted
        raise CheckpointError(f"checkpoint {path!r}: {rel} cannot be read as a torch.save archive ({exc})") from None
    allowed = _NUMPY_GLOBALS if _RNG_PICKLE_RE.match(name) else ()
    unsafe = sorted(set(names or ()) - set(allowed))
    if unsafe:
        raise CheckpointError(
            f"checkpoint {path!r}: {rel} is a pickle that names {', '.join(unsafe)}, which "
            "torch.load(weights_only=True) does not allow; loading it could run arbitrary code, so "
            "this checkpoint is refused"
        )


def validate_checkpoint(path: str) -> dict:
    """Check that ``path`` is a complete checkpoint (manifest present, every listed file present with its
    recorded size, the weights' safetensors header readable) that holds no pickle unisde refuses to load (module
    doc), and return its manifest; CheckpointError otherwise. Nothing is unpickled."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a directory)")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise CheckpointError(
            f"checkpoint {path!r} is incomplete or corrupt: no {MANIFEST} (a save that did not finish?)"
        )
    try:
        with open(manifest_path) as fh:
            manifest = json.load(fh)
        files = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: unreadable {MANIFEST} ({exc})") from None
    for rel, size in files.items():
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            raise CheckpointError(f"checkpoint {path!r} is corrupt: {rel} is missing")
        if os.path.getsize(full) != size:
            raise CheckpointError(
                f"checkpoint {path!r} is corrupt: {rel} has {os.path.getsize(full)} bytes, expected {size}"
            )
        if rel.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(full, framework="pt") as fh:
                    fh.keys()
            except Exception as exc:  # any parse failure means the weights cannot be restored
                raise CheckpointError(f"checkpoint {path!r} is corrupt: {rel} does not parse ({exc})") from None
    fmt = manifest.get("format", 1) if isinstance(manifest, dict) else 1
    for rel in sorted(set(files) | set(_manifest_files(path))):  # listed or not: any pickle in the folder
        if rel.lower().endswith(_PICKLE_SUFFIXES):
            _check_pickle(path, rel, fmt)
    return manifest


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """The checkpoint folder ``--resume_from_checkpoint`` names: ``latest`` (None when there is none yet), a
    path, or a folder name inside ``output_dir``. The result is validated; CheckpointError if missing/corrupt."""
    if not resume:
        return None
    if resume == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            return None
    else:
        path = resume if os.path.isdir(resume) or os.path.isabs(resume) else os.path.join(output_dir, resume)
        if not os.path.isdir(path) and os.path.isdir(resume):
            path = resume
    validate_checkpoint(path)
    return path


def _manifest_files(path: str) -> dict:
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            if name == MANIFEST:
                continue
            full = os.path.join(root, name)
            files[os.path.relpath(full, path)] = os.path.getsize(full)
    return files


# ---------------------------------------------------------------------------------------------- states
def _device_rng_modules():
    """(name, module) of the torch accelerator back-ends present whose RNG state is saved: cuda, xpu."""
    import torch

    out = []
    for name in ("cuda", "xpu"):
        mod = getattr(torch, name, None)
        if mod is not None and hasattr(mod, "get_rng_state_all") and mod.is_available():
            out.append((name, mod))
    return out


def save_rng_state(file: str) -> None:
    """Write this process's RNG states to the safetensors ``file``: torch CPU (``torch_cpu``), every CUDA/XPU device
    (``cuda_<i>``), MPS, numpy's MT19937 key (``numpy_key``) and python's ``random`` state (``python_state``) as
    tensors; numpy's position and cached Gaussian and python's version and cached Gaussian as JSON metadata."""
    import random

    import numpy as np
    import torch
    from safetensors.torch import save_file

    tensors = {"torch_cpu": torch.get_rng_state()}
    for name, mod in _device_rng_modules():
        for i, st in enumerate(mod.get_rng_state_all()):
            tensors[f"{name}_{i}"] = st.cpu()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        tensors["mps"] = torch.mps.get_rng_state()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_key"] = torch.from_numpy(np.asarray(key, dtype=np.int64))
    version, internal, gauss = random.getstate()
    tensors["python_state"] = torch.tensor(internal, dtype=torch.int64)
    meta = {
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
        "python": json.dumps([version, gauss]),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, file, metadata=meta)


def _set_rng(torch_cpu, devices: dict, numpy_state, python_state, source: str) -> None:
    """Install RNG states; ``devices`` maps a back-end name to its per-device states. Device states that do not fit
    this machine are skipped with a warning naming ``source``."""
    import random

    import numpy as np
    import torch

    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_cpu)
    present = dict(_device_rng_modules())
    for name, states in devices.items():
        mod = present.get(name)
        if mod is None or len(states) != mod.device_count():
            logger.warning(
                "%s holds RNG states of %d %s device(s), which this process does not have: not restored",
                source,
                len(states),
                name,
            )
            continue
        mod.set_rng_state_all(states)


def load_rng_state(file: str) -> None:
    """Restore the RNG states :func:`save_rng_state` wrote to ``file``."""
    import numpy as np
    import torch
    from safetensors import safe_open

    with safe_open(file, framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    version, gauss = json.loads(meta["python"])
    devices: dict = {}
    for name in ("cuda", "xpu"):
        count = sum(1 for k in tensors if re.fullmatch(rf"{name}_\d+", k))
        if count:
            devices[name] = [tensors[f"{name}_{i}"] for i in range(count)]
    if "mps" in tensors:
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            torch.mps.set_rng_state(tensors["mps"])
    numpy_state = (kind, tensors["numpy_key"].numpy().astype(np.uint32), pos, has_gauss, cached)
    python_state = (version, tuple(int(v) for v in tensors["python_state"].tolist()), gauss)
    _set_rng(tensors["torch_cpu"], devices, numpy_state, python_state, file)


def save_ema_state(ema, file: str) -> None:
    """Write a diffusers ``EMAModel``'s state to the safetensors ``file``: ``shadow_params.<i>`` tensors, every other
    entry of its ``state_dict`` (decay, optimization_step, …) as JSON in the metadata key ``ema``."""
    from safetensors.torch import save_file

    state = ema.state_dict()
    tensors = {f"shadow_params.{i}": p.detach().cpu().contiguous() for i, p in enumerate(state["shadow_params"])}
    scalars = {k: v for k, v in state.items() if k != "shadow_params"}
    save_file(tensors, file, metadata={"ema": json.dumps(scalars)})


def load_ema_state(ema, file: str) -> None:
    """Restore an ``EMAModel`` from :func:`save_ema_state`'s ``file`` (shadow parameters stay on the CPU until the
    caller moves the EMA)."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as fh:
        state = json.loads((fh.metadata() or {})["ema"])
        shadow = [fh.get_tensor(f"shadow_params.{i}") for i in range(len(list(fh.keys())))]
    if len(shadow) != len(ema.shadow_params):
        raise CheckpointError(f"{file!r} holds {len(shadow)} EMA tensors, the model has {len(ema.shadow_params)}")
    ema.load_state_dict({**state, "shadow_params": shadow})


def _numpy_safe_globals() -> list:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed = [np.ndarray, np.dtype, _reconstruct]
    if hasattr(np, "dtypes"):
        allowed.append(np.dtypes.UInt32DType)
    return allowed


def load_pickled(path: str, rel: str, numpy_arrays: bool = False):
    """``torch.load(path/rel, weights_only=True)`` onto the CPU: tensors and plain containers only (with
    ``numpy_arrays``, numpy arrays too), never arbitrary objects. CheckpointError naming the file otherwise."""
    import torch

    full = os.path.join(path, rel)
    try:
        if numpy_arrays and hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(full, map_location="cpu", weights_only=True)
        return torch.load(full, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path!r}: {rel} cannot be loaded with torch.load(weights_only=True) "
            f"({first}); unisde never unpickles arbitrary objects (that can run code), so this "
            "checkpoint is refused"
        ) from None


def _load_model_weights(path: str, module) -> None:
    """Load ``model.safetensors`` into the unwrapped ``module`` (a DDP ``module.`` key prefix is dropped, so a
    checkpoint resumes with another number of processes)."""
    from safetensors.torch import load_file

    rel = "model.safetensors"
    if not os.path.isfile(os.path.join(path, rel)):
        raise CheckpointError(f"checkpoint {path!r} has no {rel} (unisde saves model weights only as safetensors)")
    state = load_file(os.path.join(path, rel), device="cpu")
    wrapped = bool(state) and all(k.startswith("module.") for k in state)
    if wrapped and not any(k.startswith("module.") for k in module.state_dict()):
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path!r}: {rel} does not fit the model ({str(exc)[:500]})") from None


def load_checkpoint(accelerator, path: str, model, optimizer, lr_scheduler, ema=None) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into the prepared ``model``, ``optimizer`` and
    ``lr_scheduler``, the gradient scaler, this rank's RNG states, accelerate's micro-step counter and ``ema``;
    return its manifest. Nothing is unpickled except through ``torch.load(weights_only=True)`` (module doc).

    Must be called on every rank. Sharded layouts (FSDP, DeepSpeed, Megatron) are read by accelerate's own
    ``load_state`` (``load_kwargs={"weights_only": True}``; DeepSpeed's engine reads its own files).
    """
    from accelerate.utils import DistributedType

    manifest = validate_checkpoint(path)
    legacy = manifest.get("format", 1) < FORMAT
    files = manifest["files"]
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        accelerator.load_state(path, load_kwargs={"weights_only": True})
    else:
        _load_model_weights(path, accelerator.unwrap_model(model))
        optimizer.load_state_dict(load_pickled(path, "optimizer.bin"))
        lr_scheduler.load_state_dict(load_pickled(path, "scheduler.bin"))
        if getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(load_pickled(path, "scaler.pt"))
    rank = accelerator.process_index
    rng_new, rng_old = RNG_FILE.format(rank=rank), LEGACY_RNG_FILE.format(rank=rank)
    if not legacy and rng_new in files:
        load_rng_state(os.path.join(path, rng_new))
        accelerator.step = int(manifest.get("accelerate_step", 0))
    elif legacy and rng_old in files:
        states = load_pickled(path, rng_old, numpy_arrays=True)
        _set_rng(
            states["torch_manual_seed"],
            {"cuda": states.get("torch_cuda_manual_seed", [])} if "torch_cuda_manual_seed" in states else {},
            states["numpy_random_seed"],
            states["random_state"],
            os.path.join(path, rng_old),
        )
        accelerator.step = int(states.get("step", 0))
    else:
        logger.warning(
            "checkpoint %s holds no RNG state of rank %d: this rank's random stream is not restored", path, rank
        )
    ema_file = LEGACY_EMA_FILE if legacy else EMA_FILE
    if ema is not None:
        if ema_file not in files:
            raise CheckpointError(
                f"checkpoint {path!r} holds no EMA weights ({ema_file}): it was saved without "
                "--use_ema; resume without --use_ema or from a checkpoint that has them"
            )
        if legacy:
            ema.load_state_dict(load_pickled(path, ema_file))
        else:
            load_ema_state(ema, os.path.join(path, ema_file))
    elif ema_file in files:
        logger.warning("checkpoint %s holds EMA weights but --use_ema is off: they are not restored", path)
    return manifest


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def compare_fingerprint(path: str, fingerprint: dict, allow_mismatch: bool = False) -> list[str]:
    """Compare the run fingerprint recorded in checkpoint ``path``'s manifest with ``fingerprint`` (this run's:
    schedule, parameterisation, weighting, noise distribution, data, UNet config). Returns the differences as
    ``"key: checkpoint A, this run B"`` lines; raises CheckpointError listing them unless ``allow_mismatch``
    (``--allow_fingerprint_mismatch``), in which case a warning lists them."""
    with open(os.path.join(path, MANIFEST)) as fh:
        recorded = json.load(fh).get("fingerprint")
    if recorded is None:
        logger.warning(
            "checkpoint %s records no run fingerprint: schedule, parameterisation and model are unchecked", path
        )
        return []
    ours, theirs = _flat(json.loads(json.dumps(fingerprint))), _flat(recorded)
    diffs = [
        f"{k}: checkpoint {theirs.get(k)!r}, this run {ours.get(k)!r}"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k)
    ]
    if diffs and not allow_mismatch:
        raise CheckpointError(
            f"checkpoint {path!r} was written by a different run: "
            + "; ".join(diffs)
            + ". Pass --allow_fingerprint_mismatch to resume it under this run's settings on purpose"
        )
    if diffs:
        logger.warning(
            "resuming %s under different settings (--allow_fingerprint_mismatch): %s", path, "; ".join(diffs)
        )
    return diffs


def save_checkpoint(
    accelerator,
    output_dir: str,
    step: int,
    state: dict,
    total_limit: int | None = None,
    before_commit: Callable[[str], None] | None = None,
    ema=None,
) -> str:
    """Save the accelerate state of every rank, each rank's RNG states and ``ema`` (a diffusers ``EMAModel``, or
    None) as ``output_dir/checkpoint-<step>`` atomically (module doc).

    Must be called on every rank. ``state`` (JSON-able: data position, run fingerprint) goes into the manifest,
    with the step, the layout version and accelerate's micro-step counter. ``total_limit`` keeps only that many
    newest checkpoints (pruned after the new one is committed, so a failure never leaves fewer).
    ``before_commit`` is a test hook run on the main process just before the renames. Returns the final path.
    """
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f".checkpoint-{step}.tmp")
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    os.makedirs(tmp, exist_ok=True)
    save_rng_state(os.path.join(tmp, RNG_FILE.format(rank=accelerator.process_index)))
    if ema is not None and accelerator.is_main_process:
        save_ema_state(ema, os.path.join(tmp, EMA_FILE))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = _manifest_files(tmp)
        write_json_atomic(
            os.path.join(tmp, MANIFEST),
            {
                **state,
                "step": int(step),
                "files": files,
                "format": FORMAT,
                "num_processes": accelerator.num_processes,
                "accelerate_step": int(getattr(accelerator, "step", 0)),
            },
        )
        _fsync_dir(tmp)
        if before_commit is not None:
            before_commit(tmp)
        trash = None
        if os.path.exists(final):
            # from here until the second rename the checkpoint exists only as .old: recover_interrupted_saves
            # puts it back if the run dies in between
            trash = os.path.join(output_dir, f".checkpoint-{step}.old")
            if os.path.exists(trash):
                shutil.rmtree(trash)
            os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)
        if total_limit is not None:
            for old_step, old in list_checkpoints(output_dir)[:-total_limit]:
                _remove_checkpoint(output_dir, old_step, old)
    accelerator.wait_for_everyone()
    return final


def _remove_checkpoint(output_dir: str, step: int, path: str) -> None:
    """Delete a checkpoint folder: renamed to ``.checkpoint-<step>.del`` first, so that a run killed while deleting
    never leaves a half-deleted ``checkpoint-<step>`` that looks complete."""
    doomed = os.path.join(output_dir, f".checkpoint-{step}.del")
    if os.path.exists(doomed):
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def recover_interrupted_saves(output_dir: str) -> list[str]:
    """Put back every ``checkpoint-<step>`` that a re-save killed between its two renames left only as
    ``.checkpoint-<step>.old`` (the committed previous checkpoint), if that folder validates; returns the restored
    paths. A ``.tmp`` folder is never promoted: its save was not committed, so it is discarded like any
    unfinished save. Only renames, never deletes, so every rank may call it at once (a rank that loses the race
    finds the checkpoint already back)."""
    restored: list[str] = []
    if not os.path.isdir(output_dir):
        return restored
    for name in sorted(os.listdir(output_dir)):
        m = _SAVE_LEFTOVER_RE.match(name)
        if not m or m.group(2) != "old":
            continue
        final = os.path.join(output_dir, f"checkpoint-{m.group(1)}")
        candidate = os.path.join(output_dir, name)
        if os.path.exists(final) or not os.path.isdir(candidate):
            continue
        try:
            validate_checkpoint(candidate)
            os.replace(candidate, final)
        except CheckpointError:  # half-deleted or foreign: remove_stale_temporaries discards it
            continue
        except OSError:  # another rank restored it first (source gone or destination not empty)
            continue
        restored.append(final)
    if restored:
        _fsync_dir(output_dir)
    return restored


def remove_stale_temporaries(output_dir: str) -> None:
    """Restore checkpoints and pipeline entries whose replacement was interrupted (:func:`recover_interrupted_saves`
    and the export's ``ENTRY.old``), then delete the ``.checkpoint-*.tmp`` / ``.old`` / ``.del`` and
    ``.pipeline-*.tmp`` folders left by a run killed while saving."""
    if not os.path.isdir(output_dir):
        return
    recover_interrupted_saves(output_dir)
    for name in os.listdir(output_dir):
        if _SAVE_LEFTOVER_RE.match(name):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
        if name.startswith(".pipeline-") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    # an export killed between its two renames leaves ENTRY.old and no ENTRY: put the old one back
    for entry in PIPELINE_ENTRIES:
        old = os.path.join(output_dir, entry + ".old")
        if os.path.isdir(old):
            if os.path.exists(os.path.join(output_dir, entry)):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, os.path.join(output_dir, entry))


def read_run(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return {"unreadable": True}


def check_output_dir(output_dir: str, fingerprint: dict, overwrite: bool, resuming: bool) -> str:
    """Decide what to do with an existing output directory before training starts.

    Returns "new" (absent or empty), "same" (holds this very run: same fingerprint) or "overwrite".
    Raises ValueError when it holds a different run, foreign files, or checkpoints of this run while not
    resuming — unless ``overwrite`` (``--overwrite_output_dir``).
    """
    if not os.path.exists(output_dir):
        return "new"
    if not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir {output_dir!r} exists and is not a directory")
    entries = [e for e in os.listdir(output_dir) if not e.startswith(".")]
    if not entries:
        return "new"
    if overwrite:
        return "overwrite"
    previous = read_run(output_dir)
    if previous is None:
        raise ValueError(
            f"--output_dir {output_dir!r} is not empty and holds no unisde run "
            f"({', '.join(sorted(entries)[:5])}{', …' if len(entries) > 5 else ''}); choose another "
            "directory or pass --overwrite_output_dir"
        )
    prev = previous.get("fingerprint", previous)
    if prev != fingerprint:
        diff = sorted(k for k in set(prev) | set(fingerprint) if prev.get(k) != fingerprint.get(k))
        raise ValueError(
            f"--output_dir {output_dir!r} holds a different run (differs in: {', '.join(diff)}); "
            "choose another directory or pass --overwrite_output_dir"
        )
    if list_checkpoints(output_dir) and not resuming:
        raise ValueError(
            f"--output_dir {output_dir!r} already holds checkpoints of this run; pass "
            "--resume_from_checkpoint latest to continue it or --overwrite_output_dir to start over"
        )
    return "same"


def clear_run(output_dir: str) -> None:
    """Remove what a previous unisde run wrote in ``output_dir`` (checkpoints, pipeline, run file, logs); other
    files are left alone."""
    for name in os.listdir(output_dir):
        full = os.path.join(output_dir, name)
        ours = name in PIPELINE_ENTRIES or name in (RUN_FILE, "logs") or name.startswith(".checkpoint-")
        if _CKPT_RE.match(name) or ours:
            if os.path.isdir(full):
                shutil.rmtree(full)
            else:
                os.remove(full)


__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "validate_checkpoint",
    "resolve_resume",
    "latest_checkpoint",
    "list_checkpoints",
    "check_output_dir",
    "clear_run",
    "remove_stale_temporaries",
    "recover_interrupted_saves",
    "compare_fingerprint",
    "write_json_atomic",
    "read_run",
    "save_rng_state",
    "load_rng_state",
    "save_ema_state",
    "load_ema_state",
    "load_pickled",
    "FORMAT",
]
