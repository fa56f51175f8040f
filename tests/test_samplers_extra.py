r"""The ncsn, pc, sde and ode samplers: structure, parity, convergence orders and moments against exact answers.

Ground truth is a Gaussian data distribution N(μ, v0 I), whose exact denoiser under any schedule is
D(x, t) = μ + s v0/(s² v0 + σ²) (x − s μ) (unisde.analytic.Gaussian; the closed form is used inline in the
convergence loops for speed and checked equal to the library's below). Because D is affine, every sampler
here except pc (whose snr step size depends on norms) maps its Gaussian inputs affinely to its output, so the
output's mean and variance are known *exactly* from one run: the starting point is set to the prior mean and
each noise draw to a zero tensor that requires grad; the output then is the mean, and its gradients with
respect to the start and to every draw give the variance (Var = Σ (∂out/∂input)² Var(input)). That removes
Monte-Carlo noise from the order estimates; a Monte-Carlo run through UnifiedScheduler with the real noise
checks the same number within its statistical bound.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import ScoreSdeVeScheduler

import unisde
from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import make_grid
from unisde.samplers.ncsn import technique4_ratio
from unisde.sampling import run_loop

MU, V0 = 0.5, 0.25
BUILTIN = ("ddpm", "ddim", "ncsn", "pc", "edm", "sde", "ode", "lms", "unipc", "pndm")
PARAMETERIZATIONS = ("epsilon", "sample", "v_prediction", "score", "edm")
SCHEDULE_KINDS = {
    "vp-table": lambda: {},  # diffusers' default DDPM config keys: linear β table, 1000 entries
    "ve": lambda: {"schedule": {"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}},
    "edm": lambda: {"schedule": "edm"},
}


def exact_denoiser(x, t, sched):
    s, sig = float(sched.s(t)), float(sched.sigma(t))
    return MU + s * V0 / (s * s * V0 + sig * sig) * (x - s * MU)


def test_inline_denoiser_is_the_library_gaussian():
    dist = Gaussian(torch.tensor([MU, MU]), torch.tensor(V0))
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sched in (NoiseSchedule.vp_linear(), NoiseSchedule.ve(), NoiseSchedule.edm()):
        for t in (0.9, 0.3, 0.01):
            torch.testing.assert_close(exact_denoiser(x, t, sched), dist.denoise(x, t, sched), rtol=1e-12, atol=1e-12)


def run_sampler(name, sched, grid, x, opts=None, generator=None, sampler=None):
    """Drive a sampler directly with the exact denoiser (no scheduler, float64 if x is)."""
    smp = sampler or get_sampler(name)(sched, **(opts or {}))
    times = smp.prepare(grid)
    smp.generator = generator
    t_list = times.tolist()
    x = run_loop(smp, x, lambda x, k: exact_denoiser(x, t_list[k], sched))
    return x, times


def exact_moments(name, sched, grid, opts=None):
    """(mean, variance, evaluations) of the sampler's 1-d output started from the exact marginal at t_0."""
    smp = get_sampler(name)(sched, **(opts or {}))
    t0 = float(grid[0])
    s, sig = float(sched.s(t0)), float(sched.sigma(t0))
    start = torch.full((1, 1), s * MU, dtype=torch.float64, requires_grad=True)
    draws = []

    def zero_noise(sample):
        z = torch.zeros_like(sample, requires_grad=True)
        draws.append(z)
        return z

    smp.noise_sampler = zero_noise
    out, times = run_sampler(name, sched, grid, start, sampler=smp)
    grads = torch.autograd.grad(out.sum(), [start] + draws)
    var = float(grads[0]) ** 2 * (s * s * V0 + sig * sig) + sum(float(g) ** 2 for g in grads[1:])
    return float(out.detach()), var, len(times)


# ============================================================================ registry and smoke
def test_every_builtin_sampler_is_registered():
    names = set(unisde.list_samplers())
    assert set(BUILTIN) <= names, sorted(set(BUILTIN) - names)


