"""The noise-free accuracy metric of ``unisde bench`` (unisde/bench/exact.py): exact output laws of samplers on
Gaussian targets checked against Monte Carlo, the closed forms against independent routes, a true zero, the
convergence order of samplers measured through it, and the converged PF-ODE reference of the trajectory metric."""

import math

import diffusers
import pytest
import torch

from unisde.analytic import Gaussian, GaussianMixture
from unisde.bench import exact
from unisde.bench.accuracy import AFFINE_TOL, accuracy_config, comparisons
from unisde.bench.targets import ExactModel
from unisde.diffusers.scheduler import UnifiedScheduler

F64 = torch.float64


def _gaussian(d: int) -> Gaussian:
    a = torch.tensor([[0.6, 0.2, -0.1], [0.0, 0.5, 0.3], [0.1, 0.0, 0.4]], dtype=F64)[:d, :d]
    return Gaussian(torch.tensor([0.4, -0.3, 0.2], dtype=F64)[:d], a @ a.T + 0.05 * torch.eye(d, dtype=F64))


def _setup(dist, cfg: dict, **kwargs):
    scheduler = UnifiedScheduler.from_config(cfg, **kwargs)
    return scheduler, ExactModel(dist, scheduler.parameterization, scheduler.noise_schedule)


def _moments_agree(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, z_max: float = 5.0):
    """Sample mean and covariance of x (n, d) against (mean, cov), every entry within z_max standard errors."""
    n = x.shape[0]
    m = x.mean(0)
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert ((m - mean).abs() / se_mean).max() < z_max, (m - mean) / se_mean
    s = torch.cov(x.T)
    var = torch.diagonal(cov)
    se_cov = ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    assert ((s - cov).abs() / se_cov).max() < z_max, (s - cov) / se_cov


def test_gaussian_w2_and_kl_closed_forms():
    gen = torch.Generator().manual_seed(0)
    d = 4
    a, b = torch.randn(d, d, generator=gen, dtype=F64), torch.randn(d, 7, generator=gen, dtype=F64)
    sigma, factor = a @ a.T + 0.1 * torch.eye(d, dtype=F64), 0.5 * b
    cov = factor @ factor.T
    mu, m = torch.randn(d, generator=gen, dtype=F64), torch.randn(d, generator=gen, dtype=F64)
    # the trace form, evaluated directly
    root = exact.psd_sqrt(sigma)
    trace = float(((m - mu) ** 2).sum() + torch.trace(cov + sigma - 2 * exact.psd_sqrt(root @ cov @ root)))
    w2 = exact.gaussian_w2(m, cov, mu, sigma)
    assert math.isclose(w2, math.sqrt(trace), rel_tol=1e-10)
    assert math.isclose(exact.gaussian_w2(m, None, mu, sigma, factor=factor), w2, rel_tol=1e-10)
    # commuting covariances: W₂² = ‖m − μ‖² + ‖C^½ − Σ^½‖_F²
    diag = torch.diag(torch.tensor([0.3, 1.2, 0.7, 2.0], dtype=F64))
    half = 0.5 * torch.eye(d, dtype=F64)  # (0.25 I)^½
    expected = math.sqrt(float(((m - mu) ** 2).sum() + ((exact.psd_sqrt(diag) - half) ** 2).sum()))
    assert math.isclose(exact.gaussian_w2(m, diag, mu, 0.25 * torch.eye(d, dtype=F64)), expected, rel_tol=1e-12)
    # the sum-of-squares form keeps resolving a distance far below the rounding of tr Σ
    assert exact.gaussian_w2(mu, sigma, mu, sigma) < 1e-12
    near = exact.gaussian_w2(mu + 1e-9, sigma, mu, sigma)
    assert math.isclose(near, 1e-9 * math.sqrt(d), rel_tol=1e-4)
    # KL against torch.distributions
    kl = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(m, cov), torch.distributions.MultivariateNormal(mu, sigma)
    )
    assert math.isclose(exact.gaussian_kl(m, cov, mu, sigma), float(kl), rel_tol=1e-9)
    assert exact.gaussian_kl(m, cov[:1, :1].expand(d, d).clone(), mu, sigma) == math.inf  # rank one: no density


