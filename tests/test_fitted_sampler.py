"""The ``fitted`` sampler (a linear multistep method with weights fitted to a model) and the weight fit of
``optimize_grid(fit_weights=True)`` (issue 12): the family it holds step for step, exactness for a constant x̂0,
bad weights refused, a fit that never ends worse on its calibration starts than the sampler it started from, and
weights that a scheduler config and a pipeline folder carry."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from unisde import UnifiedScheduler
from unisde.analytic import Gaussian, GaussianMixture
from unisde.bench.accuracy import accuracy_config
from unisde.bench.contestants import _unified
from unisde.grids import make_grid
from unisde.grids.optimize import optimize_grid, weight_rows
from unisde.plugins import get_sampler


def _schedule(name: str):
    return lambda: _unified(accuracy_config(name)).noise_schedule


# the accuracy race's schedules: diffusers' default DDPM table, EDM's σ range, the rectified flow
SCHEDULES = {name: _schedule(name) for name in ("ddpm", "edm", "flow")}


def _run(sampler, grid, x, denoise):
    """The sampler's loop from ``x`` on ``grid`` with the smooth non-linear denoiser ``denoise(x, t)``."""
    times = sampler.prepare(grid.clone())
    loop = sampler.loop(x.clone())
    x = next(loop)
    try:
        for t in times:
            x = loop.send((x, denoise(x, float(t))))
    except StopIteration as done:
        return done.value
    raise AssertionError("the loop did not finish")


def _smooth(x, t):
    return 0.6 * torch.tanh(x) + 0.2 * t * torch.sin(x)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize(
    "base, options",
    [
        ("gradient_estimation", {}),
        ("gradient_estimation", {"ge_gamma": 1.7, "view": "ve"}),
        ("ipndm", {}),
        ("ipndm", {"max_order": 3, "view": "flow"}),
        ("ipndm_v", {}),
    ],
)
def test_it_takes_the_very_steps_of_the_multistep_methods_it_generalises(schedule, base, options):
    sched = SCHEDULES[schedule]()
    grid = make_grid(sched, 7, "karras" if schedule != "flow" else "flow_match")
    base_sampler = get_sampler(base)(sched, **options)
    rows = base_sampler.weight_rows(grid)
    fitted = get_sampler("fitted")(sched, weights=rows, view=base_sampler.opts["view"])
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(_run(fitted, grid, x, _smooth), _run(base_sampler, grid, x, _smooth))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_without_weights_every_step_is_ddims(schedule):
    sched = SCHEDULES[schedule]()
    grid = make_grid(sched, 6, "karras" if schedule != "flow" else "flow_match")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = _run(get_sampler("fitted")(sched), grid, x, _smooth)  # view "auto": flow at zero SNR
    ddim = _run(get_sampler("ddim")(sched), grid, x, _smooth)
    torch.testing.assert_close(ours, ddim, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("view", ["ve", "flow"])
def test_any_weights_summing_to_one_are_exact_for_a_constant_denoiser(schedule, view):
    """With D ≡ c the PF-ODE's solution from (x, t_0) is s c + (σ/σ_0)(x − s_0 c): one DDIM step, whatever the
    weights (their sum of 1 is what makes a constant derivative come out unchanged)."""
    sched = SCHEDULES[schedule]()
    grid = make_grid(sched, 6, "karras" if schedule != "flow" else "flow_match")
    gen = torch.Generator().manual_seed(2)
    free = (torch.rand(64, generator=gen, dtype=torch.float64) * 4 - 2).tolist()
    rows = weight_rows(free, 6, 4)
    c = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 8, generator=gen, dtype=torch.float64) * 3
    ours = _run(get_sampler("fitted")(sched, weights=rows, view=view), grid, x, lambda x, t: c)
    exact = _run(get_sampler("ddim")(sched), grid[[0, -1]], x, lambda x, t: c)
    torch.testing.assert_close(ours, exact, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([[1.0], [0.5, 0.4]], "row 1 sums to 0.9"),
        ([[1.0], [0.5, 0.5, 0.0]], "row 1 weighs 3 derivatives but step 1 has only 2"),
        ([[1.0], []], "row 1 must be a non-empty list"),
        ([[1.0], [True, 0.0]], "row 1 must hold finite numbers"),
        ([[1.0], [float("nan"), 1.0]], "row 1 must hold finite numbers"),
        ([[1.0], "ab"], "row 1 must be a non-empty list"),
        ("abc", "must be list or tuple"),
        (3, "must be list or tuple"),
    ],
)
def test_bad_weights_are_refused_naming_the_row(weights, message):
    with pytest.raises(ValueError, match=message):
        UnifiedScheduler(sampler="fitted", sampler_options={"weights": weights})