@pytest.mark.parametrize("kind", sorted(SCHEDULE_KINDS))
@pytest.mark.parametrize("param", PARAMETERIZATIONS)
@pytest.mark.parametrize("name", sorted(set(BUILTIN) | set(unisde.list_samplers())))
def test_every_sampler_runs_every_parameterization_on_every_schedule(name, param, kind):
    """3 steps on a 1×1×4×4 sample through UnifiedScheduler with a perfect model of that parameterisation."""
    uni = UnifiedScheduler(prediction_type=param, sampler=name, **SCHEDULE_KINDS[kind]())
    uni.set_timesteps(3)
    dist = Gaussian(torch.full((16,), MU), torch.tensor(V0), event_shape=(1, 4, 4))
    model = dist.as_model(param, uni.noise_schedule)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 4, 4, generator=gen) * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    assert x.shape == (1, 1, 4, 4) and x.dtype == torch.float32
    assert torch.isfinite(x).all(), f"{name} / {param} / {kind}: non-finite output"
    assert model.nfe == len(uni.timesteps)


@pytest.mark.parametrize("name", ["ncsn", "pc", "sde", "ode"])
def test_zero_terminal_snr_table_stays_finite(name):
    cfg = {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "prediction_type": "v_prediction",
    }
    uni = UnifiedScheduler(sampler=name, time_grid="trailing", **cfg)
    uni.set_timesteps(4)
    model = Gaussian(torch.full((4,), MU), torch.tensor(V0), event_shape=(1, 2, 2)).as_model(
        "v_prediction", uni.noise_schedule
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 2, 2, generator=gen) * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(model(x, t), t, x, generator=gen).prev_sample
    assert torch.isfinite(x).all()


@pytest.mark.parametrize(
    "name, options, bad",
    [
        ("ncsn", {"n_steps_each": 0}, "n_steps_each"),
        ("ncsn", {"n_steps_each": "5"}, "n_steps_each"),
        ("ncsn", {"step_lr": -1.0}, "step_lr"),
        ("ncsn", {"denoise": 1}, "denoise"),
        ("ncsn", {"steps": 3}, "steps"),
        ("pc", {"predictor": "heun"}, "predictor"),
        ("pc", {"snr": "0.1"}, "snr"),
        ("pc", {"correct_steps": -1}, "correct_steps"),
        ("pc", {"discretization": "uniform"}, "discretization"),
        ("sde", {"eta": -0.5}, "eta"),
        ("sde", {"eta": None}, "eta"),
        ("sde", {"method": "heun"}, "method"),
        ("lms", {"lms_order": 5}, "lms_order"),
        ("unipc", {"variant": "bh3"}, "variant"),
        ("unipc", {"disable_corrector": [-1]}, "disable_corrector"),
        ("ode", {"solver": "rk5"}, "solver"),
        ("ode", {"solver": 4}, "solver"),
        ("ode", {"tol": 1e-3}, "tol"),
    ],
)
def test_bad_options_are_value_errors_naming_the_option(name, options, bad):
    with pytest.raises(ValueError, match=bad):
        UnifiedScheduler(sampler=name, sampler_options=options)


# ============================================================================ ncsn
def test_ncsn_lists_every_langevin_step_and_the_final_denoising_evaluation():
    uni = UnifiedScheduler(sampler="ncsn", sampler_options={"n_steps_each": 3})
    uni.set_timesteps(4)
    ts = uni.timesteps.tolist()
    assert uni.order == 3 and len(ts) == 4 * 3 + 1
    levels = [ts[3 * i] for i in range(4)]
    assert all(ts[3 * i + j] == levels[i] for i in range(4) for j in range(3))
    assert ts[-1] == levels[-1], "the denoising evaluation is at the smallest level"
    assert levels == sorted(levels, reverse=True) and len(set(levels)) == 4
    sig = uni.sigmas[:4].double()  # default grid uniform in λ: geometric in σ̃
    ratios = sig[:-1] / sig[1:]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios[0])), rtol=1e-4, atol=0)
    uni2 = UnifiedScheduler(sampler="ncsn", sampler_options={"n_steps_each": 3, "denoise": False})
    uni2.set_timesteps(4)
    assert len(uni2.timesteps) == 12


