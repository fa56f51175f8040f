"""Parameterisations: exact round trips for every parameterisation × schedule, training targets, live parity
with diffusers (get_velocity, pred_original_sample), and EDM's preconditioning (seed 001 eqs. 203–217)."""

from __future__ import annotations

import math

import pytest
import torch

import unisde
from unisde.parameterizations import eps_from_denoised, schedule_coefficients, score_from_denoised

F64 = torch.float64
NAMES = ("epsilon", "sample", "v_prediction", "score", "edm")
# Per-sample times from near the data to the prior end (t = 1: zero-SNR schedules use their t_end values).
TIMES = torch.tensor([0.01, 0.1, 0.37, 0.5, 0.9, 0.99, 1.0], dtype=F64)


def _batch(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(len(TIMES), 3, 2, generator=gen, dtype=F64).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype, tol", [(F64, 1e-13), (torch.float32, 1e-6)])
def test_round_trips_are_exact(name, dtype, tol, schedule):
    """to_denoised ∘ from_denoised and from_denoised ∘ to_denoised are the identity to rounding: the error is
    at most ``tol`` × the size of the terms a·x and b·F that the conversion adds (cancellation is the only
    source of error)."""
    param = unisde.get_parameterization(name)
    x, x0, out = _batch(dtype)
    a, b = param.coefficients(schedule, TIMES)
    a, b = a.reshape(-1, 1, 1), b.reshape(-1, 1, 1)
    assert bool(torch.isfinite(a).all() and torch.isfinite(b).all() and (b != 0).all())
    out_from_x0 = param.from_denoised(x0, x, TIMES, schedule)
    scale = (a * x.to(F64)).abs() + (b * out_from_x0.to(F64)).abs()
    assert bool(((param.to_denoised(out_from_x0, x, TIMES, schedule) - x0).to(F64).abs() <= tol * scale).all())
    x0_from_out = param.to_denoised(out, x, TIMES, schedule)
    scale = ((a * x.to(F64)).abs() + x0_from_out.to(F64).abs()) / b.abs()
    assert bool(((param.from_denoised(x0_from_out, x, TIMES, schedule) - out).to(F64).abs() <= tol * scale).all())
    assert param.to_denoised(out, x, TIMES, schedule).dtype == dtype


@pytest.mark.parametrize("name", NAMES)
def test_training_target_reproduces_x0(name, schedule):
    """training_target's target F* makes to_denoised(F*, x_t) = x0, and the model input is c_in · x_t."""
    param = unisde.get_parameterization(name)
    x0, noise, _ = _batch(F64, seed=1)
    t = TIMES[:-1]  # t < 1, where x_t = s x0 + σ ε still carries x0
    x0, noise = x0[:-1], noise[:-1]
    model_input, target = param.training_target(x0, noise, t, schedule)
    x_t = schedule.add_noise(x0, noise, t)
    assert torch.allclose(param.to_denoised(target, x_t, t, schedule), x0, rtol=0, atol=1e-9)
    assert torch.allclose(model_input, param.model_input(x_t, t, schedule), rtol=1e-15, atol=0)


@pytest.mark.parametrize("sched_name", ["ddpm-linear", "ddpm-cosine", "zero-snr", "vp-linear", "sub-vp", "ve", "edm"])
def test_training_targets_are_eps_x0_v(sched_name, make_schedule):
    """ε-, x0- and v-prediction targets are ε, x0 and v = α ε − β x0 (α = s/r, β = σ/r, r = √(s² + σ²))."""
    schedule = make_schedule(sched_name)
    x0, noise, _ = _batch(F64, seed=2)
    t = TIMES[:-1]
    x0, noise = x0[:-1], noise[:-1]
    s, sigma = schedule.s(t).reshape(-1, 1, 1), schedule.sigma(t).reshape(-1, 1, 1)
    r = torch.sqrt(s * s + sigma * sigma)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": s / r * noise - sigma / r * x0}
    for name, target in expected.items():
        _, got = unisde.get_parameterization(name).training_target(x0, noise, t, schedule)
        assert torch.allclose(got, target, rtol=0, atol=1e-10 * float(1 + (sigma / s).max())), name


@pytest.mark.parametrize(
    "config",
    [{}, {"beta_schedule": "squaredcos_cap_v2"}, {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True}],
)
def test_v_target_matches_diffusers_get_velocity(config):
    """Live parity: v from training_target equals DDPMScheduler.get_velocity (float64 inputs, so both use the
    same float32-built table exactly). Exception, as documented in unisde.schedule: at a zero-terminal-SNR
    table's last index (ᾱ = 0), coefficients are taken at t_end, so v = s(t_end) ε − x0 instead of −x0."""
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(**config)
    schedule = unisde.NoiseSchedule.from_diffusers_config(ddpm.config)
    gen = torch.Generator().manual_seed(3)
    idx = torch.tensor([0, 7, 250, 500, 998, 999])
    x0, noise = (torch.randn(len(idx), 4, generator=gen, dtype=F64) for _ in range(2))
    _, v = unisde.get_parameterization("v").training_target(x0, noise, schedule.t_from_index(idx), schedule)
    diff = (v - ddpm.get_velocity(x0, noise, idx)).abs()
    if schedule.t_end < 1.0:
        s_end = float(schedule.s(schedule.t_end))
        assert float(ddpm.alphas_cumprod[-1]) == 0.0 and 0 < s_end < 3e-4
        assert torch.allclose(diff[-1], s_end * noise[-1].abs(), rtol=1e-3, atol=1e-7)  # + O(s_end²)·x0
        diff = diff[:-1]
    assert float(diff.max()) < 1e-12


@pytest.mark.parametrize("prediction_type, name", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_to_denoised_matches_diffusers_pred_original_sample(prediction_type, name):
    """Live parity: x̂0 equals DDPMScheduler.step's pred_original_sample for the same raw model output."""
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(prediction_type=prediction_type, clip_sample=False)
    schedule = unisde.NoiseSchedule.from_diffusers_config(ddpm.config)
    param = unisde.get_parameterization(name)
    gen = torch.Generator().manual_seed(4)
    for i in (1, 300, 999):
        x, out = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
        theirs = ddpm.step(out, i, x, generator=gen).pred_original_sample
        ours = param.to_denoised(out, x, schedule.t_from_index(i), schedule)
        assert float((ours - theirs).abs().max()) < 1e-5 * max(1.0, float(theirs.abs().max()))


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_coefficients_match_seed_formulas(sigma_data, make_schedule):
    """EDM on the EDM schedule (s = 1): c_skip (eq. 211), c_out (eq. 212), c_in (eq. 209), c_noise = ¼ ln σ,
    λ(σ) (eq. 217) as the default loss weight and F's target (eq. 206)."""
    schedule = make_schedule("edm")
    param = unisde.get_parameterization("edm", sigma_data=sigma_data)
    t = torch.linspace(0, 1, 51, dtype=F64)
    sig = schedule.sigma(t)
    c_skip = sigma_data**2 / (sig**2 + sigma_data**2)
    c_out = sig * sigma_data / torch.sqrt(sig**2 + sigma_data**2)
    c_in = 1 / torch.sqrt(sig**2 + sigma_data**2)
    a, b = param.coefficients(schedule, t)
    assert torch.allclose(a, c_skip, rtol=1e-14, atol=0) and torch.allclose(b, c_out, rtol=1e-14, atol=0)
    assert torch.allclose(param.input_scale(schedule, t), c_in, rtol=1e-14, atol=0)
    assert torch.allclose(param.model_time(schedule, t), 0.25 * torch.log(sig), rtol=1e-14, atol=0)
    lam = (sig**2 + sigma_data**2) / (sig * sigma_data) ** 2
    assert torch.allclose(param.default_loss_weight(schedule, t), lam, rtol=1e-13, atol=0)
    gen = torch.Generator().manual_seed(5)
    y, n = torch.randn(51, 2, generator=gen, dtype=F64), torch.randn(51, 2, generator=gen, dtype=F64)
    model_input, target = param.training_target(y, n, t, schedule)
    noisy = y + sig[:, None] * n
    assert torch.allclose(target, (y - c_skip[:, None] * noisy) / c_out[:, None], rtol=1e-12, atol=1e-12)
    assert torch.allclose(model_input, c_in[:, None] * noisy, rtol=1e-14, atol=0)


def test_edm_on_a_vp_table_works_in_the_ve_view(make_schedule):
    """On a VP table, EDM preconditioning sees x̃ = x/s and σ̃ = σ/s: x̂0 = c_skip(σ̃) x/s + c_out(σ̃) F."""
    schedule = make_schedule("ddpm-linear")
    param = unisde.get_parameterization("edm")
    t = TIMES[:-1]
    s, sig = schedule.s(t), schedule.ve_sigma(t)
    a, b = param.coefficients(schedule, t)
    assert torch.allclose(a, 0.25 / (sig**2 + 0.25) / s, rtol=1e-12, atol=0)
    assert torch.allclose(b, 0.5 * sig / torch.sqrt(sig**2 + 0.25), rtol=1e-12, atol=0)
    assert torch.allclose(param.input_scale(schedule, t), 1 / torch.sqrt(sig**2 + 0.25) / s, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_model_time_inverse(name, schedule):
    param = unisde.get_parameterization(name)
    t = torch.linspace(0.05, min(0.95, schedule.t_end), 19, dtype=F64)
    assert torch.allclose(param.t_from_model_time(schedule, param.model_time(schedule, t)), t, rtol=0, atol=1e-8)


def test_score_noise_denoised_are_one_quantity(make_schedule):
    """Seed 001 eqs. 95/198: score = (s x̂0 − x)/σ² = −ε̂/σ, and the score parameterisation's x̂0 agrees."""
    schedule = make_schedule("ddpm-cosine")
    x, x0_hat, _ = _batch(F64, seed=6)
    t = TIMES[:-1]
    x, x0_hat = x[:-1], x0_hat[:-1]
    s, sigma = schedule_coefficients(schedule, t)
    score = score_from_denoised(x0_hat, x, t, schedule)
    eps = eps_from_denoised(x0_hat, x, t, schedule)
    assert torch.allclose(score, -eps / sigma.reshape(-1, 1, 1), rtol=1e-12, atol=1e-12)
    assert torch.allclose(
        unisde.get_parameterization("score").to_denoised(score, x, t, schedule), x0_hat, rtol=1e-10, atol=1e-10
    )
    assert torch.allclose(s.reshape(-1, 1, 1) * x0_hat + sigma.reshape(-1, 1, 1) * eps, x, rtol=1e-12, atol=1e-12)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma_dta'\].*valid options: .*sigma_data"):
        unisde.get_parameterization("edm", sigma_dta=0.5)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma_data'\] for parameterization 'epsilon'"):
        unisde.get_parameterization("eps", sigma_data=0.5)


def test_output_weight_converts_x0_space_loss():
    """‖F − F*‖² · b² = ‖x̂0 − x0‖² (the reason output_weight = b²), checked on random outputs."""
    schedule = unisde.NoiseSchedule.vp_cosine()
    t = TIMES[:-1]
    gen = torch.Generator().manual_seed(8)
    x0, noise, out = (torch.randn(len(t), 5, generator=gen, dtype=F64) for _ in range(3))
    for name in NAMES:
        param = unisde.get_parameterization(name)
        _, target = param.training_target(x0, noise, t, schedule)
        x_t = schedule.add_noise(x0, noise, t)
        lhs = param.output_weight(schedule, t) * ((out - target) ** 2).sum(1)
        rhs = ((param.to_denoised(out, x_t, t, schedule) - x0) ** 2).sum(1)
        assert torch.allclose(lhs, rhs, rtol=1e-9, atol=0), name
        assert math.isclose(
            float(param.default_loss_weight(schedule, t)[2] * param.output_weight(schedule, t)[2]), 1.0, rel_tol=1e-14
        )
