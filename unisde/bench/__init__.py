r"""Benchmarks against diffusers (issue 5): sampler accuracy per model evaluation against exact ground truth,
scheduler ``step()`` overhead, end-to-end DDPMPipeline time and training throughput.

Accuracy
--------
Every contestant samples the same exact model — the analytic denoiser of :mod:`unisde.analytic` wrapped as
the raw output of an ε-model (diffusers' default DDPM table: linear β, 1000 steps) or of the EDM-preconditioned
model (EDMEulerScheduler's σ ∈ [0.002, 80], seed 001 eqs. 203–217) — so the only error left is the sampler's.
All contestants start from the same noise z and draw their noise from the same seeded generator. The distance to
the truth is the sliced Wasserstein-2 distance

    SW₂(X, Y)² = E_θ W₂²(θᵀX, θᵀY)   (θ uniform on the unit sphere; a fixed set of ``projections`` directions),

where each 1-D W₂ between two equal-size empirical sets is the RMS difference of their sorted projections.
Y is one fixed set of exact samples; the *noise floor* is the same distance between two independent exact
sets of the same size (mean and standard deviation over three pairs): a sampler at the floor is
indistinguishable from the truth at this sample size.

NFE is counted honestly: every call of the model is counted by the model itself (``AnalyticModel.nfe``), and a
contestant's ``num_inference_steps`` is the largest one whose counted calls do not exceed the NFE budget (so
Heun's 2n − 1 calls, correctors and per-level Langevin steps all count).

Overhead, pipeline, training
----------------------------
* ``step()`` alone, UnifiedScheduler vs the diffusers scheduler of the same algorithm, on a fixed float32
  sample and model output of shape 8×4×64×64, the two interleaved call by call (order alternating), median
  per call.

torch runs single-threaded throughout (``torch.set_num_threads(1)``, restored afterwards): a step is a handful
of element-wise kernels on 131k elements and the benchmark models are small, so intra-op threading buys little,
while on a shared machine (the 2-core CI box this was written on) threads spinning against other processes made
the same call up to 10× slower and noisy. Both sides of every ratio run under the same setting.
* DDPMPipeline end to end with the bundled digits UNet (a random UNet2DModel of the training command's
  default config when no bundled one is found), repetitions interleaved, ratio of medians.
* Training: samples/s of :func:`unisde.training.make_train_step` vs a loop written as diffusers'
  ``train_unconditional.py`` writes it (randint timesteps, ``add_noise``, ε-MSE, backward, grad-norm clip at
  1, AdamW(β = (0.95, 0.999), weight decay 1e-6)), on two identical copies of one UNet, steps interleaved.

:func:`run_benchmarks` returns the JSON-able results; :func:`render_markdown` and :func:`plot_accuracy` turn
them into ``BENCHMARKS.md`` and its figure.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from unisde._tensor import unknown_name_error

TARGETS = ("mixture-2d", "mixture-8x8", "gaussian-8x8")
SCHEDULES = ("ddpm", "edm")
SECTIONS = ("accuracy", "overhead", "pipeline", "training")
FULL_NFE = (5, 10, 20, 50, 100, 250)
QUICK_NFE = (10, 50)

# The targets the issue sets (measured in the same run, reported in BENCHMARKS.md).
OVERHEAD_TARGET = 1.0
PIPELINE_TARGET = 1.02
TRAINING_TARGET = 0.97

_SEED_NOISE = 1234        # starting noise z (shared by every contestant)
_SEED_STEPS = 4321        # the generator passed to step() (shared by every contestant)
_SEED_REFERENCE = 2024    # the exact reference set Y
_SEED_FLOOR = 7000        # independent exact sets for the noise floor
_SEED_PROJECTIONS = 99    # slicing directions


@dataclass
class BenchConfig:
    """What to run. ``quick()`` and ``full()`` are the two presets of ``unisde bench``."""

    nfe: tuple = FULL_NFE
    targets: tuple = TARGETS
    schedules: tuple = SCHEDULES
    n_samples: int = 2000                # samples per distance on the 64-D targets
    n_samples_2d: int = 20000            # … on the 2-D target (cheap; its floor is dominated by mode-weight noise)
    projections: int = 256
    grid_variants: bool = True           # also try other time grids / spacings for every contestant
    nfe_64d: tuple | None = None         # NFE budgets on the 64-D targets (None: ``nfe``)
    grid_variants_64d: bool | None = None  # grid variants on the 64-D targets (None: ``grid_variants``)
    overhead_steps: int = 300
    overhead_shape: tuple = (8, 4, 64, 64)
    pipeline_steps: int = 50
    pipeline_batch: int = 16
    pipeline_reps: int = 11  # interleaved repeats; the median of 5 moved by ±0.03 between runs
    training_batch: int = 64
    training_steps: int = 30
    sections: tuple = SECTIONS
    quick: bool = False

    @classmethod
    def full(cls, **overrides) -> "BenchConfig":
        return cls(**overrides)

    @classmethod
    def medium(cls, **overrides) -> "BenchConfig":
        """Every NFE with grid variants on the 2-D target (5000 samples); on the 64-D targets 500 samples, NFE ≤ 100
        and default grids (~8 min on 2 shared cores, where the full preset takes over half an hour)."""
        base = dict(n_samples=500, n_samples_2d=5000, nfe_64d=(5, 10, 20, 50, 100), grid_variants_64d=False)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def quick_preset(cls, **overrides) -> "BenchConfig":
        base = dict(nfe=QUICK_NFE, targets=("mixture-2d",), n_samples=500, n_samples_2d=4000, projections=64, grid_variants=False,
                    overhead_steps=40, pipeline_steps=10, pipeline_batch=8, pipeline_reps=3, training_batch=32,
                    training_steps=6, quick=True)
        base.update(overrides)
        return cls(**base)

    def validate(self):
        for name in self.targets:
            if name not in TARGETS:
                raise unknown_name_error("target", name, TARGETS)
        for name in self.schedules:
            if name not in SCHEDULES:
                raise unknown_name_error("schedule", name, SCHEDULES)
        for name in self.sections:
            if name not in SECTIONS:
                raise unknown_name_error("section", name, SECTIONS)
        if not self.nfe or any(not isinstance(n, int) or n < 1 for n in self.nfe):
            raise ValueError(f"nfe must be a non-empty list of positive integers, got {list(self.nfe)}")
        for key in ("n_samples", "n_samples_2d", "projections", "overhead_steps", "pipeline_steps", "pipeline_batch", "pipeline_reps",
                    "training_batch", "training_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if min(self.n_samples, self.n_samples_2d) < 2:
            raise ValueError(f"n_samples must be at least 2, got {min(self.n_samples, self.n_samples_2d)}")
        if self.nfe_64d is not None and (not self.nfe_64d or any(not isinstance(n, int) or n < 1 for n in self.nfe_64d)):
            raise ValueError(f"nfe_64d must be a non-empty list of positive integers, got {list(self.nfe_64d)}")

    def for_target(self, name: str) -> tuple[int, tuple, bool]:
        """(samples, NFE budgets, grid variants) used on target ``name``."""
        if name == "mixture-2d":
            return self.n_samples_2d, tuple(self.nfe), self.grid_variants
        variants = self.grid_variants if self.grid_variants_64d is None else self.grid_variants_64d
        return self.n_samples, tuple(self.nfe_64d or self.nfe), variants


# ====================================================================================== targets
def _grid_cov(side: int = 8, length: float = 2.0, variance: float = 0.25, jitter: float = 1e-3) -> torch.Tensor:
    """Squared-exponential covariance k(p, q) = v exp(−‖p − q‖²/(2ℓ²)) between the pixels of a side×side grid
    (distances in pixels), plus ``jitter``·I so that the smallest eigenvalue stays well above float32 rounding."""
    ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2).double()
    d2 = ((ij[:, None, :] - ij[None, :, :]) ** 2).sum(-1)
    return variance * torch.exp(-d2 / (2 * length**2)) + jitter * torch.eye(side * side, dtype=torch.float64)


def make_target(name: str):
    """The exact data distributions of the benchmark (all roughly unit scale, like normalised images).

    * ``mixture-2d``: three well-separated isotropic modes of unequal weight 0.6 / 0.3 / 0.1.
    * ``mixture-8x8``: an "8×8 image" mixture of four patterns (two blobs, a bar, a ring) with pixel
      correlations from squared-exponential kernels of length 1.5 and 3 pixels, weights 0.4 / 0.3 / 0.2 / 0.1.
    * ``gaussian-8x8``: one correlated 8×8 Gaussian (length 2) around a smooth gradient mean.
    """
    from unisde.analytic import Gaussian, GaussianMixture

    if name == "mixture-2d":
        means = torch.tensor([[-1.2, -0.8], [1.2, -0.6], [0.0, 1.3]], dtype=torch.float64)
        return GaussianMixture([0.6, 0.3, 0.1], means, torch.tensor([0.04, 0.02, 0.01], dtype=torch.float64))
    ij = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1).double()
    if name == "mixture-8x8":
        def blob(ci, cj, r):
            return torch.exp(-((ij - torch.tensor([ci, cj], dtype=torch.float64)) ** 2).sum(-1) / (2 * r * r))
        ring = torch.exp(-(((ij - 3.5) ** 2).sum(-1).sqrt() - 2.5) ** 2)
        bar = (ij[..., 1] - 3.5).abs().lt(1.5).double()
        patterns = torch.stack([blob(2, 2, 1.5), blob(5, 5, 1.5), bar, ring]) * 1.6 - 0.8
        covs = torch.stack([_grid_cov(length=1.5, variance=0.04), _grid_cov(length=3.0, variance=0.05),
                            _grid_cov(length=1.5, variance=0.03), _grid_cov(length=3.0, variance=0.02)])
        return GaussianMixture([0.4, 0.3, 0.2, 0.1], patterns.reshape(4, 8, 8), covs, event_shape=(8, 8))
    if name == "gaussian-8x8":
        mean = (ij[..., 0] - 3.5) / 7.0 * 0.6
        return Gaussian(mean, _grid_cov(length=2.0, variance=0.25), event_shape=(8, 8))
    raise unknown_name_error("target", name, TARGETS)


# ====================================================================================== metric
def projection_directions(dim: int, count: int, seed: int = _SEED_PROJECTIONS) -> torch.Tensor:
    """``count`` fixed unit directions in R^dim (float64, shape (dim, count)); in 2-D evenly spaced angles."""
    if dim == 2:
        angle = torch.arange(count, dtype=torch.float64) * (math.pi / count)
        return torch.stack([angle.cos(), angle.sin()])
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, count, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced Wasserstein-2 distance between two equal-size sample sets (rows), in the data's units."""
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs two sets of the same size and dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        return float("inf")
    px, _ = torch.sort(x @ directions, dim=0)
    py, _ = torch.sort(y @ directions, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


# ====================================================================================== contestants
def base_config(schedule: str) -> dict:
    """The diffusers scheduler config defining the forward process and model: DDPMScheduler() or EDMEulerScheduler()."""
    import diffusers

    if schedule == "ddpm":
        return dict(diffusers.DDPMScheduler().config)
    if schedule == "edm":
        return dict(diffusers.EDMEulerScheduler().config)
    raise unknown_name_error("schedule", schedule, SCHEDULES)


@dataclass
class Contestant:
    """One sampler configuration: ``make()`` builds a fresh scheduler; ``twin_of`` names the diffusers
    contestant a unisde one is converted from (same algorithm), for the agreement table."""

    library: str
    label: str
    make: Callable
    twin_of: str | None = None


def _unified(cfg: dict, **kwargs):
    from unisde.diffusers.scheduler import UnifiedScheduler

    return UnifiedScheduler.from_config(cfg, **kwargs)


# Sampler option variants tried (a sampler not listed runs with its defaults).
SAMPLER_VARIANTS = {"edm": ({}, {"solver": "euler"}),
                    "sde": ({}, {"method": "exponential"}),
                    "dpmsolver++": ({}, {"solver_order": 3}, {"solver_order": 3, "exact_quadratic": True},
                                    {"algorithm_type": "sde-dpmsolver++"})}
UNISDE_GRIDS = {"ddpm": (None, "trailing", "karras", "uniform_lambda"), "edm": (None, "uniform_lambda")}


def unisde_contestants(schedule: str, cfg: dict, grid_variants: bool) -> list[Contestant]:
    """Every registered sampler (plugins included), with the option and time-grid variants above."""
    from unisde.plugins import list_samplers

    out = []
    for name in list_samplers():
        for options in SAMPLER_VARIANTS.get(name, ({},)):
            for grid in (UNISDE_GRIDS[schedule] if grid_variants else (None,)):
                bits = [f"{k}={v}" for k, v in options.items()] + ([f"grid={grid}"] if grid else [])
                label = name + (f"[{', '.join(bits)}]" if bits else "")
                kwargs = {"sampler": name, "sampler_options": dict(options)}
                if grid is not None:
                    kwargs["time_grid"] = grid
                out.append(Contestant("unisde", label, lambda kw=kwargs: _unified(cfg, **kw)))
    return out


def _ddpm_schedulers() -> list[tuple[str, str, dict]]:
    return [("DDPM", "DDPMScheduler", {}), ("DDIM", "DDIMScheduler", {}),
            ("Euler", "EulerDiscreteScheduler", {}), ("EulerAncestral", "EulerAncestralDiscreteScheduler", {}),
            ("Heun", "HeunDiscreteScheduler", {}), ("LMS", "LMSDiscreteScheduler", {}),
            ("DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2}),
            ("DPM++3M", "DPMSolverMultistepScheduler", {"solver_order": 3}),
            ("SDE-DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
            ("UniPC", "UniPCMultistepScheduler", {})]


def _edm_schedulers() -> list[tuple[str, str, dict]]:
    return [("EDMEuler", "EDMEulerScheduler", {}),
            ("EDM-DPM++2M", "EDMDPMSolverMultistepScheduler", {"solver_order": 2}),
            ("EDM-DPM++3M", "EDMDPMSolverMultistepScheduler", {"solver_order": 3}),
            ("EDM-SDE-DPM++2M", "EDMDPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"})]


def _has_param(cls, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


# Diffusers schedulers whose algorithm a unisde sampler reproduces (UnifiedScheduler.from_config picks it).
_TWIN_CLASSES = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                 "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "EDMEulerScheduler")


def diffusers_contestants(schedule: str, cfg: dict, grid_variants: bool) -> tuple[list[Contestant], list[Contestant]]:
    """The diffusers schedulers (with spacing / Karras variants) and their unisde twins (converted configs)."""
    import diffusers

    from unisde.plugins import list_samplers

    rows = _ddpm_schedulers() if schedule == "ddpm" else _edm_schedulers()
    peers, twins = [], []
    for short, cls_name, options in rows:
        cls = getattr(diffusers, cls_name)
        variants = [({}, "")]
        if grid_variants and schedule == "ddpm":
            variants.append(({"timestep_spacing": "trailing"}, "trailing"))
            if _has_param(cls, "use_karras_sigmas"):
                variants.append(({"use_karras_sigmas": True}, "karras"))
        if grid_variants and schedule == "edm" and cls_name == "EDMEulerScheduler":
            variants.append(({"sigma_schedule": "exponential"}, "exponential"))
        for extra, tag in variants:
            label = short + (f"[{tag}]" if tag else "")

            def make(cls=cls, kw={**options, **extra}):
                return cls.from_config(cfg, **kw)

            peers.append(Contestant("diffusers", label, make))
            # DPM-Solver++(2M/3M) and SDE-DPM-Solver++(2M) have a twin when the dpmsolver++ plugin is installed
            # (solver_order, algorithm_type and the grid come from the config; diffusers' SDE 3M weighs its second
            # difference differently, so it has none).
            algorithm = options.get("algorithm_type", "dpmsolver++")
            dpm2m = (cls_name == "DPMSolverMultistepScheduler" and "dpmsolver++" in list_samplers()
                     and (options.get("solver_order"), algorithm) in ((2, "dpmsolver++"), (3, "dpmsolver++"),
                                                                       (2, "sde-dpmsolver++")))
            if cls_name in _TWIN_CLASSES or dpm2m:
                def make_twin(make=make):
                    # from_config picks the same algorithm and grid (multistep spacings included)
                    return _unified(make().config)

                try:  # a config the unisde twin cannot express (an unsupported option value) has no twin
                    make_twin()
                except ValueError:
                    continue
                twins.append(Contestant("unisde", f"≡{label}", make_twin, twin_of=label))
    return peers, twins


def kdiffusion_available() -> bool:
    try:
        import k_diffusion  # noqa: F401
    except Exception:
        return False
    return True


# ====================================================================================== exact model
class ExactModel:
    """The perfect network a scheduler samples: ``model(model_input, timestep)`` → raw output of the given
    parameterisation, exactly as :meth:`unisde.analytic.GaussianMixture.as_model` defines it, for a timestep
    shared by the whole batch (as every sampling loop feeds it).

    The time t of each timestep value (the inverse of the model's timestep scale, fractional timesteps included)
    and the input scale c_in are computed once per distinct value and cached: contestants share grids, and the
    inversion costs far more than the denoiser on a small batch. ``nfe`` counts every call.
    """

    def __init__(self, distribution, parameterization, schedule):
        self.reference = distribution.as_model(parameterization, schedule)  # validates; defines the convention
        self.distribution = distribution
        self.parameterization = self.reference.parameterization
        self.schedule = schedule
        self.nfe = 0
        self._times: dict = {}

    def _time(self, timestep) -> tuple[torch.Tensor, float]:
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        if isinstance(timestep, torch.Tensor) and timestep.numel() > 1 and not bool((timestep == timestep.reshape(-1)[0]).all()):
            raise ValueError("ExactModel needs one timestep for the whole batch; use unisde.analytic's as_model for per-sample timesteps")
        if value not in self._times:
            t = self.parameterization.t_from_model_time(self.schedule, torch.tensor(value, dtype=torch.float64)).reshape(())
            self._times[value] = (t, float(self.parameterization.input_scale(self.schedule, t)))
        return self._times[value]

    def __call__(self, model_input: torch.Tensor, timestep, *args, **kwargs) -> torch.Tensor:
        t, c_in = self._time(timestep)
        self.nfe += 1
        x = model_input.to(torch.float64) / c_in
        x0 = self.distribution.denoise(x, t, self.schedule)
        out = self.parameterization.from_denoised(x0.to(torch.float64), x, t, self.schedule)
        return out.to(model_input.dtype)


# ====================================================================================== sampling loop
def _accepts(fn, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def steps_for_nfe(scheduler, budget: int) -> int | None:
    """Largest num_inference_steps whose timestep list (one model call each) fits the NFE budget, or None."""
    n = budget
    while n >= 1:
        scheduler.set_timesteps(n)
        calls = len(scheduler.timesteps)
        if calls <= budget:
            return n
        n = min(n - 1, max(1, (n * budget) // calls))
    return None


def sample_loop(scheduler, model, z: torch.Tensor, num_inference_steps: int, seed: int = _SEED_STEPS) -> torch.Tensor:
    """The generic diffusers loop: x = z·init_noise_sigma; for t: x = step(model(scale_model_input(x, t), t), t, x)."""
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    extra = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    x = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **extra).prev_sample
    return x


def _accuracy(cfg: BenchConfig, log) -> tuple[list, list, list]:
    """(records, floors, errors) of the accuracy section."""
    records, floors, errors = [], [], []
    for target_name in cfg.targets:
        dist = make_target(target_name)
        n_samples, budgets, variants = cfg.for_target(target_name)
        directions = projection_directions(dist.dim, cfg.projections)
        reference = dist.sample(n_samples, torch.Generator().manual_seed(_SEED_REFERENCE), dtype=torch.float64)
        pair = []
        for r in range(3):
            a = dist.sample(n_samples, torch.Generator().manual_seed(_SEED_FLOOR + 2 * r), dtype=torch.float64)
            b = dist.sample(n_samples, torch.Generator().manual_seed(_SEED_FLOOR + 2 * r + 1), dtype=torch.float64)
            pair.append(sliced_w2(a, b, directions))
        floor, floor_sd = statistics.fmean(pair), statistics.stdev(pair)
        floors.append({"target": target_name, "floor": floor, "floor_sd": floor_sd, "n": n_samples,
                       "nfe": list(budgets), "grid_variants": variants})
        z = torch.randn(n_samples, *dist.event_shape, generator=torch.Generator().manual_seed(_SEED_NOISE))
        for schedule in cfg.schedules:
            base = base_config(schedule)
            ref_sched = _unified(base)
            model = ExactModel(dist, ref_sched.parameterization, ref_sched.noise_schedule)
            peers, twins = diffusers_contestants(schedule, base, variants)
            contestants = unisde_contestants(schedule, base, variants) + twins + peers
            started = time.perf_counter()
            for c in contestants:
                try:
                    scheduler = c.make()
                except Exception as exc:  # a peer that cannot be built on this schedule is reported, not fatal
                    errors.append({"library": c.library, "sampler": c.label, "schedule": schedule, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                for budget in budgets:
                    try:
                        n = steps_for_nfe(scheduler, budget)
                        while n is not None:
                            model.nfe = 0
                            x = sample_loop(scheduler, model, z, n)
                            if model.nfe <= budget:
                                break
                            n = n - 1 if n > 1 else None  # counted calls exceed the timestep list: fewer steps
                        if n is None:
                            continue  # the sampler's smallest run needs more calls than the budget
                        calls = model.nfe
                    except Exception as exc:
                        errors.append({"library": c.library, "sampler": c.label, "schedule": schedule, "target": target_name,
                                       "nfe": budget, "error": f"{type(exc).__name__}: {exc}"[:300]})
                        continue
                    records.append({"library": c.library, "sampler": c.label, "target": target_name, "schedule": schedule,
                                    "nfe": budget, "model_calls": calls, "num_inference_steps": n,
                                    "distance": sliced_w2(x, reference, directions), "floor": floor, "floor_sd": floor_sd,
                                    **({"twin_of": c.twin_of} if c.twin_of else {})})
            log(f"accuracy: {target_name} / {schedule}: {len(contestants)} contestants in {time.perf_counter() - started:.1f} s")
    return records, floors, errors


# ====================================================================================== overhead
OVERHEAD_PAIRS = (("ddpm", "DDPMScheduler", {}), ("ddim", "DDIMScheduler", {}),
                  ("edm-euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
                  ("edm-heun", "HeunDiscreteScheduler", {"use_karras_sigmas": True}))


def _overhead(cfg: BenchConfig, log) -> list:
    import diffusers

    out = []
    base = base_config("ddpm")
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(cfg.overhead_shape, generator=g)
    model_output = torch.randn(cfg.overhead_shape, generator=g)
    n = 50
    for label, cls_name, extra in OVERHEAD_PAIRS:
        peer = getattr(diffusers, cls_name).from_config(base, **extra)
        mine = _unified(peer.config)
        kinds = [(peer, []), (mine, [])]
        gens = {id(s): torch.Generator().manual_seed(1) for s, _ in kinds}
        kw = {id(s): ({"generator": gens[id(s)]} if _accepts(s.step, "generator") else {}) for s, _ in kinds}
        calls, flip = 0, False
        while calls < cfg.overhead_steps:
            for s, _ in kinds:
                s.set_timesteps(n)
            length = min(len(peer.timesteps), len(mine.timesteps))
            for i in range(length):
                order = kinds[::-1] if flip else kinds
                flip = not flip
                for s, times in order:
                    t = s.timesteps[i]
                    x = s.scale_model_input(sample, t)
                    t0 = time.perf_counter()
                    s.step(model_output, t, x, **kw[id(s)])
                    times.append(time.perf_counter() - t0)
                calls += 1
                if calls >= cfg.overhead_steps:
                    break
        d, u = statistics.median(kinds[0][1]), statistics.median(kinds[1][1])
        out.append({"sampler": label, "diffusers_scheduler": cls_name, "unisde_sampler": mine.config.sampler,
                    "unisde_s": u, "diffusers_s": d, "ratio": u / d, "steps": calls})
        log(f"overhead: {label}: unisde {u * 1e3:.3f} ms, diffusers {d * 1e3:.3f} ms, ratio {u / d:.3f}")
    return out


# ====================================================================================== pipeline and training
BUNDLED_UNET_PATHS = ("unisde/data/digits-unet", "unisde/data/digits", "checkpoints/digits-unet", "checkpoints/digits",
                      "checkpoints/digits-ddpm")


def load_digits_unet() -> tuple[torch.nn.Module, str]:
    """The bundled digits UNet (searched under the repository root and the package), or a random UNet2DModel of
    the training command's default digits config; returns (unet, description)."""
    from diffusers import UNet2DModel

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for rel in BUNDLED_UNET_PATHS:
        path = os.path.join(root, rel)
        for sub in ("unet", None):
            where = os.path.join(path, sub) if sub else path
            if os.path.isfile(os.path.join(where, "config.json")):
                return UNet2DModel.from_pretrained(where), f"bundled digits UNet ({os.path.relpath(where, root)})"
    from unisde.training.loop import default_args, unet_config_from_args

    config = unet_config_from_args(default_args(), 8, 1)
    torch.manual_seed(0)
    return UNet2DModel(**config), ("random UNet2DModel with the digits training config (no bundled digits UNet found "
                                   f"under {', '.join(BUNDLED_UNET_PATHS)})")


def _pipeline(cfg: BenchConfig, log) -> dict:
    from diffusers import DDPMPipeline, DDPMScheduler

    unet, what = load_digits_unet()
    unet.eval()
    peer = DDPMScheduler.from_config(base_config("ddpm"))
    mine = _unified(peer.config)
    pipes = [DDPMPipeline(unet=unet, scheduler=peer), DDPMPipeline(unet=unet, scheduler=mine)]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    times = [[], []]

    def run(i, rep):
        t0 = time.perf_counter()
        pipes[i](batch_size=cfg.pipeline_batch, generator=torch.Generator().manual_seed(rep),
                 num_inference_steps=cfg.pipeline_steps, output_type="np")
        return time.perf_counter() - t0

    with torch.no_grad():
        run(0, 0), run(1, 0)  # warm-up
        for rep in range(cfg.pipeline_reps):
            for i in ((0, 1) if rep % 2 == 0 else (1, 0)):
                times[i].append(run(i, rep))
    d, u = statistics.median(times[0]), statistics.median(times[1])
    log(f"pipeline: unisde {u:.3f} s, diffusers {d:.3f} s, ratio {u / d:.3f}")
    return {"sampler": "ddpm", "diffusers_scheduler": "DDPMScheduler", "unisde_s": u, "diffusers_s": d, "ratio": u / d,
            "num_inference_steps": cfg.pipeline_steps, "batch_size": cfg.pipeline_batch, "unet": what}


def _training(cfg: BenchConfig, log) -> dict:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from unisde.core.schedule import NoiseSchedule
    from unisde.training import make_train_step
    from unisde.training.data import real_digits

    unet, what = load_digits_unet()
    models = [copy.deepcopy(unet), copy.deepcopy(unet)]
    data = real_digits(8)
    batch = data[: cfg.training_batch]
    if batch.shape[0] < cfg.training_batch:
        batch = data[torch.arange(cfg.training_batch) % data.shape[0]]
    batch = batch.to(models[0].dtype)

    def adamw(m):  # train_unconditional.py's defaults
        return torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)

    noise_scheduler = DDPMScheduler.from_config(base_config("ddpm"))
    opt_d = adamw(models[0])
    models[0].train()

    def diffusers_step(clean, generator):
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        model_output = models[0](noisy, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models[0].parameters(), 1.0)
        opt_d.step()
        opt_d.zero_grad()
        return loss.detach()

    unisde_step = make_train_step(models[1], NoiseSchedule.from_diffusers_config(base_config("ddpm")), "epsilon",
                                  loss_weighting="default", noise_distribution="uniform_index", optimizer=adamw(models[1]),
                                  max_grad_norm=1.0)
    steps = [diffusers_step, unisde_step]
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    times = [[], []]
    for i in (0, 1):  # warm-up (allocator, optimizer state)
        steps[i](batch, gens[i])
    for k in range(cfg.training_steps):
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            steps[i](batch, gens[i])
            times[i].append(time.perf_counter() - t0)
    d, u = statistics.median(times[0]), statistics.median(times[1])
    sps_d, sps_u = cfg.training_batch / d, cfg.training_batch / u
    log(f"training: unisde {sps_u:.1f} samples/s, diffusers-style loop {sps_d:.1f} samples/s, ratio {sps_u / sps_d:.3f}")
    return {"ratio": sps_u / sps_d, "unisde_samples_per_s": sps_u, "diffusers_samples_per_s": sps_d,
            "batch_size": cfg.training_batch, "steps": cfg.training_steps, "unet": what}


# ====================================================================================== driver
def run_benchmarks(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run the configured sections; return the JSON-able results (schema of issue 5 plus extra keys)."""
    import diffusers

    from unisde.plugins import list_samplers

    cfg.validate()
    started = time.perf_counter()
    results: dict = {"accuracy": [], "overhead": [], "pipeline": {}, "training": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module doc: one thread, so shared cores cannot distort one side
    try:
        if "accuracy" in cfg.sections:
            records, floors, errors = _accuracy(cfg, log)
            results["accuracy"], results["floors"], results["errors"] = records, floors, errors
        if "overhead" in cfg.sections:
            results["overhead"] = _overhead(cfg, log)
        if "pipeline" in cfg.sections:
            results["pipeline"] = _pipeline(cfg, log)
        if "training" in cfg.sections:
            results["training"] = _training(cfg, log)
    finally:
        torch.set_num_threads(threads)
    results["seconds"] = time.perf_counter() - started
    results["setup"] = {
        "quick": cfg.quick, "nfe": list(cfg.nfe), "targets": list(cfg.targets), "schedules": list(cfg.schedules),
        "n_samples": cfg.n_samples, "n_samples_2d": cfg.n_samples_2d, "nfe_64d": list(cfg.nfe_64d or cfg.nfe), "projections": cfg.projections, "grid_variants": cfg.grid_variants,
        "overhead_steps": cfg.overhead_steps, "overhead_shape": list(cfg.overhead_shape), "samplers": list_samplers(),
        "k_diffusion": kdiffusion_available(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        "threads": 1,
    }
    return results


# ====================================================================================== report
def best_by_library(records: list) -> dict:
    """{(schedule, target, nfe, library): best record}."""
    best: dict = {}
    for r in records:
        key = (r["schedule"], r["target"], r["nfe"], r["library"])
        if key not in best or r["distance"] < best[key]["distance"]:
            best[key] = r
    return best


def agreement_rows(records: list) -> list:
    """Pairs (unisde twin, diffusers scheduler) on the same schedule, target and NFE."""
    peers = {(r["schedule"], r["target"], r["nfe"], r["sampler"]): r for r in records if r["library"] == "diffusers"}
    rows = []
    for r in records:
        if r.get("twin_of"):
            p = peers.get((r["schedule"], r["target"], r["nfe"], r["twin_of"]))
            if p is not None:
                diff = abs(r["distance"] - p["distance"])
                rows.append({"schedule": r["schedule"], "target": r["target"], "nfe": r["nfe"], "diffusers": p["sampler"],
                             "unisde": r["distance"], "peer": p["distance"], "diff": diff, "floor": r["floor"],
                             "agree": diff <= r["floor"]})
    return rows


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.4f}" if x >= 1e-3 else f"{x:.2e}"


def plot_accuracy(results: dict, path: str) -> str | None:
    """Distance vs NFE (log-log) per schedule × target: every contestant faint, each library's best bold, the
    noise floor dashed. Returns the path written (None without accuracy records)."""
    records = results.get("accuracy") or []
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["schedule"], r["target"]) for r in records})
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    colors = {"unisde": "tab:blue", "diffusers": "tab:orange", "k-diffusion": "tab:green"}
    best = best_by_library(records)
    for ax, (schedule, target) in zip(axes.flat, panels):
        mine = [r for r in records if r["schedule"] == schedule and r["target"] == target]
        for (lib, label) in sorted({(r["library"], r["sampler"]) for r in mine}):
            pts = sorted((r["nfe"], r["distance"]) for r in mine if r["library"] == lib and r["sampler"] == label)
            ax.plot(*zip(*pts), color=colors.get(lib, "gray"), alpha=0.15, lw=0.8)
        for lib in sorted({r["library"] for r in mine}):
            pts = sorted((k[2], v["distance"]) for k, v in best.items() if k[0] == schedule and k[1] == target and k[3] == lib)
            ax.plot(*zip(*pts), color=colors.get(lib, "gray"), lw=2.2, marker="o", label=f"best {lib}")
        ax.axhline(mine[0]["floor"], color="k", ls="--", lw=1, label="noise floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{target} · {schedule}")
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel("sliced W₂ to exact samples")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_markdown(results: dict, plot_relpath: str | None = None, command: str = "unisde bench") -> str:
    """BENCHMARKS.md from the results of :func:`run_benchmarks`."""
    setup = results.get("setup", {})
    lines = ["# unisde benchmarks", "",
             f"Generated by `{command}` in {results.get('seconds', 0.0):.0f} s on {setup.get('machine', '?')} "
             f"(torch {setup.get('torch', '?')}, diffusers {setup.get('diffusers', '?')}, Python {setup.get('python', '?')})"
             + (" — **quick** preset; run `unisde bench` for the full benchmark." if setup.get("quick") else "."),
             "Regenerate with `unisde bench [--quick] [--json results.json]`; the method is documented in `unisde/bench.py`.",
             ""]
    records = results.get("accuracy") or []
    if records:
        lines += ["## 1. Accuracy per model evaluation", "",
                  "Every contestant samples the same **exact** model (the analytic denoiser of `unisde.analytic`, as an "
                  "ε-model on diffusers' default DDPM table — `ddpm` — or as the EDM-preconditioned model on "
                  "EDMEulerScheduler's σ range — `edm`), from the same starting noise and the same step generator. "
                  f"Distance: sliced W₂ with {setup.get('projections')} fixed directions between n generated and n exact "
                  "samples (n per target below). *Floor*: the same distance between two independent exact sets "
                  "(mean ± sd of three pairs). NFE counts every model call (the model counts them); each contestant runs "
                  "the largest `num_inference_steps` whose calls fit the budget.",
                  "",
                  f"unisde samplers: {', '.join(setup.get('samplers', []))} (every registered sampler, plugins included"
                  + ("; each also on other time grids" if setup.get("grid_variants") else "") + "). "
                  "`≡X` is the unisde scheduler converted from diffusers scheduler X (`UnifiedScheduler.from_config(X.config)`, "
                  "the same algorithm). diffusers: DDPM, DDIM, Euler, EulerAncestral, Heun, LMS, DPMSolverMultistep "
                  "(2M, 3M, SDE-2M), UniPC on the DDPM table; EDMEuler and EDMDPMSolverMultistep (2M, 3M, SDE-2M) on EDM"
                  + (" — each also with trailing spacing and Karras σ where available." if setup.get("grid_variants") else "."),
                  "",
                  ("k-diffusion: importable, but its samplers are not wired in this benchmark." if setup.get("k_diffusion") else
                   "k-diffusion: not installed (`import k_diffusion` fails), so its samplers are skipped; it is an optional peer."),
                  ""]
        if plot_relpath:
            lines += [f"![distance vs NFE]({plot_relpath})", ""]
        floors = results.get("floors", [])
        if floors:
            lines += ["| target | samples n | NFE budgets | grid variants | noise floor (mean ± sd) |", "|---|---|---|---|---|"]
            lines += [f"| {f['target']} | {f['n']} | {', '.join(map(str, f.get('nfe', [])))} | {'yes' if f.get('grid_variants') else 'no'} | "
                      f"{_fmt(f['floor'])} ± {_fmt(f['floor_sd'])} |" for f in floors]
            lines.append("")
        best = best_by_library(records)
        lines += ["### Best per library", "",
                  "Δ = best unisde − best diffusers (negative: unisde closer to the truth). Δ / floor sd compares the gap "
                  "with the spread of the distance itself between independent exact sets: |Δ / floor sd| ≲ 2 is within "
                  "sampling noise (and a minimum over many stochastic contestants is biased low by that much).", "",
                  "| schedule | target | NFE | best unisde | best diffusers | Δ | Δ / floor sd | unisde ≤ diffusers |",
                  "|---|---|---|---|---|---|---|---|"]
        wins = total = 0
        for schedule, target, nfe in sorted({k[:3] for k in best}, key=lambda k: (k[0], k[1], k[2])):
            u, d = best.get((schedule, target, nfe, "unisde")), best.get((schedule, target, nfe, "diffusers"))
            if u is None or d is None:
                continue
            delta = u["distance"] - d["distance"]
            ok = delta <= 1e-4 * u["floor_sd"]  # equal to float32 rounding (the same algorithm on both sides) is a tie
            wins += ok
            total += 1
            lines.append(f"| {schedule} | {target} | {nfe} | {_fmt(u['distance'])} ({u['sampler']}) | "
                         f"{_fmt(d['distance'])} ({d['sampler']}) | {delta:+.2e} | {delta / u['floor_sd']:+.2f} | "
                         f"{'yes' if ok else '**no**'} |")
        lines += ["", f"unisde's best is at least as close as diffusers' best in {wins} of {total} cells.", ""]
        agree = agreement_rows(records)
        if agree:
            n_ok = sum(r["agree"] for r in agree)
            lines += ["### Same algorithm, same answer", "",
                      "|Δ| ≤ floor: the unisde twin and the diffusers scheduler agree within the noise floor.", "",
                      f"{n_ok} of {len(agree)} pairs agree.", "",
                      "| schedule | target | NFE | diffusers scheduler | diffusers | unisde twin | abs Δ | floor | agree |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in sorted(agree, key=lambda r: (r["schedule"], r["target"], r["diffusers"], r["nfe"])):
                lines.append(f"| {r['schedule']} | {r['target']} | {r['nfe']} | {r['diffusers']} | {_fmt(r['peer'])} | "
                             f"{_fmt(r['unisde'])} | {r['diff']:.1e} | {_fmt(r['floor'])} | {'yes' if r['agree'] else '**no**'} |")
            lines.append("")
        lines += ["### Every contestant", ""]
        nfes = sorted({r["nfe"] for r in records})
        for schedule, target in sorted({(r["schedule"], r["target"]) for r in records}):
            mine = [r for r in records if r["schedule"] == schedule and r["target"] == target]
            lines += [f"**{target} · {schedule}** (distance; floor {_fmt(mine[0]['floor'])}; — = the sampler's smallest run "
                      "exceeds the budget)", "",
                      "| library | sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "|---|---|" + "---|" * len(nfes)]
            table: dict = {}
            for r in mine:
                table.setdefault((r["library"], r["sampler"]), {})[r["nfe"]] = r["distance"]
            for (lib, label), row in sorted(table.items(), key=lambda kv: (kv[0][0] != "unisde", kv[0][1])):
                lines.append(f"| {lib} | {label} | " + " | ".join(_fmt(row[n]) if n in row else "—" for n in nfes) + " |")
            lines.append("")
        errors = results.get("errors") or []
        if errors:
            lines += ["### Runs that failed", "", "| library | sampler | schedule | error |", "|---|---|---|---|"]
            seen = set()
            for e in errors:
                key = (e["library"], e["sampler"], e["schedule"], e["error"])
                if key not in seen:
                    seen.add(key)
                    lines.append(f"| {e['library']} | {e['sampler']} | {e['schedule']} | {e['error'].replace('|', '/')} |")
            lines.append("")
    overhead = results.get("overhead") or []
    if overhead:
        lines += ["## 2. Scheduler overhead (`step()` alone)", "",
                  f"Float32 sample and fixed model output of shape {'×'.join(map(str, setup.get('overhead_shape', [])))}, "
                  f"{overhead[0]['steps']} interleaved calls each (order alternating), median per call, torch single-threaded "
                  f"(see `unisde/bench.py`). Target: ratio ≤ {OVERHEAD_TARGET}.", "",
                  "| algorithm | diffusers scheduler | unisde sampler | unisde (ms) | diffusers (ms) | ratio | target met |",
                  "|---|---|---|---|---|---|---|"]
        for r in overhead:
            lines.append(f"| {r['sampler']} | {r['diffusers_scheduler']} | {r['unisde_sampler']} | {r['unisde_s'] * 1e3:.3f} | "
                         f"{r['diffusers_s'] * 1e3:.3f} | {r['ratio']:.3f} | {'yes' if r['ratio'] <= OVERHEAD_TARGET else '**no**'} |")
        lines.append("")
    pipe = results.get("pipeline") or {}
    if pipe:
        lines += ["## 3. Pipeline", "",
                  f"DDPMPipeline, {pipe['num_inference_steps']} steps, batch {pipe['batch_size']}, {pipe['unet']}; "
                  f"UnifiedScheduler(sampler=ddpm) vs DDPMScheduler, repetitions interleaved, median.", "",
                  "| unisde (s) | diffusers (s) | ratio | target ≤ 1.02 |", "|---|---|---|---|",
                  f"| {pipe['unisde_s']:.3f} | {pipe['diffusers_s']:.3f} | {pipe['ratio']:.3f} | "
                  f"{'yes' if pipe['ratio'] <= PIPELINE_TARGET else '**no**'} |", ""]
    train = results.get("training") or {}
    if train:
        lines += ["## 4. Training throughput", "",
                  f"Batch {train['batch_size']} of 8×8 digits, {train['unet']}, AdamW as train_unconditional.py, "
                  f"{train['steps']} interleaved steps each, median. unisde: `unisde.training.make_train_step` (ε, "
                  "uniform_index); diffusers: the train_unconditional.py loop body.", "",
                  "| unisde (samples/s) | diffusers loop (samples/s) | ratio | target ≥ 0.97 |", "|---|---|---|---|",
                  f"| {train['unisde_samples_per_s']:.1f} | {train['diffusers_samples_per_s']:.1f} | {train['ratio']:.3f} | "
                  f"{'yes' if train['ratio'] >= TRAINING_TARGET else '**no**'} |", ""]
    lines += [f"Total run time: {results.get('seconds', 0.0):.1f} s.", ""]
    return "\n".join(lines)