def test_ncsn_default_step_reproduces_ncsnv2_cifar10():
    """NCSNv2's technique 4 on its CIFAR-10 grid (232 geometric levels 50 → 0.01, T = 5) gives ε = 6.2e-6."""
    a = technique4_ratio((50 / 0.01) ** (1 / 231), 5)
    assert abs(a * 0.01**2 - 6.2e-6) < 0.01 * 6.2e-6


def test_ncsn_final_denoise_is_tweedie():
    """With denoise=True the output is D(x̃; σ̃_L) of the last Langevin sample (Tweedie's formula;
    Karras et al. 2022, eq. 3)."""
    sched = NoiseSchedule.ve()
    grid = make_grid(sched, 3, "uniform_lambda")
    smp = get_sampler("ncsn")(sched, n_steps_each=2)
    times = smp.prepare(grid)
    x = torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    smp.generator = torch.Generator().manual_seed(1)
    last = []  # D at the final evaluation
    x = run_loop(
        smp,
        x,
        lambda x, k: exact_denoiser(x, float(times[k]), sched),
        callback=lambda k, x, d: last.append(d) if k == len(times) - 1 else None,
    )
    expected = last[0]
    assert torch.equal(x, expected)


@pytest.mark.parametrize(
    "sched",
    [NoiseSchedule.ve(), NoiseSchedule.from_diffusers_config({}), NoiseSchedule.edm()],
    ids=["ve", "ddpm-table", "edm"],
)
def test_ncsn_moments_approach_the_target_as_levels_and_steps_grow(sched):
    """Annealed Langevin is biased at any finite setting (unadjusted steps, finite mixing per level); its exact
    output moments approach N(μ, v0) as levels L and steps T grow. Mean: exact by symmetry of the VE view."""
    errs = []
    for levels, each in ((10, 5), (40, 5), (160, 20)):
        m, v, nfe = exact_moments("ncsn", sched, make_grid(sched, levels, "uniform_lambda"), {"n_steps_each": each})
        assert nfe == levels * each + 1
        assert abs(m - MU) < 1e-9
        errs.append(abs(v / V0 - 1))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.08, errs


def test_ncsn_monte_carlo_through_scheduler_matches_exact_moments():
    """Real noise draws through UnifiedScheduler (score model on VE): sample mean/variance within 5 standard
    errors of the exact output moments of the same configuration."""
    uni = UnifiedScheduler(
        schedule={"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0},
        prediction_type="score",
        sampler="ncsn",
        sampler_options={"n_steps_each": 4},
    )
    n_levels, batch, dim = 20, 500, 8
    uni.set_timesteps(n_levels)
    sched = uni.noise_schedule
    grid = make_grid(sched, n_levels, "uniform_lambda")
    m_exact, v_exact, _ = exact_moments("ncsn", sched, grid, {"n_steps_each": 4})
    model = Gaussian(torch.full((dim,), MU), torch.tensor(V0)).as_model("score", sched)
    gen = torch.Generator().manual_seed(3)
    # start from the exact marginal at t_0 (the exact-moment computation does the same)
    x = MU + math.sqrt(V0 + float(sched.sigma(grid[0])) ** 2) * torch.randn(
        batch, dim, generator=gen, dtype=torch.float64
    )
    for t in uni.timesteps:
        x = uni.step(model(x, t), t, x, generator=gen).prev_sample
    n = batch * dim
    assert abs(float(x.mean()) - m_exact) < 5 * math.sqrt(v_exact / n)
    assert abs(float(x.var()) / v_exact - 1) < 5 * math.sqrt(2 / n)


# ============================================================================ pc
def _score_model(x, sigma):
    """A smooth nonlinear score field on the model's σ input (the ScoreSdeVe pipelines feed σ)."""
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))) if isinstance(sigma, torch.Tensor) and sigma.ndim else sigma
    return -(x - 0.3) / (0.25 + sig**2) + 0.05 * torch.tanh(x) / (1 + sig**2)


