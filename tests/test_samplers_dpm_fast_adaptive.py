"""dpm_fast, dpm_adaptive and gradient_estimation: parity with k-diffusion's own functions (the ``k_sampling``
fixture), a reference loop written from Permenter & Yuan's equations, convergence orders on the exact Gaussian PF-ODE
on a VP table, EDM and the rectified flow, img2img entry, and the clear errors.

Every comparison runs in float64 on the exact denoiser of N(μ, v0 I) (:class:`unisde.analytic.Gaussian`):
k-diffusion in its VE view x̃ = x/s against σ̃ = σ/s (or, as ComfyUI runs it on flow models, in x itself against
τ = t on the rectified flow), unisde in the model's own space from the same start.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import unisde
from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.grids import grid_from_sigmas, make_grid
from unisde.sampling import run_loop, sample_adaptive

F64 = torch.float64
MU, V0 = 0.3, 0.6
SCHEDULES = {
    "edm": NoiseSchedule.edm,
    "vp-table": lambda: NoiseSchedule.from_diffusers_config({}),
    "rectified-flow": lambda: NoiseSchedule.from_name("rectified-flow"),
}
DIST = Gaussian(torch.full((4,), MU, dtype=F64), torch.tensor(V0, dtype=F64))


def ve_model(x, sigma):
    """The exact denoiser in k-diffusion's VE view: D(x̃; σ̃) = μ + v0/(v0 + σ̃²)(x̃ − μ)."""
    sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
    return MU + V0 / (V0 + sigma**2) * (x - MU)


def flow_model(x, tau):
    """The exact denoiser on the rectified flow at t = τ (x itself is the flow view's y: s + σ = 1)."""
    tau = torch.as_tensor(tau, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
    return MU + (1 - tau) * V0 / ((1 - tau) ** 2 * V0 + tau**2) * (x - (1 - tau) * MU)


@contextlib.contextmanager
def float64_default():
    """k-diffusion's DPM-Solver builds its λ's with torch.tensor(σ) / torch.linspace in the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def karras(sched, n, rho=7.0):
    """n Karras levels inside the schedule's σ̃ range, then 0 (computed here, independent of unisde's grids)."""
    hi, lo = float(sched.ve_sigma(1.0)) * 0.9, float(sched.ve_sigma(1e-3)) * 1.5
    ramp = torch.linspace(0, 1, n, dtype=F64)
    return torch.cat([(hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho, torch.zeros(1, dtype=F64)])


def run(name, sched, grid, x, options=None, noise_sampler=None, start=0):
    """The unisde sampler on ``grid`` from x (model space) with the exact denoiser at its float64 times."""
    smp = get_sampler(name)(sched, **(options or {}))
    times = smp.prepare(grid)
    smp.noise_sampler = noise_sampler
    t_list = [torch.tensor(float(t), dtype=F64) for t in times]
    return run_loop(smp, x, lambda x, k: DIST.denoise(x, t_list[k], sched), start=start), times


def shared_draws(seed, count):
    """Two iterators over the same draws: k-diffusion's noise_sampler(σ, σ') and unisde's noise_sampler(like)."""
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randn(3, 4, dtype=F64, generator=gen) for _ in range(count)]
    a, b = iter(draws), iter(draws)
    return (lambda sigma, sigma_next: next(a)), (lambda like: next(b))


def start(scale, seed=0):
    return torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(seed)) * scale


def exact_end(sched, t0, t1, x_ve):
    """The PF-ODE's exact solution at t1 in model space from x̃ at t0: x̃ − μ scales by √((v0 + σ̃1²)/(v0 + σ̃0²))."""
    ve0, ve1 = (float(sched.sigma(t) / sched.s(t)) for t in (t0, t1))
    return float(sched.s(t1)) * (MU + (x_ve - MU) * math.sqrt((V0 + ve1**2) / (V0 + ve0**2)))


