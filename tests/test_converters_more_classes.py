r"""The diffusers classes converted last — EDMDPMSolverMultistep, CosineDPMSolverMultistep (Stable Audio), SASolver and
CMStochasticIterative — at live parity, their refusals by name, and the two new samplers on exact Gaussian data.

Parity: each diffusers class and ``UnifiedScheduler.from_config`` of its config run the pipeline loop side by side
from the same start, with the same model and generator seed; after *every* step the states are compared, and each
difference must stay below 1e-5 × max |x| of the reference state at that step (all four classes keep their sample
in the model's own space here: s = 1 for the EDM-type classes, the VP table for SA-Solver). The model,
F(x, τ) = x (0.8 + 0.05 atan τ + 10⁻⁴ τ) + 0.05 sin 3x, depends on the timestep τ it is fed on every scale these
classes use (¼ ln σ, 2/π atan σ, training indices, 250 ln σ), so a wrong timestep, input scaling or coefficient
shows. A second seed must give a different sample wherever noise is drawn (the noise is really used).

Exact data: N(μ, v0) with the exact denoiser (``unisde.analytic.Gaussian``); the PF-ODE flow is then
x̃(σ̃) = μ + (x̃_0 − μ) √((v0 + σ̃²)/(v0 + σ̃_0²)) in the VE view.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    CMStochasticIterativeScheduler,
    CosineDPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    SASolverScheduler,
)

import unisde
from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import make_grid
from unisde.sampling import run_loop

SHAPE = (1, 2, 4, 4)
REL_TOL = 1e-5
MU, V0 = 0.5, 0.25


def model(x: torch.Tensor, timestep) -> torch.Tensor:
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 0.05 * math.atan(tau) + 1e-4 * tau) + 0.05 * torch.sin(3 * x)


def trajectory(sched, n: int | None, seed: int | None = 1, begin: int = 0, **set_kw) -> tuple[list, list, list]:
    """The pipeline loop from z · init_noise_sigma: (states after every step, timesteps fed, the generator)."""
    if n is not None:
        set_kw["num_inference_steps"] = n
    sched.set_timesteps(**set_kw)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    if begin:
        sched.set_begin_index(begin)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    states, fed = [], []
    for t in sched.timesteps[begin:]:
        fed.append(float(t))
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
        states.append(x)
    return states, fed, gen


def assert_lockstep(ref, uni, n: int, what: str, seed: int = 1, timestep_atol: float = 1e-5, **kw) -> float:
    """Per-step parity (see the module docstring); returns the largest relative difference measured."""
    ref_states, ref_fed, ref_gen = trajectory(ref, n, seed, **kw)
    uni_states, uni_fed, uni_gen = trajectory(uni, n, seed, **kw)
    assert len(ref_fed) == len(uni_fed), (ref_fed, uni_fed)
    torch.testing.assert_close(torch.tensor(uni_fed), torch.tensor(ref_fed), rtol=1e-6, atol=timestep_atol)
    worst = 0.0
    for k, (a, b) in enumerate(zip(ref_states, uni_states)):
        assert torch.isfinite(a).all(), (what, k)
        rel = float((a - b).abs().max()) / float(a.abs().max())
        assert rel <= REL_TOL, f"{what}: step {k}: max|Δ| = {rel:.3g} × max|x| > {REL_TOL:g}"
        worst = max(worst, rel)
    if ref_gen is not None:  # the same number of draws from the same stream
        assert torch.equal(ref_gen.get_state(), uni_gen.get_state()), what
    return worst


def assert_noise_is_used(ref, uni, n: int, **kw):
    a, _, _ = trajectory(uni, n, seed=1, **kw)
    b, _, _ = trajectory(uni, n, seed=2, **kw)
    c, _, _ = trajectory(ref, n, seed=2, **kw)
    assert float((a[-1] - b[-1]).abs().max()) > 1e-3 * float(a[-1].abs().max())
    assert float((b[-1] - c[-1]).abs().max()) <= REL_TOL * float(c[-1].abs().max())


def refusal(cls, **flags) -> str:
    with pytest.raises(ValueError) as info:
        UnifiedScheduler.from_config(cls(**flags).config)
    text = str(info.value)
    assert cls.__name__ in text, text
    return text


# ============================================================================ EDMDPMSolverMultistep
EDM_DPM_CASES = [
    (schedule, order, solver_type, algorithm)
    for schedule in ("karras", "exponential")
    for order in (1, 2, 3)
    for solver_type in ("midpoint", "heun")
    for algorithm in ("dpmsolver++", "sde-dpmsolver++")
    if not (algorithm == "sde-dpmsolver++" and order == 3) and not (order == 1 and solver_type == "heun")
]  # (solver_type only shapes the second-order step)


@pytest.mark.parametrize("sigma_schedule, order, solver_type, algorithm", EDM_DPM_CASES)
def test_edm_dpmsolver_multistep_per_step_parity(sigma_schedule, order, solver_type, algorithm):
    ref = EDMDPMSolverMultistepScheduler(
        sigma_schedule=sigma_schedule, solver_order=order, solver_type=solver_type, algorithm_type=algorithm
    )
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "dpmsolver++" and uni.parameterization.name == "edm"
    assert uni._sampler.opts["solver_order"] == order and uni._sampler.opts["algorithm_type"] == algorithm
    assert_lockstep(ref, uni, 8, f"EDM-DPM {sigma_schedule} {order} {solver_type} {algorithm}")
    if algorithm.startswith("sde"):
        assert_noise_is_used(ref, uni, 8)


@pytest.mark.parametrize(
    "flags, n",
    [
        ({"solver_order": 3, "lower_order_final": False}, 16),
        ({"solver_order": 3, "euler_at_final": True}, 16),
        ({"prediction_type": "v_prediction", "sigma_data": 1.0, "sigma_schedule": "exponential"}, 10),
        ({"sigma_min": 0.01, "sigma_max": 20.0, "rho": 5.0, "sigma_data": 0.7}, 10),
        ({"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}, 10),
        ({"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "lower_order_final": False}, 16),
    ],
    ids=["3M-16", "euler-at-final", "v-cosxl", "sigma-range", "thresholding", "sde-heun-16"],
)
def test_edm_dpmsolver_multistep_flags(flags, n):
    ref = EDMDPMSolverMultistepScheduler(**flags)
    uni = UnifiedScheduler.from_config(ref.config)
    assert_lockstep(ref, uni, n, f"EDM-DPM {flags}")
    back = EDMDPMSolverMultistepScheduler.from_config(uni.config)  # the solver keys survive the round trip
    assert all(back.config[k] == v for k, v in flags.items())


def test_edm_dpmsolver_multistep_refusals():
    text = refusal(EDMDPMSolverMultistepScheduler, final_sigmas_type="sigma_min")
    assert "final_sigmas_type='sigma_min'" in text
    text = refusal(EDMDPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++", solver_order=3)
    assert "solver_order=3" in text and "sampler='dpmsolver++'" in text


def test_edm_euler_v_prediction_parity():
    """EDMEuler with prediction_type="v_prediction" (CosXL's): c_out negated in the edm parameterisation."""
    ref = EDMEulerScheduler(prediction_type="v_prediction", sigma_schedule="exponential", sigma_data=1.0)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.parameterization.config["prediction_type"] == "v_prediction"
    assert_lockstep(ref, uni, 10, "EDMEuler v")
    assert EDMEulerScheduler.from_config(uni.config).config.prediction_type == "v_prediction"


# ============================================================================ CosineDPMSolverMultistep
COSINE_CASES = [
    (schedule, order, solver_type, prediction)
    for schedule in ("exponential", "karras")
    for order in (1, 2)
    for solver_type in ("midpoint", "heun")
    for prediction in ("v_prediction", "epsilon")
    if not (order == 1 and solver_type == "heun")
]


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde, on diffusers' queries below σ_min
@pytest.mark.parametrize("sigma_schedule, order, solver_type, prediction", COSINE_CASES)
def test_cosine_dpmsolver_multistep_per_step_parity(sigma_schedule, order, solver_type, prediction):
    """SDE-DPM-Solver++ with Brownian-tree noise seeded by the generator's initial seed: the same numbers, so the
    per-step tolerance holds from σ = 500 down to the clean sample."""
    pytest.importorskip("torchsde")
    ref = CosineDPMSolverMultistepScheduler(
        sigma_schedule=sigma_schedule, solver_order=order, solver_type=solver_type, prediction_type=prediction
    )
    uni = UnifiedScheduler.from_config(ref.config)
    opts = uni._sampler.opts
    assert uni.config.sampler == "dpmsolver++" and opts["algorithm_type"] == "sde-dpmsolver++"
    assert opts["noise"] == "brownian_tree" and uni.parameterization.config["c_noise"] == "atan"
    assert_lockstep(ref, uni, 8, f"Cosine {sigma_schedule} {order} {solver_type} {prediction}")
    # the Brownian draws do not come from the generator's stream: only its seed counts
    if order == 2 and solver_type == "midpoint":
        assert_noise_is_used(ref, uni, 8)


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde, on diffusers' queries below σ_min
def test_cosine_dpmsolver_multistep_other_ranges():
    pytest.importorskip("torchsde")
    for flags in (
        {"sigma_min": 0.05, "sigma_max": 100.0, "sigma_data": 0.5, "sigma_schedule": "karras", "rho": 5.0},
        {"sigma_data": 0.7, "lower_order_final": False},
    ):
        ref = CosineDPMSolverMultistepScheduler(**flags)
        uni = UnifiedScheduler.from_config(ref.config)
        assert_lockstep(ref, uni, 16, f"Cosine {flags}")
    # diffusers draws (and weighs by 0) noise on the last step too, querying the tree below σ_min; with this range
    # torchsde recurses without end there. The twin draws no noise where it weighs nothing, and finishes.
    uni = UnifiedScheduler.from_config(
        CosineDPMSolverMultistepScheduler(sigma_min=0.1, sigma_max=80.0, sigma_schedule="karras", rho=5.0).config
    )
    states, _, _ = trajectory(uni, 12)
    assert torch.isfinite(states[-1]).all()


def test_cosine_dpmsolver_multistep_refusals():
    assert "third-order" in refusal(CosineDPMSolverMultistepScheduler, solver_order=3)
    assert "final_sigmas_type" in refusal(CosineDPMSolverMultistepScheduler, final_sigmas_type="sigma_min")


def test_brownian_noise_needs_an_sde_form():
    with pytest.raises(ValueError, match="noise='brownian_tree' applies to the SDE forms only"):
        get_sampler("dpmsolver++")(NoiseSchedule.edm(), noise="brownian_tree")


# ============================================================================ SASolver
@pytest.mark.parametrize("predictor_order", [1, 2, 3])
@pytest.mark.parametrize("corrector_order", [1, 2, 3])
def test_sa_solver_per_step_parity(predictor_order, corrector_order):
    ref = SASolverScheduler(predictor_order=predictor_order, corrector_order=corrector_order)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "sa_solver"
    assert uni._sampler.opts["predictor_order"] == predictor_order
    assert uni._sampler.opts["corrector_order"] == corrector_order
    n = 12
    uni.set_timesteps(n)
    ref.set_timesteps(n)
    assert torch.equal(uni.timesteps, ref.timesteps)
    assert_lockstep(ref, uni, n, f"SA-Solver p={predictor_order} c={corrector_order}")
    if (predictor_order, corrector_order) == (2, 2):
        assert_noise_is_used(ref, uni, n)


@pytest.mark.parametrize(
    "flags, n",
    [
        ({"prediction_type": "v_prediction", "timestep_spacing": "leading", "steps_offset": 1}, 10),
        ({"prediction_type": "sample", "timestep_spacing": "trailing", "lower_order_final": False}, 10),
        ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "predictor_order": 3}, 25),
        ({"beta_schedule": "squaredcos_cap_v2", "corrector_order": 3, "lower_order_final": False}, 8),
        ({"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"}, 10),
        ({"num_train_timesteps": 500}, 10),  # τ's window moves with N: timesteps 200 … 800 of 500
    ],
    ids=["v-leading", "sample-trailing", "sd-p3-25", "cosine-c3", "thresholding", "N500"],
)
def test_sa_solver_flags(flags, n):
    ref = SASolverScheduler(**flags)
    uni = UnifiedScheduler.from_config(ref.config)
    assert_lockstep(ref, uni, n, f"SA-Solver {flags}")


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_sa_solver_tau_everywhere_matches_diffusers_tau_func(tau):
    """A constant τ on the whole grid: diffusers' tau_func = lambda t: τ against unisde's tau / tau_window."""
    ref = SASolverScheduler(tau_func=lambda t: tau)
    config = {k: v for k, v in SASolverScheduler().config.items() if k != "tau_func"}
    uni = UnifiedScheduler.from_config(
        config, sampler="sa_solver", sampler_options={"tau": tau, "tau_window": [0.0, 1.0]}
    )
    assert_lockstep(ref, uni, 10, f"SA-Solver τ = {tau}")


