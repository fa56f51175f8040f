r"""Singlestep DPM-Solver(++), LCM, TCD and inversion (issue 11): live per-step parity with diffusers'
DPMSolverSinglestepScheduler, LCMScheduler, TCDScheduler and DDIMInverseScheduler through the converted config
(``UnifiedScheduler.from_config``), convergence orders 1–3 of the singlestep solver on the exact Gaussian
PF-ODE, the ``lcm`` grid against diffusers' timestep selection, and encode → decode round trips whose error
falls with the number of steps."""

from __future__ import annotations

import inspect
import logging
import math
import warnings

import diffusers
import numpy as np
import pytest
import torch

import unisde
from unisde import NoiseSchedule
from unisde.analytic import Gaussian
from unisde.grids import append_final, make_grid
from unisde.grids.lcm import lcm_indices
from unisde.sampling import run_loop
from unisde.scheduler import UnifiedScheduler

PREDICTIONS = ("epsilon", "v_prediction", "sample")
TOL = 1e-5  # × the trajectory's max |x|, float32


@pytest.fixture(autouse=True)
def quiet_diffusers():
    """diffusers warns (and deprecates ``dpmsolver``) on several of the configs below; the warnings are expected."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logger.setLevel(level)


def model(x, t):
    """A smooth stand-in network depending on (x, t)."""
    return x * (0.8 + 1e-4 * float(t)) + 0.05 * torch.sin(3 * x)


def parity(ref, uni, n, *, net=model, seed=5, start=None, step_kwargs=None, float64=False):
    """Run both schedulers from the same sample with the same model and generator seed; return the largest
    per-step |difference| over the trajectory's max |x| (and check the timesteps agree). ``float64``: float64
    samples, and diffusers' σ's cast to float64 so that it computes its coefficients in float64 too."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    if float64:
        ref.sigmas = ref.sigmas.to(torch.float64)
    assert torch.equal(uni.timesteps, ref.timesteps), (uni.timesteps, ref.timesteps)
    if start is not None:
        ref.set_begin_index(start)
        uni.set_begin_index(start)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64 if float64 else None)
    y = x.clone()
    takes_generator = "generator" in inspect.signature(ref.step).parameters
    g_ref, g_uni = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    extra = dict(step_kwargs or {})
    worst, scale = 0.0, float(x.abs().max())
    for t_ref, t_uni in list(zip(ref.timesteps, uni.timesteps))[start or 0 :]:
        kw_ref = {**extra, **({"generator": g_ref} if takes_generator else {})}
        kw_uni = {**extra, **({"generator": g_uni} if takes_generator else {})}
        x = ref.step(net(x, t_ref), t_ref, x, **kw_ref).prev_sample
        y = uni.step(net(y, t_uni), t_uni, y, **kw_uni).prev_sample
        scale = max(scale, float(x.abs().max()))
        worst = max(worst, float((x - y).abs().max()))
    return worst / scale


# ---------------------------------------------------------------------------------------------- singlestep
SINGLESTEP_CASES = [
    (order, solver_type, algorithm)
    for order in (1, 2, 3)
    for solver_type in ("midpoint", "heun")
    for algorithm in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")
    if not (algorithm == "sde-dpmsolver++" and solver_type == "heun" and order == 3)
    and not (order == 1 and solver_type == "heun")
]  # order 1 has a single form