# ============================================================================================ dpm_fast
@pytest.mark.parametrize("kind", ["edm", "vp-table"])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_dpm_fast_is_kdiffusions(k_sampling, kind, n, eta):
    """sample_dpm_fast(model, x, σ̃_min, σ̃_max, n) with the grid's first and last positive level (ComfyUI's call),
    ancestral noise shared: ≤ 1e-10, and n evaluations. k-diffusion draws at every step (its last one is scaled by
    σ̃_up = 0); unisde only where the scale is positive, so the shared list is consumed in the same order."""
    sched = SCHEDULES[kind]()
    sigmas = karras(sched, n)
    x = start(float(sigmas[0]), n)
    k_noise, our_noise = shared_draws(n + 100, n + 2)
    with float64_default():
        ref = k_sampling.sample_dpm_fast(
            ve_model, x.clone(), float(sigmas[-2]), float(sigmas[0]), n, disable=True, eta=eta, s_noise=1.1,
            noise_sampler=k_noise,
        )  # fmt: skip
    grid = grid_from_sigmas(sched, sigmas)
    ours, times = run(
        "dpm_fast", sched, grid, x * float(sched.s(grid[0])), {"view": "ve", "eta": eta, "s_noise": 1.1}, our_noise
    )
    assert len(times) == n
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [3, 8])
def test_dpm_fast_flow_view_is_comfyuis_kdiffusion_call(k_sampling, n):
    """On the rectified flow (``view="auto"`` → flow) unisde's dpm_fast is k-diffusion's function run on x against
    τ = t, as ComfyUI calls it on flow models: the same sample to 1e-10."""
    sched = SCHEDULES["rectified-flow"]()
    grid = torch.linspace(1.0, 0.0, n + 1, dtype=F64)
    x = start(1.0, n)
    with float64_default():
        ref = k_sampling.sample_dpm_fast(flow_model, x.clone(), 1.0 / n, 1.0, n, disable=True)
    ours, _ = run("dpm_fast", sched, grid, x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_dpm_fast_converges_at_order_three(kind):
    """On the exact PF-ODE from t = 0.98 to 0.02 (the grid's ends; default view): with a budget n = 3m + 2 every step
    is DPM-Solver-3 except a final DPM-Solver-2 one and the error falls like K^{-3} in the number of steps K = m + 1
    (measured 3.1–3.3 on m = 16 → 32). With n = 3m the plan ends with a DPM-Solver-1 step, whose O(h²) local error
    leaves a second-order method where that last step matters (the VP table's σ̃_min = 0.076: measured ≈ 1.9)."""
    sched = SCHEDULES[kind]()
    t0, t1 = 0.98, 0.02
    x_ve = torch.linspace(-2, 2, 4, dtype=F64).reshape(1, 4) * float(sched.sigma(t0) / sched.s(t0)) + MU
    exact = exact_end(sched, t0, t1, x_ve)

    def error(n):
        out, times = run("dpm_fast", sched, torch.linspace(t0, t1, n + 1, dtype=F64), x_ve * float(sched.s(t0)))
        assert len(times) == n
        return float((out - exact).abs().max())

    e1, e2 = error(3 * 16 + 2), error(3 * 32 + 2)
    order = math.log(e1 / e2) / math.log(33 / 17)
    assert 2.8 <= order <= 3.6, (e1, e2, order)
    if kind == "vp-table":
        e1, e2 = error(3 * 16), error(3 * 32)
        assert 1.6 <= math.log(e1 / e2) / math.log(33 / 17) <= 2.3, (e1, e2)


def test_dpm_fast_entry_mid_step_is_a_shortened_step(k_sampling):
    """img2img entry at each evaluation of a budget of 7 (steps of orders 3, 3, 1 on a λ-uniform plan), EDM schedule
    (x = x̃): entered at a step's start the rest is k-diffusion's own steps; at its ⅓ node, DPM-Solver-2 (r₁ = ½) from
    there to the step's end; at its ⅔ node, DPM-Solver-1 — composed from k-diffusion's DPMSolver step functions."""
    sched = SCHEDULES["edm"]()
    sigmas = karras(sched, 7)
    lam = torch.linspace(-math.log(float(sigmas[0])), -math.log(float(sigmas[-2])), 4, dtype=F64)
    h = float(lam[1] - lam[0])
    nodes = [float(lam[i]) + r * h for i in (0, 1) for r in (0.0, 1 / 3, 2 / 3)] + [float(lam[2])]  # evaluations
    solver = k_sampling.DPMSolver(ve_model)
    grid = grid_from_sigmas(sched, sigmas)
    for k in range(7):
        x = start(math.exp(-nodes[k]), 40 + k)
        step, position = divmod(k, 3)
        t_k, t_next = torch.tensor(nodes[k], dtype=F64), lam[step + 1]
        kd_step = (solver.dpm_solver_3_step, solver.dpm_solver_2_step, solver.dpm_solver_1_step)[position]
        if step == 2:
            kd_step = solver.dpm_solver_1_step
        with float64_default():
            expected, _ = kd_step(x.clone(), t_k, t_next)
            for i in range(step + 1, 3):  # the remaining whole steps
                expected, _ = (solver.dpm_solver_3_step if i < 2 else solver.dpm_solver_1_step)(
                    expected, lam[i], lam[i + 1]
                )
        ours, _ = run("dpm_fast", sched, grid, x, {"view": "ve"}, start=k)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10, msg=f"entry at evaluation {k}")


