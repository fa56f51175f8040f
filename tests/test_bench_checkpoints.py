"""The bundled trained checkpoints as accuracy targets of ``unisde bench`` (issue 12): ``digits-vp`` (ε-prediction on
diffusers' default DDPM table) and ``digits-flow`` (rectified flow, flow prediction), each raced on its own schedule
with its UNet in float32 (the reference PF-ODE in float64, and what the race's dtype moves a score by measured);
deterministic contestants are measured by the trajectory error against the network's own converged PF-ODE, with the
Fréchet distance to the real digits alongside; stochastic ones by the FD.

Reduced sizes throughout (a few contestants, one NFE, small batches): the benchmark's numbers are results, published
in BENCHMARKS.md, not assertions."""

import math

import numpy as np
import pytest
import torch

from unisde.bench import BenchConfig, exact, render_markdown, run_benchmarks
from unisde.bench.accuracy import _jobs, comparisons
from unisde.bench.contestants import _unified
from unisde.bench.report import agreement_rows
from unisde.bench.targets import CHECKPOINTS, TARGETS, CheckpointModel, load_checkpoint

F64 = torch.float64
CHECKPOINT_TARGETS = ("digits-vp", "digits-flow")
CONTESTANTS = (
    "ddim",  # unisde, both schedules
    "DDIM",  # diffusers, the DDPM table
    "≡DDIM",  # its unisde twin
    "DDPM",  # a stochastic peer: FD only
    "FlowMatchEuler",  # diffusers, the rectified flow
    "≡FlowMatchEuler",
    "sample_euler[karras]",  # k-diffusion (when installed)
    "≡sample_euler[karras]",
)


def _reduced(**overrides) -> BenchConfig:
    base = dict(
        targets=CHECKPOINT_TARGETS,
        schedules=("ddpm", "flow"),
        nfe=(5,),
        sections=("accuracy",),
        fit=None,
        checkpoint_samples=24,
        checkpoint_trajectory=3,
        checkpoint_stochastic_nfe=(5,),
        checkpoint_rtol=(1e-4, 1e-3),
        contestants=CONTESTANTS,
        workers=1,
    )
    base.update(overrides)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def results():
    """The reduced race in two spawned worker processes (one job per checkpoint), as the full preset runs it."""
    lines = []
    out = run_benchmarks(_reduced(workers=2), log=lines.append)
    assert any("2 worker processes" in line for line in lines)
    return out


def test_checkpoints_are_targets_on_their_own_schedule():
    assert set(CHECKPOINT_TARGETS) <= set(TARGETS) and set(CHECKPOINT_TARGETS) <= set(BenchConfig.full().targets)
    assert "digits-vp" not in BenchConfig.quick_preset().targets  # the quick preset has no checkpoint cell
    cfg = BenchConfig.full(targets=("mixture-2d", *CHECKPOINT_TARGETS))
    jobs = _jobs(cfg)
    assert ("digits-vp", ("ddpm",)) in jobs and ("digits-flow", ("flow",)) in jobs
    # costliest first: digits-flow with its weight, corrector and evaluation-time fits
    assert [j for j in jobs if j[0] in CHECKPOINTS] == [("digits-flow", ("flow",)), ("digits-vp", ("ddpm",))]
    assert _jobs(BenchConfig.full(targets=CHECKPOINT_TARGETS, schedules=("edm",))) == []  # not their schedule


def test_unknown_target_lists_the_checkpoints():
    with pytest.raises(ValueError, match="digits-vp"):
        BenchConfig(targets=("digits",)).validate()


def test_checkpoint_model_is_the_network_in_float64():
    """The race's model is the bundled UNet evaluated in float64 (its output within float32 rounding of diffusers'
    float32 evaluation), fed the timesteps a pipeline feeds, counting calls; its denoiser on another schedule (the
    reference's trig view) maps to the same VE noise level."""
    from diffusers import UNet2DModel

    ck = load_checkpoint("digits-vp")
    ref = _unified(dict(__import__("diffusers").DDPMScheduler().config))
    model = CheckpointModel(ck, ref.parameterization, ref.noise_schedule)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = model(x, torch.tensor(500))
    assert out.dtype == F64 and model.nfe == 1
    unet32 = UNet2DModel.from_pretrained(f"{ck.path}/unet").eval()
    with torch.no_grad():
        out32 = unet32(x.float(), torch.tensor(500)).sample
    assert float((out - out32.double()).abs().max()) < 1e-4 * max(1.0, float(out.abs().max()))
    # the trig view: x / √(s² + σ²) = cos τ x0 + sin τ ε; the same x̂0 at the table's time of σ̃ = tan τ
    sched = ck.schedule
    t = torch.tensor(0.4, dtype=F64)
    tau = math.atan2(float(sched.sigma(t)), float(sched.s(t)))
    trig_denoise = exact.model_denoiser(ck.raw, ck.parameterization.name, sched, ck.event_shape)
    y = x.reshape(4, -1)
    direct = ck.denoise(x * math.hypot(float(sched.s(t)), float(sched.sigma(t))), t).reshape(4, -1)
    assert torch.allclose(trig_denoise(y, tau), direct, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="was trained with"):
        edm = _unified(dict(__import__("diffusers").EDMEulerScheduler().config))
        CheckpointModel(ck, edm.parameterization, edm.noise_schedule)


