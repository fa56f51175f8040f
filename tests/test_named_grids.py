r"""The named σ grids of the UI scheduler menus (:mod:`unisde.grids.named`) and diffusers' σ respacing flags.

Grids: each against its definition written out here from the published formula (k-diffusion's own
``get_sigmas_exponential`` and diffusers' own ``_convert_to_beta`` where those are the definition; Align Your Steps'
published 10-step lists typed from the authors' page), on the Stable Diffusion table (σ̃ from diffusers' own ᾱ),
EDM and the rectified flow; every grid strictly decreasing with the right end points; and two samplers (DDIM and
EDM's Heun) on each grid and schedule against the exact probability-flow solution of Gaussian data.

Converters: live parity with diffusers' Euler, Heun, LMS, KDPM2(Ancestral), DPMSolverMultistep and UniPC with
``use_exponential_sigmas`` / ``use_beta_sigmas`` (and Karras with leading/trailing spacing), Euler's
``interpolation_type="log_linear"``, ``sigma_min`` / ``sigma_max`` and ``timestep_type="continuous"`` (SVD's
config): both loops run side by side from the same start with the same model F(x, τ) = x (0.8 + 1e-4 τ) + 0.05 sin 3x
(τ the timestep each scheduler feeds), and after every model call the states must agree to 1e-5 × max |x| of the
reference trajectory (diffusers' Euler family lives in the VE view x̃ = x/s; unisde's state is divided by s). The
flags unisde cannot reproduce are refused with the class, flag and reason.
"""

from __future__ import annotations

import inspect
import math

import diffusers
import numpy as np
import pytest
import scipy.stats
import torch

import unisde
from unisde import NoiseSchedule
from unisde.analytic import Gaussian
from unisde.diffusers.converters import ConversionError
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import list_grids, make_grid

