r"""res_multistep, er_sde and restart: reference algorithms in float64, live parity with diffusers, convergence
orders on the exact Gaussian probability-flow ODE, the data law of the stochastic variants (exactly and by Monte
Carlo), the rectified flow with flow prediction, mid-grid entry and option validation.

Reference loops: ComfyUI (``comfy/k_diffusion/sampling.py``) is not installable here, so the loops below are written
in this file from the papers' equations — RES's second-order multistep exponential integrator (Zhang, Song & Chen
2023), the ER-SDE-Solver stages 1–3 (Cui et al. 2023), Restart sampling's Heun + restart-interval loop (Xu et al.
2023, as A1111/ComfyUI lay out the steps) — as plain float64 loops over VE-view noise levels σ̃ with the exact
VE-view denoiser, independent of the samplers' structure (no precomputed tables, no model-space coefficients; the
ER-SDE integrals by scipy's adaptive quadrature in the papers' integration-by-parts form, where unisde uses
Gauss–Legendre in log σ̃ on the unintegrated form). unisde runs the same σ̃ grid through the schedule's times in the
model's own space x = s x̃ on several schedules (s ≠ 1 on VP tables and the rectified flow); the outputs agree to
1e-10.

Ground truth: data N(μ, v0 I) with the exact denoiser D(x, t) = μ + s v0/(s² v0 + σ²)(x − s μ); the PF-ODE's flow is
x̃(σ̃) = μ + (x̃(σ̃_0) − μ) √((v0 + σ̃²)/(v0 + σ̃_0²)). The samplers are affine in their Gaussian inputs for this
denoiser, so the mean and variance of their output are computed exactly from one run with zero noise draws that
require grad (as in tests/test_samplers_extra.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from law_checks import exact_moments, monte_carlo_through_the_scheduler
from scipy.integrate import quad

from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import grid_from_sigmas, make_grid
from unisde.sampling import run_loop

MU, V0 = 0.5, 0.25
F64 = torch.float64
NEW = ("res_multistep", "er_sde", "restart")


def ve_denoiser(x, sigma):
    """The exact Gaussian denoiser in the VE view, D(x̃; σ̃) = μ + v0/(v0 + σ̃²)(x̃ − μ)."""
    return MU + V0 / (V0 + float(sigma) ** 2) * (x - MU)


# ============================================================================ reference algorithms (float64, σ̃)
def ancestral_split(sigma_from, sigma_to, eta):
    """(σ̃_down, σ̃_up) of an ancestral step (Karras et al. 2022, App. B; k-diffusion's get_ancestral_step)."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


def phi1(z):
    return math.expm1(z) / z


def phi2(z):
    return (phi1(z) - 1.0) / z


def reference_res_multistep(x, sigmas, eta=0.0, s_noise=1.0, draws=None):
    """RES (Zhang, Song & Chen 2023) second-order multistep in τ = −log σ̃ with ComfyUI's ancestral option:
    x̃ ← e^{−h} x̃ + h (b1 D_i + b2 D_{i−1}), b1 = φ1(−h) − φ2(−h)/c2, b2 = φ2(−h)/c2, c2 = (τ_{i−1} − τ_{down,i−1})/h;
    an Euler step in σ̃ first and into σ̃ = 0; then noise σ̃_up."""
    old_denoised = old_down = None
    for i in range(len(sigmas) - 1):
        sig, nxt = sigmas[i], sigmas[i + 1]
        denoised = ve_denoiser(x, sig)
        down, up = ancestral_split(sig, nxt, eta)
        if down == 0 or old_denoised is None:
            x = x + (down - sig) * (x - denoised) / sig
        else:
            tau, tau_next = -math.log(sig), -math.log(down)
            tau_prev, tau_old = -math.log(sigmas[i - 1]), -math.log(old_down)
            h = tau_next - tau
            c2 = (tau_prev - tau_old) / h
            b1, b2 = phi1(-h) - phi2(-h) / c2, phi2(-h) / c2
            x = math.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        if up > 0:
            x = x + next(draws) * s_noise * up
        old_denoised, old_down = denoised, down
    return x


NOISE_SCALE = {  # Cui et al. 2023's noise-scale functions φ(λ): SDE_5 (ComfyUI's default), the ODE, the reverse SDE
    "default": lambda lam: lam * (math.exp(lam**0.3) + 10.0),
    "ode": lambda lam: lam,
    "sde": lambda lam: lam * lam,
}


def reference_er_sde(x, sigmas, max_stage=3, scaler="default", s_noise=1.0, draws=None):
    """ER-SDE-Solver-1/2/3 (Cui et al. 2023) in the VE view (λ = σ̃): x̃ ← r x̃ + (1 − r) D + [(λ_t − λ_s) +
    φ(λ_t) ∫ dλ/φ] D′ + [(λ_t − λ_s)²/2 + φ(λ_t) ∫ (λ − λ_s)/φ dλ] D″ + √(λ_t² − λ_s² r²) z, r = φ(λ_t)/φ(λ_s),
    integrals over [λ_t, λ_s] by adaptive quadrature, D′ and D″ from backward divided differences."""
    phi = NOISE_SCALE[scaler]
    old_denoised = old_slope = None
    for i in range(len(sigmas) - 1):
        ls, lt = sigmas[i], sigmas[i + 1]
        denoised = ve_denoiser(x, ls)
        stage = min(max_stage, i + 1)
        if lt == 0:
            x = denoised
        else:
            r = phi(lt) / phi(ls)
            new = r * x + (1 - r) * denoised
            if stage >= 2:
                integral = quad(lambda lam: 1.0 / phi(lam), lt, ls, epsabs=0, epsrel=1e-13, limit=200)[0]
                slope = (denoised - old_denoised) / (ls - sigmas[i - 1])
                new = new + (lt - ls + phi(lt) * integral) * slope
                if stage >= 3:
                    integral2 = quad(lambda lam: (lam - ls) / phi(lam), lt, ls, epsabs=0, epsrel=1e-13, limit=200)[0]
                    curvature = (slope - old_slope) / ((ls - sigmas[i - 2]) / 2)
                    new = new + ((lt - ls) ** 2 / 2 + phi(lt) * integral2) * curvature
                old_slope = slope
            if scaler != "ode":  # φ(λ) = λ: λ_t² − λ_s² r² = 0, nothing is drawn
                new = new + next(draws) * s_noise * math.sqrt(lt**2 - ls**2 * r**2)
            x = new
        old_denoised = denoised
    return x


def karras_levels(n, sigma_min, sigma_max, rho=7.0):
    """Karras et al. 2022, eq. 5: n levels from σ̃_max to σ̃_min, both ends exact."""
    levels = [
        (sigma_max ** (1 / rho) + k / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        for k in range(n)
    ]
    levels[0], levels[-1] = sigma_max, sigma_min
    return levels


def reference_restart(x, sigmas, restart_list, s_noise=1.0, draws=None):
    """Restart sampling (Xu et al. 2023) as A1111/ComfyUI lay out the steps: Heun (Euler into σ̃ = 0) over the grid;
    after the step reaching the grid point nearest a restart's σ_min, K times: noise √(σ_max² − σ_min²) up to the
    grid point nearest σ_max, then Heun down over N Karras levels. ``restart_list`` in their {σ_min: (N, K, σ_max)}."""
    sig = [float(v) for v in sigmas]

    def nearest(value):
        return min(range(len(sig)), key=lambda j: abs(sig[j] - value))

    at = {nearest(key): value for key, value in restart_list.items()}
    steps = []
    for i in range(len(sig) - 1):
        steps.append((sig[i], sig[i + 1]))
        if i + 1 in at:
            levels, times, hi = at[i + 1]
            j = nearest(hi)
            if j < i + 1:
                interval = karras_levels(levels, sig[i + 1], sig[j])
                steps.extend(list(zip(interval[:-1], interval[1:])) * times)
    last = None
    for a, b in steps:
        if last is not None and last < a:
            x = x + next(draws) * s_noise * math.sqrt(a * a - last * last)
        d = (x - ve_denoiser(x, a)) / a
        if b == 0:
            x = x + (b - a) * d
        else:
            x_2 = x + (b - a) * d
            x = x + (b - a) * (d + (x_2 - ve_denoiser(x_2, b)) / b) / 2
        last = b
    return x


# ============================================================================ unisde on the same σ̃ grid
def karras_sigmas(smax, smin, n, rho=7.0):
    return karras_levels(n, smin, smax, rho) + [0.0]


REFERENCE_SCHEDULES = {
    "edm": NoiseSchedule.edm,
    "vp-table": lambda: NoiseSchedule.from_diffusers_config({}),
    "rectified-flow": lambda: NoiseSchedule.from_name("rectified-flow"),
}


def reference_grid(kind, n):
    sched = REFERENCE_SCHEDULES[kind]()
    smax = min(float(sched.ve_sigma(1.0)) * 0.9, 80.0)
    return sched, karras_sigmas(smax, float(sched.ve_sigma(1e-3)) * 1.5, n)


def run_unisde(name, sched, sigmas, x_ve, options=None, draws=None):
    """The unisde sampler on these VE-view σ̃'s, in the model's space from s(t_0) x̃_0, exact denoiser, the noise
    from ``draws`` in order; returns (output, number of draws taken)."""
    dist = Gaussian(torch.full((x_ve.shape[1],), MU), torch.tensor(V0))
    smp = get_sampler(name)(sched, **(options or {}))
    grid = grid_from_sigmas(sched, sigmas)
    times = smp.prepare(grid)
    taken = []
    if draws is not None:
        smp.noise_sampler = lambda like: taken.append(1) or draws[len(taken) - 1]
    t_list = [torch.tensor(float(t), dtype=F64) for t in times]
    out = run_loop(smp, x_ve * float(sched.s(grid[0])), lambda x, k: dist.denoise(x, t_list[k], sched))
    return out, len(taken)


def start_and_draws(sigmas, count, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, dtype=F64, generator=gen) * sigmas[0]
    return x, [torch.randn(3, 4, dtype=F64, generator=gen) for _ in range(count)]


@pytest.mark.parametrize("kind", sorted(REFERENCE_SCHEDULES))
@pytest.mark.parametrize("eta, s_noise", [(0.0, 1.0), (1.0, 1.0), (0.5, 1.3)])
def test_res_multistep_is_the_reference_loop(kind, eta, s_noise):
    sched, sigmas = reference_grid(kind, 11)
    x, draws = start_and_draws(sigmas, 20, seed=1)
    it = iter(draws)
    ref = reference_res_multistep(x, sigmas, eta, s_noise, it)
    used = 20 - sum(1 for _ in it)
    ours, taken = run_unisde("res_multistep", sched, sigmas, x, {"eta": eta, "s_noise": s_noise}, draws)
    assert taken == used == (len(sigmas) - 2 if eta else 0)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(REFERENCE_SCHEDULES))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_stage": 1},
        {"max_stage": 2, "s_noise": 0.7},
        {"noise_scaler": "ode"},
        {"noise_scaler": "sde", "max_stage": 3},
    ],
    ids=["default", "stage1", "stage2", "ode", "sde"],
)
def test_er_sde_is_the_reference_loop(kind, options):
    sched, sigmas = reference_grid(kind, 9)
    x, draws = start_and_draws(sigmas, 20, seed=2)
    it = iter(draws)
    ref = reference_er_sde(
        x,
        sigmas,
        options.get("max_stage", 3),
        options.get("noise_scaler", "default"),
        options.get("s_noise", 1.0),
        it,
    )
    used = 20 - sum(1 for _ in it)
    ours, taken = run_unisde("er_sde", sched, sigmas, x, options, draws)
    assert taken == used
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(REFERENCE_SCHEDULES))
@pytest.mark.parametrize(
    "restarts, s_noise",
    [
        ({0.1: (10, 1, 2.0)}, 1.0),  # A1111's list for 24 steps (15 main Karras steps + 9 restart steps)
        ({0.1: (4, 2, 2.0), 1.0: (3, 1, 8.0)}, 1.3),  # two intervals, one repeated
        ({}, 1.0),  # plain Heun
    ],
    ids=["a1111-24", "two-intervals", "heun"],
)
def test_restart_is_the_reference_loop(kind, restarts, s_noise):
    sched, sigmas = reference_grid(kind, 15)
    x, draws = start_and_draws(sigmas, 6, seed=3)
    it = iter(draws)
    ref = reference_restart(x, sigmas, restarts, s_noise, it)
    used = 6 - sum(1 for _ in it)
    options = {
        "restart_list": [[lo, n, k, hi] for lo, (n, k, hi) in restarts.items()],
        "s_noise": s_noise,
        "view": "ve",
    }
    ours, taken = run_unisde("restart", sched, sigmas, x, options, draws)
    assert taken == used == sum(k for _, k, _ in restarts.values())
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


