r"""Time grids: where a sampler evaluates the model, as decreasing times t_0 > … > t_{n−1} plus the end point.

A grid is a registered plugin (hook ``unisde_register_grids``): a :class:`Grid` with a name, its options and a
function ``(schedule, n, **options) -> times`` returning the n evaluation times (float64, decreasing).
:func:`make_grid` validates the options, calls it and appends the end point (t = 0, clean data, unless the caller
asks otherwise). The built-in grids live in :mod:`unisde.grids.builtin`:

* ``leading`` / ``trailing`` / ``linspace``: diffusers' spacings of training indices i (tables only; index i
  sits at t = (i + 1)/N). On closed-form schedules they are ``uniform_t``.
* ``linspace_fractional``: ``linspace`` without rounding, the grid of diffusers' Euler, EulerAncestral, Heun and
  LMS schedulers (fractional indices; the model gets float timesteps, as from those schedulers).
* ``leading_multistep`` / ``linspace_multistep``: the same spacings as diffusers' multistep schedulers
  (DPMSolverMultistep, UniPC) compute them — over n + 1 points with the index-0 point dropped.
* ``uniform_t``: equal steps in t between t_max and t_min.
* ``uniform_lambda``: equal steps in log-SNR λ (equivalently in log σ̃) — DPM-Solver's choice (Lu et al. 2022).
* ``karras``: Karras et al. (2022) eq. 5, σ̃_i = (σ̃_max^{1/ρ} + i/(n−1) (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ in the VE
  view σ̃ = σ/s, ρ = 7 by default.

The named grids of the ComfyUI/A1111 scheduler menus (``exponential``, ``normal``, ``sgm_uniform``, ``simple``,
``ddim_uniform``, ``beta``, ``kl_optimal``, ``linear_quadratic``, ``ays``) and diffusers' σ respacing
(``diffusers_sigmas``) live in :mod:`unisde.grids.named`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from unisde._tensor import DTYPE, closest, unknown_name_error
from unisde.core.schedule import NoiseSchedule

GRIDS = (
    "leading",
    "trailing",
    "linspace",
    "linspace_fractional",
    "leading_multistep",
    "linspace_multistep",
    "uniform_t",
    "uniform_lambda",
    "karras",
)  # the built-in grids (every registered one: list_grids())
DISCRETE_GRIDS = ("leading", "trailing", "linspace", "linspace_fractional", "leading_multistep", "linspace_multistep")


@dataclass(frozen=True)
class Grid:
    """A named time grid: ``times(schedule, n, **options)`` returns n decreasing evaluation times in [0, 1]
    (float64). ``options`` maps each option name to an :class:`unisde.samplers.base.Option` (its default, type
    and check); unknown options are a ValueError listing these."""

    name: str
    times: Callable[..., torch.Tensor]
    options: dict = field(default_factory=dict)
    description: str = ""
    aliases: tuple = ()

    def validate(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "(none)"
            raise ValueError(
                f"unknown option(s) {unknown} for time grid {self.name!r}; valid options: {valid}."
                f"{closest(unknown[0], self.options)}"
            )
        return {
            k: spec.validate(f"time grid {self.name!r}", k, options[k]) if k in options else spec.default
            for k, spec in self.options.items()
        }


def get_grid(name: str) -> Grid:
    """The grid registered as ``name`` (ValueError listing the valid names otherwise)."""
    from unisde.plugins import get_grid as lookup

    return lookup(name)


def list_grids() -> list[str]:
    """Names of every registered time grid, sorted."""
    from unisde.plugins import list_grids as names

    return names()


def make_grid(
    schedule: NoiseSchedule, n: int, kind: str, *, final_time: float = 0.0, keep_final: bool = False, **options
) -> torch.Tensor:
    """n evaluation times of the grid ``kind`` (with its ``options``) plus ``final_time``: a strictly decreasing
    float64 tensor (n + 1,). A ``final_time`` at or above the last evaluation time becomes 0 (clean data), or, with
    ``keep_final``, the last evaluation time itself (a zero-length last step, as diffusers' DDIM/PNDM take)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {n!r}")
    grid = get_grid(kind)
    times = grid.times(schedule, int(n), **grid.validate(options))
    if final_time > 0 and float(times[-1]) <= final_time:
        if keep_final:  # the source scheduler's zero-length last step (DDIM/PNDM with set_alpha_to_one=False)
            return append_final(times, float(times[-1]), schedule, zero_length_end=True)
        final_time = 0.0  # the grid already evaluates there (e.g. index 0): end on clean data instead
    return append_final(times, final_time, schedule)


def time_range(schedule: NoiseSchedule, t_min: float | None, t_max: float | None) -> tuple[float, float]:
    """(t_min, t_max) with the schedule's defaults (:func:`default_time_range`) for None; ValueError unless
    0 <= t_min < t_max <= 1."""
    lo, hi = default_time_range(schedule)
    t_min = lo if t_min is None else float(t_min)
    t_max = hi if t_max is None else float(t_max)
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    return t_min, t_max


def default_time_range(schedule: NoiseSchedule) -> tuple[float, float]:
    """(t_min, t_max) a sampler covers by default: tables from index 0 (t = 1/N) to N−1 (t = 1); closed forms
    with σ(0) > 0 (VE, EDM) from 0; closed forms with σ(0) = 0 from t = 1e-3 (score-SDE's sampling ε for VP)."""
    if schedule.is_discrete:
        return 1.0 / schedule.num_train_timesteps, 1.0
    if float(schedule.sigma(0.0)) > 0:
        return 0.0, 1.0
    return 1e-3, 1.0


def discrete_indices(num_train: int, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """diffusers' training indices for n inference steps (descending; int64, float64 for ``linspace_fractional``)."""
    if n > num_train:
        raise ValueError(f"num_inference_steps={n} is larger than the schedule's {num_train} training timesteps")
    if spacing == "linspace":
        idx = np.linspace(0, num_train - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "linspace_fractional":
        idx = np.linspace(0, num_train - 1, n, dtype=np.float64)[::-1].copy()
    elif spacing == "leading":
        ratio = num_train // n
        idx = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == "trailing":
        idx = np.round(np.arange(num_train, 0, -num_train / n)).astype(np.int64) - 1
    elif spacing == "linspace_multistep":
        idx = np.linspace(0, num_train - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif spacing == "leading_multistep":
        ratio = num_train // (n + 1)
        idx = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    else:
        raise unknown_name_error("timestep_spacing", spacing, DISCRETE_GRIDS)
    if idx.max() >= num_train or idx.min() < 0:
        raise ValueError(
            f"timestep spacing {spacing!r} with steps_offset={steps_offset} gives index {int(idx.max())} outside [0, "
            f"{num_train - 1}]"
        )
    return idx


def append_final(
    times: torch.Tensor, final_time: float = 0.0, schedule: NoiseSchedule | None = None, zero_length_end: bool = False
) -> torch.Tensor:
    """Append the end point and check the grid is strictly decreasing (ValueError naming the position).

    On a schedule with σ(0) > 0 (VE, EDM) the last evaluation may sit at t = 0 (σ = σ_min) and the end point
    t = 0 then means the clean data (see ``grid_coefficients``), so that one repeated 0 is allowed; so is a
    repeated last time with ``zero_length_end`` (see :func:`make_grid`).
    """
    times = torch.cat([times.to(DTYPE), torch.tensor([float(final_time)], dtype=DTYPE)])
    diff = times[1:] - times[:-1]
    if zero_length_end and times.numel() > 1:
        diff[-1] = -1.0
    if (
        schedule is not None
        and times.numel() > 1
        and float(times[-1]) == 0.0
        and float(times[-2]) == 0.0
        and float(schedule.sigma(0.0)) > 0
    ):
        diff[-1] = -1.0
    if (diff >= 0).any():
        i = int((diff >= 0).nonzero()[0])
        raise ValueError(
            f"the time grid must be strictly decreasing towards the data; entry {i} (t={times[i].item():.6g}) "
            f"is followed by t={times[i + 1].item():.6g}"
        )
    return times


SIGMAS_RANGE_RTOL = 1e-4
"""Relative tolerance of custom ``sigmas`` against the schedule's range (see :func:`grid_from_sigmas`)."""


def grid_from_sigmas(schedule: NoiseSchedule, sigmas, final_time: float = 0.0) -> torch.Tensor:
    """Grid from custom VE-view noise levels σ̃ (descending; a trailing 0 marks the clean-data end point)."""
    sig = torch.as_tensor(np.asarray(sigmas, dtype=np.float64), dtype=DTYPE)
    if sig.ndim != 1 or sig.numel() == 0:
        raise ValueError("sigmas must be a non-empty 1-D sequence")
    if not torch.isfinite(sig).all() or (sig < 0).any():
        raise ValueError(f"sigmas must be finite and >= 0, got {sig.tolist()}")
    if sig[-1] == 0:
        sig = sig[:-1]
    if sig.numel() == 0:
        raise ValueError("sigmas must contain at least one positive noise level")
    if (sig == 0).any():
        i = int((sig == 0).nonzero()[0])
        raise ValueError(
            f"sigmas[{i}] = 0: a zero noise level may only be the last entry (the clean-data end point); "
            f"got {np.asarray(sigmas, dtype=np.float64).tolist()}"
        )
    # The levels the schedule has, from its first time (a table's index 0, t = 1/N; t = 0 otherwise) to t_end:
    # t_from_sigma clamps anything outside, which would silently run other levels than the ones asked for. Levels
    # within SIGMAS_RANGE_RTOL of an end (float32 copies of scheduler.sigmas) are taken as that end.
    lo_t = 1.0 / schedule.num_train_timesteps if schedule.is_discrete else 0.0
    lo, hi = (float(v) for v in schedule.ve_sigma(torch.tensor([lo_t, schedule.t_end], dtype=DTYPE)))
    for i, v in enumerate(sig.tolist()):
        if v > hi * (1 + SIGMAS_RANGE_RTOL) or v < lo * (1 - SIGMAS_RANGE_RTOL):
            raise ValueError(
                f"sigmas[{i}] = {v:.6g} lies outside the schedule's VE-view noise levels [{lo:.6g}, {hi:.6g}] "
                f"({schedule!r}); pass levels within that range (a trailing 0 marks the clean-data end point)"
            )
    return append_final(schedule.t_from_sigma(sig), final_time, schedule)


def build_grid(
    schedule: NoiseSchedule,
    parameterization,
    *,
    num_inference_steps: int | None = None,
    timesteps=None,
    sigmas=None,
    kind: str = "leading",
    final_time: float = 0.0,
    **options,
) -> torch.Tensor:
    """The decreasing time grid (evaluation times plus end point) from exactly one of ``num_inference_steps``
    (with the grid ``kind`` and its ``options``), ``timesteps`` (on the model's timestep scale, descending) or
    ``sigmas`` (VE-view noise levels σ̃, descending). Shared by :class:`unisde.UnifiedScheduler` and
    :func:`unisde.sample`, so both visit the same times."""
    given = [x is not None for x in (num_inference_steps, timesteps, sigmas)]
    if sum(given) != 1:
        raise ValueError("pass exactly one of num_inference_steps, timesteps or sigmas")
    if timesteps is not None:
        ts = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64)
        if ts.ndim != 1 or ts.size == 0:
            raise ValueError("timesteps must be a non-empty 1-D sequence")
        return append_final(parameterization.t_from_model_time(schedule, torch.as_tensor(ts)), final_time, schedule)
    if sigmas is not None:
        return grid_from_sigmas(schedule, sigmas.cpu() if isinstance(sigmas, torch.Tensor) else sigmas, final_time)
    return make_grid(schedule, num_inference_steps, kind, final_time=final_time, **options)
