r"""Optimised time grids: the evaluation times that minimise a sampler's error at a given NFE (issue 12).

Given a model (a pipeline folder or object, a raw network with its schedule and parameterisation, or an exact
denoiser), a deterministic sampler and an NFE budget, :func:`optimize_grid` finds the n evaluation times
t_0 = t_max > t_1 > … > t_{n−1} (the end point is the sampler's usual one, t = 0 unless the scheduler config ends
elsewhere) that minimise the error of the sampler's final sample against a reference solution of the same
probability-flow ODE from the same starting noise, on a small calibration batch; a second batch that the grid
never saw scores it (held-out error).

Method (GITS: Chen et al. 2024, "On the trajectory regularity of ODE-based diffusion sampling", §4 [GITS]):

1. **Reference.** The PF-ODE dx̃/dσ̃ = (x̃ − D)/σ̃ is solved by the ``ode`` sampler with classical RK4 on a fine
   grid through every candidate time (``candidates`` times uniform in log-SNR λ between t_max and the schedule's
   smallest time, snapped to the training indices on a table; ``reference_substeps`` RK4 steps between two
   candidates), from x_{t_max} = z √(s² + σ²). The same solve with every other grid point (twice the step)
   must agree with it: the RMS difference of the end points, relative to their RMS, must be at most
   ``reference_rtol`` (default 10⁻²; for a smooth denoiser RK4's own error is then ≈ 1/16 of that). With
   ``reference_substeps="auto"`` (the default) the steps per interval double, 1, 2, 4, 8, until the test passes
   (each finer solve's halved twin is the previous one); when it never does, a ValueError says that the
   reference does not converge.
2. **Dynamic programming.** The cost of a step from candidate i to candidate j > i is the error of *one step of
   the sampler itself* (its own ``prepare`` and ``loop`` on the two-point grid [t_i, t_j]) started from the
   reference x_ref(t_i), measured against x_ref(t_j): the mean over the calibration batch of the per-sample RMS.
   A single-evaluation sampler's first evaluation at (x_ref(t_i), t_i) is the reference's own first RK4 stage,
   so its costs need no model call; a sampler with several evaluations per step (Heun, RK) evaluates its inner
   stages, batched over all j. The cheapest path of exactly n steps from t_max to the end point is found by DP
   over the (candidates + 1)² costs. A multistep sampler (DEIS, DPM-Solver++, UniPC, iPNDM, LMS, PNDM) started
   on a two-point grid takes its first-order warm-up step, so the DP optimises its *first-order base*; step 3
   then optimises its full error.
3. **Coordinate descent** (``refine=True``, the default) on the full sampler's error: each interior time moves
   by ±δ in normalised λ (δ halving from 4/candidates to 1/(4·candidates), snapped to training indices on a
   table), all 2(n − 1) trial grids evaluated together; a move counts as improving only when it lowers the mean
   error of the calibration batch *and of each of its halves* (a guard against fitting a few starts), and the
   improving moves are kept (all of them when their combination still improves, else the best one). The local
   costs of step 2 ignore how an early error is amplified or damped later, and a multistep method's history;
   this step sees both.
4. **Weights** (``fit_weights=True``): the multistep sampler ``fitted`` (:mod:`unisde.samplers.fitted`, iPNDM's step
   with one row of derivative weights per step, each summing to 1) takes the weights that minimise the squared
   error of the final sample against the reference over the calibration batch, by Levenberg–Marquardt (Marquardt
   1963 [LM]) from the best of Euler's rows and those of ``sampler`` where it is of that family (iPNDM, gradient
   estimation: then it starts from ``sampler``'s very steps and cannot end worse on the calibration batch); with
   ``weights_rounds`` > 1 the times are descended again (step 3) for the weights and the weights refitted. Fitting
   a solver's coefficients to the model, not only its steps, follows Bespoke solvers (Shaul et al. 2024
   [Bespoke]) and S4S (Frankel et al. 2025 [S4S]). With ``fit_corrector=True`` the rows of ``fitted``'s corrector
   (UniPC's free correction with fitted weights, as S4S fits a predictor–corrector pair) are fitted with them,
   from no correction and from the trapezoidal rule.

The NFE is counted by preparing the sampler on a real grid: n is the largest number of grid times whose
evaluations (``len(sampler.prepare(grid))``: Heun's last step to t = 0 is Euler, RK4 takes 4 per step) fit in the
budget; the minimum NFE is that of the smallest grid with a free time (n = 2): 2 for DDIM, 3 for EDM's Heun, 5 for
RK4. The comparison ("before") is the sampler's default grid at the same n — the pipeline's configured grid for
a pipeline — run from its own first time with the same noise z scaled as a pipeline scales it (so a grid that
starts late, like diffusers' ``leading`` spacing, pays for its start too).

Why DP + coordinate descent rather than gradient descent through a differentiable sampler (DMN-style): every
registered sampler runs unchanged through its own loop (unisde's samplers precompute their coefficients as Python
floats, so they are not differentiable in the times), the DP's global optimum over the candidate lattice needs no
initialisation or learning rate, and on the exact Gaussian, where a hand-written differentiable DDIM can be
optimised by Adam, DP + coordinate descent reaches the same error (the measurements are in ``docs/grids.md``).

The result (:class:`OptimizedGrid`) is stored as the registered grid ``optimized`` with option ``times``:
``UnifiedScheduler(time_grid="optimized", time_grid_options={"times": [...]})``, so ``save_pretrained`` carries it
and ``from_pretrained`` reuses it; :meth:`OptimizedGrid.save` writes it into a pipeline folder (scheduler config,
model index and a model-card section, each file replaced atomically). ``unisde grid optimize`` is the command line.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from unisde._tensor import DTYPE
from unisde.core.schedule import NoiseSchedule
from unisde.grids import Grid, default_time_range
from unisde.parameterizations.base import fed_timesteps
from unisde.plugins import hookimpl
from unisde.samplers.base import Option

GRID_NAME = "optimized"
WEIGHTS_SAMPLER = "fitted"  # the sampler whose weights fit_weights fits (unisde.samplers.fitted)
CARD_BEGIN = "<!-- unisde-grid:begin -->"
CARD_END = "<!-- unisde-grid:end -->"


# ---------------------------------------------------------------------------------------------- the grid plugin
def _check_times(value) -> str | None:
    if value is None:
        return None
    values = list(value)
    if not values:
        return "must be a non-empty list of evaluation times"
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"every time must be a finite number, got {v!r}"
        if not 0.0 < v <= 1.0:
            return f"every time must lie in (0, 1], got {v!r}"
    for i in range(len(values) - 1):
        if not values[i] > values[i + 1]:
            return f"times must be strictly decreasing; entry {i} ({values[i]!r}) is followed by {values[i + 1]!r}"
    return None


def _optimized_times(schedule: NoiseSchedule, n: int, times=None) -> torch.Tensor:
    """The stored evaluation times (n of them; n must equal their number)."""
    if times is None:
        raise ValueError(
            "time grid 'optimized' needs its option times (the list of evaluation times, decreasing in "
            "(0, 1]); `unisde grid optimize` writes it"
        )
    if n != len(times):
        raise ValueError(
            f"time grid 'optimized' stores {len(times)} evaluation times, but {n} inference steps were "
            f"asked for; call set_timesteps({len(times)}) (or optimise a grid for {n} steps)"
        )
    return torch.tensor([float(v) for v in times], dtype=DTYPE)


OPTIMIZED = Grid(
    GRID_NAME,
    _optimized_times,
    {
        "times": Option(
            None,
            (list, tuple, type(None)),
            "the evaluation times, strictly decreasing in (0, 1] (written by unisde grid optimize)",
            _check_times,
        ),
    },
    "stored evaluation times, e.g. optimised for a sampler and NFE (unisde grid optimize; GITS, Chen et al. 2024)",
)


@hookimpl
def unisde_register_grids(register):
    register(OPTIMIZED)


# ---------------------------------------------------------------------------------------------- the target
class _DrawsNoise(Exception):
    pass


def _forbid_noise(x):
    raise _DrawsNoise


@dataclass
class _Target:
    """What the optimiser evaluates: ``denoise(x, t) -> (x̂0, raw x̂0)`` with t a (B,) float64 tensor of times."""

    denoise: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    schedule: NoiseSchedule
    shape: tuple
    dtype: torch.dtype
    device: Any
    baseline_kind: str
    baseline_options: dict
    init_noise: str = "marginal"
    parameterization: Any = None
    pipeline: Any = None
    scheduler_config: dict | None = None
    label: str = ""
    max_batch: int = 512
    scheduler: Any = None  # a pipeline's UnifiedScheduler (with the sampler): the baseline grids come from it

    def baseline(self, n: int) -> tuple[torch.Tensor, int | None]:
        """The baseline grid with n grid times (end point included) and, for a pipeline, its evaluation count —
        from the pipeline's own ``set_timesteps``, so the end point and its rules are the scheduler's."""
        if self.scheduler is not None:
            self.scheduler.set_timesteps(n)
            return torch.tensor(self.scheduler._sampler.grid, dtype=DTYPE), len(self.scheduler.timesteps)
        from unisde.grids import make_grid

        return make_grid(self.schedule, n, self.baseline_kind, **self.baseline_options), None

    def start_scale(self, t: float) -> float:
        s, sigma = float(self.schedule.s(t)), float(self.schedule.sigma(t))
        if self.init_noise == "unit":
            return 1.0
        if self.init_noise == "sigma":
            return sigma
        return math.sqrt(s * s + sigma * sigma)

    def __call__(self, x: torch.Tensor, t: torch.Tensor):
        if x.shape[0] <= self.max_batch:
            return self.denoise(x, t)
        parts = [self.denoise(xc, tc) for xc, tc in zip(x.split(self.max_batch), t.split(self.max_batch))]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).to(x.device).reshape((-1,) + (1,) * (x.ndim - 1))


def _model_denoiser(model, schedule, param, postprocess=None, rounding=None):
    """x̂0 of a raw network ``model(c_in x, timestep)`` at per-sample times (as ``unisde.sample`` feeds it)."""

    def denoise(x, t):
        a, b = param.coefficients(schedule, t)
        c_in = param.input_scale(schedule, t)
        model_t = param.model_time(schedule, t)
        model_t = fed_timesteps(model_t, schedule, rounding)
        with torch.no_grad():
            out = model(x * _per_sample(c_in, x), model_t.to(x.device))
        out = getattr(out, "sample", out)
        if isinstance(out, tuple):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the model returned {type(out).__name__}, not a tensor")
        if (
            out.shape != x.shape
            and out.ndim == x.ndim
            and out.shape[0] == x.shape[0]
            and out.shape[1] == 2 * x.shape[1]
            and out.shape[2:] == x.shape[2:]
        ):
            out = out[:, : x.shape[1]]  # a learned variance in the extra channels
        if out.shape != x.shape:
            raise ValueError(
                f"the model's output has shape {tuple(out.shape)} but the sample has shape "
                f"{tuple(x.shape)}; the model does not fit this sample shape"
            )
        raw = x * _per_sample(a, x) + out.to(x.dtype) * _per_sample(b, x)
        return (raw if postprocess is None else postprocess(raw)), raw

    return denoise


def _function_denoiser(fn):
    def denoise(x, t):
        with torch.no_grad():
            out = fn(x, t)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the denoiser's output has shape {shape} but the sample has shape {tuple(x.shape)}")
        out = out.to(x.dtype)
        return out, out

    return denoise


def _unified(pipe_scheduler_config: dict, sampler: str, sampler_options: dict | None, **overrides):
    from unisde.diffusers.scheduler import UnifiedScheduler

    cfg = dict(pipe_scheduler_config)
    own = cfg.get("_class_name") == "UnifiedScheduler" or "sampler" in cfg
    if sampler_options is None:
        sampler_options = dict(cfg.get("sampler_options") or {}) if own and cfg.get("sampler") == sampler else {}
    return UnifiedScheduler.from_config(cfg, sampler=sampler, sampler_options=sampler_options, **overrides)


def _pipeline_target(pipe, sampler, sampler_options, device, baseline_grid, baseline_options):
    """Target of a diffusers pipeline with a UNet (any scheduler: converted to UnifiedScheduler)."""
    unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if unet is None or getattr(pipe, "scheduler", None) is None:
        raise ValueError(
            f"{type(pipe).__name__} has no unet and scheduler; grid optimisation needs an "
            "unconditional pipeline (UNet + scheduler) or a model with schedule and parameterization"
        )
    cfg = dict(pipe.scheduler.config)
    overrides = {}
    if cfg.get("time_grid") == GRID_NAME:  # re-optimising: compare against the config's own spacing
        overrides = {"time_grid": None, "time_grid_options": None}
    if baseline_grid is not None:
        overrides = {"time_grid": baseline_grid, "time_grid_options": dict(baseline_options or {})}
    elif baseline_options:
        overrides["time_grid_options"] = {**(cfg.get("time_grid_options") or {}), **baseline_options}
    scheduler = _unified(cfg, sampler, sampler_options, **overrides)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(unet.config.in_channels),) + size
    dtype = next(unet.parameters()).dtype if any(True for _ in unet.parameters()) else torch.float32
    if device is not None:
        unet = unet.to(device)
    post = scheduler._postprocess if (scheduler._clip is not None or scheduler._threshold is not None) else None
    denoise = _model_denoiser(
        unet, scheduler.noise_schedule, scheduler.parameterization, post, scheduler.config.get("timestep_rounding")
    )
    return _Target(
        denoise,
        scheduler.noise_schedule,
        shape,
        dtype,
        device or unet.device,
        scheduler._grid_kind(),
        {},
        scheduler.config.init_noise,
        scheduler.parameterization,
        pipe,
        dict(pipe.scheduler.config),
        type(pipe).__name__,
        scheduler=scheduler,
    )


def _make_target(
    model,
    *,
    denoiser,
    schedule,
    parameterization,
    shape,
    sampler,
    sampler_options,
    device,
    baseline_grid,
    baseline_options,
):
    from unisde.analytic import _Analytic
    from unisde.plugins import get_parameterization, get_sampler

    if isinstance(model, (str, os.PathLike)):
        from unisde.diffusers.pipeline import load_pipeline

        path = os.fspath(model)
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ValueError(f"{path!r} is not a pipeline folder: it has no model_index.json")
        model = load_pipeline(path)
    if model is not None and hasattr(model, "scheduler") and hasattr(model, "components"):
        target = _pipeline_target(model, sampler, sampler_options, device, baseline_grid, baseline_options)
    else:
        if (model is None) == (denoiser is None):
            raise ValueError(
                "pass exactly one of model (a pipeline folder or object, a network, or an exact "
                "distribution from unisde.analytic) and denoiser"
            )
        if schedule is None:
            raise ValueError("a model or denoiser needs its schedule (a name, a dict or a NoiseSchedule)")
        sched = schedule if isinstance(schedule, NoiseSchedule) else NoiseSchedule.from_config(schedule)
        param, max_batch = None, 512
        if isinstance(model, _Analytic):
            dist = model
            fast = _fast_schedule(sched)
            denoise = _function_denoiser(lambda x, t: dist.denoise(x, t, fast))
            shape = tuple(shape or dist.event_shape)
            if tuple(shape) != tuple(dist.event_shape):
                raise ValueError(
                    f"shape {tuple(shape)} does not match the distribution's event shape {tuple(dist.event_shape)}"
                )
            dtype = DTYPE
            # an exact denoiser's cost is mostly fixed per call: evaluate whole rounds at once (≈ 8 MiB per row block)
            max_batch = max(512, 2**20 // max(1, dist.dim))
        elif denoiser is not None:
            if shape is None:
                raise ValueError("a denoiser needs the sample shape (shape=(C, H, W) or (d,))")
            denoise, dtype = _function_denoiser(denoiser), DTYPE
        else:
            if parameterization is None or shape is None:
                raise ValueError("a network needs its parameterization and the sample shape (shape=...)")
            param = get_parameterization(parameterization)
            denoise = _model_denoiser(model, sched, param)
            params = list(model.parameters()) if hasattr(model, "parameters") else []
            dtype = params[0].dtype if params else torch.float32
        smp = get_sampler(sampler)(sched, **(sampler_options or {}))
        kind = smp.default_grid if smp.default_grid != "config" else "leading"
        target = _Target(
            denoise,
            sched,
            tuple(int(v) for v in shape),
            dtype,
            device or "cpu",
            kind,
            {},
            parameterization=param,
            label=type(model).__name__ if model is not None else "denoiser",
            max_batch=max_batch,
        )
        if baseline_grid is not None:
            from unisde.plugins import get_grid

            get_grid(baseline_grid)
            target.baseline_kind, target.baseline_options = baseline_grid, dict(baseline_options or {})
        elif baseline_options:
            target.baseline_options = {**target.baseline_options, **baseline_options}
    if target.baseline_kind == GRID_NAME:
        raise ValueError(
            "the baseline grid must be a spacing rule, not the stored 'optimized' grid; pass "
            "baseline_grid=... (e.g. 'leading', 'karras')"
        )
    return target


# ---------------------------------------------------------------------------------------------- driving loops
def _drive(loops, target: _Target, first=None, record=None, counter=None):
    """Run several sampler loops to completion together, batching every round of model evaluations into one call.

    ``loops``: list of (sampler, x, eval_times); ``first`` = (x, D, raw) known at every loop's evaluation 0 (no
    model call there when the loop asks for exactly that x); ``record(loop, k, x, D)`` after each evaluation.
    Returns the final samples. A loop that draws noise raises ValueError (the optimiser needs a deterministic one).
    """
    gens, xs, ks, finals = [], [], [], [None] * len(loops)
    for smp, x, _ in loops:
        smp.noise_sampler, smp.generator = _forbid_noise, None
        g = smp.loop(x, 0)
        gens.append(g)
        xs.append(next(g))
        ks.append(0)
    active = list(range(len(loops)))
    try:
        while active:
            need, cached = [], {}
            for m in active:
                if (
                    first is not None
                    and ks[m] == 0
                    and abs(float(loops[m][2][0]) - float(first[3])) < 1e-12
                    and (xs[m] is first[0] or torch.equal(xs[m], first[0]))
                ):
                    cached[m] = (first[1], first[2])
                else:
                    need.append(m)
            if need:
                x_all = torch.cat([xs[m] for m in need])
                t_all = torch.cat([torch.full((xs[m].shape[0],), float(loops[m][2][ks[m]]), dtype=DTYPE) for m in need])
                d_all, r_all = target(x_all, t_all)
                if counter is not None:
                    counter[0] += x_all.shape[0]
                off = 0
                for m in need:
                    b = xs[m].shape[0]
                    cached[m] = (d_all[off : off + b], r_all[off : off + b])
                    off += b
            still = []
            for m in active:
                d, r = cached[m]
                if record is not None:
                    record(m, ks[m], xs[m], d, r)
                smp = loops[m][0]
                smp.raw_denoised = r
                try:
                    xs[m] = gens[m].send((xs[m], d))
                    ks[m] += 1
                    still.append(m)
                except StopIteration as done:
                    finals[m] = done.value
            active = still
    except _DrawsNoise:
        raise ValueError(
            f"sampler {loops[0][0].name!r} draws noise with these options; grid optimisation needs a "
            "deterministic sampler (an ODE solver, or e.g. ddim with eta=0)"
        ) from None
    return finals


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square difference, float64 (B,)."""
    d = (a.to(DTYPE) - b.to(DTYPE)).reshape(a.shape[0], -1)
    return d.pow(2).mean(1).sqrt()