# ============================================================================ live parity: diffusers
def fake_model(x: torch.Tensor, timestep) -> torch.Tensor:
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x)


@pytest.mark.parametrize(
    "config",
    [{}, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, {"beta_schedule": "squaredcos_cap_v2"}],
    ids=["eps-linspace", "v-trailing", "cosine"],
)
@pytest.mark.parametrize("n", [6, 20])
def test_res_multistep_is_diffusers_dpmsolver_heun(config, n):
    """RES's exact φ₂ weight is diffusers' DPMSolverMultistep(algorithm_type="dpmsolver++", solver_order=2,
    solver_type="heun") update; with lower_order_final=False (both first order only on the first step and the step
    to σ = 0) the converted UnifiedScheduler with sampler="res_multistep" on that class's grid reproduces every state
    to 1e-5 of the trajectory's scale in float32."""
    ref = DPMSolverMultistepScheduler(solver_order=2, solver_type="heun", lower_order_final=False, **config)
    grid = UnifiedScheduler.from_config(ref.config).config.time_grid
    uni = UnifiedScheduler.from_config(ref.config, sampler="res_multistep", time_grid=grid)
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert torch.equal(uni.timesteps, ref.timesteps)
    x_ref = x_uni = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    worst = scale = 0.0
    for t in ref.timesteps:
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref).prev_sample
        x_uni = uni.step(fake_model(x_uni, t), t, x_uni).prev_sample
        worst, scale = max(worst, float((x_ref - x_uni).abs().max())), max(scale, float(x_ref.abs().max()))
    assert worst <= 1e-5 * scale, (worst, scale)