def test_sa_solver_img2img_entry():
    """Entered mid-grid (set_begin_index), both ramp the orders up again from there."""
    ref = SASolverScheduler(predictor_order=3, corrector_order=3)
    uni = UnifiedScheduler.from_config(ref.config)
    assert_lockstep(ref, uni, 12, "SA-Solver from step 4", begin=4)


@pytest.mark.parametrize(
    "flags, match",
    [
        ({"use_karras_sigmas": True}, "zero-length step"),
        ({"use_flow_sigmas": True}, "use_flow_sigmas=True with prediction_type='epsilon'"),
        ({"algorithm_type": "noise_prediction"}, "data-prediction form"),
        ({"tau_func": lambda t: 0.5}, "tau_window"),
        ({"variance_type": "learned_range"}, "learned variance"),
        ({"predictor_order": 4}, "predictor_order=4"),
    ],
    ids=["karras", "flow", "noise-prediction", "tau-func", "learned", "order-4"],
)
def test_sa_solver_refusals(flags, match):
    text = refusal(SASolverScheduler, **flags)
    assert match in text, text


MEASURED = [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 3, 3), (3, 2, 2), (3, 3, 3)]


def flow_error(sched, grid, options) -> float:
    """|x̃_end − exact PF-ODE flow| from x̃_0 = 1.3, exact Gaussian denoiser, float64; the grid ends at σ̃_end > 0."""
    dist = Gaussian(torch.full((1,), MU), torch.tensor(V0))
    smp = get_sampler("sa_solver")(sched, **options)
    times = smp.prepare(grid)
    t_list = [torch.tensor(float(t), dtype=torch.float64) for t in times]
    t0, t_end = float(grid[0]), float(grid[-1])
    start = torch.full((1, 1), 1.3 * float(sched.s(t0)), dtype=torch.float64)
    out = run_loop(smp, start, lambda x, k: dist.denoise(x, t_list[k], sched))
    ve0, ve_end = float(sched.ve_sigma(t0)), float(sched.ve_sigma(t_end))
    exact = MU + (1.3 - MU) * math.sqrt((V0 + ve_end**2) / (V0 + ve0**2))
    return abs(float(out) / float(sched.s(t_end)) - exact)