def test_deterministic_exact_law_matches_monte_carlo():
    """DPM-Solver++(2M) at 5 steps on a 3-D Gaussian, DDPM table: every one of 20k runs lands on b + A z to
    rounding, the sample moments match (b, A Aᵀ), and the W₂ of the fitted Gaussian matches the exact W₂."""
    dist = _gaussian(3)
    scheduler, model = _setup(dist, accuracy_config("ddpm"), sampler="dpmsolver++")
    law = exact.affine_law(scheduler, model, dist.event_shape, 5)
    assert law.deterministic and law.draws == 0 and law.residual < 1e-12 and law.nfe == 5
    n = 20_000
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    x, tau0, y0 = exact.run_scheduler(scheduler, model, z, 5)
    assert tau0 == law.tau0
    assert (x - (law.mean + z @ law.factor.T)).abs().max() < 1e-12
    assert (y0 - (law.start_mean + z @ law.start.T)).abs().max() < 1e-12
    _moments_agree(x, law.mean, law.cov)
    w2 = exact.law_metrics(law, dist.mean, dist.cov)["w2"]
    assert w2 > 0.05  # a real error at 5 steps, not a vacuous comparison
    chunks = [exact.gaussian_w2(c.mean(0), torch.cov(c.T), dist.mean, dist.cov) for c in x.chunk(10)]
    se = torch.tensor(chunks).std().item() / math.sqrt(10)
    estimate = exact.gaussian_w2(x.mean(0), torch.cov(x.T), dist.mean, dist.cov)
    assert abs(estimate - w2) < 4 * se + 3 * 3 / n, (estimate, w2, se)


@pytest.mark.parametrize("library", ["unisde", "diffusers"])
def test_stochastic_exact_law_matches_monte_carlo(library):
    """DDPM (ancestral) on a 2-D Gaussian: the law read off prescribed draws (unisde's noise_sampler hook, or
    diffusers' randn_tensor swapped) matches 20k runs drawing their own noise; both libraries give one law."""
    dist = _gaussian(2)
    cfg = accuracy_config("ddpm")
    twin, model = _setup(dist, cfg, sampler="ddpm")
    scheduler = twin if library == "unisde" else diffusers.DDPMScheduler.from_config(cfg)
    law = exact.affine_law(scheduler, model, dist.event_shape, 6)
    assert law.draws == 5 and law.relevant_draws == 5 and law.residual < 1e-12  # no noise after the last step
    assert law.factor.shape == (2, 2 + 2 * 5)
    if library == "diffusers":
        ref = exact.affine_law(twin, model, dist.event_shape, 6)
        assert torch.allclose(law.cov, ref.cov, rtol=1e-5, atol=1e-9) and torch.allclose(law.mean, ref.mean, atol=1e-9)
    z = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    x, _, _ = exact.run_scheduler(scheduler, model, z, 6, seed=3)
    _moments_agree(x, law.mean, law.cov)


@pytest.mark.parametrize("library", ["unisde", "diffusers"])
def test_brownian_tree_exact_law_matches_the_tree(library):
    """dpmpp_sde / DPMSolverSDE draw the noise of a step's two stages as increments of one Brownian path over
    overlapping intervals (correlated). The law read off a prescribed path (exact.PrescribedBrownian) matches 20k
    runs of torchsde's own tree (4 trees), both libraries give one law, and the law of independent draws per query
    (what the noise_sampler hook would feed) is another one, which the same runs reject."""
    from contextlib import contextmanager

    dist = _gaussian(3)
    peer_config = dict(diffusers.DPMSolverSDEScheduler.from_config(accuracy_config("ddpm")).config)
    twin_config = {**peer_config, "_class_name": "DPMSolverSDEScheduler"}  # the bench's ≡ twin: sampler dpmpp_sde
    twin, model = _setup(dist, twin_config)
    assert twin.config.sampler == "dpmpp_sde"

    def make():
        if library == "unisde":
            return _setup(dist, twin_config)[0]
        return diffusers.DPMSolverSDEScheduler.from_config(peer_config)

    assert exact.feeds_noise(make())
    law = exact.affine_law(make(), model, dist.event_shape, 4)
    assert law.draws >= 6 and law.relevant_draws >= 6 and law.residual < 1e-12
    ref = exact.affine_law(twin, model, dist.event_shape, 4)
    assert torch.allclose(law.cov, ref.cov, rtol=1e-5, atol=1e-9) and torch.allclose(law.mean, ref.mean, atol=1e-9)
    xs = []
    for k in range(4):
        torch.manual_seed(k)  # diffusers seeds its tree from the global generator; unisde from the step's generator
        z = torch.randn(5000, 3, generator=torch.Generator().manual_seed(10 + k), dtype=F64)
        xs.append(exact.run_scheduler(make(), model, z, 4, seed=20 + k)[0])
    x = torch.cat(xs)
    _moments_agree(x, law.mean, law.cov)

    @contextmanager
    def independent(scheduler, feeder):  # every query its own draw, through the hook
        scheduler._sampler.noise_sampler = lambda like: feeder(like.shape, like.dtype, like.device)
        yield

    original = exact._noise_source
    exact._noise_source = independent
    try:
        other = exact.affine_law(twin, model, dist.event_shape, 4)
    finally:
        exact._noise_source = original
    with pytest.raises(AssertionError):
        _moments_agree(x, other.mean, other.cov)