# ============================================================================ convergence orders (PF-ODE)
ORDER_CASES = {
    "vp-table/karras": (lambda: NoiseSchedule.from_diffusers_config({}), "karras"),
    "edm/karras": (NoiseSchedule.edm, "karras"),
    "vp-linear/uniform_lambda": (NoiseSchedule.vp_linear, "uniform_lambda"),
}


def flow_error(name, sched, grid, options) -> float:
    """|x̃_end − exact flow| from x̃_0 = 1.3 with the exact denoiser, float64, compared at the grid's last point
    σ̃_end > 0 (a final step to σ̃ = 0 would add an error independent of the order)."""
    dist = Gaussian(torch.full((1,), MU), torch.tensor(V0))
    t0, t_end = float(grid[0]), float(grid[-1])
    smp = get_sampler(name)(sched, **options)
    t_list = [torch.tensor(float(t), dtype=F64) for t in smp.prepare(grid)]
    start = torch.full((1, 1), 1.3 * float(sched.s(t0)), dtype=F64)
    out = run_loop(smp, start, lambda x, k: dist.denoise(x, t_list[k], sched))
    ve0, ve_end = float(sched.ve_sigma(t0)), float(sched.ve_sigma(t_end))
    exact = MU + (1.3 - MU) * math.sqrt((V0 + ve_end**2) / (V0 + ve0**2))
    return abs(float(out) / float(sched.s(t_end)) - exact)


