"""DPMSolverSinglestep, DEIS and SASolver with ``use_flow_sigmas=True``: the rectified flow on DPM-Solver multistep's
flow levels, at live per-step parity with the diffusers classes (same integer timesteps, same ``sigmas``, same state
after every step from the same start, the same generator for the stochastic ones), plus the combinations that stay
refused. DEIS and SASolver append their last flow level again, so their last step has length 0 and the result keeps
that level's noise; the twins keep that quirk (``final_sigmas_type="repeat_last"``), another sampler does not."""

from __future__ import annotations

import inspect
import logging
import math
import warnings

import diffusers
import numpy as np
import pytest
import torch

from unisde.diffusers.converters import ConversionError
from unisde.scheduler import UnifiedScheduler

SHAPE = (2, 3, 4, 4)
REL_TOL = 1e-5
STEPS = (5, 8, 12, 16)  # 16 ≥ 15: DEIS's lower_order_final is off there
SHIFTS = (1.0, 3.0)


@pytest.fixture(autouse=True)
def _quiet_diffusers_warnings():
    """diffusers' singlestep class warns when it forces lower_order_final (final σ = 0) and deprecates
    ``algorithm_type="dpmsolver"``; both expected here."""
    logger = logging.getLogger("diffusers.schedulers.scheduling_dpmsolver_singlestep")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*dpmsolver.*deprecated")
        yield
    logger.setLevel(level)


def model(x, t):
    """A smooth stand-in network (a fixed function of (x, t))."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1)[0]
    return 0.6 * x + 0.05 * torch.sin(3 * x + t / 1000.0)


def flow(cls: str, **flags):
    return getattr(diffusers, cls)(use_flow_sigmas=True, prediction_type="flow_prediction", **flags)


def float64_levels(ref, n: int) -> torch.Tensor:
    """The flow levels DEIS/SASolver compute in float64 before their float32 cast (their set_timesteps: 1 −
    linspace(1, 1/N, n + 1), shifted, reversed without its 0, the last appended again), checked against the live
    class's float32 ``sigmas``."""
    N, shift = ref.config.num_train_timesteps, ref.config.flow_shift
    base = 1.0 - np.linspace(1, 1 / N, n + 1)
    levels = np.flip(shift * base / (1 + (shift - 1) * base))[:-1].copy()
    levels = torch.from_numpy(np.concatenate([levels, levels[-1:]]))
    assert torch.equal(levels.to(torch.float32), ref.sigmas)
    return levels


def lockstep(ref, uni, n: int, *, dtype=torch.float32, ref_float64_levels=False, seed=1, same_draws=True, **call):
    """The pipeline loop on both schedulers side by side from z · init_noise_sigma (1 for both), each stepping its own
    state, the step generator seeded alike. Checks timesteps and sigmas (exactly) and, with ``same_draws``, that both
    drew as many numbers from the generator; returns the states after every step (reference, unisde).
    ``ref_float64_levels``: the reference steps on its float64 levels instead of its float32 ``sigmas`` (after the
    check)."""
    ref.set_timesteps(n, **call)
    uni.set_timesteps(n, **call)
    assert ref.init_noise_sigma == uni.init_noise_sigma == 1.0
    assert uni.timesteps.dtype == ref.timesteps.dtype == torch.int64
    assert torch.equal(uni.timesteps, ref.timesteps), (uni.timesteps, ref.timesteps)
    assert torch.equal(uni.sigmas, ref.sigmas), (uni.sigmas, ref.sigmas)
    if ref_float64_levels:
        ref.sigmas = float64_levels(ref, n)
    gen_ref, gen_uni = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    takes = "generator" in inspect.signature(ref.step).parameters
    x_ref = x_uni = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    states_ref, states_uni = [], []
    for t in ref.timesteps:
        x_ref = ref.step(model(x_ref, t), t, x_ref, **({"generator": gen_ref} if takes else {})).prev_sample
        x_uni = uni.step(model(x_uni, t), t, x_uni, generator=gen_uni).prev_sample
        states_ref.append(x_ref.double())
        states_uni.append(x_uni.double())
    if same_draws:  # the same number of draws from one stream
        assert torch.equal(gen_ref.get_state(), gen_uni.get_state())
    return states_ref, states_uni


