r"""The σ grids users pick from the scheduler menus of ComfyUI and AUTOMATIC1111 [ComfyUI, A1111], as registered
time grids that work on every schedule.

Every grid is defined from its published formula. Formulas written in the VE-view noise level σ̃ = σ/s (Karras ρ,
exponential, KL-optimal, AYS, diffusers' Beta) are evaluated in σ̃ and mapped to times by ``t_from_sigma``; formulas
written in the model's time are evaluated in unisde's t; formulas that pick entries of "the model's σ table" use
the schedule's own table (index i at t = (i + 1)/N, the DPM-Solver convention) and, on a closed-form schedule, the
nominal table of its ``num_train_timesteps`` N at the same times, as the ``lcm`` grid does. Each grid returns the
evaluation times; :func:`unisde.grids.make_grid` appends the end point t = 0 (σ = 0), which is the trailing 0 of
the UIs' σ lists. Where a UI's definition gives another number of points than the n asked for (``ddim_uniform``,
``beta`` on a table), the grid keeps that definition, as the UIs do.

* ``exponential``: σ̃ uniform in log between σ̃(t_max) and σ̃(t_min) (k-diffusion's ``get_sigmas_exponential``), the
  same grid as ``uniform_lambda`` (λ = −2 log σ̃) under the name the menus use.
* ``polyexponential``: log σ̃ along the ramp (1 − k/(n − 1))^ρ between log σ̃(t_min) and log σ̃(t_max)
  (k-diffusion's ``get_sigmas_polyexponential``; ρ = 1, its default, is ``exponential``).
* ``normal``: n times uniform in t from t_max to t_min (ComfyUI's "normal": uniform in the model's timestep between
  the timesteps of σ_max and σ_min). Where σ(t_min) = 0 (ComfyUI: |σ| ≤ 1e-5) the n + 1 points from t_max to t_min
  are taken and the last, σ = 0, is the end point.
* ``sgm_uniform``: the n + 1 points uniform in t from t_max to t_min without the last one; the end point is 0.
* ``simple``: table entries N − 1 − ⌊k · (N/n)⌋, k = 0 … n − 1 (every N/n-th σ of the table from the top, the
  product in floats as ComfyUI forms it).
* ``ddim_uniform``: table entries 1 + kc, c = max(⌊N/n⌋, 1), for every k with 1 + kc < N, descending: DDIM's
  "uniform" skip (Song et al. 2021 [DDIM], its code's ``range(0, N, c)``) shifted by one entry as LDM/ComfyUI
  index it; ⌈(N − 1)/c⌉ points, which is n only when c divides N − 1 closely enough.
* ``beta``: Beta(α, β) quantiles q_k = F⁻¹(1 − k/n), α = β = 0.6 by default (Lee et al. 2024 [BetaSampling]):
  with ``space="t"`` (ComfyUI) the table entries rint(q_k (M − 1)) of the M table times in [t_min, t_max], repeated
  entries dropped; with ``space="sigma"`` (diffusers' ``use_beta_sigmas``) σ̃_k = σ̃_min + F⁻¹(1 − k/(n − 1))
  (σ̃_max − σ̃_min), k = 0 … n − 1.
* ``kl_optimal``: σ̃_k = tan((1 − u_k) atan σ̃_max + u_k atan σ̃_min), u_k = k/(n − 1) — the KL-optimal schedule for
  unit-variance Gaussian data (Sabour et al. 2024 [AYS]).
* ``linear_quadratic``: Mochi's schedule [Mochi] in the flow noise level τ = σ/(s + σ) (t itself on the rectified
  flow): τ_k = τ(t_max)(1 − x_k) with x linear from 0 to ``threshold_noise`` over ``linear_steps`` (n // 2) steps,
  then the quadratic through (linear_steps, threshold_noise) with that slope reaching 1 at k = n.
* ``ays``: Align Your Steps (Sabour et al. 2024 [AYS]): the published 10-step σ̃ lists of SD 1.5, SDXL and SVD
  (11 levels, the last the model's σ_min), log-linearly interpolated to n + 1 levels at equal spacing; the first n
  are the evaluations and the last is replaced by the end point σ = 0 (ComfyUI's convention; at n = 10 the
  evaluations are the published levels themselves).
* ``diffusers_sigmas``: the σ̃'s diffusers' Euler, Heun, LMS and KDPM2 schedulers compute with
  ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas``: Karras ρ, exponential or Beta(0.6, 0.6)
  spacing between the σ̃'s of the first and last training index of ``timestep_spacing`` (or the configured
  ``sigma_max`` / ``sigma_min``), which are the table's ends only for ``linspace`` spacing (float64; the
  ``diffusers_float32_sigmas`` grid of :mod:`unisde.grids.diffusers_float32` rounds them as diffusers does).

On the rectified flow ComfyUI evaluates the σ formulas (Karras, exponential, KL-optimal) in the flow level τ and
"linear_quadratic" on ε-models in σ̃; unisde evaluates each formula in the noise level its paper defines it in, on
every schedule, so those two combinations differ from ComfyUI's numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unisde._tensor import DTYPE
from unisde.core.schedule import NoiseSchedule
from unisde.grids import Grid, discrete_indices, time_range
from unisde.grids.builtin import RANGE, _uniform_lambda
from unisde.grids.flow import t_from_flow_sigma
from unisde.plugins import hookimpl
from unisde.samplers.base import Option, positive

# Align Your Steps' published 10-step schedules (Sabour et al. 2024 [AYS], the authors' "how to" page): VE-view
# σ̃ from σ̃_max to the model's σ̃_min, 3 decimals (SVD's ends are its configured σ_max = 700, σ_min = 0.002).
AYS_SIGMAS = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "svd": (700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}
# A level above the schedule's σ̃_max by less than this (relative) is its σ̃_max: the published lists round the
# table's σ̃_max (SD's 14.61464…) to 14.615, 2.4·10⁻⁵ above it.
AYS_ROUNDING = 1e-4
RESPACINGS = ("karras", "exponential", "beta")  # diffusers' use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas


def table_times(schedule: NoiseSchedule) -> torch.Tensor:
    """Times of the model's σ table, ascending (float64): index i at t = (i + 1)/N for a table; a closed-form schedule
    reads its nominal table of N = ``num_train_timesteps`` (1000 if unset) at the same times."""
    n = int(schedule.num_train_timesteps or 1000)
    return torch.arange(1, n + 1, dtype=DTYPE) / n


def _sigma_times(schedule: NoiseSchedule, sigma) -> torch.Tensor:
    """Times of VE-view levels σ̃ (float64 in, float64 out; clamped to the schedule's range by ``t_from_sigma``)."""
    return schedule.t_from_sigma(torch.as_tensor(np.asarray(sigma, dtype=np.float64), dtype=DTYPE))


def _with_ends(times: torch.Tensor, t_max: float, t_min: float) -> torch.Tensor:
    """Pin the first and last times to the range's ends (the σ̃ ↔ t round trip is exact only to float64)."""
    times[0] = t_max
    if times.numel() > 1:
        times[-1] = t_min
    return times


def _beta_ppf(u: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Quantiles F⁻¹(u) of Beta(α, β) (float64; scipy, as diffusers and ComfyUI compute them)."""
    import scipy.stats

    return np.asarray(scipy.stats.beta.ppf(u, alpha, beta), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- uniform in t
def _normal(schedule: NoiseSchedule, n: int, t_min=None, t_max=None) -> torch.Tensor:
    """n times uniform in t between t_max and t_min; n + 1 without the last where σ(t_min) = 0 (ComfyUI)."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    if float(schedule.ve_sigma(t_min)) <= 1e-5:  # that point is clean data: it becomes the end point
        return torch.linspace(t_max, t_min, n + 1, dtype=DTYPE)[:-1]
    return torch.linspace(t_max, t_min, n, dtype=DTYPE)


def _sgm_uniform(schedule: NoiseSchedule, n: int, t_min=None, t_max=None) -> torch.Tensor:
    """The n + 1 times uniform in t from t_max to t_min, without the last (the end point σ = 0 replaces it)."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    return torch.linspace(t_max, t_min, n + 1, dtype=DTYPE)[:-1]


# ---------------------------------------------------------------------------------------------- table entries
def _simple(schedule: NoiseSchedule, n: int) -> torch.Tensor:
    """Table entries N − 1 − ⌊k · (N/n)⌋, k = 0 … n − 1, with N/n and the product in float64 as ComfyUI evaluates
    them (so k·N/n = 500 exactly can round to 499.99… and take entry 500 from the top, e.g. n = 38, k = 19)."""
    times = table_times(schedule)
    size = times.numel()
    if n > size:
        raise ValueError(
            f"time grid 'simple': num_inference_steps={n} exceeds the {size} entries of the schedule's σ table "
            "(it takes every N/n-th entry)"
        )
    ratio = size / n
    return times[[size - 1 - int(k * ratio) for k in range(n)]]


def _ddim_uniform(schedule: NoiseSchedule, n: int) -> torch.Tensor:
    """Table entries 1, 1 + c, 1 + 2c, … below N (c = max(⌊N/n⌋, 1)), descending."""
    times = table_times(schedule)
    size = times.numel()
    if size < 2:
        raise ValueError("time grid 'ddim_uniform' needs a σ table of at least 2 entries (it starts at entry 1)")
    stride = max(size // n, 1)
    return times[torch.arange(1, size, stride, dtype=torch.int64).flip(0)]


# ---------------------------------------------------------------------------------------------- Beta quantiles
def beta_sigmas(smax: float, smin: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """n levels σ̃_k = smin + F⁻¹(1 − k/(n − 1))(smax − smin), k = 0 … n − 1 (float64, from smax to smin; n = 1:
    smax): Beta(α, β) quantiles of σ̃ (Lee et al. 2024 [BetaSampling]), diffusers' ``_convert_to_beta``."""
    return smin + _beta_ppf(1.0 - np.linspace(0.0, 1.0, n), alpha, beta) * (smax - smin)


def _beta(schedule: NoiseSchedule, n: int, alpha=0.6, beta=0.6, space="t", t_min=None, t_max=None) -> torch.Tensor:
    """Beta(α, β) quantiles: of the table times in [t_min, t_max] (``space="t"``: entry rint(F⁻¹(1 − k/n)(M − 1)),
    k = 0 … n − 1, a repeat of the previous entry dropped — ComfyUI's "beta") or of σ̃ (:func:`beta_sigmas`)."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    if space == "sigma":
        smax, smin = float(schedule.ve_sigma(t_max)), float(schedule.ve_sigma(t_min))
        return _with_ends(_sigma_times(schedule, beta_sigmas(smax, smin, n, alpha, beta)), t_max, t_min)
    times = table_times(schedule)
    inside = times[(times >= t_min - 1e-12) & (times <= t_max + 1e-12)]
    if inside.numel() == 0:
        raise ValueError(f"time grid 'beta': no table entry lies in [t_min, t_max] = [{t_min}, {t_max}]")
    q = _beta_ppf(1.0 - np.linspace(0.0, 1.0, n, endpoint=False), alpha, beta)
    idx = np.rint(q * (inside.numel() - 1)).astype(np.int64)
    keep = np.concatenate([[True], idx[1:] != idx[:-1]])  # ComfyUI drops an index equal to the previous one
    return inside[torch.from_numpy(idx[keep])]


# ---------------------------------------------------------------------------------------------- σ̃ formulas
def _kl_optimal(schedule: NoiseSchedule, n: int, t_min=None, t_max=None) -> torch.Tensor:
    """σ̃_k = tan((1 − u_k) atan σ̃_max + u_k atan σ̃_min), u_k = k/(n − 1) (n = 1: σ̃_max)."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    smax, smin = float(schedule.ve_sigma(t_max)), float(schedule.ve_sigma(t_min))
    u = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    sig = np.tan((1.0 - u) * math.atan(smax) + u * math.atan(smin))
    return _with_ends(_sigma_times(schedule, sig), t_max, t_min)


def _polyexponential(schedule: NoiseSchedule, n: int, t_min=None, t_max=None, rho=1.0) -> torch.Tensor:
    """log σ̃_k = log σ̃_min + r_k^ρ (log σ̃_max − log σ̃_min), r_k = 1 − k/(n − 1) (n = 1: σ̃_max): k-diffusion's
    ``get_sigmas_polyexponential`` [KDiffusion]; ρ = 1 is ``exponential``, ρ > 1 puts the steps closer together
    toward σ̃_min."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    smax, smin = float(schedule.ve_sigma(t_max)), float(schedule.ve_sigma(t_min))
    ramp = np.linspace(1.0, 0.0, n) ** rho if n > 1 else np.ones(1)
    sig = np.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin))
    return _with_ends(_sigma_times(schedule, sig), t_max, t_min)


def linear_quadratic_levels(n: int, threshold_noise: float = 0.025, linear_steps: int | None = None) -> np.ndarray:
    """Mochi's x_0 … x_{n−1} (float64, increasing from 0): x_k = k·thr/L for k < L, then q k² + l k + c with
    q = (L − thr·n)/(L Q²), l = thr/L − 2(L − thr·n)/Q², c = q L² (Q = n − L), which meets the line at k = L with
    its slope and reaches 1 at k = n. n = 1 gives [0]."""
    if n == 1:
        return np.zeros(1)
    steps = n // 2 if linear_steps is None else int(linear_steps)
    if not 1 <= steps <= n - 1:
        raise ValueError(
            f"time grid 'linear_quadratic': linear_steps={linear_steps} must lie in [1, n − 1] = [1, {n - 1}] "
            f"for n={n} (None: n // 2)"
        )
    quad = n - steps
    diff = steps - threshold_noise * n
    q = diff / (steps * quad**2)
    lin = threshold_noise / steps - 2 * diff / quad**2
    const = q * steps**2
    k = np.arange(n, dtype=np.float64)
    x = np.where(k < steps, k * threshold_noise / steps, q * k**2 + lin * k + const)
    if not (np.all(np.diff(x) > 0) and x[-1] < 1.0):
        raise ValueError(
            f"time grid 'linear_quadratic': threshold_noise={threshold_noise}, linear_steps={steps} give a "
            f"non-monotone schedule for n={n} (the quadratic part turns back); lower threshold_noise"
        )
    return x


def _linear_quadratic(
    schedule: NoiseSchedule, n: int, t_max=None, threshold_noise=0.025, linear_steps=None
) -> torch.Tensor:
    """τ_k = τ(t_max)(1 − x_k) in the flow level τ = σ/(s + σ), mapped to t (t = τ on the rectified flow)."""
    _, t_max = time_range(schedule, None, t_max)
    s, sigma = float(schedule.s(t_max)), float(schedule.sigma(t_max))
    tau_max = sigma / (s + sigma)
    x = linear_quadratic_levels(n, threshold_noise, linear_steps)
    times = t_from_flow_sigma(schedule, torch.as_tensor(tau_max * (1.0 - x), dtype=DTYPE))
    times[0] = t_max
    return times


def ays_levels(model: str, n: int) -> np.ndarray:
    """The n + 1 AYS levels σ̃ for n steps (float64, decreasing): the published 11 for n = 10, else their log-linear
    interpolation at n + 1 equally spaced positions (the last is then replaced by σ = 0)."""
    knots = np.asarray(AYS_SIGMAS[model], dtype=np.float64)
    if n + 1 == knots.size:
        return knots.copy()
    grid = np.linspace(0.0, 1.0, n + 1)
    return np.exp(np.interp(grid, np.linspace(0.0, 1.0, knots.size), np.log(knots)))


def _ays(schedule: NoiseSchedule, n: int, model="sd15") -> torch.Tensor:
    """The first n of :func:`ays_levels` as times; a level above σ̃(1) by less than the lists' rounding is t = 1."""
    sig = ays_levels(model, n)[:n]
    top = float(schedule.ve_sigma(1.0))
    if sig[0] > top * (1.0 + AYS_ROUNDING):
        raise ValueError(
            f"time grid 'ays': model={model!r} starts at σ̃ = {sig[0]:g}, above this schedule's largest noise level "
            f"σ̃(1) = {top:.6g}; use the model's own schedule (SVD: σ̃ up to 700, e.g. an EDM schedule with "
            "sigma_max=700) or model='sd15' / 'sdxl'"
        )
    bottom = float(schedule.ve_sigma(0.0))
    if sig[-1] < bottom * (1.0 - AYS_ROUNDING):
        raise ValueError(
            f"time grid 'ays': model={model!r} with n={n} evaluates at σ̃ = {sig[-1]:g}, below this schedule's "
            f"smallest noise level σ̃(0) = {bottom:.6g}"
        )
    times = _sigma_times(schedule, np.minimum(sig, top))
    if sig[0] >= top:
        times[0] = 1.0
    return times


# ---------------------------------------------------------------------------------------------- diffusers' flags
def diffusers_respaced_sigmas(smax: float, smin: float, n: int, spacing: str, rho: float = 7.0) -> np.ndarray:
    """n σ̃'s from smax to smin (float64): Karras et al. 2022 eq. 5 [EDM] (``karras``), uniform in log σ̃
    (``exponential``) or :func:`beta_sigmas` (``beta``) — diffusers' ``_convert_to_karras`` /
    ``_convert_to_exponential`` / ``_convert_to_beta``."""
    if spacing == "karras":
        ramp = np.linspace(0.0, 1.0, n)
        return (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    if spacing == "exponential":
        return np.exp(np.linspace(math.log(smax), math.log(smin), n))
    return beta_sigmas(smax, smin, n)


def spacing_ends(schedule: NoiseSchedule, n: int, timestep_spacing: str, steps_offset: int = 0) -> tuple[float, float]:
    """(σ̃_max, σ̃_min): the VE-view levels of the first and last training index diffusers' ``timestep_spacing``
    gives for n steps (table entries: linspace's ends are 0 and N − 1 for every n, leading's and trailing's move
    with n). On a closed-form schedule, σ̃ at its default time range's ends."""
    if not schedule.is_discrete:
        t_min, t_max = time_range(schedule, None, None)
    else:
        kind = "linspace_fractional" if timestep_spacing == "linspace" else timestep_spacing
        idx = discrete_indices(schedule.num_train_timesteps, n, kind, steps_offset)
        size = schedule.num_train_timesteps
        t_max, t_min = (float(idx[0]) + 1) / size, (float(idx[-1]) + 1) / size
    return float(schedule.ve_sigma(t_max)), float(schedule.ve_sigma(t_min))


def _diffusers_sigmas(
    schedule: NoiseSchedule,
    n: int,
    spacing="karras",
    timestep_spacing="linspace",
    steps_offset=0,
    sigma_min=None,
    sigma_max=None,
    rho=7.0,
) -> torch.Tensor:
    smax, smin = (None, None) if sigma_min is None or sigma_max is None else (float(sigma_max), float(sigma_min))
    if smax is None:
        smax, smin = spacing_ends(schedule, n, timestep_spacing, steps_offset)
        smax = smax if sigma_max is None else float(sigma_max)
        smin = smin if sigma_min is None else float(sigma_min)
    top = float(schedule.ve_sigma(1.0))
    if smax > top * (1.0 + 1e-6) or smin > smax or (n > 1 and smin == smax):
        raise ValueError(
            f"time grid 'diffusers_sigmas': σ̃ range [{smin:g}, {smax:g}] is not inside this schedule's levels "
            f"(0, {top:.6g}] with σ̃_min < σ̃_max; check sigma_min / sigma_max"
        )
    times = _sigma_times(schedule, diffusers_respaced_sigmas(smax, smin, n, spacing, rho))
    if not schedule.is_discrete:  # the range's own ends where they set the levels (σ̃ is capped at t_end near s = 0)
        t_min, t_max = time_range(schedule, None, None)
        if n > 1 and sigma_min is None:
            times[-1] = t_min
        if sigma_max is None:
            times[0] = t_max
    return times


# ---------------------------------------------------------------------------------------------- registration
def _offset(value):
    return None if value >= 0 else "must be >= 0"


def _level(value):
    return None if value is None or value > 0 else "must be > 0 (a VE-view noise level σ̃), or None"


def _beta_param(value):
    return None if value > 0 else "must be > 0 (a Beta distribution parameter)"


def _threshold(value):
    return None if 0.0 < value < 1.0 else "must lie in (0, 1)"


def _linear_steps(value):
    return None if value is None or value >= 1 else "must be a positive integer (or None: n // 2)"


NAMED_GRIDS = (
    Grid(
        "exponential",
        _uniform_lambda,
        dict(RANGE),
        "σ̃ uniform in log between the range's ends (k-diffusion/ComfyUI 'exponential'; = uniform_lambda)",
    ),
    Grid(
        "polyexponential",
        _polyexponential,
        {**RANGE, "rho": Option(1.0, (float,), "ρ: the power of the log-σ̃ ramp (1: exponential)", positive)},
        "k-diffusion's polyexponential: log σ̃ along a ρ-th power ramp between the range's ends",
    ),
    Grid("normal", _normal, dict(RANGE), "ComfyUI 'normal': uniform in t between t(σ_max) and t(σ_min)"),
    Grid(
        "sgm_uniform", _sgm_uniform, dict(RANGE), "ComfyUI/A1111 'sgm_uniform': n + 1 uniform times, the last dropped"
    ),
    Grid("simple", _simple, {}, "ComfyUI 'simple': every N/n-th entry of the σ table from the top"),
    Grid("ddim_uniform", _ddim_uniform, {}, "ComfyUI 'ddim_uniform': table entries 1, 1 + ⌊N/n⌋, … (DDIM's skip)"),
    Grid(
        "beta",
        _beta,
        {
            **RANGE,
            "alpha": Option(0.6, (float,), "α of the Beta distribution", _beta_param),
            "beta": Option(0.6, (float,), "β of the Beta distribution", _beta_param),
            "space": Option(
                "t",
                (str,),
                "'t': quantiles of the table times (ComfyUI); 'sigma': of σ̃ (diffusers' use_beta_sigmas)",
                choices=("t", "sigma"),
            ),
        },
        "Beta(0.6, 0.6) quantile spacing (Lee et al. 2024) in t (ComfyUI) or σ̃ (diffusers)",
    ),
    Grid("kl_optimal", _kl_optimal, dict(RANGE), "KL-optimal σ̃ (Sabour et al. 2024): tan of linear atan σ̃"),
    Grid(
        "linear_quadratic",
        _linear_quadratic,
        {
            "t_max": RANGE["t_max"],
            "threshold_noise": Option(0.025, (float,), "flow level reached by the linear part", _threshold),
            "linear_steps": Option(None, (int, type(None)), "length of the linear part (None: n // 2)", _linear_steps),
        },
        "Mochi's linear-then-quadratic flow-level schedule",
    ),
    Grid(
        "ays",
        _ays,
        {"model": Option("sd15", (str,), "whose published 10-step σ̃ list", choices=tuple(AYS_SIGMAS))},
        "Align Your Steps (Sabour et al. 2024): published σ̃ lists, log-linearly interpolated to n",
    ),
    Grid(
        "diffusers_sigmas",
        _diffusers_sigmas,
        {
            "spacing": Option("karras", (str,), "the σ̃ respacing", choices=RESPACINGS),
            "timestep_spacing": Option(
                "linspace", (str,), "whose index range sets σ̃_max, σ̃_min", choices=("linspace", "leading", "trailing")
            ),
            "steps_offset": Option(0, (int,), "index offset of leading spacing", _offset),
            "sigma_min": Option(None, (float, type(None)), "σ̃_min instead of the spacing's (diffusers config)", _level),
            "sigma_max": Option(None, (float, type(None)), "σ̃_max instead of the spacing's (diffusers config)", _level),
            "rho": Option(7.0, (float,), "ρ of the Karras spacing", positive),
        },
        "diffusers' use_karras/exponential/beta_sigmas between the timestep spacing's σ̃ ends (Euler family)",
    ),
)


@hookimpl
def unisde_register_grids(register):
    for grid in NAMED_GRIDS:
        register(grid)
