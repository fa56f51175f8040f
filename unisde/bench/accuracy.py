r"""The accuracy section: every contestant samples the exact model of each target; the sliced W₂ distance of its
samples to one fixed exact set, against the noise floor of two independent exact sets."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import torch

from unisde.bench.contestants import (
    _unified,
    base_config,
    diffusers_contestants,
    sample_loop,
    steps_for_nfe,
    unisde_contestants,
)
from unisde.bench.metrics import projection_directions, sliced_w2
from unisde.bench.targets import ExactModel, make_target

if TYPE_CHECKING:
    from unisde.bench.run import BenchConfig

_SEED_NOISE = 1234        # starting noise z (shared by every contestant)

_SEED_REFERENCE = 2024    # the exact reference set Y
_SEED_FLOOR = 7000        # independent exact sets for the noise floor


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
