"""unisde.sde: the forward SDE reproduces the schedule's marginals (Monte-Carlo), and the reverse family has the
drift and diffusion of seed 000 eqs. 26/27 for every η."""

from __future__ import annotations

import math

import pytest
import torch

from unisde.core.sde import ForwardSDE, euler_maruyama_forward

F64 = torch.float64


def _em_moments(schedule, x0: float, grid: torch.Tensor) -> tuple[float, float]:
    """Exact mean and std of the Euler–Maruyama chain x ← (1 + f h) x + g √h z started at x0: its moments obey
    m ← (1 + f h) m, v ← (1 + f h)² v + g² h. Their distance to the true marginal is the discretisation error."""
    f = schedule.f(grid[:-1])
    g2 = schedule.g2(grid[:-1])
    h = grid[1:] - grid[:-1]
    m, v = x0, 0.0
    for fk, gk, hk in zip(f.tolist(), g2.tolist(), h.tolist()):
        m, v = (1 + fk * hk) * m, (1 + fk * hk) ** 2 * v + gk * hk
    return m, math.sqrt(v)


@pytest.mark.parametrize("name, t_final", [("ddpm-linear", 0.4), ("ddpm-linear", 1.0), ("ve", 1.0), ("edm", 1.0)])
def test_euler_maruyama_forward_reproduces_marginal(name, t_final, make_schedule, generator):
    """M paths of the forward SDE from fixed x0: sample mean and std agree with ``marginal`` within 5 standard
    errors plus the EM discretisation error (computed exactly from the chain's moment recursion, and itself
    required to be small so the bound stays tight)."""
    schedule = make_schedule(name)
    m_paths, steps, x0 = 20000, 400, 1.5
    grid = torch.linspace(0.0, t_final, steps + 1, dtype=F64)
    x = euler_maruyama_forward(schedule, torch.full((m_paths, 1), x0, dtype=F64), grid, generator=generator)
    mean, std = schedule.marginal(torch.tensor([x0], dtype=F64), t_final)
    mean, std = float(mean), float(std)
    em_mean, em_std = _em_moments(schedule, x0, grid)
    disc_mean, disc_std = abs(em_mean - mean), abs(em_std - std)
    assert disc_mean <= 0.02 * abs(x0) and disc_std <= 0.02 * std
    se_mean = std / math.sqrt(m_paths)
    se_std = std / math.sqrt(2 * (m_paths - 1))  # Gaussian sample std
    assert abs(float(x.mean()) - mean) <= 5 * se_mean + disc_mean
    assert abs(float(x.std()) - std) <= 5 * se_std + disc_std


def _linear_score(x, t):
    return -2.0 * x + 0.25


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_reverse_family_drift_and_diffusion(eta, make_schedule):
    """drift = f x − (1 + η²)/2 · g² · score, diffusion = η g (η = 1: eq. 26, η = 0: eq. 27), for shared and
    per-sample t; score_fn always receives per-sample times."""
    schedule = make_schedule("vp-linear")
    seen = []

    def score(x, t):
        seen.append(t.shape)
        return _linear_score(x, t)

    rev = ForwardSDE(schedule).reverse(score, eta=eta)
    x = torch.linspace(-2, 2, 12, dtype=F64).reshape(4, 3)
    for t in (0.37, torch.tensor([0.1, 0.37, 0.6, 0.9], dtype=F64)):
        tt = torch.as_tensor(t, dtype=F64)
        f = schedule.f(tt).reshape(-1, 1)
        g2 = schedule.g2(tt).reshape(-1, 1)
        expected = f * x - 0.5 * (1 + eta**2) * g2 * _linear_score(x, tt)
        assert torch.allclose(rev.drift(x, t), expected, rtol=1e-14, atol=1e-14)
        assert torch.allclose(rev.diffusion(x, t), (eta * g2.sqrt()).expand(-1, 1), rtol=1e-14, atol=0)
    assert seen == [(4,), (4,)]
    assert rev.is_ode == (eta == 0.0)


def test_probability_flow_is_eta_zero_and_step_is_deterministic(make_schedule):
    schedule = make_schedule("ve")
    fwd = ForwardSDE(schedule)
    pf = fwd.probability_flow(_linear_score)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    assert pf.eta == 0.0
    assert torch.equal(pf.drift(x, 0.5), fwd.reverse(_linear_score, eta=0.0).drift(x, 0.5))
    # η = 0 ignores any noise: an ODE step.
    step = pf.euler_maruyama_step(x, 0.5, 0.45, noise=torch.ones_like(x))
    assert torch.allclose(step, x - pf.drift(x, 0.5) * 0.05, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_eta_outside_unit_interval_is_rejected(eta, make_schedule):
    with pytest.raises(ValueError, match=rf"eta must lie in \[0, 1\].*got {eta}"):
        ForwardSDE(make_schedule("ve")).reverse(_linear_score, eta=eta)