def test_weights_for_another_step_count_are_refused_at_set_timesteps():
    scheduler = UnifiedScheduler(sampler="fitted", sampler_options={"weights": [[1.0], [-1.0, 2.0], [0.5, 0.5]]})
    scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match="weights has 3 rows, one per step, but this grid has 5 steps"):
        scheduler.set_timesteps(5)


def test_entered_mid_grid_it_takes_euler_steps_until_its_history_holds_the_rows():
    sched = SCHEDULES["ddpm"]()
    grid = make_grid(sched, 5, "karras")
    rows = ((1.0,), (-1.0, 2.0), (0.5, -1.5, 2.0), (0.2, -1.0, 1.8), (0.1, -0.6, 1.5))
    fitted = get_sampler("fitted")(sched, weights=rows)
    times = fitted.prepare(grid.clone())
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loop = fitted.loop(x.clone(), start=2)
    y = next(loop)
    y = loop.send((y, _smooth(y, float(times[2]))))  # step 2 has one derivative: Euler's step
    euler = get_sampler("ipndm")(sched, max_order=1)
    euler.prepare(grid.clone())
    by_euler = euler.loop(x.clone(), start=2)
    z = next(by_euler)
    z = by_euler.send((z, _smooth(z, float(times[2]))))
    assert torch.equal(y, z)


# a small weight fit at NFE 4: what the fit tests share
_WEIGHT_FIT = dict(nfe=4, calibration=64, holdout=64, candidates=24, seed=0, objective="rms", fit_weights=True)
MIX = GaussianMixture([1.0, 1.0, 2.0], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.05, 0.1, 0.02])
GAUSS = Gaussian(torch.zeros(32, dtype=torch.float64), torch.logspace(-2, 0.5, 32, dtype=torch.float64))


@pytest.mark.parametrize(
    "dist, base", [(MIX, "gradient_estimation"), (MIX, "unipc"), (GAUSS, "ipndm")], ids=["mix-ge", "mix-unipc", "gauss"]
)
def test_the_weight_fit_never_ends_worse_on_its_calibration_starts_than_the_sampler_it_started_from(dist, base):
    result = optimize_grid(dist, schedule=SCHEDULES["ddpm"](), sampler=base, **_WEIGHT_FIT)
    assert result.sampler == "fitted" and result.method == "dp+cd+weights"
    rows = result.sampler_options["weights"]
    assert len(rows) == result.steps == 4 and all(abs(math.fsum(r) - 1.0) < 1e-9 for r in rows)
    base_record = result.weights_base
    assert base_record["sampler"] == base and base_record["iterations"] >= 1
    assert result.calibration_error <= base_record["calibration_error"] * (1 + 1e-12)
    if dist is GAUSS:  # no boundary between modes: the held-out error follows
        assert result.holdout_error < base_record["holdout_error"]
    before = result.base()
    assert before.sampler == base and before.times == base_record["times"] and before.weights_base is None
    assert before.holdout_error == base_record["holdout_error"]
    assert f"{base} on its optimised grid" in result.summary()
    # the weights run through a UnifiedScheduler config as measured: the grid, the sampler and its options
    scheduler = result.scheduler(UnifiedScheduler().config)
    assert scheduler.config.sampler == "fitted"
    scheduler.set_timesteps(result.steps)
    assert len(scheduler.timesteps) == result.nfe