@pytest.mark.parametrize("n, eps, correct_steps, snr", [(10, 1e-5, 1, 0.15), (25, 1e-3, 2, 0.16), (7, 1e-2, 1, 0.2)])
def test_pc_reproduces_score_sde_ve_scheduler_and_pipeline_loop(n, eps, correct_steps, snr):
    """ScoreSdeVePipeline's loop (correct_steps × step_correct, then step_pred, output = last prev_sample_mean)
    against UnifiedScheduler.from_config(ScoreSdeVe config) in a plain loop, same generator, float32.
    Tolerance 1e-5 × the largest |x| of the reference trajectory (float32 works at that scale)."""
    ref = ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, sampling_eps=eps, correct_steps=correct_steps, snr=snr)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "pc" and uni._sampler.opts["snr"] == snr and uni.order == correct_steps + 1
    shape = (2, 3, 4, 4)
    x_start = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
    gen = torch.Generator().manual_seed(1)
    ref.set_timesteps(n)
    ref.set_sigmas(n)
    x, scale = x_start.clone(), float(x_start.abs().max())
    for i, t in enumerate(ref.timesteps):
        sigma_t = ref.sigmas[i] * torch.ones(shape[0])
        for _ in range(ref.config.correct_steps):
            x = ref.step_correct(_score_model(x, sigma_t), x, generator=gen).prev_sample
        out = ref.step_pred(_score_model(x, sigma_t), t, x, generator=gen)
        x, mean = out.prev_sample, out.prev_sample_mean
        scale = max(scale, float(x.abs().max()))
    gen = torch.Generator().manual_seed(1)
    uni.set_timesteps(n)
    assert len(uni.timesteps) == n * (correct_steps + 1)
    y = x_start.clone()
    for t in uni.timesteps:
        y = uni.step(_score_model(y, t * torch.ones(shape[0])), t, y, generator=gen).prev_sample
    err = float((y - mean).abs().max())
    assert err <= 1e-5 * scale, f"max|diff| {err:.3g} > 1e-5 × {scale:.3g}"


def _pc_moments(sched, n, opts, batch=2000, dim=16, seed=0):
    smp = get_sampler("pc")(sched, **opts)
    grid = make_grid(sched, n, "uniform_t")
    t0 = float(grid[0])
    s, sig = float(sched.s(t0)), float(sched.sigma(t0))
    gen = torch.Generator().manual_seed(seed)
    x = s * MU + math.sqrt(s * s * V0 + sig * sig) * torch.randn(batch, dim, generator=gen)
    x, _ = run_sampler("pc", sched, grid, x, sampler=smp, generator=gen)
    x = x.double()
    return float(x.mean()), float(x.var(0).mean())


@pytest.mark.parametrize("sched", [NoiseSchedule.ve(), NoiseSchedule.vp_linear()], ids=["ve", "vp-linear"])
def test_pc_sample_moments_match_the_gaussian(sched):
    """2000 samples of a 16-d N(μ, v0 I): standard errors 0.5/√32000 = 0.0028 (mean) and ≈ √(2/2000)/4 = 0.8 %
    (variance averaged over 16 dimensions). Allowed: 5 standard errors, plus for the corrector its unadjusted-
    Langevin stationary bias ≈ snr² (2.6 % at snr = 0.16, module doc of unisde.samplers.pc)."""
    se_mean, se_var = 0.5 / math.sqrt(32000), math.sqrt(2 / 2000) / 4
    for opts, bias in (({"snr": 0.16}, 0.16**2), ({"snr": 0.16, "predictor": "euler_maruyama"}, 0.16**2)):
        m, v = _pc_moments(sched, 200, opts)
        assert abs(m - MU) < 5 * se_mean, (opts, m)
        assert abs(v / V0 - 1) < bias + 0.02 + 5 * se_var, (opts, v / V0)  # 0.02: O(1/n) discretisation at n = 200


def test_pc_predictor_alone_converges_at_first_order():
    """correct_steps = 0: the reverse-diffusion chain's variance error shrinks ~4× from n = 100 to 400
    (first order; Monte-Carlo standard error 0.8 % is small against the errors ≈ 10 % and 3 %)."""
    sched = NoiseSchedule.ve()
    e1 = abs(_pc_moments(sched, 100, {"correct_steps": 0})[1] / V0 - 1)
    e2 = abs(_pc_moments(sched, 400, {"correct_steps": 0})[1] / V0 - 1)
    assert 2.5 < e1 / e2 < 6.5, (e1, e2)


