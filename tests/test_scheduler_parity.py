r"""Live parity: full sampling loops through UnifiedScheduler reproduce the diffusers scheduler of the same
algorithm, in the same test, with the same starting state, the same model and the same generator seeds.

Tolerance: max |x_uni − x_ref| ≤ 1e-5 · scale in float32, where scale = max |x| over the *reference*
trajectory (every state the diffusers loop visits, in its own space — the VE view x̃ = x/s for Euler/Heun/
EulerAncestral/EDMEuler). Both loops end at σ = 0, so both final samples are in data space and comparable.

Starting state: diffusers' Euler/Heun work in the VE view and start from x̃_T = z · ref.init_noise_sigma
(σ̃_max for linspace/trailing spacing, √(σ̃_max² + 1) for leading); unisde's sample lives in the model's own
space, x = s x̃, so it starts from x_T = s(t_0) · x̃_T. Then both see the same state.

The model is smooth and nonlinear, F(x, τ) = x (0.8 + 1e-4 τ) + 0.05 sin 3x, τ the timestep the model is fed,
so a wrong timestep, a wrong input scaling or a wrong coefficient changes the output.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    ScoreSdeVeScheduler,
    UniPCMultistepScheduler,
)

import unisde
from unisde.diffusers.scheduler import UnifiedScheduler

SHAPE = (1, 2, 4, 4)
REL_TOL = 1e-5


def fake_model(x: torch.Tensor, timestep) -> torch.Tensor:
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x)


def run_loop(scheduler, x: torch.Tensor, seed: int | None, n: int, model=fake_model, **step_kwargs):
    """The diffusers pipeline loop; returns (final sample, max |x| over every visited state)."""
    if "generator" in inspect.signature(scheduler.step).parameters:  # HeunDiscreteScheduler draws no noise
        step_kwargs["generator"] = torch.Generator().manual_seed(seed) if seed is not None else None
    scale = float(x.abs().max())
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
        scale = max(scale, float(x.abs().max()))
    return x, scale


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def s_at_start(uni: UnifiedScheduler) -> float:
    return float(uni.noise_schedule.s(uni._eval_times[0]))


def assert_parity(x_uni, x_ref, scale, what):
    err = float((x_uni - x_ref).abs().max())
    assert torch.isfinite(x_ref).all()
    assert err <= REL_TOL * scale, f"{what}: max|diff| = {err:.3g} > {REL_TOL:g} x scale {scale:.3g}"
    return err


def parity_in_model_space(ref, uni, n, seed=1, **step_kwargs):
    """DDPM/DDIM-style schedulers: both live in the model's space and start from the same z."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert torch.equal(uni.timesteps, ref.timesteps), (uni.timesteps, ref.timesteps)
    assert uni.timesteps.dtype == torch.int64
    z = start_noise()
    x_ref, scale = run_loop(ref, z * ref.init_noise_sigma, seed, n, **step_kwargs)
    x_uni, _ = run_loop(uni, z * uni.init_noise_sigma, seed, n, **step_kwargs)
    return x_uni, x_ref, scale