@pytest.mark.parametrize("order, solver_type, algorithm", SINGLESTEP_CASES)
def test_singlestep_live_parity_over_orders_predictions_and_steps(order, solver_type, algorithm):
    """A fresh DPMSolverSinglestepScheduler per run (its set_timesteps rewrites lower_order_final in its own config
    after an odd n); every prediction type, even and odd step counts, with and without lower_order_final.

    ``dpmsolver`` (noise prediction) steps from t = 999 with x weight s_{t'}/s_999 up to ≈ 40: float32 rounding
    is amplified alike in both implementations (each ≈ 1e-4 × scale from a float64 run at order 3), so that
    variant is compared in float64 (samples and diffusers' σ's), where the two agree to ≈ 3e-7."""
    for prediction in PREDICTIONS:
        for n, lower_order_final in ((6, False), (7, False), (10, True), (12, False)):
            kw = dict(
                solver_order=order,
                solver_type=solver_type,
                algorithm_type=algorithm,
                prediction_type=prediction,
                lower_order_final=lower_order_final,
            )
            if algorithm == "dpmsolver":
                kw["final_sigmas_type"] = "sigma_min"  # diffusers refuses dpmsolver with a final σ = 0
            ref = diffusers.DPMSolverSinglestepScheduler(**kw)
            uni = UnifiedScheduler.from_config(ref)
            assert uni.config.sampler == "dpmsolver_singlestep"
            err = parity(ref, uni, n, float64=algorithm == "dpmsolver")
            assert err <= TOL, (kw, n, err)


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"},
        {"beta_schedule": "squaredcos_cap_v2", "final_sigmas_type": "sigma_min", "solver_order": 3},
        {"thresholding": True, "solver_order": 3, "solver_type": "heun", "prediction_type": "sample"},
    ],
    ids=["scaled-v", "cosine-sigma_min", "thresholding"],
)
def test_singlestep_parity_on_other_tables_and_flags(config):
    ref = diffusers.DPMSolverSinglestepScheduler(**config)
    uni = UnifiedScheduler.from_config(ref)
    assert parity(ref, uni, 9) <= TOL


