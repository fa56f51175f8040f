"""Seed 000 §3: the classic samplers are first-order discretisations of the reverse family, measured as
convergence orders against the real diffusers classes, with an exact score (Gaussian data) so that every
difference is discretisation and nothing else.

(a) §3.1  DDPM ancestral step  vs  Euler–Maruyama on the reverse VP-SDE (η = 1);
(b) §3.3  DDIM (η = 0) step    vs  Euler on the probability-flow ODE (η = 0);
(c) §3.2  annealed-Langevin / NCSN step vs Euler–Maruyama on the reverse VE-SDE.

A stochastic step is a Gaussian kernel x' ~ N(m(x), v). Its mean and variance are read off the diffusers step
itself by running it with two seeded generators (x'_j = m + √v z_j with the z_j regenerated from the same
seeds), then compared with the Euler–Maruyama kernel N(x − drift·h, g² h).
"""

from __future__ import annotations

import math

import torch

from unisde import NoiseSchedule
from unisde.analytic import Gaussian
from unisde.core.sde import ForwardSDE

F64 = torch.float64
STEPS = (40, 20, 10, 5)  # DDPM/DDIM step sizes in training indices: Δt = k/N, halved each time
ORDER2 = (3.0, 5.5)  # acceptable ratio of successive differences for an O(Δt²) quantity (ideal 4)


def _data():
    """Anisotropic Gaussian data: the exact score is linear, so the steps differ only by discretisation."""
    return Gaussian(torch.tensor([0.5, -1.0, 0.2, 1.2], dtype=F64), torch.tensor([0.3, 1.5, 0.8, 0.1], dtype=F64))


def _noisy_batch(data, schedule, t, n=64):
    gen = torch.Generator().manual_seed(0)
    x0 = data.sample(n, generator=gen, dtype=F64)
    return schedule.add_noise(x0, torch.randn(x0.shape, generator=gen, dtype=F64), t)


def _seeded_noise(shape, seed):
    # diffusers' randn_tensor on CPU is torch.randn with the generator: the same draw it used.
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _kernel(step, x):
    """(mean, std) of a stochastic step x' = m + std·z, read off two seeded runs of ``step(x, generator)``."""
    out1, out2 = step(x, torch.Generator().manual_seed(1)), step(x, torch.Generator().manual_seed(2))
    z1, z2 = _seeded_noise(x.shape, 1), _seeded_noise(x.shape, 2)
    std = (out1 - out2) / (z1 - z2)
    assert float(std.std()) < 1e-12 * float(std.abs().mean())  # one std for all entries: a Gaussian kernel
    return out1 - std * z1, float(std.mean()), out1, z1


def _ratios(diffs):
    return [a / b for a, b in zip(diffs[:-1], diffs[1:])]


def test_ddpm_step_is_euler_maruyama_on_reverse_vp_sde():
    """(a) DDPMScheduler.step (ε-prediction from the exact score, posterior variance) vs one EM step of the
    reverse VP-SDE from t = 0.5 over Δt = k/N: the kernels' means and variances differ by O(Δt²). With the
    same z the paths differ by O(Δt^{3/2}): the std's √β̃ and g√Δt agree only to a relative O(Δt)."""
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(clip_sample=False)  # default linear table, N = 1000
    schedule = NoiseSchedule.from_diffusers_config(ddpm.config)
    n, tau = ddpm.config.num_train_timesteps, 499
    t = float(schedule.t_from_index(tau))
    data = _data()
    score = lambda x, tt: data.score(x, tt, schedule)  # noqa: E731
    x = _noisy_batch(data, schedule, t)
    eps = -float(schedule.sigma(t)) * score(x, t)  # the exact ε-model (seed 001 eq. 95)
    reverse = ForwardSDE(schedule).reverse(score, eta=1.0)
    mean_diff, var_diff, path_diff = [], [], []
    for k in STEPS:
        h = k / n
        ddpm.set_timesteps(timesteps=[tau, tau - k])
        mean, std, path, z = _kernel(lambda xx, gen: ddpm.step(eps, tau, xx, generator=gen).prev_sample, x)
        em_mean = x - reverse.drift(x, t) * h
        em_std = float(reverse.diffusion(x, t).flatten()[0]) * math.sqrt(h)
        mean_diff.append(float((mean - em_mean).abs().max()))
        var_diff.append(abs(std**2 - em_std**2))
        path_diff.append(float((path - (em_mean + em_std * z)).abs().max()))
    for ratio in _ratios(mean_diff) + _ratios(var_diff):
        assert ORDER2[0] < ratio < ORDER2[1], (mean_diff, var_diff)
    for ratio in _ratios(path_diff):
        assert 2.4 < ratio < 3.3, path_diff  # 2^{3/2} ≈ 2.83
    # The discretisations agree in the limit, not just in rate: at k = 5 (Δt = 0.005) the means are within 2e-3.
    assert mean_diff[-1] < 2e-3