def test_sampling_metric_drives_brownian_samplers_by_a_seeded_exact_path(monkeypatch):
    """Under the sampling metric a Brownian-tree sampler (DPMSolverSDE, the dpmpp_sde twin) runs on a
    PrescribedBrownian path of seeded draws — the tree's law (previous test), none of torchsde's per-query cost:
    torchsde is never called, and the distance is reproducible."""
    import torchsde

    from unisde.bench.accuracy import _SamplingMetric

    def refuse(*args, **kwargs):
        raise AssertionError("torchsde's tree was queried")

    monkeypatch.setattr(torchsde, "BrownianInterval", refuse)
    dist = GaussianMixture(
        [0.6, 0.4], torch.tensor([[0.8, 0.0], [-0.8, 0.2]], dtype=F64), torch.tensor([0.03, 0.05], dtype=F64)
    )
    peer_config = dict(diffusers.DPMSolverSDEScheduler.from_config(accuracy_config("ddpm")).config)
    twin, model = _setup(dist, {**peer_config, "_class_name": "DPMSolverSDEScheduler"})
    sampling = _SamplingMetric(dist, 500, 16)
    for scheduler in (diffusers.DPMSolverSDEScheduler.from_config(peer_config), twin):
        first = sampling.measure(exact.Prepared(scheduler, 4), model)
        again = sampling.measure(exact.Prepared(scheduler, 4), model)
        assert math.isfinite(first["distance"]) and first["distance"] == again["distance"] and first["model_calls"] == 7


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_exact_model_on_a_table_gives_the_schedules_own_values(prediction):
    """ExactModel remembers s(t) and σ(t) of a table per time (spline lookups): its outputs equal the denoiser and
    conversion evaluated on the schedule itself, bit for bit, at training and fractional timesteps, repeated."""
    dist = GaussianMixture(
        [0.7, 0.3], torch.tensor([[0.5, -0.2, 0.1], [-0.4, 0.3, 0.0]], dtype=F64), torch.tensor([0.05, 0.02], dtype=F64)
    )
    scheduler, model = _setup(dist, {**accuracy_config("ddpm"), "prediction_type": prediction})
    param, sched = scheduler.parameterization, scheduler.noise_schedule
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for ts in (999.0, 500.5, 0.0, 37.25, 999.0, 500.5):
        timestep = torch.tensor(ts, dtype=F64)
        t, c_in = model._time(timestep)
        xs = x / c_in
        expected = param.from_denoised(dist.denoise(xs, t, sched), xs, t, sched)
        assert torch.equal(model(x, timestep), expected), ts


