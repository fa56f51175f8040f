"""The built-in time grids, registered through the ``unisde_register_grids`` hook exactly as third-party grids
are. Each returns the n decreasing evaluation times; :func:`unisde.grids.make_grid` appends the end point."""

from __future__ import annotations

import torch

from unisde._tensor import DTYPE
from unisde.core.schedule import NoiseSchedule
from unisde.grids import DISCRETE_GRIDS, Grid, discrete_indices, time_range
from unisde.plugins import hookimpl
from unisde.samplers.base import Option, positive


def _unit(value):
    return None if value is None or 0.0 <= value <= 1.0 else "must lie in [0, 1] (or None for the schedule's default)"


def _offset(value):
    return None if value >= 0 else "must be >= 0"


RANGE = {
    "t_min": Option(None, (float, type(None)), "smallest evaluation time (None: the schedule's default)", _unit),
    "t_max": Option(None, (float, type(None)), "largest evaluation time (None: 1)", _unit),
}


def _uniform_t(schedule: NoiseSchedule, n: int, t_min=None, t_max=None) -> torch.Tensor:
    """Equal steps in t from t_max to t_min."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    return torch.linspace(t_max, t_min, n, dtype=DTYPE)


def _table_spacing(spacing: str):
    """diffusers' spacing of training indices on a table (index i at t = (i + 1)/N); ``uniform_t`` between the
    time range's ends on a closed-form schedule."""

    def times(schedule: NoiseSchedule, n: int, t_min=None, t_max=None, steps_offset=0) -> torch.Tensor:
        if not schedule.is_discrete:
            return _uniform_t(schedule, n, t_min, t_max)
        time_range(schedule, t_min, t_max)
        idx = discrete_indices(schedule.num_train_timesteps, n, spacing, steps_offset)
        return torch.as_tensor((idx + 1) / schedule.num_train_timesteps, dtype=DTYPE)

    return times


def _uniform_lambda(schedule: NoiseSchedule, n: int, t_min=None, t_max=None) -> torch.Tensor:
    """Equal steps in the log-SNR λ between t_max and t_min (ends exact)."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    lam = torch.linspace(float(schedule.log_snr(t_max)), float(schedule.log_snr(t_min)), n, dtype=DTYPE)
    times = schedule.t_from_log_snr(lam)
    times[0], times[-1] = t_max, t_min
    return times


def _karras(schedule: NoiseSchedule, n: int, t_min=None, t_max=None, rho=7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5 in the VE view σ̃ = σ/s between σ̃(t_max) and σ̃(t_min) (ends exact)."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    smax, smin = float(schedule.ve_sigma(t_max)), float(schedule.ve_sigma(t_min))
    ramp = torch.linspace(0, 1, n, dtype=DTYPE)
    sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    times = schedule.t_from_sigma(sig)
    times[0], times[-1] = t_max, t_min
    return times


_DESCRIPTIONS = {
    "leading": "diffusers' leading spacing of table indices (steps_offset honoured)",
    "trailing": "diffusers' trailing spacing of table indices (starts at the last index)",
    "linspace": "diffusers' linspace spacing of table indices, rounded",
    "linspace_fractional": "linspace without rounding (diffusers' Euler/Heun/LMS: fractional timesteps)",
    "leading_multistep": "leading over n + 1 points without index 0 (diffusers' DPMSolverMultistep/UniPC)",
    "linspace_multistep": "linspace over n + 1 points without index 0 (diffusers' DPMSolverMultistep/UniPC)",
}

BUILTIN_GRIDS = tuple(
    Grid(
        name,
        _table_spacing(name),
        {**RANGE, **({"steps_offset": Option(0, (int,), "index offset", _offset)} if "leading" in name else {})},
        _DESCRIPTIONS[name],
    )
    for name in DISCRETE_GRIDS
) + (
    Grid("uniform_t", _uniform_t, dict(RANGE), "equal steps in t"),
    Grid("uniform_lambda", _uniform_lambda, dict(RANGE), "equal steps in log-SNR λ (Lu et al. 2022)"),
    Grid(
        "karras",
        _karras,
        {**RANGE, "rho": Option(7.0, (float,), "ρ of the σ̃ spacing", positive)},
        "Karras et al. 2022 eq. 5: ρ-spaced σ̃",
    ),
)


@hookimpl
def unisde_register_grids(register):
    for grid in BUILTIN_GRIDS:
        register(grid)
