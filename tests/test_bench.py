"""`unisde bench --quick` runs end to end, covers every registered sampler and writes well-formed JSON.

The benchmark's figures (ratios, distances) are results, not assertions: they are published in BENCHMARKS.md.
"""

import json
import math

import pytest
import torch

import unisde
from unisde.bench import kdiffusion_available, projection_directions, sliced_w2
from unisde.bench.kdiffusion import KDIFFUSION_SAMPLERS
from unisde.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    rc = main(["bench", "--quick", "--json", str(out / "bench.json"), "--output", str(out / "BENCHMARKS.md")])
    assert torch.get_num_threads() == threads  # the benchmark restores the caller's threading
    return rc, out


def test_quick_writes_schema(quick_run):
    rc, out = quick_run
    assert rc == 0
    data = json.loads((out / "bench.json").read_text())
    assert {"accuracy", "overhead", "pipeline", "training", "seconds"} <= set(data)
    assert data["accuracy"], "no accuracy records"
    for rec in data["accuracy"]:
        assert {"library", "sampler", "target", "schedule", "nfe", "distance", "floor"} <= set(rec)
        assert rec["library"] in ("unisde", "diffusers", "k-diffusion")
        assert isinstance(rec["nfe"], int) and 1 <= rec["model_calls"] <= rec["nfe"]  # honest NFE
        assert isinstance(rec["distance"], float) and rec["floor"] > 0
    assert {r["sampler"] for r in data["overhead"]} == {"ddpm", "ddim", "edm-euler", "edm-heun", "flow-euler"}
    for rec in data["overhead"]:
        assert rec["unisde_s"] > 0 and rec["diffusers_s"] > 0
        assert math.isclose(rec["ratio"], rec["unisde_s"] / rec["diffusers_s"], rel_tol=1e-9)
    assert data["pipeline"]["sampler"] == "ddpm" and data["pipeline"]["ratio"] > 0
    assert data["training"]["ratio"] > 0
    assert data["seconds"] > 0  # the run's duration is reported, never asserted (speed lives in the benchmark)
    report = (out / "BENCHMARKS.md").read_text()
    for heading in ("Accuracy per model evaluation", "Scheduler overhead", "Pipeline", "Training throughput"):
        assert heading in report
    assert (out / "docs" / "bench_accuracy.png").stat().st_size > 1000


def test_quick_covers_every_registered_sampler(quick_run):
    _, out = quick_run
    data = json.loads((out / "bench.json").read_text())
    for schedule in ("ddpm", "edm", "flow", "flow-shift3"):
        ran = {
            r["sampler"].split("[")[0]
            for r in data["accuracy"]
            if r["library"] == "unisde" and r["schedule"] == schedule
        }
        missing = set(unisde.list_samplers()) - ran
        assert not missing, f"samplers without a result on {schedule}: {missing} (errors: {data.get('errors')})"
    peers = {r["sampler"] for r in data["accuracy"] if r["library"] == "diffusers"}
    assert {
        "DDPM",
        "DDIM",
        "Euler",
        "EulerAncestral",
        "Heun",
        "LMS",
        "DPM++2M",
        "DPM++3M",
        "SDE-DPM++2M",
        "UniPC",
        "EDMEuler",
        "FlowMatchEuler",
        "FlowMatchEulerStochastic",
        "FlowMatchHeun",
        "UniPC-flow",
        "DPM++2M-flow",
    } <= peers
    if kdiffusion_available():  # k-diffusion's functions, each on every schedule (skipped, with a note, without it)
        for schedule in ("ddpm", "edm", "flow", "flow-shift3"):
            ran = {
                r["sampler"].split("[")[0]
                for r in data["accuracy"]
                if r["library"] == "k-diffusion" and r["schedule"] == schedule
            }
            assert ran == set(KDIFFUSION_SAMPLERS), (schedule, ran, data.get("errors"))


def test_sliced_w2_of_a_shift():
    # Shifting one set by c gives, per direction θ, W2 = |θ·c| exactly, so SW2² = mean_θ (θ·c)².
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0.3, -0.2, 0.0, 0.5, 0.1], dtype=torch.float64)
    theta = projection_directions(5, 64)
    assert math.isclose(sliced_w2(x + c, x, theta), float((c @ theta).pow(2).mean().sqrt()), rel_tol=1e-12)
    assert sliced_w2(x, x, theta) == 0.0


def test_bad_input_fails_before_work(capsys):
    assert main(["bench", "--quick", "--targets", "mixture-3d"]) == 2
    assert "mixture-2d" in capsys.readouterr().err
    assert main(["bench", "--quick", "--nfe", "0"]) == 2