def test_true_zero_and_convergence_order():
    """On a rectified flow the start N(0, I) at t = 1 is the exact prior, so an exact PF-ODE solve reproduces the
    data law: its W₂ (the prior floor) is 0 to rounding, and samplers converge to it at their order."""
    dist = _gaussian(2)
    cfg = dict(diffusers.FlowMatchEulerDiscreteScheduler().config)
    orders = {}
    for sampler, order in (("ddim", 1), ("dpmsolver++", 2)):
        scheduler, model = _setup(dist, cfg, sampler=sampler)
        w = []
        for n in (8, 16, 32, 64):
            law = exact.affine_law(scheduler, model, dist.event_shape, n)
            m = exact.law_metrics(law, dist.mean, dist.cov)
            assert law.tau0 == pytest.approx(math.pi / 2) and m["prior_floor"] < 1e-12
            assert m["trajectory"] >= m["w2"] - 1e-12  # the coupling (x_out, x_ref) bounds W₂ from above
            w.append(m["w2"])
        rates = [math.log2(w[i] / w[i + 1]) for i in range(3)]
        orders[sampler] = rates
        assert abs(rates[-1] - order) < 0.35, (sampler, w, rates)
    assert w[-1] < 1e-2


def test_prior_floor_and_discretisation_error():
    """On diffusers' DDPM table the start N(0, I) at σ̃ ≈ 157 is not the exact p_t: W₂ to the data law levels off
    at the prior floor (an exact solve from that start), while W₂ to the exact solve keeps falling at order 2
    and, for a deterministic sampler, equals at most the trajectory error of the same coupling."""
    dist = _gaussian(2)
    scheduler, model = _setup(dist, accuracy_config("ddpm"), sampler="dpmsolver++")
    m = {
        n: exact.law_metrics(exact.affine_law(scheduler, model, dist.event_shape, n), dist.mean, dist.cov)
        for n in (20, 40, 80)
    }
    floor = m[80]["prior_floor"]
    assert 1e-3 < floor < 3e-3 and all(r["prior_floor"] == floor for r in m.values())
    assert abs(m[80]["w2"] - floor) < 0.1 * floor and m[80]["w2_solver"] < 0.5 * floor
    assert 1.6 < math.log2(m[40]["w2_solver"] / m[80]["w2_solver"]) < 2.6
    for r in m.values():
        assert r["w2_solver"] <= r["trajectory"] + 1e-12 and abs(r["w2"] - r["w2_solver"]) <= floor + 1e-12


def test_non_affine_run_is_detected():
    """pc's Langevin step size is a batch average of score norms: the check row sees the map is not affine."""
    dist = _gaussian(2)
    scheduler, model = _setup(dist, accuracy_config("ddpm"), sampler="pc")
    law = exact.affine_law(scheduler, model, dist.event_shape, 4)
    assert law.residual > AFFINE_TOL


def test_reference_ode_matches_the_closed_form_flow():
    """The trajectory metric's reference solve against the exact Gaussian flow, from a start inside (DDPM table,
    leading spacing) and at t = 1 of a flow (s = 0); and the cache reuses a solve for the same start."""
    dist = _gaussian(2)
    y0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    for tau0 in (math.atan(60.0), math.pi / 2):
        offset, g = exact.gaussian_flow(dist.mean, dist.cov, tau0)
        x = exact.pf_ode_reference(dist, tau0, y0, rtol=1e-10)
        assert (x - (offset + y0 @ g.T)).abs().max() < 1e-8
    # a trained checkpoint's own PF-ODE: the reference through a raw model (here the exact EDM-preconditioned
    # model, evaluated at t(σ̃ = tan τ)) is the same ODE
    scheduler, model = _setup(dist, accuracy_config("edm"))
    via_model = exact.model_denoiser(model, scheduler.parameterization, scheduler.noise_schedule, dist.event_shape)
    x = exact.pf_ode_reference(via_model, math.atan(60.0), y0[:16], rtol=1e-9)
    assert (x - exact.pf_ode_reference(dist, math.atan(60.0), y0[:16], rtol=1e-9)).abs().max() < 1e-7
    mixture = GaussianMixture(
        [0.7, 0.3], torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=F64), torch.tensor([0.05, 0.1], dtype=F64)
    )
    cache = exact.ReferenceCache(mixture, rtol=1e-8, check_rtol=1e-6)
    ref = cache.get(math.atan(80.0), y0)
    assert cache.get(math.atan(80.0), y0 * (1 + 1e-15)) is ref and cache.solves == 2
    assert 0 < ref.error < 1e-5