def test_dpm_fast_denoise_to_zero_and_one_step(k_sampling):
    """``denoise_to_zero``: the budget's last evaluation is x̂0 at σ̃_min after k-diffusion's n − 1; a one-step grid to
    σ = 0 (an empty interval) is x̂0 at the start. A grid not ending at σ = 0 refuses denoise_to_zero."""
    sched = SCHEDULES["vp-table"]()
    sigmas = karras(sched, 6)
    x = start(float(sigmas[0]), 7)
    with float64_default():
        before = k_sampling.sample_dpm_fast(ve_model, x.clone(), float(sigmas[-2]), float(sigmas[0]), 5, disable=True)
    grid = grid_from_sigmas(sched, sigmas)
    ours, times = run("dpm_fast", sched, grid, x * float(sched.s(grid[0])), {"view": "ve", "denoise_to_zero": True})
    assert len(times) == 6
    torch.testing.assert_close(ours, ve_model(before, sigmas[-2]), rtol=1e-10, atol=1e-10)
    one = grid_from_sigmas(sched, sigmas[[0, -1]])
    ours, times = run("dpm_fast", sched, one, x * float(sched.s(one[0])))
    assert len(times) == 1
    torch.testing.assert_close(ours, ve_model(x, sigmas[0]), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="denoise_to_zero=True needs a grid ending at σ = 0"):
        get_sampler("dpm_fast")(sched, denoise_to_zero=True).prepare(torch.tensor([0.9, 0.1], dtype=F64))


def test_dpm_fast_runs_backwards_on_an_increasing_grid(k_sampling):
    """From data to noise (the grid the ``inverse`` sampler hands it, increasing): k-diffusion's function with
    σ_min > σ_max, to 1e-10 (the result is x at the grid's last point, x̃ there times s); η > 0 there is refused."""
    sched = SCHEDULES["vp-table"]()
    levels = karras(sched, 9)[:-1].flip(0)  # increasing σ̃
    x = start(float(levels[0]), 11)
    with float64_default():
        ref = k_sampling.sample_dpm_fast(ve_model, x.clone(), float(levels[-1]), float(levels[0]), 8, disable=True)
    grid = sched.t_from_sigma(levels)
    ours, _ = run("dpm_fast", sched, grid, x * float(sched.s(grid[0])), {"view": "ve"})
    torch.testing.assert_close(ours / float(sched.s(grid[-1])), ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="eta must be 0 on an increasing grid"):
        get_sampler("dpm_fast")(sched, eta=0.5).prepare(grid)


