"""The converter registry: every class diffusers exports either converts to a sampler that reproduces it (live
parity in the same test) or refuses with a clear error; flags a converter cannot honour are refused; detection
never picks by list order."""

from __future__ import annotations

import inspect

import diffusers
import diffusers.schedulers
import pytest
import torch

import unisde
from unisde.diffusers.converters import ConversionError, source_class
from unisde.scheduler import UnifiedScheduler

SHAPE = (2, 3, 4, 4)
SCHEDULER_CLASSES = sorted(name for name in dir(diffusers.schedulers) if name.endswith("Scheduler"))


def model(x, t):
    """A smooth stand-in network (its output only has to be a fixed function of (x, t))."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1)[0]
    return 0.6 * x + 0.05 * torch.sin(3 * x + t / 1000.0)


def run(sched, x, n, seed=0):
    """The loop of diffusers' pipelines: start from z · init_noise_sigma, feed scale_model_input to the model."""
    sched.set_timesteps(n)
    x = x * getattr(sched, "init_noise_sigma", 1.0)  # FlowMatch schedulers start from unit noise
    extra = (
        {"generator": torch.Generator().manual_seed(seed)}
        if "generator" in inspect.signature(sched.step).parameters
        else {}
    )
    scale_input = getattr(sched, "scale_model_input", lambda x, t: x)
    for t in sched.timesteps:
        x = sched.step(model(scale_input(x, t), t), t, x, **extra).prev_sample
    return x


# Classes whose __init__ has required arguments (none of them a Gaussian diffusion): built with valid values, so
# that they are converted (and refused) like every other class rather than skipped.
REQUIRED_ARGUMENTS = {
    "AmusedScheduler": {"mask_token_id": 1},
    "VQDiffusionScheduler": {"num_vec_classes": 10},
    "RFD4ProteinaScheduler": {"schedule_mode": "log", "noise_mode": "1/t", "tsr_k": 1.0, "tsr_sigma": 1.0},
}


def instance(name):
    cls = getattr(diffusers.schedulers, name)
    try:
        return cls(**REQUIRED_ARGUMENTS.get(name, {}))
    except Exception as exc:  # noqa: BLE001 - a class that cannot be built with defaults has no config to convert
        pytest.skip(f"{name}() cannot be constructed with its defaults here: {exc}")


# Classes whose step loop is the plain `for t in timesteps: step(model(x, t), t, x)` and whose default config
# converts: parity is checked live. (ScoreSdeVe's loop is its pipeline's; tests/test_scheduler_parity.py has it.
# CogVideoXDPM's step takes its own arguments, UnCLIP's pipelines pass prev_timestep, DDPMWuerstchen's loop drops its
# last timestep and feeds t as a batch, ScoreSdeVp has step_pred only: tests/test_converters_remaining.py has those.)
PLAIN_LOOP_EXCEPTIONS = {
    "ScoreSdeVeScheduler",
    "CogVideoXDPMScheduler",
    "UnCLIPScheduler",
    "DDPMWuerstchenScheduler",
    "ScoreSdeVpScheduler",
}


@pytest.mark.parametrize("name", SCHEDULER_CLASSES)
def test_every_diffusers_class_converts_at_parity_or_refuses(name):
    ref = instance(name)
    if "noise_sampler_seed" in ref.config:  # DPMSolverSDE: by default its Brownian path is seeded from the global RNG,
        ref = type(ref)(noise_sampler_seed=0)  # so two diffusers runs differ; pin it (unisde reads it by name)
    try:
        uni = UnifiedScheduler.from_config(ref.config)
    except ValueError as exc:
        assert name in str(exc), str(exc)
        assert "sampler=" in str(exc) or "not a Gaussian" in str(exc) or "flow" in str(exc), str(exc)
        return
    assert uni.config.sampler in unisde.list_samplers()
    if name in PLAIN_LOOP_EXCEPTIONS:
        return
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    expected, got = run(ref, x.clone(), 6), run(uni, x.clone(), 6)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-5 * scale, (name, float((got - expected).abs().max() / scale))


@pytest.mark.parametrize(
    "name, flags",
    [
        ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}),
        ("EulerDiscreteScheduler", {"sigma_max": 700.0, "use_karras_sigmas": True}),
        ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}),
        ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min", "use_beta_sigmas": True}),
        ("UniPCMultistepScheduler", {"predict_x0": False, "thresholding": True}),
        ("UniPCMultistepScheduler", {"use_flow_sigmas": True}),
        ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True}),
        ("DPMSolverMultistepScheduler", {"lambda_min_clipped": -5.1}),
        ("DDPMScheduler", {"prediction_type": "flow_prediction"}),
    ],
)
def test_unhonoured_flags_refuse_naming_class_flag_and_value(name, flags):
    ref = getattr(diffusers, name)(**flags)
    key, value = next(iter(flags.items()))
    with pytest.raises(ValueError) as info:
        UnifiedScheduler.from_config(ref.config)
    text = str(info.value)
    assert name in text and key in text and repr(value) in text, text


