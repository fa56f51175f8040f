r"""The Parameterization base class: raw model output ↔ denoised estimate x̂0 for any schedule.

Every parameterisation unisde knows is *linear* in the model output F and the sample x:

    x̂0 = a(t) · x + b(t) · F,        model input = c_in(t) · x,

so a parameterisation is fully described by its coefficient functions of (schedule, t). The score, noise and
velocity estimates all follow from x̂0 (Tweedie's formula; Karras et al. 2022, eq. 3 [EDM]):

    ε̂ = (x − s x̂0) / σ,        ∇log p_t(x) = (s x̂0 − x) / σ² = −ε̂ / σ.

Samplers precompute (a, b) on their time grid in float64 and cast once, so a new parameterisation costs only
its coefficient formulas; a new sampler never needs to know which one is in use.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from unisde._tensor import DTYPE, as_float64, scaled, scaled_
from unisde.core.kernels import schedule_coefficients
from unisde.core.schedule import NoiseSchedule, _expand_like


def eps_from_denoised(x0_hat: torch.Tensor, sample: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """ε̂ = (x − s x̂0) / σ (Ho et al. 2020, eq. 15 [DDPM], solved for ε in general (s, σ) form)."""
    s, sigma = schedule_coefficients(schedule, t)
    s, sigma = _expand_like(s, sample).to(sample.dtype), _expand_like(sigma, sample).to(sample.dtype)
    return (sample - s * x0_hat) / sigma


def score_from_denoised(x0_hat: torch.Tensor, sample: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
    """∇log p_t(x) = (s x̂0 − x) / σ² (Karras et al. 2022, eq. 3 [EDM], generalised to s ≠ 1)."""
    s, sigma = schedule_coefficients(schedule, t)
    s, var = _expand_like(s, sample).to(sample.dtype), _expand_like(sigma**2, sample).to(sample.dtype)
    return (s * x0_hat - sample) / var


class Parameterization(abc.ABC):
    """What a model's raw output means. Subclasses implement :meth:`coefficients` (and optionally
    :meth:`input_scale`, :meth:`model_time`). Options (e.g. EDM's ``sigma_data``) are constructor keywords."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict] = {}

    def __init__(self, **options):
        unknown = set(options) - set(self.options)
        if unknown:
            valid = ", ".join(sorted(self.options)) or "(none)"
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for parameterization {self.name!r}; valid options: {valid}"
            )
        self.config = {**self.options, **options}

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def coefficients(self, schedule: NoiseSchedule, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) in float64 with x̂0 = a x + b F at time t."""

    def input_scale(self, schedule: NoiseSchedule, t) -> torch.Tensor:
        """c_in with model input = c_in · x (1 unless the parameterisation preconditions its input)."""
        return torch.ones_like(schedule._time(t))

    def model_time(self, schedule: NoiseSchedule, t) -> torch.Tensor:
        """The timestep value the model is fed at time t (the schedule's own convention by default)."""
        return schedule.timestep(t)

    def t_from_model_time(self, schedule: NoiseSchedule, timestep) -> torch.Tensor:
        """Inverse of :meth:`model_time`: the time t at which the model is fed ``timestep``."""
        return schedule.t_from_timestep(timestep)

    # ------------------------------------------------------------------ derived
    def _coef(self, schedule, t, like):
        a, b = self.coefficients(schedule, t)
        return _expand_like(a, like).to(like.dtype), _expand_like(b, like).to(like.dtype)

    def to_denoised(self, model_output: torch.Tensor, sample: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        """x̂0 from the raw model output at (sample, t)."""
        a, b = self._coef(schedule, t, sample)
        return a * sample + b * model_output

    def from_denoised(self, x0_hat: torch.Tensor, sample: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        """The raw model output that would give x̂0 at (sample, t): F = (x̂0 − a x) / b."""
        a, b = self._coef(schedule, t, sample)
        return (x0_hat - a * sample) / b

    def model_input(self, sample: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        """What the network is fed: c_in(t) · x."""
        c = _expand_like(self.input_scale(schedule, t), sample).to(sample.dtype)
        return c * sample

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t, schedule: NoiseSchedule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, regression target) for clean data x0 and noise ε at per-sample times t.

        The target is the output that would reproduce x0 exactly, F* = (x0 − a x_t)/b; for ε-, x0- and
        v-prediction it reduces to ε, x0 and v, for EDM to F's target of Karras et al. 2022, eq. 8 [EDM].
        """
        x_t = schedule.add_noise(x0, noise, t)
        return self.model_input(x_t, t, schedule), self.from_denoised(x0, x_t, t, schedule)

    def output_weight(self, schedule: NoiseSchedule, t) -> torch.Tensor:
        """b(t)²: ‖F − F*‖² = ‖x̂0 − x0‖² / b², so an x0-space loss weight λ(t) becomes λ·b² in output space."""
        return self.coefficients(schedule, t)[1] ** 2

    def default_loss_weight(self, schedule: NoiseSchedule, t) -> torch.Tensor:
        """The x0-space weight equivalent to plain MSE on this parameterisation's output: 1 / b(t)²."""
        return 1.0 / self.output_weight(schedule, t)

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({opts})"


def as_time(t) -> torch.Tensor:
    return as_float64(t, "t")


__all__ = ["Parameterization", "schedule_coefficients", "eps_from_denoised", "score_from_denoised", "DTYPE"]


TIMESTEP_ROUNDINGS = (None, "round", "floor", "round_steps", "diffusers_round", "diffusers_floor")
# The roundings whose values the scheduler first replaces, on its own grid, by the fractional indices diffusers'
# multistep β-table schedulers compute for their respaced σ (unisde.grids.diffusers_float32)
DIFFUSERS_INDEX_ROUNDINGS = ("diffusers_round", "diffusers_floor")


def fed_timesteps(
    model_t: torch.Tensor, schedule: NoiseSchedule, rounding: str | None = None, step_starts=None
) -> torch.Tensor:
    """The timestep values a network is fed, from the float64 ``model_time`` values: rounded (``"round"``: diffusers'
    DPM-Solver/UniPC on Karras σ) or floored (``"floor"``: their int64 cast of flow timesteps) when a twin needs it
    while its solver keeps the exact times; ``"round_steps"`` rounds only the evaluations that start a step (the
    indices ``step_starts``; all when None) and keeps the others exact — diffusers' KDPM2 schedulers round their
    Karras grid points but not their midpoints. ``"diffusers_round"`` / ``"diffusers_floor"`` round / floor here as
    ``"round"`` / ``"floor"``; ``UnifiedScheduler.set_timesteps`` first replaces the values at its grid points by
    the indices diffusers computes against its float32 log-σ̃ table (see there). int64 when every value is a
    training index, float32 otherwise (the dtypes diffusers' schedulers hand to pipelines)."""
    if rounding not in TIMESTEP_ROUNDINGS:
        raise ValueError(f"timestep rounding must be one of {TIMESTEP_ROUNDINGS}, got {rounding!r}")
    if rounding in DIFFUSERS_INDEX_ROUNDINGS:
        rounding = rounding.removeprefix("diffusers_")
    if rounding == "floor":
        model_t = torch.floor(model_t)
    elif rounding == "round" or rounding == "round_steps" and step_starts is None:
        model_t = model_t.round()
    elif rounding == "round_steps":
        at_start = torch.zeros(model_t.shape, dtype=torch.bool)
        at_start[list(step_starts)] = True
        model_t = torch.where(at_start, model_t.round(), model_t)
    integral = (schedule.is_discrete or rounding is not None) and bool(torch.all(model_t == torch.round(model_t)))
    return model_t.round().to(torch.int64) if integral else model_t.to(torch.float32)


def denoised_from_output(sample: torch.Tensor, model_output: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """x̂0 = a x + b F with the parameterisation's coefficients (Python floats) in the sample's dtype, in at most two
    passes. In float16 with |a| > 256 it is formed as a (x + (b/a) F): a·x alone overflows (a = 1/s = 4096 at a
    zero-terminal-SNR start turns |x| > 16 into inf) while x + (b/a) F ≈ s x̂0 stays small."""
    if a == 0.0:
        return model_output if b == 1.0 else scaled(model_output, b)
    if a == 1.0:  # flow prediction on a rectified flow: x̂0 = x − σ u, one pass
        return torch.add(sample, model_output, alpha=b)
    if abs(a) > 256.0 and sample.dtype == torch.float16:
        return scaled_(torch.add(sample, model_output, alpha=b / a), a)
    # in place on the fresh product: the same kernel as torch.add(sample * a, …) without a second buffer
    return scaled(sample, a).add_(model_output, alpha=b)
