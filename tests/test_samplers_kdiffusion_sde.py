r"""k-diffusion's ancestral / SDE DPM-Solver++ samplers: ``dpmpp_2s_ancestral``, ``dpmpp_sde`` (built in) and
``dpmpp_2m_sde``, ``dpmpp_3m_sde`` (the ``unisde-dpmsolver`` plugin), and the DPMSolverSDEScheduler conversion.

* k-diffusion itself (the installed ``k_diffusion/sampling.py``, through the ``k_sampling`` fixture) is the reference:
  ``sample_dpmpp_2s_ancestral``, ``sample_dpmpp_sde``, ``sample_dpmpp_2m_sde`` and ``sample_dpmpp_3m_sde`` run on the
  unisde grid's VE-view levels σ̃ = σ/s with the exact Gaussian denoiser in that view, and are fed the very noise
  draws unisde made (its ``noise_sampler`` records them, k-diffusion's ``noise_sampler`` replays them); the final
  samples agree to 1e-10 in float64 on a VP table and on EDM's schedule.
* The data law: for Gaussian data every loop is affine in its start and its noise, so the output's mean and variance
  follow exactly from one run with zero noise that tracks gradients (for ``dpmpp_sde`` the two correlated draws of a
  step are built from independent Brownian increments); they converge to N(μ, v0) as steps grow. A Monte-Carlo run
  with real noise (generator / Brownian tree) lands within 4 standard errors of those exact moments.
* DPMSolverSDEScheduler: live parity after every model call, float32, ≤ 1e-5 × the state's scale, the same Brownian
  path from the same seed (``noise_sampler_seed``, the global RNG, or unisde's generator ↔ diffusers' seed).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DPMSolverSDEScheduler

import unisde
from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.diffusers.converters import ConversionError
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import make_grid
from unisde.grids.diffusers_float32 import diffusers_float32_sigmas
from unisde.sampling import run_loop

MU, V0 = 0.5, 0.25
DIM = 6
REL_TOL = 1e-5
SHAPE = (1, 2, 4, 4)
# torchsde warns when a query lies outside the tree's interval rounded to its 1e-6 resolution (diffusers' own float32
# levels do, by an ulp; the tree clamps them, for diffusers and unisde alike)
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

SCHEDULES = {
    "vp-table": lambda: NoiseSchedule.from_diffusers_config({"beta_schedule": "scaled_linear"}),
    "edm": NoiseSchedule.edm,
}


def plugin_samplers():
    if "dpmpp_3m_sde" not in unisde.list_samplers():
        pytest.skip("the unisde-dpmsolver plugin is not installed (make install-test installs it)")


# ============================================================================ k-diffusion, float64
VE_VIEW = NoiseSchedule.ve(1e-4, 1e4)  # s = 1, σ(t) = 1e-4 · 1e8^t: the VE view itself, t from σ̃ in closed form


def ve_denoiser(dist: Gaussian):
    """k-diffusion's model: the exact denoiser in the VE view, D(x̃; σ̃) (the x̂0 unisde's D(s x̃, t) gives where σ/s =
    σ̃), i.e. the exact denoiser on the VE schedule s = 1 at the time where σ = σ̃."""

    def model(x, sigma):
        t = torch.log(sigma.to(torch.float64) / 1e-4) / math.log(1e8)
        return dist.denoise(x, t, VE_VIEW)

    return model


def against_k_diffusion(k_fn, name, options, sched, grid, k_options=None):
    """(unisde's final sample, k-diffusion's, number of noise draws): one loop each from the same start, k-diffusion
    replaying unisde's draws in order (zeros where unisde drew none because the noise scale is 0)."""
    dist = Gaussian(torch.full((DIM,), MU), torch.tensor(V0))
    smp = get_sampler(name)(sched, **options)
    times = smp.prepare(grid)
    gen, draws = torch.Generator().manual_seed(1), []

    def record(like):
        draws.append(torch.randn(like.shape, generator=gen, dtype=like.dtype))
        return draws[-1]

    smp.noise_sampler = record
    s, sigma = smp.grid_coefficients(grid)
    z = torch.randn(3, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_list = [torch.tensor(float(t), dtype=torch.float64) for t in times]
    ours = run_loop(smp, z * sigma[0], lambda x, k: dist.denoise(x, t_list[k].expand(x.shape[0]), sched))
    replay = iter(draws)
    ve = sigma / s
    theirs = k_fn(
        ve_denoiser(dist),
        z * ve[0],
        ve,
        disable=True,
        noise_sampler=lambda a, b: next(replay, torch.zeros_like(z)),
        **(options if k_options is None else k_options),
    )
    assert next(replay, None) is None, "k-diffusion used fewer draws than unisde made"
    return ours, theirs, len(draws)


BUILTIN_CASES = [
    ("dpmpp_2s_ancestral", {}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_2s_ancestral", {"eta": 0.6, "s_noise": 1.3}),
    ("dpmpp_2s_ancestral", {"eta": 1.5}),  # σ̃_up capped at σ̃_{i+1} on the large steps: one-call steps, x̃ = D + noise
    ("dpmpp_sde", {}),
    ("dpmpp_sde", {"eta": 0.0}),
    ("dpmpp_sde", {"eta": 0.5, "r": 0.3, "s_noise": 0.8}),
]
PLUGIN_CASES = [
    ("dpmpp_2m_sde", {"eta": eta, "solver_type": st}) for eta in (0.0, 0.5, 1.0) for st in ("midpoint", "heun")
]
PLUGIN_CASES += [("dpmpp_3m_sde", {"eta": eta}) for eta in (0.0, 0.5, 1.0)]
K_FUNCTIONS = {
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral",
    "dpmpp_sde": "sample_dpmpp_sde",
    "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
    "dpmpp_3m_sde": "sample_dpmpp_3m_sde",
}


def _ids(cases):
    """Test ids: the names and the options of each case, e.g. ``vp-table-dpmpp_sde-eta=0.5``."""

    def part(p):
        return p if isinstance(p, str) else "-".join(f"{k}={v}" for k, v in p.items())

    return ["-".join(filter(None, map(part, c))) for c in cases]


@pytest.mark.parametrize("case", ["vp-table", "edm"])
@pytest.mark.parametrize("name, options", BUILTIN_CASES + PLUGIN_CASES, ids=_ids(BUILTIN_CASES + PLUGIN_CASES))
def test_reproduces_k_diffusion(k_sampling, name, options, case):
    """Final samples of unisde and k-diffusion, 10 Karras steps, same σ̃ grid and draws: ≤ 1e-10 in float64."""
    if name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
        plugin_samplers()
    sched = SCHEDULES[case]()
    ours, theirs, draws = against_k_diffusion(
        getattr(k_sampling, K_FUNCTIONS[name]), name, options, sched, make_grid(sched, 10, "karras")
    )
    assert draws > 0 if options.get("eta", 1.0) > 0 else draws == 0
    assert float((ours - theirs).abs().max()) <= 1e-10 * float(theirs.abs().max())


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_plugin_sde_dpmsolver_is_k_diffusion_at_eta_one(k_sampling, solver_type):
    """The plugin's own ``dpmsolver++`` SDE form (η = 1) is k-diffusion's 2M / 3M SDE once every step runs at full
    order (``lower_order_final=False``; 3M with its ``heun`` second step); with η = 0 it is the ODE form."""
    plugin_samplers()
    sched = SCHEDULES["vp-table"]()
    grid = make_grid(sched, 10, "karras")
    full = {"lower_order_final": False, "solver_type": solver_type}
    for algorithm, eta in (("sde-dpmsolver++", 1.0), ("dpmsolver++", 0.0)):
        for order, k_fn in ((2, k_sampling.sample_dpmpp_2m_sde), (3, k_sampling.sample_dpmpp_3m_sde)):
            if order == 3 and solver_type == "midpoint":
                continue
            options = {**full, "algorithm_type": algorithm, "solver_order": order}
            k_options = {"eta": eta, **({"solver_type": solver_type} if order == 2 else {})}
            ours, theirs, _ = against_k_diffusion(k_fn, "dpmsolver++", options, sched, grid, k_options)
            assert float((ours - theirs).abs().max()) <= 1e-10 * float(theirs.abs().max()), (algorithm, order)


def test_plugin_3m_defaults_are_what_differs_from_k_diffusion(k_sampling):
    """``dpmsolver++`` 3M with its defaults (midpoint second step, ``lower_order_final``) is off k-diffusion's
    ``sample_dpmpp_3m_sde`` by percents (measured 7.3 % at η = 0, 10 % at η = 1, relative to the distance from μ) —
    the gap ``dpmpp_3m_sde`` closes."""
    plugin_samplers()
    sched = SCHEDULES["vp-table"]()
    grid = make_grid(sched, 10, "karras")
    for algorithm, eta in (("dpmsolver++", 0.0), ("sde-dpmsolver++", 1.0)):
        options = {"algorithm_type": algorithm, "solver_order": 3}
        ours, theirs, _ = against_k_diffusion(
            k_sampling.sample_dpmpp_3m_sde, "dpmsolver++", options, sched, grid, {"eta": eta}
        )
        assert float((ours - theirs).norm() / (theirs - MU).norm()) > 5e-3


# ============================================================================ the data law
def exact_moments(name, sched, grid, options=None):
    """(mean, variance) of the 1-d output for data N(μ, v0) started from the exact marginal at t_0: one run with zero
    noise leaves that track gradients (the loop is affine). ``dpmpp_sde`` draws z₁ = W[σ̃_m, σ̃_i]/√Δ₁ and
    z₂ = W[σ̃_{i+1}, σ̃_i]/√Δ₂ of one Brownian path: built from the independent increments a on [σ̃_{i+1}, σ̃_m]
    and b on [σ̃_m, σ̃_i]."""
    smp = get_sampler(name)(sched, **(options or {}))
    times = smp.prepare(grid)
    t0 = float(grid[0])
    s, sig = float(sched.s(t0)), float(sched.sigma(t0))
    start = torch.full((1, 1), s * MU, dtype=torch.float64, requires_grad=True)
    leaves, state = [], {"draw": 0}

    def leaf(like):
        leaves.append(torch.zeros_like(like, requires_grad=True))
        return leaves[-1]

    def brownian(like):  # draws come in pairs (stage 1, stage 2) per two-stage step
        step, stage = divmod(state["draw"], 2)
        state["draw"] += 1
        ve_i, ve_next = float(smp.ve[step]), float(smp.ve[step + 1])
        r = smp.opts["r"]
        ve_mid = math.exp((1 - r) * math.log(ve_i) + r * math.log(ve_next))
        if stage == 0:
            state["b"] = leaf(like)
            return state["b"]
        near, far = ve_i - ve_mid, ve_mid - ve_next
        return (leaf(like) * math.sqrt(far) + state["b"] * math.sqrt(near)) / math.sqrt(near + far)

    smp.noise_sampler = brownian if name == "dpmpp_sde" else leaf
    dist = Gaussian(torch.full((1,), MU), torch.tensor(V0))
    t_list = [torch.tensor(float(t), dtype=torch.float64) for t in times]
    out = run_loop(smp, start, lambda x, k: dist.denoise(x, t_list[k], sched))
    grads = torch.autograd.grad(out.sum(), [start] + leaves)
    var = float(grads[0]) ** 2 * (s * s * V0 + sig * sig) + sum(float(g) ** 2 for g in grads[1:])
    return float(out.detach()), var


STOCHASTIC = [("vp-table", "dpmpp_2s_ancestral", {}), ("vp-table", "dpmpp_sde", {})]
STOCHASTIC += [("vp-table", "dpmpp_sde", {"eta": 0.5, "r": 0.3}), ("vp-table", "dpmpp_2m_sde", {})]
STOCHASTIC += [("vp-table", "dpmpp_2m_sde", {"eta": 0.5, "solver_type": "heun"}), ("vp-table", "dpmpp_3m_sde", {})]
STOCHASTIC += [("edm", "dpmpp_2s_ancestral", {}), ("edm", "dpmpp_sde", {}), ("edm", "dpmpp_3m_sde", {})]


@pytest.mark.parametrize(
    "case, name, options",
    STOCHASTIC,
    ids=_ids(STOCHASTIC),
)
def test_lands_on_the_data_law_as_steps_grow(case, name, options):
    """max(|mean − μ|, |var − v0|) of the exact output law on Karras grids of 16, 32, 64 steps: decreasing, at least
    first order (measured 3.3–4.8× from 32 to 64 steps) and < 1e-2 at 64 steps (measured 1.3e-4 … 4.3e-3)."""
    if name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
        plugin_samplers()
    sched = SCHEDULES[case]()
    errs = []
    for n in (16, 32, 64):
        m, v = exact_moments(name, sched, make_grid(sched, n, "karras"), options)
        errs.append(max(abs(m - MU), abs(v - V0)))
    assert errs[-1] < 1e-2 and errs[0] > errs[1] > errs[2], errs
    assert errs[1] / errs[2] > 2.5, errs


def _mc_check(values, sched, grid, name, options=None):
    values = values.to(torch.float64)
    m_exact, v_exact = exact_moments(name, sched, grid, options)
    se_mean, se_var = math.sqrt(V0 / values.numel()), V0 * math.sqrt(2.0 / values.numel())
    assert abs(float(values.mean()) - m_exact) < 4 * se_mean, (float(values.mean()), m_exact, se_mean)
    assert abs(float(values.var()) - v_exact) < 4 * se_var, (float(values.var()), v_exact, se_var)


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_monte_carlo_with_generator_noise(name):
    """Real noise from the step's generator, 16k values through UnifiedScheduler (v-prediction model, SD's table,
    12 Karras steps): sample mean and variance within 4 standard errors of the exact moments of the same grid."""
    if name != "dpmpp_2s_ancestral":
        plugin_samplers()
    uni = UnifiedScheduler(
        sampler=name, prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    uni.set_timesteps(12)
    dist = Gaussian(torch.full((16,), MU), torch.tensor(V0), event_shape=(1, 4, 4))
    model = dist.as_model("v_prediction", uni.noise_schedule)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 1, 4, 4, generator=gen) * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    _mc_check(x.flatten(), uni.noise_schedule, torch.tensor(uni._sampler.grid, dtype=torch.float64), name)


def test_monte_carlo_with_brownian_noise_through_the_twin():
    """The converted DPMSolverSDEScheduler (Brownian tree seeded by the generator), ε-model on SD's table, 10 Karras
    steps, 16k float32 values: mean and variance within 4 standard errors of the exact moments of its grid (the
    correlated draws of each step included)."""
    uni = UnifiedScheduler.from_config(DPMSolverSDEScheduler(beta_schedule="scaled_linear", use_karras_sigmas=True))
    uni.set_timesteps(10)
    dist = Gaussian(torch.full((16,), MU), torch.tensor(V0), event_shape=(1, 4, 4))
    model = dist.as_model("epsilon", uni.noise_schedule)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1000, 1, 4, 4, generator=gen) * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    _mc_check(x.flatten(), uni.noise_schedule, torch.tensor(uni._sampler.grid, dtype=torch.float64), "dpmpp_sde")


# ============================================================================ DPMSolverSDEScheduler
def fake_model(x: torch.Tensor, timestep) -> torch.Tensor:
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x)