def measured_orders(name, options, case, ns=(16, 32, 64, 128)):
    make, kind = ORDER_CASES[case]
    sched = make()
    errs = []
    for n in ns:  # n steps on the first n + 1 points of the grid kind's n + 2 (the last point σ̃ > 0)
        g = make_grid(sched, n + 1, kind)
        errs.append(flow_error(name, sched, torch.cat([g[:-2], g[-2:-1]]), options))
    return errs, [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
@pytest.mark.parametrize(
    "name, options, order",
    [
        ("res_multistep", {}, 2),
        ("er_sde", {"noise_scaler": "ode", "max_stage": 1}, 1),
        ("er_sde", {"noise_scaler": "ode", "max_stage": 2}, 2),
        ("er_sde", {"noise_scaler": "ode", "max_stage": 3}, 2),
        ("restart", {"restart_list": []}, 2),
    ],
    ids=["res_multistep", "er_sde-ode-1", "er_sde-ode-2", "er_sde-ode-3", "restart-heun"],
)
def test_deterministic_convergence_order(name, options, order, case):
    """Measured orders over 16 → 128 steps (each halving). er_sde's ``ode`` scaler is its deterministic limit
    (φ(λ) = λ: no noise). Its stage 3 measures order 2, not 3: the backward difference D′ ≈ (D_i − D_{i−1})/Δλ that
    stages 2 and 3 share (Cui et al.'s and ComfyUI's) is off by Δλ D″/2, an O(h³) local error that the stage-3 term
    c₃ D″ does not cancel; stage 3 only lowers the constant (checked below)."""
    errs, orders = measured_orders(name, options, case)
    assert all(order - 0.2 < p < order + 0.6 for p in orders), (errs, orders)


def test_er_sde_stage_three_lowers_the_error_constant():
    stage2, _ = measured_orders("er_sde", {"noise_scaler": "ode", "max_stage": 2}, "vp-table/karras", ns=(32, 64))
    stage3, _ = measured_orders("er_sde", {"noise_scaler": "ode", "max_stage": 3}, "vp-table/karras", ns=(32, 64))
    assert all(e3 < 0.8 * e2 for e2, e3 in zip(stage2, stage3)), (stage2, stage3)


# ============================================================================ the data law (stochastic)


LAW_CASES = {
    "vp-table/karras": (lambda: NoiseSchedule.from_diffusers_config({}), "karras", {}),
    "edm/karras": (NoiseSchedule.edm, "karras", {}),
    "rectified-flow/flow_match": (lambda: NoiseSchedule.from_name("rectified-flow"), "flow_match", {}),
}


def law_errors(name, options, case, ns):
    make, kind, grid_options = LAW_CASES[case]
    sched = make()
    errs = []
    for n in ns:
        m, v = exact_moments(name, sched, make_grid(sched, n, kind, **grid_options), options)
        errs.append(max(abs(m - MU), abs(v - V0)))
    return errs


@pytest.mark.parametrize("case", sorted(LAW_CASES))
@pytest.mark.parametrize(
    "name, options, ns, bound",
    [
        ("res_multistep", {"eta": 1.0}, (80, 160), 0.03),
        ("er_sde", {}, (80, 160), 0.01),
        ("er_sde", {"noise_scaler": "sde", "max_stage": 2}, (80, 160), 0.01),
        ("restart", {}, (40, 80), 0.01),
    ],
    ids=["res_multistep-ancestral", "er_sde", "er_sde-sde", "restart"],
)
def test_stochastic_samplers_land_on_the_data_law(name, options, ns, bound, case):
    """The exact output law's distance to N(μ, v0) (max of the mean's and the variance's error) falls below
    ``bound`` and shrinks by ≥ 2.5× over a doubling of the step count (rectified flow included: its first
    step leaves t = 1, s = 0, exactly). restart uses its default intervals (two restarts of n/4 steps on [0.1, 2])."""
    errs = law_errors(name, options, case, ns)
    assert errs[-1] < bound and errs[-2] / errs[-1] > 2.5, errs


@pytest.mark.parametrize(
    "name, options, n",
    [("res_multistep", {"eta": 1.0}, 50), ("er_sde", {}, 30), ("restart", {}, 20)],
    ids=["res_multistep-ancestral", "er_sde", "restart"],
)
def test_monte_carlo_through_the_scheduler(name, options, n):
    """32k values through UnifiedScheduler land within 4 standard errors of the chain's exact law
    (:func:`law_checks.monte_carlo_through_the_scheduler`)."""
    monte_carlo_through_the_scheduler(name, options, n, exact_moments, MU, V0)


# ============================================================================ rectified flow, flow prediction
def flow_run(name, options, n):
    """UnifiedScheduler on the rectified flow with a perfect flow-prediction model (float64, flow_match grid)
    from x_1 = z; returns (output, the exact PF-ODE endpoint μ + √v0 z)."""
    uni = UnifiedScheduler(
        schedule="rectified-flow",
        prediction_type="flow_prediction",
        sampler=name,
        sampler_options=options,
        time_grid="flow_match",
    )
    uni.set_timesteps(n)
    model = Gaussian(torch.full((16,), MU), torch.tensor(V0), event_shape=(1, 4, 4)).as_model(
        "flow_prediction", uni.noise_schedule
    )
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x, gen = z * uni.init_noise_sigma, torch.Generator().manual_seed(1)
    for t in uni.timesteps:
        x = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    return x, MU + math.sqrt(V0) * z


@pytest.mark.parametrize(
    "name, options",
    [("res_multistep", {}), ("er_sde", {"noise_scaler": "ode"}), ("restart", {"restart_list": []})],
    ids=["res_multistep", "er_sde-ode", "restart-heun"],
)
def test_rectified_flow_deterministic_converges_to_the_exact_flow(name, options):
    """Finite, and converging to the exact PF-ODE endpoint: error at 64 steps < 0.03 and measured order over
    16 → 64 steps ≥ 1.5 (restart's Heun starts from the capped t_end as ``edm`` does: a floor ~1e-3 far below)."""
    errs = []
    for n in (16, 32, 64):
        out, exact = flow_run(name, options, n)
        assert torch.isfinite(out).all()
        errs.append(float((out - exact).abs().max()))
    assert errs[-1] < 0.03 and math.log(errs[0] / errs[-1], 4) > 1.5, errs


@pytest.mark.parametrize(
    "name, options", [("res_multistep", {"eta": 1.0}), ("er_sde", {}), ("restart", {})], ids=["res-a", "er", "restart"]
)
def test_rectified_flow_stochastic_runs_finite(name, options):
    """Through the scheduler with real noise, flow prediction: finite (the data law is checked exactly above)."""
    out, _ = flow_run(name, options, 24)
    assert torch.isfinite(out).all() and float(out.abs().max()) < 10


# ============================================================================ structure, entry, options
def test_restart_default_intervals_scale_with_the_step_count():
    """A1111/ComfyUI's rule on the n main steps: below 20 plain Heun (2n − 1 calls); from 20 one restart of 9 Heun
    steps; from 36 two restarts of n // 4 steps. Each restart is one jump back up in time."""
    uni = UnifiedScheduler(sampler="restart")
    for n, extra, jumps in ((10, 0, 0), (19, 0, 0), (20, 9, 1), (35, 9, 1), (36, 18, 2), (40, 20, 2)):
        uni.set_timesteps(n)
        assert len(uni.timesteps) == 2 * (n + extra) - 1, (n, len(uni.timesteps))
        times = uni._eval_times
        assert int((times[1:] > times[:-1]).sum()) == jumps
        assert uni.order == 2


def test_restart_entered_mid_grid_continues_the_same_trajectory():
    """Entry at a main step after a restart (img2img): the same state and the same later draws give the same
    output as the uninterrupted loop."""
    sched = NoiseSchedule.from_diffusers_config({})
    smp = get_sampler("restart")(sched, restart_list=[[0.5, 4, 2, 3.0]])
    grid = make_grid(sched, 12, "karras")
    times = smp.prepare(grid)
    dist = Gaussian(torch.full((4,), MU), torch.tensor(V0))
    t_list = [torch.tensor(float(t), dtype=F64) for t in times]
    gen = torch.Generator().manual_seed(4)
    draws = [torch.randn(2, 4, dtype=F64, generator=gen) for _ in range(2)]
    taken, seen = [], {}
    smp.noise_sampler = lambda like: taken.append(1) or draws[len(taken) - 1]
    x0 = torch.randn(2, 4, dtype=F64, generator=gen) * float(sched.sigma(grid[0]))

    def denoise(x, k):
        return dist.denoise(x, t_list[k], sched)

    full = run_loop(smp, x0, denoise, callback=lambda k, x, d: seen.setdefault(k, (x.clone(), len(taken))))
    entries = sorted(smp.step_starts)
    assert len(taken) == 2 and all(times[a] > times[b] for a, b in zip(entries, entries[1:]))
    entry = max(entries)  # the last main step, after both restarts
    x_entry, used = seen[entry]
    assert used == 2
    again = get_sampler("restart")(sched, restart_list=[[0.5, 4, 2, 3.0]])
    again.prepare(grid)
    again.noise_sampler = lambda like: pytest.fail("no draw after the restarts")
    torch.testing.assert_close(run_loop(again, x_entry, denoise, start=entry), full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="not the first evaluation of a step"):
        next(again.loop(x_entry, start=entry - 1))


@pytest.mark.parametrize("name, options", [("res_multistep", {}), ("er_sde", {"noise_scaler": "ode"})])
def test_multistep_entry_mid_grid_rebuilds_the_history(name, options):
    """Entered at step k the multistep samplers warm up again: the result is a fresh run on grid[k:]."""
    sched = NoiseSchedule.vp_linear()
    grid = make_grid(sched, 10, "karras")
    dist = Gaussian(torch.full((4,), MU), torch.tensor(V0))
    x = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(5)) * float(sched.sigma(grid[4]))

    def run(g, start):
        smp = get_sampler(name)(sched, **options)
        t_list = [torch.tensor(float(t), dtype=F64) for t in smp.prepare(g)]
        return run_loop(smp, x, lambda y, k: dist.denoise(y, t_list[k], sched), start=start)

    torch.testing.assert_close(run(grid, 4), run(grid[4:], 0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name, options, bad",
    [
        ("res_multistep", {"eta": -0.5}, "eta"),
        ("res_multistep", {"s_noise": -1.0}, "s_noise"),
        ("res_multistep", {"eta": "1"}, "eta"),
        ("er_sde", {"max_stage": 4}, "max_stage"),
        ("er_sde", {"max_stage": 2.0}, "max_stage"),
        ("er_sde", {"noise_scaler": "sde5"}, "noise_scaler"),
        ("er_sde", {"s_noise": float("nan")}, "s_noise"),
        ("restart", {"restart_list": [[0.1, 1, 1, 2.0]]}, "restart_list"),
        ("restart", {"restart_list": [[2.0, 10, 1, 0.1]]}, "restart_list"),
        ("restart", {"restart_list": [[0.1, 10, 0, 2.0]]}, "restart_list"),
        ("restart", {"restart_list": [[0.1, 10, 1]]}, "restart_list"),
        ("restart", {"restart_list": [[0.1, 10, True, 2.0]]}, "restart_list"),
        ("restart", {"restart_list": [[float("inf"), 10, 1, 2.0]]}, "restart_list"),
        ("restart", {"restart_list": {0.1: [10, 1, 2.0]}}, "restart_list"),
        ("restart", {"s_noise": -0.1}, "s_noise"),
        ("restart", {"view": "sigma"}, "view"),
        ("restart", {"nope": 1}, "unknown option"),
    ],
)
def test_bad_options_are_value_errors_naming_the_option(name, options, bad):
    with pytest.raises(ValueError, match=bad):
        get_sampler(name)(NoiseSchedule.vp_linear(), **options)
    with pytest.raises(ValueError, match=bad):
        UnifiedScheduler(sampler=name, sampler_options=options)