def parity_ve_view(ref, uni, n, seed=1, model=fake_model, timestep_atol=1e-4, **step_kwargs):
    """Euler-type schedulers: reference in x̃ = x/s from z·init_noise_sigma, unisde from s(t_0)·x̃_T.

    ``timestep_atol``: fractional timesteps (linspace without rounding) are σ(t) inverted through diffusers'
    log-σ interpolation of the table, while diffusers passes the fractional index itself; the two differ by
    up to ~3e-3 timesteps between table entries (the σ's agree to ~1e-5 relative)."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert len(uni.timesteps) == len(ref.timesteps)
    torch.testing.assert_close(uni.timesteps.double(), ref.timesteps.double(), rtol=1e-5, atol=timestep_atol)
    x_tilde = start_noise() * ref.init_noise_sigma
    x_ref, scale = run_loop(ref, x_tilde, seed, n, model=model, **step_kwargs)
    x_uni, _ = run_loop(uni, x_tilde * s_at_start(uni), seed, n, model=model, **step_kwargs)
    return x_uni, x_ref, scale


# ---------------------------------------------------------------------------------------------- DDPM
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddpm_parity(prediction_type, beta_schedule, spacing, variance_type, clip_sample):
    ref = DDPMScheduler(
        beta_schedule=beta_schedule,
        timestep_spacing=spacing,
        variance_type=variance_type,
        clip_sample=clip_sample,
        prediction_type=prediction_type,
    )
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "ddpm"
    x_uni, x_ref, scale = parity_in_model_space(ref, uni, 10)
    assert_parity(x_uni, x_ref, scale, "DDPM")


def test_ddpm_parity_nontrivial_noise_draws():
    """The generator stream matters: a different seed gives a different sample, the same seed the same one."""
    ref = DDPMScheduler()
    uni = UnifiedScheduler.from_config(ref.config)
    x_a, x_ref, scale = parity_in_model_space(ref, uni, 10, seed=1)
    x_b, _, _ = parity_in_model_space(ref, uni, 10, seed=2)
    assert float((x_a - x_b).abs().max()) > 1e-2 * scale
    assert_parity(x_a, x_ref, scale, "DDPM seed 1")


# ---------------------------------------------------------------------------------------------- DDIM
# diffusers' DDIM steps from t to prev = t − N // n whatever the spacing. For leading and trailing spacing that
# is the next grid point (grid-to-grid, what unisde's ddim does on any grid); for `linspace` the grid is not
# uniform in integer steps (np.linspace(0, N−1, n).round()), so diffusers' DDIM evaluates x̂0 on the grid but
# jumps to t − N//n, which is off the grid — a different algorithm from DDIM on that grid, so it is not compared.
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_parity(eta, spacing, set_alpha_to_one, prediction_type):
    ref = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing=spacing,
        set_alpha_to_one=set_alpha_to_one,
        steps_offset=1 if spacing == "leading" else 0,
        prediction_type=prediction_type,
        clip_sample=False,
    )
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "ddim"
    x_uni, x_ref, scale = parity_in_model_space(ref, uni, 10, eta=eta)
    assert_parity(x_uni, x_ref, scale, f"DDIM eta={eta}")


def test_ddim_parity_clipped_model_output():
    ref = DDIMScheduler(clip_sample=True, timestep_spacing="trailing")
    uni = UnifiedScheduler.from_config(ref.config)
    x_uni, x_ref, scale = parity_in_model_space(ref, uni, 10, eta=0.5, use_clipped_model_output=True)
    assert_parity(x_uni, x_ref, scale, "DDIM clipped")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_zero_terminal_snr_parity(eta):
    """Zero terminal SNR (Lin et al. 2024), v-prediction, trailing spacing: DDIM's coefficients use s(1) = 0
    exactly (data-prediction form stays finite there), as diffusers' DDIM keeps ᾱ_T = 0, so the loops agree."""
    ref = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
    )
    assert float(ref.alphas_cumprod[-1]) == 0.0
    uni = UnifiedScheduler.from_config(ref.config)
    x_uni, x_ref, scale = parity_in_model_space(ref, uni, 10, eta=eta)
    assert_parity(x_uni, x_ref, scale, "DDIM zero-SNR")


# ---------------------------------------------------------------------------------------------- Euler / Heun
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_karras_parity(prediction_type):
    ref = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        use_karras_sigmas=True,
        prediction_type=prediction_type,
    )
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "edm" and uni.sampler_options["solver"] == "euler"
    x_uni, x_ref, scale = parity_ve_view(ref, uni, 10)
    assert_parity(x_uni, x_ref, scale, "Euler karras")


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_euler_spacing_parity(spacing):
    """Without Karras sigmas Euler's grid is the diffusers spacing; leading needs init σ = √(σ̃² + 1)."""
    ref = EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    uni = UnifiedScheduler.from_config(ref.config)
    x_uni, x_ref, scale = parity_ve_view(ref, uni, 10)
    assert_parity(x_uni, x_ref, scale, f"Euler {spacing}")


