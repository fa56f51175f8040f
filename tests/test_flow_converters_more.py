"""Flow matching end to end, the converters: FlowMatch Euler's stochastic sampling, FlowMatchLCM,
LTXEulerAncestralRF, and UniPC / DPM-Solver multistep with ``use_flow_sigmas`` (Wan 2.1's UniPC) — each at live parity
with its diffusers class (timesteps, sigmas and samples, the same generator for the stochastic ones), plus the
refusals for the flag combinations unisde does not reproduce."""

from __future__ import annotations

import inspect

import diffusers
import numpy as np
import pytest
import torch

import unisde
from unisde.diffusers.converters import ConversionError
from unisde.scheduler import UnifiedScheduler

SHAPE = (2, 3, 4, 4)

# Wan 2.1's scheduler config (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, scheduler/scheduler_config.json), written out here.
WAN_UNIPC = dict(
    beta_end=0.02,
    beta_schedule="linear",
    beta_start=0.0001,
    disable_corrector=[],
    dynamic_thresholding_ratio=0.995,
    final_sigmas_type="zero",
    flow_shift=3.0,
    lower_order_final=True,
    num_train_timesteps=1000,
    predict_x0=True,
    prediction_type="flow_prediction",
    rescale_betas_zero_snr=False,
    sample_max_value=1.0,
    solver_order=2,
    solver_p=None,
    solver_type="bh2",
    steps_offset=0,
    thresholding=False,
    timestep_spacing="linspace",
    trained_betas=None,
    use_beta_sigmas=False,
    use_exponential_sigmas=False,
    use_flow_sigmas=True,
    use_karras_sigmas=False,
)


def model(x, t):
    """A smooth stand-in network (a fixed function of (x, t))."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1)[0]
    return 0.6 * x + 0.05 * torch.sin(3 * x + t / 1000.0)


def run(sched, x, n, seed=0, **call):
    """A pipeline's loop: set_timesteps, start from z · init_noise_sigma (1 for classes without it), step with a
    seeded generator where the class takes one."""
    sched.set_timesteps(n, **call)
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    extra = {"generator": torch.Generator().manual_seed(seed)} if takes_generator else {}
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, **extra).prev_sample
    return x


def assert_parity(ref, uni, n, **call):
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    expected, got = run(ref, x.clone(), n, **call), run(uni, x.clone(), n, **call)
    assert uni.timesteps.dtype == ref.timesteps.dtype
    torch.testing.assert_close(uni.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(uni.sigmas, ref.sigmas, rtol=0, atol=0)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-5 * scale, float((got - expected).abs().max() / scale)
    return expected


# ---------------------------------------------------------------------------------------------- FlowMatch Euler
@pytest.mark.parametrize(
    "config, call",
    [
        ({}, {}),
        ({"shift": 3.0}, {}),
        ({"use_dynamic_shifting": True}, {"mu": 0.8}),
        ({"shift": 3.0, "shift_terminal": 0.1}, {}),
    ],
)
@pytest.mark.parametrize("n", [1, 4, 12])
def test_flowmatch_euler_stochastic_sampling_parity(config, call, n):
    """x′ = (1 − σ′) x̂0 + σ′ z with the step's generator: lcm without its boundary condition."""
    if n == 1 and config.get("shift_terminal"):
        return  # diffusers divides 0 by 0 there (tests/test_flow_conversion.py checks unisde's refusal)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True, **config)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "lcm" and uni.sampler_options["boundary_condition"] is False
    assert_parity(ref, uni, n, **call)


def test_stochastic_sampling_draws_noise_and_converts_back():
    ref = diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    uni = UnifiedScheduler.from_config(ref)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(run(uni, x.clone(), 4, seed=0), run(uni, x.clone(), 4, seed=1))
    # another sampler on a stochastic config: the flag is a solver flag, the schedule and grid stay
    other = UnifiedScheduler.from_config(ref, sampler="ddim")
    assert other.config.sampler == "ddim" and other._grid_kind() == "flow_match"


