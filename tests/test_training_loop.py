"""The accelerate training loop (single process): pipeline export and loading, exact resume, atomic checkpoints,
data sources, and every bad input rejected before training starts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import unisde
from unisde.training import data as D
from unisde.training.checkpoint import CheckpointError, latest_checkpoint, validate_checkpoint
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
        train_batch_size=8,
        max_train_steps=4,
        checkpointing_steps=2,
        block_out_channels="8,16",
        norm_num_groups=4,
        attention_levels="none",
        lr_warmup_steps=0,
        logger="none",
        no_progress=True,
        learning_rate=1e-3,
    )
    base.update(kw)
    return default_args(**base)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_exports_a_pipeline_that_loads_and_samples_with_every_sampler(tmp_path):
    out = tmp_path / "run"
    result = train(
        _args(
            out,
            schedule="edm",
            prediction_type="edm",
            loss_weighting="edm",
            use_ema=True,
            checkpoints_total_limit=1,
            logger="tensorboard",
        )
    )
    assert result.global_step == 4 and len(result.losses) == 4 and all(np.isfinite(result.losses))
    names = set(os.listdir(out))
    assert {"model_index.json", "unet", "scheduler", "README.md", "unisde_run.json", "checkpoint-4", "logs"} <= names
    assert "checkpoint-2" not in names  # total limit 1
    assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(out / "logs") for f in fs)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["scheduler"][1] == "UnifiedScheduler"
    cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == "UnifiedScheduler" and cfg["prediction_type"] == "edm"
    assert cfg["schedule"]["name"] == "edm" and cfg["sampler"] == "ddim" and cfg["sigma_data"] == 0.5
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card and "- unisde" in card
    assert "schedule-edm" in card and "parameterization-edm" in card and "## Training command" in card

    # The exported unet holds the EMA weights.
    from diffusers import DiffusionPipeline, UNet2DModel

    unet = UNet2DModel.from_pretrained(out / "unet")
    ema_params = [p.detach() for p in result.ema.shadow_params]
    for p, q in zip(unet.parameters(), ema_params):
        torch.testing.assert_close(p, q.cpu(), rtol=0, atol=0)

    # plain diffusers in a fresh process, after nothing but `import unisde`
    code = (
        "import unisde, sys; from diffusers import DiffusionPipeline; p = "
        "DiffusionPipeline.from_pretrained(sys.argv[1]); "
        "print(type(p).__name__, type(p.scheduler).__name__, p.scheduler.config.sampler)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-3:] == ["DDPMPipeline", "UnifiedScheduler", "ddim"]
    assert index["scheduler"] == ["unisde.scheduler", "UnifiedScheduler"]
    plain = DiffusionPipeline.from_pretrained(str(out))
    assert type(plain.scheduler).__name__ == "UnifiedScheduler" and plain.scheduler.config.sampler == "ddim"
    for sampler in unisde.list_samplers():
        pipe = unisde.load_pipeline(str(out), sampler=sampler)
        assert pipe.scheduler.config.sampler == sampler
        assert pipe.scheduler.noise_schedule.to_config() == unisde.NoiseSchedule.edm().to_config()
        images = pipe(
            batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images
        assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all(), sampler


def test_resume_after_a_failed_save_is_exact(tmp_path):
    """Run A trains 6 steps straight. Run B is killed while committing checkpoint-6 (after checkpoint-3 was
    written): checkpoint-3 stays intact and loadable, and resuming it reproduces A's weights, optimizer and EMA
    bit for bit (model, optimizer, LR schedule, EMA, data position and RNG all restored)."""
    common = dict(
        max_train_steps=6,
        checkpointing_steps=3,
        use_ema=True,
        lr_warmup_steps=2,
        gradient_accumulation_steps=2,
        schedule="vp-cosine",
        prediction_type="v_prediction",
        noise_distribution="lognormal",
        train_batch_size=4,
    )
    a = train(_args(tmp_path / "a", **common))

    class Killed(RuntimeError):
        pass

    def die_on_six(tmp):
        if tmp.endswith(".checkpoint-6.tmp"):
            raise Killed("simulated crash while saving")

    out_b = tmp_path / "b"
    with pytest.raises(Killed):
        train(_args(out_b, **common), before_commit=die_on_six)
    assert latest_checkpoint(str(out_b)).endswith("checkpoint-3")
    assert not (out_b / "checkpoint-6").exists() and (out_b / ".checkpoint-6.tmp").exists()
    validate_checkpoint(str(out_b / "checkpoint-3"))

    b = train(_args(out_b, resume_from_checkpoint="latest", **common))
    assert b.resumed_from.endswith("checkpoint-3") and b.global_step == 6 and len(b.losses) == 3
    assert not (out_b / ".checkpoint-6.tmp").exists()
    torch.testing.assert_close(b.losses, a.losses[3:], rtol=0, atol=0)
    sa, sb = _state(a.accelerator.unwrap_model(a.model)), _state(b.accelerator.unwrap_model(b.model))
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)
    for p, q in zip(a.ema.shadow_params, b.ema.shadow_params):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    assert a.ema.optimization_step == b.ema.optimization_step == 6


def _digits_parquet(path, image_column="image", n=40):
    import datasets
    from PIL import Image

    arr = ((D.digits_array()[:n] + 1) * 127.5).round().astype(np.uint8)
    ds = datasets.Dataset.from_dict(
        {image_column: [Image.fromarray(a) for a in arr], "label": list(range(n))},
        features=datasets.Features({image_column: datasets.Image(), "label": datasets.Value("int64")}),
    )
    ds.to_parquet(str(path))
    return path


def test_data_sources(tmp_path):
    # embedded digits: exactly x/8 − 1 of scikit-learn's 0 … 16 values
    from sklearn.datasets import load_digits

    real = D.real_digits()
    assert real.shape == (1797, 1, 8, 8)
    torch.testing.assert_close(real[:, 0], torch.from_numpy(load_digits().images).float() / 8 - 1, rtol=0, atol=0)
    ds = D.load_image_dataset().with_transform(D.make_transform("image", 8, 1))
    torch.testing.assert_close(torch.stack(ds[:5]["pixel_values"]), real[:5], rtol=0, atol=0)
    # imagefolder of RGB PNGs, converted to 1 channel and resized
    from PIL import Image

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((12, 16, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    ds = D.load_image_dataset(train_data_dir=str(tmp_path / "imgs"))
    col = D.find_image_column(ds)
    assert col == "image" and D.image_channels(ds, col) == 3
    x = D.make_transform(col, 8, 1)(ds[:3])["pixel_values"]
    assert all(t.shape == (1, 8, 8) for t in x)
    torch.testing.assert_close(
        torch.stack(x).flatten(1).mean(1), torch.tensor([0, 60, 120]) / 127.5 - 1, rtol=0, atol=1e-5
    )
    # parquet with a custom image column name, and the same data saved with save_to_disk
    pq = _digits_parquet(tmp_path / "d.parquet", image_column="picture")
    ds = D.load_image_dataset(train_files=[str(pq)])
    assert D.find_image_column(ds) == "picture" and len(ds) == 40
    x = torch.stack(D.make_transform("picture", 8, 1)(ds[:4])["pixel_values"])
    torch.testing.assert_close(x, real[:4], rtol=0, atol=1 / 127.5)  # 8-bit PNG quantisation
    ds.save_to_disk(str(tmp_path / "saved"))
    assert len(D.load_image_dataset(train_data_dir=str(tmp_path / "saved"))) == 40


def test_train_on_parquet_files_with_named_column(tmp_path):
    pq = _digits_parquet(tmp_path / "d.parquet", image_column="picture", n=16)
    result = train(
        _args(
            tmp_path / "run",
            train_files=[str(pq)],
            image_column="picture",
            max_train_steps=2,
            resolution=8,
            schedule="vp-linear",
            prediction_type="epsilon",
            loss_weighting="likelihood",
        )
    )
    assert result.global_step == 2 and all(np.isfinite(result.losses))


def _snapshot(path):
    return {
        os.path.relpath(os.path.join(r, f), path): os.path.getmtime(os.path.join(r, f))
        for r, _, fs in os.walk(path)
        for f in fs
    }


def test_bad_input_is_rejected_before_training(tmp_path):
    out = tmp_path / "run"
    cases = [
        (dict(train_batch_size=0), "--train_batch_size must be positive, got 0"),
        (dict(max_train_steps=0), "--max_train_steps must be positive"),
        (dict(max_train_steps=None, num_epochs=-1), "--num_epochs must be positive"),
        (dict(schedule="vp-lineer"), "unknown schedule 'vp-lineer'.*Did you mean 'vp-linear'"),
        (dict(prediction_type="noise"), "unknown parameterization 'noise'.*valid choices"),
        (dict(loss_weighting="snr"), "unknown loss weighting 'snr'"),
        (dict(noise_distribution="beta"), "unknown noise distribution 'beta'"),
        (dict(default_sampler="eulerr"), "unknown sampler 'eulerr'"),
        (
            dict(unet_config=json.dumps({"in_channels": 3, "out_channels": 3, "sample_size": 8})),
            "channel mismatch.*1 channel",
        ),
        (
            dict(unet_config=json.dumps({"in_channels": 1, "out_channels": 1, "sample_size": 16}), resolution=8),
            "resolution mismatch",
        ),
        (dict(resolution=6, block_out_channels="8,16,16"), "not divisible by 4"),
        (dict(resume_from_checkpoint=str(tmp_path / "nope")), "does not exist"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            train(_args(out, **overrides))
        assert not out.exists(), overrides
    import datasets

    pq = tmp_path / "noimg.parquet"
    datasets.Dataset.from_dict({"pixels_raw": [[0, 1]] * 4, "label": [0, 1, 2, 3]}).to_parquet(str(pq))
    with pytest.raises(ValueError, match=r"no image column.*columns found: \['pixels_raw', 'label'\]"):
        train(_args(out, train_files=[str(pq)]))
    with pytest.raises(ValueError, match="--image_column 'img' is not a column.*'pixels_raw'"):
        train(_args(out, train_files=[str(pq)], image_column="img"))
    small = _digits_parquet(tmp_path / "small.parquet", n=4)
    with pytest.raises(ValueError, match="4 images, fewer than one global batch"):
        train(_args(out, train_files=[str(small)]))
    assert not out.exists()

    # a finished run, then: a different run, a foreign folder, a corrupt checkpoint — nothing is touched
    train(_args(out, max_train_steps=2))
    before = _snapshot(out)
    with pytest.raises(ValueError, match="holds a different run.*prediction_type"):
        train(_args(out, max_train_steps=2, prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="already holds checkpoints of this run.*--resume_from_checkpoint latest"):
        train(_args(out, max_train_steps=2))
    with open(out / "checkpoint-2" / "model.safetensors", "r+b") as fh:
        fh.truncate(100)
    before = _snapshot(out)
    with pytest.raises(CheckpointError, match="checkpoint-2.*corrupt.*model.safetensors"):
        train(_args(out, max_train_steps=4, resume_from_checkpoint="latest"))
    os.remove(out / "checkpoint-2" / "unisde_checkpoint.json")
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        train(_args(out, max_train_steps=4, resume_from_checkpoint=str(out / "checkpoint-2")))
    assert _snapshot(out) == {k: v for k, v in before.items() if not k.endswith("unisde_checkpoint.json")}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no unisde run"):
        train(_args(foreign))
    # --overwrite_output_dir starts over, keeping files that are not a run's
    result = train(_args(foreign, max_train_steps=1, overwrite_output_dir=True))
    assert result.global_step == 1 and (foreign / "notes.txt").exists() and (foreign / "unet").is_dir()


def test_cli_train_and_script_entry_point(tmp_path, capsys):
    import shlex

    from unisde.cli import build_parser, main

    out = tmp_path / "cli"
    argv = [
        "train",
        "--output_dir",
        str(out),
        "--max_train_steps",
        "1",
        "--train_batch_size",
        "4",
        "--block_out_channels",
        "8,16",
        "--norm_num_groups",
        "4",
        "--attention_levels",
        "none",
        "--logger",
        "none",
        "--no_progress",
    ]
    rc = main(argv)
    assert rc == 0 and "trained to step 1" in capsys.readouterr().out
    # the card's training command reproduces the run's options exactly
    card = (out / "README.md").read_text()
    command = card.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("unisde train ")
    recorded = vars(build_parser().parse_args(shlex.split(command)[1:]))
    assert recorded == vars(build_parser().parse_args(argv))
    rc = main(["train", "--output_dir", str(tmp_path / "x"), "--train_batch_size", "-3"])
    assert rc == 2 and "--train_batch_size must be positive, got -3" in capsys.readouterr().err
