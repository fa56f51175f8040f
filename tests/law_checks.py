"""Shared check for stochastic samplers: sample values drawn through UnifiedScheduler against the chain's exact law."""

from __future__ import annotations

import math

import torch

from unisde.analytic import Gaussian
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.plugins import get_sampler
from unisde.sampling import run_loop


def exact_moments(name, sched, grid, options=None, mu=0.5, v0=0.25):
    """(mean, variance) of sampler ``name``'s 1-d output for data N(mu, v0), started from the exact marginal at t_0
    (s(t_0) mu, s² v0 + σ²): the loop is affine in its Gaussian inputs, so one run with zero draws that require grad
    gives both exactly."""
    smp = get_sampler(name)(sched, **(options or {}))
    times = smp.prepare(grid)
    t0 = float(grid[0])
    s, sig = float(sched.s(t0)), float(sched.sigma(t0))
    start = torch.full((1, 1), s * mu, dtype=torch.float64, requires_grad=True)
    draws = []

    def zero_noise(like):
        draws.append(torch.zeros_like(like, requires_grad=True))
        return draws[-1]

    smp.noise_sampler = zero_noise
    dist = Gaussian(torch.full((1,), mu), torch.tensor(v0))
    t_list = [torch.tensor(float(t), dtype=torch.float64) for t in times]
    out = run_loop(smp, start, lambda x, k: dist.denoise(x, t_list[k], sched))
    grads = torch.autograd.grad(out.sum(), [start, *draws], allow_unused=True)
    var = float(grads[0]) ** 2 * (s * s * v0 + sig * sig) + sum(float(g) ** 2 for g in grads[1:] if g is not None)
    return float(out.detach()), var


def monte_carlo_through_the_scheduler(name, options, n, exact_moments, mu, v0):
    """32k values through UnifiedScheduler (ε-model of N(mu, v0) on diffusers' default DDPM table, its real generator
    noise): the sample mean and variance are within 4 standard errors of the chain's exact law
    ``exact_moments(name, schedule, grid, options) -> (mean, variance)``, which itself is within 0.05 of N(mu, v0)."""
    uni = UnifiedScheduler(sampler=name, sampler_options=options)
    uni.set_timesteps(n)
    dist = Gaussian(torch.full((16,), mu), torch.tensor(v0), event_shape=(1, 4, 4))
    model = dist.as_model("epsilon", uni.noise_schedule)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, 4, 4, generator=gen, dtype=torch.float64) * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    values = x.flatten()
    grid = torch.tensor(uni._sampler.grid, dtype=torch.float64)
    m_exact, v_exact = exact_moments(name, uni.noise_schedule, grid, options)
    assert abs(m_exact - mu) < 0.05 and abs(v_exact - v0) < 0.05, (m_exact, v_exact)
    count = values.numel()
    assert abs(float(values.mean()) - m_exact) < 4 * math.sqrt(v_exact / count)
    assert abs(float(values.var()) - v_exact) < 4 * v_exact * math.sqrt(2.0 / count)