# ============================================================================ sde
@pytest.mark.parametrize(
    "sched, kind",
    [
        (NoiseSchedule.vp_linear(), "uniform_t"),
        (NoiseSchedule.from_diffusers_config({}), "uniform_t"),
        (NoiseSchedule.ve(), "uniform_t"),
        (NoiseSchedule.edm(), "karras"),
    ],
    ids=["vp-linear", "ddpm-table", "ve", "edm"],
)
def test_sde_weak_error_is_first_order(sched, kind):
    """Exact output mean/variance of Euler–Maruyama vs the exact law of its last step's target, D(x_{t_last})
    with x_{t_last} ~ p_{t_last} (mean μ, variance s² v0²/(s² v0 + σ²)): errors halve (or better) per doubling."""
    errs = []
    for n in (16, 32, 64, 128):
        grid = make_grid(sched, n, kind)
        t_last = float(grid[-2])
        s, sig = float(sched.s(t_last)), float(sched.sigma(t_last))
        v_ref = s * s * V0 * V0 / (s * s * V0 + sig * sig)
        m, v, _ = exact_moments("sde", sched, grid)
        errs.append(max(abs(m - MU), abs(v - v_ref)))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(3)]
    assert min(orders[1:]) > 0.85, (errs, orders)
    if sched.name in ("vp-linear", "table"):  # the O(Δt) term does not vanish here: order 1, not more
        assert orders[-1] < 1.3, orders


def test_sde_eta_comes_from_the_pipeline_unless_fixed():
    """DDIM pipelines pass eta: η = 0 makes `sde` deterministic (the PF-ODE); a user-fixed η wins."""

    def run(uni, seed, eta):
        uni.set_timesteps(5)
        x = torch.ones(1, 1, 2, 2)
        model = Gaussian(torch.full((4,), MU), torch.tensor(V0), event_shape=(1, 2, 2)).as_model(
            "epsilon", uni.noise_schedule
        )
        gen = torch.Generator().manual_seed(seed)
        for t in uni.timesteps:
            x = uni.step(model(x, t), t, x, eta=eta, generator=gen).prev_sample
        return x

    free = UnifiedScheduler(sampler="sde")
    assert torch.equal(run(free, 0, 0.0), run(free, 1, 0.0))
    assert not torch.equal(run(free, 0, 1.0), run(free, 1, 1.0))
    fixed = UnifiedScheduler(sampler="sde", sampler_options={"eta": 1.0})
    assert not torch.equal(run(fixed, 0, 0.0), run(fixed, 1, 0.0))


@pytest.mark.parametrize("eta, twin, twin_opts", [(1.0, "ddpm", {}), (0.0, "ddim", {})], ids=["ddpm", "ddim"])
def test_sde_exponential_is_ddpm_at_eta_one_and_ddim_at_eta_zero(eta, twin, twin_opts):
    """The exact-linear-part step of the η-family reproduces DDPM's posterior step (η = 1) and DDIM (η = 0) on
    the same grid of a DDPM table, noise draw for noise draw, in float64."""
    sched = NoiseSchedule.from_diffusers_config({})
    grid = make_grid(sched, 10, "uniform_t")
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours, _ = run_sampler(
        "sde", sched, grid, x, {"method": "exponential", "eta": eta}, torch.Generator().manual_seed(1)
    )
    ref, _ = run_sampler(twin, sched, grid, x, twin_opts, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "sched, kind",
    [
        (NoiseSchedule.from_diffusers_config({}), "uniform_t"),
        (NoiseSchedule.ve(), "uniform_t"),
        (NoiseSchedule.edm(), "karras"),
    ],
    ids=["ddpm-table", "ve", "edm"],
)
def test_sde_exponential_is_stable_at_few_steps_and_first_order(sched, kind):
    """Exact output moments (as in the Euler–Maruyama test): at 4 steps Euler–Maruyama's error explodes (≥ 10 here)
    while the exponential step stays below 0.25; both are first order as the steps grow."""

    def error(n, method):
        grid = make_grid(sched, n, kind)
        t_last = float(grid[-2])
        s, sig = float(sched.s(t_last)), float(sched.sigma(t_last))
        m, v, _ = exact_moments("sde", sched, grid, {"method": method})
        return max(abs(m - MU), abs(v - s * s * V0 * V0 / (s * s * V0 + sig * sig)))

    assert error(4, "euler_maruyama") > 10 and error(4, "exponential") < 0.25
    errs = [error(n, "exponential") for n in (32, 64, 128, 256)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(3)]
    assert 0.75 < orders[-1] < 1.2 and errs[0] > errs[1] > errs[2] > errs[3], (errs, orders)