def test_weights_fit_bad_input_fails_before_any_work():
    sched = SCHEDULES["ddpm"]()
    common = dict(schedule=sched, nfe=6, calibration=4, holdout=4, candidates=8)
    with pytest.raises(ValueError, match="one model evaluation per step"):
        optimize_grid(MIX, sampler="edm", fit_weights=True, **common)
    with pytest.raises(ValueError, match="fit_weights must be True or False"):
        optimize_grid(MIX, sampler="ddim", fit_weights="yes", **common)
    with pytest.raises(ValueError, match="weights_history must be an integer >= 1"):
        optimize_grid(MIX, sampler="ddim", fit_weights=True, weights_history=0, **common)
    with pytest.raises(ValueError, match="weights_rounds must be an integer >= 1"):
        optimize_grid(MIX, sampler="ddim", fit_weights=True, weights_rounds=0, **common)


def test_cli_fits_weights_and_saves_them_into_the_pipeline_folder(tmp_path, capsys):
    from diffusers import DiffusionPipeline

    from unisde.cli import main
    from unisde.demo import BUNDLED_CHECKPOINT

    folder = tmp_path / "digits"
    shutil.copytree(BUNDLED_CHECKPOINT, folder, ignore=shutil.ignore_patterns("*.png"))
    config_before = (folder / "scheduler" / "scheduler_config.json").read_text()
    args = ["grid", "optimize", str(folder), "--sampler", "gradient_estimation", "--nfe", "4"]
    assert main(args + ["--fit_weights", "--weights_history", "0", "--save"]) == 2
    assert "--weights_history must be >= 1" in capsys.readouterr().err
    assert (folder / "scheduler" / "scheduler_config.json").read_text() == config_before
    small = ["--calibration", "4", "--holdout", "4", "--candidates", "16", "--json", str(tmp_path / "fit.json")]
    assert main(args + ["--fit_evaluation_times", "--save"]) == 2
    assert "--fit_evaluation_times fits the evaluation times of the fitted weights: add --fit_weights" in (
        capsys.readouterr().err
    )
    assert main(args + small + ["--fit_weights", "--fit_evaluation_times", "--save"]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "fit.json").read_text())
    assert record["method"].endswith("+weights+evaluation_times")
    assert "gradient_estimation on its optimised grid" in out and "samples with 'fitted'" in out
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    assert pipe.scheduler.config.sampler == "fitted"
    assert pipe.scheduler.config.sampler_options == record["sampler_options"]
    assert pipe.scheduler.config.time_grid_options["times"] == record["times"]
    card = (folder / "README.md").read_text()
    assert "then the weights of the multistep sampler `fitted`" in card
    images = pipe(batch_size=1, num_inference_steps=len(record["times"]), output_type="np").images
    assert images.shape[0] == 1 and bool(torch.isfinite(torch.as_tensor(images)).all())


# ---------------------------------------------------------------------------------------------- the corrector
def _no_correction(rows):
    return [list(r) + [0.0] for r in rows[:-1]]


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_a_corrector_row_of_the_steps_own_weights_and_a_zero_corrects_nothing(schedule):
    sched = SCHEDULES[schedule]()
    grid = make_grid(sched, 6, "karras" if schedule != "flow" else "flow_match")
    rows = get_sampler("ipndm")(sched, max_order=3).weight_rows(grid)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    plain = _run(get_sampler("fitted")(sched, weights=rows), grid, x, _smooth)
    idle = _run(get_sampler("fitted")(sched, weights=rows, corrector=_no_correction(rows)), grid, x, _smooth)
    assert torch.equal(plain, idle)
    trapezoid = get_sampler("fitted")(sched, weights=rows, corrector=[[0.5, 0.5]] * 5)
    assert not torch.equal(plain, _run(trapezoid, grid, x, _smooth))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("view", ["ve", "flow"])
def test_any_corrector_summing_to_one_is_exact_for_a_constant_denoiser(schedule, view):
    sched = SCHEDULES[schedule]()
    grid = make_grid(sched, 6, "karras" if schedule != "flow" else "flow_match")
    gen = torch.Generator().manual_seed(5)
    # weights within ±1/2: larger random rows amplify rounding by orders of magnitude per step (at ±2, 2e-8 where
    # the predictor alone stays at 1e-13), which is the random method's instability, not a wrong correction
    free = (torch.rand(64, generator=gen, dtype=torch.float64) - 0.5).tolist()
    rows = weight_rows(free[:20], 6, 3)
    corrector = [list(r) for r in weight_rows(free[20:], 6, 4)[1:]]  # row i weighs up to i + 2 derivatives
    c = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 8, generator=gen, dtype=torch.float64) * 3
    sampler = get_sampler("fitted")(sched, weights=rows, corrector=corrector, view=view)
    ours = _run(sampler, grid, x, lambda x, t: c)
    exact = _run(get_sampler("ddim")(sched), grid[[0, -1]], x, lambda x, t: c)
    torch.testing.assert_close(ours, exact, rtol=1e-9, atol=1e-9)