@pytest.mark.parametrize("kind", ["rectified-flow", "vp-table"])
def test_dpm_fast_ancestral_noise_keeps_the_marginal(kind):
    """η = 1, budget 30, 1-d N(μ, v0) data started from the exact marginal: the output's mean and variance, exact
    from one run (the denoiser is affine: zero draws that require grad give the mean, the gradients with respect to
    the start and to every draw the variance), against the true marginal of the view's y at ℓ_min — (1 − τ)μ and
    (1 − τ)² v0 + τ² in the flow view (the rectified flow: the rectified-flow ancestral step), μ and v0 + σ̃² in the VE
    view (the VP table: k-diffusion's σ̃_down/σ̃_up). Measured: the mean exact, the variance within 0.2 % (flow) and
    1.3 % (VE) at this budget; the VE rule in the flow view would move the mean to (1 − τ_down) μ."""
    sched = SCHEDULES[kind]()
    data = Gaussian(torch.full((1,), MU, dtype=F64), torch.tensor(V0, dtype=F64))
    n = 30
    grid = torch.linspace(1.0, 0.0, n + 1, dtype=F64) if kind == "rectified-flow" else make_grid(sched, n, "karras")
    smp = get_sampler("dpm_fast")(sched, eta=1.0)
    times = smp.prepare(grid)
    s0, sigma0 = float(sched.s(grid[0])), float(sched.sigma(grid[0]))
    x = torch.full((1, 1), s0 * MU, dtype=F64, requires_grad=True)
    draws = []

    def zero_draw(like):
        draws.append(torch.zeros_like(like, requires_grad=True))
        return draws[-1]

    smp.noise_sampler = zero_draw
    t_list = [torch.tensor(float(t), dtype=F64) for t in times]
    out = run_loop(smp, x, lambda x, k: data.denoise(x, t_list[k], sched))
    grads = torch.autograd.grad(out.sum(), [x, *draws])
    var = float(grads[0]) ** 2 * (s0**2 * V0 + sigma0**2) + sum(float(g) ** 2 for g in grads[1:])
    assert len(draws) == n // 3  # one draw per step but the last (σ̃_up = 0 at σ̃_min)
    if kind == "rectified-flow":  # τ_min = 1/n, y = x
        tau = 1.0 / n
        mean_exact, var_exact = (1 - tau) * MU, (1 - tau) ** 2 * V0 + tau**2
    else:  # σ̃_min of the Karras grid, y = x̃
        ve_min = float(sched.sigma(grid[-2]) / sched.s(grid[-2]))
        mean_exact, var_exact = MU, V0 + ve_min**2
    assert abs(float(out.detach()) - mean_exact) < 1e-10
    assert abs(var / var_exact - 1) < 0.03, (var, var_exact)