def test_comparison_verdicts():
    """Targets: ≤ 0.67 at NFE ≤ 10, ≤ 1.0 above; a miss is reported with its reason, a tie within 1e-4 as a tie."""

    def rec(lib, name, nfe, value, twin_of=None):
        return {
            "library": lib,
            "sampler": name,
            "schedule": "ddpm",
            "target": "g",
            "nfe": nfe,
            "metric": "w2",
            "distance": value,
            "floor": 1e-3,
            "exact": True,
            **({"twin_of": twin_of} if twin_of else {}),
        }

    rows = {
        r["nfe"]: r
        for r in comparisons(
            [
                rec("unisde", "a", 10, 0.5),
                rec("diffusers", "P", 10, 1.0),
                rec("unisde", "a", 5, 0.8),
                rec("diffusers", "P", 5, 1.0),
                rec("unisde", "≡P", 20, 1.000001, twin_of="P"),
                rec("diffusers", "P", 20, 1.0),
                rec("unisde", "a", 50, 0.3),
            ]
        )
    }
    assert rows[10]["met"] and rows[10]["ratio"] == 0.5
    assert not rows[5]["met"] and "0.800 > 0.67" in rows[5]["reason"]
    assert rows[20]["met"] and "tie" in rows[20]["reason"]
    assert not rows[50]["met"] and "no peer" in rows[50]["reason"]


def test_twins_convert_the_named_class():
    """Each twin is UnifiedScheduler.from_config of its own diffusers class (the config alone, once the source
    object is gone, was detected by its keys: LMS and KDPM2 configs carrying clip_sample became Heun)."""
    from unisde.bench.contestants import diffusers_contestants

    _, twins = diffusers_contestants("ddpm", accuracy_config("ddpm"), False)
    samplers = {c.label: c.make().config["sampler"] for c in twins}
    assert samplers["≡LMS"] == "lms" and samplers["≡KDPM2"] == "dpm_2"
    assert samplers["≡KDPM2Ancestral"] == "dpm_2_ancestral"
    assert samplers["≡Heun"] == "edm" and samplers["≡DDPM"] == "ddpm"


def test_best_peer_is_the_best_of_diffusers_and_kdiffusion():
    """The race is against every peer library: a k-diffusion record better than every diffusers one is the peer."""

    def rec(lib, name, value):
        return {"library": lib, "sampler": name, "schedule": "edm", "target": "g", "nfe": 10, "metric": "w2",
                "distance": value, "floor": 1e-3, "exact": True}  # fmt: skip

    (row,) = comparisons(
        [rec("unisde", "a", 0.5), rec("diffusers", "P", 1.0), rec("k-diffusion", "sample_lms[karras]", 0.6)]
    )
    assert row["peer"]["library"] == "k-diffusion" and row["ratio"] == 0.5 / 0.6 and not row["met"]


# ---------------------------------------------------------------------------------------------- k-diffusion peers


def _kdiffusion_pair(schedule: str, label: str, twin: str, options: dict):
    """(k-diffusion peer, unisde twin on unisde's own ``karras`` grid, exact model) on a 3-D Gaussian."""
    from unisde.bench.kdiffusion import KDiffusionPeer, UnisdeTwin

    dist = _gaussian(3)
    ref = UnifiedScheduler.from_config(accuracy_config(schedule))
    model = ExactModel(dist, ref.parameterization, ref.noise_schedule)
    peer = KDiffusionPeer(label, ref.noise_schedule, "karras")
    return dist, model, peer, UnisdeTwin(twin, options, "karras", ref.noise_schedule)