def test_sampler_choice_takes_only_schedule_parameterization_and_grid():
    """With sampler=, a class's β table, prediction type and Karras choice are kept and its solver replaced."""
    ref = diffusers.KDPM2DiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        use_karras_sigmas=True,
    )
    uni = UnifiedScheduler.from_config(ref.config, sampler="ddim")
    assert uni.config.sampler == "ddim" and uni._grid_kind() == "karras"
    assert uni.config.prediction_type == "v_prediction"
    table = torch.as_tensor(ref.alphas_cumprod, dtype=torch.float64)
    assert torch.allclose(
        uni.noise_schedule.s(torch.arange(1, 1001, dtype=torch.float64) / 1000) ** 2, table, rtol=1e-6
    )


def test_a_class_without_twin_refuses_but_takes_sampler():
    from unisde.plugins import get_converter, list_converters

    refusing = [
        n
        for n in list_converters()
        if get_converter(n).sampler is None and get_converter(n).gaussian and hasattr(diffusers, n)
    ]
    assert refusing, "no refusing Gaussian converter left to test"
    for name in refusing:
        ref = getattr(diffusers, name)()
        with pytest.raises(ValueError, match=f"{name} cannot be converted"):
            UnifiedScheduler.from_config(ref.config)
        uni = UnifiedScheduler.from_config(ref.config, sampler="ddim")
        uni.set_timesteps(4)
        assert uni.config.sampler == "ddim"


def test_a_solver_flag_is_honoured_or_refused_and_ignored_only_when_the_sampler_is_replaced():
    ref = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver", solver_type="heun", final_sigmas_type="sigma_min"
    )
    try:
        uni = UnifiedScheduler.from_config(ref.config)
    except ValueError as exc:
        assert "DPMSolverMultistepScheduler" in str(exc) and "sampler=" in str(exc), str(exc)
    else:  # honoured: then it must be the same algorithm
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
        expected, got = run(ref, x.clone(), 6), run(uni, x.clone(), 6)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    uni = UnifiedScheduler.from_config(ref.config, sampler="unipc")
    assert uni.config.sampler == "unipc"


def test_detection_uses_the_owner_of_a_live_config_not_list_order():
    """LMS, KDPM2 and KDPM2Ancestral have identical __init__ keys: a live scheduler's config is traced to its owner."""
    for cls in (diffusers.LMSDiscreteScheduler, diffusers.KDPM2DiscreteScheduler):
        assert source_class(cls().config) == cls.__name__
    # a plain dict with their keys is ambiguous between different algorithms: a clear error, never a guess
    cfg = dict(diffusers.LMSDiscreteScheduler().config)
    with pytest.raises(
        ConversionError, match="KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler, LMSDiscreteScheduler equally"
    ):
        source_class(cfg)
    assert UnifiedScheduler.from_config({**cfg, "_class_name": "LMSDiscreteScheduler"}).config.sampler == "lms"
    # the scheduler object itself works too
    assert UnifiedScheduler.from_config(diffusers.LMSDiscreteScheduler()).config.sampler == "lms"


def test_a_keyless_dict_with_an_extra_key_does_not_fall_back_to_ddpm():
    cfg = {**dict(diffusers.DDIMScheduler().config), "an_extra_key": 3}
    uni = UnifiedScheduler.from_config(cfg)  # best match is still DDIM (ties only between same-algorithm classes)
    assert uni.config.sampler == "ddim"
    with pytest.raises(ValueError, match="match no diffusers scheduler class"):
        UnifiedScheduler.from_config({"foo": 1, "bar": 2})


def test_a_json_list_is_not_a_config():
    with pytest.raises(ValueError, match="must be a dict"):
        UnifiedScheduler.from_config([("num_train_timesteps", 1000)])


def test_naming_the_classes_own_sampler_keeps_its_flags():
    """from_config(cfg, sampler=<the class's own sampler>) keeps the flags the class translates into options
    (UniPC's solver_type → variant), with the caller's options on top; it used to run the sampler's defaults."""
    import diffusers

    cfg = diffusers.UniPCMultistepScheduler(solver_type="bh1", solver_order=2).config
    assert UnifiedScheduler.from_config(cfg, sampler="unipc").config.sampler_options["variant"] == "bh1"
    chosen = UnifiedScheduler.from_config(cfg, sampler="unipc", sampler_options={"solver_order": 3})
    assert chosen.config.sampler_options["variant"] == "bh1" and chosen.config.sampler_options["solver_order"] == 3
    overridden = UnifiedScheduler.from_config(cfg, sampler="unipc", sampler_options={"variant": "bh2"})
    assert overridden.config.sampler_options["variant"] == "bh2"


