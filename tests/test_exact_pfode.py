"""Exact solution: Gaussian data N(μ, Σ) with its exact denoiser (unisde.analytic.Gaussian). The PF-ODE
(seed 000 eq. 27) integrated finely from the prior lands on the data distribution.

For Gaussian data p_t = N(s μ, C_t), C_t = s² Σ + σ² I, and the PF-ODE is linear: with y = x − s μ it reads
dy/dt = (f + ½ g² C_t⁻¹) y, and since dC/dt = 2 f C + g² I (eq. 24) its flow map is known in closed form,

    x_t = s_t μ + C_t^{1/2} C_1^{−1/2} (x_1 − s_1 μ).

So we check (1) the integrated flow against this map, with Heun's second-order convergence, and (2) the
pushed-forward prior samples against the data's mean and covariance within sampling error.
"""

from __future__ import annotations

import math

import pytest
import torch

from unisde import NoiseSchedule
from unisde.analytic import Gaussian
from unisde.core.sde import ForwardSDE

F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
SIGMA = torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=F64)


def _sqrtm(c: torch.Tensor, power: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return vecs @ torch.diag(vals**power) @ vecs.T


def _exact_flow(schedule, x1: torch.Tensor, t_end: float) -> torch.Tensor:
    def cov(t):
        return float(schedule.s(t)) ** 2 * SIGMA + float(schedule.sigma(t)) ** 2 * torch.eye(2, dtype=F64)

    a = _sqrtm(cov(t_end), 0.5) @ _sqrtm(cov(1.0), -0.5)
    return float(schedule.s(t_end)) * MU + (x1 - float(schedule.s(1.0)) * MU) @ a.T


def _heun(flow, x: torch.Tensor, t_end: float, steps: int) -> torch.Tensor:
    """Heun's method for the PF-ODE from t = 1 down to t_end on a uniform grid (trapezoidal corrector)."""
    grid = torch.linspace(1.0, t_end, steps + 1, dtype=F64).tolist()
    for t, t_next in zip(grid[:-1], grid[1:]):
        h = t - t_next
        d = flow.drift(x, t)
        x_pred = x - h * d
        x = x - 0.5 * h * (d + flow.drift(x_pred, t_next))
    return x


# vp-linear: σ(0) = 0, where the score is undefined, so integrate to t = 1e-3 and compare with p at 1e-3.
# edm: σ(0) = 0.002 > 0, so integrate all the way to t = 0; uniform t steps are EDM's ρ = 7 grid.
CASES = [("vp-linear", NoiseSchedule.vp_linear, 1e-3), ("edm", NoiseSchedule.edm, 0.0)]


@pytest.mark.parametrize("name, build, t_end", CASES)
def test_pf_ode_flow_matches_closed_form_with_second_order(name, build, t_end):
    schedule = build()
    data = Gaussian(MU, SIGMA)
    flow = ForwardSDE(schedule).probability_flow(lambda x, t: data.score(x, t, schedule))
    x1 = schedule.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = _exact_flow(schedule, x1, t_end)
    errors = [float((_heun(flow, x1, t_end, k) - exact).abs().max()) for k in (40, 80, 160)]
    assert errors[-1] < 5e-3, errors  # data scale ~1; measured 1.2e-4 (vp-linear), 2.7e-3 (edm)
    for ratio in (errors[0] / errors[1], errors[1] / errors[2]):
        assert 3.0 < ratio < 5.5, errors  # Heun is second order: ~4 per halving


@pytest.mark.parametrize("name, build, t_end", CASES)
def test_pf_ode_from_the_prior_lands_on_the_data(name, build, t_end, generator):
    """n prior samples through the PF-ODE: sample mean and covariance match p at t_end (≈ the data) within
    5 standard errors plus the bias of starting from the prior N(0, prior_std² I) instead of the exact p_1
    (computed by pushing the prior through the exact flow map; asserted small so it cannot hide an error)."""
    schedule = build()
    data = Gaussian(MU, SIGMA)
    flow = ForwardSDE(schedule).probability_flow(lambda x, t: data.score(x, t, schedule))
    n = 8000
    x1 = schedule.prior_sample((n, 2), generator=generator, dtype=F64)
    x = _heun(flow, x1, t_end, 160)  # flow error ≤ 2.7e-3 at 160 steps (previous test), < ¼ of the SE
    target_mean = float(schedule.s(t_end)) * MU
    target_cov = float(schedule.s(t_end)) ** 2 * SIGMA + float(schedule.sigma(t_end)) ** 2 * torch.eye(2, dtype=F64)
    # Exact pushforward of the prior: linear map x ↦ c + A x of N(0, p² I) is N(c, p² A Aᵀ).
    c = _exact_flow(schedule, torch.zeros(1, 2, dtype=F64), t_end)[0]
    a = _exact_flow(schedule, torch.eye(2, dtype=F64), t_end) - c
    push_mean, push_cov = c, schedule.prior_std**2 * a.T @ a
    bias_mean = (push_mean - target_mean).abs()
    bias_cov = (push_cov - target_cov).abs()
    assert float(bias_mean.max()) < 0.02 and float(bias_cov.max()) < 1e-3
    mean = x.mean(0)
    cov = torch.cov(x.T)
    se_mean = torch.sqrt(torch.diag(target_cov) / n)
    var = torch.diag(target_cov)
    se_cov = torch.sqrt((var[:, None] * var[None, :] + target_cov**2) / n)
    assert bool(((mean - target_mean).abs() <= 5 * se_mean + bias_mean).all()), (mean, target_mean, se_mean)
    assert bool(((cov - target_cov).abs() <= 5 * se_cov + bias_cov).all()), (cov, target_cov, se_cov)
    # And the target is the data distribution up to the t_end noise floor.
    assert torch.allclose(target_cov, SIGMA, atol=2e-3) and torch.allclose(target_mean, MU, atol=2e-3)
    assert math.isfinite(float(x.abs().max()))