def lockstep(ref, uni, n, *, seed=None, generator_seed=None, begin=0):
    """Both loops side by side from the same start (diffusers in the VE view, unisde in model space: its state is
    divided by s where it stands); (largest state difference after any model call, reference scale). ``seed``:
    ``torch.manual_seed`` before each loop's first step (the global RNG seeds the Brownian path when
    ``noise_sampler_seed`` is None); ``generator_seed``: unisde's steps get a generator of that seed."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert len(uni.timesteps) == len(ref.timesteps) == 2 * n - 1
    if begin:
        ref.set_begin_index(begin)
        uni.set_begin_index(begin)
    sched = uni.noise_schedule
    s_at = [float(sched.s(t)) for t in uni._eval_times] + [1.0]
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * float(ref.sigmas[begin])
    gen = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None

    def run(scheduler, x, scale_state):
        if seed is not None:
            torch.manual_seed(seed)
        states = []
        for t in scheduler.timesteps[begin:]:
            out = fake_model(scheduler.scale_model_input(x, t), t)
            kwargs = {"generator": gen} if scheduler is uni else {}
            x = scheduler.step(out, t, x, **kwargs).prev_sample
            states.append(x)
        return [y / s for y, s in zip(states, scale_state)]

    theirs = run(ref, start, [1.0] * len(ref.timesteps))
    ours = run(uni, start * s_at[begin], s_at[begin + 1 :])
    scale = max(float(y.abs().max()) for y in theirs + [start])
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs)), scale


SDE_CONFIGS = [
    {},
    {"use_karras_sigmas": True},
    {"beta_schedule": "scaled_linear", "use_karras_sigmas": True, "prediction_type": "v_prediction"},
    {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction"},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing", "use_karras_sigmas": True},
    {"use_exponential_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
    {"use_beta_sigmas": True},
]
SDE_IDS = ["eps", "karras", "v-karras-sd", "v-sd", "leading", "trailing-karras", "cosine-exponential", "beta"]


@pytest.mark.parametrize("config", SDE_CONFIGS, ids=SDE_IDS)
@pytest.mark.parametrize("n", [4, 11])
def test_dpmsolver_sde_per_step_parity(config, n):
    """Every state of diffusers' DPMSolverSDEScheduler loop (two calls per step, Brownian noise from
    ``noise_sampler_seed``) is the converted scheduler's within 1e-5 × scale in float32, the last one included (the
    whole loop); measured 3e-8 … 4.5e-7 × scale. Its σ̃'s are diffusers' bit for bit."""
    ref = DPMSolverSDEScheduler(**config, noise_sampler_seed=1234)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "dpmpp_sde" and uni.order == ref.order == 2
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert torch.equal(uni.sigmas, torch.cat([ref.sigmas[:1], ref.sigmas[1::2]]))
    torch.testing.assert_close(uni.timesteps.double(), ref.timesteps.double(), rtol=0, atol=5e-2)
    worst, scale = lockstep(ref, uni, n)
    assert worst <= REL_TOL * scale, f"{config} n={n}: {worst:.3g} > 1e-5 × {scale:.3g}"


def test_dpmsolver_sde_seeds():
    """The Brownian path follows the seed: without ``noise_sampler_seed`` both draw it from the global RNG (same
    ``torch.manual_seed`` → same run); a unisde generator's initial seed is diffusers' ``noise_sampler_seed``; a
    different seed gives other samples (the noise matters: > 100× the tolerance)."""
    ref, uni = DPMSolverSDEScheduler(), UnifiedScheduler.from_config(DPMSolverSDEScheduler())
    worst, scale = lockstep(ref, uni, 6, seed=7)
    assert worst <= REL_TOL * scale
    ref = DPMSolverSDEScheduler(noise_sampler_seed=99)
    worst, scale = lockstep(ref, uni, 6, generator_seed=99)
    assert worst <= REL_TOL * scale
    worst, scale = lockstep(ref, uni, 6, generator_seed=98)
    assert worst > 100 * REL_TOL * scale


def test_dpmsolver_sde_img2img_entry():
    """Entered at a later step (set_begin_index, as img2img pipelines do) the two loops still agree."""
    ref = DPMSolverSDEScheduler(use_karras_sigmas=True, noise_sampler_seed=3)
    uni = UnifiedScheduler.from_config(ref)
    worst, scale = lockstep(ref, uni, 8, begin=6)
    assert worst <= REL_TOL * scale


RESPACING_FLAGS = {"use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential", "use_beta_sigmas": "beta"}


def test_float32_grid_is_diffusers_sigmas_bit_for_bit():
    """The ``diffusers_float32_sigmas`` grid gives diffusers' float32 σ̃'s exactly (its float64 levels round to them);
    the ``linspace_fractional`` / ``karras`` grids differ in the last float32 digit on some (hence the new grid)."""
    for config in SDE_CONFIGS:
        ref = DPMSolverSDEScheduler(**config)
        sched = NoiseSchedule.from_diffusers_config(ref.config)
        ref.set_timesteps(9)
        spacing = next((v for k, v in RESPACING_FLAGS.items() if config.get(k)), "table")
        options = {"timestep_spacing": config.get("timestep_spacing", "linspace"), "spacing": spacing}
        options["steps_offset"] = config.get("steps_offset", 0)
        levels = torch.from_numpy(diffusers_float32_sigmas(sched, 9, **options))
        assert torch.equal(levels, torch.cat([ref.sigmas[:1], ref.sigmas[1:-1:2]])), config
        grid = make_grid(sched, 9, "diffusers_float32_sigmas", **options)
        assert torch.equal((sched.sigma(grid[:-1]) / sched.s(grid[:-1])).float(), levels)
    with pytest.raises(ValueError, match="ᾱ table"):
        make_grid(NoiseSchedule.edm(), 5, "diffusers_float32_sigmas")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "only one of"),
        ({"timestep_spacing": "middle"}, "timestep_spacing"),
    ],
)
def test_dpmsolver_sde_refusals(kwargs, match):
    config = {**DPMSolverSDEScheduler().config, **kwargs, "_class_name": "DPMSolverSDEScheduler"}
    with pytest.raises(ConversionError, match=match):
        UnifiedScheduler.from_config(config)


def test_dpmsolver_sde_conversion_keys():
    leading = UnifiedScheduler.from_config(DPMSolverSDEScheduler(timestep_spacing="leading", noise_sampler_seed=5))
    assert leading.config.time_grid == "diffusers_float32_sigmas" and leading.config.init_noise == "marginal"
    assert leading._sampler.opts["noise_sampler_seed"] == 5 and leading._sampler.opts["eta"] == 1.0
    karras = UnifiedScheduler.from_config(DPMSolverSDEScheduler(use_karras_sigmas=True))
    assert karras.config.time_grid_options == {"spacing": "karras"} and karras.config.init_noise == "sigma"
    other = UnifiedScheduler.from_config(DPMSolverSDEScheduler(), sampler="dpmpp_2s_ancestral")
    assert other.config.sampler == "dpmpp_2s_ancestral"


# ============================================================================ options
@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("dpmpp_2s_ancestral", {"eta": -0.1}, "eta"),
        ("dpmpp_2s_ancestral", {"s_noise": 0.0}, "s_noise"),
        ("dpmpp_2s_ancestral", {"r": 0.5}, "unknown option"),
        ("dpmpp_sde", {"r": 0.0}, "r=0.0"),
        ("dpmpp_sde", {"r": 1.5}, "r=1.5"),
        ("dpmpp_sde", {"noise_sampler_seed": -1}, "noise_sampler_seed"),
        ("dpmpp_sde", {"noise_sampler_seed": 1.5}, "noise_sampler_seed"),
        ("dpmpp_sde", {"eta": "1"}, "eta"),
        ("dpmpp_2m_sde", {"eta": -1.0}, "eta"),
        ("dpmpp_2m_sde", {"solver_type": "rk4"}, "solver_type"),
        ("dpmpp_2m_sde", {"solver_order": 3}, "unknown option"),
        ("dpmpp_3m_sde", {"solver_type": "midpoint"}, "unknown option"),
        ("dpmpp_3m_sde", {"s_noise": -1.0}, "s_noise"),
    ],
)
def test_bad_options_are_clear_value_errors(name, bad, match):
    if name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
        plugin_samplers()
    with pytest.raises(ValueError, match=match):
        get_sampler(name)(NoiseSchedule.edm(), **bad)
    with pytest.raises(ValueError, match=match):  # at construction, before any work
        UnifiedScheduler(sampler=name, sampler_options=bad)


@pytest.mark.parametrize("case", ["vp-table", "edm"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpmpp_2m_sde_heun_is_k_diffusions_heun_form(k_sampling, case, eta):
    """ComfyUI's ``dpmpp_2m_sde_heun`` (and ``_gpu``): k-diffusion's ``sample_dpmpp_2m_sde(solver_type="heun")``,
    the same draws, ≤ 1e-10 in float64; its solver_type is fixed."""
    plugin_samplers()
    assert get_sampler("dpmpp_2m_sde_heun_gpu") is get_sampler("dpmpp_2m_sde_heun")
    assert "solver_type" not in get_sampler("dpmpp_2m_sde_heun").options
    sched = SCHEDULES[case]()
    grid = make_grid(sched, 10, "karras")
    ours, theirs, _ = against_k_diffusion(
        k_sampling.sample_dpmpp_2m_sde,
        "dpmpp_2m_sde_heun",
        {"eta": eta},
        sched,
        grid,
        {"eta": eta, "solver_type": "heun"},
    )
    assert float((ours - theirs).abs().max()) <= 1e-10 * float(theirs.abs().max())