@pytest.mark.parametrize("cls_name", ["DDIMScheduler", "DDIMParallelScheduler"])
@pytest.mark.parametrize("spacing, n", [("trailing", 30), ("linspace", 10), ("linspace", 7), ("trailing", 10)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_to_t_minus_stride_as_diffusers(cls_name, spacing, n, eta):
    """diffusers' DDIM steps from t to t − N//n whatever the spacing lists next (linspace; trailing with n ∤ N): the
    twin does too. Per-step states after every call, same generator; without the quirk option n = 30 trailing is off
    by 1.3e-3 × scale and linspace by 4e-2."""
    import diffusers

    ref = getattr(diffusers, cls_name)(timestep_spacing=spacing)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler_options["diffusers_prev_timestep"] is True
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    xr, xu, worst = x.clone(), x.clone(), 0.0
    gr, gu = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for tr, tu in zip(ref.timesteps, uni.timesteps):
        xr = ref.step(0.8 * xr + 0.05 * torch.sin(3 * xr), tr, xr, eta=eta, generator=gr).prev_sample
        xu = uni.step(0.8 * xu + 0.05 * torch.sin(3 * xu), tu, xu, eta=eta, generator=gu).prev_sample
        worst = max(worst, float((xr - xu).abs().max() / xr.abs().max()))
    assert worst <= 1e-5, worst
    plain = UnifiedScheduler.from_config(ref.config, sampler="ddim", sampler_options={"eta": 0.5})
    assert "diffusers_prev_timestep" not in plain.config.sampler_options  # a quirk stays with the twin


@pytest.mark.parametrize("spacing, n", [("linspace", 10), ("trailing", 30)])
def test_pndm_twin_refuses_strides_diffusers_steps_off_its_grid(spacing, n):
    """diffusers' PNDM steps t → t − N//n; where the spacing's strides differ the twin refuses at set_timesteps
    (before any step) instead of giving other images, and sampler='pndm' runs PLMS between the grid points."""
    import diffusers

    ref = diffusers.PNDMScheduler(timestep_spacing=spacing, skip_prk_steps=True)
    with pytest.raises(ValueError, match=r"t − N//n = t − \d+, but the spacing lists strides"):
        UnifiedScheduler.from_config(ref.config).set_timesteps(n)
    plain = UnifiedScheduler.from_config(ref.config, sampler="pndm")
    plain.set_timesteps(n)
    assert len(plain.timesteps) == n + 1


def test_deis_flow_config_converts_and_an_epsilon_flow_config_is_refused_with_its_reason():
    """DEIS with use_flow_sigmas converts, its zero-length last step kept (live parity:
    tests/test_flow_singlestep_deis_sasolver.py); with an ε model diffusers reads α = 1 − σ, which unisde refuses."""
    ref = diffusers.DEISMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "deis" and uni.config.final_sigmas_type == "repeat_last"
    uni.set_timesteps(5)
    assert len(uni.timesteps) == 5 and float(uni.sigmas[-1]) == float(uni.sigmas[-2]) > 0
    with pytest.raises(ConversionError, match=r"use_flow_sigmas=True with prediction_type='epsilon'"):
        UnifiedScheduler.from_config(diffusers.DEISMultistepScheduler(use_flow_sigmas=True).config)


@pytest.mark.parametrize(
    "source, sampler",
    [
        ("DEISMultistepScheduler", "dpmsolver++"),  # DEIS's solver_type='logrho' is not dpmsolver++'s solver_type
        ("SASolverScheduler", "dpmsolver++"),  # its algorithm_type='data_prediction' neither
        ("UniPCMultistepScheduler", "dpmsolver_singlestep"),  # UniPC's solver_type='bh2'
        ("DPMSolverMultistepScheduler", "deis"),  # solver_order=3 is DPM-Solver's order, not DEIS's
    ],
)
def test_sampler_replacing_the_algorithm_takes_none_of_the_sources_same_named_flags(source, sampler):
    """from_config(cfg, sampler=another algorithm) takes the schedule, parameterisation and grid only: a source key
    sharing its name with an option of the new sampler means the source's algorithm, so the sampler's defaults
    apply, as in a fresh UnifiedScheduler (and the caller's sampler_options on top)."""
    import diffusers

    from unisde.plugins import get_sampler

    cls = getattr(diffusers, source)
    cfg = cls(solver_order=3).config if "solver_order" in cls().config else cls().config
    uni = UnifiedScheduler.from_config(cfg, sampler=sampler)
    shared = [k for k in cfg if k in get_sampler(sampler).options]
    assert shared, "the case must have a same-named key"
    defaults = {k: spec.default for k, spec in get_sampler(sampler).options.items()}
    fresh = UnifiedScheduler(sampler=sampler).sampler_options  # what a fresh scheduler runs the sampler with
    assert {**defaults, **uni.sampler_options} == {**defaults, **fresh}
    chosen = UnifiedScheduler.from_config(cfg, sampler=sampler, sampler_options={"lower_order_final": False})
    assert chosen.sampler_options["lower_order_final"] is False