NAMED = ("exponential", "normal", "sgm_uniform", "simple", "ddim_uniform", "beta", "kl_optimal", "linear_quadratic")
NAMED += ("ays", "diffusers_sigmas", "polyexponential")
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SCHEDULES = {
    "sd-table": lambda: NoiseSchedule.from_name("scaled-linear"),
    "edm": lambda: NoiseSchedule.from_name("edm"),
    "rectified-flow": lambda: NoiseSchedule.from_name("rectified-flow"),
}
# Sabour et al. 2024 (Align Your Steps), the authors' "how to" page: the 10-step σ̃ lists, 11 levels each.
AYS = {
    "sd15": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    "svd": [700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


@pytest.fixture(scope="module")
def sd():
    """The SD table and its σ̃ entries computed from diffusers' own float32 ᾱ (index i at t = (i + 1)/N)."""
    abar = diffusers.DDPMScheduler(**SD).alphas_cumprod.double()
    return NoiseSchedule.from_name("scaled-linear"), ((1 - abar) / abar).sqrt()


def levels(schedule, kind, n, **options):
    """(evaluation σ̃'s, the full grid) of ``kind``."""
    grid = make_grid(schedule, n, kind, **options)
    return schedule.ve_sigma(grid[:-1]), grid


# ============================================================================ definitions
def test_named_grids_are_registered_and_reach_the_scheduler():
    assert set(NAMED) <= set(list_grids())
    for name in NAMED:
        uni = UnifiedScheduler(sampler="ddim", time_grid=name, **SD)
        uni.set_timesteps(6)
        assert torch.isfinite(uni.sigmas).all() and uni.sigmas[-1] == 0


@pytest.mark.parametrize("name", ["sd-table", "edm", "rectified-flow"])
def test_exponential_is_k_diffusions_exponential(name, k_sampling):
    schedule = SCHEDULES[name]()
    sig, grid = levels(schedule, "exponential", 9)
    lo, hi = float(schedule.ve_sigma(grid[-2])), float(schedule.ve_sigma(grid[0]))
    ref = k_sampling.get_sigmas_exponential(9, lo, hi, device="cpu").double()
    assert ref[-1] == 0 and grid[-1] == 0
    torch.testing.assert_close(sig, ref[:-1], rtol=1e-6, atol=0)  # k-diffusion's linspace is float32
    torch.testing.assert_close(make_grid(schedule, 9, "exponential"), make_grid(schedule, 9, "uniform_lambda"))


@pytest.mark.parametrize("name", ["sd-table", "edm", "rectified-flow"])
@pytest.mark.parametrize("rho", [1.0, 2.0, 3.5])
def test_polyexponential_is_k_diffusions_polyexponential(name, rho, k_sampling):
    schedule = SCHEDULES[name]()
    sig, grid = levels(schedule, "polyexponential", 9, rho=rho)
    lo, hi = float(schedule.ve_sigma(grid[-2])), float(schedule.ve_sigma(grid[0]))
    ref = k_sampling.get_sigmas_polyexponential(9, lo, hi, rho=rho, device="cpu").double()
    torch.testing.assert_close(sig, ref[:-1], rtol=2e-6, atol=0)  # k-diffusion's ramp is float32
    if rho == 1.0:
        torch.testing.assert_close(make_grid(schedule, 9, "polyexponential"), make_grid(schedule, 9, "exponential"))


def test_normal_and_sgm_uniform_are_uniform_in_t(sd):
    schedule, _ = sd
    for n in (1, 5, 12):
        assert torch.equal(make_grid(schedule, n, "normal")[:-1], torch.linspace(1.0, 1e-3, n, dtype=torch.float64))
        assert torch.equal(
            make_grid(schedule, n, "sgm_uniform")[:-1], torch.linspace(1.0, 1e-3, n + 1, dtype=torch.float64)[:-1]
        )
    # ComfyUI: where σ(t_min) = 0 "normal" takes n + 1 points and the last one (clean data) is the end point
    vp = NoiseSchedule.from_name("vp-linear")
    grid = make_grid(vp, 6, "normal", t_min=0.0)
    assert torch.equal(grid, torch.linspace(1.0, 0.0, 7, dtype=torch.float64))
    assert torch.equal(grid, make_grid(vp, 6, "sgm_uniform", t_min=0.0))


def test_simple_and_ddim_uniform_pick_entries_of_the_models_table(sd):
    schedule, table = sd
    size = table.numel()
    for n in (1, 7, 10, 30, 38):  # n = 38: 19 · (1000/38) = 499.99… in floats, ComfyUI's index 499
        sig, _ = levels(schedule, "simple", n)
        ss = size / n  # ComfyUI: sigmas[-(1 + int(x * ss))] for x in range(steps)
        torch.testing.assert_close(sig, table[[size - 1 - int(x * ss) for x in range(n)]], rtol=1e-12, atol=0)
        sig, _ = levels(schedule, "ddim_uniform", n)
        skip = max(size // n, 1)  # DDIM's uniform skip from entry 1, descending
        torch.testing.assert_close(sig, table[list(range(1, size, skip))[::-1]], rtol=1e-12, atol=0)
    assert levels(schedule, "ddim_uniform", 7)[0].numel() == 8  # ⌈999/142⌉: the definition's own count
    with pytest.raises(ValueError, match="simple.*exceeds the 1000 entries"):
        make_grid(schedule, 1001, "simple")


def test_beta_in_t_is_comfyuis_and_in_sigma_is_diffusers(sd):
    schedule, table = sd
    for n in (5, 12, 200):
        idx = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), 0.6, 0.6) * (table.numel() - 1))
        idx = [int(i) for k, i in enumerate(idx) if k == 0 or i != idx[k - 1]]
        sig, _ = levels(schedule, "beta", n)
        torch.testing.assert_close(sig, table[idx], rtol=1e-12, atol=0)
    assert levels(schedule, "beta", 200)[0].numel() == 199  # two quantiles round to one index: ComfyUI keeps one
    ref = diffusers.EulerDiscreteScheduler(**SD)
    for n in (1, 6, 11):
        sig, _ = levels(schedule, "beta", n, space="sigma")
        expected = ref._convert_to_beta(in_sigmas=table.flip(0).numpy(), num_inference_steps=n)
        torch.testing.assert_close(sig, torch.as_tensor(expected), rtol=1e-10, atol=0)
    spread, _ = levels(schedule, "beta", 6, space="sigma", alpha=2.0, beta=2.0)  # the options are not ignored
    assert not torch.allclose(spread, levels(schedule, "beta", 6, space="sigma")[0])