@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, HeunDiscreteScheduler])
@pytest.mark.parametrize("n", [7, 23])
def test_fractional_linspace_parity(cls, n):
    """Euler and Heun keep linspace's fractional timesteps (np.linspace(0, N − 1, n) unrounded): converted
    configs use the same grid (``linspace_fractional``), not the rounded one of DDPM/DDIM."""
    ref = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.time_grid == "linspace_fractional"
    x_uni, x_ref, scale = parity_ve_view(ref, uni, n, timestep_atol=5e-3)
    assert uni.timesteps.dtype == torch.float32 and float((uni.timesteps - uni.timesteps.round()).abs().max()) > 0.1
    assert_parity(x_uni, x_ref, scale, f"{cls.__name__} linspace n={n}")


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"prediction_type": "sample", "timestep_spacing": "trailing"},
        {"timestep_spacing": "leading", "steps_offset": 1},
        {"use_karras_sigmas": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    ],
    ids=["eps-linspace", "v-scaled", "x0-trailing", "leading", "karras"],
)
@pytest.mark.parametrize("n", [4, 10, 23])
def test_lms_parity(config, n):
    """LMSDiscreteScheduler (4th-order Adams–Bashforth in σ̃, warm-up at orders 1–3) converts to ``lms``."""
    ref = LMSDiscreteScheduler(**config)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "lms"
    x_uni, x_ref, scale = parity_ve_view(ref, uni, n, timestep_atol=5e-3)
    assert_parity(x_uni, x_ref, scale, f"LMS {config} n={n}")


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"prediction_type": "sample", "timestep_spacing": "trailing"},
        {"solver_order": 1},
        {"solver_order": 3},
        {"disable_corrector": [0, 2]},
        {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        {"final_sigmas_type": "sigma_min", "solver_order": 3},
    ],
    ids=[
        "default",
        "v-scaled",
        "x0-trailing",
        "order1",
        "order3",
        "disable-corrector",
        "bh1-sigma-min",
        "sigma-min-order3",
    ],
)
@pytest.mark.parametrize("n", [5, 12])
def test_unipc_parity(config, n):
    """UniPCMultistepScheduler (UniP + UniC, data prediction) converts to ``unipc`` on diffusers' own grid.
    (bh1 is compared with final_sigmas_type="sigma_min": diffusers' bh1 step to σ = 0 computes −∞ · 0 = NaN.)"""
    ref = UniPCMultistepScheduler(**config)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "unipc"
    x_uni, x_ref, scale = parity_in_model_space(ref, uni, n)
    assert_parity(x_uni, x_ref, scale, f"UniPC {config} n={n}")


@pytest.mark.parametrize("config", [{}, {"solver_order": 3}, {"algorithm_type": "sde-dpmsolver++"}])
def test_dpmsolver_final_sigma_min_parity(config):
    """final_sigmas_type="sigma_min": the last step ends at the table's σ_min (index 0), not at clean data."""
    pytest.importorskip("unisde_dpmsolver")
    ref = DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", **config)
    uni = UnifiedScheduler.from_config(ref.config)
    x_uni, x_ref, scale = parity_in_model_space(ref, uni, 12)
    assert_parity(x_uni, x_ref, scale, f"DPM++ sigma_min {config}")


@pytest.mark.parametrize(
    "config",
    [
        {"timestep_spacing": "leading", "steps_offset": 1},
        {
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "set_alpha_to_one": False,
        },
        {"timestep_spacing": "trailing", "set_alpha_to_one": True},
    ],
    ids=["leading", "sd-scaled-linear", "trailing"],
)
@pytest.mark.parametrize("n", [2, 5, 10])
def test_pndm_plms_parity(config, n):
    """PNDMScheduler with skip_prk_steps=True (Stable Diffusion's setting) converts to ``pndm``: the same n + 1
    timesteps (t_1 twice) and samples. (diffusers steps from t to t − N//n, on the grid only when n divides N for
    trailing spacing — as DDIM, see above — so n divides 1000 here.) ε-models only: for v-models diffusers applies
    Adams–Bashforth to the raw v
    outputs, unisde to ε̂ (the method's variable), which differ at O(h²)."""
    ref = PNDMScheduler(skip_prk_steps=True, **config)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "pndm"
    x_uni, x_ref, scale = parity_in_model_space(ref, uni, n)
    assert len(uni.timesteps) == n + (1 if n > 1 else 0)
    assert_parity(x_uni, x_ref, scale, f"PNDM {config} n={n}")


def test_pndm_default_config_runs_at_any_step_count():
    """PNDM's defaults (leading spacing, offset 0, set_alpha_to_one=False) evaluate at index 0 last: the grid then
    ends on clean data there instead of repeating index 0 (diffusers' step from index 0 to ᾱ_0 is the identity)."""
    uni = UnifiedScheduler.from_config(PNDMScheduler(skip_prk_steps=True).config)
    for n in (1, 2, 7):
        uni.set_timesteps(n)
        x, _ = run_loop(uni, start_noise(), 0, n)
        assert torch.isfinite(x).all() and int(uni.timesteps[-1]) == 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_heun_karras_parity(prediction_type):
    ref = HeunDiscreteScheduler(use_karras_sigmas=True, prediction_type=prediction_type)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "edm" and uni.order == ref.order == 2
    x_uni, x_ref, scale = parity_ve_view(ref, uni, 8)
    assert len(uni.timesteps) == 2 * 8 - 1
    assert_parity(x_uni, x_ref, scale, "Heun karras")


