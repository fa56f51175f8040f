"""The CFG++ samplers (unisde/samplers/cfg_pp.py; dpmpp_2m_cfg_pp in the unisde-dpmsolver plugin).

1. With the unconditional x̂0 equal to the guided one (guidance scale 1, passed as a distinct tensor so that the CFG++
   code path runs) each is its base sampler, same noise, to 1e-12 in float64 on VP, EDM and the rectified flow.
2. With real guidance (two exact Gaussian denoisers, guided = U + w (C − U)) each matches a float64 reference written
   here from ComfyUI's update formulas in the VE view x̃ = x/s, σ̃ = σ/s (k-diffusion's variables), to 1e-10, on the EDM
   schedule (s = 1) and a VP table (s ≠ 1: unisde steps in x = s x̃); on the rectified flow ComfyUI's α-scaled Euler
   CFG++ in model space.
3. With cond = uncond the deterministic ones converge on the exact Gaussian PF-ODE at their base sampler's order.
4. Refusals: UnifiedScheduler, a single tensor for a CFG++ sampler, a pair for a plain one, wrong shapes, inversion.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch

import unisde
from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.grids import grid_from_sigmas, make_grid
from unisde.plugins import list_guided_samplers
from unisde.sampling import run_loop

F64 = torch.float64
MU_C, V_C = 0.8, 0.3  # the "conditional" data N(μ_c, v_c I)
MU_U, V_U = -0.2, 0.7  # the "unconditional" data N(μ_u, v_u I)
W = 2.5  # guidance scale of test 2
COND = Gaussian(torch.full((4,), MU_C, dtype=F64), torch.tensor(V_C, dtype=F64))
UNCOND = Gaussian(torch.full((4,), MU_U, dtype=F64), torch.tensor(V_U, dtype=F64))
SCHEDULES = {
    "edm": NoiseSchedule.edm,
    "vp-table": lambda: NoiseSchedule.from_diffusers_config({}),
    "rectified-flow": lambda: NoiseSchedule.from_name("rectified-flow"),
}
# CFG++ sampler → (base sampler, options of both)
PAIRS = {
    "euler_cfg_pp": ("euler", {}),
    "euler_ancestral_cfg_pp": ("euler_ancestral", {}),
    "ddim_cfg_pp": ("ddim", {}),
    "dpmpp_2m_cfg_pp": ("dpmpp_2m", {}),
    "dpmpp_2s_ancestral_cfg_pp": ("dpmpp_2s_ancestral", {}),
    "res_multistep_cfg_pp": ("res_multistep", {}),
    "res_multistep_ancestral_cfg_pp": ("res_multistep_ancestral", {}),
    "gradient_estimation_cfg_pp": ("gradient_estimation", {}),
}


def guided_denoiser(sched, w):
    """denoiser(x, t) → (U + w (C − U), U) with C, U the exact x̂0 of the two Gaussians (model space)."""

    def denoise(x, t):
        c, u = COND.denoise(x, t, sched), UNCOND.denoise(x, t, sched)
        return u + w * (c - u), u

    return denoise


def shared_draws(seed, count=64):
    """Two independent iterators over the same standard normal draws (for two runs, or a run and a reference)."""
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randn(3, 4, dtype=F64, generator=gen) for _ in range(count)]
    a, b = iter(draws), iter(draws)
    return (lambda like: next(a)), b


def karras(sched, n, rho=7.0):
    """n Karras levels σ̃ inside the schedule's range, then 0 (computed here, independent of unisde's grids)."""
    hi, lo = float(sched.ve_sigma(1.0)) * 0.9, float(sched.ve_sigma(1e-3)) * 1.5
    ramp = torch.linspace(0, 1, n, dtype=F64)
    return torch.cat([(hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho, torch.zeros(1, dtype=F64)])


def run(name, sched, grid, x, denoise, options=None, noise_sampler=None):
    """The sampler on ``grid`` from x (model space) through run_loop, ``denoise(x, t)`` at its float64 times."""
    smp = get_sampler(name)(sched, **(options or {}))
    times = [torch.tensor(float(t), dtype=F64) for t in smp.prepare(grid)]
    smp.noise_sampler = noise_sampler
    return run_loop(smp, x, lambda x, k: denoise(x, times[k]))


# ============================================================================ 1. guidance scale 1: the base sampler
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_without_guidance_each_is_its_base_sampler(name, kind):
    """unisde.sample with denoiser → (D, D.clone()) against the base sampler with D, the same noise draws, 9 steps on
    a Karras grid: ≤ 1e-12 (measured ≤ 8e-16)."""
    sched = SCHEDULES[kind]()
    base, options = PAIRS[name]
    noise = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))

    def plain(x, t):
        return COND.denoise(x, t, sched)

    def pair(x, t):
        d = plain(x, t)
        return d, d.clone()

    common = dict(schedule=sched, num_inference_steps=9, time_grid="karras", sampler_options=options)
    ns_a, draws = shared_draws(7)
    ours = unisde.sample(None, noise, sampler=name, denoiser=pair, noise_sampler=ns_a, **common)
    ref = unisde.sample(None, noise, sampler=base, denoiser=plain, noise_sampler=lambda like: next(draws), **common)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    assert not torch.equal(ours, unisde.sample(None, noise, sampler=name, denoiser=guided_denoiser(sched, W), **{
        **common, "noise_sampler": shared_draws(7)[0]}))  # fmt: skip


# ============================================================================ 2. with guidance: ComfyUI's updates
def ve_gaussian(mu, v):
    """The exact denoiser of N(μ, v I) in the VE view: D(x̃; σ̃) = μ + v/(v + σ̃²)(x̃ − μ)."""
    return lambda x, sig: mu + v / (v + sig**2) * (x - mu)


VE_C, VE_U = ve_gaussian(MU_C, V_C), ve_gaussian(MU_U, V_U)


def ve_pair(x, sig, w=W):
    c, u = VE_C(x, sig), VE_U(x, sig)
    return u + w * (c - u), u


def ancestral(sig, sig_next, eta):
    """k-diffusion's get_ancestral_step: σ_up = min(σ', η √(σ'² (σ² − σ'²)/σ²)), σ_down = √(σ'² − σ_up²)."""
    if not eta:
        return sig_next, 0.0
    up = min(sig_next, eta * math.sqrt(sig_next**2 * (sig**2 - sig_next**2) / sig**2))
    return math.sqrt(sig_next**2 - up**2), up


def ref_euler_ancestral(x, sigmas, eta, draws):
    """sample_euler_ancestral_cfg_pp (α = 1): x̃ = D + σ̃_down (x̃ − U)/σ̃ + σ̃_up z; x̃ = D on the last step."""
    for i in range(len(sigmas) - 1):
        d, u = ve_pair(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = d
            continue
        down, up = ancestral(sigmas[i], sigmas[i + 1], eta)
        x = d + down * (x - u) / sigmas[i]
        if eta > 0:
            x = x + up * next(draws)
    return x


def ref_dpmpp_2s_ancestral(x, sigmas, eta, draws):
    """sample_dpmpp_2s_ancestral_cfg_pp: DPM-Solver++(2S) in t = −log σ̃ on U (U_2 at the midpoint), noise, + D − U."""
    for i in range(len(sigmas) - 1):
        d, u = ve_pair(x, sigmas[i])
        down, up = ancestral(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + (x - u) / sigmas[i] * (down - sigmas[i])
        else:
            t, t_next = -math.log(sigmas[i]), -math.log(down)
            h = t_next - t
            s = t + h / 2
            x_2 = math.exp(t - s) * x - math.expm1(-h / 2) * u
            _, u_2 = ve_pair(x_2, math.exp(-s))
            x = math.exp(t - t_next) * x - math.expm1(-h) * u_2
        if sigmas[i + 1] > 0:
            x = x + up * next(draws)
        x = x + (d - u)
    return x


def ref_dpmpp_2m(x, sigmas):
    """sample_dpmpp_2m_cfg_pp: x̃ = D + e^{−h}(x̃ − U) − expm1(−h)/(2r) (D − U_old) (the last term from the 2nd step
    on, not on the step to σ̃ = 0)."""
    old_u = None
    for i in range(len(sigmas) - 1):
        d, u = ve_pair(x, sigmas[i])
        t = -math.log(sigmas[i])
        t_next = -math.log(sigmas[i + 1]) if sigmas[i + 1] > 0 else math.inf
        h = t_next - t
        mix = -math.exp(-h) * u
        if old_u is not None and sigmas[i + 1] > 0:
            r = (t + math.log(sigmas[i - 1])) / h
            mix = mix - math.expm1(-h) / (2 * r) * (d - old_u)
        x = d + mix + math.exp(-h) * x
        old_u = u
    return x


def ref_res_multistep(x, sigmas, eta, draws):
    """res_multistep(cfg_pp=True): first-order steps x̃ = D + σ̃_down (x̃ − U)/σ̃; second-order ones
    x̃ = e^{−h}(x̃ + D − U) + h (b₁ U + b₂ U_old), b₂ = φ₂(−h)/c₂, b₁ = φ₁(−h) − b₂, c₂ = (t_prev − t_old)/h; noise."""
    old_u = old_down = None
    for i in range(len(sigmas) - 1):
        d, u = ve_pair(x, sigmas[i])
        down, up = ancestral(sigmas[i], sigmas[i + 1], eta)
        if down == 0 or old_u is None:
            x = d + (x - u) / sigmas[i] * down
        else:
            t, t_old, t_next, t_prev = (-math.log(v) for v in (sigmas[i], old_down, down, sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            x = x + (d - u)
            x = math.exp(-h) * x + h * (b1 * u + b2 * old_u)
        if sigmas[i + 1] > 0:
            x = x + up * next(draws)
        old_u, old_down = u, down
    return x


def ref_gradient_estimation(x, sigmas, gamma):
    """sample_gradient_estimation(cfg_pp=True): d = (x̃ − U)/σ̃, x̃ = D + σ̃' d (+ (γ − 1)(σ̃' − σ̃)(d − d_old) after the
    first step). The step to σ̃ = 0 is this same formula (unisde's gradient_estimation takes its ordinary step there;
    ComfyUI returns D)."""
    old_d = None
    for i in range(len(sigmas) - 1):
        d_guided, u = ve_pair(x, sigmas[i])
        d = (x - u) / sigmas[i]
        x = d_guided + d * sigmas[i + 1]
        if old_d is not None:
            x = x + (gamma - 1) * (d - old_d) * (sigmas[i + 1] - sigmas[i])
        old_d = d
    return x


REFERENCES = {
    "euler_cfg_pp": (lambda x, sig, draws: ref_euler_ancestral(x, sig, 0.0, draws), {}),
    "euler_ancestral_cfg_pp": (lambda x, sig, draws: ref_euler_ancestral(x, sig, 0.8, draws), {"eta": 0.8}),
    "ddim_cfg_pp": (lambda x, sig, draws: ref_euler_ancestral(x, sig, 0.5, draws), {"eta": 0.5}),
    "dpmpp_2s_ancestral_cfg_pp": (lambda x, sig, draws: ref_dpmpp_2s_ancestral(x, sig, 1.0, draws), {}),
    "dpmpp_2m_cfg_pp": (lambda x, sig, draws: ref_dpmpp_2m(x, sig), {}),
    "res_multistep_cfg_pp": (lambda x, sig, draws: ref_res_multistep(x, sig, 0.0, draws), {}),
    "res_multistep_ancestral_cfg_pp": (lambda x, sig, draws: ref_res_multistep(x, sig, 1.0, draws), {}),
    "gradient_estimation_cfg_pp": (lambda x, sig, draws: ref_gradient_estimation(x, sig, 2.0), {}),
}


@pytest.mark.parametrize("kind", ["edm", "vp-table"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_with_guidance_each_is_comfyuis_update(name, kind):
    """guided = U + 2.5 (C − U): the reference (VE view, float64) and unisde (model space x = s x̃ on the same σ̃
    levels) to 1e-10 (measured ≤ 1e-14), ancestral noise shared."""
    sched = SCHEDULES[kind]()
    reference, options = REFERENCES[name]
    sigmas = karras(sched, 10)
    x_ve = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(3)) * float(sigmas[0])
    ns, draws = shared_draws(11)
    ref = reference(x_ve.clone(), [float(v) for v in sigmas], draws)
    grid = grid_from_sigmas(sched, sigmas)
    ours = run(name, sched, grid, x_ve * float(sched.s(grid[0])), guided_denoiser(sched, W), options, ns)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_euler_cfg_pp_on_the_rectified_flow_is_comfyuis_alpha_scaled_update(eta):
    """ComfyUI's sample_euler_ancestral_cfg_pp on a flow model, in model space with α = s = 1 − t, σ = t:
    x' = α' D + α' σ̃_down (x − α U)/σ + α' σ̃_up z with the ancestral split of σ̃ = σ/α; x' = D on the last step.
    gradient_estimation_cfg_pp with γ = 1 (flow view) is the same sampler."""
    sched = SCHEDULES["rectified-flow"]()
    grid = torch.linspace(0.97, 0.0, 9, dtype=F64)
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    ns, draws = shared_draws(13)
    ref = x.clone()
    for i in range(len(grid) - 1):
        t, t_next = float(grid[i]), float(grid[i + 1])
        d, u = guided_denoiser(sched, W)(ref, torch.tensor(t, dtype=F64))
        if t_next == 0:
            ref = d
            continue
        a, a_next = 1 - t, 1 - t_next
        down, up = ancestral(t / a, t_next / a_next, eta)
        ref = a_next * d + a_next * down * (ref - a * u) / t
        if eta > 0:
            ref = ref + a_next * up * next(draws)
    name = "euler_ancestral_cfg_pp" if eta else "euler_cfg_pp"
    ours = run(name, sched, grid, x, guided_denoiser(sched, W), {"eta": eta} if eta else {}, ns)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    if not eta:
        ge = run("gradient_estimation_cfg_pp", sched, grid, x, guided_denoiser(sched, W), {"ge_gamma": 1.0})
        torch.testing.assert_close(ge, ours, rtol=0, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["epsilon", "v_prediction", "sample", "flow"])
def test_a_model_returning_the_pair_of_raw_outputs(parameterization):
    """model(x_in, t) → (guided raw output, unconditional raw output), each converted with the parameterisation's
    coefficients. Scale 1: the base sampler with the conditional model (≤ 1e-12). Scale 2.5: the denoiser pair (≤ 1e-12)
    on the VP table's own timesteps, where the model is fed exactly the denoiser's times (the flow model's are rounded
    to float32, so there only the first check)."""
    sched = SCHEDULES["rectified-flow" if parameterization == "flow" else "vp-table"]()
    cond, uncond = COND.as_model(parameterization, sched), UNCOND.as_model(parameterization, sched)

    def model(w):
        def call(x_in, t):
            c, u = cond(x_in, t), uncond(x_in, t)
            return u + w * (c - u), (c.clone() if w == 1 else u)

        return call

    noise = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    common = dict(schedule=sched, parameterization=parameterization, num_inference_steps=6,
                  time_grid="leading" if sched.is_discrete else "uniform_t")  # fmt: skip
    ours = unisde.sample(model(1.0), noise, sampler="dpmpp_2m_cfg_pp", **common)
    torch.testing.assert_close(ours, unisde.sample(cond, noise, sampler="dpmpp_2m", **common), rtol=0, atol=1e-12)
    if parameterization != "flow":
        ours = unisde.sample(model(W), noise, sampler="dpmpp_2m_cfg_pp", **common)
        ref = unisde.sample(None, noise, sampler="dpmpp_2m_cfg_pp", denoiser=guided_denoiser(sched, W), **common)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


# ============================================================================ 3. convergence at the base's order
ORDERS = {  # sampler → accepted range of log2(error(n)/error(2n)) on n = 40 → 80
    "euler_cfg_pp": (0.8, 1.3),
    "dpmpp_2m_cfg_pp": (1.7, 2.6),
    "res_multistep_cfg_pp": (1.7, 2.6),
    "gradient_estimation_cfg_pp": (0.7, 1.2),  # γ = 2: first order (tests/test_samplers_dpm_fast_adaptive.py)
}


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(ORDERS))
def test_convergence_order_without_guidance(name, kind):
    """cond = uncond (passed as two tensors), exact Gaussian PF-ODE solution, Karras grids on EDM and VP, the grid
    uniform in t on the rectified flow, n = 20, 40, 80: the measured orders (printed with -s) lie in the base
    sampler's range. Measured on 40 → 80 (EDM / VP / flow): euler 0.99 / 0.99 / 1.01, dpmpp_2m 2.13 / 2.20 / 2.12,
    res_multistep 2.17 / 2.22 / 2.32, gradient_estimation (γ = 2) 0.84 / 0.83 / 0.99."""
    sched = SCHEDULES[kind]()
    z = torch.linspace(-2, 2, 4, dtype=F64).reshape(1, 4)

    def pair(x, t):
        d = COND.denoise(x, t, sched)
        return d, d.clone()

    def error(n):
        grid = make_grid(sched, n, "uniform_t" if kind == "rectified-flow" else "karras")
        s0, sigma0 = float(sched.s(grid[0])), float(sched.sigma(grid[0]))
        if s0 > 0:  # x = s x̃, x̃ = μ + σ̃ z; the ODE scales x̃ − μ by √(v/(v + σ̃²)) down to σ̃ = 0
            ve0 = sigma0 / s0
            x, exact = s0 * (MU_C + ve0 * z), MU_C + ve0 * z * math.sqrt(V_C / (V_C + ve0**2))
        else:  # s(1) = 0: x = z, mapped to μ + √v z
            x, exact = z.clone(), MU_C + math.sqrt(V_C) * z
        return float((run(name, sched, grid, x, pair) - exact).abs().max())

    errors = [error(n) for n in (20, 40, 80)]
    orders = [math.log2(errors[0] / errors[1]), math.log2(errors[1] / errors[2])]
    print(f"{name} {kind}: errors {errors}, orders {orders}")
    lo, hi = ORDERS[name]
    assert lo <= orders[1] <= hi, (errors, orders)


# ============================================================================ 4. refusals and listings
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_unified_scheduler_refuses_them(name):
    with pytest.raises(ValueError, match="needs the unconditional prediction.*diffusers pipelines do not pass to step"):
        unisde.UnifiedScheduler(sampler=name)


def test_listed_apart_and_shown_by_unisde_plugins():
    from unisde import cli

    guided = set(list_guided_samplers())
    assert set(PAIRS) <= guided and not guided & set(unisde.list_samplers())
    assert all(get_sampler(name).needs_uncond for name in guided)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["plugins"]) in (0, None)
    rows = {line.split()[1]: line for line in buf.getvalue().splitlines() if line.startswith("sampler ")}
    assert all("needs the unconditional x̂0 (CFG++)" in rows[name] for name in PAIRS)
    assert "adaptive steps" in rows["dpm_adaptive"] and "CFG++" not in rows["euler"]


@pytest.mark.parametrize("name", ["euler_cfg_pp", "dpmpp_2m_cfg_pp", "res_multistep_ancestral_cfg_pp"])
def test_a_single_tensor_is_refused_before_any_step(name):
    sched = SCHEDULES["edm"]()
    calls = []

    def plain(x, t):
        calls.append(t)
        return COND.denoise(x, t, sched)

    steps = []
    base = name.removesuffix("_cfg_pp")
    with pytest.raises(ValueError, match=rf"sampler '{name}' \(CFG\+\+\) needs the unconditional.*'{base}'"):
        unisde.sample(None, torch.zeros(2, 4, dtype=F64), schedule=sched, sampler=name, num_inference_steps=5,
                      denoiser=plain, callback=lambda *a: steps.append(a))  # fmt: skip
    assert len(calls) == 1 and not steps
    with pytest.raises(ValueError, match="needs the unconditional"):  # a model's single output: the same refusal
        unisde.sample(COND.as_model("epsilon", sched), torch.zeros(2, 4, dtype=F64), schedule=sched,
                      parameterization="epsilon", sampler=name, num_inference_steps=5)  # fmt: skip


def test_a_pair_for_a_plain_sampler_and_wrong_shapes_are_refused():
    sched = SCHEDULES["edm"]()
    x = torch.zeros(2, 4, dtype=F64)
    common = dict(schedule=sched, num_inference_steps=4)
    with pytest.raises(ValueError, match="sampler 'euler' takes one x̂0.*euler_cfg_pp"):
        unisde.sample(None, x, sampler="euler", denoiser=guided_denoiser(sched, W), **common)
    model = COND.as_model("epsilon", sched)
    with pytest.raises(ValueError, match="sampler 'ddim' takes one x̂0"):
        unisde.sample(lambda x_in, t: (model(x_in, t), model(x_in, t)), x, sampler="ddim", **common)
    bad = {
        "three": lambda x, t: (x, x, x),
        "shape": lambda x, t: (x, x[:1]),
        "not a tensor": lambda x, t: (x, 0.0),
    }
    for what, denoiser in bad.items():
        with pytest.raises(ValueError, match=r"expected \(guided x̂0, unconditional x̂0\), each of the sample's shape"):
            unisde.sample(None, x, sampler="euler_cfg_pp", denoiser=denoiser, **common)
    with pytest.raises(ValueError, match="cannot invert 'euler_cfg_pp'.*CFG\\+\\+"):
        get_sampler("inverse")(sched, invert="euler_cfg_pp")


def test_a_driver_that_does_not_pass_the_unconditional_estimate_is_an_error():
    """A loop driven by hand (any driver but run_loop) without ``uncond_denoised``: a ValueError, not a silent step on
    the guided x̂0 alone."""
    sched = SCHEDULES["edm"]()
    smp = get_sampler("res_multistep_cfg_pp")(sched)
    smp.prepare(grid_from_sigmas(sched, karras(sched, 4)))
    loop = smp.loop(torch.ones(1, 4, dtype=F64))
    x = next(loop)
    with pytest.raises(ValueError, match="did not provide it"):
        loop.send((x, torch.zeros_like(x)))