def test_the_trapezoidal_corrector_makes_euler_second_order():
    """Euler's predictor with the trapezoidal corrector (the x̂0 of the predicted point kept) is a second-order
    method: halving the step quarters the difference between successive runs, where Euler's only halves it."""
    sched = SCHEDULES["ddpm"]()
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(n, corrector):
        grid = make_grid(sched, n + 1, "uniform_lambda")[:-1]  # to the smallest positive level: a fixed end
        kw = {"corrector": [[0.5, 0.5]] * (n - 1)} if corrector else {}
        return _run(get_sampler("fitted")(sched, weights=[[1.0]] * n, **kw), grid, x, _smooth)

    for corrector, order in ((False, 1), (True, 2)):
        diffs = [float((run(n, corrector) - run(2 * n, corrector)).norm()) for n in (64, 128, 256)]
        rates = [math.log2(diffs[i] / diffs[i + 1]) for i in range(2)]
        assert all(abs(r - order) < 0.15 for r in rates), (corrector, rates)


@pytest.mark.parametrize(
    "corrector, message",
    [
        ([[0.5, 0.4], [0.0, 0.5, 0.5]], "row 0 sums to 0.9"),
        ([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]], "row 0 weighs 3 derivatives but step 0 has only 2"),
        ([[0.5, 0.5], []], "row 1 must be a non-empty list"),
        ([[0.5, float("inf")]], "row 0 must hold finite numbers"),
        ("abc", "must be list or tuple"),
    ],
)
def test_bad_corrector_rows_are_refused_naming_the_row(corrector, message):
    with pytest.raises(ValueError, match=message):
        UnifiedScheduler(sampler="fitted", sampler_options={"corrector": corrector})


def test_a_corrector_for_another_step_count_is_refused_at_set_timesteps():
    scheduler = UnifiedScheduler(sampler="fitted", sampler_options={"corrector": [[0.5, 0.5], [0.5, 0.5]]})
    scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match="corrector has 2 rows, one per step but the last, but this grid has 5 steps"):
        scheduler.set_timesteps(5)