# ---------------------------------------------------------------------------------------------- FlowMatchLCM
@pytest.mark.parametrize(
    "config, call",
    [
        ({}, {}),
        ({"shift": 3.0}, {}),
        ({"use_dynamic_shifting": True, "shift_terminal": 0.1}, {"mu": 0.7}),
        ({"use_karras_sigmas": True, "shift": 2.0}, {}),
    ],
)
@pytest.mark.parametrize("n", [1, 4, 8])
def test_flowmatch_lcm_parity(config, call, n):
    if n == 1 and config.get("shift_terminal"):
        return
    ref = diffusers.FlowMatchLCMScheduler(**config)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "lcm" and uni.config.time_grid == "flow_match"
    assert_parity(ref, uni, n, **call)


def test_flowmatch_lcm_scale_factors_refused():
    ref = diffusers.FlowMatchLCMScheduler(scale_factors=[1.5, 2.0], upscale_mode="bicubic")
    with pytest.raises(ConversionError, match="FlowMatchLCMScheduler flag scale_factors"):
        UnifiedScheduler.from_config(ref)


# ---------------------------------------------------------------------------------------------- LTX Euler ancestral RF
@pytest.mark.parametrize(
    "config", [{}, {"eta": 0.5}, {"eta": 0.5, "s_noise": 0.8}, {"eta": 0.0}, {"eta": 0.0, "s_noise": 0.0}]
)
@pytest.mark.parametrize("n", [1, 4, 12])
def test_ltx_euler_ancestral_rf_parity(config, n):
    ref = diffusers.LTXEulerAncestralRFScheduler(**config)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "ddim" and uni.sampler_options["ancestral"] == "rf"
    assert_parity(ref, uni, n)


def test_ltx_rf_refusals():
    with pytest.raises(ConversionError, match="eta=1.5"):
        UnifiedScheduler.from_config(diffusers.LTXEulerAncestralRFScheduler(eta=1.5))
    with pytest.raises(ConversionError, match="s_noise=0.0"):  # diffusers then stays at the down-step level
        UnifiedScheduler.from_config(diffusers.LTXEulerAncestralRFScheduler(s_noise=0.0))
    with pytest.raises(ConversionError, match="invert_sigmas=True"):  # a FlowMatch key its grid path reads
        UnifiedScheduler.from_config({"_class_name": "LTXEulerAncestralRFScheduler", "invert_sigmas": True})
    uni = UnifiedScheduler.from_config(diffusers.LTXEulerAncestralRFScheduler())
    for call, match in [
        (dict(sigmas=[1.0, 0.5, 0.0], mu=0.8), "mu=0.8"),  # the levels are used unshifted
        (dict(sigmas=[1.0, 0.5, 0.0], num_inference_steps=3), "num_inference_steps=3"),
        (dict(sigmas=[1.0]), "at least two"),
        (dict(sigmas=[1.0, 0.5, 0.5, 0.0]), "decrease strictly"),
        (dict(timesteps=[1000.0, 500.0, 0.0]), "decrease strictly within"),  # an alias of sigmas: levels in [0, 1]
    ]:
        with pytest.raises(ValueError, match=match):
            uni.set_timesteps(**call)


