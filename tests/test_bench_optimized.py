"""Optimised-grid contestants of `unisde bench` (issue 12): fitted on calibration starts of their own, raced on
starts they never saw, stored as a valid `optimized` grid that a scheduler config carries.

The accuracy section runs here with only the optimised contestants (the other contestant lists patched empty), on
the 2-D mixture, the DDPM table and NFE 5, with a small fit: a few seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from unisde.bench import accuracy
from unisde.bench.optimized import FitSettings, label
from unisde.bench.run import BenchConfig
from unisde.bench.targets import make_target

SMALL = FitSettings(samplers=(("unipc", {}),), calibration_2d=48, holdout=16, candidates=20, starts=("karras",))


class _Spy:
    """Records the rows every exact-denoiser call sees at t = 1 (the first evaluation of a fit's grids, of its
    reference solve, and of the raced grid, which all start at t = 1), by phase: fitting or racing."""

    def __init__(self, dist):
        self.denoise, self.phase = dist.denoise, "race"
        self.rows = {"fit": [], "race": []}

    def __call__(self, x, t, schedule):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        first = t == 1.0
        if bool(first.any()):
            self.rows[self.phase].append(x.reshape(x.shape[0], -1)[first].to(torch.float64))
        return self.denoise(x, t, schedule)


@pytest.fixture(scope="module")
def raced():
    dist = make_target("mixture-2d")
    spy = _Spy(dist)
    fitted = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dist, "denoise", spy)
        mp.setattr(accuracy, "make_target", lambda name: dist)
        mp.setattr(accuracy, "unisde_contestants", lambda *args: [])
        mp.setattr(accuracy, "diffusers_contestants", lambda *args: ([], []))
        mp.setattr(accuracy, "kdiffusion_contestants", lambda *args: ([], []))
        original = accuracy.optimized_contestants

        def fitting(*args, **kwargs):
            spy.phase = "fit"
            try:
                out = original(*args, **kwargs)
            finally:
                spy.phase = "race"
            fitted.extend(out)
            return out

        mp.setattr(accuracy, "optimized_contestants", fitting)
        cfg = BenchConfig.quick_preset(
            targets=("mixture-2d",),
            schedules=("ddpm",),
            nfe=(5, 20),
            n_trajectory=64,
            sections=("accuracy",),
            fit=SMALL,
        )
        records, _, errors = accuracy._accuracy(cfg, lambda msg: None)
    return records, errors, fitted, spy


def _distances(a, b):
    return (a[:, None] - b[None]).pow(2).sum(-1).sqrt()  # exact (torch.cdist's matrix form rounds at ~1e-8)


def test_the_optimised_contestant_is_scored_on_starts_it_was_not_fitted_on(raced):
    records, errors, fitted, spy = raced
    assert not errors, errors
    assert len(fitted) == 1 and fitted[0].budget == 5  # fitted at NFE ≤ max_nfe only, not at 20
    (rec,) = [r for r in records if r["sampler"] == label("unipc", {})]
    assert rec["library"] == "unisde" and rec["nfe"] == 5 and rec["model_calls"] <= 5
    assert rec["metric"] == "trajectory" and rec["distance"] > 0
    fit = rec["fit"]
    seeds = {accuracy._SEED_TRAJECTORY, accuracy._SEED_NOISE, accuracy._SEED_REFERENCE}
    assert fit["seed"] == SMALL.seed and fit["seed"] not in seeds and fit["calibration"] == 48
    # The starts themselves: what the fit's denoiser saw at t = 1 (calibration + its own held-out batch) and what
    # the race's did (the bench's fixed batch and its two zero rows) share no row.
    fit_rows = torch.unique(torch.cat(spy.rows["fit"]), dim=0)
    race_rows = torch.unique(torch.cat(spy.rows["race"]), dim=0)
    assert fit_rows.shape[0] == 48 + 16 and race_rows.shape[0] == 64 + 1
    assert float(_distances(fit_rows, race_rows).min()) > 1e-3
    z_race = torch.randn(64, 2, generator=torch.Generator().manual_seed(accuracy._SEED_TRAJECTORY), dtype=torch.float64)
    assert float(_distances(z_race, race_rows).min(1).values.max()) < 1e-12  # the race scored the bench's batch


def test_the_fitted_grid_is_a_valid_optimized_grid_that_a_scheduler_config_round_trips(raced, tmp_path):
    from unisde import UnifiedScheduler
    from unisde.grids import get_grid

    records, _, fitted, _ = raced
    scheduler, fit = fitted[0].scheduler, fitted[0].fit
    times = fit["times"]
    assert get_grid("optimized").validate({"times": times}) == {"times": times}
    assert times[0] == 1.0 and all(1.0 >= a > b > 0 for a, b in zip(times, times[1:]))
    assert all(abs(t * 1000 - round(t * 1000)) < 1e-9 for t in times)  # on training indices of the table
    assert scheduler.config.time_grid == "optimized" and scheduler.config.time_grid_options == {"times": times}
    scheduler.set_timesteps(len(times))
    again = UnifiedScheduler.from_config(json.loads(scheduler.to_json_string()))
    scheduler.save_pretrained(tmp_path)
    loaded = UnifiedScheduler.from_pretrained(tmp_path)
    for other in (again, loaded):
        assert (other.config.sampler, other.config.time_grid) == ("unipc", "optimized")
        other.set_timesteps(len(times))
        assert other.timesteps.tolist() == scheduler.timesteps.tolist()
        assert other._sampler.grid == scheduler._sampler.grid == times + [0.0]
    with pytest.raises(ValueError, match=f"stores {len(times)} evaluation times"):
        loaded.set_timesteps(len(times) + 1)


def test_a_fit_is_shared_by_configs_with_the_same_noise_schedule():
    # the rectified flow with shift 1 and 3: the same forward process, so one fit serves both configs
    from unisde.bench.accuracy import accuracy_config
    from unisde.bench.contestants import _unified
    from unisde.bench.optimized import optimized_contestants

    dist, fits = make_target("mixture-2d"), {}
    runs = []
    for schedule in ("flow", "flow-shift3"):
        cfg = accuracy_config(schedule)
        runs.append(optimized_contestants(cfg, dist, _unified(cfg).noise_schedule, (4, 20), SMALL, fits))
    (first,), (second,) = runs
    assert len(fits) == 1 and first.budget == second.budget == 4
    assert first.fit["seconds"] > 0 and "reused" not in first.fit
    assert second.fit["reused"] and second.fit["seconds"] == 0.0 and second.fit["times"] == first.fit["times"]
    assert first.scheduler.config.shift != second.scheduler.config.shift  # each raced from its own config
    first.scheduler.set_timesteps(4)
    second.scheduler.set_timesteps(4)
    assert first.scheduler._sampler.grid == second.scheduler._sampler.grid


def test_gaussian_targets_also_fit_the_high_nfe_samplers_up_to_their_own_limit():
    # above max_nfe only samplers_gaussian_high, only on a Gaussian target, only up to max_nfe_gaussian (the 2-D
    # mixture's race at NFE 20 above fits nothing: test_the_optimised_contestant_is_scored_on_starts_it_was_not_…)
    from dataclasses import replace

    from unisde.bench.accuracy import accuracy_config
    from unisde.bench.contestants import _unified
    from unisde.bench.optimized import optimized_contestants

    settings = replace(
        SMALL,
        samplers_gaussian_high=(("dpmsolver++", {}),),
        max_nfe_gaussian=12,
        calibration_gaussian=8,
        holdout=4,
        descents_gaussian=1,
        starts=(),
    )
    cfg = accuracy_config("flow")
    gaussian = make_target("gaussian-8x8")
    fitted = optimized_contestants(cfg, gaussian, _unified(cfg).noise_schedule, (4, 12, 20), settings)
    assert [(f.budget, f.contestant.label) for f in fitted] == [(4, label("unipc", {})), (12, label("dpmsolver++", {}))]
    high = fitted[1]
    assert not isinstance(high.scheduler, Exception), high.scheduler
    assert high.fit["holdout_error"] <= high.fit["default_holdout_error"]
    high.scheduler.set_timesteps(len(high.fit["times"]))
    assert len(high.scheduler.timesteps) == 12 and high.scheduler.config.time_grid == "optimized"


def test_a_samplers_budgets_select_the_nfe_it_is_fitted_at():
    # (name, options) at every NFE <= max_nfe; (name, options, most) up to most; (name, options, (NFE, ...)) at those
    from dataclasses import replace

    from unisde.bench.optimized import fitted_at

    settings = replace(
        SMALL, samplers=(("unipc", {}), ("gradient_estimation", {}, 6), ("ipndm", {}, (8, 10))), max_nfe=10
    )
    chosen = {n: [e[0] for e in settings.samplers if fitted_at(e, n, settings)] for n in (4, 6, 8, 10, 20)}
    assert chosen == {
        4: ["unipc", "gradient_estimation"],
        6: ["unipc", "gradient_estimation"],
        8: ["unipc", "ipndm"],
        10: ["unipc", "ipndm"],
        20: [],
    }


def test_checkpoint_fits_are_chosen_per_checkpoint_validated_and_reported():
    from dataclasses import replace

    from unisde.bench.optimized import settings_for
    from unisde.bench.report import checkpoint_fit_text
    from unisde.bench.run import describe_fit
    from unisde.bench.targets import CHECKPOINTS

    fits = BenchConfig().checkpoint_fit
    assert set(fits) == set(CHECKPOINTS)
    assert all(settings.network_dtype == "float32" for settings in fits.values())
    assert settings_for(fits, "digits-vp").samplers[0] == ("unipc", {}, 8)
    assert settings_for(SMALL, "digits-vp") is SMALL and settings_for(None, "digits-vp") is None
    assert settings_for({"digits-flow": SMALL}, "digits-vp") is None  # a checkpoint left out: no fit there
    with pytest.raises(ValueError, match="'digits'.*digits-vp"):
        BenchConfig(checkpoint_fit={"digits": SMALL}).validate()
    with pytest.raises(ValueError, match="network_dtype must be 'float32' or 'float64', got 'float16'"):
        BenchConfig(checkpoint_fit=replace(SMALL, network_dtype="float16")).validate()
    with pytest.raises(ValueError, match="checkpoint_fit must hold FitSettings, got dict"):
        BenchConfig(checkpoint_fit={"digits-vp": {"calibration": 8}}).validate()
    text = checkpoint_fit_text(describe_fit(fits))
    assert (
        "digits-flow: gradient_estimation[grid=optimized] (NFE ≤ 6), ipndm[grid=optimized] (NFE 8, 10) at NFE ≤ 10, "
        "64 calibration starts, 30 candidate times, the network in float32" in text
    )
    assert "unipc[solver_order=3, grid=optimized] (NFE 6)" in text
    assert "descents from the 2 best of the DP path, the default grid and the uniform_lambda, karras" in text
    assert checkpoint_fit_text(describe_fit(SMALL)).startswith("each checkpoint: unipc[grid=optimized] at NFE ≤ 10")


def test_a_checkpoint_is_fitted_on_its_float32_network_when_asked():
    # network_dtype="float32": every model call of the fit goes to the checkpoint's float32 UNet, none to the float64
    # one that the race scores with (and "float64", the default, the other way round)
    from dataclasses import replace

    from unisde.bench.optimized import fit_grid
    from unisde.bench.targets import Checkpoint

    dist = Checkpoint("digits-flow")
    calls = {"float32": 0, "float64": 0}
    hooks = [
        net.register_forward_hook(lambda module, args, out, key=key: calls.__setitem__(key, calls[key] + 1))
        for net, key in ((dist.network32, "float32"), (dist.network, "float64"))
    ]
    tiny = replace(
        SMALL, calibration=2, holdout=2, candidates=8, starts=(), reference_rtol=0.1, extra={"max_sweeps": 1}
    )
    try:
        result, fit = fit_grid(dist, dist.schedule, "ddim", {}, 3, replace(tiny, network_dtype="float32"))
        assert calls["float32"] > 0 and calls["float64"] == 0
        assert fit["calibration"] == 2 and len(fit["times"]) == 3 and math.isfinite(fit["holdout_error"])
        calls.update(float32=0)
        fit_grid(dist, dist.schedule, "ddim", {}, 3, tiny)
        assert calls["float64"] > 0 and calls["float32"] == 0
    finally:
        for hook in hooks:
            hook.remove()


def test_a_weights_entry_races_the_fitted_weights_beside_the_sampler_whose_grid_they_were_fitted_on():
    from dataclasses import replace

    from unisde.bench.accuracy import accuracy_config
    from unisde.bench.contestants import _unified
    from unisde.bench.optimized import fits_weights, markdown_lines, optimized_contestants, weights_label

    settings = replace(
        SMALL, samplers=(("gradient_estimation", {}), ("unipc", {})), weights=(("gradient_estimation", {}, 4),)
    )
    assert fits_weights("gradient_estimation", {}, 4, settings) and not fits_weights(
        "gradient_estimation", {}, 5, settings
    )
    assert not fits_weights("unipc", {}, 4, settings)
    dist, fits, runs = make_target("mixture-2d"), {}, []
    for schedule in ("flow", "flow-shift3"):
        cfg = accuracy_config(schedule)
        runs.append(optimized_contestants(cfg, dist, _unified(cfg).noise_schedule, (4, 5), settings, fits))
    first = runs[0]
    name = weights_label("gradient_estimation", {})
    assert name == "fitted[base=gradient_estimation, grid=optimized]"
    assert [(f.budget, f.contestant.label) for f in first] == [
        (4, label("gradient_estimation", {})),
        (4, name),
        (4, label("unipc", {})),
        (5, label("gradient_estimation", {})),
        (5, label("unipc", {})),
    ]
    base, weights = first[0], first[1]
    for f in (base, weights):
        assert not isinstance(f.scheduler, Exception), f.scheduler
    result, fit = fits[next(k for k in fits if k[2] == name and k[3] == 4)]
    # the base is the grid fitted before the weights, the weights run on theirs; the seconds add up to the fit's
    assert base.fit["times"] == result.weights_base["times"] and weights.fit["times"] == result.times
    assert base.fit["holdout_error"] == pytest.approx(result.weights_base["holdout_error"] * math.sqrt(2))
    assert base.fit["seconds"] + weights.fit["seconds"] == pytest.approx(fit["seconds"])
    assert weights.fit["calibration_error"] <= base.fit["calibration_error"] * (1 + 1e-12)
    assert weights.fit["weights"] == result.sampler_options["weights"]
    assert weights.scheduler.config.sampler == "fitted" and base.scheduler.config.sampler == "gradient_estimation"
    weights.scheduler.set_timesteps(len(weights.fit["times"]))
    assert weights.scheduler._sampler.opts["weights"] == tuple(map(tuple, result.sampler_options["weights"]))
    # the shifted flow reuses both (one fit), each raced from its own config
    again = runs[1]
    assert [f.contestant.label for f in again] == [f.contestant.label for f in first]
    assert again[0].fit["reused"] and again[1].fit["reused"] and again[1].fit["seconds"] == 0.0
    assert again[1].fit["weights"] == weights.fit["weights"]
    # the report says what the weights entries did
    records = [
        {
            "schedule": "flow",
            "target": "mixture-2d",
            "nfe": f.budget,
            "sampler": f.contestant.label,
            "distance": 0.1,
            "fit": f.fit,
        }
        for f in first
    ]
    text = "\n".join(markdown_lines({"setup": {"optimized_grids": settings.describe()}, "accuracy": records}))
    assert (
        "then on the grids of gradient_estimation[grid=optimized] (NFE ≤ 4) the weights of the multistep sampler"
        in text
    )


def test_weights_entries_must_name_a_fitted_sampler():
    from dataclasses import replace

    with pytest.raises(ValueError, match="weights entry 'ipndm'.*is not one of the samplers fitted"):
        replace(SMALL, weights=(("ipndm", {}, 6),))
    with pytest.raises(ValueError, match="weights entry 'unipc' with options {'solver_order': 3}"):
        replace(SMALL, weights=(("unipc", {"solver_order": 3}, 6),))
    with pytest.raises(ValueError, match="weights_rounds must be an integer >= 1, got 0"):
        replace(SMALL, weights_rounds=0)
    with pytest.raises(ValueError, match="weights_history must be an integer >= 1, got True"):
        replace(SMALL, weights_history=True)


def test_a_weights_entry_with_evaluation_times_races_them_and_the_report_says_so():
    from dataclasses import replace

    from unisde.bench.accuracy import accuracy_config
    from unisde.bench.contestants import _unified
    from unisde.bench.optimized import markdown_lines, optimized_contestants, weights_label

    settings = replace(
        SMALL,
        samplers=(("gradient_estimation", {}),),
        weights=(("gradient_estimation", {}, 5),),
        weights_rounds=1,
        weights_evaluation_times=(5,),
    )
    cfg = accuracy_config("flow")
    raced = optimized_contestants(cfg, make_target("mixture-2d"), _unified(cfg).noise_schedule, (4, 5), settings, {})
    without, weights = [f for f in raced if f.contestant.label == weights_label("gradient_estimation", {})]
    assert (without.budget, weights.budget) == (4, 5)
    assert not isinstance(weights.scheduler, Exception), weights.scheduler
    assert "evaluation_times" not in without.fit  # weights fitted at NFE 4, the times told only at NFE 5
    assert not without.scheduler._sampler.opts["evaluation_times"]
    told = weights.fit["evaluation_times"]  # moved at NFE 5 on this target (not at NFE 4)
    assert len(told) == len(weights.fit["times"]) and told != weights.fit["times"]
    weights.scheduler.set_timesteps(len(told))
    assert list(weights.scheduler._sampler.opts["evaluation_times"]) == told
    record = {"schedule": "flow", "target": "mixture-2d", "nfe": 5, "sampler": weights.contestant.label}
    text = "\n".join(
        markdown_lines(
            {
                "setup": {"optimized_grids": settings.describe()},
                "accuracy": [{**record, "distance": 0.1, "fit": weights.fit}],
            }
        )
    )
    assert "by coordinate descent, the weights fitted again for them (NFE 5)" in text
    with pytest.raises(ValueError, match="weights_evaluation_times must be True, False or a tuple of NFE budgets"):
        replace(settings, weights_evaluation_times=(4.5,))