def test_entered_mid_grid_the_corrector_waits_for_the_history_it_weighs():
    """Entered at step 2, correction 3 weighs d_1 (from before the entry): skipped, the step is the predictor's
    alone; correction 4 weighs d_2 and d_3, both in the loop's history: taken."""
    sched = SCHEDULES["ddpm"]()
    grid = make_grid(sched, 6, "karras")
    rows = [[1.0]] * 6
    corrector = [[0.5, 0.5], [0.5, 0.5], [0.2, 0.3, 0.5], [0.4, 0.6], [0.4, 0.6]]
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def steps(sampler, count):
        times = sampler.prepare(grid.clone())
        loop = sampler.loop(x.clone(), start=2)
        y = next(loop)
        for k in range(2, 2 + count):
            y = loop.send((y, _smooth(y, float(times[k]))))
        return y

    with_corrector = get_sampler("fitted")(sched, weights=rows, corrector=corrector)
    only_two_points = [[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [0.4, 0.6], [0.4, 0.6]]  # correction 3 off
    reference = get_sampler("fitted")(sched, weights=rows, corrector=only_two_points)
    assert torch.equal(steps(with_corrector, 3), steps(reference, 3))
    assert not torch.equal(steps(with_corrector, 3), steps(get_sampler("fitted")(sched, weights=rows), 3))


def test_the_corrector_fit_never_ends_worse_than_its_start_and_a_scheduler_config_carries_it():
    kwargs = dict(schedule=SCHEDULES["flow"](), sampler="gradient_estimation", **_WEIGHT_FIT, weights_rounds=1)
    result = optimize_grid(MIX, fit_corrector=True, **kwargs)
    assert result.method == "dp+cd+weights+corrector" and result.base().method == "dp+cd"
    corrector = result.sampler_options["corrector"]
    assert len(corrector) == result.steps - 1 and all(abs(math.fsum(r) - 1.0) < 1e-9 for r in corrector)
    assert result.calibration_error <= result.weights_base["calibration_error"] * (1 + 1e-12)
    assert "and of its corrector" in result.markdown()
    scheduler = result.scheduler(UnifiedScheduler().config)
    assert scheduler.config.sampler_options["corrector"] == corrector
    scheduler.set_timesteps(result.steps)
    assert len(scheduler.timesteps) == result.nfe
    with pytest.raises(ValueError, match="fit_corrector fits the corrector of the fitted weights"):
        optimize_grid(MIX, **{**kwargs, "fit_weights": False}, fit_corrector=True)
    with pytest.raises(ValueError, match="fit_corrector must be True or False"):
        optimize_grid(MIX, **kwargs, fit_corrector=1)


# ---------------------------------------------------------------------------------------------- evaluation times
def _told(schedule: str):
    """The schedule, a 4-step stored grid and its evaluation times."""
    sched = SCHEDULES[schedule]()
    times = [1.0, 0.7, 0.4, 0.15]
    return sched, make_grid(sched, len(times), "optimized", times=times), times


def _sample(sched, times, denoise, z, **options):
    import unisde

    return unisde.sample(
        None,
        z.clone(),
        schedule=sched,
        parameterization="epsilon",
        sampler="fitted",
        sampler_options=options,
        time_grid="optimized",
        grid_options={"times": times},
        num_inference_steps=len(times),
        denoiser=denoise,
    )


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_evaluation_times_equal_to_the_grid_change_nothing(schedule):
    sched, _, times = _told(schedule)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rows = [[1.0], [-0.5, 1.5], [0.1, -0.6, 1.5], [0.2, -0.4, 1.2]]
    denoise = lambda x, t: _smooth(x, float(t[0]))  # noqa: E731
    plain = _sample(sched, times, denoise, z, weights=rows)
    assert torch.equal(_sample(sched, times, denoise, z, weights=rows, evaluation_times=times), plain)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_each_evaluation_is_told_its_time_and_the_step_uses_the_grids(schedule):
    """Euler (no weights) with the model told other times, against the PF-ODE's Euler step written out here in the
    view's variables: y = x/s against σ̃ = σ/s (VE), y = x/(s + σ) against τ = σ/(s + σ) (flow)."""
    sched, grid, times = _told(schedule)
    told = [min(1.0, t * 1.03) if k % 2 == 0 else t * 0.95 for k, t in enumerate(times)]
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    calls = []

    def denoise(x, t):
        calls.append(float(t[0]))
        return _smooth(x, float(t[0]))

    got = _sample(sched, times, denoise, z, evaluation_times=told)
    assert calls == pytest.approx(told, abs=0, rel=1e-15)
    s, sigma = (v.tolist() for v in (sched.s(grid), sched.sigma(grid)))
    s[-1], sigma[-1] = (1.0, 0.0) if float(grid[-1]) == 0.0 else (s[-1], sigma[-1])
    flow = schedule == "flow"  # the fitted sampler's view "auto": flow where the schedule reaches zero SNR
    scale = [a + b if flow else a for a, b in zip(s, sigma)]
    level = [b / c for b, c in zip(sigma, scale)]
    x = z * math.sqrt(s[0] ** 2 + sigma[0] ** 2)  # the noise of the grid's first time, not of the told one
    for k, t_told in enumerate(told):
        y = x / scale[k]
        d = (y - _smooth(x, t_told)) / level[k]
        x = scale[k + 1] * (y + (level[k + 1] - level[k]) * d)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_a_scheduler_with_evaluation_times_runs_what_the_functional_api_runs():
    import unisde

    sched, _, times = _told("edm")
    cfg = accuracy_config("edm")
    told = [t * 0.97 for t in times]
    options = {"weights": [[1.0], [-0.5, 1.5], [0.1, -0.6, 1.5], [0.2, -0.4, 1.2]], "evaluation_times": told}
    kwargs = dict(sampler="fitted", time_grid="optimized", time_grid_options={"times": times})
    scheduler = _unified(cfg, sampler_options=options, **kwargs)
    plain = _unified(cfg, sampler_options={"weights": options["weights"]}, **kwargs)
    for sc in (scheduler, plain):
        sc.set_timesteps(len(times))
    # the starting noise belongs to the grid's first time (EDM's σ̃_max), not the first told time
    assert scheduler.init_noise_sigma == plain.init_noise_sigma
    param = scheduler.parameterization
    expected = param.model_time(sched, torch.tensor(told, dtype=torch.float64))
    torch.testing.assert_close(scheduler.timesteps.to(torch.float64), expected.to(torch.float64))
    model = MIX_8.as_model(param, sched)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    functional = unisde.sample(
        model,
        z.clone(),
        schedule=sched,
        parameterization=param,
        sampler="fitted",
        sampler_options=options,
        time_grid="optimized",
        grid_options={"times": times},
        num_inference_steps=len(times),
    )
    torch.testing.assert_close(x, functional, rtol=1e-12, atol=1e-12)


MIX_8 = GaussianMixture([1.0, 2.0], [[1.0] * 8, [-1.0] * 8], [0.1, 0.2])


@pytest.mark.parametrize(
    "told, message",
    [
        ([0.9, 0.95, 0.3, 0.1], "must decrease strictly"),
        ([1.2, 0.5, 0.3, 0.1], r"in \(0, 1\]"),
        ([0.9, 0.5, 0.3, 0.0], r"in \(0, 1\]"),
        ([0.9, True, 0.3, 0.1], r"in \(0, 1\]"),
    ],
)
def test_bad_evaluation_times_are_refused(told, message):
    with pytest.raises(ValueError, match=message):
        get_sampler("fitted")(SCHEDULES["flow"](), evaluation_times=told)


def test_evaluation_times_for_another_step_count_are_refused_at_set_timesteps():
    sched, grid, times = _told("ddpm")
    sampler = get_sampler("fitted")(sched, evaluation_times=times[:-1])
    with pytest.raises(ValueError, match="evaluation_times has 3 rows, one per step, but this grid has 4 steps"):
        sampler.prepare(grid)


def test_entered_mid_grid_evaluation_times_are_refused():
    sched, grid, times = _told("ddpm")
    sampler = get_sampler("fitted")(sched, evaluation_times=[t * 0.98 for t in times])
    sampler.prepare(grid)
    with pytest.raises(ValueError, match="cannot enter the grid at evaluation 2"):
        next(sampler.loop(torch.zeros(1, 4, dtype=torch.float64), start=2))


def test_the_evaluation_time_fit_never_ends_worse_than_the_weights_and_a_scheduler_config_carries_it():
    kwargs = dict(schedule=SCHEDULES["ddpm"](), sampler="gradient_estimation", **_WEIGHT_FIT, weights_rounds=1)
    result = optimize_grid(MIX, fit_evaluation_times=True, **kwargs)
    assert result.method == "dp+cd+weights+evaluation_times" and result.base().method == "dp+cd"
    record = result.weights_base["evaluation_times"]
    # on this mixture and table the fit moves them, and lowers the calibration error below half the weights' alone
    assert record["kept"] and result.calibration_error < 0.5 * record["calibration_error_before"]
    told = result.sampler_options["evaluation_times"]
    assert len(told) == result.steps and all(a > b for a, b in zip(told, told[1:])) and told != result.times
    assert "the times its evaluations are told" in result.markdown()
    # what the scheduler config carries is what was measured
    scheduler = result.scheduler(accuracy_config("ddpm"))
    assert scheduler.config.sampler_options["evaluation_times"] == told
    scheduler.set_timesteps(result.steps)
    assert len(scheduler.timesteps) == result.nfe
    with pytest.raises(ValueError, match="fit_evaluation_times fits the evaluation times of the fitted sampler"):
        optimize_grid(MIX, **{**kwargs, "fit_weights": False}, fit_evaluation_times=True)
    with pytest.raises(ValueError, match="fit_evaluation_times must be True or False"):
        optimize_grid(MIX, **kwargs, fit_evaluation_times="yes")
    with pytest.raises(ValueError, match="evaluation_rounds must be an integer >= 1"):
        optimize_grid(MIX, **kwargs, fit_evaluation_times=True, evaluation_rounds=0)