# ---------------------------------------------------------------------------------------------- the optimiser
@dataclass
class OptimizedGrid:
    """An optimised grid and how well it does. Errors summarise over a batch (``objective``: their mean, or with
    ``"rms"`` their root mean square) the per-sample RMS difference between the sampler's final sample and the
    reference solution (in data units)."""

    times: list
    sampler: str
    sampler_options: dict
    nfe: int
    calibration_error: float
    holdout_error: float
    baseline_grid: str
    baseline_times: list
    baseline_calibration_error: float
    baseline_holdout_error: float
    dp_calibration_error: float
    dp_holdout_error: float
    calibration: int
    holdout: int
    seed: int
    candidates: int
    reference: dict
    model_timesteps: list = field(default_factory=list)
    final_time: float = 0.0
    model_evaluations: int = 0
    method: str = "dp+cd"
    objective: str = "mean"  # how per-sample errors are summarised (optimize_grid's objective)
    start: str = "dp"  # where the coordinate descent started: the DP path, "baseline" or a named grid
    # with fit_weights: the sampler whose grid was fitted first, its times and errors there, the weight fit's
    # Levenberg–Marquardt iterations, rounds and seconds ({"sampler", "sampler_options", "times",
    # "calibration_error", "holdout_error", "iterations", "rounds", "seconds"})
    weights_base: dict | None = None

    @property
    def steps(self) -> int:
        return len(self.times)

    def base(self) -> "OptimizedGrid":
        """With fitted weights: the grid fitted for ``weights_base``'s sampler before them, as its own result (the
        same reference, baseline and DP errors); without: this result."""
        wb = self.weights_base
        if wb is None:
            return self
        return replace(
            self,
            times=list(wb["times"]),
            sampler=wb["sampler"],
            sampler_options=dict(wb["sampler_options"]),
            calibration_error=wb["calibration_error"],
            holdout_error=wb["holdout_error"],
            method=self.method.replace("+weights", "").replace("+corrector", "").replace("+evaluation_times", ""),
            weights_base=None,
        )

    def _error_name(self) -> str:
        return "mean per-sample RMS" if self.objective == "mean" else "RMS over the batch of per-sample RMS"

    def _weights_rows(self) -> list:
        """The report row of the sampler whose grid the weights were fitted on (none without weights)."""
        wb = self.weights_base
        if wb is None:
            return []
        return [(f"{wb['sampler']} on its optimised grid", wb["calibration_error"], wb["holdout_error"])]

    def scheduler_kwargs(self) -> dict:
        """The UnifiedScheduler config keys that select this grid (and its sampler)."""
        return {
            "sampler": self.sampler,
            "sampler_options": dict(self.sampler_options),
            "time_grid": GRID_NAME,
            "time_grid_options": {"times": [float(t) for t in self.times]},
        }

    def scheduler(self, config: dict):
        """A UnifiedScheduler from another scheduler's ``config`` with this grid (and sampler) set."""
        from unisde.diffusers.scheduler import UnifiedScheduler

        return UnifiedScheduler.from_config(dict(config), **self.scheduler_kwargs())

    def apply(self, pipe):
        """Give ``pipe`` a UnifiedScheduler that samples on this grid (``pipe(num_inference_steps=self.steps)``);
        returns the pipeline. ``pipe.save_pretrained`` then carries the grid."""
        pipe.scheduler = self.scheduler(pipe.scheduler.config)
        return pipe

    def summary(self) -> str:
        """Plain-text report: the grid and the errors before and after."""
        gain = lambda before, after: f"{before / after:.2f}×" if after > 0 else "∞"  # noqa: E731
        ts = ", ".join(f"{t:.4f}" for t in self.times)
        lines = [
            f"optimised grid for sampler {self.sampler!r} at NFE {self.nfe} ({self.steps} grid times, "
            f"end point t = {self.final_time:g}):",
            f"  times           [{ts}]",
        ]
        if self.model_timesteps:
            lines.append(f"  model timesteps [{', '.join(_fmt_step(v) for v in self.model_timesteps)}]")
        head = f"calibration ({self.calibration})"
        rows = [
            ("default grid", self.baseline_calibration_error, self.baseline_holdout_error),
            ("dynamic programming", self.dp_calibration_error, self.dp_holdout_error),
            *self._weights_rows(),
            (f"optimised ({self.method})", self.calibration_error, self.holdout_error),
        ]
        lines += [
            f"  default grid {self.baseline_grid!r}: [{', '.join(f'{t:.4f}' for t in self.baseline_times)}]",
            f"  error vs reference ({self._error_name()})  {head:>18}  held-out ({self.holdout})",
        ]
        lines += [
            f"    {name:<38}  {cal:>18.5g}  {hold:>{len(f'held-out ({self.holdout})')}.5g}" for name, cal, hold in rows
        ]
        lines += [
            f"  held-out improvement over the default grid: {gain(self.baseline_holdout_error, self.holdout_error)}",
            f"  reference: {self.reference['solver']} with {self.reference['steps']} steps; halving the step "
            f"changes it by {self.reference['halving_change']:.2g} (relative, tolerance "
            f"{self.reference['rtol']:.0e})",
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The model-card section (between the ``unisde-grid`` markers)."""
        ts = ", ".join(f"{t:.6g}" for t in self.times)
        rows = [
            ("default (`%s`)" % self.baseline_grid, self.baseline_calibration_error, self.baseline_holdout_error),
            ("dynamic programming only", self.dp_calibration_error, self.dp_holdout_error),
            *self._weights_rows(),
            (f"**optimised** ({self.method})", self.calibration_error, self.holdout_error),
        ]
        table = "\n".join(f"| {name} | {cal:.5g} | {hold:.5g} |" for name, cal, hold in rows)
        opts = json.dumps(self.sampler_options) if self.sampler_options else "{}"
        steps = ", ".join(_fmt_step(v) for v in self.model_timesteps)
        return (
            f"{CARD_BEGIN}\n## Optimised time grid (measured by `unisde grid optimize`)\n\n"
            f"The scheduler samples with `{self.sampler}` (options `{opts}`) on the stored grid `optimized` at "
            f"**NFE {self.nfe}** ({self.steps} grid times): call the pipeline with "
            f"`num_inference_steps={self.steps}`.\n\n"
            f"- times t: `[{ts}]` (then the end point t = {self.final_time:g})\n"
            + (f"- model timesteps: `[{steps}]`\n" if steps else "")
            + f"- found by dynamic programming over {self.candidates} candidate times (GITS)"
            + (" then coordinate descent on the sampler's full error" if self.method.startswith("dp+cd") else "")
            + (
                f" for `{self.weights_base['sampler']}`, then the weights of the multistep sampler `fitted`"
                + (" and of its corrector" if self.sampler_options.get("corrector") else "")
                + " by least squares (Levenberg–Marquardt)"
                + (
                    ", then the times its evaluations are told (`evaluation_times`) by coordinate descent"
                    if self.sampler_options.get("evaluation_times")
                    else ""
                )
                + (", the times descended again for the weights" if self.weights_base.get("rounds", 1) > 1 else "")
                if self.weights_base
                else ""
            )
            + f", on {self.calibration} calibration starts (seed {self.seed}); scored on {self.holdout} "
            f"held-out starts\n"
            f"- reference: the PF-ODE solved by {self.reference['solver']} in {self.reference['steps']} steps "
            f"(halving the step changes it by {self.reference['halving_change']:.2g}, relative)\n\n"
            f"Error against the reference ({self._error_name()}, data units):\n\n"
            f"| grid at NFE {self.nfe} | calibration | held-out |\n|---|---:|---:|\n{table}\n{CARD_END}\n"
        )

    def save(self, folder: str) -> None:
        """Store the grid in a pipeline folder: ``scheduler/scheduler_config.json`` (a UnifiedScheduler config with
        this sampler and grid), ``model_index.json`` (its scheduler entry) and a ``README.md`` section. Everything
        is prepared and checked first, then each file replaced atomically (temporary file + ``os.replace``)."""
        save_grid(self, folder)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _fmt_step(v: float) -> str:
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.4g}"


def _remembered(fn):
    """``fn`` (an element-wise function of a float64 tensor) remembering its value per distinct element."""
    cache: dict = {}

    def evaluate(t):
        t = torch.as_tensor(t, dtype=DTYPE)
        values, inverse = torch.unique(t.reshape(-1), return_inverse=True)
        keys = values.tolist()
        missing = [k for k in keys if k not in cache]
        if missing:
            cache.update(zip(missing, fn(torch.tensor(missing, dtype=DTYPE)).reshape(-1).tolist()))
        return torch.tensor([cache[k] for k in keys], dtype=DTYPE)[inverse].reshape(t.shape)

    return evaluate


def _fast_schedule(schedule: NoiseSchedule) -> NoiseSchedule:
    """A shallow copy of ``schedule`` whose s(t), σ(t) and ``t_from_log_snr`` (and so ``t_from_sigma``) remember
    their values.

    Samplers evaluate s and σ in ``prepare`` and invert σ̃ → t (EDM's churn level, RK stages); the optimiser
    prepares thousands of two-point grids over the same few candidates, and an exact denoiser evaluates s and σ at
    every call, at a few hundred distinct times: on a table each is a spline lookup (a bisection for the inverse)
    whose fixed cost per call was half of a fit. The values are the schedule's own (every one is element-wise, so
    evaluating the distinct times alone does not change them)."""
    import copy

    fast = copy.copy(schedule)
    original = schedule.t_from_log_snr
    inverse = _remembered(original)

    def t_from_log_snr(lam):
        lam = torch.as_tensor(lam, dtype=DTYPE)
        return inverse(lam) if bool(torch.isfinite(lam).all()) else original(lam)

    fast.t_from_log_snr = t_from_log_snr
    fast._s, fast._sigma = _remembered(schedule._s), _remembered(schedule._sigma)
    return fast


def _steps_for_nfe(target: _Target, schedule: NoiseSchedule, sampler_cls, sampler_options, nfe: int):
    """(n, evaluations(n), baseline grid at n, minimum NFE): the most grid times whose evaluations fit in ``nfe``."""

    def count(n):
        grid, evals = target.baseline(n)
        if evals is None:
            evals = len(sampler_cls(schedule, **sampler_options).prepare(grid))
        return evals, grid

    minimum = count(2)[0]
    if nfe < minimum:
        smp = sampler_cls(schedule, **sampler_options)
        raise ValueError(
            f"nfe={nfe} is below the minimum {minimum} for sampler {smp.name!r} with options "
            f"{sampler_options or {}}: its smallest grid with a time to place (2 grid times) takes "
            f"{minimum} model evaluations (order {getattr(smp, 'order', 1)} per step)"
        )
    n, best = 2, None
    while True:
        try:
            evals, grid = count(n)
        except ValueError:
            break
        if evals > nfe:
            break
        best = (n, evals, grid)
        n += 1
        if n > 10000:
            break
    return best + (minimum,)


def _candidates(target: _Target, count: int, t_max: float, t_min: float) -> torch.Tensor:
    """``count`` times uniform in λ from t_max to t_min (ends exact), snapped to training indices on a table."""
    sched = target.schedule
    lam_hi, lam_lo = float(sched.log_snr(t_max)), float(sched.log_snr(t_min))
    if not (math.isfinite(lam_hi) and math.isfinite(lam_lo)) or lam_lo <= lam_hi:
        times = torch.linspace(t_max, t_min, count, dtype=DTYPE)
    else:
        times = sched.t_from_log_snr(torch.linspace(lam_hi, lam_lo, count, dtype=DTYPE))
        times[0], times[-1] = t_max, t_min
    if sched.is_discrete:
        N = sched.num_train_timesteps
        idx = torch.unique(torch.round(times * N - 1).clamp(round(t_min * N - 1), round(t_max * N - 1)))
        times = ((idx + 1) / N).flip(0).to(DTYPE)
    return times


def _lattice(target: _Target, t_max: float, t_min: float, resolution: int = 4096):
    """(to_u, from_u): normalised λ coordinate u ∈ [0, 1] (0 at t_max, 1 at t_min) and back — piecewise linear
    between ``resolution`` exact points, snapped to training indices on a table."""
    sched = target.schedule
    lam_hi, lam_lo = float(sched.log_snr(t_max)), float(sched.log_snr(t_min))
    us = torch.linspace(0.0, 1.0, resolution, dtype=DTYPE)
    if math.isfinite(lam_hi) and math.isfinite(lam_lo) and lam_lo > lam_hi:
        ts = sched.t_from_log_snr(lam_hi + us * (lam_lo - lam_hi))
        ts[0], ts[-1] = t_max, t_min
    else:
        ts = t_max - us * (t_max - t_min)
    ts_up = ts.flip(0)  # increasing t

    def to_u(t: float) -> float:
        j = int(torch.searchsorted(ts_up, torch.tensor([t], dtype=DTYPE)).clamp(1, resolution - 1))
        a, b = float(ts_up[j - 1]), float(ts_up[j])
        w = 0.0 if b == a else (t - a) / (b - a)
        return (resolution - j - w) / (resolution - 1)  # ts_up[j - 1] is ts[resolution - j]

    def from_u(u: float) -> float:
        u = min(max(u, 0.0), 1.0) * (resolution - 1)
        j = min(int(u), resolution - 2)
        t = float(ts[j]) + (u - j) * float(ts[j + 1] - ts[j])
        if sched.is_discrete:
            N = sched.num_train_timesteps
            t = (round(t * N - 1) + 1) / N
        return min(max(t, t_min), t_max)

    return to_u, from_u


def optimize_grid(
    model=None,
    *,
    nfe: int,
    sampler: str = "ddim",
    sampler_options: dict | None = None,
    denoiser: Callable | None = None,
    schedule=None,
    parameterization=None,
    shape=None,
    calibration: int = 16,
    holdout: int = 16,
    seed: int = 0,
    candidates: int = 100,
    refine: bool = True,
    reference_substeps="auto",
    reference_rtol: float = 1e-2,
    t_max: float | None = None,
    t_min: float | None = None,
    baseline_grid: str | None = None,
    baseline_options: dict | None = None,
    device=None,
    progress: bool = False,
    max_sweeps: int = 6,
    cd_rule: str = "halves",
    objective: str = "mean",
    starts: tuple = (),
    descents: int = 1,
    fit_weights: bool = False,
    weights_history: int = 3,
    weights_rounds: int = 2,
    fit_corrector: bool = False,
    fit_evaluation_times: bool = False,
    evaluation_rounds: int = 2,
) -> OptimizedGrid:
    """Find the evaluation times that minimise ``sampler``'s error at ``nfe`` model evaluations (module doc).

    model: a pipeline folder, a diffusers pipeline (UNet + any scheduler, converted to UnifiedScheduler with
        ``sampler``), an exact distribution (:class:`unisde.analytic.Gaussian`, ``GaussianMixture``, ``Empirical``)
        with ``schedule``, or a network ``model(c_in x, timestep)`` with ``schedule``, ``parameterization`` and
        ``shape``; or pass ``denoiser(x, t) -> x̂0`` (t a (B,) tensor of times in [0, 1]) with ``schedule`` and
        ``shape`` instead.
    nfe: the model-evaluation budget (the grid takes the most grid times whose evaluations fit).
    calibration / holdout: batch sizes of the starts the grid is fitted on / scored on (noise from ``seed``).
    candidates: size of the DP's candidate lattice; refine: coordinate descent on the full error afterwards
        (at most ``max_sweeps`` sweeps per step size; ``cd_rule="halves"`` accepts a move only when it lowers the
        error of both halves of the calibration batch, ``"mean"`` when it lowers their mean).
    objective: how a batch's per-sample errors e_b (RMS over the sample's coordinates) are summarised, in the DP
        costs, the descent and every reported error: ``"mean"`` (mean of e_b) or ``"rms"`` (√(mean of e_b²), the
        trajectory metric of ``unisde bench`` divided by √d, which weighs the worst starts more).
    starts: names of registered grids (e.g. ``("uniform_lambda", "karras")``) tried, with the DP path and the
        baseline grid, as starts of the coordinate descent (times snapped to training indices on a table). A
        multistep sampler's DP path optimises its first-order base, and a grid made for the full method can be a
        better start.
    descents: the descent runs from each of the ``descents`` starts with the smallest calibration error (among the
        DP path, and with ``starts`` the baseline and the named grids), and the best end wins (``start`` of the
        result names where it started): the error is not convex in the times, and one descent stops in the first
        local minimum it meets.
    fit_weights: after the times, fit the weights of the multistep sampler ``fitted`` (:mod:`unisde.samplers.fitted`) on
        them (module doc, step 4); the result then samples with ``fitted`` and those weights, and ``weights_base``
        records ``sampler``'s errors on its own fitted grid. ``weights_history``: the most derivatives a step weighs
        (≥ 1; more where ``sampler``'s own steps weigh more);
        ``weights_rounds``: how many times the weights are fitted, the times descended again for the weights between
        two fits. ``fit_corrector`` (with ``fit_weights``): fit the ``fitted`` sampler's corrector rows together with
        its weights (UniPC's free correction with fitted weights, as S4S fits a predictor–corrector pair).
        ``fit_evaluation_times`` (with ``fit_weights``): then fit the time each model evaluation is told (the
        ``fitted`` sampler's ``evaluation_times``, Time-Shift sampler's idea) by coordinate descent on their
        logarithms from the grid's own, and the weights again for them, ``evaluation_rounds`` times at most (until a
        round improves nothing); kept where they lower the calibration error.
    reference_substeps / reference_rtol: RK4 steps per candidate interval of the reference, and the halving test's
        relative tolerance.
    t_max / t_min: the first evaluation time (default 1, the prior) and the smallest candidate (default: the
        schedule's smallest sampling time). baseline_grid / baseline_options: the grid to compare with (default:
        the pipeline's configured grid, else the sampler's default).
    Raises ValueError before any long work for a bad NFE, batch size, sampler, or a model whose output does not
    match the sample; after the reference solve when it does not converge.
    """
    from tqdm.auto import tqdm

    from unisde.grids import make_grid
    from unisde.plugins import get_sampler

    for name, value, low in (
        ("calibration", calibration, 1),
        ("holdout", holdout, 1),
        ("candidates", candidates, 4),
        ("descents", descents, 1),
        ("weights_history", weights_history, 1),
        ("weights_rounds", weights_rounds, 1),
        ("evaluation_rounds", evaluation_rounds, 1),
        ("reference_substeps", 1 if reference_substeps == "auto" else reference_substeps, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            why = " (the calibration batch is what the grid is fitted on)" if name == "calibration" else ""
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}{why}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    if not 0.0 < float(reference_rtol) < 1.0:
        raise ValueError(f"reference_rtol must lie in (0, 1), got {reference_rtol!r}")
    if cd_rule not in ("halves", "mean"):
        raise ValueError(f"cd_rule must be 'halves' or 'mean', got {cd_rule!r}")
    if objective not in ("mean", "rms"):
        raise ValueError(f"objective must be 'mean' or 'rms', got {objective!r}")
    if isinstance(starts, str) or not all(isinstance(g, str) for g in starts):
        raise ValueError(f"starts must be a list of grid names, got {starts!r}")
    if GRID_NAME in starts:
        raise ValueError(f"starts must be spacing rules, not the stored {GRID_NAME!r} grid")
    for g in starts:
        from unisde.plugins import get_grid

        get_grid(g)  # an unknown name fails here, before any work
    sampler_cls = get_sampler(sampler)
    if sampler_options is not None and not isinstance(sampler_options, dict):
        raise ValueError(f"sampler_options must be a dict, got {type(sampler_options).__name__}")
    sampler_options = dict(sampler_options or {})
    sampler_cls.validate_options(sampler_options)
    target = _make_target(
        model,
        denoiser=denoiser,
        schedule=schedule,
        parameterization=parameterization,
        shape=shape,
        sampler=sampler,
        sampler_options=sampler_options,
        device=device,
        baseline_grid=baseline_grid,
        baseline_options=baseline_options,
    )
    sched = target.schedule
    fast = _fast_schedule(sched)
    n, nfe_used, base_grid, _ = _steps_for_nfe(target, fast, sampler_cls, sampler_options, nfe)
    lo, hi = default_time_range(sched)
    t_max = hi if t_max is None else float(t_max)
    t_min = lo if t_min is None else float(t_min)
    final = float(base_grid[-1])  # the baseline's end point: the scheduler's rule for a pipeline
    if sched.is_discrete and final > 0:
        t_min = max(t_min, final + 1.0 / sched.num_train_timesteps)
    if not final < t_min < t_max <= 1.0:
        raise ValueError(f"need end point {final:g} < t_min < t_max <= 1, got t_min={t_min:g}, t_max={t_max:g}")
    cand = _candidates(target, candidates, t_max, t_min)
    M = cand.numel()
    if M < n:
        raise ValueError(
            f"only {M} distinct candidate times between t_max={t_max:g} and t_min={t_min:g}, fewer than "
            f"the {n} grid times of NFE {nfe}; raise candidates or lower nfe"
        )

    # The starts: calibration first, then the held-out ones.
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn((calibration + holdout,) + target.shape, generator=gen, dtype=torch.float64)
    z = z.to(target.dtype).to(target.device)
    K = calibration

    # Cheap checks first: the model's output shape (one call on one start) and a deterministic sampler.
    x_probe = z[:1] * target.start_scale(t_max)
    d_probe, _ = target(x_probe, torch.full((1,), t_max, dtype=DTYPE))
    if not bool(torch.isfinite(d_probe).all()):
        raise ValueError(f"the model's output at t={t_max:g} is not finite")
    probe = sampler_cls(fast, **sampler_options)
    probe_t = probe.prepare(base_grid)
    if bool((probe_t[1:] > probe_t[:-1]).any()):
        raise ValueError(
            f"sampler {sampler!r} evaluates at increasing times (it runs from data to noise); grid "
            "optimisation needs a sampler that solves the PF-ODE towards the data"
        )
    for name, value in (
        ("fit_weights", fit_weights),
        ("fit_corrector", fit_corrector),
        ("fit_evaluation_times", fit_evaluation_times),
    ):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    for name, value, what in (
        ("fit_corrector", fit_corrector, "the corrector of the fitted weights"),
        ("fit_evaluation_times", fit_evaluation_times, "the evaluation times of the fitted sampler"),
    ):
        if value and not fit_weights:
            raise ValueError(f"{name} fits {what}: it needs fit_weights=True")
    if fit_weights and len(probe_t) != base_grid.numel() - 1:
        raise ValueError(
            f"fit_weights needs a sampler with one model evaluation per step, since the fitted sampler takes one; "
            f"{sampler!r} takes {len(probe_t)} on {base_grid.numel() - 1} steps here (fit the grid of ddim, unipc, "
            "ipndm, gradient_estimation or dpmsolver++ instead)"
        )
    _drive(
        [(probe, x_probe, probe_t)],
        _Target(
            lambda x, t: (torch.zeros_like(x), torch.zeros_like(x)),
            sched,
            target.shape,
            target.dtype,
            target.device,
            "",
            {},
        ),
    )

    counter = [0]
    # 1. Reference: RK4 through every candidate, checked by halving its step.
    x_ref, d_ref, r_ref, reference = _reference(
        target,
        fast,
        cand,
        final,
        z * target.start_scale(t_max),
        reference_substeps,
        float(reference_rtol),
        counter,
        progress,
    )

    cal = slice(0, K)
    hold = slice(K, K + holdout)

    def ends_of(runs, part):
        """The final samples of each (sampler, grid) of ``runs`` from the starts ``part``, run together."""
        loops = []
        for smp, grid in runs:
            eval_t = smp.prepare(grid)
            loops.append((smp, z[part] * target.start_scale(smp.noise_time(eval_t[0])), eval_t))
        return _drive(loops, target, counter=counter)

    def grid_of(times):
        return make_grid(sched, len(times), GRID_NAME, final_time=final, times=[float(t) for t in times])

    def full_error(times_list, part, grids=None, make=None):
        """Per-sample RMS errors (B,) of full runs on each grid (lists of times), on batch ``part``, of the sampler
        ``make()`` builds (default: ``sampler`` with ``sampler_options``)."""
        make = make or (lambda: sampler_cls(fast, **sampler_options))
        grids = [grid_of(times) for times in times_list] if grids is None else grids
        return [_rms(e, x_ref[M][part]) for e in ends_of([(make(), grid) for grid in grids], part)]

    def agg(e: torch.Tensor) -> torch.Tensor:
        """The objective's summary of per-sample errors ``e`` (see ``objective``)."""
        return e.mean() if objective == "mean" else e.pow(2).mean().sqrt()

    # 2. DP over the candidates with the sampler's own one-step errors as costs.
    cost = torch.full((M + 1, M + 1), math.inf, dtype=DTYPE)
    nodes = torch.cat([cand, torch.tensor([final], dtype=DTYPE)])
    for i in tqdm(range(M), desc="step costs", unit="node", disable=not progress, leave=False):
        loops = []
        xi = x_ref[i][cal]
        for j in range(i + 1, M + 1):
            smp = sampler_cls(fast, **sampler_options)
            eval_t = smp.prepare(nodes[[i, j]].clone())
            loops.append((smp, xi.clone(), eval_t))
        ends = _drive(loops, target, first=(xi, d_ref[i][cal], r_ref[i][cal], float(cand[i])), counter=counter)
        for j, e in zip(range(i + 1, M + 1), ends):
            cost[i, j] = agg(_rms(e, x_ref[j][cal]))
    path = _shortest_path(cost, n)
    dp_times = [float(nodes[p]) for p in path[:-1]]

    base_times = [float(t) for t in base_grid[:-1]]
    (base_cal,) = full_error([base_times], cal, grids=[base_grid])
    (dp_cal,) = full_error([dp_times], cal)
    tried = [("dp", list(dp_times), dp_cal)]
    if starts:  # the DP path, the baseline and the named grids, as starts of the descent
        named = {"baseline": base_times}
        for name in starts:
            named[name] = [float(t) for t in make_grid(sched, n, name, final_time=final)[:-1]]
        named = {name: _snap(sched, ts, final, t_max) for name, ts in named.items()}
        named = {name: ts for name, ts in named.items() if ts is not None}
        for (name, ts), e in zip(named.items(), full_error(list(named.values()), cal)):
            tried.append((name, ts, e))
    tried.sort(key=lambda item: float(agg(item[2])))
    halves = (slice(0, (K + 1) // 2), slice((K + 1) // 2, K)) if K >= 2 and cd_rule == "halves" else (slice(0, K),)

    def better(new, old):
        """A move must lower the error (``objective``) of the calibration batch and of each of its halves (a guard
        against fitting a few starts)."""
        return all(float(agg(new[h])) < float(agg(old[h])) * (1 - 1e-9) for h in halves) and float(agg(new)) < float(
            agg(old)
        ) * (1 - 1e-9)

    def descend(times, best, make=None):
        """3. Coordinate descent on the full error of the calibration batch, from ``times`` (error ``best``), of the
        sampler ``make()`` builds (default: ``sampler``)."""
        times = list(times)
        to_u, from_u = _lattice(target, t_max, t_min)
        u = [to_u(t) for t in times]
        deltas = [4.0 / M, 2.0 / M, 1.0 / M, 0.5 / M, 0.25 / M]
        bar = tqdm(
            total=len(deltas) * max_sweeps, desc="coordinate descent", unit="sweep", disable=not progress, leave=False
        )
        for delta in deltas:
            for _ in range(max_sweeps):
                bar.update(1)
                trials, moves = [], []
                for k in range(1, n):
                    for sign in (-1.0, 1.0):
                        t_new = from_u(u[k] + sign * delta)
                        upper = times[k - 1]
                        lower = times[k + 1] if k + 1 < n else final
                        if lower < t_new < upper and t_new != times[k]:
                            trial = list(times)
                            trial[k] = t_new
                            trials.append(trial)
                            moves.append((k, t_new))
                if not trials:
                    break
                moved = _take_moves(
                    times,
                    moves,
                    full_error(trials, cal, make=make),
                    best,
                    better,
                    agg,
                    lambda ts: full_error([ts], cal, make=make)[0],
                )
                if moved is None:
                    break
                times, best = moved
                u = [to_u(t) for t in times]
        bar.close()
        return times, best

    start, times, best = tried[0]
    if refine and n > 1:
        finals = [(name, *descend(ts, e)) for name, ts, e in tried[:descents]]
        start, times, best = min(finals, key=lambda item: float(agg(item[2])))

    (base_hold,) = full_error([base_times], hold, grids=[base_grid])
    dp_hold, opt_hold = full_error([dp_times, times], hold)
    base_cal, dp_cal, best, base_hold, dp_hold, opt_hold = (
        float(agg(v)) for v in (base_cal, dp_cal, best, base_hold, dp_hold, opt_hold)
    )
    weights_base = None
    if fit_weights:  # 4. the fitted sampler's weights on these times, then the times for those weights
        started = time.perf_counter()
        fitted_cls = get_sampler(WEIGHTS_SAMPLER)
        weights_base = {
            "sampler": sampler,
            "sampler_options": dict(sampler_options),
            "times": [float(t) for t in times],
            "calibration_error": best,
            "holdout_error": opt_hold,
            "iterations": 0,
            "rounds": weights_rounds,
        }
        pair, view, history = None, {}, weights_history

        def fitted(pair, told=None):
            """The fitted sampler with the (weights, corrector rows) ``pair``, in the base sampler's view (``view``),
            its evaluations told the times ``told`` (default: those fitted so far; empty: the grid's own)."""
            told = told_found if told is None else told
            return fitted_cls(fast, weights=pair[0], corrector=pair[1], evaluation_times=told, **view)

        def fit_weights_on(times, pair):
            """The (weights, corrector) pair fitted on ``times``, from the base sampler's weights and ``pair``."""
            nonlocal view, history
            grid = grid_of(times)
            starts_w, view = weight_starts(sampler_cls(fast, **sampler_options), grid)
            # as many derivatives per step as the base sampler's own steps weigh, at least weights_history
            history = max([history] + [len(row) for table in starts_w for row in table])
            pair, iterations = fit_weight_rows(
                lambda tables, part, grid=grid: ends_of([(fitted(w), grid) for w in tables], part),
                x_ref[M][cal],
                cal,
                n,
                history,
                starts_w,
                corrector=fit_corrector,
                # the weights of the previous round, on the times descended for them
                start_pairs=[pair] if pair is not None else [],
            )
            weights_base["iterations"] += iterations
            return pair

        told_found = []
        for round_ in range(weights_rounds):
            if round_ > 0 and refine and n > 1:
                (now,) = full_error([times], cal, make=lambda pair=pair: fitted(pair))
                times, _ = descend(times, now, make=lambda pair=pair: fitted(pair))
            pair = fit_weights_on(times, pair)
        if fit_evaluation_times:  # 5. the times the evaluations are told, then the weights again for them
            grid = grid_of(times)
            (now,) = full_error([times], cal, make=lambda: fitted(pair))
            before = float(agg(now))
            for _ in range(evaluation_rounds):
                start = list(told_found or times)
                told, now = _descend_told(
                    lambda trials: ends_of([(fitted(pair, t), grid) for t in trials], cal),
                    lambda e: _rms(e, x_ref[M][cal]),
                    agg,
                    better,
                    start,
                    now,
                    t_max,
                    max_sweeps,
                )
                if told == start:
                    break
                told_found = told
                refit = fit_weights_on(times, pair)
                (e_refit,) = full_error([times], cal, make=lambda: fitted(refit))
                if not better(e_refit, now):
                    break
                pair, now = refit, e_refit
            weights_base["evaluation_times"] = {"kept": bool(told_found), "calibration_error_before": before}
        best, opt_hold = (
            float(agg(e)) for part in (cal, hold) for e in full_error([times], part, make=lambda: fitted(pair))
        )
        sampler = WEIGHTS_SAMPLER
        sampler_options = {"weights": [list(r) for r in pair[0]], **view}
        if fit_corrector:
            sampler_options["corrector"] = [list(r) for r in pair[1]]
        if told_found:
            sampler_options["evaluation_times"] = [float(t) for t in told_found]
        weights_base["seconds"] = time.perf_counter() - started
    if target.scheduler is not None:  # what was measured is what the pipeline will run
        check = _unified(
            target.scheduler_config,
            sampler,
            sampler_options,
            time_grid=GRID_NAME,
            time_grid_options={"times": [float(t) for t in times]},
        )
        check.set_timesteps(n)
        measured = make_grid(sched, n, GRID_NAME, final_time=final, times=[float(t) for t in times])
        if len(check.timesteps) != nfe_used or check._sampler.grid != [float(v) for v in measured]:
            raise ValueError(
                f"the pipeline's scheduler builds the grid {check._sampler.grid} with "
                f"{len(check.timesteps)} evaluations from these times, not the measured "
                f"{[float(v) for v in measured]} with {nfe_used}"
            )
    model_steps = []
    if target.parameterization is not None:
        model_steps = [float(v) for v in target.parameterization.model_time(sched, torch.tensor(times, dtype=DTYPE))]
    return OptimizedGrid(
        times=[float(t) for t in times],
        sampler=sampler,
        sampler_options=dict(sampler_options),
        nfe=int(nfe_used),
        calibration_error=best,
        holdout_error=opt_hold,
        baseline_grid=target.baseline_kind,
        baseline_times=base_times,
        baseline_calibration_error=base_cal,
        baseline_holdout_error=base_hold,
        dp_calibration_error=dp_cal,
        dp_holdout_error=dp_hold,
        calibration=K,
        holdout=holdout,
        seed=int(seed),
        candidates=M,
        reference=reference,
        model_timesteps=model_steps,
        final_time=float(final),
        model_evaluations=int(counter[0]),
        method=("dp+cd" if refine else "dp")
        + ("+weights" if fit_weights else "")
        + ("+corrector" if fit_corrector else "")
        + ("+evaluation_times" if fit_evaluation_times else ""),
        objective=objective,
        start=start,
        weights_base=weights_base,
    )


def _descend_told(run, errors, agg, better, times: list, best, t_max: float, max_sweeps: int):
    """Coordinate descent on the times the ``fitted`` sampler's evaluations are told, t'_k = t_k e^{δ_k}, from the
    grid's own (δ = 0, error ``best``): per sweep every δ_k ± step is tried (``run(list of told-time lists)`` →
    final samples, ``errors(x)`` → per-sample errors, ``agg`` their summary), and the improving moves (``better``)
    taken together when that is better still, else the best one; steps 0.1, 0.05, 0.02, 0.01, at most
    ``max_sweeps`` sweeps each.
    Told times stay in (0, ``t_max``] and decreasing. Returns (told times, their per-sample errors)."""
    told = list(times)
    for step in (0.1, 0.05, 0.02, 0.01):
        for _ in range(max_sweeps):
            trials, moves = [], []
            for k in range(len(told)):
                for sign in (-1.0, 1.0):
                    trial = list(told)
                    trial[k] = min(told[k] * math.exp(sign * step), t_max)
                    if trial[k] != told[k] and all(a > b for a, b in zip(trial, trial[1:])):
                        trials.append(trial)
                        moves.append((k, trial[k]))
            if not trials:
                break
            errs = [errors(x) for x in run(trials)]
            moved = _take_moves(told, moves, errs, best, better, agg, lambda ts: errors(run([ts])[0]))
            if moved is None:
                break
            told, best = moved
    return told, best


def _take_moves(values: list, moves: list, errs: list, best, better, agg, error_of):
    """One sweep of a coordinate descent on decreasing ``values``: of the trial ``moves`` (k, new value), whose
    per-sample errors are ``errs``, those ``better`` than ``best``, taken together where the values stay decreasing
    and that is better still (``error_of(values)``), else the best one (by ``agg``). Returns (values, errors), or
    None when no move improves."""
    improving = {}
    for (k, v), e in zip(moves, errs):
        if better(e, best) and (k not in improving or float(agg(e)) < float(agg(improving[k][1]))):
            improving[k] = (v, e)
    if not improving:
        return None
    k_best = min(improving, key=lambda k: float(agg(improving[k][1])))
    combined = list(values)
    for k, (v, _) in improving.items():
        combined[k] = v
    if len(improving) > 1 and all(a > b for a, b in zip(combined, combined[1:])):
        e_comb = error_of(combined)
        if better(e_comb, improving[k_best][1]):
            return combined, e_comb
    out = list(values)
    out[k_best] = improving[k_best][0]
    return out, improving[k_best][1]


def _rows(free: list, lengths: list) -> tuple:
    """Rows of the given lengths from their free entries (``free``: every entry but each row's last, row by row);
    each row's last entry is 1 minus the sum of the others."""
    rows, k = [], 0
    for length in lengths:
        head = [float(v) for v in free[k : k + length - 1]]
        k += length - 1
        rows.append(tuple(head) + (1.0 - math.fsum(head),))
    return tuple(rows)


def _weight_lengths(n: int, history: int) -> list:
    return [min(i + 1, history) for i in range(n)]


def _corrector_lengths(n: int, history: int) -> list:
    """Corrector row i weighs step i's derivatives and the new one: one more than predictor row i."""
    return [min(i + 2, history + 1) for i in range(n - 1)]


def weight_rows(free: list, n: int, history: int) -> tuple:
    """The ``fitted`` sampler's weight table for n steps from its free weights: row i weighs the last
    min(i + 1, ``history``) derivatives, its last entry 1 minus the sum of the others (``free`` lists the others, oldest
    first, step by step)."""
    return _rows(free, _weight_lengths(n, history))


def free_weights(rows: tuple) -> list:
    """The inverse of :func:`weight_rows`: every entry of each row but its last."""
    return [float(w) for row in rows for w in row[:-1]]


def weight_starts(base, grid: torch.Tensor) -> tuple[list, dict]:
    """Starts of the weight fit on ``grid`` and the ``fitted`` sampler's options besides the weights: the rows of
    ``base`` (the sampler whose grid it is) with its view where it is a multistep method of the same family
    (iPNDM, gradient estimation: :meth:`unisde.samplers.ipndm.IPNDMSampler.weight_rows`, so the fit starts from
    its very steps), else Euler's and the variable-step Adams–Bashforth-2 rows of ``ipndm_v`` in the default
    view."""
    from unisde.plugins import get_sampler
    from unisde.samplers.ipndm import IPNDMSampler

    if isinstance(base, IPNDMSampler):
        tables, options = [base.weight_rows(grid)], {"view": base.opts["view"]}
    else:
        tables, options = [get_sampler("ipndm_v")(base.schedule, max_order=2).weight_rows(grid)], {}
    euler = tuple((1.0,) for _ in range(grid.numel() - 1))
    return [euler, *tables], options


def _padded(rows: tuple, lengths: list) -> tuple:
    """Rows with zero weights in front up to ``lengths`` entries (the free weights' layout)."""
    return tuple((0.0,) * (length - len(row)) + tuple(row) for row, length in zip(rows, lengths))


def corrector_starts(rows: tuple) -> list:
    """Starts of the corrector fit for predictor ``rows``: no correction (row i is predictor row i with a 0 for the
    new derivative) and the trapezoidal rule (½ on step i's own derivative and ½ on the new one)."""
    return [tuple(tuple(row) + (0.0,) for row in rows[:-1]), tuple((0.5, 0.5) for _ in rows[:-1])]


def fit_weight_rows(
    run,
    reference: torch.Tensor,
    part,
    n: int,
    history: int,
    start_rows: list,
    iterations: int = 30,
    corrector: bool = False,
    start_pairs: list = (),
):
    """Least-squares weights of the ``fitted`` sampler: Levenberg–Marquardt (Marquardt 1963 [LM]) on the free
    weights (:func:`weight_rows`; with ``corrector`` also those of the corrector rows, one more entry each)
    minimising ‖x_end − x_ref‖² over the calibration batch ``part`` (the objective ``rms`` squared), with
    forward-difference Jacobians (every perturbed table run together: one batched model call per evaluation).
    Starts from the best of ``start_rows`` (weight tables; with ``corrector`` each with no correction and with the
    trapezoidal one, :func:`corrector_starts`) and of ``start_pairs``, (weights, corrector rows) pairs (a previous
    round's). ``run(tables, part)`` returns the final samples of each
    (weights, corrector rows) pair. Returns ((weights, corrector rows), iterations taken); the corrector rows are
    empty without ``corrector``."""
    size = float(reference.numel())
    w_len = _weight_lengths(n, history)
    c_len = _corrector_lengths(n, history) if corrector else []
    split = sum(w_len) - len(w_len)

    def tables(free):
        return _rows(free[:split], w_len), _rows(free[split:], c_len)

    def residuals(free_list):
        ends = run([tables(free) for free in free_list], part)
        return [(e.to(DTYPE) - reference.to(DTYPE)).reshape(-1) / math.sqrt(size) for e in ends]

    def cost(r):
        return float(r @ r)

    starts = []
    for rows in start_rows:
        w = free_weights(_padded(rows, w_len))
        padded = _rows(w, w_len)
        starts += [w + free_weights(_padded(c, c_len)) for c in corrector_starts(padded)] if corrector else [w]
    starts += [free_weights(_padded(w, w_len)) + free_weights(_padded(c, c_len)) for w, c in start_pairs]
    res = residuals(starts)
    k = min(range(len(starts)), key=lambda j: cost(res[j]))
    p = torch.tensor(starts[k], dtype=DTYPE)
    r, f = res[k], cost(res[k])
    if p.numel() == 0:
        return tables(starts[k]), 0
    damping, delta, done = 1e-3, 1e-4, 0
    for done in range(1, iterations + 1):
        trials = [p.clone() for _ in range(p.numel())]
        for j, q in enumerate(trials):
            q[j] += delta
        perturbed = residuals([q.tolist() for q in trials])
        jac = torch.stack([(rj - r) / delta for rj in perturbed], 1)
        normal, grad = jac.T @ jac, jac.T @ r
        scale = torch.diag(normal).clamp_min(1e-12)
        improved = False
        while damping < 1e8:
            step = torch.linalg.solve(normal + damping * torch.diag(scale), -grad)
            q = p + step
            (r_new,) = residuals([q.tolist()])
            f_new = cost(r_new)
            if f_new < f:
                improved, gain = True, (f - f_new) / f
                p, r, f = q, r_new, f_new
                damping = max(damping / 3, 1e-9)
                break
            damping *= 4
        if not improved or gain < 1e-5:
            break
    return tables(p.tolist()), done


def _reference(
    target: _Target,
    sched: NoiseSchedule,
    cand: torch.Tensor,
    final: float,
    x0: torch.Tensor,
    substeps,
    rtol: float,
    counter: list,
    progress: bool,
):
    """The PF-ODE solved by RK4 through every candidate (``substeps`` steps per interval) from ``x0``, with the
    halving test: the same solve with every other grid point must agree to ``rtol`` (relative RMS of the end
    points). ``substeps="auto"`` doubles 1, 2, 4, 8 until it does (each finer solve's halved twin is the previous
    one). Returns (x at each candidate and the end, D and raw D at each candidate, info)."""
    from tqdm.auto import tqdm

    from unisde.plugins import get_sampler

    M = cand.numel()
    levels = [1, 2, 4, 8] if substeps == "auto" else [int(substeps)]
    where = {float(t): i for i, t in enumerate(cand)}
    halved = None  # (end point, steps) of the solve with twice the step
    change, fine = math.inf, None
    for level in levels:
        fine = _refine(sched, cand, level, final)
        ode_f = get_sampler("ode")(sched, solver="rk4")
        eval_f = ode_f.prepare(fine)
        loops = [(ode_f, x0, eval_f)]
        if halved is None:  # the halved twin: every other grid point, keeping the last evaluation time
            keep = sorted(set(range(0, fine.numel() - 2, 2)) | {fine.numel() - 2, fine.numel() - 1})
            ode_c = get_sampler("ode")(sched, solver="rk4")
            loops.append((ode_c, x0, ode_c.prepare(fine[keep])))
        cand_steps = {k: where[float(fine[s])] for k, s in ode_f.step_starts.items() if float(fine[s]) in where}
        x_ref, d_ref, r_ref = [None] * (M + 1), [None] * M, [None] * M
        bar = tqdm(
            total=len(eval_f),
            desc=f"reference (RK4, {fine.numel() - 1} steps)",
            unit="eval",
            disable=not progress,
            leave=False,
        )

        def record(loop, k, x, d, r, cand_steps=cand_steps, bar=bar, x_ref=x_ref, d_ref=d_ref, r_ref=r_ref):
            if loop == 0:
                bar.update(1)
                i = cand_steps.get(k)
                if i is not None:
                    x_ref[i], d_ref[i], r_ref[i] = x, d, r

        ends = _drive(loops, target, record=record, counter=counter)
        bar.close()
        end_f = ends[0]
        if not bool(torch.isfinite(end_f).all()):
            raise ValueError("the reference solve produced NaN or inf: the model is not usable on this schedule")
        if halved is None:
            halved = (ends[1], len(keep) - 1)
        scale = float(end_f.to(DTYPE).pow(2).mean().sqrt())
        change = float(_rms(end_f, halved[0]).pow(2).mean().sqrt()) / max(scale, 1e-12)
        if change <= rtol:
            break
        halved_steps = halved[1]
        halved = (end_f, fine.numel() - 1)  # the next level's halved twin is this solve
    if not change <= rtol:
        raise ValueError(
            f"the reference solve does not converge: halving its step ({halved_steps} → "
            f"{fine.numel() - 1} RK4 steps) changed the solution by {change:.3g} (relative RMS), more "
            f"than reference_rtol={rtol:g}; raise candidates or reference_substeps, or check the model "
            "(a denoiser that is not smooth in x and t has no accurate ODE solution)"
        )
    x_ref[M] = end_f
    info = {
        "solver": "ode rk4",
        "steps": int(fine.numel() - 1),
        "evaluations": int(len(eval_f)),
        "halving_change": change,
        "rtol": rtol,
    }
    return x_ref, d_ref, r_ref, info


def _refine(schedule: NoiseSchedule, cand: torch.Tensor, substeps: int, final: float) -> torch.Tensor:
    """Candidates with ``substeps`` steps per interval (uniform in log σ̃ between candidates), plus the end point."""
    if substeps == 1:
        return torch.cat([cand, torch.tensor([final], dtype=DTYPE)])
    ve = schedule.ve_sigma(cand)
    out = []
    for i in range(cand.numel() - 1):
        a, b = float(ve[i]), float(ve[i + 1])
        out.append(float(cand[i]))
        if a > 0 and b > 0 and math.isfinite(a):
            inner = torch.exp(torch.linspace(math.log(a), math.log(b), substeps + 1, dtype=DTYPE))[1:-1]
            ts = schedule.t_from_sigma(inner)
        else:
            ts = torch.linspace(float(cand[i]), float(cand[i + 1]), substeps + 1, dtype=DTYPE)[1:-1]
        out.extend(float(t) for t in ts if float(cand[i + 1]) < float(t) < float(cand[i]))
    out.append(float(cand[-1]))
    out.append(final)
    return torch.tensor(out, dtype=DTYPE)


def _snap(schedule: NoiseSchedule, times: list, final: float, t_max: float) -> list | None:
    """``times`` clipped to (final, t_max] and snapped to training indices on a table (t = (i + 1)/N); None when
    they are no longer strictly decreasing (two times on one index)."""
    out = [min(float(t), t_max) for t in times]
    if schedule.is_discrete:
        N = schedule.num_train_timesteps
        out = [(round(t * N - 1) + 1) / N for t in out]
    if any(not a > b for a, b in zip(out, out[1:])) or not out[-1] > final:
        return None
    return out


def _shortest_path(cost: torch.Tensor, n: int) -> list[int]:
    """Node indices 0 = p_0 < … < p_n = last of the cheapest path of exactly n steps (DP, O(n · nodes²))."""
    nodes = cost.shape[0]
    best = torch.full((n + 1, nodes), math.inf, dtype=DTYPE)
    back = torch.zeros((n + 1, nodes), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, n + 1):
        total = best[k - 1][:, None] + cost  # [i, j]: arrive at j from i
        best[k], back[k] = total.min(0)
    if not math.isfinite(float(best[n, nodes - 1])):
        raise ValueError(f"no path of {n} steps through the candidates")
    path = [nodes - 1]
    for k in range(n, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1]


# ---------------------------------------------------------------------------------------------- saving
def write_texts_atomic(files: dict) -> None:
    """Write every {path: text} through temporary files in the same folders, then ``os.replace`` them all; on a
    failure before the replacements no file is touched and the temporaries are removed."""
    temps = {}
    try:
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".unisde-", suffix=".tmp")
            temps[path] = tmp
            if os.path.exists(path):  # keep the replaced file's permissions (mkstemp creates 0600)
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def card_with_section(card: str, section: str) -> str:
    """``card`` with its ``unisde-grid`` section replaced by ``section`` (appended when it has none)."""
    if CARD_BEGIN in card and CARD_END in card:
        head, rest = card.split(CARD_BEGIN, 1)
        tail = rest.split(CARD_END, 1)[1].lstrip("\n")
        return head + section + (("\n" + tail) if tail else "")
    sep = "" if not card or card.endswith("\n\n") else ("\n" if card.endswith("\n") else "\n\n")
    return card + sep + section


def save_grid(result: OptimizedGrid, folder: str) -> None:
    """See :meth:`OptimizedGrid.save`."""
    from unisde.diffusers.scheduler import UnifiedScheduler

    index_path = os.path.join(folder, "model_index.json")
    cfg_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.isfile(index_path) or not os.path.isfile(cfg_path):
        raise ValueError(
            f"{folder!r} is not a pipeline folder: expected model_index.json and scheduler/scheduler_config.json"
        )
    with open(index_path, encoding="utf-8") as fh:
        index = json.load(fh)
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    scheduler = result.scheduler(cfg)
    scheduler.set_timesteps(result.steps)  # the stored grid must load and run before anything is written
    if len(scheduler.timesteps) != result.nfe:
        raise ValueError(f"the stored grid gives {len(scheduler.timesteps)} model evaluations, not NFE {result.nfe}")
    check = UnifiedScheduler.from_config(json.loads(scheduler.to_json_string()))
    check.set_timesteps(result.steps)
    index["scheduler"] = ["unisde.scheduler", "UnifiedScheduler"]
    card_path = os.path.join(folder, "README.md")
    card = open(card_path, encoding="utf-8").read() if os.path.isfile(card_path) else ""
    write_texts_atomic(
        {
            cfg_path: scheduler.to_json_string(),
            index_path: json.dumps(index, indent=2, sort_keys=True) + "\n",
            card_path: card_with_section(card, result.markdown()),
        }
    )


__all__ = ["OPTIMIZED", "OptimizedGrid", "optimize_grid", "save_grid", "card_with_section"]
