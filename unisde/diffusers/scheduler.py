r"""UnifiedScheduler: a drop-in diffusers scheduler running any registered sampler on any model.

    pipe.scheduler = UnifiedScheduler.from_config(pipe.scheduler.config, sampler="edm")

The adapter is thin: ``set_timesteps`` asks the sampler for its time grid and precomputes, per
model evaluation, the parameterisation's coefficients (x̂0 = a x + b F, input scale c_in) and the model
timestep; ``step`` converts the model output to x̂0, applies clipping/thresholding and hands it to the sampler.
The sample passed in and out always lives in the model's own space x = s x0 + σ ε.
"""

from __future__ import annotations

import copy
import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from unisde._tensor import DTYPE, unknown_name_error
from unisde.core.kernels import lincomb, t_from_flow_sigma
from unisde.core.schedule import NoiseSchedule
from unisde.grids import append_final, build_grid, get_grid, list_grids
from unisde.parameterizations import schedule_coefficients
from unisde.parameterizations.base import (
    DIFFUSERS_INDEX_ROUNDINGS,
    TIMESTEP_ROUNDINGS,
    denoised_from_output,
    fed_timesteps,
)
from unisde.plugins import get_parameterization, get_sampler, list_samplers, registry_snapshot
from unisde.sampling import (
    all_finite,
    check_sampler_output,
    finite_probe,
    non_finite_origin,
    probe_is_complete,
    probe_is_deferred,
)

MAX_STAGES_UNPROBED = 3  # the longest step whose inner points step() leaves to the step's end probe
SIGMAS_CONVENTIONS = ("ve", "flow", "flow_levels")  # see UnifiedScheduler's sigmas_convention
FINAL_SIGMAS_TYPES = ("zero", "sigma_min", "repeat_last")  # see UnifiedScheduler's final_sigmas_type
COMPATIBLE_SCHEDULERS = [
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "EDMEulerScheduler",
    "ScoreSdeVeScheduler",
]


class _LoopState:
    """Everything one sampling loop reads and writes: the sampler and the per-evaluation tables of
    ``set_timesteps``, the step counter, the running sampler loop, the deferred finiteness flags, the ScoreSdeVe
    counters, and the thread that owns the loop.

    ``set_timesteps`` builds a new state and swaps it in whole, owned by the calling thread. A step already running
    in another thread finishes on the state it started with, so its writes never reach the new loop, and that
    thread's next call finds a state it does not own and raises (:meth:`UnifiedScheduler._owned_state`): a
    scheduler shared by two threads gives each either its own single-thread result or that error, never a mixed
    sample. A copy (``copy.deepcopy``, pickle) is unowned, claimed by the first thread that steps it, and cannot
    continue a loop that was running when it was made."""

    sampler = eval_times = a = b = c_in = t_list = fused = index_times = None
    noop_from = None  # the evaluation index of the source's zero-length last step (set_timesteps), if it has one
    unprobed = frozenset()  # evaluations returning a multi-stage step's inner point, not probed (_inner_evaluations)
    step_index = begin_index = loop = loop_next = runs = None
    run_index = run_calls = 0
    copied_mid_loop = False

    def __init__(self, owner: int | None = None, owner_name: str = ""):
        self.finite_flags = []  # ("model" | "sample", step, 0-dim bool tensor) on devices other than the CPU
        self.inner_outputs = []  # (evaluation, model output) of the unprobed evaluations since the last probe
        if owner is not None:
            self.owner, self.owner_name = owner, owner_name

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("owner", None)
        state.pop("owner_name", None)
        if state.pop("loop", None) is not None:
            state["copied_mid_loop"] = True
        state["finite_flags"] = []
        state["inner_outputs"] = []
        return state


# set_timesteps and set_sigmas replace a scheduler's loop state and its public timesteps / sigmas together; this
# lock makes that one step, so two threads' calls cannot leave one's timesteps next to the other's state.
_COMMIT_LOCK = threading.RLock()


def _serialised(method):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with _COMMIT_LOCK:
            return method(self, *args, **kwargs)

    return locked


def _state_field(name: str, doc: str = ""):
    """``self._<name>`` of UnifiedScheduler, stored in the current :class:`_LoopState`."""
    return property(
        lambda self: getattr(self._state, name),
        lambda self, value: setattr(self._state, name, value),
        doc=doc or f"The current loop state's {name}.",
    )


def _grid_key(*args) -> tuple | None:
    """What ``set_timesteps``' tables depend on besides the scheduler's config, sampler and options: its arguments
    (but ``device``), each with its type, lists and arrays by their values; None (nothing cached) for inputs that
    are not plain numbers or 1-D sequences of them."""
    key = []
    for value in args:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            key.append((str(value.dtype), tuple(value.shape), tuple(value.reshape(-1).tolist())))
        elif isinstance(value, np.ndarray):
            key.append((str(value.dtype), value.shape, tuple(value.reshape(-1).tolist())))
        elif isinstance(value, (list, tuple)):
            if not all(type(v) in (int, float) for v in value):
                return None
            key.append((type(value).__name__, tuple((type(v).__name__, v) for v in value)))
        elif value is None or type(value) in (int, float, bool):
            key.append((type(value).__name__, value))
        else:
            return None
    return tuple(key)


def _grid_sources(scheduler) -> tuple:
    """The objects ``set_timesteps``' tables are computed from, compared by identity (:class:`_GridTables`): the
    config, noise schedule, parameterisation and sampler class, and the plugin registry its grid comes from."""
    return (
        scheduler._internal_dict,
        scheduler.noise_schedule,
        scheduler.parameterization,
        scheduler.sampler_cls,
        registry_snapshot(),
    )


def _sampler_copy(sampler):
    """A deep copy of ``sampler`` that shares its (immutable) noise schedule."""
    return copy.deepcopy(sampler, {id(sampler.schedule): sampler.schedule})


class _GridTables:
    """The tables one ``set_timesteps`` call computed (a few ms: schedule interpolants at every evaluation, the
    sampler's ``prepare``), kept so that the next call with the same inputs — a pipeline calls it once per image
    with the same arguments — takes microseconds. It is used only while the scheduler's config, noise schedule,
    parameterisation, sampler class, sampler options and the plugin registry are the very ones it was computed
    with. Each use gets a new loop state and a deep copy of the sampler as ``prepare`` left it (sharing only the
    immutable noise schedule), so nothing a sampling loop writes reaches another loop; the tables themselves are
    only read."""

    def __init__(self, scheduler, key: tuple, state: "_LoopState", timesteps, sigmas, num_inference_steps: int):
        self.key = key
        self.sources = _grid_sources(scheduler)
        self.options = copy.deepcopy(scheduler.sampler_options)
        self.sampler = _sampler_copy(state.sampler)
        self.tables = {
            name: getattr(state, name)
            for name in ("eval_times", "a", "b", "c_in", "t_list", "fused", "index_times", "noop_from", "unprobed")
            if name in state.__dict__
        }
        self.timesteps, self.sigmas, self.num_inference_steps = timesteps, sigmas, num_inference_steps

    def serves(self, scheduler, key: tuple) -> bool:
        sources = _grid_sources(scheduler)
        if key != self.key or any(a is not b for a, b in zip(sources, self.sources)):
            return False
        try:
            return bool(scheduler.sampler_options == self.options)
        except Exception:  # options that do not compare (tensors): computed afresh
            return False

    def loop_state(self) -> "_LoopState":
        state = _LoopState(threading.get_ident(), threading.current_thread().name)
        state.__dict__.update(self.tables)
        state.sampler = _sampler_copy(self.sampler)
        return state


class UnifiedScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler whose algorithm is any registered unisde sampler.

    It accepts the config keys of diffusers' DDPM, DDIM, PNDM, Euler, EulerAncestral, Heun, LMS,
    DPMSolverMultistep, UniPC, EDMEuler and ScoreSdeVe schedulers. Those that define the forward process
    (β table, σ range, ``prediction_type``), the time grid (``timestep_spacing``, ``steps_offset``,
    ``use_karras_sigmas``, ``rho``) and x̂0 post-processing (``clip_sample``, ``thresholding``) are honoured;
    the solver-specific ones of the other schedulers are kept so that converting back is lossless.

    unisde's own keys:
        sampler: a registered sampler name (``unisde.list_samplers()``).
        sampler_options: JSON-able dict validated by the sampler (unknown keys → ValueError listing valid ones).
        schedule: a schedule name (``"vp-linear"``, ``"cosine"``, ``"ve"``, ``"edm"``, …) or a
            ``NoiseSchedule.to_config()`` dict; when None the diffusers keys define the schedule.
        time_grid: a registered time grid (``unisde.grids.list_grids()``: ``leading``, ``trailing``, ``linspace``,
            ``linspace_fractional``, ``uniform_t``, ``uniform_lambda``, ``karras``, plugins' grids);
            None picks the sampler's preference (``edm``: karras) or the config's spacing.
        parameterization: a registered parameterisation that overrides ``prediction_type`` (None: use
            ``prediction_type``). Conversions from EDMEuler-type configs set it to ``"edm"`` and keep their
            ``prediction_type="epsilon"`` (diffusers' name for EDM's preconditioned network), so that
            ``EDMEulerScheduler.from_config(unified.config)`` gets its own value back; under ``"edm"``,
            ``prediction_type="v_prediction"`` negates c_out as diffusers' EDM classes do.
        parameterization_options: options of the parameterisation (e.g. ``{"c_noise": "atan"}`` for ``"edm"``),
            validated by it; EDM's ``sigma_data`` may also come from the ``sigma_data`` key.
        t_min, t_max: the time range sampled (defaults: see :func:`unisde.samplers.grids.default_time_range`).
        check_finite: raise a ValueError naming the step when the model output is not finite.
        init_noise: ``"marginal"`` (``init_noise_sigma`` = √(s² + σ²) at the first evaluation) or ``"sigma"`` (σ
            alone: diffusers' Euler-type schedulers with linspace/trailing spacing; set by their converters) or
            ``"unit"`` (1: UniPC/DPM-Solver multistep with ``use_flow_sigmas``, whose grid starts below t = 1).
        original_inference_steps, timestep_scaling: LCM/TCD keys (the ``lcm`` grid and sampler read them by name).
        noise_sampler_seed: DPMSolverSDEScheduler's seed of the Brownian path (the ``dpmpp_sde`` sampler reads it by
            name; None: the step generator's initial seed).
        final_sigmas_type: ``"zero"`` (the grid ends on the clean data) or ``"sigma_min"``: on a table at index 0 (the
            multistep classes' σ_min), on a continuous schedule with σ(0) > 0 at that level (Würstchen's
            ᾱ(0) = 1 − 10⁻⁴), as the least positive time, since an end point t = 0 means the data; or
            ``"repeat_last"``: the grid ends at its last evaluation time again, a zero-length last step that keeps
            the sample at that noise level (diffusers' DEIS and SA-Solver append their last flow level again; set by
            their converters; only for samplers with ``takes_zero_length_end``).
        snr_shift_scale, scaler, s, beta_min, beta_max: CogVideoX's, Würstchen's and ScoreSdeVp's schedule keys, kept
            from a converted config so that converting back is lossless; the conversion writes their schedule into
            ``schedule``, and without it they are a ValueError (never silently ignored).
        sigmas_convention: what ``set_timesteps(sigmas=...)`` and ``scheduler.sigmas`` mean: ``"ve"``, the VE-view
            noise level σ̃ = σ/s of diffusers' Euler/Heun/DPM/EDM pipelines (one per grid point); ``"flow"``, the
            flow noise level τ = σ/(s + σ) ∈ [0, 1] of FlowMatch pipelines (t itself on the rectified flow; one per
            model evaluation, aligned with ``timesteps``, plus the end point; ``sigmas`` passed to
            ``set_timesteps`` are the grid's base levels, shifted as the source scheduler shifts them, a last 0
            included: FlowMatch Euler then evaluates there too, a zero-length step that keeps the sample;
            ``timesteps`` alone are fed as given and their levels τ = timestep/N shifted, as FlowMatch Euler takes
            them); ``"flow_levels"``, as ``"flow"`` except that ``sigmas`` (or ``timesteps``, an alias) passed to
            ``set_timesteps`` are ComfyUI's levels, used as given and unshifted, the last one the end point (0 or
            not), where the source evaluates the model once more for a step that keeps the sample;
            ``scheduler.sigmas`` then lists them as given (LTXEulerAncestralRFScheduler).
        view: the variables the sampler solves the probability-flow ODE in, for samplers with a ``view`` option
            (``edm``, ``ode``, ``lms``, ``dpm_2``, ``ipndm``, ``pndm`` …, which read it by name; ``sampler_options``
            override it): ``"ve"`` (x/s against σ̃, as diffusers' Euler/Heun/LMS/KDPM2/PNDM classes step, also on a
            zero-terminal-SNR table; set by their converters), ``"flow"`` or ``"auto"``; None: the sampler's default
            (``"auto"``: the flow view where the schedule reaches zero SNR, see
            :func:`unisde.core.kernels.view_coefficients`).
        timesteps_convention: what ``set_timesteps(timesteps=...)`` means: ``"model"``, values on the model's
            timestep scale; ``"train_index"``, indices of a training discretisation (CMStochasticIterativeScheduler's
            custom timesteps, e.g. [22, 0]; set by its converter, read by the karras grid's ``train_indices``).
        add_noise_level: the noise level of ``add_noise``: ``"timestep"``, the level of the timestep given (its grid
            level when it is on the current grid); ``"step_index"``, during a loop the level of the grid point that
            ends the current model evaluation's stage, whatever timestep is given — diffusers' KDPM2 schedulers read
            ``sigmas[step_index]``, which after a first stage (the sample at the midpoint) is the step's end, so
            4-channel inpainting noises the known region to σ̃_{i+1} there (set by their converters).
        timestep_rounding: None (the model is fed its exact timestep), ``"round"`` or ``"floor"``: the model is fed
            the rounded/floored timestep while the step uses the exact time — diffusers' DPM-Solver/UniPC multistep
            round on Karras/λ-uniform σ tables and cast flow τ·N to int64 (set by their converters);
            ``"round_steps"``: only each step's first evaluation is rounded (diffusers' KDPM2 on Karras σ rounds its
            grid points, not its midpoints). ``"diffusers_round"`` / ``"diffusers_floor"``: at the grid points of
            ``set_timesteps(num_inference_steps)`` the rounded / int64-truncated index that diffusers'
            DPMSolverMultistep, DPMSolverSinglestep and UniPC compute for the σ̃ of the config's respacing flag (exactly
            one of ``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``, ``use_lu_lambdas``) against
            their float32 log-σ̃ table (:func:`unisde.grids.diffusers_float32.diffusers_table_respaced_timesteps`:
            SD's σ̃_max at 998.9999997, fed 998), elsewhere (custom timesteps or sigmas, other evaluations) as
            ``"round"`` / ``"floor"`` (set by their converters).
        shift, base_shift, max_shift, base_image_seq_len, max_image_seq_len, use_dynamic_shifting, time_shift_type,
            shift_terminal: FlowMatch keys; the ``flow_match`` grid reads the first ones, pipelines read the rest
            (Flux computes ``mu`` from them).
    """

    _compatibles = list(COMPATIBLE_SCHEDULERS)

    # The state of the current sampling loop lives in one _LoopState (see there); these names read and write it.
    _sampler = _state_field("sampler")
    _eval_times = _state_field("eval_times")
    _a = _state_field("a")
    _b = _state_field("b")
    _c_in = _state_field("c_in")
    _t_list = _state_field("t_list")
    _step_index = _state_field("step_index")
    _begin_index = _state_field("begin_index")
    _loop = _state_field("loop")
    _loop_next = _state_field("loop_next")
    _finite_flags = _state_field("finite_flags")
    _runs = _state_field("runs")
    _run_index = _state_field("run_index")
    _run_calls = _state_field("run_calls")

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        variance_type: str | None = "fixed_small",
        clip_sample: bool = False,
        prediction_type: str = "epsilon",
        parameterization: str | None = None,
        parameterization_options: dict | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        set_alpha_to_one: bool = True,
        skip_prk_steps: bool = False,
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_type: str = "discrete",
        final_sigmas_type: str = "zero",
        solver_order: int = 2,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        lambda_min_clipped: float | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        shift: float = 1.0,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        stochastic_sampling: bool = False,
        predict_x0: bool = True,
        disable_corrector: list | None = None,
        solver_p: Any = None,
        shift_terminal: float | None = None,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        rho: float = 7.0,
        snr: float = 0.15,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
        noise_sampler_seed: int | None = None,
        snr_shift_scale: float | None = None,
        scaler: float | None = None,
        s: float | None = None,
        beta_min: float | None = None,
        beta_max: float | None = None,
        predictor_order: int = 2,
        corrector_order: int = 2,
        tau_func: Any = None,
        sampler: str = "ddpm",
        sampler_options: dict | None = None,
        schedule: str | dict | None = None,
        time_grid: str | None = None,
        time_grid_options: dict | None = None,
        t_min: float | None = None,
        t_max: float | None = None,
        check_finite: bool = True,
        init_noise: str = "marginal",
        original_inference_steps: int = 50,
        timestep_scaling: float = 10.0,
        sigmas_convention: str = "ve",
        timestep_rounding: str | None = None,
        timesteps_convention: str = "model",
        add_noise_level: str = "timestep",
        return_pred_original_sample: bool = True,
        view: str | None = None,
    ):
        if time_grid is not None and time_grid not in list_grids():
            raise unknown_name_error("time_grid", time_grid, list_grids())
        if time_grid_options is not None and not isinstance(time_grid_options, dict):
            raise ValueError(f"time_grid_options must be a dict, got {type(time_grid_options).__name__}")
        spacing = (time_grid_options or {}).get("spacing")
        for flag, value in (
            ("use_flow_sigmas", use_flow_sigmas and time_grid != "flow_match"),
            ("use_beta_sigmas", use_beta_sigmas and spacing != "beta"),
            ("invert_sigmas", invert_sigmas),
            ("stochastic_sampling", stochastic_sampling),
        ):
            if value:  # these change the grid or the algorithm; converters translate them into grids and samplers
                raise ValueError(
                    f"{flag}=True is not supported in a UnifiedScheduler config; choose the time grid "
                    f"(time_grid=..., one of {', '.join(list_grids())}) and the sampler instead"
                )
        if tau_func is not None:  # kept in configs only as SASolverScheduler's default None (lossless conversion back)
            raise ValueError(
                "tau_func (a SASolverScheduler callable) is not read by unisde; pass sampler='sa_solver' with "
                "sampler_options={'tau': ..., 'tau_window': [t_lo, t_hi]} instead"
            )
        if not isinstance(return_pred_original_sample, bool):
            raise ValueError(f"return_pred_original_sample must be True or False, got {return_pred_original_sample!r}")
        if timestep_rounding not in TIMESTEP_ROUNDINGS:
            raise unknown_name_error("timestep_rounding", timestep_rounding, TIMESTEP_ROUNDINGS)
        respacing_flags = {
            "use_karras_sigmas": use_karras_sigmas,
            "use_exponential_sigmas": use_exponential_sigmas,
            "use_beta_sigmas": use_beta_sigmas,
            "use_lu_lambdas": use_lu_lambdas,
        }
        if timestep_rounding in DIFFUSERS_INDEX_ROUNDINGS and sum(map(bool, respacing_flags.values())) != 1:
            set_flags = [k for k, v in respacing_flags.items() if v] or "none"
            raise ValueError(
                f"timestep_rounding={timestep_rounding!r} feeds the model the index diffusers computes for the σ̃ of "
                f"one respacing flag, so exactly one of {', '.join(respacing_flags)} must be True (set: {set_flags}); "
                f"without one use timestep_rounding={timestep_rounding.removeprefix('diffusers_')!r}"
            )
        if add_noise_level not in ("timestep", "step_index"):
            raise unknown_name_error("add_noise_level", add_noise_level, ("timestep", "step_index"))
        if timesteps_convention not in ("model", "train_index"):
            raise unknown_name_error("timesteps_convention", timesteps_convention, ("model", "train_index"))
        if sigmas_convention not in SIGMAS_CONVENTIONS:
            raise unknown_name_error("sigmas_convention", sigmas_convention, SIGMAS_CONVENTIONS)
        if view not in (None, "auto", "ve", "flow"):
            raise unknown_name_error("view", view, ("auto", "ve", "flow"))
        if final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise unknown_name_error("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if init_noise not in ("marginal", "sigma", "unit"):
            raise unknown_name_error("init_noise", init_noise, ("marginal", "sigma", "unit"))
        if timestep_spacing not in ("leading", "trailing", "linspace"):
            raise unknown_name_error("timestep_spacing", timestep_spacing, ("leading", "trailing", "linspace"))
        recorded = {"snr_shift_scale": snr_shift_scale, "scaler": scaler, "s": s, "beta_min": beta_min}
        recorded["beta_max"] = beta_max
        given = sorted(k for k, v in recorded.items() if v is not None)
        if given and schedule is None:  # kept from a converted config; its converter wrote their schedule
            raise ValueError(
                f"{', '.join(given)}: schedule keys of CogVideoX's, Würstchen's or ScoreSdeVp's scheduler, which a "
                "UnifiedScheduler reads only through the schedule their conversion writes; convert the source "
                "config (UnifiedScheduler.from_config(source_config)) or pass schedule= (e.g. {'name': "
                "'wuerstchen-cosine', 'scaler': 1.0, 's': 0.008})"
            )
        if schedule is not None:
            self.noise_schedule = NoiseSchedule.from_config(schedule)
        else:
            self.noise_schedule = NoiseSchedule.from_diffusers_config(
                {
                    "num_train_timesteps": num_train_timesteps,
                    "beta_start": beta_start,
                    "beta_end": beta_end,
                    "beta_schedule": beta_schedule,
                    "trained_betas": trained_betas,
                    "rescale_betas_zero_snr": rescale_betas_zero_snr,
                }
            )
        param_name = parameterization or prediction_type
        if parameterization_options is not None and not isinstance(parameterization_options, dict):
            raise ValueError(f"parameterization_options must be a dict, got {type(parameterization_options).__name__}")
        param_options = {}
        if param_name == "edm":  # σ_data is a diffusers key; so is the sign of c_out (diffusers' EDM prediction_type)
            param_options["sigma_data"] = sigma_data
            if prediction_type in ("epsilon", "v_prediction"):
                param_options["prediction_type"] = prediction_type
        param_options.update(parameterization_options or {})
        self.parameterization = get_parameterization(param_name, **param_options)
        self.sampler_cls = get_sampler(sampler)
        if getattr(self.sampler_cls, "needs_uncond", False):
            raise ValueError(
                f"sampler {sampler!r} needs the unconditional prediction as well as the guided one (CFG++), which "
                "diffusers pipelines do not pass to step(): they combine classifier-free guidance themselves. Use "
                f"unisde.sample(..., sampler={sampler!r}) with a denoiser returning (guided x̂0, unconditional x̂0) "
                "or a model returning (guided output, unconditional output); in a pipeline use a sampler of "
                "unisde.list_samplers()"
            )
        self.sampler_options = self._sampler_options(sampler_options)
        # Validate now so a bad option fails at construction, before any work.
        self._state = _LoopState()
        self._sampler = self.sampler_cls(self.noise_schedule, **self.sampler_options)
        grid = get_grid(self._grid_kind())
        if use_dynamic_shifting and "use_dynamic_shifting" not in grid.options:
            raise ValueError(
                f"use_dynamic_shifting=True needs a flow-matching time grid (time_grid='flow_match'); "
                f"the time grid {grid.name!r} has no dynamic shifting"
            )
        grid.validate(self._grid_options(None))
        # x̂0 post-processing flags, read once here rather than through the config on every step.
        self._threshold = (dynamic_thresholding_ratio, sample_max_value) if thresholding else None
        self._clip = float(clip_sample_range) if clip_sample and not thresholding else None
        self._check = bool(check_finite)
        self._returns_x0 = return_pred_original_sample
        # the model output is ε̂ itself where the model predicts ε and x̂0 is not clipped or thresholded
        self._eps_output = self.parameterization.name == "epsilon" and self._clip is None and self._threshold is None
        self.timesteps = None
        self.num_inference_steps = None
        self.sigmas = None
        self._step_index = None
        self._begin_index = None
        self._eval_times = None
        self._runs = None  # ScoreSdeVePipeline mode (set_sigmas)
        self._loop = None  # the running sampler loop and the evaluation it waits for
        self._loop_next = None

    # ------------------------------------------------------------------ construction helpers
    def _sampler_options(self, user: dict | None) -> dict:
        if user is not None and not isinstance(user, dict):
            raise ValueError(f"sampler_options must be a dict, got {type(user).__name__}")
        options = {}
        cfg = self.config
        for key in self.sampler_cls.options:  # diffusers config keys that share a sampler option's name
            if key in cfg and cfg[key] is not None:
                options[key] = cfg[key]
        options.update(user or {})
        return options

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``. Another scheduler's config (or the scheduler object itself) is converted
        by the converter registered for its class (:mod:`unisde.diffusers.converters`): without ``sampler=`` to
        the unisde sampler that reproduces it, with ``sampler=`` keeping only its schedule, parameterisation and
        time grid. A class or flag unisde cannot honour is a ValueError saying what to do instead."""
        from unisde.diffusers.converters import SOURCE_OPTIONS_DROPPED, convert, foreign_keys, source_class

        source = config if config is not None and hasattr(config, "config") and not isinstance(config, dict) else None
        if source is not None:
            config = source.config
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"a scheduler config must be a dict (or a scheduler), got {type(config).__name__}")
        cfg = dict(config or {})
        # diffusers would replace values the source scheduler left at *its* defaults by ours; unisde keeps the
        # source's values (its clipping, spacing, …), which is what a conversion should preserve.
        cfg.pop("_use_default_values", None)
        own = cfg.get("_class_name") == cls.__name__ or "sampler" in cfg or type(source).__name__ == cls.__name__
        if cfg and not own:
            given = config if source is None else source.config
            name = source_class(given, source)  # once: finding a live config's owner scans the heap
            derived = convert(given, kwargs.get("sampler"), kwargs.get("sampler_options"), obj=source, name=name)
            if "prediction_type" in kwargs or "parameterization" in kwargs:  # the caller says what the model predicts
                derived.pop("parameterization", None)
                derived.pop("parameterization_options", None)
                derived.pop("prediction_type", None)
            for key in foreign_keys(given, name):
                cfg.pop(key)  # another class's keys, which the source ignores (see foreign_keys)
            if derived.pop(SOURCE_OPTIONS_DROPPED, False):  # sampler= another algorithm: its defaults, not the source's
                for key in get_sampler(derived["sampler"]).options:
                    cfg.pop(key, None)
            cfg.update({k: v for k, v in derived.items() if k not in kwargs})
            if "sampler_options" in derived and "sampler_options" in kwargs:  # the source's under the caller's
                kwargs["sampler_options"] = derived["sampler_options"]
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------ diffusers contract
    @property
    def order(self) -> int:
        return int(getattr(self._sampler, "order", 1))

    @property
    def init_noise_sigma(self) -> float:
        """Std of the starting noise in model space at the first evaluation time: √(s² + σ²) (the marginal's, for
        unit-variance data) by default; σ alone with ``init_noise="sigma"``, the convention of diffusers' Euler-type
        schedulers with linspace/trailing spacing (they start from σ̃_max · z in the VE view), kept by their twins."""
        t = self._sampler.noise_time(self._eval_times[0]) if self._eval_times is not None else 1.0
        s, sigma = self.noise_schedule.s(t), self.noise_schedule.sigma(t)
        if self.config.init_noise == "unit":  # diffusers' multistep flow classes: z itself, wherever the grid starts
            return 1.0
        if self.config.init_noise == "sigma":
            return float(sigma)
        return float(torch.sqrt(s**2 + sigma**2))

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._owned_state("set_begin_index()").begin_index = int(begin_index)

    def __len__(self):
        return self.config.num_train_timesteps

    def _grid_kind(self) -> str:
        cfg = self.config
        if cfg.time_grid is not None:
            return cfg.time_grid
        if self.sampler_cls.default_grid != "config":
            return self.sampler_cls.default_grid
        if cfg.use_karras_sigmas:
            return "karras"
        if cfg.use_exponential_sigmas or cfg.use_lu_lambdas:
            return "uniform_lambda"
        return cfg.timestep_spacing

    def _grid_options(self, mu: float | None, **call) -> dict:
        """The time grid's options: the config keys it shares a name with (t_min, t_max, rho, steps_offset, shift,
        original_inference_steps …), then ``time_grid_options``, then what ``set_timesteps`` was given for the grid
        (``mu`` of dynamically shifted grids; LCM's ``original_inference_steps`` and img2img ``strength``)."""
        grid = get_grid(self._grid_kind())
        cfg = self.config
        options = {k: cfg[k] for k in grid.options if k in cfg and cfg[k] is not None}
        options.update(cfg.get("time_grid_options") or {})
        if mu is not None:
            if "mu" not in grid.options:
                raise ValueError(
                    f"set_timesteps(mu={mu}): the time grid {grid.name!r} has no dynamic shifting "
                    "(mu applies to flow-matching grids with use_dynamic_shifting)"
                )
            options["mu"] = mu
        for name, value in call.items():
            if value is None or (name == "strength" and value == 1.0 and name not in grid.options):
                continue
            if name not in grid.options:
                raise ValueError(f"set_timesteps({name}={value}): the time grid {grid.name!r} has no option {name!r}")
            options[name] = value
        return options

    @_serialised
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list | None = None,
        sigmas: list | None = None,
        mu: float | None = None,
        original_inference_steps: int | None = None,
        strength: float | None = None,
    ):
        """Choose the time grid and precompute every coefficient (float64, cast once to the sample's dtype).

        Exactly one of ``num_inference_steps``, ``timesteps`` (on the model's timestep scale, descending) and
        ``sigmas`` (VE-view noise levels σ̃, descending) must be given.
        """
        if device is not None:
            try:
                kind = torch.device(device).type
            except (RuntimeError, TypeError, ValueError):
                raise ValueError(f"set_timesteps(device={device!r}): not a torch device") from None
            if kind == "meta":
                raise ValueError(
                    "set_timesteps(device='meta'): the meta device holds no data; pass the device the "
                    "model and the sample are on"
                )
        key = _grid_key(num_inference_steps, timesteps, sigmas, mu, original_inference_steps, strength)
        cached = self.__dict__.get("_grid_cache")
        if key is not None and cached is not None and cached.serves(self, key):
            self._commit_grid(cached, device)
            return
        cfg = self.config
        sched, param = self.noise_schedule, self.parameterization
        # diffusers' indices of its own respaced σ̃ apply to the grid of num_inference_steps, not to given values
        own_levels = timesteps is None and sigmas is None and cfg.timestep_rounding in DIFFUSERS_INDEX_ROUNDINGS
        sampler = self.sampler_cls(sched, **self.sampler_options)
        repeat_last = cfg.final_sigmas_type == "repeat_last"
        if repeat_last and not getattr(sampler, "takes_zero_length_end", False):
            raise ValueError(
                f"final_sigmas_type='repeat_last' (a zero-length last step) with sampler {sampler.name!r}, whose step "
                "formulas do not take a step of length 0; use final_sigmas_type='zero', or a sampler that takes it: "
                f"{', '.join(n for n in list_samplers() if getattr(get_sampler(n), 'takes_zero_length_end', False))}"
            )
        final, keep_final = 0.0, False
        if getattr(sampler, "final_from_config", False) and not cfg.set_alpha_to_one and sched.is_discrete:
            # diffusers' DDIM/PNDM end at ᾱ_0 (index 0), a zero-length step when the grid already evaluates there
            final, keep_final = 1.0 / sched.num_train_timesteps, not getattr(sampler, "encodes", False)
        if cfg.final_sigmas_type == "sigma_min" and sched.is_discrete:
            final = 1.0 / sched.num_train_timesteps  # the multistep schedulers' last step ends at the table's σ_min
        elif cfg.final_sigmas_type == "sigma_min" and float(sched.sigma(0.0)) > 0:
            # a continuous schedule's smallest level σ(0) > 0 (Würstchen's ᾱ(0) = 1 − 10⁻⁴): an end point at t = 0
            # means the clean data (grid_coefficients), so end at the least positive time, whose level is σ(0)
            final = math.ulp(0.0)
        options = self._grid_options(mu, original_inference_steps=original_inference_steps, strength=strength)
        if timesteps is not None and cfg.timesteps_convention == "train_index":
            # CMStochasticIterative's set_timesteps(timesteps=[22, 0]): descending indices of the training
            # discretisation, which it reverses into positions counted from σ̃_max
            if "train_indices" not in get_grid(self._grid_kind()).options:
                raise ValueError(
                    f"timesteps_convention='train_index' needs a time grid with train_indices (karras), not "
                    f"{self._grid_kind()!r}"
                )
            given = timesteps.tolist() if hasattr(timesteps, "tolist") else list(timesteps)
            if num_inference_steps is not None:
                raise ValueError("pass exactly one of num_inference_steps or timesteps")
            if any(b >= a for a, b in zip(given, given[1:])):
                raise ValueError(f"timesteps must be in descending order, got {given}")
            options["train_indices"], num_inference_steps, timesteps = [int(v) for v in given[::-1]], len(given), None
        given_model_t = None  # FlowMatch's timesteps passed with sigmas: fed to the model as given (CogView4)
        grid = None
        given_levels = cfg.sigmas_convention == "flow_levels" and (sigmas is not None or timesteps is not None)
        if given_levels:
            # ComfyUI's levels, used as given; the last is the end point (see the sigmas_convention docs)
            levels = self._given_flow_levels(sigmas if sigmas is not None else timesteps, num_inference_steps, mu)
            times = t_from_flow_sigma(sched, torch.from_numpy(levels))
            grid = append_final(times[:-1], float(times[-1]), sched)
        elif cfg.sigmas_convention == "flow":
            if timesteps is not None and sigmas is None:
                if options.get("levels", "flowmatch") != "flowmatch":
                    raise ValueError(
                        "this scheduler's flow levels (UniPC / DPM-Solver multistep with use_flow_sigmas) take no "
                        "custom timesteps: pass num_inference_steps (or sigmas, where the source class takes them)"
                    )
                # FlowMatch Euler (LTXConditionPipeline): the timesteps are fed as given, their levels τ = t/N (in
                # float32, as diffusers divides) go through the shifts like base sigmas
                ts32 = np.asarray(
                    timesteps.detach().cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64
                ).astype(np.float32)
                sigmas = ts32 / np.float32(cfg.num_train_timesteps)
            if sigmas is not None:  # the grid's base levels, shifted by the grid as the source scheduler does
                sigmas = sigmas.tolist() if hasattr(sigmas, "tolist") else list(sigmas)
                if num_inference_steps is not None and num_inference_steps != len(sigmas):
                    raise ValueError(f"num_inference_steps={num_inference_steps} but {len(sigmas)} sigmas were given")
                if timesteps is not None:
                    given_model_t = (
                        np.asarray(
                            timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64
                        )
                        .astype(np.float32)
                        .astype(np.float64)
                    )
                    if given_model_t.shape != (len(sigmas),):
                        raise ValueError(
                            f"{given_model_t.size} timesteps but {len(sigmas)} sigmas were given; "
                            "pass one timestep per sigma"
                        )
                    timesteps = None
                options["base_sigmas"], num_inference_steps, sigmas = [float(v) for v in sigmas], len(sigmas), None
        if keep_final:
            options["keep_final"] = True
        if grid is None:
            grid = build_grid(
                sched,
                param,
                num_inference_steps=num_inference_steps,
                timesteps=timesteps,
                sigmas=sigmas,
                kind=self._grid_kind(),
                final_time=final,
                **options,
            )
            if repeat_last:  # DEIS's/SA-Solver's flow σ: the last level appended again (their zero-length last step)
                grid = append_final(grid[:-1], float(grid[-2]), sched, zero_length_end=True)
        # The source's zero-length last step: FlowMatch Euler given base sigmas ending in 0 (the flow grid made that
        # 0 its end point, so the grid has one level fewer than given) and LTXEulerAncestralRF given levels both list
        # the end point as a timestep too; the model is evaluated there and the step keeps the sample. The sampler
        # never sees it (a zero-length step would divide by 0 in most); step() answers it.
        noop_tail = given_levels
        if cfg.sigmas_convention == "flow" and "base_sigmas" in options and not repeat_last:
            noop_tail = grid.numel() == len(options["base_sigmas"])
        eval_t = sampler.prepare(grid)
        if noop_tail:
            n_sampler, eval_t = len(eval_t), torch.cat([eval_t, grid[-1:]])
        a, b = param.coefficients(sched, eval_t)
        c_in = param.input_scale(sched, eval_t)
        model_t = param.model_time(sched, eval_t)
        if given_model_t is not None:  # per grid point as given; between grid points (midpoints) interpolated
            knots = given_model_t  # with the no-op evaluation, the last one is the end point's
            if not noop_tail:
                knots = np.concatenate([given_model_t, param.model_time(sched, grid[-1:]).numpy()])
            model_t = torch.from_numpy(np.interp(eval_t.numpy(), grid.numpy()[::-1], knots[::-1])).to(DTYPE)
        if own_levels:
            model_t = self._diffusers_indices(sched, grid, eval_t, model_t)
        starts = getattr(sampler, "step_starts", None)  # "round_steps": the first evaluation of each step
        fed = fed_timesteps(model_t, sched, cfg.timestep_rounding, starts)  # the solver keeps the exact times
        # Commit only now: a failure above leaves the scheduler as it was. The new loop's state replaces the old one
        # whole, owned by this thread (see _LoopState); the assignments below go into it.
        self._state = _LoopState(threading.get_ident(), threading.current_thread().name)
        self._sampler = sampler
        self._eval_times = eval_t
        self._a, self._b, self._c_in = [float(v) for v in a], [float(v) for v in b], [float(v) for v in c_in]
        self._state.fused = self._fused_steps(sampler)
        if cfg.add_noise_level == "step_index":
            self._state.index_times = self._index_times(sampler, eval_t[:n_sampler] if noop_tail else eval_t, grid)
        self._state.noop_from = n_sampler if noop_tail else None
        self._state.unprobed = self._inner_evaluations(sampler, n_sampler if noop_tail else len(eval_t))
        self._t_list = [float(v) for v in fed]
        timesteps_cpu = fed
        if cfg.sigmas_convention != "ve":  # τ = σ/(s + σ) per evaluation, then the end point
            # (LTXEulerAncestralRF's given levels: as given, the end point once, its no-op evaluation's level)
            points = eval_t if noop_tail and cfg.sigmas_convention == "flow_levels" else torch.cat([eval_t, grid[-1:]])
            s_all, sig_all = sched.s(points), sched.sigma(points)  # exact: τ = 1 at t = 1 on the rectified flow
            if float(grid[-1]) == 0.0:
                s_all[-1], sig_all[-1] = 1.0, 0.0
            sigmas_cpu = (sig_all / (s_all + sig_all)).to(torch.float32)
        else:
            s_all, sig_all = schedule_coefficients(sched, grid)
            ve = torch.cat(
                [
                    (sig_all[:-1] / s_all[:-1]),
                    torch.zeros(1, dtype=DTYPE) if float(grid[-1]) == 0 else sig_all[-1:] / s_all[-1:],
                ]
            )
            sigmas_cpu = ve.to(torch.float32)
        # FlowMatch Euler counts its zero-length step (num_inference_steps = len(sigmas given)), LTXEulerAncestralRF not
        steps = int(grid.numel() - 1) + int(noop_tail and cfg.sigmas_convention == "flow")
        # kept before the loop runs: the sampler is still as prepare() left it
        tables = None if key is None else _GridTables(self, key, self._state, timesteps_cpu, sigmas_cpu, steps)
        self._grid_cache = tables
        self.num_inference_steps = steps
        # copies: a caller writing into its timesteps must not reach the kept tables
        self.timesteps, self.sigmas = timesteps_cpu.to(device, copy=True), sigmas_cpu.to(device, copy=True)

    def __getstate__(self):
        # a copy (copy.deepcopy, pickle) computes its own tables at its first set_timesteps
        state = dict(self.__dict__)
        state.pop("_grid_cache", None)
        return state

    def _commit_grid(self, tables: "_GridTables", device) -> None:
        """``set_timesteps`` with the inputs of the last call that computed its tables: a new loop state holding
        them and a copy of the prepared sampler (:class:`_GridTables`), the public tensors copied to ``device``."""
        self._state = tables.loop_state()
        self.timesteps = tables.timesteps.to(device, copy=True)
        self.sigmas = tables.sigmas.to(device, copy=True)
        self.num_inference_steps = tables.num_inference_steps

    def _diffusers_indices(self, sched, grid, eval_t, model_t) -> torch.Tensor:
        """``timestep_rounding="diffusers_round"/"diffusers_floor"``: ``model_t`` with its values at the grid's n
        levels (all points but the end point) replaced by the fractional indices diffusers computes for its own σ̃ of
        the config's respacing flag (``diffusers_table_respaced_timesteps``), which the rounding then rounds or
        truncates. The grid's levels must be those σ̃ (to 1e-6 relative), or the indices would be another grid's."""
        from unisde.grids.diffusers_float32 import diffusers_table_respaced_timesteps

        cfg = self.config
        flags = {
            "use_karras_sigmas": "karras",
            "use_exponential_sigmas": "exponential",
            "use_beta_sigmas": "beta",
            "use_lu_lambdas": "lu",
        }
        flag = next(f for f in flags if cfg[f])  # exactly one: checked at construction
        n = int(grid.numel()) - 1
        levels, index = diffusers_table_respaced_timesteps(sched, n, flags[flag])
        own = (sched.ve_sigma(grid[:n]) / torch.from_numpy(levels) - 1).abs()
        if not bool((own <= 1e-6).all()):
            raise ValueError(
                f"timestep_rounding={cfg.timestep_rounding!r} with {flag}=True feeds the indices of diffusers' "
                f"{flags[flag]} σ̃, but the time grid {self._grid_kind()!r} has other levels (relative difference "
                f"{float(own.max()):.2g}); use the grid the conversion of {flag} gives, or "
                f"timestep_rounding={cfg.timestep_rounding.removeprefix('diffusers_')!r}"
            )
        at_level = {t: i for i, t in enumerate(grid[:n].tolist())}  # evaluations at a level take its index
        fed = [index[at_level[t]] if t in at_level else m for t, m in zip(eval_t.tolist(), model_t.tolist())]
        return torch.tensor(fed, dtype=DTYPE)

    @staticmethod
    def _given_flow_levels(levels, num_inference_steps, mu) -> np.ndarray:
        """``sigmas_convention="flow_levels"``: the levels passed to ``set_timesteps`` (list, array or tensor), in
        float32 as LTXEulerAncestralRFScheduler holds them (float64 array of float32 values), checked: 1-D, at
        least two (one step), in [0, 1], strictly decreasing; ``num_inference_steps``, if given, one fewer."""
        if isinstance(levels, torch.Tensor):
            levels = levels.detach().cpu()
        try:
            values = np.asarray(levels, dtype=np.float64).astype(np.float32).astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"set_timesteps(sigmas=...): flow levels must be numbers, got {levels!r}") from None
        shown = values.tolist()[:8]
        if values.ndim != 1 or values.size < 2:
            raise ValueError(
                f"set_timesteps(sigmas={shown}): ComfyUI-style flow levels are a 1-D list of at least two levels, "
                "the last one the end point (e.g. [1.0, …, 0.0])"
            )
        if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any() or (np.diff(values) >= 0).any():
            raise ValueError(f"set_timesteps(sigmas={shown}): flow levels must decrease strictly within [0, 1]")
        if num_inference_steps is not None and num_inference_steps != values.size - 1:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} but {values.size} levels were given, i.e. "
                f"{values.size - 1} steps (the last level is the end point)"
            )
        if mu is not None:
            raise ValueError(
                f"set_timesteps(mu={mu}) with explicit levels: this scheduler (LTXEulerAncestralRFScheduler) uses "
                "the levels as given, unshifted, so mu cannot apply (diffusers' class ignores it there); pass the "
                "shifted levels themselves, or num_inference_steps with mu"
            )
        return values

    @staticmethod
    def _index_times(sampler, eval_t: torch.Tensor, grid: torch.Tensor) -> tuple[list[float], list[float]]:
        """Per model evaluation k (and one past the last): its time, and the time of the level diffusers' two-stage
        schedulers hold in ``sigmas[k]`` — the evaluation's own at the first call of a step
        (``sampler.step_starts``), the step's end grid point at its later calls (KDPM2's midpoint call); the grid's
        end after the last call."""
        times = [float(t) for t in eval_t] + [float(grid[-1])]
        levels = list(times)
        starts = getattr(sampler, "step_starts", None) or {}
        step = None
        for k in range(len(eval_t)):
            if k in starts:
                step = starts[k]
            elif step is not None:
                levels[k] = float(grid[step + 1])
        return times, levels

    @staticmethod
    def _inner_evaluations(sampler, count: int) -> frozenset:
        """The evaluations (of the sampler's ``count``) after which the sampler returns a point inside a step of
        several evaluations (Heun's Euler predictor, KDPM2's midpoint, a Langevin corrector's iterate), not the
        step's result, in steps of at most :data:`MAX_STAGES_UNPROBED` evaluations: ``step()`` does not probe
        these for NaN (half the probes of a two-stage method; a Langevin level's many iterates are each probed). A
        non-finite inner point makes the sample at the step's next evaluation non-finite, where the probe finds it
        at most two model evaluations later, and the error names the model output of an inner evaluation (kept
        until then: references, no copies) when it was the cause, else the sampler that returned the point."""
        starts = getattr(sampler, "step_starts", None)
        if not starts:
            return frozenset()
        bounds = sorted(k for k in starts if k < count) + [count]
        inner = set()
        for first, end in zip(bounds, bounds[1:]):
            if end - first <= MAX_STAGES_UNPROBED:
                inner.update(range(first, end - 1))
        return frozenset(inner)

    def _fused_steps(self, sampler) -> list[tuple[float, float]] | None:
        """Per evaluation k, x' = α_k x + β_k F straight from the model output F, when nothing needs x̂0: the
        sampler's step is x' = c_x x + c_D x̂0 (``Sampler.affine_steps``), x̂0 = a x + b F is not post-processed
        and not returned (``return_pred_original_sample=False``), so α = c_x + c_D a and β = c_D b (float64).
        One pass per step where α = 1, as FlowMatch Euler's x + (σ' − σ) u; None when this does not apply."""
        steps = sampler.affine_steps
        if steps is None or self._returns_x0 or self._clip is not None:
            return None
        if self._threshold is not None:
            return None
        return [(c_x + c_d * a, c_d * b) for (c_x, c_d), a, b in zip(steps, self._a, self._b)]

    def _init_step_index(self, timestep, state=None):
        st = self._state if state is None else state
        if st.begin_index is not None:
            st.step_index = st.begin_index
            return
        value = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        for k, t in enumerate(st.t_list):
            if abs(t - value) <= 1e-4 * max(1.0, abs(t)):
                st.step_index = k
                return
        shown = ", ".join(f"{t:.6g}" for t in st.t_list[:6]) + (" …" if len(st.t_list) > 6 else "")
        raise ValueError(
            f"timestep {value!r} is not on the current grid ({shown}); call set_timesteps again or pass one of "
            "scheduler.timesteps"
        )

    def _time_of(self, timestep) -> torch.Tensor:
        return self.parameterization.t_from_model_time(
            self.noise_schedule,
            torch.as_tensor(timestep.detach().cpu() if isinstance(timestep, torch.Tensor) else timestep, dtype=DTYPE),
        )

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model's input c_in · x (x itself for ε/x0/v/score models); valid before ``set_timesteps`` too."""
        if self.timesteps is None or timestep is None and self._state.step_index is None:
            if timestep is None:
                return sample
            c = self.parameterization.input_scale(self.noise_schedule, self._time_of(timestep))
            return (
                sample * c.to(sample.dtype).to(sample.device).reshape(c.shape + (1,) * (sample.ndim - c.ndim))
                if c.ndim
                else sample * float(c)
            )
        st = self._owned_state("scale_model_input()")
        if st.step_index is None:
            self._init_step_index(timestep, st)
        c = st.c_in[min(st.step_index, len(st.c_in) - 1)]
        return sample if c == 1.0 else sample * c

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs,
    ):
        """Advance one model evaluation. ``eta`` (DDIM pipelines) applies to samplers with an ``eta`` option
        unless the user fixed it in ``sampler_options``; ``generator`` drives every noise draw.

        Checked here, for a few µs per step: the inputs (floating-point tensors on one real device, matching
        shapes), what the sampler hands back (a tensor of the sample's shape, dtype and device: else a ValueError
        naming the sampler and its distribution) and, with ``check_finite``, NaN/inf in the model output and in the
        new sample (:func:`unisde.sampling.finite_probe`: at once on the CPU, at the last step elsewhere). One
        scheduler runs one loop at a time, in the thread that called ``set_timesteps`` (:class:`_LoopState`)."""
        if self.timesteps is None:
            raise ValueError(
                "step() called before set_timesteps(); call scheduler.set_timesteps(num_inference_steps) first"
            )
        st = self._state
        if st.__dict__.get("owner") != threading.get_ident():  # not yet claimed, or another thread's loop
            st = self._owned_state("step()")
        if st.copied_mid_loop:
            raise ValueError(
                "this scheduler was copied (copy.deepcopy or pickle) in the middle of a sampling loop, which "
                "a copy cannot continue; call set_timesteps on the copy first"
            )
        if not (
            isinstance(model_output, torch.Tensor)
            and isinstance(sample, torch.Tensor)
            and model_output.is_floating_point()
            and sample.is_floating_point()
            and model_output.device == sample.device
            and not sample.is_meta
        ):
            _reject_step_inputs(model_output, sample)
        if st.step_index is None:
            self._init_step_index(timestep, st)
        k = st.step_index
        if k >= len(st.t_list):
            raise ValueError(f"all {len(st.t_list)} steps of the current grid are done; call set_timesteps again")
        extra = None
        if model_output.shape != sample.shape:
            if (
                model_output.ndim == sample.ndim
                and model_output.shape[1] == 2 * sample.shape[1]
                and model_output.shape[2:] == sample.shape[2:]
                and model_output.shape[0] == sample.shape[0]
            ):
                model_output, extra = torch.split(model_output, sample.shape[1], dim=1)
            else:
                raise ValueError(
                    f"model_output has shape {tuple(model_output.shape)} but the sample has {tuple(sample.shape)} "
                    f"(or twice its channels for a learned variance)"
                )
        if model_output.dtype != sample.dtype:
            model_output = model_output.to(sample.dtype)
        if self._check and probe_is_deferred(sample):
            # a deferred flag, read at the last step; on the CPU the new sample's probe below covers the output
            self._check_finite(model_output, k, st)
        sampler = st.sampler
        per_token_timesteps = kwargs.get("per_token_timesteps") if kwargs else None
        if per_token_timesteps is not None:  # LTXConditionPipeline: every token at its own level
            prev, raw, denoised = self._per_token_step(model_output, sample, per_token_timesteps, st), None, None
            st.loop = None
        elif k == st.noop_from:
            # the source's zero-length last step (see set_timesteps): the sample stays; x̂0 at the end point is
            # still what the model says, for pred_original_sample
            prev, raw = sample, None
            denoised = denoised_from_output(sample, model_output, st.a[k], st.b[k]) if self._returns_x0 else None
            st.loop = None
        elif st.fused is not None and extra is None and (not eta or "eta" in sampler.user_options):
            # the sampler's affine step straight from the model output (see _fused_steps); a pipeline's eta > 0
            # changes a deterministic step into a stochastic one and takes the loop below
            alpha, beta = st.fused[k]
            prev, raw, denoised = lincomb(sample, alpha, model_output, beta), None, None
            st.loop = None
        else:
            raw = denoised_from_output(sample, model_output, st.a[k], st.b[k])
            if self._clip is None and self._threshold is None:
                denoised = raw
            elif self._threshold is None and not sampler.reads_raw_denoised and raw is not model_output:
                # a fresh x̂0 that the sampler does not need unclipped: clipped in place, one buffer less
                denoised = raw = raw.clamp_(-self._clip, self._clip)
            else:
                denoised = self._postprocess(raw)
            if use_clipped_model_output is not None and "use_clipped_model_output" in sampler.opts:
                sampler.opts["use_clipped_model_output"] = bool(use_clipped_model_output)
            # the model's own ε where x̂0 was made from it unchanged: a sampler needing ε̂ may take it (Sampler.model_eps)
            eps = model_output if self._eps_output and extra is None else None
            prev = self._advance(k, sample, denoised, raw, extra, generator, eta, st, eps)
        if self._check and k in st.unprobed:
            if sample.is_cpu:  # to name it if the step's end finds NaN (_non_finite_reason); elsewhere its flag does
                st.inner_outputs.append((k, model_output))
        elif self._check:
            ok = finite_probe(prev)
            if ok is False:
                st.step_index, st.loop = None, None
                raise ValueError("sampling stopped: " + self._non_finite_reason(k, sample, model_output, raw, st))
            if st.inner_outputs:
                st.inner_outputs = []
            if ok is not True:
                st.finite_flags.append(("sample", k, ok))
        st.step_index = k + 1
        shown = getattr(sampler, "output_denoised", None)  # LCM: x̂0 after its boundary condition
        if shown is not None and k != st.noop_from:
            denoised = shown
        if st.step_index == len(st.t_list):
            self._finish(prev, st)
        if not self._returns_x0:  # the source class's output has no x̂0 (FlowMatch Euler)
            return UnifiedSchedulerOutput.of(prev) if return_dict else (prev,)
        if not return_dict:
            return prev, denoised
        return UnifiedSchedulerOutput.of(prev, denoised)

    @staticmethod
    def _non_finite_reason(k, sample, model_output, raw, st) -> str:
        """Why the sample returned at evaluation k is not finite (:func:`unisde.sampling.non_finite_origin`); where
        the sample passed in is the unprobed inner point the sampler returned at k − 1 (:meth:`_inner_evaluations`),
        that evaluation is named."""
        where = f"step {k} (timestep {st.t_list[k]:.6g})"
        if k - 1 in st.unprobed and not all_finite(sample):
            for j, output in st.inner_outputs:
                if not all_finite(output):
                    return (
                        f"the model output at step {j} (timestep {st.t_list[j]:.6g}) contains NaN or inf (found at "
                        f"the end of its step, {where})"
                    )
            from unisde.plugins import describe_origin

            return (
                f"the sample passed in at {where} contains NaN or inf: it is an inner point of a multi-stage step "
                f"that {describe_origin('sampler', st.sampler)} returned from finite model outputs (inner points "
                "are checked at the step's end)"
            )
        return non_finite_origin(where, sample, model_output, "model output", raw, st.sampler)

    def _per_token_step(self, model_output, sample, per_token_timesteps, st) -> torch.Tensor:
        """FlowMatch Euler's step with ``per_token_timesteps`` (LTXConditionPipeline's conditioning tokens sit at
        lower levels than the rest): token j goes from its own level τ_j = timestep_j / N down to the largest level
        of ``sigmas`` below it (10⁻⁶ tolerance), x_j + (τ_j − τ'_j) F_j, in float32 and left there, as diffusers
        computes it. The sign is the source's: with per-token timesteps it steps by τ − τ' > 0, and the pipeline
        passes F = −u. Only FlowMatch Euler's own step (deterministic ``ddim`` on a flow grid) has this form; any
        other sampler is refused rather than stepped at one level for all tokens."""
        if (
            self.config.sigmas_convention == "ve"
            or self.config.sampler != "ddim"
            or self.config.parameterization != "flow_prediction"
            or st.fused is None  # ddim's one-pass affine step: η = 0, no x̂0 returned or clipped
        ):
            raise ValueError(
                "step(per_token_timesteps=...): per-token levels (LTXConditionPipeline) are reproduced for "
                "FlowMatchEulerDiscreteScheduler's own step only (its conversion: sampler 'ddim', eta=0, on a "
                f"flow grid); this scheduler runs sampler {self.config.sampler!r}"
                + ("" if self.config.sigmas_convention != "ve" else " on a VE-view grid")
                + ". Use the FlowMatch Euler conversion for this pipeline"
            )
        tau = torch.as_tensor(per_token_timesteps, device=sample.device) / self.config.num_train_timesteps
        levels = self.sigmas.to(sample.device)[:, None, None]
        below = ((levels < tau[None] - 1e-6) * levels).max(dim=0).values
        return sample.to(torch.float32) + (tau - below)[..., None] * model_output

    def _owned_state(self, what: str = "step()") -> _LoopState:
        """The current loop state, claimed by the calling thread when nobody owns it yet (a copy); a ValueError
        when another thread owns it: one scheduler holds one loop's state, and two threads stepping it would
        silently mix their samples."""
        st = self._state
        me = threading.get_ident()
        owner = st.__dict__.setdefault("owner", me)  # atomic: two threads claiming at once cannot both win
        if owner == me:
            return st
        names = {t.ident: t.name for t in threading.enumerate()}
        owner_name = st.__dict__.get("owner_name") or names.get(owner, f"ident {owner}")
        raise ValueError(
            f"UnifiedScheduler used by two threads at once: thread {threading.current_thread().name!r} "
            f"called {what} while the current sampling loop belongs to thread {owner_name!r} (set_timesteps "
            "was called there). A scheduler holds the state of one loop, so sharing one would silently mix "
            "the threads' samples. Give each thread its own scheduler: copy.deepcopy(scheduler) (cheap), or "
            "call set_timesteps in the thread that steps."
        )

    def _advance(self, k, sample, denoised, raw, extra, generator, eta, state=None, model_eps=None):
        """Send evaluation k's (sample, x̂0) into the sampler's loop and return the sample it asks for next (or its
        final sample), checked to be a tensor like the sample. A loop is (re)started when evaluation k is not the
        one the running loop waits for: the first call, or a pipeline entering the grid mid-way (img2img). An
        exception raised inside the loop gets a note naming the sampler and its distribution."""
        st = self._state if state is None else state
        sampler = st.sampler
        sampler.generator, sampler.pipeline_eta, sampler.raw_denoised, sampler.extra = generator, eta, raw, extra
        sampler.model_eps = model_eps
        try:
            if st.loop is None or k != st.loop_next:
                st.loop = sampler.loop(sample, k)
                next(st.loop)
            try:
                prev = st.loop.send((sample, denoised))
            except StopIteration as done:
                st.loop, prev = None, done.value
            else:
                st.loop_next = k + 1
            # read during the send only: not kept alive through the next model call
            sampler.raw_denoised = sampler.extra = sampler.model_eps = None
            check_sampler_output(sampler, prev, sample, k)
        except Exception as exc:
            st.loop, st.step_index = None, None
            if not isinstance(exc, ValueError) and hasattr(exc, "add_note"):
                from unisde.plugins import describe_origin

                exc.add_note(f"raised inside the loop of {describe_origin('sampler', sampler)} at model evaluation {k}")
            raise
        return prev

    def _check_finite(self, model_output, k, state=None):
        """The model output's finiteness probe (:func:`unisde.sampling.finite_probe`): on the CPU a ValueError
        naming the step at once; elsewhere a flag read at the last step (:meth:`_finish`). The final sample gets a
        full check there, and a NaN anywhere in any output propagates into it, so none escapes silently.

        ``step()`` calls it off the CPU only: there a NaN is found at the last step, and the flag says whether the
        model or the sampler made it. On the CPU the new sample's probe alone is read at every step (one probe
        instead of two: a step's model output always enters that step's sample, where NaN·0 is still NaN), and
        :func:`unisde.sampling.non_finite_origin` then names the model output when it is the cause."""
        st = self._state if state is None else state
        ok = finite_probe(model_output)
        if ok is False:
            st.step_index = None
            raise ValueError(
                f"the model output at step {k} (timestep {st.t_list[k]:.6g}) contains NaN or inf; "
                "sampling stopped before it reached the sample"
            )
        if ok is not True:
            st.finite_flags.append(("model", k, ok))

    def _finish(self, prev: torch.Tensor, state=None):
        st = self._state if state is None else state
        flags, st.finite_flags = st.finite_flags, []
        if not self._check:
            return
        if flags:  # one device synchronisation for the whole loop
            bad = (~torch.stack([flag for _, _, flag in flags])).nonzero()
            if bad.numel():
                kind, k, _ = flags[int(bad[0])]
                st.step_index = None
                if kind == "model":
                    raise ValueError(f"the model output at step {k} (timestep {st.t_list[k]:.6g}) contained NaN or inf")
                from unisde.plugins import describe_origin

                raise ValueError(
                    f"the sample returned by {describe_origin('sampler', st.sampler)} at step {k} (timestep "
                    f"{st.t_list[k]:.6g}) contained NaN or inf although the model output's probe was finite"
                )
        # on the CPU, step()'s probe of this very sample just read all of it when the probe is complete
        complete = not probe_is_deferred(prev) and probe_is_complete(prev)
        if not complete and not all_finite(prev):
            st.step_index = None
            raise ValueError(
                f"the final sample contains NaN or inf: a model output, or the sampler's arithmetic, at or "
                f"before the last step (step {len(st.t_list) - 1}, timestep {st.t_list[-1]:.6g}) was not finite"
            )

    def _postprocess(self, x0: torch.Tensor) -> torch.Tensor:
        if self._threshold is not None:
            return _dynamic_threshold(x0, *self._threshold)
        if self._clip is not None:
            return x0.clamp(-self._clip, self._clip)
        return x0

    # ------------------------------------------------------------------ ScoreSdeVePipeline interface
    @_serialised
    def set_sigmas(
        self,
        num_inference_steps: int,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sampling_eps: float | None = None,
    ):
        """ScoreSdeVePipeline's loop: per pipeline step i it feeds the model ``sigmas[i]``, calls ``step_correct``
        ``config.correct_steps`` times and ``step_pred`` once. Here the pipeline steps are the runs of equal
        evaluation times of the sampler (``pc``: correct_steps + 1 evaluations at each grid time; one-call
        samplers: one; Heun: the second stage of step i − 1 and the first of step i share t_i); a run shorter
        than correct_steps + 1 makes the first corrector calls no-ops. ``timesteps`` / ``sigmas`` then list one
        entry per run. The noise range is the config's (σ_min, σ_max, sampling_eps); other values are a ValueError.
        """
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("sampling_eps", sampling_eps)):
            if (
                value is not None
                and self.config.get(name) is not None
                and not math.isclose(float(value), float(self.config[name]), rel_tol=1e-6)
            ):
                raise ValueError(
                    f"set_sigmas({name}={value}) differs from the scheduler config's {name}={self.config[name]}; "
                    "the noise range is fixed by the config"
                )
        if self._eval_times is None or self.num_inference_steps != num_inference_steps or getattr(self, "_runs", None):
            self.set_timesteps(num_inference_steps)
        self._owned_state("set_sigmas()")
        per_call = int(self.config.correct_steps) + 1
        runs, starts = [], []
        for k, t in enumerate(self._t_list):
            if runs and t == self._t_list[k - 1]:
                runs[-1] += 1
            else:
                runs.append(1)
                starts.append(k)
        if max(runs) > per_call:
            raise ValueError(
                f"sampler {self.config.sampler!r} evaluates the model {max(runs)} times at one time, but "
                f"ScoreSdeVePipeline makes correct_steps + 1 = {per_call} calls per step; set correct_steps >= "
                f"{max(runs) - 1}"
            )
        device = self.timesteps.device
        self._runs, self._run_index, self._run_calls = runs, 0, 0
        self.timesteps = torch.tensor([self._t_list[k] for k in starts], dtype=self.timesteps.dtype, device=device)
        s, sigma = schedule_coefficients(self.noise_schedule, self._eval_times[starts])
        self.sigmas = (sigma / s).to(torch.float32).to(device)
        self._step_index = 0

    def _run_call(self, model_output, sample, generator, final: bool):
        st = self._owned_state("step_correct()/step_pred()")
        runs = st.runs
        if not runs:
            raise ValueError(
                "step_correct/step_pred need set_sigmas(num_inference_steps) first (ScoreSdeVePipeline calls it)"
            )
        i = st.run_index
        if i >= len(runs):
            raise ValueError(f"all {len(runs)} steps of the current grid are done; call set_sigmas again")
        per_call = int(self.config.correct_steps) + 1
        call = st.run_calls
        if final and call != per_call - 1 or not final and call >= per_call - 1:
            raise ValueError(
                f"ScoreSdeVe loop out of order at step {i}: expected {per_call - 1} step_correct calls before step_pred"
            )
        st.run_calls = call + 1
        if call < per_call - runs[i]:  # this run has fewer evaluations than the pipeline makes calls
            return sample
        return self.step(model_output, st.t_list[st.step_index], sample, generator=generator).prev_sample

    def step_correct(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """A corrector call of ScoreSdeVePipeline (see :meth:`set_sigmas`)."""
        prev = self._run_call(model_output, sample, generator, final=False)
        return UnifiedSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def step_pred(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """The predictor call of ScoreSdeVePipeline (see :meth:`set_sigmas`). ``prev_sample_mean`` equals
        ``prev_sample``: the pipeline reads it after the last step only, where samplers return the noise-free
        mean (``pc``'s final predictor step adds no noise)."""
        st = self._state
        prev = self._run_call(model_output, sample, generator, final=True)
        st.run_index += 1
        st.run_calls = 0
        if not return_dict:
            return prev, prev
        return SdeVeCompatibleOutput(prev_sample=prev, prev_sample_mean=prev)

    # ------------------------------------------------------------------ forward process helpers
    def _s_sigma(self, timesteps, like: torch.Tensor, noising: bool = False):
        found = self._grid_lookup(timesteps, noising)
        if found is None:
            t = self._time_of(timesteps).reshape(-1)
            s, sigma = self.noise_schedule.s(t), self.noise_schedule.sigma(t)  # exact marginal (s(1) = 0 included)
        else:
            t, level = found
            s, sigma = self.noise_schedule.s(t), self.noise_schedule.sigma(t)
            if level is not None:  # the VE level of another time in the space of this evaluation (step_index)
                sigma = s * self.noise_schedule.ve_sigma(level)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return s.to(like.device, like.dtype).reshape(shape), sigma.to(like.device, like.dtype).reshape(shape)

    def _grid_lookup(self, timesteps, noising: bool = False):
        """(times, None) for timesteps on the current grid, as diffusers' schedulers look their σ up by index: the
        model's timestep need not be t·N there (rounded on Karras σ, ⌊τN⌋ on flow grids, CogView4's unshifted
        timesteps) while the sample sits at the exact grid level; None when any value is not on the grid or no loop
        is set (then the timestep's own time counts). With ``add_noise_level="step_index"`` (``noising``): (times,
        levels), the VE level σ̃ of ``levels`` taken in the space of the evaluation at ``times`` (x = s(t)(x0 + σ̃ ε),
        where the pipeline's sample lives), at diffusers' index: during a loop (``begin_index`` set) the current
        step index whatever the timestep, else the timestep's index (the second of two equal timesteps, as
        diffusers' ``index_for_timestep``); :meth:`_index_times` gives the levels."""
        st = self._state
        if st.eval_times is None:
            return None
        values = torch.as_tensor(
            timesteps.detach().cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=DTYPE
        ).reshape(-1)
        by_index = noising and st.index_times is not None
        if by_index and st.begin_index is not None:
            k = st.step_index if st.step_index is not None else st.begin_index
            k = min(k, len(st.index_times[0]) - 1)
            times, levels = (torch.full(values.shape, table[k], dtype=DTYPE) for table in st.index_times)
            return times, levels
        grid = torch.tensor(st.t_list, dtype=DTYPE)
        hit = (grid[None, :] - values[:, None]).abs() <= 1e-4 * grid.abs().clamp(min=1.0)[None, :]
        if not bool(hit.any(dim=1).all()):
            return None
        if by_index:  # the second of two equal timesteps (Heun-type lists), else the only one
            count = hit.to(torch.int8).cumsum(dim=1)
            index = count.eq(torch.clamp(count[:, -1:], max=2)).to(torch.int8).argmax(dim=1)
            return tuple(torch.tensor(table, dtype=DTYPE)[index] for table in st.index_times)
        return st.eval_times.to(DTYPE)[hit.to(torch.int8).argmax(dim=1)], None

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = s(t) x0 + σ(t) ε at the model timesteps given (any device); a timestep of the current grid means its
        grid level (see :meth:`_grid_lookup`, which also describes ``add_noise_level="step_index"``)."""
        s, sigma = self._s_sigma(timesteps, original_samples, noising=True)
        return s * original_samples + sigma * noise

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_i = s(t_i)² at the training indices' times t_i = (i + 1)/N (float32, as diffusers' schedulers hold it;
        diffusers' ``compute_snr`` and training scripts read it). For a table these are its own entries."""
        if getattr(self, "_alphas_cumprod", None) is None:
            n = int(self.noise_schedule.num_train_timesteps or self.config.num_train_timesteps)
            t = torch.arange(1, n + 1, dtype=DTYPE) / n
            self._alphas_cumprod = (self.noise_schedule.s(t) ** 2).to(torch.float32)
        return self._alphas_cumprod

    @property
    def alphas(self) -> torch.Tensor:
        """α_i = ᾱ_i / ᾱ_{i−1} (α_0 = ᾱ_0), float32."""
        abar = self.alphas_cumprod.to(DTYPE)
        return torch.cat([abar[:1], abar[1:] / abar[:-1]]).to(torch.float32)

    @property
    def betas(self) -> torch.Tensor:
        """β_i = 1 − α_i, float32."""
        return (1.0 - self.alphas.to(DTYPE)).to(torch.float32)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """FlowMatch pipelines' forward noising (img2img/inpaint): x_t = s(t) x0 + σ(t) ε at the given model
        timestep(s) — (1 − t) x0 + t ε on the rectified flow."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = (s ε − σ x0)/√(s² + σ²) (diffusers' v for VP schedules), ``sample`` being x0."""
        s, sigma = self._s_sigma(timesteps, sample)
        return (s * noise - sigma * sample) / torch.sqrt(s * s + sigma * sigma)


# Saved pipelines record a scheduler by its class's module; keep naming the stable public path (unisde/scheduler.py).
UnifiedScheduler.__module__ = "unisde.scheduler"


def _reject_step_inputs(model_output, sample) -> None:
    """The ValueError for step() inputs that are not floating-point tensors on one real device."""
    if not isinstance(model_output, torch.Tensor) or not model_output.is_floating_point():
        raise ValueError(
            f"model_output must be a floating-point tensor, got "
            f"{getattr(model_output, 'dtype', type(model_output).__name__)}"
        )
    if not isinstance(sample, torch.Tensor) or not sample.is_floating_point():
        raise ValueError(
            f"sample must be a floating-point tensor, got {getattr(sample, 'dtype', type(sample).__name__)}"
        )
    if sample.is_meta or model_output.is_meta:
        raise ValueError(
            "the sample or model output is on the meta device (a tensor without data, as a model "
            "initialised with init_empty_weights / device='meta' returns): load real weights and move "
            "the model and the sample to a real device before sampling"
        )
    raise ValueError(
        f"model_output is on {model_output.device} but the sample is on {sample.device}; move both to one device"
    )


@dataclass
class UnifiedSchedulerOutput(BaseOutput):
    """``prev_sample`` and ``pred_original_sample`` (x̂0 after clipping/thresholding)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # BaseOutput's generic version (a first field that may be a dict, field introspection) does the same for
        # these two known fields at several times the cost, once per step
        OrderedDict.__setitem__(self, "prev_sample", self.prev_sample)
        if self.pred_original_sample is not None:
            OrderedDict.__setitem__(self, "pred_original_sample", self.pred_original_sample)

    @classmethod
    def of(cls, prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None = None):
        """The object the constructor makes (both fields as attributes, the non-None ones as keys, in order), without
        the dataclass ``__init__`` and BaseOutput's ``__setattr__``: step() builds one per call, and this takes a
        third of the time."""
        out = cls.__new__(cls)
        object.__setattr__(out, "prev_sample", prev_sample)
        object.__setattr__(out, "pred_original_sample", pred_original_sample)
        OrderedDict.__setitem__(out, "prev_sample", prev_sample)
        if pred_original_sample is not None:
            OrderedDict.__setitem__(out, "pred_original_sample", pred_original_sample)
        return out


@dataclass
class SdeVeCompatibleOutput(BaseOutput):
    """``step_pred``'s output for ScoreSdeVePipeline: ``prev_sample`` and ``prev_sample_mean``."""

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor


def _dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): clip x̂0 to the ratio-quantile of |x̂0| per sample."""
    dtype = x0.dtype
    flat = (
        x0.float().reshape(x0.shape[0], -1)
        if dtype not in (torch.float32, torch.float64)
        else x0.reshape(x0.shape[0], -1)
    )
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)
