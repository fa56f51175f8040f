r"""Step kernels shared by the samplers: each formula lives here once.

All coefficient functions work on float64 tensors along a time grid and are called once per grid (in a
sampler's ``prepare``); :func:`lincomb` is the one per-step tensor operation most samplers need.
References are to docs/references.md.
"""

from __future__ import annotations

import math

import torch

from unisde.core.schedule import NoiseSchedule


def schedule_coefficients(schedule: NoiseSchedule, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(s(t), σ(t)) in float64; where s(t) = 0 (zero terminal SNR at t = 1) the values at the schedule's
    ``t_end`` are used instead, so that quotients by s stay finite (see docs/schedules.md)."""
    t = schedule._time(t)
    s, sigma = schedule._s(t), schedule._sigma(t)
    if schedule.t_end < 1.0:
        tc = schedule._capped(t)
        small = s <= 0
        s = torch.where(small, schedule._s(tc), s)
        sigma = torch.where(small, schedule._sigma(tc), sigma)
    return s, sigma


def grid_coefficients(
    schedule: NoiseSchedule, grid: torch.Tensor, exact: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, σ) along a decreasing time grid; an end point at t = 0 is the clean data (s = 1, σ = 0) whatever σ(0)
    is, so that VE/EDM schedules with σ(0) = σ_min > 0 still finish on the denoised sample (the t_N = 0 of
    Karras et al. 2022, Algorithm 1). ``exact=True`` keeps s(1) = 0 of zero-terminal-SNR and flow schedules
    (for samplers in data-prediction form, whose coefficients stay finite there); the default caps it at t_end
    (:func:`schedule_coefficients`) for samplers that divide by s."""
    s, sigma = (schedule.s(grid), schedule.sigma(grid)) if exact else schedule_coefficients(schedule, grid)
    if float(grid[-1]) == 0.0:
        s, sigma = s.clone(), sigma.clone()
        s[-1], sigma[-1] = 1.0, 0.0
    return s, sigma


def lincomb(x: torch.Tensor, cx: float, y: torch.Tensor, cy: float) -> torch.Tensor:
    """cx·x + cy·y in at most two passes over memory (the scalars are Python floats: cast once, no transfer)."""
    if cx == 1.0:
        return torch.add(x, y, alpha=cy)
    return (x * cx).add_(y, alpha=cy)  # in place on the fresh product: one allocation, two passes


def pf_ode_derivative(x_ve: torch.Tensor, denoised: torch.Tensor, ve: float) -> torch.Tensor:
    """dx̃/dσ̃ = (x̃ − D)/σ̃: the probability-flow ODE (Song et al. 2021, eq. 13) in the VE view x̃ = x/s,
    σ̃ = σ/s > 0 (Karras et al. 2022, eq. 4 with s = 1)."""
    return lincomb(x_ve, 1.0 / ve, denoised, -1.0 / ve)


def posterior_coefficients(s_t, sigma_t, s_n, sigma_n):
    """The forward process's posterior q(x_{t'} | x_t, x0) = N(c_x0 x0 + c_x x_t, v) between two times t > t'
    (Ho et al. 2020, eqs. 6–7 in (s, σ) form): with r = s_t/s_{t'} and the transition variance
    σ²_{t|t'} = σ_t² − r² σ_{t'}²,

        c_x0 = s_{t'} σ²_{t|t'}/σ_t²,   c_x = r σ_{t'}²/σ_t²,   v = σ²_{t|t'} σ_{t'}²/σ_t².

    Returns (c_x0, c_x, σ²_{t|t'}, v), float64 tensors (σ²_{t|t'} clamped at 0 against rounding)."""
    var_t, var_n = sigma_t**2, sigma_n**2
    r = s_t / s_n
    transition = (var_t - r * r * var_n).clamp(min=0)
    return s_n * transition / var_t, r * var_n / var_t, transition, transition * var_n / var_t


def reverse_sde_increments(schedule: NoiseSchedule, grid: torch.Tensor, sigma: torch.Tensor):
    """Per step of a decreasing grid, the pieces of one Euler–Maruyama step of the reverse-SDE family
    dx = [f x − (1 + η²)/2 · g² ∇log p] dt + η g dw̄ (Song et al. 2021, eqs. 6 and 13; η interpolates) with the
    score from the denoiser, ∇log p = (s D − x)/σ²: returns (f Δ, g² Δ/σ², g √Δ) at t_i with Δ = t_i − t_{i+1},
    so that the step is x' = (1 − fΔ − w) x + w s D + η g√Δ z with w = (1 + η²)/2 · g²Δ/σ²."""
    t = grid[:-1]
    dt = grid[:-1] - grid[1:]
    f, g2 = schedule.f(t), schedule.g2(t)
    return f * dt, g2 * dt / sigma[:-1] ** 2, (g2 * dt).sqrt()


def exponential_integrator_coefficients(s: torch.Tensor, sigma: torch.Tensor):
    r"""Per step of a decreasing grid with (s_i, σ_i) along it: the first-order exponential integrator in data
    prediction, the step DDIM, DPM-Solver++(1) and the base of UniP/UniC share (the exact solution
    x_{t'} = (σ_{t'}/σ_t) x_t + σ_{t'} ∫ e^{λ'} D dλ' with D held constant, Lu et al. 2022b, §4 [DPMSolver++]; the
    x_ term of UniP and UniC, Zhao et al. 2023 [UniPC]):

        x_{i+1} = (σ_{i+1}/σ_i) x_i + s_{i+1} (1 − e^{−h_i}) D_i,      h_i = λ'_{i+1} − λ'_i,  λ' = log(s/σ).

    Returns float64 tensors (h, σ_{i+1}/σ_i, s_{i+1}(1 − e^{−h})) with 1 − e^{−h} from ``expm1`` (accurate for
    small h). A step to σ = 0 has h = ∞, x coefficient 0 and D coefficient s_{i+1}: x = s_end D.

    With the roles of s and σ exchanged (``exponential_integrator_coefficients(sigma, s)``) the same formula is
    the noise-prediction step x_{i+1} = (s_{i+1}/s_i) x_i − σ_{i+1} (e^{h_i} − 1) ε̂_i of DPM-Solver-1 (Lu et al.
    2022a, §3.1 [DPMSolver]), with −h in place of h (σ_{i+1} > 0 there: the limit σ_{i+1} → 0 is x = s_end D)."""
    lam = torch.log(s) - torch.log(sigma)  # +∞ where σ = 0
    h = lam[1:] - lam[:-1]
    return h, sigma[1:] / sigma[:-1], -s[1:] * torch.expm1(-h)


def exponential_integrator_step(x: torch.Tensor, x_coef: float, denoised: torch.Tensor, d_coef: float) -> torch.Tensor:
    """x_coef · x + d_coef · D with the coefficients of :func:`exponential_integrator_coefficients`; a step to
    σ = 0 (x_coef = 0) is d_coef · D exactly, whatever x holds."""
    return denoised * d_coef if x_coef == 0.0 else lincomb(x, x_coef, denoised, d_coef)


def exponential_integrator_corrections(h: float) -> tuple[float, float]:
    r"""(b, c) = (1 + (e^{−h} − 1)/h, (e^{−h} − 1 + h)/h² − 1/2) for a step h ≠ 0 in λ' (h < 0 for the noise-
    prediction forms, 2h for SDE-DPM-Solver++): with the prefactor s_{t'} of
    :func:`exponential_integrator_coefficients`, ∫ over the step of e^{λ'} times a polynomial in λ' weighs the
    first divided difference (≈ h ∂D/∂λ') by s_{t'} b(h) and the second (≈ h² ∂²D/∂λ'²) by −s_{t'} c(h) (the
    φ-functions of Lu et al. 2022a [DPMSolver] and 2022b [DPMSolver++]). Both vanish like h/2 and −h/6
    as h → 0, where the closed forms lose digits to cancellation; below |h| = 0.05 their Taylor series
    b = Σ_{k≥2} (−h)^k/(k! h), c = Σ_{k≥3} (−h)^k/(k! h²) are summed to k = 12 instead (remainder < 1e-18)."""
    if abs(h) < 0.05:
        b = c = 0.0
        term = 1.0  # (−h)^k / k!
        for k in range(1, 13):
            term *= -h / k
            if k >= 2:
                b += term / h
            if k >= 3:
                c += term / (h * h)
        return b, c
    em1 = math.expm1(-h)
    return 1.0 + em1 / h, (em1 + h) / (h * h) - 0.5
