r"""The Sampler base class: a time grid plus an update rule, written once against schedule and denoiser.

A sampler never sees a model type. The scheduler turns each raw model output into the denoised estimate
x̂0 = D(x, t) with the parameterisation's coefficients, and calls :meth:`Sampler.step` with the sample, x̂0 and
the index k of the model evaluation. The sampler returns the sample for the next model evaluation — always in
the model's own space x = s x0 + σ ε, so plain pipelines work with every sampler.

Life cycle (driven by :class:`unisde.UnifiedScheduler`):

1. ``Sampler(schedule, parameterization, **options)`` validates the options.
2. ``prepare(grid)`` receives the decreasing time grid t_0 > t_1 > … > t_n (t_n is where sampling ends,
   usually 0 = clean data), precomputes every per-step coefficient in float64 as Python floats (multiplying a
   tensor by a Python float casts once to the sample's dtype and needs no device transfer), resets its state
   and returns the time of every model evaluation, in order. A solver needing several evaluations per step
   (Heun, Langevin correctors) lists each of them, as diffusers' Heun lists its timesteps twice.
3. ``step(k, sample, denoised, ...)`` for k = 0 … K−1.
"""

from __future__ import annotations

import abc

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from unisde._tensor import closest
from unisde.core.schedule import NoiseSchedule


@dataclass(frozen=True)
class Option:
    """A sampler option: default value, accepted type(s), one-line doc and an optional range check.

    ``check(value)`` returns None when the value is valid and an explanation otherwise.
    """

    default: Any
    types: tuple
    doc: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple | None = field(default=None)

    def validate(self, sampler: str, name: str, value):
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"sampler {sampler!r}: option {name}={value!r} is not one of {list(self.choices)}.{closest(str(value), map(str, self.choices))}")
            return value
        if isinstance(value, bool) and bool not in self.types:
            raise ValueError(f"sampler {sampler!r}: option {name} must be {_type_names(self.types)}, got {value!r} (bool)")
        if not isinstance(value, self.types):
            if float in self.types and isinstance(value, int):
                value = float(value)
            else:
                raise ValueError(f"sampler {sampler!r}: option {name} must be {_type_names(self.types)}, got {value!r} ({type(value).__name__})")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ValueError(f"sampler {sampler!r}: option {name}={value!r} is invalid: {problem}")
        return value


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in types)


def non_negative(value):
    return None if value >= 0 else "must be >= 0"


def positive(value):
    return None if value > 0 else "must be > 0"


def unit_interval(value):
    return None if 0 <= value <= 1 else "must lie in [0, 1]"


class Sampler(abc.ABC):
    """Base class of every sampler plugin.

    Class attributes
    ----------------
    name: the registered name.
    options: ``{option name: Option}``; unknown options are a ValueError listing these.
    order: how many model evaluations a full step takes (diffusers' ``order``).
    default_grid: the time grid used when the user does not choose one: ``"config"`` (the diffusers config's
        ``timestep_spacing``), or one of :data:`unisde.samplers.grids.GRIDS`.
    stochastic: whether ``step`` draws noise (so a generator matters).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Option]] = {}
    order: ClassVar[int] = 1
    default_grid: ClassVar[str] = "config"
    stochastic: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, schedule: NoiseSchedule, parameterization, **options):
        self.schedule = schedule
        self.parameterization = parameterization
        self.user_options = dict(options)
        self.opts = self.validate_options(options)
        self.grid: list[float] = []

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        """Return the full option dict (defaults filled in) or raise a ValueError naming the bad option."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            valid = ", ".join(sorted(cls.options)) or "(none)"
            hint = closest(unknown[0], cls.options)
            raise ValueError(f"unknown option(s) {unknown} for sampler {cls.name!r}; valid options: {valid}.{hint}")
        out = {}
        for key, spec in cls.options.items():
            out[key] = spec.validate(cls.name, key, options[key]) if key in options else spec.default
        return out

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def prepare(self, grid: torch.Tensor) -> torch.Tensor:
        """Precompute coefficients for the decreasing float64 grid (n + 1 times); return evaluation times."""

    @abc.abstractmethod
    def step(self, k: int, sample: torch.Tensor, denoised: torch.Tensor, *, raw_denoised: torch.Tensor,
             extra: torch.Tensor | None, generator: torch.Generator | None, eta: float | None = None) -> torch.Tensor:
        """Advance from model evaluation k to the sample for evaluation k + 1 (or the final sample).

        ``denoised`` is x̂0 after any clipping/thresholding, ``raw_denoised`` before it; ``extra`` holds extra
        output channels (learned variance) or None; ``eta`` is the value a pipeline passed to ``step``.
        """

    # ------------------------------------------------------------------ helpers for subclasses
    def floats(self, values: torch.Tensor) -> list[float]:
        """float64 tensor → list of Python floats (the per-step coefficient tables)."""
        return [float(v) for v in values.to(torch.float64).cpu()]

    def scales_and_sigmas(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, σ) on a grid, float64, finite also at a zero-terminal-SNR t = 1 (module unisde.schedule)."""
        from unisde.parameterizations import schedule_coefficients

        return schedule_coefficients(self.schedule, times)

    @staticmethod
    def noise_like(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise drawn exactly as diffusers' schedulers draw it (same generator stream)."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

    def eta_value(self, eta: float | None, default_key: str = "eta") -> float:
        """The stochasticity to use: the sampler option when the user set it, else a pipeline's ``eta``."""
        if default_key in self.user_options or eta is None:
            return float(self.opts[default_key])
        return float(eta)

    @property
    def final_time(self) -> float:
        return self.grid[-1] if self.grid else 0.0


def lincomb(x: torch.Tensor, cx: float, y: torch.Tensor, cy: float) -> torch.Tensor:
    """cx·x + cy·y in at most two passes over memory (the scalars are Python floats: cast once, no transfer)."""
    if cx == 1.0:
        return torch.add(x, y, alpha=cy)
    return (x * cx).add_(y, alpha=cy)  # in place on the fresh product: one allocation, two passes


def pf_ode_derivative(x_ve: torch.Tensor, denoised: torch.Tensor, ve: float) -> torch.Tensor:
    """dx̃/dσ̃ = (x̃ − D)/σ̃: the probability-flow ODE (seed 000 eq. 27) in the VE view x̃ = x/s, σ̃ = σ/s > 0."""
    return lincomb(x_ve, 1.0 / ve, denoised, -1.0 / ve)


def grid_coefficients(sampler: Sampler, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, σ) along a grid; an end point at t = 0 is the clean data (s = 1, σ = 0) whatever σ(0) is, so that
    VE/EDM schedules with σ(0) = σ_min > 0 still finish on the denoised sample (EDM Algorithm 2's t_N = 0)."""
    s, sigma = sampler.scales_and_sigmas(grid)
    if float(grid[-1]) == 0.0:
        s, sigma = s.clone(), sigma.clone()
        s[-1], sigma[-1] = 1.0, 0.0
    return s, sigma