def test_euler_ancestral_is_ddim_eta_one():
    """EulerAncestral's σ_up/σ_down step is exactly DDIM with η = 1 seen in the VE view (the posterior mean and
    variance of DDPM rewritten in σ̃): same noise stream, same sample to float32 rounding."""
    ref = EulerAncestralDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing"
    )
    uni = UnifiedScheduler.from_config(ref.config)
    assert (
        uni.config.sampler == "ddim"
        and uni.sampler_options == {"eta": 1.0, "use_clipped_model_output": False}
        or uni.sampler_options.get("eta") == 1.0
    )
    x_uni, x_ref, scale = parity_ve_view(ref, uni, 10, seed=3)
    assert_parity(x_uni, x_ref, scale, "EulerAncestral as ddim(eta=1)")


def test_edm_euler_parity():
    """EDMEulerScheduler: an EDM-preconditioned model, fed c_in·x̃ and c_noise = ¼ ln σ̃ (seed 001 eqs. 203–212)."""
    ref = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "edm" and uni.parameterization.name == "edm"
    assert uni.config.prediction_type == "epsilon" and uni.config.parameterization == "edm"

    seen = {"ref": [], "uni": []}

    def model_factory(key):
        def model(x, t):
            seen[key].append(float(t))
            return fake_model(x, t)

        return model

    ref.set_timesteps(12)
    uni.set_timesteps(12)
    x_tilde = start_noise() * ref.init_noise_sigma
    x_ref, scale = run_loop(ref, x_tilde, 0, 12, model=model_factory("ref"))
    x_uni, _ = run_loop(uni, x_tilde * s_at_start(uni), 0, 12, model=model_factory("uni"))
    torch.testing.assert_close(torch.tensor(seen["uni"]), torch.tensor(seen["ref"]), rtol=1e-6, atol=1e-6)
    assert_parity(x_uni, x_ref, scale, "EDMEuler")

    # converting back is lossless: the round-tripped EDMEulerScheduler samples exactly as the original
    back = EDMEulerScheduler.from_config(uni.config)
    assert back.config.prediction_type == "epsilon" and back.config.sigma_data == ref.config.sigma_data
    back.set_timesteps(12)
    x_back, _ = run_loop(back, x_tilde, 0, 12)
    assert torch.equal(x_back, x_ref)
    # a caller naming the parameterisation wins over the EDM default
    assert UnifiedScheduler.from_config(ref.config, prediction_type="sample").parameterization.name == "sample"


# ---------------------------------------------------------------------------------------------- ScoreSdeVe
def _require_pc():
    """The `pc` sampler is registered by its own plugin; this parity test runs as soon as it is. The only
    condition for not running is the sampler registry lacking `pc` (reported as a skip with the reason)."""
    if "pc" not in unisde.list_samplers():
        pytest.skip("sampler 'pc' is not registered yet (unisde.list_samplers() = %s)" % unisde.list_samplers())


def test_score_sde_ve_parity():
    """ScoreSdeVeScheduler's predictor (reverse diffusion) + Langevin corrector as `pc`, with the same noise draws:
    diffusers draws the corrector's noise then the predictor's noise per step from one generator."""
    _require_pc()
    n = 6
    ref = ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, snr=0.16, correct_steps=1)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "pc"

    def score_model(x, sigma):  # a smooth score-like field: −x/σ² damped, plus a nonlinearity
        sig = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        return -x / (sig * sig + 1.0) + 0.05 * torch.sin(3 * x)

    ref.set_timesteps(n)
    ref.set_sigmas(n)
    gen = torch.Generator().manual_seed(0)
    x = start_noise() * ref.init_noise_sigma
    x_start = x.clone()
    scale = float(x.abs().max())
    for i, t in enumerate(ref.timesteps):
        sigma_t = ref.sigmas[i] * torch.ones(SHAPE[0])
        for _ in range(ref.config.correct_steps):
            x = ref.step_correct(score_model(x, sigma_t), x, generator=gen).prev_sample
        out = ref.step_pred(score_model(x, sigma_t), t, x, generator=gen)
        x, x_mean = out.prev_sample, out.prev_sample_mean
        scale = max(scale, float(x.abs().max()))

    uni.set_timesteps(n)
    x_uni, _ = run_loop(uni, x_start, 0, n, model=score_model)
    # diffusers' pipeline returns the last predictor *mean* (no noise on the final step).
    assert_parity(x_uni, x_mean, scale, "ScoreSdeVe as pc")