def test_ddim_step_is_euler_on_probability_flow_ode():
    """(b) DDIMScheduler.step with η = 0 vs one Euler step of the PF-ODE (ReverseSDE η = 0): O(Δt²)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(clip_sample=False)
    schedule = NoiseSchedule.from_diffusers_config(ddim.config)
    n, tau = ddim.config.num_train_timesteps, 499
    t = float(schedule.t_from_index(tau))
    data = _data()
    score = lambda x, tt: data.score(x, tt, schedule)  # noqa: E731
    x = _noisy_batch(data, schedule, t)
    eps = -float(schedule.sigma(t)) * score(x, t)
    flow = ForwardSDE(schedule).probability_flow(score)
    diffs = []
    for k in STEPS:
        ddim.set_timesteps(n // k)  # DDIM steps from τ to τ − N/num_inference_steps
        x_ddim = ddim.step(eps, tau, x, eta=0.0).prev_sample
        x_euler = flow.euler_maruyama_step(x, t, t - k / n)
        diffs.append(float((x_ddim - x_euler).abs().max()))
    for ratio in _ratios(diffs):
        assert ORDER2[0] < ratio < ORDER2[1], diffs
    assert diffs[-1] < 5e-4


def test_annealed_langevin_step_is_euler_maruyama_on_reverse_ve_sde():
    """(c) Seed 000 §3.2: the annealed-Langevin (NCSN) update x + α_i ∇log p + √α_i z with α_i = g²(t_i) Δt is
    exactly one EM step of the reverse VE-SDE with the same z. Both are computed in float64 from the same g²,
    so they agree to rounding: 1e-12 relative to the step's size."""
    schedule = NoiseSchedule.ve(0.01, 50.0)
    data = _data()
    score = lambda x, tt: data.score(x, tt, schedule)  # noqa: E731
    reverse = ForwardSDE(schedule).reverse(score, eta=1.0)
    for t, h in ((0.9, 0.01), (0.5, 0.05), (0.2, 0.001)):
        x = _noisy_batch(data, schedule, t)
        z = _seeded_noise(x.shape, 7)
        alpha = float(schedule.g2(t)) * h
        langevin = x + alpha * score(x, t) + math.sqrt(alpha) * z
        em = reverse.euler_maruyama_step(x, t, t - h, noise=z)
        scale = float((langevin - x).abs().max())
        assert float((langevin - em).abs().max()) <= 1e-12 * scale


def test_score_sde_ve_predictor_converges_to_euler_maruyama():
    """(c, live) diffusers ScoreSdeVeScheduler.step_pred uses α_i = σ_i² − σ_{i−1}² (= ∫ g² over the step)
    instead of g²(t_i)Δt: its kernel's mean and variance differ from EM's by O(Δt²)."""
    from diffusers import ScoreSdeVeScheduler

    smin, smax = 0.01, 50.0
    schedule = NoiseSchedule.ve(smin, smax)
    data = _data()
    score = lambda x, tt: data.score(x, tt, schedule)  # noqa: E731
    reverse = ForwardSDE(schedule).reverse(score, eta=1.0)
    t = 0.5
    x = _noisy_batch(data, schedule, t)
    model_output = score(x, t)
    mean_diff, var_diff = [], []
    for intervals in (10, 20, 40, 80):  # discrete σ_i = σ(i / intervals), i = 0 … intervals
        ve = ScoreSdeVeScheduler(sigma_min=smin, sigma_max=smax)
        ve.set_timesteps(intervals + 1, sampling_eps=1e-5)  # set_sigmas keeps existing timesteps
        ve.set_sigmas(intervals + 1, sampling_eps=1e-5)
        # step_pred finds i = floor(timestep · intervals); nudge up so rounding cannot land on i − 1.
        timestep = torch.tensor(t + 1e-9, dtype=F64)
        mean, std, _, _ = _kernel(
            lambda xx, gen: ve.step_pred(model_output, timestep, xx, generator=gen).prev_sample, x
        )
        h = 1.0 / intervals
        em_mean = x - reverse.drift(x, t) * h
        em_var = float(schedule.g2(t)) * h
        mean_diff.append(float((mean - em_mean).abs().max()))
        var_diff.append(abs(std**2 - em_var))
    for ratio in _ratios(mean_diff) + _ratios(var_diff):
        assert ORDER2[0] < ratio < ORDER2[1], (mean_diff, var_diff)
