"""Training checkpoints: resume unpickles nothing beyond torch.load(weights_only=True) and refuses hostile pickles,
a checkpoint of another run is refused unless --allow_fingerprint_mismatch, a re-save killed at any step leaves a
valid checkpoint after the next start, --overwrite_output_dir never deletes the checkpoint being resumed, and
loop.py / export.py do not import each other."""

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import unisde.training.checkpoint as C
from unisde.training.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, validate_checkpoint
from unisde.training.loop import default_args, train


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _args(out, **kw):
    base = dict(
        output_dir=str(out),
        train_batch_size=4,
        max_train_steps=4,
        checkpointing_steps=2,
        block_out_channels="8,16",
        norm_num_groups=4,
        attention_levels="none",
        lr_warmup_steps=1,
        logger="none",
        no_progress=True,
        learning_rate=1e-3,
        use_ema=True,
        gradient_accumulation_steps=2,
        schedule="vp-linear",
        prediction_type="epsilon",
        noise_distribution="uniform_t",
    )
    base.update(kw)
    return default_args(**base)


class Killed(RuntimeError):
    pass


def _die_at(step):
    def hook(tmp):
        if tmp.endswith(f".checkpoint-{step}.tmp"):
            raise Killed("simulated crash while saving")

    return hook


def _assert_same_run(a, b):
    torch.testing.assert_close(b.losses, a.losses[-len(b.losses) :], rtol=0, atol=0)
    ma, mb = a.accelerator.unwrap_model(a.model).state_dict(), b.accelerator.unwrap_model(b.model).state_dict()
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=0, atol=0, msg=k)
    for p, q in zip(a.ema.shadow_params, b.ema.shadow_params):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    assert a.ema.optimization_step == b.ema.optimization_step


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight 4-step run, and a run killed while committing checkpoint-4 (checkpoint-2 complete)."""
    root = tmp_path_factory.mktemp("runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = train(_args(root / "straight"))
        with pytest.raises(Killed):
            train(_args(root / "killed"), before_commit=_die_at(4))
    finally:
        torch.set_num_threads(n)
    return straight, root / "killed"


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    for name in os.listdir(dst):  # the interrupted save's leftover: not what these tests are about
        if name.startswith(".checkpoint-"):
            shutil.rmtree(dst / name)
    return dst


class _Evil:
    """Unpickled without restriction, writes the file ``marker``: what a crafted checkpoint pickle could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _relist(ckpt, drop_format=False):
    """Rewrite the manifest's file list (and optionally drop the layout version) after a test edited the folder."""
    path = ckpt / C.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"] = C._manifest_files(str(ckpt))
    if drop_format:
        manifest.pop("format", None)
        manifest.pop("accelerate_step", None)
    path.write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------------------------- no pickle
def test_resume_unpickles_nothing_and_is_exact(runs, tmp_path, monkeypatch):
    straight, killed = runs
    out = _copy_run(killed, tmp_path / "run")
    ckpt = out / "checkpoint-2"
    names = set(os.listdir(ckpt))
    assert {"model.safetensors", C.EMA_FILE, C.RNG_FILE.format(rank=0), C.MANIFEST} <= names
    assert not any(n.startswith("custom_checkpoint") for n in names)
    assert json.loads((ckpt / C.MANIFEST).read_text())["format"] == C.FORMAT

    def no_pickle(*a, **k):
        raise AssertionError("unrestricted unpickling during resume")

    loaded = []
    real_load = torch.load

    def guarded_load(f, *a, **k):
        if k.get("weights_only") is not True:
            raise AssertionError(f"torch.load({f!r}) without weights_only=True")
        loaded.append(os.path.basename(str(f)))
        return real_load(f, *a, **k)

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch, "load", guarded_load)
    resumed = train(_args(out, resume_from_checkpoint="latest"))
    monkeypatch.undo()
    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.global_step == 4 and len(resumed.losses) == 2
    assert sorted(loaded) == ["optimizer.bin", "scheduler.bin"]  # RNG and EMA come from safetensors
    _assert_same_run(straight, resumed)


def test_layout_1_checkpoint_resumes_exactly_through_weights_only(runs, tmp_path):
    """A checkpoint of the earlier layout (EMA in custom_checkpoint_0.pkl, RNG in random_states_0.pkl only) loads
    through torch.load(weights_only=True) and still resumes bit for bit."""
    straight, killed = runs
    out = _copy_run(killed, tmp_path / "run")
    ckpt = out / "checkpoint-2"
    from safetensors import safe_open

    with safe_open(str(ckpt / C.EMA_FILE), framework="pt") as fh:
        ema = json.loads(fh.metadata()["ema"])
        ema["shadow_params"] = [fh.get_tensor(f"shadow_params.{i}") for i in range(len(list(fh.keys())))]
    torch.save(ema, ckpt / C.LEGACY_EMA_FILE)  # what accelerate's register_for_checkpointing wrote
    os.remove(ckpt / C.EMA_FILE)
    os.remove(ckpt / C.RNG_FILE.format(rank=0))
    _relist(ckpt, drop_format=True)
    resumed = train(_args(out, resume_from_checkpoint="latest"))
    assert resumed.global_step == 4
    _assert_same_run(straight, resumed)


