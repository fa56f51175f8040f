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

The same float32 table gives the timesteps diffusers' DPMSolverMultistep, DPMSolverSinglestep and UniPC feed their
model on respaced σ̃ (:func:`diffusers_table_respaced_timesteps`, :func:`diffusers_sigma_to_t`): the rounded or
truncated index of each level against the float32 log table, which ``UnifiedScheduler``'s
``timestep_rounding="diffusers_round"/"diffusers_floor"`` feeds while its sampler steps between its own levels.
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


def float32_sigma_table(schedule: NoiseSchedule, what: str = "time grid 'diffusers_float32_sigmas'") -> np.ndarray:
    """σ̃_i = ((1 − ᾱ_i)/ᾱ_i)^½ for every training index i as diffusers' β-table schedulers hold it: float32
    arithmetic on the float32 ᾱ (cumprod of 1 − β). ``what`` names the caller in the errors."""
    complement = getattr(schedule, "table_complement", None)
    if not schedule.is_discrete or complement is None:
        raise ValueError(
            f"{what} reads the ᾱ table of a diffusers β schedule; the schedule "
            f"{schedule!r} has none (use the 'karras', 'uniform_lambda' or 'uniform_t' grid on a closed-form schedule)"
        )
    abar = complement.to(torch.float32)  # ᾱ as diffusers holds it: float32 (exact, the table was built so)
    if not bool((abar > 0).all()):
        raise ValueError(
            f"{what}: the table has ᾱ = 0 (zero terminal SNR, σ̃ = ∞), which diffusers' "
            "σ-based schedulers cannot represent; use another time grid"
        )
    return (((1 - abar) / abar) ** 0.5).numpy()  # float32 arithmetic, as diffusers


def diffusers_float32_sigmas(
    schedule: NoiseSchedule, n: int, timestep_spacing: str = "linspace", steps_offset: int = 0, spacing: str = "table"
) -> np.ndarray:
    """The n decreasing float32 σ̃ a diffusers σ-based scheduler's ``set_timesteps(n)`` computes on this β table."""
    table = float32_sigma_table(schedule)
    num_train = table.size
    kind = "linspace_fractional" if timestep_spacing == "linspace" else timestep_spacing
    index = discrete_indices(num_train, n, kind, steps_offset)
    levels = np.interp(index.astype(np.float64), np.arange(num_train), table)
    if spacing != "table":  # respaced between the list's ends, as diffusers' _convert_to_karras & co.
        levels = diffusers_respaced_sigmas(float(levels[0]), float(levels[-1]), n, spacing)
    return levels.astype(np.float32)


def diffusers_sigma_to_t(sigmas, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training index of each level σ̃ (float64 values) as diffusers' ``_sigma_to_t`` computes it,
    one call per level as its ``set_timesteps`` makes them, operation for operation: linear interpolation in log σ̃
    between the two neighbouring entries of ``log_sigmas``, the float32 log of :func:`float32_sigma_table` (whose
    float32 rounding moves the index off the exact float64 one: SD's σ̃_max, the table's own last entry, sits at
    998.9999997, which diffusers' int64 cast truncates to 998), clipped to the table's range."""
    out = []
    for sigma in np.asarray(sigmas, dtype=np.float64):  # np.float64 scalars: numpy promotes them as diffusers' own
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma - log_sigmas[:, np.newaxis]
        low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = np.clip((low - log_sigma) / (low - high), 0, 1)
        out.append(((1 - w) * low_idx + w * high_idx).reshape(sigma.shape))
    return np.array(out, dtype=np.float64)


TABLE_RESPACINGS = RESPACINGS + ("lu",)


def diffusers_table_respaced_timesteps(schedule: NoiseSchedule, n: int, spacing: str) -> tuple[np.ndarray, np.ndarray]:
    """(σ̃, index): the n levels diffusers' DPMSolverMultistep, DPMSolverSinglestep and UniPC compute in
    ``set_timesteps(n)`` for ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas``
    (``spacing`` karras, exponential, beta: :func:`~unisde.grids.named.diffusers_respaced_sigmas` between the float32
    table's ends, whatever ``timestep_spacing`` says) or ``use_lu_lambdas`` (``lu``: uniform in log σ̃ between the
    float32 *log* table's ends, Lu et al. 2022 [DPMSolver]), in float64 as they hold them before their float32 cast,
    and the fractional index of each (:func:`diffusers_sigma_to_t`) that they round or truncate to feed the model.
    The σ̃ agree with unisde's ``karras`` / ``uniform_lambda`` / ``diffusers_sigmas`` levels to ~1e-7 relative
    (float32 ends against float64 ones); the index is computed from these, not from unisde's levels, because a
    level's float32 rounding decides which side of an integer its index falls on."""
    if spacing not in TABLE_RESPACINGS:
        raise ValueError(f"spacing must be one of {TABLE_RESPACINGS}, got {spacing!r}")
    table = float32_sigma_table(schedule, f"diffusers' {spacing} σ̃ timesteps")
    log_sigmas = np.log(table)  # float32, as diffusers takes it
    if spacing == "lu":  # _convert_to_lu on flip(log_sigmas): λ_max, λ_min as Python floats, ρ = 1
        rho, lam_min, lam_max = 1.0, log_sigmas[0].item(), log_sigmas[-1].item()
        ramp = np.linspace(0, 1, n)
        levels = np.exp((lam_max ** (1 / rho) + ramp * (lam_min ** (1 / rho) - lam_max ** (1 / rho))) ** rho)
    else:
        levels = diffusers_respaced_sigmas(table[-1].item(), table[0].item(), n, spacing)
    return levels, diffusers_sigma_to_t(levels, log_sigmas)


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