@pytest.mark.parametrize("case", ["vp-table/karras", "vp-linear/uniform_lambda"])
@pytest.mark.parametrize("predictor_order, corrector_order, expected", MEASURED)
def test_sa_solver_ode_converges_at_order_min_p_plus_1_q(case, predictor_order, corrector_order, expected):
    """τ = 0 (the PF-ODE): predictor order p with corrector order q converges at order min(p + 1, q), measured
    from 64 to 128 steps (the grid's last point is kept as the end, so no final step to σ = 0 masks it), with the
    twin's order-2 weights (``simple_order_2``; the exact ones: tests/test_samplers_seeds_heunpp2_pece.py)."""
    sched = NoiseSchedule.from_diffusers_config({}) if case.startswith("vp-table") else NoiseSchedule.vp_linear()
    kind = case.split("/")[1]
    options = {"predictor_order": predictor_order, "corrector_order": corrector_order, "tau": 0.0}
    options["simple_order_2"] = True
    errs = []
    for n in (32, 64, 128):
        g = make_grid(sched, n + 1, kind)
        errs.append(flow_error(sched, torch.cat([g[:-2], g[-2:-1]]), options))
    order = math.log2(errs[-2] / errs[-1])
    assert expected - 0.35 < order < expected + 0.9 and errs[-1] < errs[0], (errs, order)


