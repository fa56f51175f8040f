r"""heunpp2, seeds_2, seeds_3 and sa_solver_pece (ComfyUI's sampler menu): reference loops in float64, convergence
orders on the exact Gaussian probability-flow ODE, the data law of the stochastic ones (exactly and by Monte Carlo),
the step API against the functional API, mid-grid entry and option validation; SA-Solver's law on the rectified flow
at few steps and its conversion's order-2 form.

Reference loops: ComfyUI (``comfy/k_diffusion/sampling.py``) is not installable here, so the loops below are written
in this file from the formulas — Heun++'s weighted three-stage slope (``sample_heunpp2``), SEEDS-2/3's exponential
stages with an Ornstein–Uhlenbeck noise path in λ (Gonzalez et al. 2023; ``sample_seeds_2/3``), SA-Solver's
stochastic Adams predictor and corrector in PECE mode (Xue et al. 2023; ``sample_sa_solver_pece``) with unisde's
order rules (diffusers', a step to σ = 0 not counted) — as plain float64 loops over the noise levels of a view (σ̃ in
the VE view, τ in the flow view) with the exact denoiser of that view, independent of the samplers' structure (no
tables, no model-space coefficients; SA-Solver's Lagrange integrals by scipy's adaptive quadrature where unisde uses
closed moments). ``unisde.sample`` runs the same levels through the schedule's times in the model's own space on several
schedules and reproduces them to 1e-10, with the same noise draws through ``noise_sampler``.

Ground truth: data N(μ, v0 I); the PF-ODE's flow is x̃(σ̃) = μ + (x̃(σ̃_0) − μ) √((v0 + σ̃²)/(v0 + σ̃_0²)). The
samplers are affine in their Gaussian inputs for this denoiser, so the mean and variance of their output are computed
exactly from one run with zero noise draws that require grad (as in tests/test_samplers_res_er_restart.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from law_checks import exact_moments, monte_carlo_through_the_scheduler
from scipy.integrate import quad

import unisde
from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import make_grid
from unisde.sampling import run_loop

MU, V0 = 0.5, 0.25
F64 = torch.float64
NEW = ("heunpp2", "seeds_2", "seeds_3", "sa_solver_pece")


def ve_denoiser(x, sigma):
    """The exact Gaussian denoiser in the VE view, D(x̃; σ̃) = μ + v0/(v0 + σ̃²)(x̃ − μ)."""
    return MU + V0 / (V0 + sigma**2) * (x - MU)


def flow_denoiser(y, tau):
    """The exact Gaussian denoiser in the flow view y = (1 − τ) x0 + τ ε:
    D = μ + (1 − τ) v0/((1 − τ)² v0 + τ²)(y − (1 − τ) μ)."""
    a = 1.0 - tau
    return MU + a * V0 / (a * a * V0 + tau * tau) * (y - a * MU)


# ============================================================================ reference algorithms (float64)
def reference_heunpp2(y, levels, denoise):
    """Heun++ (ComfyUI's sample_heunpp2, no churn) on levels ℓ_0 > … > ℓ_n of a view with dy/dℓ = (y − D)/ℓ: the
    last step Euler, the next-to-last Heun with weights 1 − ℓ_{i+1}/(2ℓ_0), ℓ_{i+1}/(2ℓ_0), the others three
    stages (the predictor carried on to ℓ_{i+2}) weighted 1 − w₂ − w₃, w₂ = ℓ_{i+1}/(3ℓ_0), w₃ = ℓ_{i+2}/(3ℓ_0)."""
    n = len(levels) - 1

    def slope(z, lv):
        return (z - denoise(z, lv)) / lv

    for i in range(n):
        l0, l1 = levels[i], levels[i + 1]
        d, dt = slope(y, l0), l1 - l0
        if i == n - 1:
            y = y + dt * d
        elif i == n - 2:
            w2 = l1 / (2 * levels[0])
            y = y + dt * ((1 - w2) * d + w2 * slope(y + dt * d, l1))
        else:
            l2 = levels[i + 2]
            y2 = y + dt * d
            d2 = slope(y2, l1)
            d3 = slope(y2 + (l2 - l1) * d2, l2)
            w2, w3 = l1 / (3 * levels[0]), l2 / (3 * levels[0])
            y = y + dt * ((1 - w2 - w3) * d + w2 * d2 + w3 * d3)
    return y


def phi1(z):  # φ₁(z) = (e^z − 1)/z
    return math.expm1(z) / z


def phi2(z):  # φ₂(z) = (φ₁(z) − 1)/z
    return (phi1(z) - 1.0) / z


def reference_seeds(x, sigmas, fractions, eta=1.0, s_noise=1.0, variant="phi_1", draws=None):
    """SEEDS-2 (one fraction r) or SEEDS-3 (r₁, r₂) in the VE view, λ = −log σ̃, as ComfyUI writes them with α = 1:
    each stage x_j = (σ̃_j/σ̃_s) e^{−η r_j h} x_s + r_j H Σ b_jk D_k + σ̃_j S_noise N_j (H = (1 + η) h), the
    Runge–Kutta weights from φ₁, φ₂ at −r_j H, and N an OU path in λ continued stage by stage."""
    noisy = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        sig, nxt = sigmas[i], sigmas[i + 1]
        d_s = ve_denoiser(x, sig)
        if nxt == 0:
            x = d_s
            continue
        h = math.log(sig / nxt)
        big = (1 + eta) * h
        if len(fractions) == 1:  # SEEDS-2: one stage at r, then the result
            (r,) = fractions
            tableau = [[1.0], [1 - 1 / (2 * r), 1 / (2 * r)] if variant == "phi_1" else None]
            if variant == "phi_2":
                b2 = phi2(-big) / (r * phi1(-big))
                tableau[1] = [1 - b2, b2]
        else:  # SEEDS-3: stages at r₁, r₂ (the second through D_s and D₁), the result through D_s and D₂
            r1, r2 = fractions
            a32 = (r2 / r1) * phi2(-r2 * big) / phi1(-r2 * big)
            b3 = phi2(-big) / (r2 * phi1(-big))
            tableau = [[1.0], [1 - a32, a32], [1 - b3, 0.0, b3]]
        evaluations, path, previous = [d_s], 0.0, 0.0
        for j, r in enumerate([*fractions, 1.0]):
            lev = sig * math.exp(-r * h)  # σ̃ at λ_s + r h
            mix = sum(b * d for b, d in zip(tableau[j], evaluations))
            z = x * math.exp(-eta * r * h) * lev / sig + (-math.expm1(-r * big)) * mix
            if noisy:
                gap = eta * (r - previous) * h
                path = path * math.exp(-gap) + math.sqrt(-math.expm1(-2 * gap)) * next(draws)
                z = z + lev * s_noise * path
            previous = r
            if j < len(fractions):
                evaluations.append(ve_denoiser(z, lev))
            else:
                x = z
    return x


def lagrange_integral(nodes, i, h, c):
    """∫_{−h}^{0} e^{cu} ℓ_i(u) du for the Lagrange basis through ``nodes``, by adaptive quadrature."""

    def basis(u):
        out = 1.0
        for j, uj in enumerate(nodes):
            if j != i:
                out *= (u - uj) / (nodes[i] - uj)
        return out

    return quad(lambda u: math.exp(c * u) * basis(u), -h, 0.0, epsabs=0, epsrel=1e-13, limit=200)[0]


def adams_weights(nodes, h, c, simple=False):
    """SA-Solver's D weights c ∫ e^{cu} ℓ_i(u) du (Xue et al. 2023, eqs. 15/18, data prediction, VE view s = 1);
    ``simple``: diffusers' order-2 rule, the slope term's exponential weight replaced by h²/2."""
    weights = [c * lagrange_integral(nodes, i, h, c) for i in range(len(nodes))]
    if simple and len(nodes) == 2:
        slope = quad(lambda u: math.exp(c * u) * (u + h), -h, 0.0, epsabs=0, epsrel=1e-13)[0]
        shift = c * (h * h / 2 - slope) / (nodes[0] - nodes[1])
        weights = [weights[0] + shift, weights[1] - shift]
    return weights


def reference_sa_solver_pece(x, sigmas, taus, p_order=2, c_order=2, draws=None, pece=True, simple=False):
    """SA-Solver in the VE view (λ = −log σ̃), PECE mode: at each evaluation k ≥ 1 the corrector of step k − 1
    (stochastic Adams–Moulton through D_k at the prediction and the earlier D's, with step k − 1's noise), then the
    corrected sample evaluated again and its D in the history, then the predictor (stochastic Adams–Bashforth) with
    a fresh draw; orders ramp up from the start and, as diffusers, fall to the number of steps left (+1 for the
    corrector), a last step to σ̃ = 0 not counted. ``taus[k]`` is step k's τ."""
    n = len(sigmas) - 1
    last = n - 1 if sigmas[n] == 0 else n  # the steps lower_order_final counts
    lam = [-math.log(v) if v > 0 else math.inf for v in sigmas]
    history, x_last, z_last = [], None, None
    for k in range(n):
        d = ve_denoiser(x, sigmas[k])
        if x_last is not None:
            tau, h = taus[k - 1], lam[k] - lam[k - 1]
            c = 1 + tau * tau
            q = min(c_order, k + 1, last - k + 2)
            nodes = [lam[k - j] - lam[k] for j in range(q)]
            w = adams_weights(nodes, h, c, simple)
            x = math.exp(-tau * tau * h) * sigmas[k] / sigmas[k - 1] * x_last + sum(
                wi * di for wi, di in zip(w, [d, *history])
            )
            x = x + sigmas[k] * math.sqrt(-math.expm1(-2 * tau * tau * h)) * z_last
            if pece:
                d = ve_denoiser(x, sigmas[k])
        history = [d, *history][: max(p_order, c_order)]
        z = next(draws)  # one draw per step (diffusers' stream)
        if sigmas[k + 1] == 0:
            x_next = d
        else:
            tau, h = taus[k], lam[k + 1] - lam[k]
            c = 1 + tau * tau
            p = min(p_order, k + 1, last - k)
            nodes = [lam[k - j] - lam[k + 1] for j in range(p)]
            w = adams_weights(nodes, h, c, simple)
            x_next = math.exp(-tau * tau * h) * sigmas[k + 1] / sigmas[k] * x + sum(
                wi * di for wi, di in zip(w, history)
            )
            x_next = x_next + sigmas[k + 1] * math.sqrt(-math.expm1(-2 * tau * tau * h)) * z
        x_last, z_last, x = x, z, x_next
    return x


# ============================================================================ unisde on the same levels
def karras_sigmas(smax, smin, n, rho=7.0):
    """n Karras levels (Karras et al. 2022, eq. 5) from σ̃_max to σ̃_min (one: σ̃_max), then the end point 0."""
    if n == 1:
        return [smax, 0.0]
    levels = [(smax ** (1 / rho) + k / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for k in range(n)]
    levels[0], levels[-1] = smax, smin
    return levels + [0.0]


REFERENCE_SCHEDULES = {
    "edm": NoiseSchedule.edm,
    "vp-table": lambda: NoiseSchedule.from_diffusers_config({}),
    "rectified-flow": lambda: NoiseSchedule.from_name("rectified-flow"),
}


def reference_grid(kind, n):
    """(schedule, VE-view σ̃ levels): n Karras levels from min(0.9 σ̃(1), 80) to 1.5 σ̃(10⁻³), then 0."""
    sched = REFERENCE_SCHEDULES[kind]()
    smax = min(float(sched.ve_sigma(1.0)) * 0.9, 80.0)
    return sched, karras_sigmas(smax, float(sched.ve_sigma(1e-3)) * 1.5, n)


def start_and_draws(count, seed):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(3, 4, dtype=F64, generator=gen)
    return noise, [torch.randn(3, 4, dtype=F64, generator=gen) for _ in range(count)]


def run_unisde(name, sched, noise, options=None, draws=None, **grid):
    """unisde.sample with the exact denoiser on the grid ``grid`` describes (sigmas=… or num_inference_steps and
    time_grid), the noise from ``draws`` in order; returns (output, number of draws taken)."""
    dist = Gaussian(torch.full((noise.shape[1],), MU, dtype=F64), torch.tensor(V0, dtype=F64))
    taken = []

    def noise_sampler(like):
        taken.append(1)
        return draws[len(taken) - 1]

    out = unisde.sample(
        None,
        noise,
        schedule=sched,
        sampler=name,
        sampler_options=options,
        denoiser=lambda x, t: dist.denoise(x, t, sched),
        noise_sampler=noise_sampler if draws is not None else None,
        **grid,
    )
    return out, len(taken)


def ve_start(sched, sigma0, noise):
    """x̃_0 = x_0/s_0 of unisde.sample's start x_0 = noise √(s_0² + σ_0²) at the time of σ̃_0."""
    t0 = sched.t_from_sigma(torch.tensor([sigma0], dtype=F64))
    s0, g0 = float(sched.s(t0)), float(sched.sigma(t0))
    return noise * math.sqrt(s0 * s0 + g0 * g0) / s0


@pytest.mark.parametrize("kind", sorted(REFERENCE_SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_heunpp2_is_the_reference_loop_in_the_ve_view(kind, n):
    sched, sigmas = reference_grid(kind, n)
    noise, _ = start_and_draws(0, seed=1)
    ref = reference_heunpp2(ve_start(sched, sigmas[0], noise), sigmas, ve_denoiser)
    ours, _ = run_unisde("heunpp2", sched, noise, {"view": "ve"}, sigmas=sigmas)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [2, 5, 12])
def test_heunpp2_is_the_reference_loop_in_the_flow_view(n):
    """On the rectified flow ``view="auto"`` is the flow view: y = x, τ = t (ComfyUI's σ = t on flow models), from
    t = 1 exactly (the flow_match grid's levels are its times)."""
    sched = NoiseSchedule.from_name("rectified-flow")
    levels = make_grid(sched, n, "flow_match").tolist()
    noise, _ = start_and_draws(0, seed=2)
    ref = reference_heunpp2(noise.clone(), levels, flow_denoiser)
    ours, _ = run_unisde("heunpp2", sched, noise, num_inference_steps=n, time_grid="flow_match")
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(REFERENCE_SCHEDULES))
@pytest.mark.parametrize(
    "name, options",
    [
        ("seeds_2", {}),
        ("seeds_2", {"variant": "phi_2", "eta": 0.5, "s_noise": 1.3}),
        ("seeds_2", {"r": 1.0, "variant": "phi_2"}),  # ComfyUI's exp_heun_2_x0_sde
        ("seeds_2", {"eta": 0.0}),
        ("seeds_3", {}),
        ("seeds_3", {"r_1": 0.25, "r_2": 0.6, "eta": 0.7, "s_noise": 0.8}),
        ("seeds_3", {"eta": 0.0}),
    ],
    ids=["2", "2-phi2", "2-exp-heun", "2-ode", "3", "3-custom", "3-ode"],
)
def test_seeds_is_the_reference_loop(name, options, kind):
    """Same σ̃ levels, same draws (2 or 3 per step, none on the step to σ̃ = 0 or at η = 0): agreement to 1e-10 on VP
    (s ≠ 1), EDM and the rectified flow, whose intermediate stages sit at the times of σ̃ = e^{−λ_j}."""
    n = 8
    sched, sigmas = reference_grid(kind, n)
    noise, draws = start_and_draws(40, seed=3)
    eta, s_noise = options.get("eta", 1.0), options.get("s_noise", 1.0)
    fractions = [options.get("r", 0.5)] if name == "seeds_2" else [options.get("r_1", 1 / 3), options.get("r_2", 2 / 3)]
    it = iter(draws)
    ref = reference_seeds(
        ve_start(sched, sigmas[0], noise), sigmas, fractions, eta, s_noise, options.get("variant", "phi_1"), it
    )
    used = 40 - sum(1 for _ in it)
    ours, taken = run_unisde(name, sched, noise, options, draws, sigmas=sigmas)
    assert taken == used == ((n - 1) * (len(fractions) + 1) if eta > 0 else 0)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def window_taus(sched, sigmas, tau, window):
    """Step k's τ as sa_solver sets it: ``tau`` where the step's start time lies in the window, else 0."""
    times = sched.t_from_sigma(torch.tensor(sigmas[:-1], dtype=F64)).tolist()
    return [tau if window[0] <= t <= window[1] else 0.0 for t in times]


@pytest.mark.parametrize("kind", sorted(REFERENCE_SCHEDULES))
@pytest.mark.parametrize(
    "options",
    [{}, {"predictor_order": 3, "corrector_order": 3}, {"predictor_order": 1, "corrector_order": 3, "tau": 0.6}],
    ids=["2-2", "3-3", "1-3"],
)
def test_sa_solver_pece_is_the_reference_loop(options, kind):
    """PECE on the same σ̃ levels with the same draws (one per step); τ is 1 on part of the grid, so both the ODE
    and the SDE steps are exercised. 2n − 1 model calls."""
    n = 9
    sched, sigmas = reference_grid(kind, n)
    noise, draws = start_and_draws(n, seed=4)
    options = {**options, "tau_window": [0.3, 0.7]}
    taus = window_taus(sched, sigmas, options.get("tau", 1.0), options["tau_window"])
    assert 0 < sum(t > 0 for t in taus) < n
    ref = reference_sa_solver_pece(
        ve_start(sched, sigmas[0], noise),
        sigmas,
        taus,
        options.get("predictor_order", 2),
        options.get("corrector_order", 2),
        iter(draws),
    )
    calls = []
    ours, taken = run_unisde(
        "sa_solver_pece", sched, noise, options, draws, sigmas=sigmas, callback=lambda k, x, d: calls.append(k)
    )
    assert taken == n and len(calls) == 2 * n - 1
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_sa_solver_pece_differs_from_sa_solver_only_by_the_reevaluation():
    """The same reference without the re-evaluation is unisde's sa_solver (PEC): the PECE option changes only that."""
    sched, sigmas = reference_grid("vp-table", 7)
    noise, draws = start_and_draws(7, seed=5)
    taus = window_taus(sched, sigmas, 1.0, (0.2005, 0.8015))
    x0 = ve_start(sched, sigmas[0], noise)
    pec = reference_sa_solver_pece(x0, sigmas, taus, draws=iter(draws), pece=False)
    ours, _ = run_unisde("sa_solver", sched, noise, None, draws, sigmas=sigmas)
    torch.testing.assert_close(ours, pec, rtol=1e-10, atol=1e-10)
    pece, _ = run_unisde("sa_solver_pece", sched, noise, None, draws, sigmas=sigmas)
    assert float((pece - ours).abs().max()) > 1e-4


# ============================================================================ convergence orders (PF-ODE)
ORDER_CASES = {
    "vp-table/karras": (lambda: NoiseSchedule.from_diffusers_config({}), "karras"),
    "edm/karras": (NoiseSchedule.edm, "karras"),
    "vp-linear/uniform_lambda": (NoiseSchedule.vp_linear, "uniform_lambda"),
}


def flow_error(name, sched, grid, options) -> float:
    """|x̃_end − exact flow| from x̃_0 = 1.3 with the exact denoiser, float64, at the grid's last point σ̃_end > 0."""
    dist = Gaussian(torch.full((1,), MU), torch.tensor(V0))
    t0, t_end = float(grid[0]), float(grid[-1])
    smp = get_sampler(name)(sched, **options)
    t_list = [torch.tensor(float(t), dtype=F64) for t in smp.prepare(grid)]
    start = torch.full((1, 1), 1.3 * float(sched.s(t0)), dtype=F64)
    out = run_loop(smp, start, lambda x, k: dist.denoise(x, t_list[k], sched))
    ve0, ve_end = float(sched.ve_sigma(t0)), float(sched.ve_sigma(t_end))
    exact = MU + (1.3 - MU) * math.sqrt((V0 + ve_end**2) / (V0 + ve0**2))
    return abs(float(out) / float(sched.s(t_end)) - exact)


def measured_orders(name, options, case, ns):
    make, kind = ORDER_CASES[case]
    sched = make()
    errs = []
    for n in ns:  # n steps on the first n + 1 points of the grid kind's n + 2 (the last point σ̃ > 0)
        g = make_grid(sched, n + 1, kind)
        errs.append(flow_error(name, sched, torch.cat([g[:-2], g[-2:-1]]), options))
    return errs, [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


LOW, HIGH = sorted(ORDER_CASES), ["vp-linear/uniform_lambda", "vp-table/karras"]


@pytest.mark.parametrize(
    "name, options, order, ns, cases",
    [
        ("heunpp2", {}, 1, (16, 32, 64, 128), LOW),
        ("seeds_2", {"eta": 0.0}, 2, (16, 32, 64, 128), LOW),
        ("seeds_2", {"eta": 0.0, "variant": "phi_2", "r": 1.0}, 2, (16, 32, 64, 128), LOW),
        ("seeds_3", {"eta": 0.0}, 3, (64, 128, 256), HIGH),
        ("sa_solver_pece", {"tau": 0.0, "lower_order_final": False}, 2, (256, 512), HIGH),
        ("sa_solver", {"tau": 0.0, "lower_order_final": False}, 2, (512, 1024), HIGH),
        ("sa_solver_pece", {"tau": 0.0, "lower_order_final": False, "simple_order_2": True}, 2, (64, 128, 256), HIGH),
        ("sa_solver_pece", {"tau": 0.0, "lower_order_final": False, "corrector_order": 3}, 3, (32, 64, 128), HIGH),
    ],
    ids=[
        "heunpp2",
        "seeds_2-ode",
        "seeds_2-ode-phi2-r1",
        "seeds_3-ode",
        "pece-ode-2-2",
        "pec-ode-2-2",
        "pece-ode-2-2-simple",
        "pece-ode-2-3",
    ],
)
def test_deterministic_convergence_order(name, options, order, ns, cases):
    """Measured orders over each doubling. heunpp2 is first order: its slope weights (ℓ_{i+1}/(3ℓ_0), …) do not meet
    Heun's second-order condition. seeds_2/3 at η = 0 are exponential Runge–Kutta integrators of orders 2 and 3;
    sa_solver_pece at τ = 0 the Adams–Bashforth–Moulton PECE pair, of order min(p + 1, q) (lower_order_final off, so
    that the last steps keep the order). The third-order ones are measured where their errors stay above the EDM
    case's floor (≈ 8e-8 from 64 steps on, the same for dpmsolver_singlestep's order 3). The 2-2 pair's exact weights
    err 4–20× less than diffusers' order-2 form (``simple_order_2``) from 32 to 512 steps, a smaller h² term whose
    order shows from 256 steps on (measured 1.2–1.7 below 256, 1.88 and 1.91 from 256 to 512); without PECE the
    error changes sign near 64 steps and the order shows from 512 steps on (1.87 and 1.91 from 512 to 1024; with
    ``simple_order_2`` measured in tests/test_converters_more_classes.py)."""
    for case in cases:
        errs, orders = measured_orders(name, options, case, ns)
        assert all(order - 0.2 < p < order + 0.6 for p in orders), (case, errs, orders)


def rectified_flow_error(name, n, options=None):
    """|y_end − exact flow| on the rectified flow (flow_match grid, n steps to its last τ > 0) from y_1 = 1.3 at
    t = 1: the PF-ODE's flow is y(τ) = (1 − τ) μ + √((1 − τ)² v0 + τ²) y_1."""
    sched = NoiseSchedule.from_name("rectified-flow")
    g = make_grid(sched, n + 1, "flow_match")
    grid = torch.cat([g[:-2], g[-2:-1]])
    dist = Gaussian(torch.full((1,), MU), torch.tensor(V0))
    smp = get_sampler(name)(sched, **(options or {}))
    t_list = [torch.tensor(float(t), dtype=F64) for t in smp.prepare(grid)]
    out = run_loop(smp, torch.full((1, 1), 1.3, dtype=F64), lambda x, k: dist.denoise(x, t_list[k], sched))
    tau = float(grid[-1])
    return abs(float(out) - ((1 - tau) * MU + math.sqrt((1 - tau) ** 2 * V0 + tau * tau) * 1.3))


def test_heunpp2_weights_act_in_the_flow_view():
    """The weights ℓ/(3ℓ_0) fall to Euler's (1, 0, 0) once ℓ ≪ ℓ_0. In the flow view, τ_0 = 1, they stay large and
    Heun++'s error on the rectified flow is about half Euler's (first order both); in the VE view of a VP table
    (σ̃_0 = 14.6) they act on the first steps only and the error is within 3 % of Euler's."""
    for n in (16, 64):
        ratio = rectified_flow_error("heunpp2", n) / rectified_flow_error("euler", n)
        assert 0.3 < ratio < 0.6, (n, ratio)
    errs = [rectified_flow_error("heunpp2", n) for n in (32, 64, 128)]
    assert all(0.9 < math.log2(a / b) < 1.3 for a, b in zip(errs, errs[1:])), errs
    sched = ORDER_CASES["vp-table/karras"][0]()
    g = make_grid(sched, 33, "karras")
    grid = torch.cat([g[:-2], g[-2:-1]])
    ratio = flow_error("heunpp2", sched, grid, {}) / flow_error("euler", sched, grid, {})
    assert 0.97 < ratio < 1.0, ratio


# ============================================================================ the data law (stochastic)


LAW_CASES = {
    "vp-table/karras": (lambda: NoiseSchedule.from_diffusers_config({}), "karras"),
    "edm/karras": (NoiseSchedule.edm, "karras"),
    "rectified-flow/flow_match": (lambda: NoiseSchedule.from_name("rectified-flow"), "flow_match"),
}


@pytest.mark.parametrize("case", sorted(LAW_CASES))
@pytest.mark.parametrize(
    "name, options, ns, bound",
    [
        ("seeds_2", {}, (20, 40, 80), 0.01),
        ("seeds_2", {"variant": "phi_2", "eta": 0.5}, (20, 40, 80), 0.01),
        ("seeds_3", {}, (20, 40, 80), 0.01),
        ("sa_solver_pece", {}, (20, 40, 80), 0.01),
    ],
    ids=["seeds_2", "seeds_2-phi2-half", "seeds_3", "sa_solver_pece"],
)
def test_stochastic_samplers_land_on_the_data_law(name, options, ns, bound, case):
    """The exact output law's distance to N(μ, v0) (max of the mean's and the variance's error) falls below
    ``bound`` and shrinks ≥ 2.5× from 20 to 80 steps (not always at each doubling: seeds_3's error is small from the
    start, its mean and variance errors cross zero). On the rectified flow the first step leaves t = 1 with the
    coefficients of the capped t_end (σ̃ ≤ 4096), a floor near 2e-5 far below the bound."""
    make, kind = LAW_CASES[case]
    sched = make()
    errs = []
    for n in ns:
        m, v = exact_moments(name, sched, make_grid(sched, n, kind), options)
        errs.append(max(abs(m - MU), abs(v - V0)))
    assert errs[-1] < bound and errs[0] > 2.5 * errs[-1], errs


@pytest.mark.parametrize(
    "name, options, n",
    [("seeds_2", {}, 30), ("seeds_3", {}, 20), ("sa_solver_pece", {}, 30)],
    ids=["seeds_2", "seeds_3", "sa_solver_pece"],
)
def test_monte_carlo_through_the_scheduler(name, options, n):
    """32k values through UnifiedScheduler land within 4 standard errors of the chain's exact law
    (:func:`law_checks.monte_carlo_through_the_scheduler`)."""
    monte_carlo_through_the_scheduler(name, options, n, exact_moments, MU, V0)


# ============================================================================ SA-Solver on the rectified flow
# Exact output law (exact_moments, from the prior at t = 1) on the flow_match grid, relative variance error
# |var/v0 − 1| at 5 / 10 / 20 steps (the mean is exact to the capped start's 1e-5):
#   sa_solver       shift 1: 0.48 / 0.21 / 0.064   shift 3: 0.83 / 0.41 / 0.072
#   sa_solver_pece  shift 1: 0.35 / 0.047 / 0.006  shift 3: 0.80 / 0.37 / 0.035
# Before (order 2 in diffusers' h²/2 form over the step into the grid's last level shift·1/N, λ 1–2 → 5–7):
# variance 75 / 20 / 0.65 and 16 / 24 / 4.3 (PECE 5300 / 114 / 0.71 and 490 / 500 / 8.7) for v0 = 0.25.
# Other stochastic samplers at 10 steps, shift 1 / 3: er_sde 0.04 / 0.03, seeds_2 0.18 / 0.43, euler_ancestral
# 0.43 / 0.59, dpmpp_2m_sde 1.9 / 1.8. At shift 3 and 10 steps the last interior step (t 0.278 → 0.0089, 4.7 in λ)
# is first order, a floor the PF-ODE (τ = 0) shares: 0.37.
FLOW_LAW = [
    ("sa_solver", 1.0, 0.25, 0.08),
    ("sa_solver", 3.0, 0.45, 0.09),
    ("sa_solver_pece", 1.0, 0.06, 0.01),
    ("sa_solver_pece", 3.0, 0.42, 0.05),
]


@pytest.mark.parametrize("name, shift, bound_10, bound_20", FLOW_LAW, ids=[f"{c[0]}-shift{c[1]:g}" for c in FLOW_LAW])
def test_sa_solver_lands_on_the_data_law_on_the_rectified_flow_at_few_steps(name, shift, bound_10, bound_20):
    """SA-Solver's exact output law on the rectified flow (flow_match grid) at 5, 10 and 20 steps: the variance error
    shrinks with the steps and stays below the measured values above plus a margin; the mean is exact up to the
    capped start."""
    sched = NoiseSchedule.from_name("rectified-flow")
    errs = []
    for n in (5, 10, 20):
        m, v = exact_moments(name, sched, make_grid(sched, n, "flow_match", shift=shift))
        assert abs(m - MU) < 3e-5, (n, m)
        errs.append(abs(v / V0 - 1))
    assert errs[0] > errs[1] > errs[2] and errs[1] < bound_10 and errs[2] < bound_20, errs


@pytest.mark.parametrize(
    "case, kind, n", [("rectified-flow", "flow_match", 10), ("edm", "karras", 10)], ids=["flow_match", "edm-karras"]
)
def test_sa_solver_exact_order_2_weights_beat_the_h2_form_on_long_steps(case, kind, n):
    """The exact order-2 integrals (the default) against diffusers' h²/2 form (``simple_order_2``, the twin's) where
    steps are long in λ against the history's spacing: relative variance error measured 0.21 vs 0.85 (flow_match,
    shift 1) and 0.85 vs 11.7 (EDM, Karras), sa_solver at 10 steps."""
    sched = NoiseSchedule.from_name(case)
    grid = make_grid(sched, n, kind)
    exact, simple = (
        abs(exact_moments("sa_solver", sched, grid, {"simple_order_2": flag})[1] / V0 - 1) for flag in (False, True)
    )
    assert 3 * exact < simple, (exact, simple)


@pytest.mark.parametrize("options", [{}, {"predictor_order": 3, "corrector_order": 3}, {"lower_order_final": False}])
def test_sa_solver_step_to_zero_does_not_count_for_the_orders(options):
    """A grid ending on clean data is the grid ending at its last level σ_min > 0 followed by x = s_end D: the step
    to σ = 0 changes no earlier order, so with ``lower_order_final`` the step into σ_min runs at order 1 on both
    (diffusers' own grids end at σ_min; counting the step to σ = 0 ran that jump in λ at order 2)."""
    sched = NoiseSchedule.from_name("rectified-flow")
    grid = make_grid(sched, 6, "flow_match", shift=3.0)
    assert float(grid[-1]) == 0.0
    dist = Gaussian(torch.full((4,), MU, dtype=F64), torch.tensor(V0, dtype=F64))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, dtype=F64, generator=gen)
    draws = [torch.randn(2, 4, dtype=F64, generator=gen) for _ in range(len(grid) - 1)]

    def run(g):
        smp = get_sampler("sa_solver")(sched, **options)
        t_list = [torch.tensor(float(t), dtype=F64) for t in smp.prepare(g)]
        taken = iter(draws)
        smp.noise_sampler = lambda like: next(taken)
        return run_loop(smp, x, lambda y, k: dist.denoise(y, t_list[k], sched))

    to_zero, to_min = run(grid), run(grid[:-1])
    torch.testing.assert_close(to_zero, dist.denoise(to_min, grid[-2], sched), rtol=1e-12, atol=1e-12)


def test_sa_solver_conversion_sets_the_h2_form_only_on_the_twin():
    """SASolverScheduler's order-2 form is ``simple_order_2=True`` on its twin and on ``sampler="sa_solver"`` with
    other options (the class's algorithm); another sampler (``sa_solver_pece``) and unisde's own default take the
    exact integrals."""
    from diffusers import SASolverScheduler

    config = SASolverScheduler().config
    assert UnifiedScheduler.from_config(config)._sampler.opts["simple_order_2"] is True
    other = UnifiedScheduler.from_config(config, sampler="sa_solver", sampler_options={"tau": 0.5})
    assert other._sampler.opts["simple_order_2"] is True
    assert UnifiedScheduler.from_config(config, sampler="sa_solver_pece")._sampler.opts["simple_order_2"] is False
    assert UnifiedScheduler(sampler="sa_solver")._sampler.opts["simple_order_2"] is False


# ============================================================================ step API = functional API
def network(param_name, sched):
    """A network-shaped callable (model_input, timestep) → raw output of the exact Gaussian denoiser."""
    param = unisde.get_parameterization(param_name)
    data = Gaussian(torch.full((4,), MU, dtype=F64), torch.tensor(V0, dtype=F64))

    def model(x_in, timestep):
        t = param.t_from_model_time(sched, torch.as_tensor(timestep, dtype=F64).reshape(-1)).expand(x_in.shape[0])
        x = x_in / param.model_input(torch.ones_like(x_in), t, sched)
        return param.from_denoised(data.denoise(x, t, sched), x, t, sched)

    return model


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize(
    "setup",
    [
        {"prediction_type": "epsilon"},
        {"schedule": "rectified-flow", "prediction_type": "flow_prediction", "time_grid": "flow_match"},
    ],
    ids=["vp-epsilon", "rectified-flow"],
)
def test_step_api_equals_the_functional_api(name, setup):
    """UnifiedScheduler.step, one call per listed timestep, gives a finite sample equal to unisde.sample's (same
    generator seed) to 1e-12 in float64; the model is called once per listed timestep."""
    uni = UnifiedScheduler(sampler=name, **setup)
    uni.set_timesteps(10)
    model = network(setup["prediction_type"], uni.noise_schedule)
    calls = []

    def counted(x_in, t):
        calls.append(1)
        return model(x_in, t)

    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    gen = torch.Generator().manual_seed(1)
    x = noise * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(counted(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    assert torch.isfinite(x).all() and len(calls) == len(uni.timesteps)
    out = unisde.sample(
        model,
        noise,
        schedule=uni.noise_schedule,
        parameterization=setup["prediction_type"],
        sampler=name,
        num_inference_steps=10,
        time_grid=uni._grid_kind(),
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.allclose(out, x, rtol=0, atol=1e-12), float((out - x).abs().max())


def test_evaluation_counts_and_order():
    """Model calls per n steps: heunpp2 3n − 3 (two on the next-to-last step, one on the last), seeds_2 2n − 1,
    seeds_3 3n − 2 (one call on the step to σ = 0), sa_solver_pece 2n − 1; ``order`` is the calls of a full step."""
    for name, calls, order in (
        ("heunpp2", lambda n: 3 * n - 3, 3),
        ("seeds_2", lambda n: 2 * n - 1, 2),
        ("seeds_3", lambda n: 3 * n - 2, 3),
        ("sa_solver_pece", lambda n: 2 * n - 1, 2),
    ):
        uni = UnifiedScheduler(sampler=name)
        for n in (2, 5, 12):
            uni.set_timesteps(n)
            assert len(uni.timesteps) == calls(n) and uni.order == order, (name, n)
    assert UnifiedScheduler(sampler="sa_solver").order == 1


# ============================================================================ entry mid-grid, options
@pytest.mark.parametrize(
    "name, options",
    [("heunpp2", {}), ("seeds_2", {"eta": 0.0}), ("seeds_3", {"eta": 0.0}), ("sa_solver_pece", {"tau": 0.0})],
)
def test_entry_mid_grid_is_a_fresh_run_on_the_rest_of_the_grid(name, options):
    """Entered at step k (img2img) the loop is a fresh run on grid[k:]: heunpp2's weights refer to the entry level
    (ComfyUI's sigmas[0] of the truncated list), sa_solver_pece starts without a correction at its second call of
    t_k. Entering elsewhere is a ValueError."""
    sched = NoiseSchedule.vp_linear()
    grid = make_grid(sched, 10, "karras")
    dist = Gaussian(torch.full((4,), MU), torch.tensor(V0))
    x = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(5)) * float(sched.sigma(grid[4]))

    def run(g, step):
        smp = get_sampler(name)(sched, **options)
        t_list = [torch.tensor(float(t), dtype=F64) for t in smp.prepare(g)]
        start = next(k for k, i in (smp.step_starts or {0: 0}).items() if i == step) if step else 0
        return run_loop(smp, x, lambda y, k: dist.denoise(y, t_list[k], sched), start=start), smp

    entered, smp = run(grid, 4)
    torch.testing.assert_close(entered, run(grid[4:], 0)[0], rtol=1e-12, atol=1e-12)
    bad = next(k for k in range(1, 40) if k not in smp.step_starts)
    with pytest.raises(ValueError, match="not the first evaluation of a step"):
        next(smp.loop(x, start=bad))


def test_heunpp2_refuses_to_run_upwards():
    """Inverted (an increasing grid) Heun++'s weights ℓ/(3ℓ_0) would grow without bound (10 steps gave 6e4 for an
    exact 0.8): a ValueError at set_timesteps, naming samplers that invert."""
    uni = UnifiedScheduler(sampler="inverse", sampler_options={"invert": "heunpp2"})
    with pytest.raises(ValueError, match="'heunpp2'.*cannot run on an increasing grid.*invert 'heun'"):
        uni.set_timesteps(5)


def test_menu_preset_fixes_pece():
    sched = NoiseSchedule.vp_linear()
    assert get_sampler("sa_solver_pece")(sched).opts["pece"] is True
    assert get_sampler("sa_solver")(sched).opts["pece"] is False
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['pece'\] for sampler 'sa_solver_pece'"):
        get_sampler("sa_solver_pece")(sched, pece=False)
    assert get_sampler("sa_solver_pece")(sched, tau=0.0, predictor_order=3).opts["predictor_order"] == 3


@pytest.mark.parametrize(
    "name, options, bad",
    [
        ("heunpp2", {"view": "sigma"}, "view"),
        ("heunpp2", {"s_churn": 1.0}, "unknown option"),
        ("seeds_2", {"eta": -0.1}, "eta"),
        ("seeds_2", {"s_noise": float("nan")}, "s_noise"),
        ("seeds_2", {"r": 0.0}, "option r="),
        ("seeds_2", {"r": 1.5}, "option r="),
        ("seeds_2", {"variant": "phi_3"}, "variant"),
        ("seeds_3", {"r_1": 0.7, "r_2": 0.5}, "r_1"),
        ("seeds_3", {"r_2": 1.2}, "r_2"),
        ("seeds_3", {"r_1": "1/3"}, "r_1"),
        ("sa_solver", {"pece": 1}, "pece"),
        ("sa_solver_pece", {"corrector_order": 4}, "corrector_order"),
    ],
)
def test_bad_options_are_value_errors_naming_the_option(name, options, bad):
    with pytest.raises(ValueError, match=bad):
        get_sampler(name)(NoiseSchedule.vp_linear(), **options)
    with pytest.raises(ValueError, match=bad):
        UnifiedScheduler(sampler=name, sampler_options=options)