def worst_relative(a: list, b: list) -> float:
    """max over steps k of max|a_k − b_k| / max|a_k|."""
    for k, x in enumerate(a):
        assert torch.isfinite(x).all(), k
    return max(float((x - y).abs().max()) / float(x.abs().max()) for x, y in zip(a, b))


# ============================================================================ DPMSolverSinglestep
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_singlestep_flow_per_step_parity(order, shift, n):
    ref = flow("DPMSolverSinglestepScheduler", solver_order=order, flow_shift=shift)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "dpmsolver_singlestep" and uni.config.time_grid_options["levels"] == "dpmsolver"
    rel = worst_relative(*lockstep(ref, uni, n))
    assert rel <= REL_TOL, f"singlestep order {order} shift {shift} n={n}: {rel:.3g}"
    assert float(uni.sigmas[-1]) == 0.0  # final_sigmas_type="zero": the last step ends on the data


@pytest.mark.parametrize(
    "flags, call",
    [
        ({"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}, {}),
        ({"solver_order": 3, "algorithm_type": "sde-dpmsolver++", "flow_shift": 3.0}, {}),
        ({"solver_order": 3, "solver_type": "heun", "flow_shift": 3.0}, {}),
        ({"solver_order": 2, "lower_order_final": True, "flow_shift": 5.0}, {}),
        ({"solver_order": 3, "thresholding": True, "sample_max_value": 1.2}, {}),
        ({"solver_order": 2, "use_dynamic_shifting": True}, {"mu": 0.9}),
    ],
    ids=["sde-2", "sde-3", "heun-3", "lower-final", "thresholding", "mu"],
)
@pytest.mark.parametrize("n", [6, 16])
def test_singlestep_flow_flags_parity(flags, call, n):
    ref = flow("DPMSolverSinglestepScheduler", **flags)
    uni = UnifiedScheduler.from_config(ref)
    # SDE: diffusers also draws at the last step into σ = 0, where the noise weight is 0; the twin does not draw there
    # (the samples agree, the generator's state after the loop does not)
    rel = worst_relative(*lockstep(ref, uni, n, same_draws=ref.config.algorithm_type != "sde-dpmsolver++", **call))
    assert rel <= REL_TOL, f"singlestep {flags} n={n}: {rel:.3g}"


# ============================================================================ DEIS
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_flow_per_step_parity(order, shift, n):
    """In float64, the reference stepping on the float64 levels it computes before casting ``sigmas`` to float32
    (checked equal to them): the same algorithm to rounding. Its last step is zero-length: both keep the sample
    there. (float32: next test.)"""
    ref = flow("DEISMultistepScheduler", solver_order=order, flow_shift=shift)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "deis" and uni.config.final_sigmas_type == "repeat_last"
    states_ref, states_uni = lockstep(ref, uni, n, dtype=torch.float64, ref_float64_levels=True)
    rel = worst_relative(states_ref, states_uni)
    assert rel <= 1e-10, f"DEIS order {order} shift {shift} n={n}: {rel:.3g}"
    assert float(uni.sigmas[-1]) == float(uni.sigmas[-2]) > 0 and uni.num_inference_steps == n
    for states in (states_ref, states_uni):  # the zero-length last step: x_n = x_{n−1}
        assert float((states[-1] - states[-2]).abs().max()) <= 1e-12 * float(states[-2].abs().max())


@pytest.mark.parametrize("n", [5, 16])
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_flow_float32_gap_is_diffusers_float32_rounding(order, shift, n):
    """In float32 diffusers' DEIS differs from its float64 run (previous test) by up to ≈ 5·10⁻⁵ × scale: its float32
    ``sigmas`` put α = 1 − σ at σ ≈ 0.999 off by ≈ 10⁻⁵ relative, and its first-order form (α_t/α_s) x − σ_t(e^h − 1) ε̂
    cancels two terms ≈ α_t/α_s ≈ 10²–10³ times the result. unisde's float32 run (the DDIM form in float64
    coefficients) is the closer one to that float64 truth, within 1e-5 × scale."""
    config = {"solver_order": order, "flow_shift": shift}
    truth, _ = lockstep(*_deis_pair(config), n, dtype=torch.float64, ref_float64_levels=True)
    ref32, uni32 = lockstep(*_deis_pair(config), n)
    err_ref, err_uni = worst_relative(truth, ref32), worst_relative(truth, uni32)
    assert err_uni < err_ref and err_uni <= REL_TOL, (err_uni, err_ref)


def _deis_pair(config):
    ref = flow("DEISMultistepScheduler", **config)
    return ref, UnifiedScheduler.from_config(ref)


@pytest.mark.parametrize(
    "flags, call, n",
    [
        ({"solver_order": 3, "lower_order_final": False}, {}, 8),  # third order also on the zero-length step
        ({"solver_order": 2, "lower_order_final": False, "flow_shift": 3.0}, {}, 5),
        ({"solver_order": 2, "use_dynamic_shifting": True}, {"mu": 0.8}, 8),
        ({"solver_order": 3, "thresholding": True, "sample_max_value": 1.2}, {}, 12),
        ({"solver_order": 2}, {}, 1),  # the only step is zero-length: both return the start
    ],
    ids=["no-lower-final-3", "no-lower-final-2", "mu", "thresholding", "one-step"],
)
def test_deis_flow_flags_parity(flags, call, n):
    ref = flow("DEISMultistepScheduler", **flags)
    uni = UnifiedScheduler.from_config(ref)
    rel = worst_relative(*lockstep(ref, uni, n, dtype=torch.float64, ref_float64_levels=True, **call))
    assert rel <= 1e-10, f"DEIS {flags} n={n}: {rel:.3g}"


# ============================================================================ SASolver
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("orders", [(1, 1), (2, 2), (3, 3), (2, 3), (3, 1)], ids=lambda o: f"p{o[0]}c{o[1]}")
def test_sasolver_flow_per_step_parity(orders, shift, n):
    """Stochastic: the same generator, one draw per step on both sides (also on the zero-length last step, whose
    noise weight is 0); τ = 1 where the fed timestep ⌊τ N⌋ lies in 200 … 800. The last step returns the corrector's
    sample of the step before (the zero-length predictor keeps it)."""
    predictor, corrector = orders
    ref = flow("SASolverScheduler", predictor_order=predictor, corrector_order=corrector, flow_shift=shift)
    uni = UnifiedScheduler.from_config(ref)
    assert uni.config.sampler == "sa_solver" and uni.config.final_sigmas_type == "repeat_last"
    rel = worst_relative(*lockstep(ref, uni, n))
    assert rel <= REL_TOL, f"SA-Solver p={predictor} c={corrector} shift {shift} n={n}: {rel:.3g}"
    assert float(uni.sigmas[-1]) == float(uni.sigmas[-2]) > 0 and uni.num_inference_steps == n


@pytest.mark.parametrize(
    "flags, n",
    [
        ({"predictor_order": 3, "corrector_order": 3, "lower_order_final": False}, 8),
        ({"predictor_order": 2, "corrector_order": 3, "lower_order_final": False, "flow_shift": 3.0}, 16),
        ({"thresholding": True, "sample_max_value": 1.2}, 8),
        ({"num_train_timesteps": 500, "flow_shift": 3.0}, 12),  # τ's window is 200 … 800 of N = 500
        ({}, 1),
    ],
    ids=["no-lower-final-3", "no-lower-final-16", "thresholding", "N500", "one-step"],
)
def test_sasolver_flow_flags_parity(flags, n):
    ref = flow("SASolverScheduler", **flags)
    uni = UnifiedScheduler.from_config(ref)
    rel = worst_relative(*lockstep(ref, uni, n))
    assert rel <= REL_TOL, f"SA-Solver {flags} n={n}: {rel:.3g}"


def test_sasolver_flow_noise_is_used_and_the_tau_window_reads_the_fed_timestep():
    ref = flow("SASolverScheduler", flow_shift=3.0)
    uni = UnifiedScheduler.from_config(ref)
    a, _ = lockstep(ref, uni, 8, seed=1)
    b, c = lockstep(ref, uni, 8, seed=2)
    assert float((a[-1] - b[-1]).abs().max()) > 1e-3 * float(a[-1].abs().max())
    assert worst_relative(b, c) <= REL_TOL
    lo, hi = uni.sampler_options["tau_window"]
    N = ref.config.num_train_timesteps
    assert lo == 200 / N and hi < 801 / N and math.floor(hi * N) == 800


# ============================================================================ another sampler, refusals
@pytest.mark.parametrize("cls", ["DEISMultistepScheduler", "SASolverScheduler"])
def test_another_sampler_ends_on_the_data(cls):
    """The zero-length last step is the class's algorithm's quirk: sampler= keeps the flow grid and ends at σ = 0."""
    uni = UnifiedScheduler.from_config(flow(cls, flow_shift=3.0), sampler="ddim")
    assert uni.config.final_sigmas_type == "zero" and uni._grid_kind() == "flow_match"
    uni.set_timesteps(6)
    assert float(uni.sigmas[-1]) == 0.0 and len(uni.timesteps) == 6
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t in uni.timesteps:
        x = uni.step(model(x, t), t, x).prev_sample
    assert torch.isfinite(x).all()


def test_repeat_last_needs_a_sampler_that_takes_a_zero_length_step():
    config = dict(UnifiedScheduler.from_config(flow("DEISMultistepScheduler")).config)
    uni = UnifiedScheduler.from_config({**config, "sampler": "ddim", "sampler_options": {}})
    with pytest.raises(ValueError, match="repeat_last.*'ddim'.*deis.*sa_solver"):
        uni.set_timesteps(5)


@pytest.mark.parametrize(
    "cls, flags, match",
    [
        ("DPMSolverSinglestepScheduler", {"use_flow_sigmas": True}, "prediction_type='epsilon'"),
        ("DEISMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "v_prediction"}, "'v_prediction'"),
        ("SASolverScheduler", {"use_flow_sigmas": True, "prediction_type": "sample"}, "prediction_type='sample'"),
        (
            "DPMSolverSinglestepScheduler",
            {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_karras_sigmas": True},
            "use_karras_sigmas=True",
        ),
        (
            "DPMSolverSinglestepScheduler",
            {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "final_sigmas_type": "sigma_min"},
            "final_sigmas_type='sigma_min'",
        ),
        ("DEISMultistepScheduler", {"use_flow_sigmas": True, "flow_shift": -1.0}, "flow_shift=-1.0 must be > 0"),
        ("SASolverScheduler", {"prediction_type": "flow_prediction"}, "needs use_flow_sigmas=True"),
        ("DEISMultistepScheduler", {"use_dynamic_shifting": True}, "only with use_flow_sigmas"),
    ],
    ids=["ss-eps", "deis-v", "sa-sample", "ss-karras", "ss-sigma-min", "deis-shift", "sa-flow-pred", "deis-dynamic"],
)
def test_flow_combinations_still_refused_with_reasons(cls, flags, match):
    if "flow_shift" in flags:  # diffusers constructs it; its levels are then not in (0, 1]
        flags = {**flags, "prediction_type": "flow_prediction"}
    ref = getattr(diffusers, cls)(**flags)
    for sampler in (None, "ddim"):  # schedule flags: sampler= cannot stand in either
        with pytest.raises(ConversionError, match=match) as info:
            UnifiedScheduler.from_config(ref, sampler=sampler)
        assert cls in str(info.value)


def test_singlestep_dpmsolver_to_zero_is_refused_as_diffusers_refuses_it():
    """diffusers' singlestep class refuses algorithm_type='dpmsolver' with final_sigmas_type='zero' (which flow levels
    need); a config dict holding that pair has no diffusers result, so the twin refuses it too."""
    config = dict(flow("DPMSolverSinglestepScheduler").config)
    config.update(_class_name="DPMSolverSinglestepScheduler", algorithm_type="dpmsolver")
    config.pop("_use_default_values", None)  # else diffusers' from_config puts its default algorithm_type back
    with pytest.raises(ValueError, match="final_sigmas_type"):
        diffusers.DPMSolverSinglestepScheduler.from_config(config)
    with pytest.raises(ConversionError, match="algorithm_type='dpmsolver' with final_sigmas_type='zero'"):
        UnifiedScheduler.from_config(config)