# ============================================================================ lms
@pytest.mark.parametrize(
    "sched, kind",
    [
        (NoiseSchedule.from_diffusers_config({}), "karras"),
        (NoiseSchedule.edm(), "karras"),
        (NoiseSchedule.vp_linear(), "uniform_lambda"),
    ],
    ids=["ddpm-table", "edm", "vp-linear"],
)
def test_lms_convergence_order(sched, kind):
    """Adams–Bashforth of order p on the PF-ODE with the exact Gaussian denoiser, against the exact flow
    x̃(0) = μ + (x̃_0 − μ) √(v0/(v0 + σ̃_0²)): the error falls like n^−p (measured ≈ p − 0.3 at 64 → 128 steps)."""
    for order in (1, 2, 3, 4):
        errs = []
        for n in (32, 64, 128):
            grid = make_grid(sched, n, kind)
            t0 = float(grid[0])
            out, _ = run_sampler(
                "lms",
                sched,
                grid,
                torch.tensor([[1.3 * float(sched.s(t0))]], dtype=torch.float64),
                {"lms_order": order},
            )
            exact = MU + (1.3 - MU) * math.sqrt(V0 / (V0 + float(sched.ve_sigma(t0)) ** 2))
            errs.append(abs(float(out) - exact))
        measured = math.log2(errs[-2] / errs[-1])
        assert order - 0.4 < measured < order + 0.3, (order, errs, measured)


def test_lms_entered_mid_grid_restarts_at_first_order():
    """img2img enters the loop at a later step: the first step it sees is Euler (no stale or missing history)."""
    sched = NoiseSchedule.edm()
    grid = make_grid(sched, 10, "karras")
    smp = get_sampler("lms")(sched)
    times = smp.prepare(grid)
    x = torch.tensor([[0.7]], dtype=torch.float64)
    k = 4
    d = exact_denoiser(x, float(times[k]), sched)
    loop = smp.loop(x, k)  # entered at evaluation k: the sample it asks for after one evaluation
    next(loop)
    out = loop.send((x, d))
    ve_k, ve_n = float(sched.ve_sigma(times[k])), float(sched.ve_sigma(grid[k + 1]))
    torch.testing.assert_close(out, x + (ve_n - ve_k) * (x - d) / ve_k, rtol=1e-12, atol=1e-12)


# ============================================================================ unipc
def test_unipc_corrector_raises_the_order_by_one():
    """UniP of order p with UniC is order p + 1 (Zhao et al. 2023): on the exact Gaussian PF-ODE flow the error
    at 64 → 128 steps (EDM schedule, uniform λ grid) falls ≈ 4× for p = 1 and ≈ 8× for p = 2."""
    sched = NoiseSchedule.edm()
    for order, (lo, hi) in ((1, (1.7, 2.3)), (2, (2.6, 3.6))):
        errs = []
        for n in (32, 64, 128):
            grid = make_grid(sched, n, "uniform_lambda")
            out, _ = run_sampler(
                "unipc",
                sched,
                grid,
                torch.tensor([[1.3]], dtype=torch.float64),
                {"solver_order": order, "lower_order_final": False},
            )
            exact = MU + (1.3 - MU) * math.sqrt(V0 / (V0 + float(sched.ve_sigma(grid[0])) ** 2))
            errs.append(abs(float(out) - exact))
        measured = math.log2(errs[-2] / errs[-1])
        assert lo < measured < hi, (order, errs, measured)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_entered_mid_grid_corrects_as_diffusers(order):
    """img2img (set_begin_index k): the loop builds its history up again from step k and corrects every prediction
    it made itself, with the weights of the order it was made at — as diffusers' UniPC does after entry (float32,
    max|diff| ≤ 1e-5 × the trajectory's max |x|)."""
    from diffusers import UniPCMultistepScheduler

    ref = UniPCMultistepScheduler(solver_order=order)
    uni = UnifiedScheduler.from_config(ref.config)
    x_start = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for begin in (1, 4, 9):
        outs, scale = [], float(x_start.abs().max())
        for sch in (ref, uni):
            sch.set_timesteps(20)
            sch.set_begin_index(begin)
            x = x_start.clone()
            for t in sch.timesteps[begin:]:
                x = sch.step(x * 0.8 + 0.05 * torch.sin(3 * x), t, x).prev_sample
                scale = max(scale, float(x.abs().max()))
            outs.append(x)
        err = float((outs[0] - outs[1]).abs().max())
        assert err <= 1e-5 * scale, (begin, err, scale)


