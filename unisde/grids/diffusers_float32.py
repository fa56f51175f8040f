r"""The ``diffusers_float32_sigmas`` time grid: the VE-view noise levels σ̃ of diffusers' σ-based β-table schedulers
(Euler, Heun, LMS, KDPM2, DPMSolverSDE) computed exactly as their ``set_timesteps`` computes them, down to float32
rounding.

Those classes build the σ̃ table of a β schedule in float32, σ̃_i = ((1 − ᾱ_i)/ᾱ_i)^½ from the float32 ᾱ
(cumprod of 1 − β), read it at the spacing's training indices (``linspace``: fractional, interpolated linearly
in σ̃; ``leading`` with ``steps_offset``; ``trailing``), optionally respace it Karras ρ = 7, geometrically or by
Beta(0.6, 0.6) quantiles between the two ends of *that* list (:func:`unisde.grids.named.diffusers_respaced_sigmas`,
the ``diffusers_sigmas`` grid's formulas), and round the result to float32. This grid returns
the times t at which the schedule has those σ̃ (t = σ̃⁻¹(σ̃_i); the schedule's monotone table interpolant passes
through every table entry, so the round trip is exact to ~1e-8 relative, below float32's half ulp), so that σ̃
rounded to float32 is bit-identical to the source's ``sigmas`` (tested on the linear, scaled_linear and cosine
tables; the one level that could miss by an ulp is a largest table entry that float32 rounds above the exact
σ̃(t = 1), which t_from_sigma clamps). The ``linspace``, ``leading``, ``trailing`` and
``karras`` grids give the same levels up to float32 rounding of the table (1 ulp at ~20 % of a table's entries) and,
for ``linspace_fractional``, the interpolation (linear in σ̃ here, in the schedule's λ there: ≤ 1e-5 relative).
That difference matters only where a draw depends on the exact level: DPMSolverSDEScheduler's Brownian tree
resolves σ̃ to 1e-6, so the twin of that class needs this grid to draw the same noise from the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

from unisde._tensor import DTYPE
from unisde.core.schedule import NoiseSchedule
from unisde.grids import Grid, discrete_indices
from unisde.grids.named import RESPACINGS, diffusers_respaced_sigmas
from unisde.plugins import hookimpl
from unisde.samplers.base import Option

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def _offset(value):
    return None if value >= 0 else "must be >= 0"


def diffusers_float32_sigmas(
    schedule: NoiseSchedule, n: int, timestep_spacing: str = "linspace", steps_offset: int = 0, spacing: str = "table"
) -> np.ndarray:
    """The n decreasing float32 σ̃ a diffusers σ-based scheduler's ``set_timesteps(n)`` computes on this β table."""
    complement = getattr(schedule, "table_complement", None)
    if not schedule.is_discrete or complement is None:
        raise ValueError(
            f"time grid 'diffusers_float32_sigmas' reads the ᾱ table of a diffusers β schedule; the schedule "
            f"{schedule!r} has none (use the 'karras', 'uniform_lambda' or 'uniform_t' grid on a closed-form schedule)"
        )
    abar = complement.to(torch.float32)  # ᾱ as diffusers holds it: float32 (exact, the table was built so)
    if not bool((abar > 0).all()):
        raise ValueError(
            "time grid 'diffusers_float32_sigmas': the table has ᾱ = 0 (zero terminal SNR, σ̃ = ∞), which diffusers' "
            "σ-based schedulers cannot represent; use another time grid"
        )
    table = (((1 - abar) / abar) ** 0.5).numpy()  # float32 arithmetic, as diffusers
    num_train = table.size
    kind = "linspace_fractional" if timestep_spacing == "linspace" else timestep_spacing
    index = discrete_indices(num_train, n, kind, steps_offset)
    levels = np.interp(index.astype(np.float64), np.arange(num_train), table)
    if spacing != "table":  # respaced between the list's ends, as diffusers' _convert_to_karras & co.
        levels = diffusers_respaced_sigmas(float(levels[0]), float(levels[-1]), n, spacing)
    return levels.astype(np.float32)


def _times(schedule: NoiseSchedule, n: int, timestep_spacing="linspace", steps_offset=0, spacing="table"):
    levels = diffusers_float32_sigmas(schedule, n, timestep_spacing, steps_offset, spacing)
    if n > 1 and not bool((levels[1:] < levels[:-1]).all()):
        raise ValueError(
            f"time grid 'diffusers_float32_sigmas': {n} steps with timestep_spacing={timestep_spacing!r}, "
            f"spacing={spacing!r} repeat a noise level in float32 ({levels.tolist()}); use fewer steps"
        )
    return schedule.t_from_sigma(torch.from_numpy(levels.astype(np.float64))).to(DTYPE)


GRID = Grid(
    "diffusers_float32_sigmas",
    _times,
    {
        "timestep_spacing": Option("linspace", (str,), "diffusers' timestep_spacing", choices=TIMESTEP_SPACINGS),
        "steps_offset": Option(0, (int,), "diffusers' steps_offset (leading spacing)", _offset),
        "spacing": Option(
            "table",
            (str,),
            "table: the table's σ̃ at the spacing's indices; karras, exponential or beta: respaced between their ends "
            "(diffusers' use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)",
            choices=("table",) + RESPACINGS,
        ),
    },
    "σ̃ bit-identical in float32 to diffusers' Euler/Heun/LMS/KDPM2/DPMSolverSDE sigmas (float32 table, spacings)",
)


@hookimpl
def unisde_register_grids(register):
    register(GRID)
