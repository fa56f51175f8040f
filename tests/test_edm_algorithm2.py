r"""The ``edm`` sampler against an independent float64 implementation of Karras et al. (2022), Algorithm 2,
written here from the paper:

    t_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ  (i < N),  t_N = 0           (eq. 5)
    x_0 ~ N(0, t_0² I)
    for i = 0 … N−1:
        γ_i = min(S_churn/N, √2 − 1) if t_i ∈ [S_tmin, S_tmax] else 0
        ε_i ~ N(0, S_noise² I);  t̂_i = t_i + γ_i t_i;  x̂_i = x_i + √(t̂_i² − t_i²) ε_i
        d_i = (x̂_i − D(x̂_i; t̂_i)) / t̂_i;   x_{i+1} = x̂_i + (t_{i+1} − t̂_i) d_i
        if t_{i+1} ≠ 0:  d'_i = (x_{i+1} − D(x_{i+1}; t_{i+1})) / t_{i+1}
                         x_{i+1} = x̂_i + (t_{i+1} − t̂_i) (d_i + d'_i)/2

run through UnifiedScheduler on the EDM schedule with an EDM-preconditioned network F (seed 001 eqs.
203–212): the network receives c_in x and c_noise = ¼ ln σ, and D = c_skip x + c_out F.

Noise order: unisde adds step i's churn at the end of step i − 1, drawing it with diffusers' ``randn_tensor``
from the pipeline's generator; where γ_i = 0 the draw is multiplied by 0 and unisde does not make it. The
reference draws the same standard normals (torch.randn with the same generator, shape and dtype) in the same
order: one per step with γ_i > 0. S_tmax < σ_max so that γ_0 = 0 (the first step's churn would otherwise be
folded into the starting noise level), and S_tmax · (1 + γ) < σ_max so that σ̂ never leaves the schedule's
range (unisde caps σ̂ at σ_max, the paper does not).
"""

from __future__ import annotations

import math

import pytest
import torch

from unisde.diffusers.scheduler import UnifiedScheduler

SIGMA_MIN, SIGMA_MAX, RHO, SIGMA_DATA = 0.002, 80.0, 7.0, 0.5
SHAPE = (2, 3, 4, 4)
MU = torch.linspace(-0.4, 0.6, math.prod(SHAPE[1:]), dtype=torch.float64).reshape(SHAPE[1:])
VAR = torch.linspace(0.05, 0.3, math.prod(SHAPE[1:]), dtype=torch.float64).reshape(SHAPE[1:])


def gaussian_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x0 + σ n = x] for x0 ~ N(μ, diag v): μ + v / (v + σ²) (x − μ)."""
    return MU + VAR / (VAR + sigma * sigma) * (x - MU)


def nonlinear_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A smooth nonlinear denoiser (not a posterior mean), so errors in the step structure cannot cancel."""
    return gaussian_denoiser(x, sigma) + 0.1 * torch.tanh(x) * sigma / (1.0 + sigma)


DENOISERS = {"gaussian": gaussian_denoiser, "nonlinear": nonlinear_denoiser}


def karras_sigmas(n: int) -> list[float]:
    ramp = [i / (n - 1) for i in range(n)]
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return [(hi + r * (lo - hi)) ** RHO for r in ramp] + [0.0]


def float64_normals(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64)