def assert_stepwise_parity(ref, uni, **call):
    """Both loops stepped side by side from one start with the same model and generator seed: equal timesteps,
    sigmas and num_inference_steps, and every step's sample within 1e-5 of its scale. Returns the worst ratio."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    for sched in (ref, uni):
        sched.set_timesteps(**call)
    torch.testing.assert_close(uni.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(uni.sigmas, ref.sigmas, rtol=0, atol=0)
    assert uni.num_inference_steps == ref.num_inference_steps
    generators = [torch.Generator().manual_seed(0) for _ in range(2)]
    takes_generator = "generator" in inspect.signature(ref.step).parameters
    expected, got, worst = x.clone(), x.clone(), 0.0
    for t in ref.timesteps:
        extra = [{"generator": g} if takes_generator else {} for g in generators]
        expected = ref.step(model(expected, t), t, expected, **extra[0]).prev_sample
        got = uni.step(model(got, t), t, got, **extra[1]).prev_sample
        worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
    assert worst <= 1e-5, worst
    return worst


@pytest.mark.parametrize("config", [{}, {"eta": 0.5, "s_noise": 0.8}, {"eta": 0.0}])
@pytest.mark.parametrize(
    "call",
    [
        {"sigmas": [1.0, 0.6, 0.3, 0.0]},
        {"sigmas": torch.tensor([1.0, 0.85, 0.5, 0.25, 0.1, 0.0])},
        {"timesteps": [1.0, 0.5, 0.0]},  # an alias of sigmas
        {"sigmas": [1.0, 0.7, 0.2]},  # ending above 0: the last level is where sampling stops
        {"sigmas": [1.0, 0.0]},
        {"sigmas": [1.0, 0.5, 0.0], "num_inference_steps": 2},  # consistent with the levels: taken
    ],
)
def test_ltx_rf_comfy_sigmas_parity(config, call):
    """LTXEulerAncestralRF's ComfyUI path: the levels as given, the last the end point, also listed as a timestep
    whose step keeps the sample (no sampler sees that zero-length step)."""
    ref = diffusers.LTXEulerAncestralRFScheduler(**config)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sigmas_convention == "flow_levels"
    assert_stepwise_parity(ref, uni, **call)
    assert len(uni.timesteps) == len(uni.sigmas) == len(call.get("sigmas", call.get("timesteps")))


@pytest.mark.parametrize(
    "flowmatch, call",
    [
        ({"shift": 3.0, "shift_terminal": 0.1}, {"num_inference_steps": 5}),
        ({"use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05, "shift_terminal": 0.1}, {"mu": 1.3}),
        ({"shift": 2.0, "use_karras_sigmas": True}, {"num_inference_steps": 4}),
    ],
)
def test_ltx_rf_made_from_a_flowmatch_config_keeps_its_grid(flowmatch, call):
    """LTXEulerAncestralRF.from_config(flowmatch.config) (as diffusers suggests for LTX pipelines) builds its
    num_inference_steps grid with FlowMatch Euler from that config: shift, μ, shift_terminal and Karras σ count."""
    ref = diffusers.LTXEulerAncestralRFScheduler.from_config(
        diffusers.FlowMatchEulerDiscreteScheduler(**flowmatch).config
    )
    uni = UnifiedScheduler.from_config(ref)
    assert_stepwise_parity(ref, uni, **{"num_inference_steps": 4, **call})


@pytest.mark.parametrize("cls", ["FlowMatchEulerDiscreteScheduler", "FlowMatchLCMScheduler"])
@pytest.mark.parametrize(
    "config, call",
    [
        ({"shift": 3.0}, {"sigmas": [1.0, 0.6, 0.3, 0.0]}),  # a terminal 0: evaluated there, a zero-length step
        ({"use_dynamic_shifting": True}, {"sigmas": [1.0, 0.6, 0.3, 0.0], "mu": 1.2}),
        ({"shift": 3.0, "shift_terminal": 0.1}, {"sigmas": [1.0, 0.6, 0.3, 0.0]}),  # the 0 stretched to 0.1
        ({"shift": 2.0, "use_karras_sigmas": True}, {"sigmas": [1.0, 0.6, 0.3, 0.0]}),
        ({"shift": 3.0}, {"sigmas": [1.0, 0.6, 0.3, 0.0], "timesteps": [1000.0, 600.0, 300.0, 0.0]}),
        ({"shift": 3.0}, {"timesteps": [1000.0, 600.0, 300.0, 10.0]}),  # alone: fed as given, τ = t/N shifted
        ({"shift": 3.0, "shift_terminal": 0.05}, {"timesteps": np.array([1000.0, 700.0, 300.0, 0.0])}),
    ],
)
def test_flowmatch_terminal_zero_and_timesteps_alone_parity(cls, config, call):
    """FlowMatch Euler / LCM given base sigmas that end in 0 (ComfyUI-style) or timesteps without sigmas
    (LTXConditionPipeline): the same timesteps, sigmas and samples as diffusers."""
    ref = getattr(diffusers, cls)(**config)
    assert_stepwise_parity(ref, UnifiedScheduler.from_config(ref), **call)


def test_flow_terminal_zero_refusals():
    """UniPC's flow levels take no 0 (diffusers' log-SNR step divides by it); a lone 0 has nothing to evaluate."""
    wan = UnifiedScheduler.from_config(diffusers.UniPCMultistepScheduler(**WAN_UNIPC))
    with pytest.raises(ValueError, match="must lie in"):
        wan.set_timesteps(sigmas=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="custom timesteps"):
        wan.set_timesteps(timesteps=[999, 500])
    euler = UnifiedScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="must lie in"):
        euler.set_timesteps(sigmas=[0.0])
    with pytest.raises(ValueError, match="exponential σ spacing"):  # log-spaced towards 0: log 0
        UnifiedScheduler.from_config(
            diffusers.FlowMatchEulerDiscreteScheduler(use_exponential_sigmas=True)
        ).set_timesteps(sigmas=[1.0, 0.5, 0.0])


def test_rf_ancestral_option_of_ddim():
    """η = 0 is plain DDIM; s_noise = 0 keeps the down-step and drops the noise; on a VP model it stays finite."""
    schedule = unisde.NoiseSchedule.from_name("rectified-flow")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    common = dict(
        schedule=schedule,
        parameterization="flow_prediction",
        num_inference_steps=5,
        time_grid="flow_match",
        generator=torch.Generator().manual_seed(0),
    )
    plain = unisde.sample(model, x, sampler="ddim", **common)
    rf0 = unisde.sample(model, x, sampler="ddim", sampler_options={"ancestral": "rf", "eta": 0.0}, **common)
    assert (plain - rf0).abs().max() <= 1e-12
    quiet = [
        unisde.sample(
            model,
            x,
            sampler="ddim",
            sampler_options={"ancestral": "rf", "eta": 1.0, "s_noise": 0.0},
            **{**common, "generator": torch.Generator().manual_seed(seed)},
        )
        for seed in (0, 1)
    ]
    assert torch.equal(quiet[0], quiet[1]) and (quiet[0] - plain).abs().max() > 1e-3
    vp = unisde.sample(
        model,
        x,
        schedule="vp-linear",
        parameterization="epsilon",
        num_inference_steps=5,
        sampler="ddim",
        sampler_options={"ancestral": "rf", "eta": 1.0},
    )
    assert torch.isfinite(vp).all()
    with pytest.raises(ValueError, match="ancestral"):
        unisde.sample(model, x, sampler="ddim", sampler_options={"ancestral": "nope"}, **common)


# ---------------------------------------------------------------------------------------------- UniPC / DPM flow sigmas
@pytest.mark.parametrize(
    "config, call",
    [
        ({}, {}),  # Wan 2.1
        ({"flow_shift": 1.0, "solver_order": 3}, {}),
        ({"flow_shift": 5.0, "lower_order_final": False}, {}),
        ({"use_dynamic_shifting": True, "shift_terminal": 0.05}, {"mu": 1.1}),
    ],
)
@pytest.mark.parametrize("n", [1, 4, 10])
def test_unipc_flow_sigmas_parity(config, call, n):
    if n == 1 and config.get("shift_terminal"):
        return
    ref = diffusers.UniPCMultistepScheduler(**{**WAN_UNIPC, **config})
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "unipc" and uni.config.time_grid_options["levels"] == "unipc"
    assert uni.timesteps is None and uni.init_noise_sigma == 1.0
    assert_parity(ref, uni, n, **call)
    assert uni.timesteps.dtype == torch.int64  # ⌊τ N⌋, as diffusers casts them


def test_unipc_flow_custom_sigmas_parity():
    """UniPC's set_timesteps(sigmas=...) with use_flow_sigmas: the levels are shifted by flow_shift, in float64."""
    ref = diffusers.UniPCMultistepScheduler(**WAN_UNIPC)
    uni = UnifiedScheduler.from_config(ref.config)  # a live config, as pipelines pass it
    sigmas = np.linspace(1.0, 0.1, 6)
    for sched in (ref, uni):
        sched.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(uni.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(uni.sigmas, ref.sigmas, rtol=0, atol=0)


@pytest.mark.parametrize(
    "config, call",
    [
        ({"flow_shift": 3.0}, {}),
        ({"flow_shift": 5.0, "algorithm_type": "sde-dpmsolver++"}, {}),
        ({"solver_order": 3}, {}),
        ({"solver_type": "heun", "flow_shift": 2.0}, {}),
        ({"use_dynamic_shifting": True}, {"mu": 0.9}),
    ],
)
@pytest.mark.parametrize("n", [1, 4, 16])
def test_dpmsolver_flow_sigmas_parity(config, call, n):
    ref = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", **config)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.time_grid_options["levels"] == "dpmsolver" and uni.init_noise_sigma == 1.0
    assert_parity(ref, uni, n, **call)


def test_flow_sigmas_configs_take_any_sampler():
    uni = UnifiedScheduler.from_config(diffusers.UniPCMultistepScheduler(**WAN_UNIPC), sampler="edm")
    assert uni._grid_kind() == "flow_match" and uni.config.parameterization == "flow_prediction"
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(run(uni, x, 4)).all()


@pytest.mark.parametrize(
    "cls, flags, match",
    [
        (
            "UniPCMultistepScheduler",
            {"use_flow_sigmas": True, "prediction_type": "epsilon"},
            "prediction_type='epsilon'",
        ),
        (
            "UniPCMultistepScheduler",
            {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_karras_sigmas": True},
            "use_karras_sigmas=True",
        ),
        (
            "UniPCMultistepScheduler",
            {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "final_sigmas_type": "sigma_min"},
            "final_sigmas_type='sigma_min'",
        ),
        (
            "DPMSolverMultistepScheduler",
            {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_exponential_sigmas": True},
            "use_exponential_sigmas=True",
        ),
        ("DPMSolverMultistepScheduler", {"prediction_type": "flow_prediction"}, "needs use_flow_sigmas=True"),
        ("UniPCMultistepScheduler", {"use_dynamic_shifting": True}, "only with use_flow_sigmas"),
    ],
)
def test_flow_sigmas_combinations_refused(cls, flags, match):
    ref = getattr(diffusers, cls)(**flags)
    with pytest.raises(ConversionError, match=match):
        UnifiedScheduler.from_config(ref)
    with pytest.raises(ConversionError, match=match):  # a schedule flag: sampler= cannot stand in either
        UnifiedScheduler.from_config(ref, sampler="ddim")


def test_flow_levels_grid_refusals():
    uni = UnifiedScheduler.from_config(
        diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction").config
    )
    with pytest.raises(ValueError, match="use_dynamic_shifting=False"):
        uni.set_timesteps(4, mu=0.5)
    with pytest.raises(ValueError, match="custom sigmas"):
        uni.set_timesteps(sigmas=[1.0, 0.5])
    wan = UnifiedScheduler.from_config(diffusers.UniPCMultistepScheduler(**WAN_UNIPC))
    with pytest.raises(ValueError, match="use_dynamic_shifting=False"):
        wan.set_timesteps(4, mu=0.5)


def test_cogview4_timesteps_with_sigmas_parity():
    """FlowMatch Euler with timesteps and sigmas (CogView4): the model gets the timesteps as given, the steps the
    shifted sigmas; scale_noise looks σ up by timestep, as diffusers does."""
    config = dict(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    uni = UnifiedScheduler.from_config(ref)
    timesteps = np.linspace(1000, 1.0, 5).astype(np.int64).astype(np.float32)
    expected = assert_parity(ref, uni, None, timesteps=timesteps, sigmas=timesteps / 1000, mu=0.6)
    assert torch.isfinite(expected).all()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    for sched in (ref, uni):
        sched.set_timesteps(timesteps=timesteps, sigmas=timesteps / 1000, mu=0.6)
        sched.set_begin_index(2)
    torch.testing.assert_close(
        uni.scale_noise(x0, uni.timesteps[2:3], noise),
        ref.scale_noise(x0, ref.timesteps[2:3], noise),
        rtol=0,
        atol=1e-6,
    )