@pytest.mark.parametrize(
    "case",
    [
        "unlisted custom",
        "listed custom",
        "layout 1 ema",
        "layout 1 ema, no scan",
        "optimizer",
        "optimizer, no scan",
        "raw pickle rng",
    ],
)
def test_hostile_pickle_is_refused_and_never_runs(runs, tmp_path, monkeypatch, case):
    _, killed = runs
    out = _copy_run(killed, tmp_path / "run")
    ckpt = out / "checkpoint-2"
    marker = tmp_path / "marker"
    # the crafted file really runs code when unpickled without restriction
    probe = tmp_path / "probe.pkl"
    torch.save({"x": _Evil(tmp_path / "probe-marker")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-marker").exists()

    rel = {
        "optimizer": "optimizer.bin",
        "optimizer, no scan": "optimizer.bin",
        "raw pickle rng": "random_states_0.pkl",
    }.get(case, C.LEGACY_EMA_FILE)
    if case == "raw pickle rng":
        (ckpt / rel).write_bytes(pickle.dumps(_Evil(marker)))
    else:
        torch.save({"state": _Evil(marker)}, ckpt / rel)
    if case != "unlisted custom":
        _relist(ckpt, drop_format=case.startswith("layout 1"))
    if case.startswith("layout 1"):
        os.remove(ckpt / C.EMA_FILE)
        _relist(ckpt, drop_format=True)
    if case.endswith("no scan"):  # the weights_only load itself is the second line of defence
        monkeypatch.setattr(C, "_torch_pickle_names", lambda full: None)
    with pytest.raises(CheckpointError, match=rel.replace(".", r"\.")) as info:
        train(_args(out, resume_from_checkpoint="latest"))
    message = str(info.value)
    assert "checkpoint-2" in message and ("refused" in message or "refusing" in message), message
    if case.endswith("no scan"):
        assert "weights_only=True" in message
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- fingerprint
def test_checkpoint_of_another_run_is_refused_unless_allowed(runs, tmp_path):
    _, killed = runs
    ckpt = str(killed / "checkpoint-2")
    new = tmp_path / "new"
    with pytest.raises(
        CheckpointError,
        match=r"different run: prediction_type: checkpoint 'epsilon', "
        r"this run 'v_prediction'.*--allow_fingerprint_mismatch",
    ):
        train(_args(new, resume_from_checkpoint=ckpt, prediction_type="v_prediction"))
    with pytest.raises(CheckpointError, match=r"schedule\.name: checkpoint 'vp-linear', this run 'vp-cosine'"):
        train(_args(new, resume_from_checkpoint=ckpt, schedule="vp-cosine"))
    with pytest.raises(CheckpointError, match=r"unet\.block_out_channels: checkpoint \[8, 16\], this run \[8, 24\]"):
        train(_args(new, resume_from_checkpoint=ckpt, block_out_channels="8,24"))
    assert not new.exists()
    result = train(
        _args(new, resume_from_checkpoint=ckpt, prediction_type="v_prediction", allow_fingerprint_mismatch=True)
    )
    assert result.resumed_from == ckpt and result.global_step == 4 and len(result.losses) == 2
    # the same run resumes from a checkpoint elsewhere without the flag
    same = train(_args(tmp_path / "same", resume_from_checkpoint=ckpt))
    assert same.global_step == 4


# ---------------------------------------------------------------------------------------------- interrupted save
class _FakeAccelerator:
    """The part of accelerate's Accelerator that save_checkpoint uses; ``save_state`` writes a weight tensor filled
    with ``payload`` so a test can tell the previous checkpoint from the new one."""

    is_main_process, num_processes, process_index, step = True, 1, 0, 0

    def __init__(self, payload):
        self.payload = payload

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({"w": torch.full((64,), float(self.payload))}, os.path.join(path, "model.safetensors"))
        torch.save({"lr": float(self.payload)}, os.path.join(path, "optimizer.bin"))


def _payload(ckpt):
    from safetensors.torch import load_file

    return float(load_file(os.path.join(ckpt, "model.safetensors"))["w"][0])


def _save(out, step, payload, total_limit=None):
    return C.save_checkpoint(_FakeAccelerator(payload), str(out), step, {"batches_seen": step}, total_limit)


def _calls_of_a_resave(tmp_path):
    """The file-system calls (os.replace, shutil.rmtree) of a successful re-save, in order."""
    out = tmp_path / "dry"
    _save(out, 3, 0)
    _save(out, 5, 1)
    calls = []
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(a, b):
        calls.append(("replace", os.path.basename(str(a)), os.path.basename(str(b))))
        return real_replace(a, b)

    def rmtree(p, *a, **k):
        calls.append(("rmtree", os.path.basename(str(p))))
        return real_rmtree(p, *a, **k)

    os.replace, shutil.rmtree = replace, rmtree
    try:
        _save(out, 5, 2, total_limit=1)
    finally:
        os.replace, shutil.rmtree = real_replace, real_rmtree
    return calls


def test_a_resave_killed_at_any_step_leaves_a_valid_checkpoint(tmp_path, monkeypatch):
    calls = _calls_of_a_resave(tmp_path)
    kinds = [c[:2] for c in calls]
    assert ("replace", "checkpoint-5") in kinds and ("replace", ".checkpoint-5.tmp") in kinds  # the two renames
    real_replace, real_rmtree = os.replace, shutil.rmtree
    for k in range(len(calls) + 1):  # k == len(calls): killed inside save_state, before any of them
        out = tmp_path / f"kill-{k}"
        _save(out, 3, 0)
        _save(out, 5, 1)
        count = {"n": 0}

        def tick():
            count["n"] += 1
            if count["n"] == k + 1:
                raise Killed(f"killed at call {k}")

        def replace(a, b):
            tick()
            return real_replace(a, b)

        def rmtree(p, *a, **kw):
            if count["n"] + 1 == k + 1 and os.path.isdir(p):  # killed half-way through a deletion
                first = next((os.path.join(r, f) for r, _, fs in os.walk(p) for f in sorted(fs)), None)
                if first:
                    os.remove(first)
            tick()
            return real_rmtree(p, *a, **kw)

        class Dying(_FakeAccelerator):
            def save_state(self, path):
                super().save_state(path)
                if k == len(calls):
                    os.remove(os.path.join(path, "optimizer.bin"))
                    raise Killed("killed while writing")

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        try:
            C.save_checkpoint(Dying(2), str(out), 5, {"batches_seen": 5}, total_limit=1)
        except Killed:
            pass
        monkeypatch.undo()
        # the next start
        C.remove_stale_temporaries(str(out))
        leftovers = sorted(n for n in os.listdir(out) if n.startswith("."))
        assert leftovers == [], (k, calls[k] if k < len(calls) else "save_state", leftovers)
        ckpt5 = out / "checkpoint-5"
        assert ckpt5.is_dir(), (k, calls[k] if k < len(calls) else "save_state")
        validate_checkpoint(str(ckpt5))
        assert _payload(ckpt5) in (1.0, 2.0)
        for _, path in list_checkpoints(str(out)):
            validate_checkpoint(path)  # nothing half-deleted that looks complete
        assert latest_checkpoint(str(out)) == str(ckpt5)


def test_training_start_restores_a_checkpoint_lost_between_the_renames(runs, tmp_path, monkeypatch):
    """Resuming from checkpoint-2 re-saves checkpoint-4; killed between its two renames, checkpoint-4 exists only as
    .checkpoint-4.old. The next `--resume_from_checkpoint latest` resumes it, not checkpoint-2."""
    straight, _ = runs
    out = tmp_path / "run"
    shutil.copytree(Path(straight.output_dir), out)
    real_replace = os.replace

    def replace(a, b):
        if str(a).endswith(".checkpoint-4.tmp"):
            raise Killed("killed between the renames")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        train(_args(out, resume_from_checkpoint=str(out / "checkpoint-2")))
    monkeypatch.undo()
    assert not (out / "checkpoint-4").exists() and (out / ".checkpoint-4.old").is_dir()
    result = train(_args(out, resume_from_checkpoint="latest"))
    assert result.resumed_from == str(out / "checkpoint-4") and result.global_step == 4
    assert not [n for n in os.listdir(out) if n.startswith(".checkpoint-")]


# ---------------------------------------------------------------------------------------------- import cycle
def _imported_modules(path):
    tree = ast.parse(Path(path).read_text())
    names = set()
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_training_modules_import_one_way():
    import unisde.training as T

    root = Path(T.__file__).parent
    export, checkpoint = _imported_modules(root / "export.py"), _imported_modules(root / "checkpoint.py")
    assert not any(n.startswith("unisde.training.loop") for n in export | checkpoint)
    assert not any(n.startswith("unisde.training.export") for n in checkpoint)


def test_overwrite_never_deletes_the_checkpoint_being_resumed(runs, tmp_path):
    _, killed = runs
    out = _copy_run(killed, tmp_path / "run")
    with pytest.raises(ValueError, match="--overwrite_output_dir would delete the checkpoint"):
        train(_args(out, resume_from_checkpoint=str(out / "checkpoint-2"), overwrite_output_dir=True))
    validate_checkpoint(str(out / "checkpoint-2"))