# ============================================================================================ dpm_adaptive
@pytest.mark.parametrize("kind", ["edm", "vp-table"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize(
    "options",
    [{}, {"rtol": 0.01, "atol": 1e-3, "pcoeff": 0.1, "icoeff": 0.6, "dcoeff": 0.1, "h_init": 0.1}, {"eta": 0.8}],
    ids=["defaults", "pid", "eta"],
)
def test_dpm_adaptive_is_kdiffusions(k_sampling, kind, order, options):
    """sample_dpm_adaptive(..., return_info=True) on [σ̃_min, σ̃_max] = ``sigmas``: the same accepted and rejected
    attempts and NFE, the same sample to 1e-8 (measured ≤ 1e-9), ancestral noise shared."""
    sched = SCHEDULES[kind]()
    hi, lo = float(sched.ve_sigma(1.0)) * 0.9, float(sched.ve_sigma(1e-3)) * 1.5
    z = start(1.0, order)
    k_noise, our_noise = shared_draws(order + 7, 400)
    opts = {"order": order, "s_noise": 1.1, **options}
    with float64_default():
        ref, ref_info = k_sampling.sample_dpm_adaptive(
            ve_model, z * hi, lo, hi, disable=True, noise_sampler=k_noise, return_info=True, **opts
        )
    t0 = sched.t_from_sigma(torch.tensor([hi], dtype=F64))
    s0, sigma0 = float(sched.s(t0)), float(sched.sigma(t0))
    noise = z * hi * s0 / math.hypot(s0, sigma0)  # sample_adaptive scales its noise by √(s² + σ²) at t0
    ours, info = sample_adaptive(
        None,
        noise,
        schedule=sched,
        sigmas=[hi, lo],
        denoiser=lambda x, t: DIST.denoise(x, t, sched),
        sampler_options={"view": "ve", **opts},
        noise_sampler=our_noise if options.get("eta") else None,
    )
    assert info == ref_info and info["n_reject"] > 0
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


def test_dpm_adaptive_flow_view_and_functional_api(k_sampling):
    """On the rectified flow (view auto → flow) it is k-diffusion's function on x against τ, as ComfyUI calls it;
    ``unisde.sample(..., sampler="dpm_adaptive")`` returns the same sample with a network-shaped model."""
    sched = SCHEDULES["rectified-flow"]()
    z = start(1.0, 3)
    with float64_default():
        ref, ref_info = k_sampling.sample_dpm_adaptive(flow_model, z.clone(), 0.02, 1.0, disable=True, return_info=True)
    common = dict(schedule=sched, timesteps=[1000.0, 20.0], parameterization="flow", sampler="dpm_adaptive")
    ours, info = sample_adaptive(None, z, denoiser=lambda x, t: DIST.denoise(x, t, sched), **common)
    assert info == ref_info
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)
    param = unisde.get_parameterization("flow")

    def model(x, timestep):  # the exact velocity u = (x − x̂0)/t, t = timestep/1000
        t = torch.as_tensor(timestep, dtype=F64).reshape(-1) / 1000
        return param.from_denoised(DIST.denoise(x, t, sched), x, t, sched)

    via_sample = unisde.sample(model, z, **common)
    torch.testing.assert_close(via_sample, ref, rtol=1e-6, atol=1e-6)  # float32 timesteps fed to the model


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_dpm_adaptive_meets_its_tolerance_on_every_schedule(kind):
    """From t = 0.98 to 0.02 (``sigmas`` = their σ̃) on the exact PF-ODE, default view: a 100× tighter tolerance costs
    more evaluations and lowers the error by more than 10× (measured 100×); every attempt costs ``order`` = 3
    evaluations. The grid ends at σ = 0, so the result is the view's y at t = 0.02 taken as the sample: x̃ = x/s in σ̃
    (EDM, VP), x/(s + σ) in the flow view (the rectified flow's default), as k-diffusion returns x̃."""
    sched = SCHEDULES[kind]()
    t0, t1 = 0.98, 0.02
    s0, sigma0 = float(sched.s(t0)), float(sched.sigma(t0))
    x_ve = torch.linspace(-2, 2, 4, dtype=F64).reshape(1, 4) * (sigma0 / s0) + MU
    scale = float(sched.s(t1) + (sched.sigma(t1) if kind == "rectified-flow" else 0.0))
    exact = exact_end(sched, t0, t1, x_ve) / scale
    errors, nfes = [], []
    for rtol in (1e-2, 1e-4):
        out, info = sample_adaptive(
            None,
            x_ve * s0 / math.hypot(s0, sigma0),
            schedule=sched,
            sigmas=[sigma0 / s0, float(sched.sigma(t1) / sched.s(t1))],
            denoiser=lambda x, t: DIST.denoise(x, t, sched),
            sampler_options={"rtol": rtol, "atol": rtol / 10},
        )
        assert info["nfe"] == 3 * info["steps"] and info["steps"] == info["n_accept"] + info["n_reject"]
        errors.append(float((out - exact).abs().max()) / float(exact.abs().max()))
        nfes.append(info["nfe"])
    assert nfes[1] > nfes[0] and errors[1] < errors[0] / 10, (errors, nfes)
    assert errors[1] < 1e-3, errors  # a local criterion: the global error is a few rtol


def test_dpm_adaptive_is_refused_on_a_fixed_grid_with_what_to_use():
    from diffusers import DDIMScheduler

    for make in (
        lambda: unisde.UnifiedScheduler(sampler="dpm_adaptive"),
        lambda: unisde.UnifiedScheduler.from_config(DDIMScheduler().config, sampler="dpm_adaptive"),
        lambda: unisde.get_sampler("dpm_adaptive"),
    ):
        with pytest.raises(ValueError, match=r"adaptive step size.*unisde\.sampling\.sample_adaptive.*dpm_fast"):
            make()
    assert "dpm_adaptive" not in unisde.list_samplers() and "dpm_adaptive" in unisde.plugins.list_adaptive_samplers()
    with pytest.raises(ValueError, match="'ddim' runs on a fixed time grid"):
        sample_adaptive(None, torch.zeros(1, 4), denoiser=lambda x, t: x, sampler="ddim", num_inference_steps=5)
    bad = [({"order": 4}, "order=4"), ({"accept_safety": 1.5}, "accept_safety"), ({"atol": 0.0}, "atol")]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            sample_adaptive(None, torch.zeros(1, 4, dtype=F64), denoiser=lambda x, t: x, sampler_options=options,
                            num_inference_steps=5)  # fmt: skip
    with pytest.raises(ValueError, match="needs two distinct"):
        sample_adaptive(None, torch.zeros(1, 4, dtype=F64), denoiser=lambda x, t: x, sigmas=[10.0, 0.0])


# ============================================================================================ gradient_estimation
def gradient_estimation_reference(denoise, x, levels, gamma):
    """Permenter & Yuan 2024's gradient estimation, from the paper's equations, in the ODE's variables x against the
    noise level ℓ: d_i = (x_i − D(x_i; ℓ_i))/ℓ_i; the first step Euler, then d̄_i = γ d_i + (1 − γ) d_{i−1};
    x_{i+1} = x_i + (ℓ_{i+1} − ℓ_i) d̄_i."""
    previous = None
    for i in range(len(levels) - 1):
        d = (x - denoise(x, levels[i])) / levels[i]
        direction = d if previous is None else gamma * d + (1 - gamma) * previous
        x = x + (levels[i + 1] - levels[i]) * direction
        previous = d
    return x


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("gamma", [2.0, 1.3])
def test_gradient_estimation_is_the_papers_loop(kind, gamma):
    """In σ̃ on EDM and the VP table (x̃ = x/s against σ̃), in τ on the rectified flow (``view`` auto → flow: x against
    t, as ComfyUI runs it): the same sample as the reference loop to 1e-10. γ = 1 is the ``euler`` sampler."""
    sched = SCHEDULES[kind]()
    if kind == "rectified-flow":
        levels = torch.linspace(1.0, 0.0, 9, dtype=F64)
        x = start(1.0, 5)
        ref = gradient_estimation_reference(flow_model, x.clone(), levels, gamma)
        grid = levels.clone()
    else:
        levels = karras(sched, 8)
        x = start(float(levels[0]), 5)
        ref = gradient_estimation_reference(ve_model, x.clone(), levels, gamma)
        grid = grid_from_sigmas(sched, levels)
        x = x * float(sched.s(grid[0]))
    ours, times = run("gradient_estimation", sched, grid, x, {"ge_gamma": gamma})
    assert len(times) == 8
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    euler, _ = run("euler", sched, grid, x)
    plain, _ = run("gradient_estimation", sched, grid, x, {"ge_gamma": 1.0})
    torch.testing.assert_close(plain, euler, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_gradient_estimation_order_on_the_exact_pf_ode(kind):
    """Grids to σ = 0, default view, n = 32 → 64: γ = 2 converges at first order (d̄ extrapolates d to the step's
    end, not its middle; measured 0.80 on Karras grids (EDM, VP), 1.00 on the rectified flow's uniform τ grid),
    γ = 1.5 — Adams–Bashforth-2 up to the grid's grading — at second order (measured 2.02–2.18). Karras grids in σ̃;
    on the rectified flow the grid uniform in τ = t, on which γ = 1.5 is AB2 itself (a Karras grid's first steps from
    τ = 1 leave the errors pre-asymptotic there at these n)."""
    sched = SCHEDULES[kind]()

    def error(n, gamma):
        grid = make_grid(sched, n, "uniform_t" if kind == "rectified-flow" else "karras")
        t0 = grid[0]
        s0, sigma0 = float(sched.s(t0)), float(sched.sigma(t0))
        ve0 = sigma0 / s0 if s0 > 0 else math.inf
        x0 = torch.linspace(-2, 2, 4, dtype=F64).reshape(1, 4)
        if math.isfinite(ve0):  # x = s x̃, x̃ = μ + σ̃ z
            x, exact = s0 * (MU + ve0 * x0), MU + ve0 * x0 * math.sqrt(V0 / (V0 + ve0**2))
        else:  # s(1) = 0 on the rectified flow: x = z, and the ODE maps z to μ + √v0 z
            x, exact = x0.clone(), MU + math.sqrt(V0) * x0
        out, _ = run("gradient_estimation", sched, grid, x, {"ge_gamma": gamma})
        return float((out - exact).abs().max())

    first = math.log2(error(32, 2.0) / error(64, 2.0))
    second = math.log2(error(32, 1.5) / error(64, 1.5))
    assert 0.7 <= first <= 1.2, first
    assert 1.8 <= second <= 2.4, second


def test_gradient_estimation_option_errors_and_entry():
    with pytest.raises(ValueError, match="ge_gamma must be float"):
        unisde.UnifiedScheduler(sampler="gradient_estimation", sampler_options={"ge_gamma": "2"})
    with pytest.raises(ValueError, match="valid options: ge_gamma, view"):
        unisde.UnifiedScheduler(sampler="gradient_estimation", sampler_options={"max_order": 3})
    # entered mid-grid (img2img) the history restarts: the same as the reference loop on the remaining levels
    sched = SCHEDULES["edm"]()
    levels = karras(sched, 8)
    x = start(float(levels[3]), 9)
    ours, _ = run("gradient_estimation", sched, grid_from_sigmas(sched, levels), x, start=3)
    torch.testing.assert_close(
        ours, gradient_estimation_reference(ve_model, x, levels[3:], 2.0), rtol=1e-10, atol=1e-10
    )