@pytest.mark.parametrize("name", ["sd-table", "edm", "rectified-flow"])
def test_kl_optimal_is_tan_of_linear_atan(name):
    schedule = SCHEDULES[name]()
    sig, grid = levels(schedule, "kl_optimal", 8)
    hi, lo = float(schedule.ve_sigma(1.0)), float(schedule.ve_sigma(grid[-2]))
    u = torch.arange(8, dtype=torch.float64) / 7
    expected = torch.tan(u * math.atan(lo) + (1 - u) * math.atan(hi))
    torch.testing.assert_close(sig, expected, rtol=1e-9, atol=0)


def mochi(n, threshold=0.025, linear=None):
    """Mochi's linear-then-quadratic schedule as published (genmoai/models, infer.py), σ_k = 1 − x_k."""
    if n == 1:
        return [1.0]
    linear = n // 2 if linear is None else linear
    x = [i * threshold / linear for i in range(linear)]
    diff = linear - threshold * n
    quadratic = n - linear
    a = diff / (linear * quadratic**2)
    b = threshold / linear - 2 * diff / quadratic**2
    c = a * linear**2
    x += [a * i**2 + b * i + c for i in range(linear, n)]
    return [1.0 - v for v in x]


def test_linear_quadratic_is_mochis_schedule_in_the_flow_level(sd):
    flow = NoiseSchedule.from_name("rectified-flow")
    for n, extra in ((1, {}), (8, {}), (13, {"linear_steps": 4, "threshold_noise": 0.05})):
        grid = make_grid(flow, n, "linear_quadratic", **extra)
        want = mochi(n, extra.get("threshold_noise", 0.025), extra.get("linear_steps"))
        torch.testing.assert_close(grid[:-1], torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    schedule, _ = sd  # on a VP table the same levels in τ = σ/(s + σ), scaled to its τ at t = 1
    grid = make_grid(schedule, 8, "linear_quadratic")[:-1]
    tau = schedule.sigma(grid) / (schedule.s(grid) + schedule.sigma(grid))
    tau_max = float(schedule.sigma(1.0) / (schedule.s(1.0) + schedule.sigma(1.0)))
    torch.testing.assert_close(tau, tau_max * torch.tensor(mochi(8), dtype=torch.float64), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="linear_steps=8"):
        make_grid(flow, 8, "linear_quadratic", linear_steps=8)


def test_ays_gives_the_published_levels_at_10_steps_and_log_linear_interpolation_otherwise(sd):
    schedule, table = sd
    for model in ("sd15", "sdxl"):
        sig, grid = levels(schedule, "ays", 10, model=model)
        assert grid[0] == 1.0 and grid[-1] == 0.0  # 14.615 is the table's σ̃_max 14.6146… rounded
        assert abs(float(sig[0]) - AYS[model][0]) < 5e-4 and float(sig[0]) == pytest.approx(float(table[-1]), 1e-12)
        torch.testing.assert_close(sig[1:], torch.tensor(AYS[model][1:10], dtype=torch.float64), rtol=1e-10, atol=0)
        for n in (4, 7, 25):
            knots = np.log(AYS[model])
            want = np.exp(np.interp(np.linspace(0, 1, n + 1), np.linspace(0, 1, 11), knots))[:n]
            want[0] = float(table[-1])
            sig, _ = levels(schedule, "ays", n, model=model)
            torch.testing.assert_close(sig, torch.as_tensor(want), rtol=1e-10, atol=0)
    svd = NoiseSchedule.from_name("edm", sigma_min=0.002, sigma_max=700.0)
    sig, _ = levels(svd, "ays", 10, model="svd")
    torch.testing.assert_close(sig, torch.tensor(AYS["svd"][:10], dtype=torch.float64), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="ays.*svd.*700.*above this schedule"):
        make_grid(schedule, 10, "ays", model="svd")


# ============================================================================ shape of every grid
FIRST_AT_T_MAX = {"exponential", "polyexponential", "normal", "sgm_uniform", "simple", "beta", "kl_optimal"}
FIRST_AT_T_MAX |= {"linear_quadratic"}


@pytest.mark.parametrize("name", ["sd-table", "edm", "rectified-flow"])
@pytest.mark.parametrize("kind", NAMED)
def test_every_named_grid_is_monotone_with_the_right_ends(kind, name):
    schedule = SCHEDULES[name]()
    for n in (1, 3, 12):
        grid = make_grid(schedule, n, kind)
        sig = schedule.ve_sigma(grid[:-1])  # EDM's σ(0) > 0: a last evaluation at t = 0 is σ̃_min, the end is data
        assert grid.dtype == torch.float64 and bool((sig[1:] < sig[:-1]).all()), (kind, name, n, grid)
        assert bool((grid[1:] <= grid[:-1]).all()) and float(sig[-1]) > 0, (kind, name, n, grid)
        assert grid[-1] == 0.0 and float(grid[0]) <= 1.0
        if kind in FIRST_AT_T_MAX or kind == "diffusers_sigmas" and not schedule.is_discrete:
            assert grid[0] == 1.0, (kind, name, n)
        if kind not in ("ddim_uniform", "beta"):
            assert grid.numel() == n + 1


MU, VAR = 0.5, 0.25


@pytest.mark.parametrize("name", ["sd-table", "edm", "rectified-flow"])
@pytest.mark.parametrize("sampler", ["ddim", "edm"])
def test_samplers_run_on_every_named_grid_and_solve_the_gaussian_flow(sampler, name):
    """DDIM (first order) and EDM's Heun (second order) on each grid with 12 and 48 points, data N(0.5, 0.25 I) in
    64-d: the sample must approach the exact PF-ODE end point of its own start, μ + (x − sμ)√v/√(v s² + σ²)
    (relative RMS error; the bounds hold every grid's measured error with a margin). DDIM's error falls ~4× from 12
    to 48 points; Heun's falls faster until the last step, Euler from σ̃_min to 0, sets a floor of ~2e-3 on the
    SD table (σ̃_min = 0.029)."""
    schedule = SCHEDULES[name]()
    data = Gaussian(torch.full((64,), MU, dtype=torch.float64), VAR)
    noise = torch.randn(2, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(kind, n):
        t0 = make_grid(schedule, n, kind)[0]
        s0, sig0 = float(schedule.s(t0)), float(schedule.sigma(t0))
        x_start = noise * math.sqrt(s0**2 + sig0**2)
        out = unisde.sample(
            None,
            noise,
            schedule=schedule,
            sampler=sampler,
            num_inference_steps=n,
            time_grid=kind,
            denoiser=lambda x, t: data.denoise(x, t, schedule),
        )
        want = MU + (x_start - s0 * MU) * math.sqrt(VAR) / math.sqrt(VAR * s0**2 + sig0**2)
        assert torch.isfinite(out).all()
        return float((out - want).pow(2).mean().sqrt() / (want - MU).pow(2).mean().sqrt())

    for kind in NAMED:
        coarse, fine = error(kind, 12), error(kind, 48)
        if sampler == "ddim":
            assert fine < 0.15 and fine < coarse / 3, (kind, name, coarse, fine)
        else:
            assert fine < 0.05 and (fine < coarse / 3 or fine < 3e-3), (kind, name, coarse, fine)


# ============================================================================ converters: diffusers' σ flags
def fake_model(x, timestep):
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x)


def timeless_model(x, timestep):
    return x * 0.8 + 0.05 * torch.sin(3 * x)


def lockstep(ref, uni, n, *, ve_view=True, model=fake_model):
    """Both pipeline loops side by side; returns (max state difference over every call / reference scale,
    final-sample difference / reference scale)."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert len(uni.timesteps) == len(ref.timesteps), (uni.timesteps, ref.timesteps)
    schedule = uni.noise_schedule
    s_after = [float(schedule.s(t)) for t in uni._eval_times[1:]] + [1.0]
    x_ref = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
    x_uni = x_ref * (float(schedule.s(uni._eval_times[0])) if ve_view else 1.0)
    gen_ref, gen_uni = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    kw = {"generator": gen_ref} if "generator" in inspect.signature(ref.step).parameters else {}
    scale, worst = float(x_ref.abs().max()), 0.0
    for j in range(len(ref.timesteps)):
        t_ref, t_uni = ref.timesteps[j], uni.timesteps[j]
        x_ref = ref.step(model(ref.scale_model_input(x_ref, t_ref), t_ref), t_ref, x_ref, **kw).prev_sample
        x_uni = uni.step(model(uni.scale_model_input(x_uni, t_uni), t_uni), t_uni, x_uni, generator=gen_uni).prev_sample
        seen = x_uni / s_after[j] if ve_view and s_after[j] != 1.0 else x_uni
        scale = max(scale, float(x_ref.abs().max()))
        worst = max(worst, float((seen - x_ref).abs().max()))
    assert torch.isfinite(x_ref).all()
    return worst / scale, float((seen - x_ref).abs().max()) / scale


EULER_FAMILY = [
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    ("EulerDiscreteScheduler", {"use_beta_sigmas": True}),
    (
        "EulerDiscreteScheduler",
        {"use_beta_sigmas": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}),
    (
        "EulerDiscreteScheduler",
        {"interpolation_type": "log_linear", "use_karras_sigmas": True, "timestep_spacing": "leading"},
    ),
    (
        "EulerDiscreteScheduler",
        {"interpolation_type": "log_linear", "use_beta_sigmas": True, "timestep_spacing": "trailing"},
    ),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True, "sigma_max": 10.0, "timestep_spacing": "leading"}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous"}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
    (
        "EulerDiscreteScheduler",
        {"timestep_type": "continuous", "prediction_type": "v_prediction", "use_beta_sigmas": True},
    ),
    ("HeunDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    ("HeunDiscreteScheduler", {"use_beta_sigmas": True, "prediction_type": "v_prediction"}),
    ("LMSDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
    ("LMSDiscreteScheduler", {"use_beta_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    ("KDPM2DiscreteScheduler", {"use_beta_sigmas": True}),
    ("KDPM2DiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
    ("KDPM2AncestralDiscreteScheduler", {"use_beta_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    ("KDPM2AncestralDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
]


def _case_id(cls: str, flags: dict) -> str:
    short = {"use_exponential_sigmas": "exp", "use_beta_sigmas": "beta", "use_karras_sigmas": "karras"}
    words = [short.get(k, str(v)) for k, v in flags.items() if k != "steps_offset"]
    return cls.replace("DiscreteScheduler", "") + "-" + "-".join(words)


# Stable Video Diffusion's scheduler config (VE-view Karras σ̃ from 700 to 0.002, c_noise timesteps, v-prediction)
SVD = {
    **SD,
    "prediction_type": "v_prediction",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}


@pytest.mark.parametrize("cls, flags", EULER_FAMILY, ids=[_case_id(c, f) for c, f in EULER_FAMILY])
def test_euler_family_flags_convert_at_per_step_parity(cls, flags):
    ref = getattr(diffusers, cls)(**SD, **flags)
    uni = UnifiedScheduler.from_config(ref.config)
    ref.set_timesteps(9)
    uni.set_timesteps(9)
    torch.testing.assert_close(uni.sigmas[0].double(), ref.sigmas[0].double(), rtol=1e-6, atol=0)  # σ̃_max
    if len(uni.sigmas) == len(ref.sigmas):  # the last evaluation (Heun/KDPM2 interleave theirs differently)
        torch.testing.assert_close(uni.sigmas[-2].double(), ref.sigmas[-2].double(), rtol=1e-6, atol=0)
    worst, final = lockstep(ref, uni, 9)
    assert worst <= 1e-5 and final <= 1e-5, (cls, flags, worst, final)


@pytest.mark.parametrize("n", [8, 25])
@pytest.mark.parametrize(
    "config", [SVD, {**SVD, "use_karras_sigmas": False, "use_exponential_sigmas": True}], ids=["svd", "svd-exp"]
)
def test_svd_config_converts_to_edm_preconditioning_at_parity(config, n):
    ref = diffusers.EulerDiscreteScheduler(**config)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.parameterization == "edm" and uni.parameterization.config["sigma_data"] == 1.0
    assert uni.noise_schedule.name == "edm"  # s = 1, σ̃ ∈ [0.002, 700]: the β table takes no part
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    torch.testing.assert_close(uni.timesteps.double(), ref.timesteps.double(), rtol=0, atol=1e-6)  # ¼ ln σ̃
    assert float(uni.init_noise_sigma) == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    worst, final = lockstep(ref, uni, n)
    assert worst <= 1e-5 and final <= 1e-5, (worst, final)


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
@pytest.mark.parametrize("flag", ["use_exponential_sigmas", "use_beta_sigmas"])
def test_multistep_exponential_and_beta_sigmas(cls, flag):
    """The σ̃'s agree; the model is fed diffusers' int64 truncation of each level's index as diffusers computes it
    (its float32 log table puts σ̃_max at 998.9999997: fed 998), so the loops agree on a model that reads its
    timestep (tests/test_converters_remaining.py checks every class, flag and table at five step counts)."""
    ref = getattr(diffusers, cls)(**SD, **{flag: True})
    uni = UnifiedScheduler.from_config(ref.config)
    ref.set_timesteps(10)
    uni.set_timesteps(10)
    torch.testing.assert_close(uni.sigmas.double(), ref.sigmas.double(), rtol=1e-6, atol=0)
    assert torch.equal(uni.timesteps, ref.timesteps) and int(ref.timesteps[0]) == 998
    worst, final = lockstep(ref, uni, 10, ve_view=False)
    assert worst <= 1e-5 and final <= 1e-5, (worst, final)


@pytest.mark.parametrize(
    "cls, flags, match",
    [
        ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}, "off its noise level"),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_max": 700.0}, "clips the model's timestep"),
        ("EulerDiscreteScheduler", {**SVD, "sigma_min": None}, "both sigma_min and"),
        ("DPMSolverMultistepScheduler", {"use_beta_sigmas": True, "final_sigmas_type": "sigma_min"}, "zero-length"),
        ("UniPCMultistepScheduler", {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}, "zero-length"),
        ("DEISMultistepScheduler", {"use_beta_sigmas": True}, "zero-length step"),
    ],
    ids=[
        "log-linear-alone",
        "sigma-max-off-table",
        "svd-one-end",
        "dpm-beta-sigma-min",
        "unipc-exp-sigma-min",
        "deis-beta",
    ],
)
def test_unreproducible_flags_are_refused_by_name(cls, flags, match):
    ref = getattr(diffusers, cls)(**{**SD, **flags})
    with pytest.raises(ConversionError, match=match) as info:
        UnifiedScheduler.from_config(ref.config)
    assert cls in str(info.value)


def test_converted_config_round_trips():
    ref = diffusers.EulerDiscreteScheduler(**SD, use_beta_sigmas=True, timestep_spacing="trailing")
    uni = UnifiedScheduler.from_config(ref.config)
    again = UnifiedScheduler.from_config(uni.config)
    uni.set_timesteps(7)
    again.set_timesteps(7)
    assert torch.equal(again.sigmas, uni.sigmas) and torch.equal(again.timesteps, uni.timesteps)
    back = diffusers.EulerDiscreteScheduler.from_config(uni.config)
    assert back.config.use_beta_sigmas and back.config.timestep_spacing == "trailing"
