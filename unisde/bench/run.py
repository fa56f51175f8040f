r"""What to run (:class:`BenchConfig` and its presets) and the driver :func:`run_benchmarks`."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from unisde._tensor import unknown_name_error
from unisde.bench.accuracy import _accuracy
from unisde.bench.contestants import SCHEDULES, kdiffusion_available
from unisde.bench.optimized import CHECKPOINT_FITS, FULL_FIT, QUICK_FIT, FitSettings
from unisde.bench.speed import (
    MEMORY_SHAPE,
    OVERHEAD_SHAPES,
    PIPELINE_MODELS,
    QUICK_OVERHEAD_PAIRS,
    _memory,
    _overhead,
    _pipeline,
    _training,
    check_device,
    overhead_pairs,
    steady_heap,
)
from unisde.bench.targets import CHECKPOINTS, TARGETS

SECTIONS = ("accuracy", "overhead", "pipeline", "training")
FULL_NFE = (4, 5, 6, 8, 10, 20, 50)  # the NFE at which the issue sets accuracy targets (unisde.bench.accuracy)
QUICK_NFE = (10,)


def default_workers() -> int:
    """Worker processes of the full and medium presets' accuracy section: two, or one on a one-core machine."""
    return min(2, os.cpu_count() or 1)


@dataclass
class BenchConfig:
    """What to run. ``quick()`` and ``full()`` are the two presets of ``unisde bench``."""

    nfe: tuple = FULL_NFE
    targets: tuple = TARGETS
    schedules: tuple = SCHEDULES
    n_samples: int = 2000  # samples per distance on the 64-D targets
    n_samples_2d: int = 20000  # … on the 2-D target (cheap; its floor is dominated by mode-weight noise)
    projections: int = 256  # random slicing directions on the 64-D targets (Monte Carlo over the sphere)
    # evenly spaced slicing angles on the 2-D target: a periodic trapezoid rule, within 1e-5 (relative) of the
    # integral over every direction (256: 2e-7) where the distance's sampling noise is ~40 % (floor sd / floor)
    projections_2d: int = 64
    grid_variants: bool = True  # also try other time grids / spacings for every contestant
    nfe_64d: tuple | None = None  # NFE budgets on the 64-D targets (None: ``nfe``)
    grid_variants_64d: bool | None = None  # grid variants on the 64-D targets (None: ``grid_variants``)
    # On the mixtures a stochastic unisde sampler's grid variants are raced (sampling metric) up to this NFE only
    # (None: at every NFE). At NFE 50 their sliced W2 was within 3 sd of its noise floor for 70-83 % of them (full
    # preset, Dec 2026): the floor, not the grid, decided, at ~0.7 s of one core each on the 64-D mixture
    sampled_variants_max_nfe: int | None = 20
    n_trajectory: int | None = None  # fixed batch of the trajectory metric (None: 1024 on 2-D, 256 on 64-D)
    overhead_pairs: tuple | None = None  # labels of unisde.bench.speed.OVERHEAD_PAIRS (None: every twin)
    overhead_shapes: tuple = OVERHEAD_SHAPES
    overhead_inference_steps: int = 20  # num_inference_steps of each timed loop
    overhead_loops: int = 15  # timed loops per pair and size (at least one; fewer once overhead_seconds have passed)
    overhead_seconds: float = 2.0
    memory_shape: tuple = MEMORY_SHAPE
    pipeline_steps: int = 50
    pipeline_batch: int = 16
    pipeline_reps: int = 11  # interleaved repeats; the median of 5 moved by ±0.03 between runs
    training_batch: int = 64
    training_steps: int = 30
    sections: tuple = SECTIONS
    quick: bool = False
    fit: FitSettings | None = FULL_FIT  # optimised-grid contestants (unisde.bench.optimized); None: none
    # processes running the accuracy section's cells (unisde.bench.accuracy._in_workers; each single-threaded, the
    # same records as one process); the speed sections always run alone, after it. The workers are spawned, so a
    # script calling run_benchmarks with workers > 1 needs multiprocessing's `if __name__ == "__main__":` guard
    workers: int = 1
    # where the speed sections run ("cpu", "cuda", "cuda:1"); off the CPU: absolute step times and the pipeline
    # ratio at SD-latent size (:func:`unisde.bench.speed.device_settings`), each timed call synchronised
    device: str = "cpu"
    pipeline_model: str = "digits"  # "digits": the bundled 8×8 UNet; "sd-latent": a random 4×64×64 UNet
    # The trained checkpoint targets (unisde.bench.targets.CHECKPOINTS: digits-vp, digits-flow), each raced on the
    # schedule it was trained with (unisde.bench.accuracy.measure_checkpoint). A float64 call of the digits UNet
    # costs ~2 ms per sample single-threaded (4× float32), and each reference start ~1700 calls: these defaults keep
    # the two checkpoint jobs near 5 core-minutes at the full preset.
    checkpoint_nfe: tuple | None = None  # NFE budgets (None: ``nfe``)
    # starts of the trajectory batch: on 4 starts digits-flow's NFE 4/6 ratios read 0.67/0.60, on 8 0.76/0.68, on 16
    # 0.74/0.74 (a few starts that change mode dominate the RMS). 8, with the race's network in float32 (4-6x faster
    # per sample; what that moves a score by is measured and reported) and the reference PF-ODE solves in float64: on
    # 16 the solves (~50 s per distinct start) took digits-vp's job from 510 to 750 s
    checkpoint_trajectory: int = 8
    checkpoint_race_dtype: str = "float32"  # the network's dtype in the contestants' trajectory runs
    checkpoint_samples: int = 128  # starts of the Fréchet-distance batch (the trajectory batch is its first rows)
    checkpoint_fd_dtype: str = "float32"  # the network's dtype in the FD runs (as a pipeline runs it)
    checkpoint_twin_nfe: tuple | None = None  # NFE at which unisde twins are raced on them (None: every NFE)
    checkpoint_stochastic_nfe: tuple | None = (10,)  # NFE at which stochastic contestants get their FD (None: all)
    checkpoint_spacing: str | None = "trailing"  # timestep_spacing of the DDPM-table race (None: diffusers' leading)
    checkpoint_grid_variants: bool = False  # grid variants on the checkpoints (off: their cost)
    # the reference solve's rtol = atol, and the looser check solve's: on the digits UNets the error grows ~rtol^0.85
    # (4–6e-4 at 1e-6 against a 1e-7 solve), so a 3× looser check bounds it (a 10× one, ~1e-2, would not resolve NFE 50)
    checkpoint_rtol: tuple = (1e-6, 3e-6)
    checkpoint_start_rtol: float = 1e-6  # a start within this (relative) of a solved one reuses its reference
    # optimised-grid contestants on the checkpoints: one FitSettings for both, one per checkpoint name (a name left
    # out: none there), or None (none)
    checkpoint_fit: FitSettings | dict | None = field(default_factory=lambda: dict(CHECKPOINT_FITS))
    contestants: tuple | None = None  # race only the contestants with these labels (None: every one; tests)

    @classmethod
    def full(cls, **overrides) -> "BenchConfig":
        """Every target, schedule and NFE with grid variants; the accuracy cells on up to two cores."""
        return cls(**{"workers": default_workers(), **overrides})

    @classmethod
    def medium(cls, **overrides) -> "BenchConfig":
        """Every NFE with grid variants on the 2-D target (5000 samples); on the 64-D targets 500 samples, NFE 5, 10,
        20, 50 and default grids; the trained checkpoints at NFE 5, 10, 20, 50."""
        base = dict(
            n_samples=500,
            n_samples_2d=5000,
            nfe_64d=(5, 10, 20, 50),
            checkpoint_nfe=(5, 10, 20, 50),
            grid_variants_64d=False,
            workers=default_workers(),
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def quick_preset(cls, **overrides) -> "BenchConfig":
        """``unisde bench --quick`` (≤ 60 s): NFE 10 on the 2-D mixture, 10 and 20 on the 64-D Gaussian, default grids,
        small samples and a reduced optimised-grid fit. No trained-checkpoint target (a float64 UNet race does not fit
        the minute; ``--targets digits-vp,digits-flow`` adds them)."""
        base = dict(
            nfe=QUICK_NFE,
            nfe_64d=(10, 20),
            targets=("gaussian-8x8", "mixture-2d"),
            n_samples=500,
            n_samples_2d=2000,
            n_trajectory=256,
            projections=64,
            grid_variants=False,
            overhead_pairs=QUICK_OVERHEAD_PAIRS,
            overhead_shapes=(OVERHEAD_SHAPES[0],),
            overhead_loops=7,
            overhead_seconds=0.5,
            pipeline_steps=10,
            pipeline_batch=8,
            pipeline_reps=11,
            training_batch=32,
            training_steps=6,
            quick=True,
            fit=QUICK_FIT,
        )
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
        for key in (
            "n_samples",
            "n_samples_2d",
            "projections",
            "projections_2d",
            "overhead_inference_steps",
            "overhead_loops",
            "pipeline_steps",
            "pipeline_batch",
            "pipeline_reps",
            "training_batch",
            "training_steps",
            "workers",
            "checkpoint_trajectory",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        overhead_pairs(self.overhead_pairs)  # unknown labels: a ValueError listing the valid ones
        check_device(self.device)  # a device that is not here: a ValueError naming it, before any work
        if self.pipeline_model not in PIPELINE_MODELS:
            raise unknown_name_error("pipeline model", self.pipeline_model, PIPELINE_MODELS)
        if not self.overhead_shapes or any(
            not isinstance(s, (tuple, list)) or not s or any(not isinstance(n, int) or n < 1 for n in s)
            for s in (*self.overhead_shapes, self.memory_shape)
        ):
            raise ValueError(
                f"overhead_shapes and memory_shape must be shapes of positive integers, got "
                f"{list(self.overhead_shapes)} and {self.memory_shape}"
            )
        if not self.overhead_seconds > 0:
            raise ValueError(f"overhead_seconds must be > 0, got {self.overhead_seconds!r}")
        for key in ("n_trajectory", "sampled_variants_max_nfe"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be None or a positive integer, got {value!r}")
        if min(self.n_samples, self.n_samples_2d) < 2:
            raise ValueError(f"n_samples must be at least 2, got {min(self.n_samples, self.n_samples_2d)}")
        if not isinstance(self.checkpoint_samples, int) or self.checkpoint_samples < 2:
            raise ValueError(f"checkpoint_samples must be an integer >= 2, got {self.checkpoint_samples!r}")
        if self.checkpoint_nfe is not None and (
            not self.checkpoint_nfe or any(not isinstance(n, int) or n < 1 for n in self.checkpoint_nfe)
        ):
            raise ValueError(
                f"checkpoint_nfe must be a non-empty list of positive integers, got {list(self.checkpoint_nfe)}"
            )
        for key in ("checkpoint_fd_dtype", "checkpoint_race_dtype"):
            if getattr(self, key) not in ("float32", "float64"):
                raise ValueError(f"{key} must be 'float32' or 'float64', got {getattr(self, key)!r}")
        if self.checkpoint_spacing not in (None, "leading", "trailing", "linspace"):
            raise ValueError(
                f"checkpoint_spacing must be None, 'leading', 'trailing' or 'linspace', got {self.checkpoint_spacing!r}"
            )
        for key in ("checkpoint_twin_nfe", "checkpoint_stochastic_nfe"):
            value = getattr(self, key)
            if value is not None and any(not isinstance(n, int) or n < 1 for n in value):
                raise ValueError(f"{key} must be None or a list of positive integers, got {list(value)}")
        if len(self.checkpoint_rtol) != 2 or not 0 < self.checkpoint_rtol[0] < self.checkpoint_rtol[1] < 1:
            raise ValueError(
                f"checkpoint_rtol must be (rtol, check_rtol) with 0 < rtol < check_rtol < 1, got {self.checkpoint_rtol}"
            )
        if self.nfe_64d is not None and (
            not self.nfe_64d or any(not isinstance(n, int) or n < 1 for n in self.nfe_64d)
        ):
            raise ValueError(f"nfe_64d must be a non-empty list of positive integers, got {list(self.nfe_64d)}")
        fits = self.checkpoint_fit if isinstance(self.checkpoint_fit, dict) else {None: self.checkpoint_fit}
        for name, settings in fits.items():
            if name is not None and name not in CHECKPOINTS:
                raise unknown_name_error("checkpoint of checkpoint_fit", name, tuple(CHECKPOINTS))
            if settings is not None and not isinstance(settings, FitSettings):
                raise ValueError(f"checkpoint_fit must hold FitSettings, got {type(settings).__name__}")
            if settings is not None and settings.network_dtype not in ("float32", "float64"):
                raise ValueError(f"network_dtype must be 'float32' or 'float64', got {settings.network_dtype!r}")

    def for_target(self, name: str) -> tuple[int, tuple, bool]:
        """(samples, NFE budgets, grid variants) used on target ``name``."""
        if name in CHECKPOINTS:
            return self.checkpoint_samples, tuple(self.checkpoint_nfe or self.nfe), self.checkpoint_grid_variants
        if name == "mixture-2d":
            return self.n_samples_2d, tuple(self.nfe), self.grid_variants
        variants = self.grid_variants if self.grid_variants_64d is None else self.grid_variants_64d
        return self.n_samples, tuple(self.nfe_64d or self.nfe), variants

    def projections_for(self, name: str) -> int:
        """Slicing directions of the sampling metric on target ``name``."""
        return self.projections_2d if name == "mixture-2d" else self.projections


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def describe_fit(fit) -> dict | None:
    """``BenchConfig.checkpoint_fit`` as the results' setup keeps it: a FitSettings' fields, a mapping of them by
    checkpoint name, or None."""
    if isinstance(fit, dict):
        return {name: settings.describe() for name, settings in fit.items()}
    return None if fit is None else fit.describe()


def run_benchmarks(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run the configured sections; return the JSON-able results (schema of issue 5 plus extra keys)."""
    import diffusers

    from unisde.plugins import list_samplers

    cfg.validate()
    started = time.perf_counter()
    results: dict = {"accuracy": [], "overhead": [], "memory": [], "pipeline": {}, "training": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see unisde.bench's doc: one thread, so shared cores cannot distort one side
    try:
        if "accuracy" in cfg.sections:
            records, floors, errors = _accuracy(cfg, log)
            results["accuracy"], results["floors"], results["errors"] = records, floors, errors
        heap = None
        if any(name in cfg.sections for name in ("overhead", "pipeline", "training")):
            heap = steady_heap()  # after the accuracy section: its workers are other processes anyway
            log(f"speed sections: {heap}")
        if "overhead" in cfg.sections:
            results["overhead"] = _overhead(cfg, log)
            results["memory"] = _memory(cfg, log)
        if "pipeline" in cfg.sections:
            results["pipeline"] = _pipeline(cfg, log)
        if "training" in cfg.sections:
            results["training"] = _training(cfg, log)
    finally:
        torch.set_num_threads(threads)
    results["seconds"] = time.perf_counter() - started
    results["setup"] = {
        "quick": cfg.quick,
        "nfe": list(cfg.nfe),
        "targets": list(cfg.targets),
        "schedules": list(cfg.schedules),
        "n_samples": cfg.n_samples,
        "n_samples_2d": cfg.n_samples_2d,
        "nfe_64d": list(cfg.nfe_64d or cfg.nfe),
        "projections": cfg.projections,
        "projections_2d": cfg.projections_2d,
        "grid_variants": cfg.grid_variants,
        "sampled_variants_max_nfe": cfg.sampled_variants_max_nfe,
        "optimized_grids": cfg.fit.describe() if cfg.fit is not None else None,
        "contestants": list(cfg.contestants) if cfg.contestants is not None else None,
        "checkpoints": {
            "nfe": list(cfg.checkpoint_nfe or cfg.nfe),
            "samples": cfg.checkpoint_samples,
            "trajectory": cfg.checkpoint_trajectory,
            "fd_dtype": cfg.checkpoint_fd_dtype,
            "race_dtype": cfg.checkpoint_race_dtype,
            "twin_nfe": None if cfg.checkpoint_twin_nfe is None else list(cfg.checkpoint_twin_nfe),
            "stochastic_nfe": None if cfg.checkpoint_stochastic_nfe is None else list(cfg.checkpoint_stochastic_nfe),
            "spacing": cfg.checkpoint_spacing,
            "grid_variants": cfg.checkpoint_grid_variants,
            "reference_rtol": list(cfg.checkpoint_rtol),
            "start_rtol": cfg.checkpoint_start_rtol,
            "optimized_grids": describe_fit(cfg.checkpoint_fit),
        },
        "overhead_pairs": [p[0] for p in overhead_pairs(cfg.overhead_pairs)],
        "overhead_shapes": [list(s) for s in cfg.overhead_shapes],
        "overhead_inference_steps": cfg.overhead_inference_steps,
        "memory_shape": list(cfg.memory_shape),
        "pipeline_reps": cfg.pipeline_reps,
        "samplers": list_samplers(),
        "k_diffusion": kdiffusion_available(),
        "k_diffusion_version": _version("k-diffusion") if kdiffusion_available() else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        "threads": 1,
        "workers": cfg.workers if "accuracy" in cfg.sections else 1,
        "device": cfg.device,
        "device_name": torch.cuda.get_device_name(torch.device(cfg.device)) if cfg.device != "cpu" else None,
        "pipeline_model": cfg.pipeline_model,
        "heap": heap,
    }
    return results