# ============================================================================ ode
def _pf_ode_reference(sched, grid, x_start):
    """Exact PF-ODE flow for N(μ, v0) in the VE view, x̃(σ̃) − μ = (x̃_0 − μ) √((v0 + σ̃²)/(v0 + σ̃_0²)), from t_0 to
    the last evaluation time, then the final step's D (the solver's last step is D exactly)."""
    t0, tl = float(grid[0]), float(grid[-2])
    ve0, vel = float(sched.ve_sigma(t0)), float(sched.ve_sigma(tl))
    x_ve = MU + (x_start / float(sched.s(t0)) - MU) * math.sqrt((V0 + vel**2) / (V0 + ve0**2))
    return exact_denoiser(x_ve * float(sched.s(tl)), tl, sched)


@pytest.mark.parametrize(
    "sched", [NoiseSchedule.vp_linear(), NoiseSchedule.ve(), NoiseSchedule.edm()], ids=["vp-linear", "ve", "edm"]
)
@pytest.mark.parametrize(
    "solver, order, steps",
    [("euler", 1, (16, 32, 64)), ("heun", 2, (16, 32, 64)), ("rk3", 3, (32, 64, 128)), ("rk4", 4, (8, 16, 32))],
)
def test_ode_convergence_order(sched, solver, order, steps):
    """Karras grids with n, 2n, 4n steps: the global error at the end drops by ≈ 2^p (p = the solver's order)."""
    x_start = torch.linspace(-3, 3, 9, dtype=torch.float64).reshape(9, 1) * float(sched.sigma(1.0)) + MU * float(
        sched.s(1.0)
    )
    errs = []
    for n in steps:
        grid = make_grid(sched, n, "karras")
        out, times = run_sampler("ode", sched, grid, x_start.clone(), {"solver": solver})
        assert len(times) == order * (n - 1) + 1  # the last step (to σ̃ = 0) is one Euler evaluation
        errs.append(float((out - _pf_ode_reference(sched, grid, x_start)).abs().max()))
    observed = math.log2(errs[-2] / errs[-1])
    assert abs(observed - order) < 0.35, (errs, observed)


def test_pndm_entered_mid_grid_takes_a_ddim_step_from_where_it_is():
    """img2img starts the loop at a later call: call 1 evaluates at t_1 and would redo t_0 → t_1, so entered there
    it leaves x where it is; a later call takes DDIM's step with its own ε̂, after which PLMS builds up again."""
    sched = NoiseSchedule.from_diffusers_config({})
    grid = make_grid(sched, 6, "leading")
    x = torch.tensor([[0.7]], dtype=torch.float64)
    for k in (1, 3):
        smp = get_sampler("pndm")(sched)
        t = float(smp.prepare(grid)[k])
        d = exact_denoiser(x, t, sched)
        loop = smp.loop(x, k)  # entered at call k: the sample it asks for after one evaluation
        next(loop)
        out = loop.send((x, d))
        if k == 1:
            expected = x
        else:
            ddim = get_sampler("ddim")(sched)
            j = int((ddim.prepare(grid) == t).nonzero()[0])
            ddim_loop = ddim.loop(x, j)
            next(ddim_loop)
            expected = ddim_loop.send((x, d))
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
