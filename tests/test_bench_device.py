"""``unisde bench --device``: the speed sections on an accelerator (issue 12). No GPU here: the device is refused
before any work, and the device code path (synchronised timing, SD-latent pipeline) runs on the CPU, with the
synchronisation it would do counted."""

import os

import pytest
import torch

from unisde.bench import run_benchmarks, speed
from unisde.bench.run import BenchConfig
from unisde.cli import main


@pytest.mark.parametrize(
    "device, message",
    [
        ("cuda", r"torch.cuda.is_available\(\) is False"),
        ("cuda:3", r"torch.cuda.is_available\(\) is False"),
        ("mps", r"cpu or cuda .*not mps"),
        ("gpu0", r"not a torch device; use cpu, cuda or cuda:N"),
    ],
)
def test_a_device_that_is_not_here_is_refused_naming_it(monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        speed.check_device(device)


def test_the_cli_refuses_cuda_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    called = []
    monkeypatch.setattr("unisde.bench.run_benchmarks", lambda *a, **k: called.append(1))
    out = tmp_path / "B.md"
    assert main(["bench", "--device", "cuda", "--output", str(out), "--json", str(tmp_path / "r.json")]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not called and os.listdir(tmp_path) == []


def test_the_device_settings_time_on_the_device_with_every_call_synchronised(monkeypatch):
    """The --device preset's code path on the CPU: twin step times at SD-latent size and the pipeline ratio at
    SD-latent size; every timed call is bracketed by two synchronisations (counted here: on the CPU they are
    no-ops), and the records say where they ran."""
    calls = []
    real = speed.synchronizer

    def counting(device):
        sync = real(device)

        def counted():
            calls.append(device)
            sync()

        return counted

    monkeypatch.setattr(speed, "synchronizer", counting)
    settings = speed.device_settings("cpu")
    assert settings["sections"] == ("overhead", "pipeline") and settings["overhead_shapes"] == ((2, 4, 64, 64),)
    assert settings["pipeline_model"] == "sd-latent" and settings["pipeline_batch"] == 2
    settings.update(
        overhead_pairs=("Euler",),
        overhead_loops=1,
        overhead_seconds=0.01,
        overhead_inference_steps=3,
        pipeline_steps=2,
        pipeline_reps=1,
    )
    results = run_benchmarks(BenchConfig(**settings), log=lambda _: None)
    (row,) = results["overhead"]
    assert row["device"] == "cpu" and row["shape"] == [2, 4, 64, 64] and row["unisde_s"] > 0 and row["diffusers_s"] > 0
    pipe = results["pipeline"]
    assert pipe["device"] == "cpu" and "SD-latent" in pipe["unet"] and pipe["batch_size"] == 2
    # two per timed step() call (3 calls per loop, a warm-up loop and one timed loop, two schedulers) and two per
    # timed pipeline run (a warm-up run and one repetition of each), plus the noise-draw timing's
    assert len(calls) >= 2 * 3 * 2 * 2 + 2 * 2 * 2
    assert all(d.type == "cpu" for d in calls)


def test_the_sd_latent_unet_is_built_at_sd_latent_size():
    unet, what = speed.pipeline_unet("sd-latent")
    assert unet.config.sample_size == 64 and unet.config.in_channels == 4 and "SD-latent" in what
    with pytest.raises(ValueError, match="unknown pipeline model 'sd'.*digits, sd-latent"):
        speed.pipeline_unet("sd")