def test_sa_solver_stochastic_data_law():
    """τ = 1 in diffusers' default window, 50 steps from the prior to clean data: 20000 draws of N(μ, v0) data come
    out with mean within 4 standard errors and variance within 4 standard errors plus 1.5 % (the discretisation)."""
    sched = NoiseSchedule.from_diffusers_config({})
    dist = Gaussian(torch.full((1,), MU), torch.tensor(V0))
    smp = get_sampler("sa_solver")(sched)
    grid = make_grid(sched, 50, "linspace_multistep")
    t_list = [torch.tensor(float(t), dtype=torch.float64) for t in smp.prepare(grid)]
    smp.generator = torch.Generator().manual_seed(0)
    m = 20000
    x = torch.randn(m, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    out = run_loop(smp, x, lambda x, k: dist.denoise(x, t_list[k], sched))
    assert abs(float(out.mean()) - MU) < 4 * math.sqrt(V0 / m)
    assert abs(float(out.var()) / V0 - 1) < 4 * math.sqrt(2 / m) + 0.015


# ============================================================================ CMStochasticIterative
@pytest.mark.parametrize(
    "flags, n",
    [
        ({}, 1),
        ({}, 2),
        ({}, 4),
        ({"clip_denoised": False}, 7),
        ({"num_train_timesteps": 151, "sigma_data": 1.0, "s_noise": 0.9, "rho": 5.0}, 10),
        ({"sigma_min": 0.01, "sigma_max": 40.0, "clip_denoised": False}, 40),
    ],
    ids=["1", "2", "4", "noclip-7", "N151", "range-all"],
)
def test_cm_stochastic_iterative_per_step_parity(flags, n):
    ref = CMStochasticIterativeScheduler(**flags)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "cm_stochastic" and uni.parameterization.name == "cm"
    assert uni.init_noise_sigma == pytest.approx(ref.init_noise_sigma)
    assert_lockstep(ref, uni, n, f"CM {flags} n={n}", timestep_atol=1e-4)
    if n > 1:
        assert_noise_is_used(ref, uni, n)


def test_cm_stochastic_iterative_custom_timesteps():
    """ConsistencyModelPipeline(timesteps=[22, 0]): indices of the training discretisation, not model timesteps."""
    ref = CMStochasticIterativeScheduler()
    uni = UnifiedScheduler.from_config(ref.config)
    assert_lockstep(ref, uni, None, "CM timesteps [22, 0]", timestep_atol=1e-4, timesteps=[22, 0])
    with pytest.raises(ValueError, match="descending"):
        uni.set_timesteps(timesteps=[0, 22])


def test_cm_stochastic_one_step_returns_the_consistency_function():
    """n = 1: x = D(z σ_max) with the boundary-condition scalings, no noise drawn; at σ̃ = ε the network is skipped."""
    ref = CMStochasticIterativeScheduler(clip_denoised=False)
    uni = UnifiedScheduler.from_config(ref.config)
    uni.set_timesteps(1)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * uni.init_noise_sigma
    t = uni.timesteps[0]
    gen = torch.Generator().manual_seed(5)
    out = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    sd, eps, sigma = 0.5, 0.002, 80.0
    c_skip, c_out = sd**2 / ((sigma - eps) ** 2 + sd**2), (sigma - eps) * sd / math.sqrt(sigma**2 + sd**2)
    expected = c_skip * x + c_out * model(x / math.sqrt(sigma**2 + sd**2), t)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())
    param = unisde.get_parameterization("cm", sigma_data=0.5, sigma_min=0.002)
    a, b = param.coefficients(uni.noise_schedule, torch.tensor(0.0, dtype=torch.float64))
    assert float(a) == pytest.approx(1.0) and abs(float(b)) < 1e-12