def test_network_ode_in_t_is_the_reference_ode_in_tau():
    """The checkpoint reference (:class:`exact.NetworkODE`, solved in the network's time t) and the trig-view solve of
    :func:`exact.model_denoiser` (in τ) are one ODE: from the same start they agree to the solver's tolerance, a
    hundredth of the distance the samples travel."""
    ck = load_checkpoint("digits-flow")
    y0 = torch.randn(2, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    ode = exact.NetworkODE(ck.raw, ck.parameterization.name, ck.schedule, ck.event_shape)
    trig = exact.model_denoiser(ck.raw, ck.parameterization.name, ck.schedule, ck.event_shape)
    in_t, in_tau = (exact.pf_ode_reference(target, math.atan(1.0), y0, 1e-5) for target in (ode, trig))
    travel = float((in_t - y0 / math.sqrt(2.0)).norm(dim=1).mean())  # from x = y0 · √(s² + σ²) at s = σ = ½
    assert float(((in_t - in_tau) ** 2).sum(1).mean().sqrt()) < 1e-2 * travel


def test_frechet_reference_is_demo_frechet_distance():
    from unisde.demo import frechet_distance

    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(300, 64)), gen.normal(0.1, 1.2, size=(500, 64))
    fast = exact.FrechetReference(torch.from_numpy(y)).distance(torch.from_numpy(x))
    assert math.isclose(fast, frechet_distance(x, y), rel_tol=1e-8)


def test_checkpoint_records_carry_trajectory_fd_and_floor(results):
    """Deterministic records: the trajectory error (with the reference's error as floor); the compared ones (best
    unisde, best peer) carry the FD of the FD batch alongside; a stochastic contestant's metric is the FD."""
    records = [r for r in results["accuracy"] if r["target"] in CHECKPOINTS]
    assert {r["target"] for r in records} == set(CHECKPOINT_TARGETS)
    assert {r["schedule"] for r in records if r["target"] == "digits-vp"} == {"ddpm"}
    assert {r["schedule"] for r in records if r["target"] == "digits-flow"} == {"flow"}
    for r in records:
        assert r["nfe"] == 5 and r["model_calls"] <= 5
        if r["metric"] == "trajectory":
            assert not r["stochastic"] and r["exact"] and r["n_trajectory"] == 3
            assert 0 < r["floor"] < r["distance"] < 10
        else:
            assert r["metric"] == "frechet" and r["stochastic"] and r["distance"] == r["frechet"]
        if "frechet" in r:
            assert math.isfinite(r["frechet"]) and r["frechet_floor"] > 0 and r["n_frechet"] == 24
            assert r["frechet_dtype"] == "float32"
    assert next(r for r in records if r["sampler"] == "DDPM")["metric"] == "frechet"
    for row in comparisons(records):
        if row["primary"]:
            assert "frechet" in row["unisde"] and "frechet" in row["peer"]
    floors = {f["target"]: f for f in results["floors"]}
    for name in CHECKPOINT_TARGETS:
        f = floors[name]
        assert f["kind"] == "checkpoint" and f["metric"] == "trajectory" and f["n_trajectory"] == 3 and f["n"] == 24
        assert f["reference_solves"] >= 2 and f["floor"] > 0
        # the race's float32 network against the float64 one, on the best unisde record: rounding, far below its error
        rounding = f["race_rounding"]
        assert f["race_dtype"] == "float32" and rounding["nfe"] == 5 and rounding["sampler"] in CONTESTANTS
        assert 0 < rounding["rms"] and rounding["relative"] < 1e-3, rounding
    assert floors["digits-vp"]["spacing"] == "trailing" and floors["digits-flow"]["spacing"] is None  # no table


def test_reference_is_converged(results):
    """The reference's own error (bounded by a 10× looser solve) is far below every contestant's trajectory error
    (at the test's loose tolerance; the full preset solves at rtol 1e-6)."""
    floors = {f["target"]: f for f in results["floors"]}
    for name in CHECKPOINT_TARGETS:
        traj = [r["distance"] for r in results["accuracy"] if r["target"] == name and r["metric"] == "trajectory"]
        assert traj and floors[name]["reference_max_error"] < 0.1 * min(traj)


def test_twin_and_diffusers_class_agree_on_the_checkpoint(results):
    rows = [r for r in agreement_rows(results["accuracy"]) if r["target"] in CHECKPOINTS]
    peers = {r["peer_sampler"] for r in rows}
    assert {"DDIM", "FlowMatchEuler"} <= peers
    for r in rows:
        assert r["agree"], r
        if r["metric"] == "trajectory":  # the same algorithm: the same answer to float rounding
            assert r["diff"] <= 1e-5 * max(r["unisde"], r["peer"]), r


def test_comparisons_and_report_include_the_checkpoints(results):
    rows = [r for r in comparisons(results["accuracy"]) if r["target"] in CHECKPOINTS and r["primary"]]
    assert {(r["schedule"], r["target"]) for r in rows} == {("ddpm", "digits-vp"), ("flow", "digits-flow")}
    assert all(r["metric"] == "trajectory" and r["target_ratio"] == 0.67 for r in rows)
    md = render_markdown(results)
    assert "| digits-vp | checkpoint | trajectory (FD alongside) |" in md
    assert "| ddpm | digits-vp | trajectory | 5 |" in md and "; FD " in md
    assert "**digits-flow · flow**" in md and "frechet (alongside)" in md
