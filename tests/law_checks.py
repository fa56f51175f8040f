"""Shared check for stochastic samplers: sample values drawn through UnifiedScheduler against the chain's exact law."""

from __future__ import annotations

import math

import torch

from unisde.analytic import Gaussian
from unisde.diffusers.scheduler import UnifiedScheduler


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
