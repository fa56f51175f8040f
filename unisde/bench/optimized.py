r"""Optimised-grid contestants of the accuracy race (issue 12): for every target, schedule and NFE budget up to
:attr:`FitSettings.max_nfe`, a time grid fitted by :func:`unisde.grids.optimize.optimize_grid` (GITS dynamic
programming + coordinate descent, Chen et al. 2024 [GITS]) for each of a few strong low-NFE unisde samplers,
raced as the registered ``optimized`` grid — a ``UnifiedScheduler`` config that ``save_pretrained`` carries. On
Gaussian targets, where a fit takes seconds, :attr:`FitSettings.samplers_gaussian_high` are also fitted above
``max_nfe``, up to :attr:`FitSettings.max_nfe_gaussian`.

Held-out rule: a grid is fitted on *calibration* starts drawn from :attr:`FitSettings.seed`, never on the starts it
is scored on. On mixtures the race scores it by the trajectory error on the bench's fixed batch (seed
``_SEED_TRAJECTORY`` of :mod:`unisde.bench.accuracy`); on Gaussian targets by the exact W₂ of its output law, which
no batch enters. The fit sees the model (the exact denoiser, as any grid optimiser sees its network) but never the
data law itself: its objective is the error against the model's own probability-flow ODE from the calibration
starts, the quantity a user can measure on a trained network.

Objective: ``rms`` — the root mean square over the calibration batch of the per-sample error, which is the bench's
trajectory metric (RMS over the batch of ‖x_out − x_ref‖) divided by √d. On a mixture that metric is dominated by
the few starts near a boundary between modes, whose trajectories a coarse grid sends to the wrong mode, so the
mixtures' calibration batches are large (1024 starts on the 2-D one, 512 on the 64-D one), and the error is not
convex in the times, so the coordinate descent runs from each of the best few of the DP path, the sampler's default
grid and the λ-uniform, Karras and t-uniform grids (a multistep sampler's DP path optimises its first-order base
only), and the best end wins. On the 64-D mixture the starts matter more than the descents: with 128 starts and 5
descents a grid fitted to which starts sit near a boundary scored 0.73 on the race's batch (rectified flow,
gradient estimation, NFE 6), with 512 starts and 2 descents, at about the same cost, 0.25. The Gaussian target has
no modes to confuse and its error is smooth in the times: 32 starts fit it, with 5 descents (its fits take seconds).

A fit depends on the noise schedule, not on the grid options of a config: the rectified flow with and without a
shift share their fits (:func:`optimized_contestants`' ``fits``).

The last evaluation time on a schedule whose sampling range reaches t = 0 (EDM: σ̃ = σ_min at t = 0, the end point
t = 0 standing for clean data) is at least :attr:`FitSettings.t_min`, since a stored grid's times lie in (0, 1].
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace

from unisde.bench.contestants import Contestant, _unified
from unisde.grids.optimize import WEIGHTS_SAMPLER

GRID = "optimized"
FIT_SEED = 20_240_601
"""Seed of the calibration starts (and of the optimiser's own held-out batch, drawn after them): never one of the
seeds the accuracy section scores with (:data:`unisde.bench.accuracy._SEED_TRAJECTORY`, ``_SEED_NOISE``)."""


@dataclass(frozen=True)
class FitSettings:
    """How the optimised-grid contestants are fitted. ``samplers``: (name, options) pairs, each fitted at every
    budget ≤ ``max_nfe``, or (name, options, budgets) triples, fitted only at the budgets ≤ ``budgets`` (an int) or
    in ``budgets`` (a tuple of NFE); an empty tuple races none."""

    samplers: tuple = (
        # at NFE <= 6 gradient estimation's fitted weights lead every cell but two (the 2-D mixture at NFE 5, where
        # unipc order 3 had 0.19/0.31 of the best peer's error on EDM/DDPM to the weights' 0.26/0.37: both met) —
        # BENCHMARKS.md, full preset, Dec 2026 — so unipc is fitted at NFE 8 and 10 only, where it leads most cells
        ("unipc", {}, (8, 10)),
        # order 3 at NFE 8 only: at NFE 10 it led one cell (the 2-D mixture on the DDPM table, 0.135 of the best
        # peer's error, where unipc's fitted grid has 0.335) for 108 s of one core over the exact targets
        ("unipc", {"solver_order": 3}, (8,)),
        # at NFE ≤ 6 iPNDM's fitted grids lost every cell to gradient estimation's weights (BENCHMARKS.md, full preset)
        ("ipndm", {}, (8, 10)),
        # Euler with a gradient-estimation correction (Permenter & Yuan 2024 [GradEst]): on the 64-D mixture at
        # NFE 5 it sends the fewest starts to the wrong mode (a fifth less error than unipc on the rectified flow);
        # at NFE 10 it is far behind the multistep methods
        ("gradient_estimation", {}, 6),
    )
    max_nfe: int = 10
    # (name, options, budgets) entries of ``samplers`` whose fits at those budgets go on to fit the weights of the
    # ``fitted`` sampler on the grid (optimize_grid's fit_weights), both raced
    weights: tuple = ()
    weights_history: int = 3
    weights_rounds: int = 2  # weight fits, the times descended again for the weights between two
    weights_corrector: bool = False  # fit the fitted sampler's corrector rows with its weights (fit_corrector)
    # … and the times its evaluations are told (fit_evaluation_times): True at every budget of ``weights``, or a tuple
    # of the NFE where they are
    weights_evaluation_times: bool | tuple = False
    # On Gaussian targets (a fit there takes seconds) these samplers are also fitted at budgets above ``max_nfe`` up
    # to ``max_nfe_gaussian``: at NFE 20 an optimised DPM-Solver++(2M) / UniPC-3 grid beats the polyexponential and
    # Karras grids that the peers' best configurations use
    samplers_gaussian_high: tuple = (("dpmsolver++", {}), ("unipc", {"solver_order": 3}))
    max_nfe_gaussian: int = 20
    calibration: int = 512  # calibration starts on mixtures with d > 2
    calibration_2d: int = 1024  # … on 2-D mixtures
    calibration_gaussian: int = 32  # … on Gaussian targets (no boundary between modes: a smooth error)
    holdout: int = 64  # the optimiser's own held-out starts (reported with the fit; the race scores elsewhere)
    candidates: int = 60
    objective: str = "rms"
    starts: tuple = ("uniform_lambda", "karras", "uniform_t")
    descents: int = 5  # descents from the best starts (optimize_grid's descents) on 2-D mixtures
    descents_64d: int = 2  # … on mixtures with d > 2 (module doc: a larger calibration batch instead)
    descents_gaussian: int = 5  # … on Gaussian targets (2 stopped at NFE 6 in a local minimum 37 % above the best)
    reference_rtol: float = 1e-3
    t_min: float = 1e-3  # the smallest evaluation time where the schedule's own range starts at t = 0
    seed: int = FIT_SEED
    # the dtype a trained checkpoint's network is fitted in: its float32 UNet runs 4-6x faster per sample than the
    # float64 one the race scores with, and a grid's error of 1e-2 or more is far above float32 rounding
    network_dtype: str = "float64"
    note: str = ""  # said in the report (e.g. how the quick preset shrinks the fit)
    extra: dict = field(default_factory=dict)  # further optimize_grid keywords

    def __post_init__(self):
        names = {(entry[0], json.dumps(dict(entry[1]), sort_keys=True)) for entry in self.samplers}
        for entry in self.weights:
            if (entry[0], json.dumps(dict(entry[1]), sort_keys=True)) not in names:
                raise ValueError(
                    f"weights entry {entry[0]!r} with options {dict(entry[1])} is not one of the samplers fitted "
                    f"({', '.join(label(e[0], dict(e[1])) for e in self.samplers) or 'none'}): the weights are "
                    "fitted on that sampler's grid"
                )
        told = self.weights_evaluation_times
        if not isinstance(told, bool) and not (
            isinstance(told, tuple) and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in told)
        ):
            raise ValueError(f"weights_evaluation_times must be True, False or a tuple of NFE budgets, got {told!r}")
        for name in ("weights_history", "weights_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def describe(self) -> dict:
        return asdict(self)


# On the 64-D mixture at NFE 4 the weights fitted from gradient estimation's take its trajectory error on the race's
# batch from 0.78 to 0.52 (rectified flow), 0.77 to 0.61 (EDM) and 0.66 to 0.59 (DDPM table), for 1-2 s a fit
FULL_FIT = FitSettings(weights=(("gradient_estimation", {}, 6),))
QUICK_FIT = FitSettings(
    samplers=(("unipc", {}),),
    calibration=16,
    calibration_2d=64,
    holdout=8,
    candidates=20,
    calibration_gaussian=16,
    starts=(),
    descents=1,
    descents_64d=1,
    descents_gaussian=1,
    samplers_gaussian_high=(),
    reference_rtol=1e-2,
    note="quick preset: a reduced fit — one sampler (unipc), 20 candidate times, 16 calibration starts (64 on the "
    "2-D target), at most 2 descent sweeps per step size, no extra descent starts",
    extra={"max_sweeps": 2},
)


CHECKPOINT_FIT = replace(
    QUICK_FIT,
    network_dtype="float32",
    calibration=64,
    holdout=16,
    candidates=30,
    extra={"max_sweeps": 3},
    note="on the trained checkpoints the network is fitted in float32 (4–6× faster per sample than the float64 UNet "
    "the race scores): 30 candidate times, 64 calibration starts, at most 3 descent sweeps per step size, the "
    "samplers (and on digits-vp extra descent starts) chosen per checkpoint by their held-out errors",
)
"""The fit of the trained checkpoint targets, before :data:`CHECKPOINT_FITS` chooses the samplers of each. The
network is fitted in float32: fitted on 8 starts of the float64 UNet (~2 ms per sample), unipc's grids lost to
deis's and iPNDM's default grids on digits-flow at NFE 6 and 10; on 64 starts in float32, in about twice the time,
the held-out errors follow the calibration errors within ~20 % from NFE 6 up."""

CHECKPOINT_FITS = {
    # on the ε-model of the DDPM table unipc's fitted grids lead on the fit's own held-out starts (NFE 4/5/6/8/10:
    # 1.07/0.70/0.60/0.37/0.21, against iPNDM's 2.08/2.31/2.07/0.94/0.60 and gradient estimation's 2.15/1.38/1.00 at
    # NFE ≤ 6), but for unipc order 3 at NFE 6 (0.51). Two descents, from the best of the DP path and the
    # λ-uniform, Karras and t-uniform grids, find better minima there (NFE 4/5 calibration error 1.18/0.77 →
    # 1.09/0.77, held-out 1.07/0.70 → 0.73/0.51); on digits-flow they end where the DP path's descent does. Not
    # fitted at NFE 10: deis on its default grid meets the target there (0.260 against the best peer's 0.487, 0.54;
    # unipc's fitted grid 0.163), and that fit took 123 s of one core, the most of any (full preset, Dec 2026)
    "digits-vp": replace(
        CHECKPOINT_FIT,
        samplers=(("unipc", {}, 8), ("unipc", {"solver_order": 3}, (6,))),
        starts=("uniform_lambda", "karras", "uniform_t"),
        descents_64d=2,
    ),
    # on the rectified flow gradient estimation leads the held-out errors at NFE ≤ 6 (0.76/0.47/0.24 against
    # unipc's 0.84/0.56/0.31) and iPNDM from NFE 8 (0.14/0.068 against 0.20/0.10); the weights fitted on gradient
    # estimation's grids lower them to 0.52/0.27/0.21, in one round (a second, after descending the times again for
    # the weights, gave 0.21 at NFE 6 as well, for 20 s more); fitted with a corrector, 0.56/0.25/0.19 where
    # this preset's fit without one has 0.60/0.27/0.21 (15-40 s more a fit; Dec 2026); with the times its
    # evaluations are told fitted as well (2 rounds), 0.45/0.22/0.16 (25-130 s more a fit; Dec 2026). Those times
    # only at NFE 4 and 5: at NFE 6 their fit took 190 s (the most of any) and the race read 0.656 of the best peer
    # with them, 0.580 without (full preset, Dec 2026)
    "digits-flow": replace(
        CHECKPOINT_FIT,
        samplers=(("gradient_estimation", {}, 6), ("ipndm", {}, (8, 10))),
        weights=(("gradient_estimation", {}, 6),),
        weights_rounds=1,
        weights_corrector=True,
        weights_evaluation_times=(4, 5),
    ),
}
"""The optimised-grid fits of the trained checkpoints (``BenchConfig.checkpoint_fit``), by checkpoint: the samplers of
each are those with the smallest held-out error (the fit's own 16 starts, never the race's) when unipc, unipc-3,
iPNDM and gradient estimation were all fitted there (``CHECKPOINT_FIT`` otherwise)."""


def fitted_at(entry: tuple, budget: int, settings: FitSettings) -> bool:
    """Whether the ``settings.samplers`` entry (name, options[, budgets]) is fitted at NFE ``budget``."""
    if budget > settings.max_nfe:
        return False
    if len(entry) < 3:
        return True
    budgets = entry[2]
    return budget <= budgets if isinstance(budgets, int) else budget in budgets


def fits_weights(sampler: str, options: dict, budget: int, settings: FitSettings) -> bool:
    """Whether the fit of ``sampler`` (with ``options``) at NFE ``budget`` goes on to fit the ``fitted`` sampler's
    weights (an entry of ``settings.weights``)."""
    return any(
        entry[0] == sampler and dict(entry[1]) == dict(options) and fitted_at(entry, budget, settings)
        for entry in settings.weights
    )


def tells_times(evaluation_times, budget: int) -> bool:
    """Whether a weights fit at NFE ``budget`` fits the evaluation times too, for a
    :attr:`FitSettings.weights_evaluation_times` value (a list where JSON kept it)."""
    return budget in evaluation_times if isinstance(evaluation_times, (tuple, list)) else bool(evaluation_times)


def settings_for(fit, target: str) -> FitSettings | None:
    """The :class:`FitSettings` of ``target`` from a ``BenchConfig.checkpoint_fit`` value: a FitSettings for every
    checkpoint, a mapping from checkpoint names (a name it lacks: no fit there), or None."""
    return fit.get(target) if isinstance(fit, dict) else fit


def label(sampler: str, options: dict) -> str:
    """The race label of an optimised-grid contestant, e.g. ``dpmsolver++[solver_order=3, grid=optimized]``."""
    bits = [f"{k}={v}" for k, v in options.items()] + [f"grid={GRID}"]
    return f"{sampler}[{', '.join(bits)}]"


def weights_label(sampler: str, options: dict) -> str:
    """The race label of the ``fitted`` weights on the grid of ``sampler``, e.g.
    ``fitted[base=gradient_estimation, grid=optimized]`` (the weights themselves are in the record's fit)."""
    base = sampler + (f"({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
    return f"{WEIGHTS_SAMPLER}[base={base}, grid={GRID}]"


@dataclass
class Fitted:
    """One fitted contestant: raced at ``budget`` only. ``scheduler`` is the built scheduler, or the exception that
    stopped the fit or the build (reported as a failed run); ``fit`` the record's fit summary."""

    contestant: Contestant
    budget: int
    scheduler: object
    fit: dict


def _calibration(dist, settings: FitSettings) -> int:
    if getattr(dist, "network", None) is not None:  # a trained checkpoint (unisde.bench.targets.Checkpoint)
        return settings.calibration
    if dist.num_components == 1:
        return settings.calibration_gaussian
    return settings.calibration_2d if dist.dim <= 2 else settings.calibration


def _descents(dist, settings: FitSettings) -> int:
    if dist.num_components == 1:
        return settings.descents_gaussian
    return settings.descents if dist.dim <= 2 else settings.descents_64d


def fit_grid(dist, schedule, sampler: str, options: dict, budget: int, settings: FitSettings, weights=False):
    """Fit ``sampler`` (with ``options``) at NFE ``budget`` on the exact model of ``dist`` (or the network of a
    trained :class:`unisde.bench.targets.Checkpoint`) under the noise schedule ``schedule`` (and with ``weights``
    the ``fitted`` sampler's weights on its grid after it): the :class:`unisde.grids.optimize.OptimizedGrid` and the
    records' fit summary (errors in the race's units, whole vectors)."""
    from unisde.grids import default_time_range
    from unisde.grids.optimize import optimize_grid

    lo, _ = default_time_range(schedule)
    calibration = _calibration(dist, settings)
    # a trained checkpoint is fitted as the network it is (its float64 UNet, parameterisation and sample shape)
    network = getattr(dist, "network", None)
    if network is not None and settings.network_dtype == "float32":
        network = dist.network32
    model_kwargs = (
        {} if network is None else {"parameterization": dist.parameterization.name, "shape": dist.event_shape}
    )
    started = time.perf_counter()
    result = optimize_grid(
        dist if network is None else network,
        **model_kwargs,
        schedule=schedule,
        sampler=sampler,
        sampler_options=dict(options),
        nfe=budget,
        calibration=calibration,
        holdout=settings.holdout,
        seed=settings.seed,
        candidates=settings.candidates,
        objective=settings.objective,
        starts=tuple(settings.starts),
        descents=_descents(dist, settings),
        reference_rtol=settings.reference_rtol,
        t_min=lo if lo > 0 else settings.t_min,
        **(
            {
                "fit_weights": True,
                "weights_history": settings.weights_history,
                "weights_rounds": settings.weights_rounds,
                "fit_corrector": settings.weights_corrector,
                "fit_evaluation_times": tells_times(settings.weights_evaluation_times, budget),
            }
            if weights
            else {}
        ),
        **settings.extra,
    )
    return result, fit_summary(result, dist, settings, time.perf_counter() - started)


def fit_summary(result, dist, settings: FitSettings, seconds: float) -> dict:
    """A race record's ``fit``: the grid, its errors in the race's units (whole vectors, where the optimiser's are
    per coordinate) and the fit's seconds; with fitted weights also the weights and the fit's iterations."""
    rd = math.sqrt(dist.dim)
    summary = {
        "times": [float(t) for t in result.times],
        "seed": settings.seed,
        "calibration": result.calibration,
        "objective": settings.objective,
        "start": result.start,
        "calibration_error": result.calibration_error * rd,
        "holdout_error": result.holdout_error * rd,
        "default_holdout_error": result.baseline_holdout_error * rd,
        "reference_halving_change": result.reference["halving_change"],
        "seconds": seconds,
    }
    if result.weights_base is not None:
        summary["weights"] = result.sampler_options["weights"]
        summary["weights_iterations"] = result.weights_base["iterations"]
        for key in ("corrector", "evaluation_times"):
            if result.sampler_options.get(key):
                summary[key] = result.sampler_options[key]
    return summary


def optimized_scheduler(cfg: dict, schedule, result):
    """``UnifiedScheduler.from_config(cfg, sampler=…, time_grid="optimized", time_grid_options={"times": …})`` for a
    fitted ``result``, checked to evaluate exactly the fitted grid with the fitted number of model calls (a
    ValueError otherwise: what is raced is what was fitted)."""
    from unisde.grids import make_grid

    scheduler = _unified(cfg, **result.scheduler_kwargs())
    scheduler.set_timesteps(result.steps)
    fitted = [
        float(v) for v in make_grid(schedule, result.steps, GRID, final_time=result.final_time, times=result.times)
    ]
    if len(scheduler.timesteps) != result.nfe or scheduler._sampler.grid != fitted:
        raise ValueError(
            f"the scheduler evaluates {scheduler._sampler.grid} with {len(scheduler.timesteps)} calls, not the "
            f"fitted grid {fitted} with {result.nfe}"
        )
    return scheduler


def optimized_contestants(
    cfg: dict, dist, schedule, budgets, settings: FitSettings | None, fits: dict | None = None
) -> list[Fitted]:
    """The fitted contestants of one target and schedule: every sampler of ``settings`` at every budget ≤
    ``settings.max_nfe``, and on a Gaussian target those of ``settings.samplers_gaussian_high`` at the budgets above
    it up to ``settings.max_nfe_gaussian`` (none when ``settings`` is None). A fit that fails is returned with its
    exception.
    ``fits``: a dict kept across calls of one run; a fit is reused for another config with the same noise schedule,
    target and sampler (the rectified flow with and without a shift: the shift moves grids, not the forward
    process, and a stored grid ignores it), its summary then saying ``reused`` with 0 seconds."""
    if settings is None:
        return []
    fits = {} if fits is None else fits
    out = []
    for budget in budgets:
        if budget <= settings.max_nfe:
            samplers = [entry for entry in settings.samplers if fitted_at(entry, budget, settings)]
        elif dist.num_components == 1 and budget <= settings.max_nfe_gaussian:
            samplers = settings.samplers_gaussian_high
        else:
            continue
        for sampler, options, *_ in samplers:
            weights = fits_weights(sampler, options, budget, settings)
            names = [label(sampler, options)] + ([weights_label(sampler, options)] if weights else [])
            key = (dist, json.dumps(schedule.to_config(), sort_keys=True), names[-1], budget)  # dist by identity
            try:
                if key in fits:
                    result, fit = fits[key]
                    fit = {**fit, "seconds": 0.0, "reused": True}
                else:
                    result, fit = fits[key] = fit_grid(dist, schedule, sampler, options, budget, settings, weights)
                # with weights: the sampler on its own grid (the fit's first part), then the weights on theirs
                results = [result.base(), result] if weights else [result]
                fit_of = [fit] if not weights else [_base_fit(result, dist, settings, fit), _weights_fit(result, fit)]
                built = [(optimized_scheduler(cfg, schedule, r), f) for r, f in zip(results, fit_of)]
            except Exception as exc:  # a sampler the optimiser cannot fit here is reported, not fatal
                built = [(exc, {})] * len(names)
            for name, (scheduler, fit) in zip(names, built):

                def make(scheduler=scheduler):
                    return scheduler

                out.append(Fitted(Contestant("unisde", name, make), budget, scheduler, fit))
    return out


def _base_fit(result, dist, settings: FitSettings, fit: dict) -> dict:
    """The fit summary of the sampler on its own grid, from a fit that went on to fit weights: its share of the
    seconds is all but the weights' (so the two records' seconds add up to the fit's)."""
    base = fit_summary(result.base(), dist, settings, fit["seconds"])
    if not fit.get("reused"):
        base["seconds"] = fit["seconds"] - result.weights_base["seconds"]
    return {**base, **({"reused": True} if fit.get("reused") else {})}


def _weights_fit(result, fit: dict) -> dict:
    """The fit summary of the fitted weights: the weight fit's own seconds (0 when the fit is reused)."""
    return {**fit, "seconds": 0.0 if fit.get("reused") else result.weights_base["seconds"]}


def budgets_text(entry) -> str:
    """`` (NFE ≤ 6)`` / `` (NFE 8, 10)`` for a samplers entry with budgets (as JSON keeps it), else ``""``."""
    if len(entry) < 3:
        return ""
    budgets = entry[2]
    return f" (NFE ≤ {budgets})" if isinstance(budgets, int) else f" (NFE {', '.join(map(str, budgets))})"


def weights_text(settings: dict) -> str:
    """What a fit's ``weights`` entries add (as JSON keeps the settings), e.g. ``; then the weights of `fitted`
    on gradient_estimation's grids (NFE ≤ 6)…``; ``""`` without entries."""
    entries = settings.get("weights") or ()
    if not entries:
        return ""
    on = ", ".join(label(entry[0], dict(entry[1])) + budgets_text(entry) for entry in entries)
    rounds = settings.get("weights_rounds", 2)
    told_at = settings.get("weights_evaluation_times")
    return (
        f"; then on the grids of {on} the weights of the multistep sampler `fitted` (at most "
        f"{settings.get('weights_history', 3)} derivatives per step)"
        + (" and of its corrector" if settings.get("weights_corrector") else "")
        + " by least squares"
        + (
            ", then the times its evaluations are told by coordinate descent, the weights fitted again for them"
            + (f" (NFE {', '.join(map(str, told_at))})" if isinstance(told_at, (tuple, list)) else "")
            if told_at
            else ""
        )
        + (f" in {rounds} rounds, the times descended again for the weights between them" if rounds > 1 else "")
        + ", both raced"
    )


def markdown_lines(results: dict) -> list[str]:
    """The report's section on the optimised-grid contestants: how they were fitted, and per (schedule, target,
    NFE) the best of them with its grid (nothing when none was raced)."""
    setup = (results.get("setup") or {}).get("optimized_grids")
    records = [r for r in results.get("accuracy") or [] if "fit" in r]
    if not setup or not records:
        return []
    samplers = ", ".join(label(entry[0], dict(entry[1])) + budgets_text(entry) for entry in setup["samplers"])
    high = ", ".join(label(entry[0], dict(entry[1])) for entry in setup.get("samplers_gaussian_high") or ())
    lines = [
        "### Optimised time grids",
        "",
        f"Contestants {samplers} at every NFE ≤ {setup['max_nfe']}"
        + (f", and on the Gaussian target {high} at NFE ≤ {setup['max_nfe_gaussian']}" if high else "")
        + weights_text(setup)
        + ": for each target, schedule and NFE the grid is "
        "fitted by `unisde.grids.optimize.optimize_grid` (GITS dynamic programming over "
        f"{setup['candidates']} candidate times, then coordinate descent on the sampler's full error"
        + (
            f" from each of the best few of the DP path, the default grid and the {', '.join(setup['starts'])} "
            f"grids ({setup['descents']} on the 2-D mixture, {setup.get('descents_64d', setup['descents'])} on the "
            f"64-D one, {setup.get('descents_gaussian', setup['descents'])} on the Gaussian), the best end kept"
            if setup["starts"]
            else ""
        )
        + f") on {setup['calibration_2d']} calibration starts on the 2-D mixture, {setup['calibration']} on the 64-D "
        f"one and {setup.get('calibration_gaussian', setup['calibration'])} on the Gaussian, of seed "
        f"{setup['seed']}, against the PF-ODE solved by RK4 to a relative {setup['reference_rtol']:g} (halving test), "
        f"objective `{setup['objective']}` (RMS over the starts of the per-sample error: the trajectory metric / √d). "
        "The race then scores the grid on starts it never saw: the fixed trajectory batch on mixtures, the exact "
        "output law on the Gaussian. The grid is the registered `optimized` grid of a `UnifiedScheduler` config. "
        f"Fitting took {sum(r['fit']['seconds'] for r in records):.0f} s in all."
        + (f" Note — {setup['note']}." if setup.get("note") else ""),
        "",
        "| schedule | target | NFE | best optimised contestant | error | calibration error | descent start | "
        "grid times t | fit (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    best: dict = {}
    for r in records:
        key = (r["schedule"], r["target"], r["nfe"])
        if math.isfinite(r["distance"]) and (key not in best or r["distance"] < best[key]["distance"]):
            best[key] = r
    for (schedule, target, nfe), r in sorted(best.items()):
        fit = r["fit"]
        times = ", ".join(f"{t:.4g}" for t in fit["times"])
        lines.append(
            f"| {schedule} | {target} | {nfe} | {r['sampler']} | {r['distance']:.3e} | "
            f"{fit['calibration_error']:.3e} | {fit['start']} | {times} | {fit['seconds']:.1f} |"
        )
    return lines + [""]
