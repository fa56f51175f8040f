"""The built-in time grids, registered through the ``unisde_register_grids`` hook exactly as third-party grids
are. Each returns the n decreasing evaluation times; :func:`unisde.grids.make_grid` appends the end point."""

from __future__ import annotations

import math

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


FLOAT32 = Option(
    False,
    (bool,),
    "compute the σ̃ levels in float32 as diffusers' EDM-type classes do, so that a twin visits them bitwise (the "
    "Brownian-tree noise of CosineDPMSolverMultistep is queried there; an ulp moves it by ~√ulp)",
)
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


def _float32_levels(schedule: NoiseSchedule, sig: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """The times of σ̃ levels computed in float32 (``float32=True``), clamped into [t_min, t_max]: float32 rounding
    can put the ends an ulp outside the σ̃ range (diffusers' exponential σ_max = 500.00006 for 500)."""
    return schedule.t_from_sigma(sig.to(DTYPE)).clamp(t_min, t_max)


def _uniform_lambda(schedule: NoiseSchedule, n: int, t_min=None, t_max=None, float32=False) -> torch.Tensor:
    """Equal steps in the log-SNR λ between t_max and t_min (ends exact); ``float32``: σ̃ = exp(linspace(log σ̃_min,
    log σ̃_max)) flipped, in float32, as diffusers' EDM-type classes compute their exponential σ."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    if float32:
        smax, smin = float(schedule.ve_sigma(t_max)), float(schedule.ve_sigma(t_min))
        sig = torch.linspace(math.log(smin), math.log(smax), n, dtype=torch.float32).exp().flip(0)
        return _float32_levels(schedule, sig, t_min, t_max)
    lam = torch.linspace(float(schedule.log_snr(t_max)), float(schedule.log_snr(t_min)), n, dtype=DTYPE)
    times = schedule.t_from_log_snr(lam)
    times[-1], times[0] = t_min, t_max  # in this order: one step (n = 1) evaluates at t_max, the linspace's start
    return times


def _train_ramp(n: int, train_steps: int, train_indices) -> torch.Tensor:
    """Ramp positions idx/(N − 1) of a Karras training discretisation of N levels (index 0 = σ̃_max): the given
    ascending ``train_indices``, or i·⌊N/n⌋ for i < n (consistency models' multistep choice, Song et al. 2023
    [CM], as diffusers' CMStochasticIterativeScheduler picks them)."""
    if train_indices is None:
        if n > train_steps:
            raise ValueError(f"num_inference_steps={n} is larger than the grid's train_steps={train_steps}")
        idx = [i * (train_steps // n) for i in range(n)]
    else:
        idx = [int(v) for v in train_indices]
        if len(idx) != n:
            raise ValueError(f"train_indices has {len(idx)} entries for {n} steps")
        if any(b <= a for a, b in zip(idx, idx[1:])) or idx[0] < 0 or idx[-1] > train_steps - 1:
            raise ValueError(f"train_indices must increase within [0, {train_steps - 1}], got {idx}")
    return torch.tensor(idx, dtype=DTYPE) / (train_steps - 1)


def _karras(
    schedule: NoiseSchedule,
    n: int,
    t_min=None,
    t_max=None,
    rho=7.0,
    float32=False,
    train_steps=None,
    train_indices=None,
) -> torch.Tensor:
    """Karras et al. (2022) eq. 5 in the VE view σ̃ = σ/s between σ̃(t_max) and σ̃(t_min) (ends exact; ``float32``:
    the same formula evaluated in float32, as diffusers' EDM-type classes do; ``train_steps``: the levels of
    a training discretisation of that many Karras levels, :func:`_train_ramp`)."""
    t_min, t_max = time_range(schedule, t_min, t_max)
    smax, smin = float(schedule.ve_sigma(t_max)), float(schedule.ve_sigma(t_min))
    if train_indices is not None and train_steps is None:
        raise ValueError("time grid 'karras': train_indices needs train_steps (the discretisation they index)")
    if train_steps is not None:
        ramp = _train_ramp(n, train_steps, train_indices)
        sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        return schedule.t_from_sigma(sig).clamp(t_min, t_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float32 if float32 else DTYPE)
    sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    if float32:
        return _float32_levels(schedule, sig, t_min, t_max)
    times = schedule.t_from_sigma(sig)
    times[-1], times[0] = t_min, t_max  # in this order: one step (n = 1) evaluates at t_max, as eq. 5 gives
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
    Grid(
        "uniform_lambda",
        _uniform_lambda,
        {**RANGE, "float32": FLOAT32},
        "equal steps in log-SNR λ (Lu et al. 2022)",
    ),
    Grid(
        "karras",
        _karras,
        {
            **RANGE,
            "rho": Option(7.0, (float,), "ρ of the σ̃ spacing", positive),
            "float32": FLOAT32,
            "train_steps": Option(
                None,
                (int, type(None)),
                "N: visit levels of a training discretisation of N Karras levels (indices i·⌊N/n⌋ from σ̃_max, "
                "consistency models' multistep sampling) instead of spreading n levels over the range",
                lambda v: None if v is None or v >= 2 else "must be >= 2",
            ),
            "train_indices": Option(
                None,
                (list, tuple, type(None)),
                "with train_steps: the increasing indices (0 = σ̃_max) to visit, e.g. a consistency model's [0, 22]",
            ),
        },
        "Karras et al. 2022 eq. 5: ρ-spaced σ̃",
    ),
)


@hookimpl
def unisde_register_grids(register):
    for grid in BUILTIN_GRIDS:
        register(grid)