@pytest.mark.parametrize("schedule", ["ddpm", "flow"])
@pytest.mark.parametrize(
    "label, twin, options",
    [("sample_euler", "euler", {"view": "ve"}), ("sample_dpmpp_2m", "dpmsolver++", {})],
)
def test_kdiffusion_peer_equals_its_unisde_twin(k_sampling, schedule, label, twin, options):
    """Same algorithm, same answer: k-diffusion's function on its get_sigmas_karras grid and the unisde sampler on
    unisde's ``karras`` grid (the same σ̃ levels: on the flow both start at σ̃ = 4096, t_end) have the same exact
    output law, so the same exact W₂, to float64 rounding — while the algorithms' W₂ differ by O(1)."""
    from unisde.plugins import list_samplers

    if twin not in list_samplers():
        pytest.skip(f"sampler {twin!r} is not installed (the unisde-dpmsolver plugin)")
    dist, model, peer, unisde_twin = _kdiffusion_pair(schedule, label, twin, options)
    n = 8
    unisde_twin.set_timesteps(n)
    peer.set_timesteps(n)
    ve = model.schedule.ve_sigma(torch.tensor(unisde_twin.timesteps, dtype=F64))
    torch.testing.assert_close(ve, peer.sigmas[:-1], rtol=1e-12, atol=0)  # the same grid, built twice
    laws = [exact.affine_law(s, model, dist.event_shape, n) for s in (peer, unisde_twin)]
    for law in laws:
        assert law.deterministic and law.draws == 0 and law.residual < 1e-12 and law.nfe == n
    assert laws[0].tau0 == pytest.approx(laws[1].tau0, rel=1e-14)
    w2 = [exact.law_metrics(law, dist.mean, dist.cov)["w2"] for law in laws]
    assert w2[0] > 1e-3  # a real discretisation error at 8 steps, not a vacuous comparison
    assert abs(w2[0] - w2[1]) <= 1e-12 * w2[0], w2
    torch.testing.assert_close(laws[0].mean, laws[1].mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(laws[0].factor, laws[1].factor, rtol=0, atol=1e-12)
    # and the twin of a different algorithm is not equal (the comparison can fail)
    other = "sample_heun" if label == "sample_euler" else "sample_euler"
    _, _, wrong, _ = _kdiffusion_pair(schedule, other, twin, options)
    w2_wrong = exact.law_metrics(exact.affine_law(wrong, model, dist.event_shape, n), dist.mean, dist.cov)["w2"]
    assert abs(w2_wrong - w2[1]) > 1e-3 * w2[1]


def test_kdiffusion_model_calls_are_counted_and_fit_the_budget(k_sampling, monkeypatch):
    """NFE per function: Heun and DPM-2 call twice per step except the last (2n − 1), DPM-Solver-Fast takes the NFE
    itself; the bench fits each into the budget by counted calls, and a count that disagrees with the table is an
    error, not a silent NFE."""
    from unisde.bench import kdiffusion
    from unisde.bench.accuracy import _SamplingMetric, measure_gaussian

    dist, model, _, _ = _kdiffusion_pair("edm", "sample_euler", "euler", {"view": "ve"})
    sampling = _SamplingMetric(dist, 16, 8)
    for label, grid, steps in (("sample_heun", "karras", 5), ("sample_dpm_2", "exponential", 5),
                               ("sample_lms", "polyexponential", 10), ("sample_dpm_fast", None, 10)):  # fmt: skip
        peer = kdiffusion.KDiffusionPeer(label, model.schedule, grid)
        rec = measure_gaussian(peer, model, dist, 10, sampling)
        assert rec["metric"] == "w2" and rec["num_inference_steps"] == steps, (label, rec)
        assert rec["model_calls"] == (2 * steps - 1 if label in ("sample_heun", "sample_dpm_2") else steps)
    monkeypatch.setitem(kdiffusion.KDIFFUSION_SAMPLERS, "sample_heun", ("sample_heun", lambda n: n))
    peer = kdiffusion.KDiffusionPeer("sample_heun", model.schedule)
    peer.set_timesteps(4)
    with pytest.raises(RuntimeError, match="made 7 model calls"):
        peer.sample_exact(model, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="sample_dpm_fast builds its own"):
        kdiffusion.KDiffusionPeer("sample_dpm_fast", model.schedule, "karras")


def test_kdiffusion_rows_are_skipped_without_kdiffusion(monkeypatch):
    """Without k-diffusion there are no k-diffusion contestants (the accuracy section logs a note instead)."""
    from unisde.bench import kdiffusion
    from unisde.bench.contestants import kdiffusion_available, kdiffusion_contestants

    monkeypatch.setattr(kdiffusion, "load_sampling", lambda: None)
    assert not kdiffusion_available()
    assert kdiffusion_contestants("edm", accuracy_config("edm"), True) == ([], [])