@pytest.mark.parametrize("flag", ["use_karras_sigmas", "use_exponential_sigmas"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_singlestep_parity_on_karras_and_exponential_sigmas(flag, order):
    """diffusers feeds the model rounded (Karras) or truncated (exponential) timesteps but steps with the exact σ's;
    unisde's grids visit those very σ's and feed diffusers' own timesteps (its float32 log-table index, rounded or
    truncated), so the two trajectories agree step by step on a model that reads its timestep."""
    ref = diffusers.DPMSolverSinglestepScheduler(solver_order=order, **{flag: True})
    uni = UnifiedScheduler.from_config(ref)
    ref.set_timesteps(9)
    uni.set_timesteps(9)
    assert torch.allclose(uni.sigmas, ref.sigmas, rtol=1e-6, atol=0)
    assert torch.equal(uni.timesteps, ref.timesteps)
    assert parity(ref, uni, 9) <= TOL


@pytest.mark.parametrize("order, start", [(2, 1), (3, 1), (3, 2), (3, 4)])
def test_singlestep_entry_mid_grid_shortens_the_group_as_diffusers(order, start):
    """img2img pipelines call set_begin_index: entering inside a group makes its remaining evaluations a shorter
    singlestep step from the entry sample, in diffusers and here."""
    ref = diffusers.DPMSolverSinglestepScheduler(solver_order=order)
    uni = UnifiedScheduler.from_config(ref)
    assert parity(ref, uni, 12, start=start) <= TOL


def test_singlestep_refuses_the_third_order_sde_heun_slip_and_unhonoured_flags():
    ref = diffusers.DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver++", solver_type="heun", solver_order=3)
    with pytest.raises(ValueError, match="DPMSolverSinglestepScheduler.*sde-dpmsolver\\+\\+.*heun"):
        UnifiedScheduler.from_config(ref.config)
    chosen = UnifiedScheduler.from_config(ref.config, sampler="dpmsolver_singlestep")
    assert chosen.config.sampler == "dpmsolver_singlestep"
    for flags in ({"lambda_min_clipped": -5.1}, {"variance_type": "learned_range"}):
        ref = diffusers.DPMSolverSinglestepScheduler(**flags)
        key, value = next(iter(flags.items()))
        with pytest.raises(ValueError) as info:
            UnifiedScheduler.from_config(ref.config)
        assert "DPMSolverSinglestepScheduler" in str(info.value) and key in str(info.value)


MU, V0 = 0.5, 0.25


def _exact_flow(sched, t_from, t_to, x):
    """PF-ODE flow of N(μ, v0) (VE view: x̃ − μ scales by √((v0 + σ̃²)/(v0 + σ̃_0²)))."""
    ve0, ve1 = float(sched.ve_sigma(t_from)), float(sched.ve_sigma(t_to))
    return (MU + (x / float(sched.s(t_from)) - MU) * math.sqrt((V0 + ve1**2) / (V0 + ve0**2))) * float(sched.s(t_to))


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_singlestep_convergence_order_on_the_exact_gaussian_pf_ode(order, solver_type, algorithm):
    """unisde.sample with the exact Gaussian denoiser in float64 on λ-uniform grids of the closed-form VP schedule:
    the error against the exact flow to the last evaluation time (followed by the final step's x = D) falls like
    NFE^−order (log-log slope over 12 … 96 evaluations)."""
    sched = NoiseSchedule.vp_linear()
    dist = Gaussian(torch.tensor([MU]), torch.tensor(V0))
    noise = torch.linspace(-2, 2, 9, dtype=torch.float64).reshape(9, 1)
    steps, errors = (12, 24, 48, 96), []
    for n in steps:
        out = unisde.sample(
            None,
            noise.clone(),
            schedule=sched,
            sampler="dpmsolver_singlestep",
            num_inference_steps=n,
            time_grid="uniform_lambda",
            denoiser=lambda x, t: dist.denoise(x, t, sched),
            sampler_options={"solver_order": order, "solver_type": solver_type, "algorithm_type": algorithm},
        )
        t_last = float(make_grid(sched, n, "uniform_lambda")[-2])
        reference = dist.denoise(_exact_flow(sched, 1.0, t_last, noise), t_last, sched)
        errors.append(float((out - reference).abs().max()))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert order - 0.25 <= slope <= order + 0.6, (errors, slope)


# ---------------------------------------------------------------------------------------------- LCM / TCD
@pytest.mark.parametrize(
    "n, original_inference_steps, strength",
    [
        (1, 50, 1.0),
        (4, 50, 1.0),
        (8, 50, 1.0),
        (50, 50, 1.0),
        (7, 40, 1.0),
        (3, 50, 0.5),
        (4, 1000, 1.0),
        (13, 30, 0.7),
    ],
)
def test_lcm_grid_is_diffusers_timestep_selection(n, original_inference_steps, strength):
    ref = diffusers.LCMScheduler(original_inference_steps=original_inference_steps)
    ref.set_timesteps(n, strength=strength)
    assert lcm_indices(1000, n, original_inference_steps, strength).tolist() == ref.timesteps.tolist()
    sched = NoiseSchedule.from_diffusers_config({})
    times = make_grid(sched, n, "lcm", original_inference_steps=original_inference_steps, strength=strength)
    assert torch.equal(sched.timestep(times[:-1]).round().to(torch.int64), ref.timesteps) and float(times[-1]) == 0.0
    # TCD's set_timesteps(original_inference_steps=...) selects from every training index: option None
    tcd = diffusers.TCDScheduler()
    tcd.set_timesteps(n, original_inference_steps=max(n, 2), strength=strength)
    assert lcm_indices(1000, n, None, strength).tolist() == tcd.timesteps.tolist()


def test_lcm_grid_errors_name_the_problem():
    sched = NoiseSchedule.from_diffusers_config({})
    with pytest.raises(ValueError, match="num_inference_steps=60 exceeds original_inference_steps=50"):
        make_grid(sched, 60, "lcm")
    with pytest.raises(ValueError, match="strength"):
        make_grid(sched, 10, "lcm", strength=0.1)
    with pytest.raises(ValueError, match="strength"):
        make_grid(sched, 4, "lcm", strength=0.0)
    assert "lcm" in unisde.grids.list_grids()


LCM_CONFIGS = [
    {},
    {"timestep_scaling": 3.0, "original_inference_steps": 40},
    {"clip_sample": True},
    {"thresholding": True},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("config", LCM_CONFIGS, ids=["default", "scaling-orig40", "clip", "threshold", "linear"])
def test_lcm_live_parity(prediction, config):
    """Same generator seed → same re-noising draws; the boundary condition after clipping/thresholding, as
    diffusers applies it; the consistency function f matches diffusers' ``denoised`` output at every step."""
    for n in (1, 2, 4, 8):
        ref = diffusers.LCMScheduler(prediction_type=prediction, **config)
        uni = UnifiedScheduler.from_config(ref)
        assert uni.config.sampler == "lcm" and uni._grid_kind() == "lcm"
        assert parity(ref, uni, n) <= TOL, n
    ref.set_timesteps(4)
    uni.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y, g_ref, g_uni = x.clone(), torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        x, denoised = ref.step(model(x, t), t, x, generator=g_ref, return_dict=False)
        y = uni.step(model(y, t), t, y, generator=g_uni).prev_sample
        f = uni._sampler.output_denoised
        assert float((f - denoised).abs().max()) <= TOL * float(denoised.abs().max())


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [None, 0.0, 0.3, 0.7, 1.0])
def test_tcd_live_parity(prediction, eta):
    """γ from the pipeline's ``eta`` (TCDScheduler.step's default 0.3 when none is passed); the same generator seed
    draws the same forward noise; the last step ends at the first training index as diffusers' does."""
    for n, config in ((1, {}), (4, {}), (8, {"clip_sample": True}), (6, {"original_inference_steps": 30})):
        ref = diffusers.TCDScheduler(prediction_type=prediction, **config)
        uni = UnifiedScheduler.from_config(ref)
        assert uni.config.sampler == "tcd" and uni._grid_kind() == "lcm"
        err = parity(ref, uni, n, step_kwargs={} if eta is None else {"eta": eta})
        assert err <= TOL, (n, config, err)


def test_lcm_and_tcd_convert_from_their_default_configs():
    for cls, name in (
        (diffusers.LCMScheduler, "lcm"),
        (diffusers.TCDScheduler, "tcd"),
        (diffusers.DPMSolverSinglestepScheduler, "dpmsolver_singlestep"),
        (diffusers.DDIMInverseScheduler, "ddim_inverse"),
    ):
        ref = cls()  # alive: LCM and TCD share every config key, so a live config is traced to its owner
        assert UnifiedScheduler.from_config(ref.config).config.sampler == name
        assert UnifiedScheduler.from_config(ref).config.sampler == name
        assert UnifiedScheduler.from_config({**ref.config, "_class_name": cls.__name__}).config.sampler == name


def test_tcds_final_step_on_the_table_is_a_quirk_of_the_twin_only():
    """diffusers' TCD ends at the table's first index instead of the data: the twin keeps it, and so does
    sampler='tcd' with no other options; TCD with another γ, or another sampler, ends on the data."""
    ref = diffusers.TCDScheduler()
    assert UnifiedScheduler.from_config(ref).sampler_options == {"diffusers_final_step": True}
    assert UnifiedScheduler.from_config(ref, sampler="tcd").sampler_options == {"diffusers_final_step": True}
    other = UnifiedScheduler.from_config(ref, sampler="tcd", sampler_options={"eta": 0.5})
    assert other.sampler_options == {"eta": 0.5}
    other.set_timesteps(4)
    assert other._sampler.grid[-1] == 0.0


def test_lcm_runs_any_model_and_tcd_gamma_zero_is_ddim():
    """Samplers see only x̂0: LCM (without its boundary condition) on a Gaussian's exact denoiser is a linear
    Gaussian chain x_{k+1} = s_{k+1} D(x_k) + σ_{k+1} z whose final law is known exactly (mean and variance by
    recursion): Monte-Carlo mean and variance within 5 standard errors. TCD with γ = 0 is deterministic DDIM."""
    sched = NoiseSchedule.from_diffusers_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    )
    dist = Gaussian(torch.full((2,), MU), torch.tensor(V0))
    noise = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = unisde.sample(
        None,
        noise,
        schedule=sched,
        sampler="lcm",
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(1),
        sampler_options={"boundary_condition": False},
        denoiser=lambda x, t: dist.denoise(x, t, sched),
    )
    times = make_grid(sched, 4, "lcm")
    mean, var = 0.0, 1.0  # the start: noise · √(s² + σ²) = noise on a VP table
    for k in range(4):
        s, sigma = float(sched.s(times[k])), float(sched.sigma(times[k]))
        gain = s * V0 / (s * s * V0 + sigma * sigma)  # D(x) = μ + gain (x − s μ)
        mean, var = MU + gain * (mean - s * MU), gain * gain * var
        if k < 3:
            s_next, sigma_next = float(sched.s(times[k + 1])), float(sched.sigma(times[k + 1]))
            mean, var = s_next * mean, s_next**2 * var + sigma_next**2
    count = out.numel()
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(var / count)
    assert abs(float(out.var()) - var) < 5 * var * math.sqrt(2 / count)
    kwargs = dict(
        schedule=sched, num_inference_steps=6, time_grid="lcm", denoiser=lambda x, t: dist.denoise(x, t, sched)
    )
    tcd = unisde.sample(None, noise[:8], sampler="tcd", sampler_options={"eta": 0.0}, **kwargs)
    ddim = unisde.sample(None, noise[:8], sampler="ddim", **kwargs)
    torch.testing.assert_close(tcd, ddim, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- inversion
INVERSE_CONFIGS = [
    {},
    {"clip_sample": False},
    {"set_alpha_to_one": False},
    {"timestep_spacing": "trailing"},
    {"steps_offset": 1},
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    },
]


@pytest.mark.parametrize("config", INVERSE_CONFIGS, ids=["default", "noclip", "alpha0", "trailing", "offset", "sd"])
def test_ddim_inverse_live_parity(config):
    """DDIMInverseScheduler, ε-prediction: its increasing timesteps, its clipping of x̂0 at the source time, its
    set_alpha_to_one start and its source index τ − ⌊N/n⌋ (n = 3 with trailing spacing: not the previous timestep)."""
    for n in (1, 3, 10, 50):
        ref = diffusers.DDIMInverseScheduler(**config)
        uni = UnifiedScheduler.from_config(ref)
        assert uni.config.sampler == "ddim_inverse"
        assert parity(ref, uni, n) <= TOL, n


def test_ddim_inverse_refuses_what_it_cannot_reproduce_and_sampler_takes_over():
    ref = diffusers.DDIMInverseScheduler(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="DDIMInverseScheduler flag prediction_type='v_prediction'.*sampler="):
        UnifiedScheduler.from_config(ref.config)
    uni = UnifiedScheduler.from_config(ref.config, sampler="ddim_inverse")
    assert uni.config.sampler == "ddim_inverse" and uni.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="timestep_spacing"):
        UnifiedScheduler.from_config(
            {
                **diffusers.DDIMInverseScheduler().config,
                "timestep_spacing": "linspace",
                "_class_name": "DDIMInverseScheduler",
            }
        )


