r"""The Sampler base class: a time grid plus one loop, written once against the schedule and the denoiser.

A sampler never sees a model type. It is written like the algorithm in its paper (or k-diffusion's
``sample_heun``): one loop over its evaluation times that asks for the denoised estimate x̂0 = D(x, t) by
yielding the sample to evaluate, and returns the final sample::

    def loop(self, x, start=0):
        for i in range(start, len(self.a)):
            x, denoised = yield x                # D(x; t_i), evaluated by whoever drives the loop
            x = lincomb(x, self.a[i], denoised, self.b[i])
        return x

Samples are always in the model's own space x = s x0 + σ ε, so plain pipelines work with every sampler. The
``yield`` hands back the sample as it was actually evaluated (a pipeline may have edited it between steps,
inpainting does) together with D at it. One driver runs every loop: :class:`unisde.UnifiedScheduler` (the
diffusers ``step()`` API, one ``send`` per model call, with entry mid-grid for img2img) and
:func:`unisde.sample` (the functional API); the two give identical answers.

Life cycle:

1. ``Sampler(schedule, **options)`` validates the options.
2. ``prepare(grid)`` receives the decreasing time grid t_0 > t_1 > … > t_n (t_n is where sampling ends,
   usually 0 = clean data), precomputes every per-step coefficient in float64 as Python floats (multiplying a
   tensor by a Python float casts once to the sample's dtype and needs no device transfer) and returns the
   time of every model evaluation, in order. A solver needing several evaluations per step (Heun, Langevin
   correctors) lists each of them, as diffusers' Heun lists its timesteps twice.
3. ``loop(x, start)`` runs from evaluation ``start`` (0, or where an img2img pipeline enters the grid; a
   multistep method then builds its history up again from there). During a ``send`` the driver also sets
   :attr:`generator`, :attr:`pipeline_eta`, :attr:`raw_denoised` (x̂0 before clipping), :attr:`extra` (extra
   output channels, e.g. a learned variance) and :attr:`model_eps` (the model's own output where it predicts ε
   and x̂0 was made from it unchanged, else None: ε̂ = (x − s x̂0)/σ to rounding, without the pass that forms it;
   the caller's tensor, never to be written to), and :meth:`noise_like` draws from the current generator (or the
   ``noise_sampler`` the functional API was given). A sampler with ``needs_uncond = True`` (the CFG++ samplers,
   :mod:`unisde.samplers.cfg_pp`) receives the guided x̂0 as ``denoised`` and reads the unconditional one from
   :attr:`uncond_denoised` (:meth:`Sampler.unconditional`), which only :func:`unisde.sample` sets.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generator

import torch

from unisde._tensor import closest, scaled, scaled_
from unisde.core.kernels import (  # noqa: F401
    grid_coefficients,
    lincomb,
    pf_ode_derivative,
    resolve_view,
    schedule_coefficients,
    view_coefficients,
    view_times,
)
from unisde.core.schedule import NoiseSchedule


def prescaled_draw_is_exact(like: torch.Tensor, generator) -> bool:
    """Whether ``torch.empty(...).normal_(0, std, generator=generator)`` shaped like ``like`` equals diffusers'
    ``randn_tensor(like.shape, generator, like.device, like.dtype) · std`` bitwise, generator state after included:
    on the CPU, torch's Box–Muller fill writes r·cos θ · std + 0 with one rounding of the product (blocks of 16
    values, float32 or float64), where ``randn`` writes r·cos θ and the multiplication then rounds the same product
    once. Not for float32 draws of < 16 elements (drawn in float64, then rounded), half precision (r·cos θ rounded
    to half before the product) or accelerators (unchecked); tests/test_samplers_noise.py checks it on the
    installed torch."""
    one_cpu_stream = generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu")
    if not (like.is_cpu and one_cpu_stream):
        return False
    return like.dtype == torch.float64 or (like.dtype == torch.float32 and like.numel() >= 16)


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

    def validate(self, owner: str, name: str, value):
        """The value, checked (ints accepted for floats); ``owner`` names what it belongs to in errors."""
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(
                    f"{owner}: option {name}={value!r} is not one of "
                    f"{list(self.choices)}.{closest(str(value), map(str, self.choices))}"
                )
            return value
        if isinstance(value, bool) and bool not in self.types:
            raise ValueError(f"{owner}: option {name} must be {_type_names(self.types)}, got {value!r} (bool)")
        if not isinstance(value, self.types):
            if float in self.types and isinstance(value, int):
                value = float(value)
            else:
                raise ValueError(
                    f"{owner}: option {name} must be {_type_names(self.types)}, got {value!r} ({type(value).__name__})"
                )
        if isinstance(value, float) and not math.isfinite(value) and value != self.default:
            # NaN never; ±inf only where it is the default (edm's s_tmax = inf: "no upper bound")
            raise ValueError(f"{owner}: option {name}={value!r} is invalid: must be a finite number")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ValueError(f"{owner}: option {name}={value!r} is invalid: {problem}")
        return value


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in types)


def non_negative(value):
    return None if value >= 0 else "must be >= 0"


def positive(value):
    return None if value > 0 else "must be > 0"


def unit_interval(value):
    return None if 0 <= value <= 1 else "must lie in [0, 1]"


def view_option(default: str = "auto") -> Option:
    """The ``view`` option of the samplers that solve the PF-ODE dy/dℓ = (y − D)/ℓ in a view y = x/c, ℓ = σ/c
    (:func:`unisde.core.kernels.view_coefficients`)."""
    return Option(
        default,
        (str,),
        "the ODE's variables: ve (x/s against σ̃ = σ/s, EDM), flow (x/(s + σ) against τ = σ/(s + σ), finite at "
        "s = 0) or auto (flow where the schedule reaches zero SNR at t = 1, e.g. rectified flow; else ve)",
        choices=("auto", "ve", "flow"),
    )


class Sampler(abc.ABC):
    """Base class of every sampler plugin.

    Class attributes
    ----------------
    name: the registered name; aliases: other names it answers to.
    options: ``{option name: Option}``; unknown options are a ValueError listing these.
    order: how many model evaluations a full step takes (diffusers' ``order``).
    default_grid: the time grid used when the user does not choose one: ``"config"`` (the diffusers config's
        ``timestep_spacing``), or a registered grid name (``unisde.grids``).
    stochastic: whether the loop draws noise (so a generator matters).
    reads_raw_denoised: whether the loop reads :attr:`raw_denoised` (x̂0 before clipping; DDIM's ε̂ does). False
        lets a driver clip x̂0 in place, one sample-sized buffer less per step; True (the default) is always safe.
    takes_zero_length_end: whether ``prepare`` takes a grid whose last step has length 0 (t_n = t_{n−1}) and the loop
        then keeps the sample over it (finite weights, no division by the step): the grid of
        ``final_sigmas_type="repeat_last"`` (diffusers' DEIS and SA-Solver on flow σ).
    needs_uncond: whether the loop needs the unconditional x̂0 as well as the guided one (CFG++, Chung et al. 2024
        [CFGpp]): the driver then sets :attr:`uncond_denoised` at every evaluation. Only :func:`unisde.sample` (a
        denoiser or model returning the pair) does; :class:`unisde.UnifiedScheduler` refuses such a sampler (diffusers
        pipelines combine the guidance themselves and pass only the guided output), and ``list_samplers()`` leaves
        it out (``unisde.plugins.list_guided_samplers()`` lists it).

    Instance attribute set by ``prepare`` where it applies
    -------------------------------------------------------
    affine_steps: ``[(c_x, c_D), …]`` per model evaluation when every step is exactly x' = c_x·x + c_D·x̂0 — one
        evaluation, no noise, nothing remembered (DDIM with η = 0, Euler); else None. A driver that does not need
        x̂0 itself may then form x' from the raw model output in one pass (UnifiedScheduler with
        ``return_pred_original_sample=False``) instead of running :meth:`loop`; both give the same sample.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Option]] = {}
    order: ClassVar[int] = 1
    default_grid: ClassVar[str] = "config"
    stochastic: ClassVar[bool] = False
    reads_raw_denoised: ClassVar[bool] = True
    takes_zero_length_end: ClassVar[bool] = False
    needs_uncond: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, schedule: NoiseSchedule, **options):
        self.schedule = schedule
        self.user_options = dict(options)
        self.opts = self.validate_options(options)
        self.grid: list[float] = []
        self.generator: torch.Generator | None = None
        self.noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.pipeline_eta: float | None = None
        self.raw_denoised: torch.Tensor | None = None
        self.extra: torch.Tensor | None = None
        self.model_eps: torch.Tensor | None = None
        self.uncond_denoised: torch.Tensor | None = None
        self.affine_steps: list[tuple[float, float]] | None = None
        # set by ``prepare`` where the first model evaluation is not at the grid's first time (the fitted sampler's
        # evaluation_times): the time the starting noise belongs to, which drivers scale it for
        self.start_time: float | None = None

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
            out[key] = spec.validate(f"sampler {cls.name!r}", key, options[key]) if key in options else spec.default
        return out

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def prepare(self, grid: torch.Tensor) -> torch.Tensor:
        """Precompute coefficients for the decreasing float64 grid (n + 1 times); return evaluation times."""

    @abc.abstractmethod
    def loop(self, x: torch.Tensor, start: int = 0) -> Generator[torch.Tensor, tuple, torch.Tensor]:
        """The algorithm: yield each sample to evaluate, receive ``(x, denoised)``, return the final sample."""

    def noise_time(self, first_evaluation: float) -> float:
        """The time whose marginal the starting noise is drawn at (drivers scale it by that time's √(s² + σ²)): the
        first evaluation time ``first_evaluation``, or :attr:`start_time` where ``prepare`` set one."""
        return float(first_evaluation) if self.start_time is None else self.start_time

    # ------------------------------------------------------------------ helpers for subclasses
    def floats(self, values: torch.Tensor) -> list[float]:
        """float64 tensor → list of Python floats (the per-step coefficient tables)."""
        return [float(v) for v in values.to(torch.float64).cpu()]

    def scales_and_sigmas(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, σ) on a grid, float64, finite also at a zero-terminal-SNR t = 1."""
        return schedule_coefficients(self.schedule, times)

    def grid_coefficients(self, grid: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, σ) along the grid with a t = 0 end point meaning clean data; ``exact`` keeps s(1) = 0
        (:func:`unisde.core.kernels.grid_coefficients`)."""
        return grid_coefficients(self.schedule, grid, exact)

    @property
    def view(self) -> str:
        """The view the ``view`` option resolves to on this schedule (``"ve"`` for samplers without the option)."""
        return resolve_view(self.schedule, self.opts.get("view", "ve"))

    def view_coefficients(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, ℓ) of :attr:`view` along the grid, float64, with a t = 0 end point meaning clean data
        (:func:`unisde.core.kernels.view_coefficients`)."""
        return view_coefficients(self.schedule, grid, self.view)

    def view_times(self, levels: torch.Tensor) -> torch.Tensor:
        """The times of noise levels ℓ > 0 of :attr:`view` (a solver's intermediate stages)."""
        return view_times(self.schedule, levels, self.view)

    def noise_like(self, sample: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise shaped like ``sample``: from the functional API's ``noise_sampler`` when given,
        else drawn exactly as diffusers' schedulers draw it (same generator stream)."""
        if self.noise_sampler is not None:
            return self.noise_sampler(sample)
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(
            sample.shape, generator=generator or self.generator, device=sample.device, dtype=sample.dtype
        )

    def scaled_noise_like(self, like: torch.Tensor, std: float) -> torch.Tensor:
        """std·z for a fresh standard normal draw z shaped like ``like`` (:meth:`noise_like`), as a new tensor the
        caller owns (a caller's noise, the functional API's ``noise_sampler``, is never written to).

        Where :func:`prescaled_draw_is_exact` holds (a CPU draw in float32 of ≥ 16 elements or in float64, from one
        CPU generator or the default one) it is drawn already scaled, ``normal_(0, std)``: the same generator stream
        and bitwise the same values as diffusers' ``randn_tensor`` followed by ``· std``, without the pass over the
        sample and ``randn_tensor``'s Python. Elsewhere (half precision, fewer elements, a list of generators, an
        accelerator) the draw is scaled after it, as diffusers scales it."""
        generator = self.generator
        if self.noise_sampler is None and std >= 0.0 and prescaled_draw_is_exact(like, generator):
            return torch.empty(like.shape, dtype=like.dtype, device=like.device).normal_(0.0, std, generator=generator)
        z = self.noise_like(like)
        return scaled_(z, std) if self.noise_sampler is None else scaled(z, std)

    def noised(self, like: torch.Tensor, std: float, *terms) -> torch.Tensor:
        """std·z + Σ c·y over ``terms`` ((y, c) pairs, c a Python float) for a fresh standard normal draw z shaped
        like ``like``: an ancestral step's next sample, formed in the buffer of :meth:`scaled_noise_like` (one
        sample-sized allocation per step, the draw's, where a combination followed by an added draw takes two)."""
        out = self.scaled_noise_like(like, std)
        for y, c in terms:
            out.add_(y, alpha=c)
        return out

    def eta_value(self, default_key: str = "eta") -> float:
        """The stochasticity to use: the sampler option when the user set it, else a pipeline's ``eta``."""
        if default_key in self.user_options or self.pipeline_eta is None:
            return float(self.opts[default_key])
        return float(self.pipeline_eta)

    def unconditional(self, denoised: torch.Tensor) -> torch.Tensor:
        """The x̂0 a step runs on: for a CFG++ sampler (``needs_uncond``) the unconditional x̂0 at the evaluation just
        received (:attr:`uncond_denoised`), for every other sampler ``denoised`` itself (the same object, so a base
        loop written with this call is unchanged). A ValueError where a driver did not set it: only
        :func:`unisde.sample` / :func:`unisde.sampling.run_loop` pass the pair."""
        if not self.needs_uncond:
            return denoised
        if self.uncond_denoised is None:
            raise ValueError(
                f"sampler {self.name!r} needs the unconditional x̂0 as well as the guided one (CFG++), and the code "
                "driving its loop did not provide it; run it with unisde.sample(..., denoiser=lambda x, t: (guided, "
                "unconditional)) or unisde.sampling.run_loop with a denoise(x, k) returning that pair"
            )
        return self.uncond_denoised

    @staticmethod
    def add_guidance(x: torch.Tensor, denoised: torch.Tensor, uncond: torch.Tensor, weight: float) -> torch.Tensor:
        """x + weight·(D − U) in place on ``x`` (a fresh buffer of the loop): the guidance term of a CFG++ step whose
        base update ran on the unconditional x̂0 U (:mod:`unisde.samplers.cfg_pp`); nothing when U is D itself."""
        if uncond is denoised or weight == 0.0:
            return x
        return x.add_(denoised, alpha=weight).add_(uncond, alpha=-weight)

    def entry_step(self, start: int) -> int:
        """The step whose first model evaluation is evaluation number ``start`` (a loop can only be entered at
        the start of a step). Samplers with several evaluations per step list ``step_starts`` ({evaluation: step})
        in ``prepare``; for the others evaluation k is step k."""
        starts = getattr(self, "step_starts", None)
        if starts is None:
            return start
        if start not in starts:
            raise ValueError(
                f"sampler {self.name!r} cannot start at model evaluation {start}: it is not the first "
                f"evaluation of a step (steps start at evaluations {sorted(starts)[:8]} …)"
            )
        return starts[start]

    @property
    def final_time(self) -> float:
        return self.grid[-1] if self.grid else 0.0
