r"""Step kernels shared by the samplers: each formula lives here once.

All coefficient functions work on float64 tensors along a time grid and are called once per grid (in a
sampler's ``prepare``); :func:`lincomb` is the one per-step tensor operation most samplers need.
References are to docs/references.md.
"""

from __future__ import annotations

import math

import torch

from unisde._tensor import scaled, scaled_
from unisde.core.schedule import NoiseSchedule


def schedule_coefficients(schedule: NoiseSchedule, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(s(t), σ(t)) in float64; where s(t) = 0 (zero terminal SNR at t = 1) the values at the schedule's ``t_end``
    are used instead, so that quotients by s stay finite (see docs/schedules.md). On such a schedule t = 1 counts as
    s = 0 even where s(1) is zero only up to rounding (the un-clipped cosine's s(1) = cos(π/2) = 6e-17 in float64
    gave σ/s = 1.6e16); times in (t_end, 1) keep their exact, finite values (a FlowMatch grid with a large shift
    evaluates there, and diffusers uses them)."""
    t = schedule._time(t)
    s, sigma = schedule._s(t), schedule._sigma(t)
    if schedule.t_end < 1.0:
        tc = schedule._capped(t)
        small = (s <= 0) | (t >= 1.0)
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


VIEWS = ("ve", "flow")
"""The variables a sampler may solve the probability-flow ODE in (:func:`view_coefficients`)."""


def zero_terminal_snr(schedule: NoiseSchedule) -> bool:
    """Whether the schedule reaches zero SNR at its end, s(1) = 0 exactly (rectified flow, zero-terminal-SNR
    tables, the un-clipped cosine): the schedules whose σ̃ = σ/s is capped at t_end < 1 (docs/schedules.md)."""
    return schedule.t_end < 1.0


def resolve_view(schedule: NoiseSchedule, view: str) -> str:
    """The view a sampler's ``view`` option means on this schedule: ``"auto"`` is ``"flow"`` where the schedule
    reaches zero SNR at t = 1 (:func:`zero_terminal_snr`), else ``"ve"``; ``"ve"`` and ``"flow"`` are themselves."""
    if view == "auto":
        return "flow" if zero_terminal_snr(schedule) else "ve"
    if view not in VIEWS:
        raise ValueError(f"view={view!r} is not one of {['auto', *VIEWS]}")
    return view


def view_coefficients(schedule: NoiseSchedule, grid: torch.Tensor, view: str) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(c, ℓ) along a decreasing time grid (float64; a t = 0 end point is clean data, c = 1, ℓ = 0): the scale and
    noise level of the view y = x/c, ℓ = σ/c in which a sampler solves the probability-flow ODE (Song et al. 2021,
    eq. 13 [SDE]) as

        dy/dℓ = (y − D(y; ℓ))/ℓ.

    ``"ve"``: c = s, ℓ = σ̃ = σ/s, Karras et al. 2022, eq. 4 [EDM] (y = x0 + σ̃ ε; s capped at t_end where
    s(1) = 0, so that σ̃ ≤ 4096 there). ``"flow"``: c = s + σ, ℓ = τ = σ/(s + σ) ∈ [0, 1] (y = (1 − τ) x0 + τ ε:
    x and t themselves on the rectified flow, the variables of ComfyUI's k-diffusion samplers on flow models and
    of diffusers' FlowMatch Heun), finite and exact at s = 0 (τ = 1, c = σ).

    Why both give the same ODE: with c = s + κσ (κ ≥ 0), y = a x0 + ℓ ε with a = s/c = 1 − κℓ, and along the
    PF-ODE dy/dℓ = E[ε + x0 da/dℓ | y] = (y − aD)/ℓ + a′D, which is (y − D)/ℓ exactly when a − ℓa′ = 1, true for
    every κ. In both views c·ℓ = σ. A solver's steps are the same formulas in either view; only the variable it
    steps in (σ̃ ∈ [0, ∞) or τ ∈ [0, 1]) differs, and with it the accuracy of a step over the first, huge
    interval in σ̃ of a zero-SNR schedule (σ̃ from 4096 to O(1))."""
    if view == "flow":
        s, sigma = grid_coefficients(schedule, grid, exact=True)
        scale = s + sigma
        return scale, sigma / scale
    if view != "ve":
        raise ValueError(f"view={view!r} is not one of {list(VIEWS)}")
    s, sigma = grid_coefficients(schedule, grid)
    return s, sigma / s


def t_from_flow_sigma(schedule: NoiseSchedule, tau: torch.Tensor) -> torch.Tensor:
    """The time t whose flow noise level σ/(s + σ) is τ (float64): t = τ on the rectified flow, else through
    σ̃ = τ/(1 − τ) and the schedule's log-SNR inverse (τ = 1 is t = 1)."""
    if getattr(schedule, "name", "") == "rectified-flow":
        return tau.clone()
    inner = tau < 1
    out = torch.ones_like(tau)
    out[inner] = schedule.t_from_sigma(tau[inner] / (1 - tau[inner]))
    return out


def view_times(schedule: NoiseSchedule, levels: torch.Tensor, view: str) -> torch.Tensor:
    """The times t (float64) whose noise level in ``view`` is ``levels`` (ℓ > 0): the inverse of
    :func:`view_coefficients`' ℓ, for a solver's intermediate stages (σ̃ → t by the schedule's log-SNR inverse;
    τ → t by the flow grids' map, t = τ on the rectified flow)."""
    levels = levels.to(torch.float64)
    if view == "flow":
        return t_from_flow_sigma(schedule, levels)
    return schedule.t_from_sigma(levels)


def rf_ancestral_step(tau: float, tau_next: float, eta: float, floor: float = 0.0) -> tuple[float, float, float]:
    r"""The rectified-flow ancestral step from flow level τ to τ' < τ (ComfyUI's ``sample_euler_ancestral_RF`` and
    ``sample_dpm_2_ancestral_RF``; diffusers' LTXEulerAncestralRFScheduler), in the flow view
    y = x/(s + σ) = (1 − τ) x0 + τ ε of :func:`view_coefficients`. The deterministic part goes down to

        τ_d = τ' (1 + (τ'/τ − 1) η)          (η ∈ [0, 1]: τ_d from τ' down to τ'²/τ; capped at 0 beyond),

    and the forward process carries y from τ_d back up to τ':  y' = r y_d + ς z  with

        r = (1 − τ')/(1 − τ_d),   ς² = τ'² − r² τ_d² = (τ' − τ_d)(τ' + r τ_d)/(1 − τ_d)   (≥ 0: τ_d ≤ τ', r ≤ 1).

    The marginal at τ' is then exact: y_d = (1 − τ_d) x0 + τ_d ε gives r y_d + ς z = (1 − τ') x0 + √(r²τ_d² + ς²) ε'
    = (1 − τ') x0 + τ' ε'. (The VE view's ancestral step, k-diffusion's ``get_ancestral_step``, is the same
    construction with r = 1, since there the forward process adds noise without rescaling.) In model space the
    noise is (s' + σ') ς, and ς² is formed from τ' − τ_d = τ' η (1 − τ'/τ) without cancellation. Returns
    (τ_d, r, ς) as floats; a step to τ' = 0 is (0, 1, 0). ``floor`` ∈ [0, τ'] keeps τ_d ≥ floor (DPM-Solver-Fast and
    -adaptive never step below their τ_min, as k-diffusion clamps σ̃_down at σ̃_min there)."""
    if tau_next <= 0.0 or not eta:
        return tau_next, 1.0, 0.0
    gap = min(tau_next * eta * (1.0 - tau_next / tau), tau_next - floor)  # τ' − τ_d
    tau_down = tau_next - gap
    ratio = (1.0 - tau_next) / (1.0 - tau_down)
    return tau_down, ratio, math.sqrt(gap * (tau_next + ratio * tau_down) / (1.0 - tau_down))


def lincomb(x: torch.Tensor, cx: float, y: torch.Tensor, cy: float) -> torch.Tensor:
    """cx·x + cy·y in at most two passes over memory (the scalars are Python floats: cast once, no transfer).

    One pass where cx = 1 (x + cy·y) or cx + cy = 1 (the interpolation x + cy·(y − x), e.g. every deterministic
    step on a rectified flow, where s + σ = 1 makes the step a convex combination of x and x̂0)."""
    if cx == 1.0:
        return torch.add(x, y, alpha=cy)
    if abs(cx + cy - 1.0) <= 1e-12:  # rounding of float64 coefficients, far below any sample dtype's resolution
        return torch.lerp(x, y, cy)
    return scaled(x, cx).add_(y, alpha=cy)  # in place on the fresh product: one allocation, two passes


def lincomb_(x: torch.Tensor, cx: float, y: torch.Tensor, cy: float) -> torch.Tensor:
    """:func:`lincomb` written into ``x``'s own buffer (a temporary the caller owns): the same kernels in the same
    order, so the same values, without allocating."""
    if cx == 1.0:
        return x.add_(y, alpha=cy)
    if abs(cx + cy - 1.0) <= 1e-12:
        return x.lerp_(y, cy)
    return scaled_(x, cx).add_(y, alpha=cy)


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


def reverse_sde_increments(
    schedule: NoiseSchedule, grid: torch.Tensor, sigma: torch.Tensor, dt: torch.Tensor | None = None
):
    """Per step of a decreasing grid, the pieces of one Euler–Maruyama step of the reverse-SDE family
    dx = [f x − (1 + η²)/2 · g² ∇log p] dt + η g dw̄ (Song et al. 2021, eqs. 6 and 13; η interpolates) with the
    score from the denoiser, ∇log p = (s D − x)/σ²: returns (f Δ, g² Δ/σ², g √Δ) at t_i with Δ = t_i − t_{i+1}
    (or the given ``dt``), so that the step is x' = (1 − fΔ − w) x + w s D + η g√Δ z with w = (1 + η²)/2 · g²Δ/σ²."""
    t = grid[:-1]
    dt = grid[:-1] - grid[1:] if dt is None else dt
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