def _drive(smp, grid, x, dist, sched):
    times = smp.prepare(grid).tolist()
    return run_loop(smp, x, lambda x, k: dist.denoise(x, times[k], sched))


@pytest.mark.parametrize(
    "name, options, min_ratio",
    [
        ("ddim", {}, 1.7),
        ("dpmsolver_singlestep", {"solver_order": 2}, 3.5),
        ("dpmsolver_singlestep", {"solver_order": 3, "solver_type": "heun"}, 3.5),
        ("edm", {}, 3.5),
    ],
)
def test_encode_then_decode_round_trip_error_falls_with_steps(name, options, min_ratio):
    """PF-ODE encoding with ``inverse`` (the sampler run upwards on the reversed grid), then decoding with the same
    sampler on the same grid, returns the input within the solver's error: it falls by ≥ min_ratio per doubling."""
    sched = NoiseSchedule.vp_linear()
    dist = Gaussian(torch.tensor([MU, -0.3]), torch.tensor(V0))
    data = torch.tensor([[0.1, 0.2], [0.9, -0.7], [0.5, 0.5]], dtype=torch.float64)
    errors = []
    for n in (12, 24, 48):
        times = make_grid(sched, n + 1, "uniform_lambda")[:-1]
        grid = append_final(times[:-1], float(times[-1]))  # n steps from t = 1 down to t_min > 0
        latent = _drive(
            unisde.get_sampler("inverse")(sched, invert=name, invert_options=options), grid, data.clone(), dist, sched
        )
        back = _drive(unisde.get_sampler(name)(sched, **options), grid, latent, dist, sched)
        errors.append(float((back - data).abs().max()))
    assert errors[-1] < 0.1 and all(a >= min_ratio * b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize(
    "name, options, min_ratio", [("ddim", {}, 1.7), ("dpmsolver_singlestep", {"solver_order": 2}, 3.5)]
)
def test_round_trip_from_the_data_itself(name, options, min_ratio):
    """On a grid ending at t = 0 the encoding starts on the data: its first step is the DDIM-inversion step (model
    evaluated at t_{n−1}), then the sampler itself; n evaluations, like the forward pass. Through UnifiedScheduler
    the same loop runs on increasing timesteps and gives the same latent."""
    sched = NoiseSchedule.vp_linear()
    dist = Gaussian(torch.tensor([MU, -0.3]), torch.tensor(V0))
    data = torch.tensor([[0.1, 0.2], [0.9, -0.7], [0.5, 0.5]], dtype=torch.float64)
    errors = []
    for n in (12, 24, 48):
        grid = make_grid(sched, n, "uniform_lambda")
        encoder = unisde.get_sampler("inverse")(sched, invert=name, invert_options=options)
        latent = _drive(encoder, grid, data.clone(), dist, sched)
        assert len(encoder.prepare(grid)) == n
        back = _drive(unisde.get_sampler(name)(sched, **options), grid, latent, dist, sched)
        errors.append(float((back - data).abs().max()))
    assert errors[-1] < 0.1 and all(a >= min_ratio * b for a, b in zip(errors, errors[1:])), errors
    uni = UnifiedScheduler(
        sampler="inverse",
        sampler_options={"invert": name, "invert_options": options},
        schedule="vp-linear",
        prediction_type="v_prediction",
        time_grid="uniform_lambda",
    )
    uni.set_timesteps(12)
    assert len(uni.timesteps) == 12 and torch.all(uni.timesteps[1:] >= uni.timesteps[:-1])
    v_model = dist.as_model("v_prediction", uni.noise_schedule)
    x = data.clone()
    for t in uni.timesteps:
        x = uni.step(v_model(x, t), t, x).prev_sample
    direct = _drive(
        unisde.get_sampler("inverse")(sched, invert=name, invert_options=options),
        make_grid(sched, 12, "uniform_lambda"),
        data.clone(),
        dist,
        sched,
    )
    torch.testing.assert_close(x, direct, rtol=1e-7, atol=1e-7)


def test_ddim_inverse_then_ddim_round_trip_and_driver():
    """DDIM inversion from the data itself (t = 0), then DDIM back on the same grid: the error halves per doubling
    (first order). Through UnifiedScheduler the inverse runs the same loop (increasing timesteps)."""
    sched = NoiseSchedule.from_diffusers_config({})
    dist = Gaussian(torch.tensor([MU, -0.3]), torch.tensor(V0))
    data = torch.tensor([[0.1, 0.2], [0.9, -0.7]], dtype=torch.float64)
    errors = []
    for n in (25, 50, 100):
        grid = make_grid(sched, n, "leading")
        latent = _drive(unisde.get_sampler("ddim_inverse")(sched), grid, data.clone(), dist, sched)
        errors.append(float((_drive(unisde.get_sampler("ddim")(sched), grid, latent, dist, sched) - data).abs().max()))
    assert errors[-1] < 0.05 and all(a >= 1.7 * b for a, b in zip(errors, errors[1:])), errors
    uni = UnifiedScheduler(sampler="ddim_inverse")
    uni.set_timesteps(10)
    assert torch.all(uni.timesteps[1:] > uni.timesteps[:-1])
    eps_model = dist.as_model("epsilon", uni.noise_schedule)
    x = data.to(torch.float64)
    for t in uni.timesteps:
        x = uni.step(eps_model(x, t), t, x).prev_sample
    direct = _drive(
        unisde.get_sampler("ddim_inverse")(sched), make_grid(sched, 10, "leading"), data.clone(), dist, sched
    )
    torch.testing.assert_close(x, direct, rtol=1e-9, atol=1e-9)


def test_inverse_refuses_stochastic_samplers_and_itself():
    sched = NoiseSchedule.vp_linear()
    smp = unisde.get_sampler("inverse")(sched, invert="ddim", invert_options={"eta": 1.0})
    dist = Gaussian(torch.tensor([MU]), torch.tensor(V0))
    with pytest.raises(ValueError, match="stochastic sampler has no inverse"):
        _drive(smp, make_grid(sched, 5, "uniform_lambda"), torch.zeros(2, 1, dtype=torch.float64), dist, sched)
    with pytest.raises(ValueError, match="cannot invert"):
        unisde.get_sampler("inverse")(sched, invert="ddim_inverse")
