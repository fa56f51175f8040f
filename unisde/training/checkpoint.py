"""Atomic training checkpoints and run metadata.

Layout of an output directory (a diffusers pipeline folder plus training state)::

    OUTPUT_DIR/
      model_index.json, unet/, scheduler/, README.md   the exported pipeline (see unisde.training.export)
      unisde_run.json                                  what defines the run (refuses to mix two runs)
      checkpoint-<step>/                               accelerate state of every rank + unisde_checkpoint.json
      logs/                                            trackers

A checkpoint is written by every rank into ``.checkpoint-<step>.tmp`` (accelerate's ``save_state``: model and
optimizer by the main process, ``random_states_<rank>.pkl`` by each rank), then the main process records the
file list with sizes in ``unisde_checkpoint.json`` and renames the folder into place with ``os.replace``.
A run killed while saving therefore leaves at most a ``.tmp`` folder that nothing reads; the previous
``checkpoint-*`` stays intact. A checkpoint folder without a matching manifest is reported as corrupt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable

MANIFEST = "unisde_checkpoint.json"
RUN_FILE = "unisde_run.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
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


def validate_checkpoint(path: str) -> dict:
    """Check that ``path`` is a complete checkpoint (manifest present, every listed file present with its
    recorded size, the weights' safetensors header readable) and return its manifest; CheckpointError otherwise."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a directory)")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise CheckpointError(f"checkpoint {path!r} is incomplete or corrupt: no {MANIFEST} (a save that did not finish?)")
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
            raise CheckpointError(f"checkpoint {path!r} is corrupt: {rel} has {os.path.getsize(full)} bytes, expected {size}")
        if rel.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(full, framework="pt") as fh:
                    fh.keys()
            except Exception as exc:  # any parse failure means the weights cannot be restored
                raise CheckpointError(f"checkpoint {path!r} is corrupt: {rel} does not parse ({exc})") from None
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


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: int | None = None,
                    before_commit: Callable[[str], None] | None = None) -> str:
    """Save the accelerate state of every rank as ``output_dir/checkpoint-<step>`` atomically (module doc).

    Must be called on every rank. ``state`` (JSON-able: step, data position, run fingerprint) goes into the
    manifest. ``total_limit`` keeps only that many newest checkpoints (pruned after the new one is committed,
    so a failure never leaves fewer). ``before_commit`` is a test hook run on the main process just before the
    rename. Returns the final path.
    """
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f".checkpoint-{step}.tmp")
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = _manifest_files(tmp)
        write_json_atomic(os.path.join(tmp, MANIFEST), {**state, "step": int(step), "files": files,
                                                        "num_processes": accelerator.num_processes})
        _fsync_dir(tmp)
        if before_commit is not None:
            before_commit(tmp)
        trash = None
        if os.path.exists(final):
            trash = os.path.join(output_dir, f".checkpoint-{step}.old")
            if os.path.exists(trash):
                shutil.rmtree(trash)
            os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def remove_stale_temporaries(output_dir: str) -> None:
    """Delete ``.checkpoint-*.tmp`` / ``.old`` and ``.pipeline-*.tmp`` folders left by a run killed while saving,
    and restore a pipeline entry whose replacement was interrupted."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith(".checkpoint-") and (name.endswith(".tmp") or name.endswith(".old")):
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
        raise ValueError(f"--output_dir {output_dir!r} is not empty and holds no unisde run ({', '.join(sorted(entries)[:5])}"
                         f"{', …' if len(entries) > 5 else ''}); choose another directory or pass --overwrite_output_dir")
    prev = previous.get("fingerprint", previous)
    if prev != fingerprint:
        diff = sorted(k for k in set(prev) | set(fingerprint) if prev.get(k) != fingerprint.get(k))
        raise ValueError(f"--output_dir {output_dir!r} holds a different run (differs in: {', '.join(diff)}); "
                         "choose another directory or pass --overwrite_output_dir")
    if list_checkpoints(output_dir) and not resuming:
        raise ValueError(f"--output_dir {output_dir!r} already holds checkpoints of this run; pass "
                         "--resume_from_checkpoint latest to continue it or --overwrite_output_dir to start over")
    return "same"


def clear_run(output_dir: str) -> None:
    """Remove what a previous unisde run wrote in ``output_dir`` (checkpoints, pipeline, run file, logs); other
    files are left alone."""
    for name in os.listdir(output_dir):
        full = os.path.join(output_dir, name)
        if _CKPT_RE.match(name) or name in PIPELINE_ENTRIES or name in (RUN_FILE, "logs") or name.startswith(".checkpoint-"):
            if os.path.isdir(full):
                shutil.rmtree(full)
            else:
                os.remove(full)


__all__ = ["CheckpointError", "save_checkpoint", "validate_checkpoint", "resolve_resume", "latest_checkpoint",
           "list_checkpoints", "check_output_dir", "clear_run", "remove_stale_temporaries", "write_json_atomic", "read_run"]
