r"""The accuracy section: every contestant samples the exact model of each target, and its error is measured
without sampling noise wherever the mathematics allows (:mod:`unisde.bench.exact`):

* ``w2`` — Gaussian targets: the exact W₂ distance of the contestant's exact output law N(b, A Aᵀ) to the data
  law (deterministic *and* stochastic contestants: the noise draws are prescribed), with KL alongside, and as
  ``floor`` the prior floor (what an exact PF-ODE solve from the same start law scores).
* ``trajectory`` — other targets, deterministic contestants: RMS over a fixed batch of ‖x_out − x_ref‖ against
  the converged PF-ODE solution from the same starts (from the schedule's first time t = 1 with the same standard
  normal starts for a contestant that starts later: :func:`scored_reference`); ``floor`` is the reference's own
  convergence error.
* ``sliced-w2`` — the rest (stochastic contestants on mixtures, and anything whose run is not affine on a
  Gaussian target, e.g. pc's batch-averaged Langevin step): sliced W₂ between n generated and n exact samples,
  ``floor`` the same distance between two independent exact sets. A Brownian-tree sampler (DPMSolverSDE, unisde's
  ``dpmpp_sde``) has its path prescribed (:class:`unisde.bench.exact.PrescribedBrownian`: the exact law of its
  correlated increments), on Gaussian targets as draws of the exact law and under the sampling metric as seeded
  draws in place of torchsde's tree — the same law, at one sample-sized draw per new level where the tree's queries
  cost ~60 (a third of the 64-D mixture's DDPM cell).

Trained checkpoints (``digits-vp``, ``digits-flow``; :func:`measure_checkpoint`) have no closed form: the trajectory
metric is taken against the network's own PF-ODE (:class:`unisde.bench.exact.NetworkODE`, float64, the same solver
and convergence check), and ``frechet`` — the Fréchet distance to the real digits (:class:`_FrechetMetric`) — is the
metric of stochastic contestants and stands alongside the trajectory error of the records the report compares. Their
cost sets their sizes (:class:`unisde.bench.run.BenchConfig`'s ``checkpoint_*`` fields): a float64 call of the UNet
costs ~2 ms per sample on one core and each reference start ~1700 calls, so the trajectory batch is small, every
contestant starts at the schedule's first time (trailing spacing on the DDPM table: one reference start for most of
them), the unisde twins run at two NFE, and stochastic contestants at one.

Every contestant starts from the same standard normal z (scaled by its scheduler's ``init_noise_sigma``; k-diffusion's
functions, :mod:`unisde.bench.kdiffusion`, by the first level σ̃_max of their grid, as k-diffusion does).
``x̂0`` clipping (DDPMScheduler's ``clip_sample=True`` default, an image heuristic) is switched off for every
contestant: with an exact model it can only add error, and it makes the output law non-Gaussian.
NFE is counted by the model: a contestant runs the largest ``num_inference_steps`` whose calls fit the budget. The
best unisde record is compared with the best peer, diffusers or k-diffusion (:data:`PEER_LIBRARIES`).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING

import torch

from unisde.bench import exact
from unisde.bench.contestants import (
    FLOW_SHIFTS,
    _unified,
    base_config,
    diffusers_contestants,
    kdiffusion_available,
    kdiffusion_contestants,
    steps_for_nfe,
    unisde_contestants,
)
from unisde.bench.metrics import projection_directions, sliced_w2, sorted_projections
from unisde.bench.optimized import optimized_contestants, settings_for
from unisde.bench.targets import CHECKPOINTS, Checkpoint, CheckpointModel, ExactModel, make_target

if TYPE_CHECKING:
    from unisde.bench.run import BenchConfig

_SEED_NOISE = 1234  # starting noise z (shared by every contestant)
_SEED_TRAJECTORY = 4242  # the fixed batch of starts of the trajectory metric
_SEED_REFERENCE = 2024  # the exact reference set Y
_SEED_FLOOR = 7000  # independent exact sets for the noise floor
_SEED_BROWNIAN = 5151  # the Brownian path of a Brownian-tree sampler under the sampling metric (exact.run_scheduler)

AFFINE_TOL = 1e-5
"""Largest relative residual of the affine check (exact.affine_law) for which the exact law is used. Runs in
float64 reach ~1e-14; schedulers that compute in float32 inside (diffusers' Euler family upcasts to float32)
reach ~1e-7, which moves W₂ by about that much; a non-affine run (batch-averaged step sizes) is off by 1e-2."""

PRIMARY_METRIC = {"gaussian": "w2", "mixture": "trajectory", "checkpoint": "trajectory"}
SAMPLING_METRICS = ("sliced-w2", "frechet")
"""Metrics with sampling noise (compared against their floor, as information): sliced W₂ to exact samples, and on
the trained checkpoints the Fréchet distance to the real digits."""


def accuracy_config(schedule: str) -> dict:
    """The diffusers config of ``schedule`` with x̂0 clipping and thresholding off (module doc). Keys listed in
    ``_use_default_values`` would be replaced by each class's own default, so they are taken out of that list."""
    cfg = dict(base_config(schedule))
    forced = {k: False for k in ("clip_sample", "thresholding") if k in cfg}
    cfg.update(forced)
    if "_use_default_values" in cfg:
        cfg["_use_default_values"] = [k for k in cfg["_use_default_values"] if k not in forced]
    return cfg


def checkpoint_config(base: dict, spacing: str | None) -> dict:
    """The race config on a trained checkpoint: ``base`` (:func:`accuracy_config`) with ``timestep_spacing`` set to
    ``spacing`` where the config has that key (the DDPM table; None: unchanged). With ``"trailing"`` every contestant
    starts at the table's last index, as the linspace-spaced schedulers and k-diffusion's grids do, so all share one
    start and one reference solve; diffusers' default ``"leading"`` starts each NFE at its own index (t = 0.75 at
    NFE 4 … 0.98 at NFE 50), and each start costs its own float64 solve of the network's ODE."""
    if spacing is None or "timestep_spacing" not in base:
        return base
    out = {**base, "timestep_spacing": spacing}
    if "_use_default_values" in out:
        out["_use_default_values"] = [k for k in out["_use_default_values"] if k != "timestep_spacing"]
    return out


def _encodes(contestant) -> bool:
    """Whether a unisde contestant's sampler encodes (runs data → noise, e.g. ``ddim_inverse``)."""
    from unisde.plugins import get_sampler

    if contestant.library != "unisde" or contestant.twin_of:
        return False
    try:
        return bool(getattr(get_sampler(contestant.label.split("[")[0]), "encodes", False))
    except ValueError:
        return False


def target_kind(dist) -> str:
    """``gaussian`` (one component: affine exact denoiser), ``mixture``, or ``checkpoint`` (a trained network,
    :class:`unisde.bench.targets.Checkpoint`)."""
    if isinstance(dist, Checkpoint):
        return "checkpoint"
    return "gaussian" if dist.num_components == 1 else "mixture"


class _SamplingMetric:
    """Sliced W₂ against one fixed exact set, with the noise floor of two independent exact sets (lazy)."""

    def __init__(self, dist, n: int, projections: int):
        self.dist, self.n = dist, n
        self.directions = projection_directions(dist.dim, projections)
        self._ready = False

    def _prepare(self):
        if self._ready:
            return
        dist, n = self.dist, self.n
        self.reference = dist.sample(n, torch.Generator().manual_seed(_SEED_REFERENCE), dtype=torch.float64)
        # sorted once: every stochastic contestant of every schedule is compared with this set
        self.reference_sorted = sorted_projections(self.reference, self.directions)
        pair = []
        for r in range(3):
            a = dist.sample(n, torch.Generator().manual_seed(_SEED_FLOOR + 2 * r), dtype=torch.float64)
            b = dist.sample(n, torch.Generator().manual_seed(_SEED_FLOOR + 2 * r + 1), dtype=torch.float64)
            pair.append(sliced_w2(a, b, self.directions))
        self.floor, self.floor_sd = statistics.fmean(pair), statistics.stdev(pair)
        self.z = torch.randn(
            n, *dist.event_shape, generator=torch.Generator().manual_seed(_SEED_NOISE), dtype=torch.float64
        )
        self._ready = True

    def measure(self, prepared: exact.Prepared, model) -> dict:
        self._prepare()
        model.nfe = 0
        x, _, _ = exact.run_scheduler(prepared, model, self.z, brownian_seed=_SEED_BROWNIAN)
        return {
            "metric": "sliced-w2",
            "distance": sliced_w2(x, self.reference, self.directions, self.reference_sorted),
            "floor": self.floor,
            "floor_sd": self.floor_sd,
            "exact": False,
            "model_calls": model.nfe,
        }

    def describe(self) -> dict:
        self._prepare()
        return {"floor": self.floor, "floor_sd": self.floor_sd, "n": self.n}


def ancestral_table_error(scheduler, steps: int) -> float | None:
    """For a diffusers scheduler that tabulates its ancestral steps (KDPM2Ancestral's ``sigmas_down``), set for
    ``steps``: the largest relative error of its float32 σ̃_down = √(σ̃_{i+1}² − σ̃_up²) against σ̃_down computed
    without that cancellation in float64 from the class's own σ̃ table (:func:`unisde.samplers.kdpm2.ancestral_step`,
    η = 1); None for a scheduler without such a table. Where σ̃_i/σ̃_{i+1} is large the subtraction loses most of
    float32's digits (on diffusers' default DDPM table 100 % at 2 steps, where it rounds to 0, and 0.3 % at 3),
    which the twin, computing σ̃_down exactly, does not share."""
    from unisde.samplers.kdpm2 import ancestral_step

    if not hasattr(scheduler, "sigmas_down") or not hasattr(scheduler, "sigmas"):
        return None
    scheduler.set_timesteps(steps)

    def per_step(table):  # the class interleaves its per-step table as [x0, x1, x1, x2, x2, …, xn]
        return torch.cat([table[:1], table[1:-1:2]]).double().tolist()

    sigmas, downs = per_step(scheduler.sigmas), per_step(scheduler.sigmas_down)
    worst = 0.0
    for ve_from, ve_to, down in zip(sigmas[:-1], sigmas[1:], downs):
        exact_down = ancestral_step(ve_from, ve_to, 1.0)[0]
        if exact_down > 0.0:
            worst = max(worst, abs(down - exact_down) / exact_down)
    return worst


def _fit_budget(scheduler, budget: int, attempt):
    """Largest steps n whose counted calls fit ``budget``: ``attempt(prepared)`` runs a :class:`exact.Prepared`
    copy of the scheduler set for n and returns (result, calls). Returns (prepared, result) or (None, None)."""
    n = steps_for_nfe(scheduler, budget)  # leaves the scheduler set for n
    first = True
    while n is not None:
        prepared = exact.Prepared(scheduler, n, already_set=first)
        first = False
        result, calls = attempt(prepared)
        if calls <= budget:
            return prepared, result
        n = n - 1 if n > 1 else None
    return None, None


def _sampled(scheduler, model, budget: int, sampling: _SamplingMetric, note: str) -> dict | None:
    """The sampling metric at the budget, for a contestant whose noise cannot be prescribed."""

    def attempt(prepared):
        rec = sampling.measure(prepared, model)
        return rec, rec["model_calls"]

    prepared, rec = _fit_budget(scheduler, budget, attempt)
    if prepared is None:
        return None
    return {"num_inference_steps": prepared.num_inference_steps, "stochastic": True, **rec, "note": note}


def measure_gaussian(scheduler, model, dist, budget: int, sampling: _SamplingMetric) -> dict | None:
    """One record's metric fields on a Gaussian target: the exact law when the run is affine to rounding, else
    (and for a scheduler whose noise cannot be prescribed) the sampling metric."""
    if not exact.feeds_noise(scheduler):
        return _sampled(scheduler, model, budget, sampling, "noise not prescribable: sampling metric")

    def attempt(prepared):
        law = exact.affine_law(prepared, model, dist.event_shape)
        return law, law.nfe

    prepared, law = _fit_budget(scheduler, budget, attempt)
    if prepared is None:
        return None
    base = {
        "num_inference_steps": prepared.num_inference_steps,
        "model_calls": law.nfe,
        "draws": law.draws,
        "stochastic": not law.deterministic,
        "affine_residual": law.residual,
        "start_sigma": math.tan(law.tau0) if law.tau0 < math.pi / 2 else math.inf,
    }
    if law.residual > AFFINE_TOL:
        return {
            **base,
            **sampling.measure(prepared, model),
            "note": f"not affine (check residual {law.residual:.1e}): sampling metric",
        }
    m = exact.law_metrics(law, dist.mean, dist.cov)
    floor = m["prior_floor"] if m["prior_floor"] > 0 else max(1e-15, law.residual)
    rec = {
        **base,
        "metric": "w2",
        "distance": m["w2"],
        "kl": m["kl"],
        "prior_floor": m["prior_floor"],
        "w2_solver": m["w2_solver"],
        "floor": floor,
        "floor_sd": 0.0,
        "exact": True,
    }
    if "trajectory" in m:
        rec["trajectory"] = m["trajectory"]
    return rec


class _LastRowFeeder(exact.NoiseFeeder):
    """Every draw zero except in the batch's last row (random): a run whose last two rows (both started at z = 0)
    differ is stochastic."""

    def __init__(self, rows: int, d: int):
        super().__init__()
        self.rows, self.d, self.gen = rows, d, torch.Generator().manual_seed(99)

    def __call__(self, shape, dtype, device):
        self.count += 1
        w = torch.zeros(self.rows, self.d, dtype=torch.float64)
        w[-1] = torch.randn(self.d, generator=self.gen, dtype=torch.float64)
        return w.reshape(shape).to(dtype=dtype, device=device)


def _fed_run(scheduler, model, starts: torch.Tensor, budget: int, make_feeder):
    """(prepared scheduler, (x, τ₀, y₀, draws, model calls)) of the largest run of ``scheduler`` from ``starts``
    within ``budget`` model calls, every noise draw from a fresh ``make_feeder()``; (None, None) where none fits."""

    def attempt(prepared):
        feeder = make_feeder()
        model.nfe = 0
        x, tau0, y0 = exact.run_scheduler(prepared, model, starts, feeder=feeder)
        return (x, tau0, y0, feeder.count, model.nfe), model.nfe

    return _fit_budget(scheduler, budget, attempt)


def _probe_rows_differ(x: torch.Tensor) -> bool:
    """Whether the last two rows of a run (both started at z = 0, the last one alone fed random draws) differ: the
    draws reach the output, so the contestant is stochastic."""
    scale = max(1.0, float(x[-2].abs().max()))
    return float((x[-1] - x[-2]).abs().max()) > 1e-12 * scale


def first_angle(schedule) -> float:
    """The angle τ = atan2(σ, s) of ``schedule`` at its first time t = 1 (π/2 where s(1) = 0): where a contestant
    that starts at the schedule's start starts (:func:`scored_reference`)."""
    one = torch.tensor(1.0, dtype=torch.float64)
    return math.atan2(float(schedule.sigma(one)), float(schedule.s(one)))


def scored_reference(refs: exact.ReferenceCache, tau0: float, y0: torch.Tensor, top: float, z: torch.Tensor):
    """(reference, late) for a deterministic run whose first model call is at angle ``tau0`` with normalised sample
    ``y0`` (B, d): the PF-ODE solved from that very start when it is the schedule's first angle ``top``; else — a late
    start (leading spacing, σ̃ capped at 4096 on the rectified flow, diffusers' flow σ's from 1 − 1/N) — the PF-ODE
    solved from ``top`` with the same standard normal starts ``z`` (B, d). A late start then pays what its shorter
    path costs instead of being scored on that shorter path (a 1-step PNDM at t = 1/1000 would score ~0)."""
    if tau0 >= top * (1.0 - 1e-9):
        return refs.get(tau0, y0), False
    return refs.get(top, z), True


def measure_mixture(
    scheduler,
    model,
    dist,
    budget: int,
    z_traj: torch.Tensor,
    refs: exact.ReferenceCache,
    sampling: _SamplingMetric,
    top: float,
    outputs: dict | None = None,
    sample: bool = True,
) -> dict | None:
    """One record's metric fields on a non-Gaussian target: trajectory error for a deterministic contestant
    (two extra rows, z = 0 with and without random draws, tell whether the draws reach the output) against
    :func:`scored_reference` (``top``: the schedule's :func:`first_angle`), else the sampling metric (None, no
    record, for a stochastic one when ``sample`` is False). A deterministic contestant's final samples go into
    ``outputs["x"]`` when it is given (for :func:`twin_output_difference`)."""
    if not exact.feeds_noise(scheduler):
        return _sampled(scheduler, model, budget, sampling, "noise not prescribable: sampling metric")
    event, d = dist.event_shape, dist.dim
    rows = z_traj.shape[0] + 2
    z = torch.cat([z_traj.reshape(-1, d), torch.zeros(2, d, dtype=torch.float64)]).reshape(rows, *event)

    prepared, result = _fed_run(scheduler, model, z, budget, lambda: _LastRowFeeder(rows, d))
    if prepared is None:
        return None
    x, tau0, y0, draws, calls = result
    stochastic = _probe_rows_differ(x)
    base = {
        "num_inference_steps": prepared.num_inference_steps,
        "draws": draws,
        "stochastic": stochastic,
        "start_sigma": math.tan(tau0) if tau0 < math.pi / 2 else math.inf,
    }
    if stochastic:
        return {**base, **sampling.measure(prepared, model)} if sample else None
    ref, late = scored_reference(refs, tau0, y0[:-2], top, z_traj.reshape(-1, d))
    if outputs is not None:
        outputs["x"] = x[:-2]
    return {
        **base,
        "late_start": late,
        "model_calls": calls,
        "metric": "trajectory",
        "distance": exact.trajectory_error(x[:-2], ref.x),
        "floor": max(ref.error, 1e-15),
        "floor_sd": 0.0,
        "reference_error": ref.error,
        "exact": True,
    }


class _FrechetMetric:
    """The sample-quality metric of a trained checkpoint: the Fréchet distance (:class:`exact.FrechetReference`, the
    FID formula of Heusel et al. 2017 on the raw 64-d pixels, as ``unisde demo`` reports it) between the n samples a
    contestant makes from the fixed batch of starts ``z`` (n, *event) and the 1797 real digits
    (:func:`unisde.training.data.real_digits`, [−1, 1]); samples are clipped to [−1, 1] first, as a pipeline's
    image output is. ``floor``: :func:`unisde.demo.real_floor` at this n (n real digits against the other 1797 − n),
    mean and sd over three splits — what a perfect sampler would score with n samples. ``model`` (set by the race):
    the checkpoint model the FD runs use (:attr:`BenchConfig.checkpoint_fd_dtype`). Prepared lazily."""

    def __init__(self, z: torch.Tensor):
        self.z, self.n = z, z.shape[0]
        self.model = None
        self._ready = False

    def _prepare(self):
        if self._ready:
            return
        from unisde.demo import real_floor
        from unisde.training.data import real_digits

        real = real_digits(8).to(torch.float64).reshape(-1, 64)
        self.real = exact.FrechetReference(real)
        floors = [real_floor(real.numpy(), self.n, seed) for seed in range(3)]
        self.floor, self.floor_sd = statistics.fmean(floors), statistics.stdev(floors)
        self._ready = True

    def distance(self, x: torch.Tensor) -> float:
        """FD of the samples x (n, …) to the real digits (inf when any sample is not finite)."""
        self._prepare()
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        if not torch.isfinite(x).all():
            return math.inf
        return self.real.distance(x.clamp(-1.0, 1.0))

    def fields(self, x: torch.Tensor) -> dict:
        """The FD fields of a record measured on the FD batch."""
        return {
            "frechet": self.distance(x),
            "frechet_floor": self.floor,
            "frechet_floor_sd": self.floor_sd,
            "n_frechet": self.n,
            "frechet_dtype": str(self.z.dtype).replace("torch.", ""),
        }

    def _run(self, prepared, feeder=None, brownian_seed=None) -> tuple[torch.Tensor, int]:
        self.model.nfe = 0
        x, _, _ = exact.run_scheduler(prepared, self.model, self.z, feeder=feeder, brownian_seed=brownian_seed)
        return x, self.model.nfe

    def measure(self, prepared: exact.Prepared, model=None) -> dict:
        """The FD of a run whose noise cannot be prescribed (its own seeded generator, as
        :meth:`_SamplingMetric.measure`), on :attr:`model` (the race's ``model`` argument is not used)."""
        self._prepare()
        x, calls = self._run(prepared, brownian_seed=_SEED_BROWNIAN)
        fields = self.fields(x)
        return {
            "metric": "frechet",
            "distance": fields["frechet"],
            "floor": self.floor,
            "floor_sd": self.floor_sd,
            "exact": False,
            "model_calls": calls,
            **fields,
        }

    def sampled(self, scheduler, budget: int) -> dict | None:
        """A stochastic contestant's record at ``budget``: the FD of its n samples, its noise draws seeded standard
        normals (:class:`_CheckpointFeeder`, the same for every contestant)."""
        self._prepare()

        def attempt(prepared):
            x, calls = self._run(prepared, feeder=_CheckpointFeeder(self.n, self.z[0].numel(), probes=False))
            return (x, calls), calls

        prepared, result = _fit_budget(scheduler, budget, attempt)
        if prepared is None:
            return None
        x, calls = result
        fields = self.fields(x)
        return {
            "num_inference_steps": prepared.num_inference_steps,
            "stochastic": True,
            "model_calls": calls,
            "metric": "frechet",
            "distance": fields["frechet"],
            "floor": self.floor,
            "floor_sd": self.floor_sd,
            "exact": False,
            **fields,
        }

    def alongside(self, scheduler, record: dict) -> dict:
        """The FD fields of a deterministic ``record``: its contestant rerun with the record's steps on the FD batch
        (a ValueError if the rerun's model calls differ from the record's)."""
        self._prepare()
        prepared = exact.Prepared(scheduler, record["num_inference_steps"])
        x, calls = self._run(prepared, feeder=_CheckpointFeeder(self.n, self.z[0].numel(), probes=False))
        if calls != record["model_calls"]:
            raise ValueError(f"FD rerun of {record['sampler']} made {calls} model calls, not {record['model_calls']}")
        return self.fields(x)

    def describe(self) -> dict:
        self._prepare()
        return {"floor": self.floor, "floor_sd": self.floor_sd, "n": self.n}


class _CheckpointFeeder(exact.NoiseFeeder):
    """The noise of a checkpoint run on n starts: standard normal draws (seeded) for the n samples — a stochastic
    contestant's own noise, the same for every contestant — and with ``probes`` two more rows, both started at z = 0:
    zeros for row n and random draws for row n + 1, so that a run whose last two rows differ is stochastic."""

    def __init__(self, n: int, d: int, probes: bool = True, seed: int = _SEED_BROWNIAN):
        super().__init__()
        self.n, self.d, self.probes = n, d, probes
        self.gen, self.probe = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(99)

    def __call__(self, shape, dtype, device):
        j = self.count
        self.count += 1
        rows = self.n + (2 if self.probes else 0)
        if math.prod(shape) != rows * self.d:
            raise ValueError(f"noise draw {j} has shape {tuple(shape)}, not one row per sample of the batch")
        w = torch.zeros(rows, self.d, dtype=torch.float64)
        w[: self.n] = torch.randn(self.n, self.d, generator=self.gen, dtype=torch.float64)
        if self.probes:
            w[-1] = torch.randn(self.d, generator=self.probe, dtype=torch.float64)
        return w.reshape(shape).to(dtype=dtype, device=device)


def measure_checkpoint(
    scheduler,
    model,
    budget: int,
    z: torch.Tensor,
    refs: exact.ReferenceCache,
    fd: _FrechetMetric,
    state: dict,
    stochastic_budgets: tuple | None = None,
    *,
    top: float,
    outputs: dict | None = None,
) -> dict | None:
    """One record's metric fields on a trained checkpoint. The contestant's first run, on the trajectory batch ``z``
    (n starts, float64) plus two probe rows, tells whether its noise reaches its output (remembered in ``state``,
    one dict per contestant: a deterministic one's later runs take the n starts alone, a stochastic one's later
    budgets need no trajectory run at all; determinism is a property of the algorithm, not of its step count).
    Deterministic: the trajectory error against the network's own PF-ODE solved from the same starts (``refs``,
    :func:`scored_reference`; ``top``: the schedule's :func:`first_angle`); its
    FD is added afterwards, for the records the report compares (:meth:`_FrechetMetric.alongside`). Stochastic (or
    noise that cannot be prescribed): the FD of its samples on the FD batch (:meth:`_FrechetMetric.sampled`), at the
    budgets in ``stochastic_budgets`` only (None: all; elsewhere None is returned). ``outputs``: as in
    :func:`measure_mixture`."""
    fd_budget = stochastic_budgets is None or budget in stochastic_budgets
    if not exact.feeds_noise(scheduler):
        if not fd_budget:
            return None
        return _sampled(scheduler, fd.model, budget, fd, "noise not prescribable: Fréchet distance only")
    if state.get("stochastic"):
        return fd.sampled(scheduler, budget) if fd_budget else None
    n, d, event = z.shape[0], model.checkpoint.dim, model.checkpoint.event_shape
    probes = "stochastic" not in state
    flat = z.reshape(n, d).to(torch.float64)
    starts = torch.cat([flat, torch.zeros(2, d, dtype=torch.float64)]) if probes else flat
    starts = starts.reshape(starts.shape[0], *event)

    prepared, result = _fed_run(scheduler, model, starts, budget, lambda: _CheckpointFeeder(n, d, probes=probes))
    if prepared is None:
        return None
    x, tau0, y0, draws, calls = result
    if probes:
        state["stochastic"] = _probe_rows_differ(x)
    if state["stochastic"]:
        return fd.sampled(scheduler, budget) if fd_budget else None
    ref, late = scored_reference(refs, tau0, y0[:n], top, flat)
    if outputs is not None:
        outputs["x"] = x[:n]
    return {
        "num_inference_steps": prepared.num_inference_steps,
        "late_start": late,
        "draws": draws,
        "stochastic": False,
        "start_sigma": math.tan(tau0) if tau0 < math.pi / 2 else math.inf,
        "model_calls": calls,
        "metric": "trajectory",
        "distance": exact.trajectory_error(x[:n], ref.x),
        "floor": max(ref.error, 1e-15),
        "floor_sd": 0.0,
        "reference_error": ref.error,
        "n_trajectory": n,
        "exact": True,
    }


def twin_output_difference(twin: torch.Tensor, peer: torch.Tensor) -> dict:
    """How far a twin's final samples lie from its peer's, start by start (the same starts): the median and the
    largest per-start ‖x_twin − x_peer‖ (whole vectors, data units) over the ``starts``. A twin pair whose
    trajectory errors differ by more than the tolerance while the median start agrees far within it is one whose
    few starts near a boundary between modes amplify a small difference (the peer's float32 arithmetic)."""
    diff = twin.to(torch.float64).reshape(twin.shape[0], -1) - peer.to(torch.float64).reshape(peer.shape[0], -1)
    per_start = diff.norm(dim=1)
    return {
        "median": float(per_start.median()),
        "max": float(per_start.max()),
        "starts": int(per_start.numel()),
    }


def race_rounding(records: list, runs: dict, model: CheckpointModel, z: torch.Tensor) -> dict | None:
    """What running a checkpoint race's network in ``model.dtype`` (float32) rather than float64 moves a score by:
    the best deterministic unisde record at the largest NFE rerun on the trajectory batch ``z`` with the network in
    float64, as {"nfe", "sampler", "rms": RMS of the two outputs' difference, "relative": that over the record's own
    trajectory error}; None where there is no such record (or the race already runs in float64)."""
    if model.dtype == torch.float64:
        return None
    mine = [r for r in records if r["library"] == "unisde" and r.get("metric") == "trajectory"]
    if not mine:
        return None
    nfe = max(r["nfe"] for r in mine)
    record = min((r for r in mine if r["nfe"] == nfe), key=lambda r: r["distance"])
    scheduler = runs[("unisde", record["sampler"], nfe)]
    n, d = z.shape[0], model.checkpoint.dim
    starts = z.reshape(n, *model.checkpoint.event_shape).to(torch.float64)
    out = []
    for net in (model, model.in_dtype(torch.float64)):
        _, result = _fed_run(scheduler, net, starts, nfe, lambda: _CheckpointFeeder(n, d, probes=False))
        out.append(result[0].reshape(n, d))
    rms = exact.trajectory_error(out[0], out[1])
    return {"nfe": nfe, "sampler": record["sampler"], "rms": rms, "relative": rms / record["distance"]}


def _fd_alongside(records: list, runs: dict, fd: _FrechetMetric, errors: list):
    """Add the FD (:meth:`_FrechetMetric.alongside`) to the records the report compares on one checkpoint: at each
    NFE the best deterministic unisde record and the best peer record on the trajectory metric. ``runs``: the
    scheduler of each (library, label, NFE)."""
    for nfe in sorted({r["nfe"] for r in records}):
        mine = [r for r in records if r["nfe"] == nfe]
        for rec in (best(mine, "unisde", "trajectory"), best(mine, PEER_LIBRARIES, "trajectory")):
            if rec is None or "frechet" in rec:
                continue
            try:
                rec.update(fd.alongside(runs[(rec["library"], rec["sampler"], nfe)], rec))
            except Exception as exc:
                errors.append(
                    {
                        "library": rec["library"],
                        "sampler": rec["sampler"],
                        "schedule": rec["schedule"],
                        "target": rec["target"],
                        "nfe": nfe,
                        "error": f"FD rerun: {type(exc).__name__}: {exc}"[:300],
                    }
                )


def _accuracy(cfg: BenchConfig, log) -> tuple[list, list, list]:
    """(records, floors, errors) of the accuracy section: its cells run in this process, or, with ``cfg.workers``
    > 1, as jobs in that many worker processes (:func:`_in_workers`), with the same records in the same order."""
    if not kdiffusion_available():
        log("accuracy: k-diffusion is not installed (pip install 'unisde[bench]'), so its samplers are skipped")
    for name in cfg.targets:
        if name in CHECKPOINTS and CHECKPOINTS[name].schedule not in cfg.schedules:
            log(f"accuracy: {name} skipped: it runs on the schedule it was trained with, {CHECKPOINTS[name].schedule}")
    jobs = _jobs(cfg)
    workers = min(int(getattr(cfg, "workers", 1) or 1), len(jobs))
    if workers > 1:
        records, floors, errors = _in_workers(cfg, jobs, workers, log)
    else:
        records, floors, errors = _cells(cfg, tuple(cfg.targets), tuple(cfg.schedules), log)
        for floor in floors:
            floor.pop("_sampled")
    for line in summary_lines(records):
        log(line)
    return records, floors, errors


_SEED_CELL = 31337
"""torch's global generator is seeded with this for each (target, schedule) cell (and restored afterwards): a peer
that draws from it (DPMSolverSDE's Brownian-tree seed without a ``noise_sampler_seed``) gets the same noise whether
the cells run one after another or in worker processes."""


def _jobs(cfg: BenchConfig) -> list[tuple[str, tuple]]:
    """The accuracy section as independent jobs (target, schedules), costliest first (the workers take them in this
    order): one per target and schedule, the rectified flow with and without a shift together (they share their
    optimised-grid fits)."""
    flows = tuple(s for s in cfg.schedules if s in FLOW_SHIFTS)
    groups = [(s,) for s in cfg.schedules if s not in FLOW_SHIFTS] + ([flows] if flows else [])
    weight = {"ddpm": 3.0, "edm": 1.0}  # contestants: ~400 on the DDPM table, ~130 on EDM, ~200 per flow schedule
    jobs = []
    for t in cfg.targets:
        if t in CHECKPOINTS:  # on its own schedule only (none when that schedule is not run)
            own = CHECKPOINTS[t].schedule
            jobs += [(t, (own,))] if own in cfg.schedules else []
        else:
            jobs += [(t, g) for g in groups]

    def cost(job):
        if job[0] in CHECKPOINTS:
            return _CHECKPOINT_JOB_WEIGHT.get(job[0], 2.0)
        return (2.0 if job[0] == "mixture-8x8" else 1.0) * sum(weight.get(s, 1.5) for s in job[1])

    return sorted(jobs, key=lambda j: -cost(j))


_CHECKPOINT_JOB_WEIGHT = {"digits-vp": 5.8, "digits-flow": 5.9}
"""A checkpoint job's cost on the scale of :func:`_jobs`, where one unit is ~80 s of one core at the full preset (a
2-D mixture's DDPM job is 3): measured ~460 s and ~475 s, their optimised-grid fits included (digits-flow's weight,
corrector and evaluation-time fits ~170 s of it; Dec 2026)."""


_WORKER_BUILT: dict = {}  # a worker process's contestants per (schedule, grid variants), kept across its jobs


def _job(cfg: BenchConfig, target: str, schedules: tuple) -> tuple[list, list, list, list]:
    """One job in a worker process: (records, floors, errors, log lines)."""
    torch.set_num_threads(1)
    lines: list = []
    return (*_cells(cfg, (target,), schedules, lines.append, _WORKER_BUILT), lines)


def _in_workers(cfg: BenchConfig, jobs: list, workers: int, log) -> tuple[list, list, list]:
    """Run ``jobs`` in ``workers`` fresh processes (spawned: nothing of this process's threads or state is
    inherited) and merge their results into the order and the floors of one sequential run: records and errors by
    (target, schedule) as ``cfg`` lists them, one floor row per target (its seconds and reference solves summed
    over its jobs)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    log(f"accuracy: {len(jobs)} jobs (target × schedule) in {workers} worker processes")
    done: dict = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_job, cfg, target, group): (target, group) for target, group in jobs}
        for future in as_completed(futures):
            key = futures[future]
            records, floors, errors, lines = future.result()
            for line in lines:
                log(line)
            done[key] = (records, floors, errors)
    order = {s: i for i, s in enumerate(cfg.schedules)}
    keys = sorted(done, key=lambda k: (list(cfg.targets).index(k[0]), order[k[1][0]]))
    records = [r for k in keys for r in done[k][0]]
    errors = [e for k in keys for e in done[k][2]]
    floors = []
    for target in cfg.targets:
        parts = [done[k][1][0] for k in keys if k[0] == target and done[k][1]]
        if not parts:  # a checkpoint target whose schedule is not run
            continue
        merged = dict(parts[0])
        merged["seconds"] = sum(p["seconds"] for p in parts)
        if "reference_solves" in merged:
            merged["reference_solves"] = sum(p["reference_solves"] for p in parts)
            merged["reference_max_error"] = max(p["reference_max_error"] for p in parts)
        sampled = [p for p in parts if p["_sampled"]]
        if sampled:  # the same exact sets in every job: any job that used the sampling metric has its floor
            merged.update(floor=sampled[0]["floor"], floor_sd=sampled[0]["floor_sd"])
        merged.pop("_sampled")
        floors.append(merged)
    return records, floors, errors


def _cells(
    cfg: BenchConfig, targets: tuple, schedules: tuple, log, built: dict | None = None
) -> tuple[list, list, list]:
    """(records, floors, errors) of the cells ``targets`` × ``schedules``, one after another; a floor row per target
    (with ``_sampled``: whether the sampling metric was used, so its floor is in the row)."""
    records, floors, errors = [], [], []
    # schedule -> (config, [(contestant, scheduler or exception)], timestep cache, σ̃ cache), shared by targets
    built = {} if built is None else built
    fits: dict = {}  # optimised grids by (target, noise schedule, contestant, NFE), shared by schedules (flow shifts)

    only = getattr(cfg, "contestants", None)

    def contestants_of(schedule: str, variants: bool, checkpoint: bool = False):
        key = (schedule, variants, None if only is None else tuple(only), checkpoint)
        if key not in built:
            base = accuracy_config(schedule)
            if checkpoint:
                base = checkpoint_config(base, cfg.checkpoint_spacing)
            peers, twins = diffusers_contestants(schedule, base, variants)
            k_peers, k_twins = kdiffusion_contestants(schedule, base, variants)
            entries = []
            for c in unisde_contestants(schedule, base, variants) + twins + k_twins + peers + k_peers:
                if only is not None and c.label not in only:
                    continue
                if checkpoint and _encodes(c):  # an encoder runs data → noise: not a sampler of the network
                    continue
                try:
                    entries.append((c, c.make()))
                except Exception as exc:  # a peer that cannot be built on this schedule is reported, not fatal
                    entries.append((c, exc))
            built[key] = (base, entries, {}, {})
        return built[key]

    for target_name in targets:
        target_schedules = schedules
        if target_name in CHECKPOINTS:  # a trained checkpoint runs on the schedule it was trained with only
            target_schedules = tuple(s for s in schedules if s == CHECKPOINTS[target_name].schedule)
            if not target_schedules:
                continue
        dist = make_target(target_name)
        kind = target_kind(dist)
        n_samples, budgets, variants = cfg.for_target(target_name)
        fit_settings = cfg.fit
        refs = None
        if kind == "checkpoint":
            # one fixed batch of starts: its first n_traj rows the trajectory batch, its first n_samples the FD batch
            n_traj = int(cfg.checkpoint_trajectory)
            z_all = torch.randn(
                max(n_samples, n_traj),
                *dist.event_shape,
                generator=torch.Generator().manual_seed(_SEED_TRAJECTORY),
                dtype=torch.float64,
            )
            z_traj = z_all[:n_traj]
            fd_dtype = getattr(torch, cfg.checkpoint_fd_dtype)
            sampling = _FrechetMetric(z_all[:n_samples].to(fd_dtype))
            states: dict = {}  # (library, label) -> {"stochastic": …}, found by the first run
            runs: dict = {}  # (library, label, NFE) -> scheduler, for the FD reruns
            ode = exact.NetworkODE(dist.raw, dist.parameterization.name, dist.schedule, dist.event_shape)
            refs = exact.ReferenceCache(
                ode, *cfg.checkpoint_rtol, start_rtol=cfg.checkpoint_start_rtol, tau_rtol=cfg.checkpoint_start_rtol
            )
            fit_settings = settings_for(cfg.checkpoint_fit, target_name)
        else:
            n_traj = int(getattr(cfg, "n_trajectory", None) or (1024 if dist.dim <= 2 else 256))
            sampling = _SamplingMetric(dist, n_samples, cfg.projections_for(target_name))
            if kind == "mixture":
                refs = exact.ReferenceCache(dist, *((1e-8, 1e-6) if cfg.quick else (1e-9, 1e-7)))
            z_traj = torch.randn(
                n_traj,
                *dist.event_shape,
                generator=torch.Generator().manual_seed(_SEED_TRAJECTORY),
                dtype=torch.float64,
            )
        target_started = time.perf_counter()
        for schedule in target_schedules:
            # a cell's own seed of the global generator (see _SEED_CELL), the caller's state restored afterwards
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_SEED_CELL)
                base, entries, times, ve_times = contestants_of(schedule, variants, kind == "checkpoint")
                ref_sched = _unified(base)
                if kind == "checkpoint":  # the race's network in checkpoint_race_dtype, its reference in float64
                    race_dtype = getattr(torch, cfg.checkpoint_race_dtype)
                    model = CheckpointModel(dist, ref_sched.parameterization, ref_sched.noise_schedule, race_dtype)
                else:
                    model = ExactModel(dist, ref_sched.parameterization, ref_sched.noise_schedule)
                top = first_angle(ref_sched.noise_schedule)
                if isinstance(getattr(model, "_times", None), dict):
                    model._times = times  # t(timestep) and c_in depend on the schedule only: share the inversions
                    model._ve_times = ve_times  # … and t(σ̃) of k-diffusion's calls
                if kind == "checkpoint":  # the FD runs' model: the same network in checkpoint_fd_dtype
                    sampling.model = model.in_dtype(fd_dtype)
                started = time.perf_counter()

                def race(c, scheduler, budgets, extra=None, schedule=schedule, model=model, top=top):
                    """Record ``c``'s metric at each budget (a failure as an error row)."""
                    if isinstance(scheduler, Exception):
                        errors.append(
                            {
                                "library": c.library,
                                "sampler": c.label,
                                "schedule": schedule,
                                "target": target_name,
                                **({"nfe": budgets[0]} if len(budgets) == 1 else {}),
                                "error": f"{type(scheduler).__name__}: {scheduler}"[:300],
                            }
                        )
                        return
                    if kind == "checkpoint":
                        runs.update({(c.library, c.label, b): scheduler for b in budgets})
                        twin_nfe = cfg.checkpoint_twin_nfe
                        if c.twin_of and twin_nfe is not None and extra is None:
                            budgets = tuple(b for b in budgets if b in twin_nfe)
                    for budget in budgets:
                        out: dict = {}
                        try:
                            if kind == "gaussian":
                                rec = measure_gaussian(scheduler, model, dist, budget, sampling)
                            elif kind == "checkpoint":
                                state = states.setdefault((c.library, c.label), {})
                                s_nfe = cfg.checkpoint_stochastic_nfe
                                rec = measure_checkpoint(
                                    scheduler, model, budget, z_traj, refs, sampling, state, s_nfe, top=top, outputs=out
                                )
                            else:
                                sampled_max = cfg.sampled_variants_max_nfe
                                rec = measure_mixture(
                                    scheduler,
                                    model,
                                    dist,
                                    budget,
                                    z_traj,
                                    refs,
                                    sampling,
                                    top,
                                    outputs=out,
                                    sample=not c.grid_variant or sampled_max is None or budget <= sampled_max,
                                )
                        except Exception as exc:
                            errors.append(
                                {
                                    "library": c.library,
                                    "sampler": c.label,
                                    "schedule": schedule,
                                    "target": target_name,
                                    "nfe": budget,
                                    "error": f"{type(exc).__name__}: {exc}"[:300],
                                }
                            )
                            continue
                        if rec is None:
                            continue  # the sampler's smallest run needs more calls than the budget
                        # twins race before their peers (contestants_of): a peer's samples are kept only for a twin
                        if "x" in out and (c.twin_of or (c.library != "unisde" and (False, c.label, budget) in finals)):
                            finals[(c.library != "unisde", c.twin_of or c.label, budget)] = out["x"]
                        if c.library == "diffusers" and not c.twin_of:
                            table_error = ancestral_table_error(scheduler, rec["num_inference_steps"])
                            if table_error is not None:
                                rec["ancestral_table_error"] = table_error
                        records.append(
                            {
                                "library": c.library,
                                "sampler": c.label,
                                "target": target_name,
                                "schedule": schedule,
                                "nfe": budget,
                                **rec,
                                **({"twin_of": c.twin_of} if c.twin_of else {}),
                                **(extra or {}),
                            }
                        )

                finals: dict = {}  # (is a peer, peer label, NFE) -> final samples of the trajectory batch
                first = len(records)
                for c, scheduler in entries:
                    race(c, scheduler, budgets)
                for rec in records[first:]:
                    twin, peer = (finals.get((side, rec.get("twin_of"), rec["nfe"])) for side in (False, True))
                    if twin is not None and peer is not None:
                        rec["output_difference"] = twin_output_difference(twin, peer)
                finals.clear()
                log(
                    f"accuracy: {target_name} / {schedule}: {len(entries)} contestants in "
                    f"{time.perf_counter() - started:.1f} s"
                )
                # Optimised grids, fitted here on calibration starts of their own (unisde.bench.optimized) and raced
                # at their budget only.
                started = time.perf_counter()
                if only is not None and not any("grid=optimized" in label for label in only):
                    fit_settings = None
                fitted = optimized_contestants(base, dist, ref_sched.noise_schedule, budgets, fit_settings, fits)
                fitted = [f for f in fitted if only is None or f.contestant.label in only]
                for f in fitted:
                    race(f.contestant, f.scheduler, (f.budget,), {"fit": f.fit})
                if fitted:
                    log(
                        f"accuracy: {target_name} / {schedule}: {len(fitted)} optimised grids fitted and raced in "
                        f"{time.perf_counter() - started:.1f} s"
                    )
                if kind == "checkpoint":
                    started = time.perf_counter()
                    cell = [r for r in records if r["target"] == target_name and r["schedule"] == schedule]
                    _fd_alongside(cell, runs, sampling, errors)
                    rounding = race_rounding(cell, runs, model, z_traj)
                    log(
                        f"accuracy: {target_name} / {schedule}: FD of the compared records in "
                        f"{time.perf_counter() - started:.1f} s ({refs.solves} reference solves)"
                    )
        floor = {
            "target": target_name,
            "kind": kind,
            "metric": PRIMARY_METRIC[kind],
            "nfe": list(budgets),
            "grid_variants": variants,
            "n": n_samples,
            "seconds": time.perf_counter() - target_started,
        }
        if refs is not None:
            floor.update(
                n_trajectory=n_traj,
                reference_rtol=refs.rtol,
                reference_check_rtol=refs.check_rtol,
                reference_solves=refs.solves,
                reference_max_error=refs.max_error,
            )
        if kind == "checkpoint":
            floor.update(
                schedule=target_schedules[0],
                model=dist.description,
                metric_sampled="frechet",
                reference_start_rtol=refs.start_rtol,
                optimized_grids=fit_settings is not None,
                spacing=cfg.checkpoint_spacing if "timestep_spacing" in base else None,
                frechet_dtype=cfg.checkpoint_fd_dtype,
                race_dtype=cfg.checkpoint_race_dtype,
                race_rounding=rounding,
                twin_nfe=None if cfg.checkpoint_twin_nfe is None else list(cfg.checkpoint_twin_nfe),
                stochastic_nfe=None if cfg.checkpoint_stochastic_nfe is None else list(cfg.checkpoint_stochastic_nfe),
            )
            sampling._prepare()
        if sampling._ready:
            sf = sampling.describe()
            floor.update(floor=sf["floor"], floor_sd=sf["floor_sd"])
        else:
            floor.update(floor=0.0, floor_sd=0.0)
        floor["_sampled"] = sampling._ready
        floors.append(floor)
    return records, floors, errors


# ---------------------------------------------------------------------------------------------- the comparison

TARGET_NFE = (4, 5, 6, 8, 10, 20, 50)


TIE_RTOL = 1e-4
"""A ratio within this fraction above the target counts as met, and is labelled a tie: the same algorithm in unisde
(float64 coefficients) and in diffusers (float32 σ tables) differs by ~1e-6 relative on the exact metrics."""


def ratio_target(nfe: int) -> float:
    """The issue's accuracy targets: best unisde ≤ 0.67 × best peer at NFE ≤ 10, ≤ 1.0 × above (20 and 50)."""
    return 0.67 if nfe <= 10 else 1.0


PEER_LIBRARIES = ("diffusers", "k-diffusion")
"""The libraries unisde races: the best record of any of them is the best peer (k-diffusion's rows exist when it is
installed)."""


def _of(record: dict, library: str | tuple) -> bool:
    return record["library"] in ((library,) if isinstance(library, str) else library)


def best(records: list, library: str | tuple, metric: str) -> dict | None:
    """The record of ``library`` (a name, or a tuple of names) with the smallest finite distance on ``metric``."""
    mine = [r for r in records if _of(r, library) and r["metric"] == metric and math.isfinite(r["distance"])]
    return min(mine, key=lambda r: r["distance"]) if mine else None


def best_by(records: list, library: str | tuple, key: str) -> dict | None:
    """The record of ``library`` (a name, or a tuple of names) with the smallest finite ``key`` (None if none)."""
    mine = [r for r in records if _of(r, library) and key in r and math.isfinite(r[key])]
    return min(mine, key=lambda r: r[key]) if mine else None


def contestant_name(record: dict) -> str:
    """A record's sampler label, prefixed with its library where that is not unisde or diffusers."""
    lib = record["library"]
    return record["sampler"] if lib in ("unisde", "diffusers") else f"{lib} {record['sampler']}"


def _solver_comparison(records: list) -> dict | None:
    """Best unisde vs best peer on the discretisation error alone (``w2_solver``: W₂ to the exact PF-ODE solve
    from the contestant's own start law), among the contestants that start where the least mismatched one does
    (prior floor within 5 % of the smallest): a late start makes its own exact solve a poor target that is easy to
    match, so it does not compete here."""
    exact_ones = [r for r in records if "w2_solver" in r and math.isfinite(r["w2_solver"])]
    if not exact_ones:
        return None
    cut = 1.05 * min(r["prior_floor"] for r in exact_ones)
    eligible = [r for r in exact_ones if r["prior_floor"] <= cut]
    us, ps = best_by(eligible, "unisde", "w2_solver"), best_by(eligible, PEER_LIBRARIES, "w2_solver")
    if us is None or ps is None or ps["w2_solver"] <= 0:
        return None
    return {"unisde": us, "peer": ps, "ratio": us["w2_solver"] / ps["w2_solver"], "prior_floor": cut / 1.05}


def comparisons(records: list) -> list[dict]:
    """Per (schedule, target, NFE, metric): the best unisde and the best peer record (``peer``: diffusers or
    k-diffusion, :data:`PEER_LIBRARIES`), their ratio and whether
    the issue's target is met (``reason`` says why not). The primary metric of a target (``w2`` on Gaussian
    targets, ``trajectory`` otherwise) carries the target; ``sliced-w2`` rows (stochastic contestants on
    mixtures) are reported with their floor, as information."""
    out = []
    cells = sorted({(r["schedule"], r["target"], r["nfe"], r["metric"]) for r in records})
    primary_of = {}
    for r in records:
        if r["metric"] in ("w2", "trajectory"):
            primary_of[(r["schedule"], r["target"])] = r["metric"]
    for schedule, target, nfe, metric in cells:
        mine = [r for r in records if r["schedule"] == schedule and r["target"] == target and r["nfe"] == nfe]
        u, p = best(mine, "unisde", metric), best(mine, PEER_LIBRARIES, metric)
        primary = primary_of.get((schedule, target)) == metric
        row = {
            "schedule": schedule,
            "target": target,
            "nfe": nfe,
            "metric": metric,
            "primary": primary,
            "unisde": u,
            "peer": p,
            "target_ratio": ratio_target(nfe) if primary else None,
        }
        if u is None or p is None:
            row.update(
                ratio=None,
                met=False,
                reason=f"no {'peer' if p is None else 'unisde sampler'} fits NFE {nfe} on this metric",
            )
        else:
            ratio = u["distance"] / p["distance"] if p["distance"] > 0 else (1.0 if u["distance"] == 0 else math.inf)
            row["ratio"] = ratio
            if not primary:
                gap = u["distance"] - p["distance"]
                within = abs(gap) <= 2 * max(u.get("floor_sd", 0.0), 1e-300)
                row.update(met=None, reason="within the sampling noise (|Δ| ≤ 2 floor sd)" if within else "")
            else:
                row["met"] = ratio <= row["target_ratio"] * (1 + TIE_RTOL)
                if row["met"]:
                    row["reason"] = (
                        ""
                        if ratio <= row["target_ratio"]
                        else (
                            f"tie: ratio {ratio:.6f}, within {TIE_RTOL:g} of the target (the same algorithm on both "
                            "sides)"
                        )
                    )
                elif u.get("twin_of") == p["sampler"]:
                    row["reason"] = (
                        f"ratio {ratio:.4f} > {row['target_ratio']}: the best unisde is the twin of the "
                        "best peer (same algorithm) and no other unisde sampler beats it"
                    )
                else:
                    row["reason"] = f"ratio {ratio:.3f} > {row['target_ratio']}"
            solver = _solver_comparison(mine)
            if solver is not None:
                row["solver"] = solver
        out.append(row)
    return out


def _label(r: dict | None) -> str:
    if r is None:
        return "—"
    fd = f"; FD {r['frechet']:.3f}" if "frechet" in r and r.get("metric") != "frechet" else ""
    return f"{r['distance']:.3e} ({contestant_name(r)}{fd})"


def summary_lines(records: list) -> list[str]:
    """One log line per primary comparison: best unisde vs best peer, ratio, target met / not met (and why)."""
    lines = []
    for row in comparisons(records):
        if not row["primary"]:
            continue
        if row["met"]:
            verdict = "met" + (f" ({row['reason']})" if row["reason"] else "")
        else:
            verdict = f"NOT MET ({row['reason']})"
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.3f}"
        sv = row.get("solver")
        extra = ""
        if sv:
            extra = (
                f"; discretisation error alone: unisde {sv['unisde']['w2_solver']:.3e} ({sv['unisde']['sampler']})"
                f" vs peer {sv['peer']['w2_solver']:.3e} ({contestant_name(sv['peer'])}), "
                f"ratio {sv['ratio']:.3f}"
            )
        lines.append(
            f"accuracy {row['schedule']}/{row['target']} NFE {row['nfe']} [{row['metric']}]: unisde "
            f"{_label(row['unisde'])} vs best peer {_label(row['peer'])}: ratio {ratio} "
            f"(target ≤ {row['target_ratio']}) {verdict}{extra}"
        )
    return lines