def algorithm2(denoise, n, x0, draw, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al. 2022, Algorithm 2 in float64, ``draw(shape)`` giving standard normals; returns the final
    sample and the σ of every D evaluation."""
    t = karras_sigmas(n)
    x = x0.clone()
    evaluated = []
    for i in range(n):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t[i] <= s_tmax else 0.0
        t_hat = t[i] + gamma * t[i]
        if gamma > 0:
            eps = draw(x.shape).to(torch.float64) * s_noise
            x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps
        else:
            x_hat = x
        d = (x_hat - denoise(x_hat, t_hat)) / t_hat
        evaluated.append(t_hat)
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x_next - denoise(x_next, t[i + 1])) / t[i + 1]
            evaluated.append(t[i + 1])
            x_next = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x, evaluated


def preconditioned_network(denoise, calls):
    """F(c_in x; c_noise) such that c_skip x + c_out F = D(x; σ) (seed 001 eqs. 203, 209–212)."""

    def network(model_input, c_noise):
        sigma = math.exp(4 * float(c_noise))
        calls.append(sigma)
        x = model_input * math.sqrt(sigma**2 + SIGMA_DATA**2)  # undo c_in
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        c_out = sigma * SIGMA_DATA / math.sqrt(sigma**2 + SIGMA_DATA**2)
        return (denoise(x.to(torch.float64), sigma).to(x.dtype) - c_skip * x) / c_out

    return network


def unified_edm(n, **options):
    sched = UnifiedScheduler(
        schedule={
            "name": "edm",
            "sigma_min": SIGMA_MIN,
            "sigma_max": SIGMA_MAX,
            "rho": RHO,
            "timestep_convention": "edm",
        },
        prediction_type="edm",
        sigma_data=SIGMA_DATA,
        sampler="edm",
        sampler_options=options,
    )
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("denoiser", sorted(DENOISERS))
@pytest.mark.parametrize(
    "churn",
    [
        dict(s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0),
        dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003),
        dict(s_churn=5.0, s_tmin=0.3, s_tmax=10.0, s_noise=1.0),
    ],
    ids=["deterministic", "churn-imagenet", "churn-partial"],
)
def test_edm_heun_matches_algorithm2(denoiser, churn):
    n = 18
    denoise = DENOISERS[denoiser]
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x_start = z * karras_sigmas(n)[0]
    x_ref, sig_ref = algorithm2(denoise, n, x_start, float64_normals(11), **churn)

    sched = unified_edm(n, **churn)
    assert sched.order == 2 and len(sched.timesteps) == 2 * n - 1
    gen = torch.Generator().manual_seed(11)
    calls: list[float] = []
    network = preconditioned_network(denoise, calls)
    x = x_start.clone()  # EDM schedule: s = 1, model space = VE view
    for t in sched.timesteps:
        out = network(sched.scale_model_input(x, t), t)
        x = sched.step(out, t, x, generator=gen).prev_sample
    assert len(calls) == len(sig_ref) == 2 * n - 1
    # the timesteps pipelines see are float32 (c_noise), so σ recovered from them is exact to float32 rounding
    torch.testing.assert_close(
        torch.tensor(calls, dtype=torch.float64), torch.tensor(sig_ref, dtype=torch.float64), rtol=1e-6, atol=0
    )
    err = float((x - x_ref).abs().max())
    assert err <= 1e-6, f"edm vs Algorithm 2: max|diff| = {err:.3g}"
    # The churn really drew noise: a different generator seed moves the answer (and no noise → same answer).
    x_other, _ = algorithm2(denoise, n, x_start, float64_normals(12), **churn)
    moved = float((x_other - x_ref).abs().max())
    assert (moved > 1e-3) == (churn["s_churn"] > 0)


def test_edm_euler_matches_first_order_algorithm():
    """``solver="euler"``: Algorithm 2 without the correction (x_{i+1} = x̂_i + (t_{i+1} − t̂_i) d_i)."""
    n = 12
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = karras_sigmas(n)
    x_ref = z * t[0]
    for i in range(n):
        x_ref = x_ref + (t[i + 1] - t[i]) * (x_ref - nonlinear_denoiser(x_ref, t[i])) / t[i]
    sched = unified_edm(n, solver="euler")
    assert sched.order == 1 and len(sched.timesteps) == n
    network = preconditioned_network(nonlinear_denoiser, [])
    x = z * t[0]
    for ts in sched.timesteps:
        x = sched.step(network(sched.scale_model_input(x, ts), ts), ts, x).prev_sample
    assert float((x - x_ref).abs().max()) <= 1e-6


def test_edm_heun_float32_close_to_float64_reference():
    """The same loop in float32 (coefficients cast once): within float32 rounding of the float64 reference."""
    n = 18
    churn = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    x_start = z.double() * karras_sigmas(n)[0]
    g = torch.Generator().manual_seed(11)
    sched = unified_edm(n, **churn)
    network = preconditioned_network(nonlinear_denoiser, [])
    x = x_start.float()
    for ts in sched.timesteps:
        x = sched.step(network(sched.scale_model_input(x, ts), ts), ts, x, generator=g).prev_sample
    assert x.dtype == torch.float32
    # A float32 pipeline draws float32 normals; the reference uses the same draws promoted to float64.
    g = torch.Generator().manual_seed(11)
    x_ref, _ = algorithm2(
        nonlinear_denoiser, n, x_start, lambda shape: torch.randn(shape, generator=g, dtype=torch.float32), **churn
    )
    scale = float(x_start.abs().max())
    err = float((x.double() - x_ref).abs().max())
    assert err <= 1e-5 * scale, (err, scale)
