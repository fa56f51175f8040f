r"""UnifiedScheduler: a drop-in diffusers scheduler running any registered sampler on any model.

    pipe.scheduler = UnifiedScheduler.from_config(pipe.scheduler.config, sampler="edm")

The adapter is thin: ``set_timesteps`` asks the sampler for its time grid and precomputes, per
model evaluation, the parameterisation's coefficients (x̂0 = a x + b F, input scale c_in) and the model
timestep; ``step`` converts the model output to x̂0, applies clipping/thresholding and hands it to the sampler.
The sample passed in and out always lives in the model's own space x = s x0 + σ ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from unisde._tensor import DTYPE, unknown_name_error
from unisde.parameterizations import schedule_coefficients
from unisde.plugins import get_parameterization, get_sampler, list_samplers
from unisde.grids import GRIDS, append_final, grid_from_sigmas, make_grid
from unisde.core.schedule import NoiseSchedule

COMPATIBLE_SCHEDULERS = [
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
    "EDMEulerScheduler", "ScoreSdeVeScheduler",
]

# The sampler that reproduces each diffusers scheduler's algorithm (used when converting without `sampler=`).
_DEFAULT_SAMPLER = {
    "DDPMScheduler": ("ddpm", {}), "DDIMScheduler": ("ddim", {}), "EulerDiscreteScheduler": ("edm", {"solver": "euler"}),
    "EulerAncestralDiscreteScheduler": ("ddim", {"eta": 1.0}), "HeunDiscreteScheduler": ("edm", {}),
    "EDMEulerScheduler": ("edm", {"solver": "euler"}), "ScoreSdeVeScheduler": ("pc", {}),
    "LMSDiscreteScheduler": ("lms", {}), "UniPCMultistepScheduler": ("unipc", {}),
}
_MULTISTEP = ("PNDMScheduler", "DPMSolverMultistepScheduler")


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
        time_grid: one of ``leading``, ``trailing``, ``linspace``, ``linspace_fractional``, ``uniform_t``, ``uniform_lambda``, ``karras``;
            None picks the sampler's preference (``edm``: karras) or the config's spacing.
        parameterization: a registered parameterisation that overrides ``prediction_type`` (None: use
            ``prediction_type``). Conversions from EDMEuler-type configs set it to ``"edm"`` and keep their
            ``prediction_type="epsilon"`` (diffusers' name for EDM's preconditioned network), so that
            ``EDMEulerScheduler.from_config(unified.config)`` gets its own value back.
        t_min, t_max: the time range sampled (defaults: see :func:`unisde.samplers.grids.default_time_range`).
        check_finite: raise a ValueError naming the step when the model output is not finite.
    """

    _compatibles = list(COMPATIBLE_SCHEDULERS)

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
        lambda_min_clipped: float = -float("inf"),
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        predict_x0: bool = True,
        disable_corrector: list = (),
        solver_p: Any = None,
        shift_terminal: float | None = None,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        rho: float = 7.0,
        snr: float = 0.15,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
        sampler: str = "ddpm",
        sampler_options: dict | None = None,
        schedule: str | dict | None = None,
        time_grid: str | None = None,
        t_min: float | None = None,
        t_max: float | None = None,
        check_finite: bool = True,
    ):
        if use_flow_sigmas or use_beta_sigmas or use_dynamic_shifting:
            flag = "use_flow_sigmas" if use_flow_sigmas else "use_beta_sigmas" if use_beta_sigmas else "use_dynamic_shifting"
            raise ValueError(f"{flag}=True is not supported by UnifiedScheduler; supported time grids: {', '.join(GRIDS)}")
        if time_grid is not None and time_grid not in GRIDS:
            raise unknown_name_error("time_grid", time_grid, GRIDS)
        if timestep_spacing not in ("leading", "trailing", "linspace"):
            raise unknown_name_error("timestep_spacing", timestep_spacing, ("leading", "trailing", "linspace"))
        if schedule is not None:
            self.noise_schedule = NoiseSchedule.from_config(schedule)
        else:
            self.noise_schedule = NoiseSchedule.from_diffusers_config(
                {"num_train_timesteps": num_train_timesteps, "beta_start": beta_start, "beta_end": beta_end,
                 "beta_schedule": beta_schedule, "trained_betas": trained_betas, "rescale_betas_zero_snr": rescale_betas_zero_snr})
        param_name = parameterization or prediction_type
        param_options = {"sigma_data": sigma_data} if param_name == "edm" else {}
        self.parameterization = get_parameterization(param_name, **param_options)
        self.sampler_cls = get_sampler(sampler)
        self.sampler_options = self._sampler_options(sampler_options)
        # Validate now so a bad option fails at construction, before any work.
        self._sampler = self.sampler_cls(self.noise_schedule, self.parameterization, **self.sampler_options)
        # x̂0 post-processing flags, read once here rather than through the config on every step.
        self._threshold = (dynamic_thresholding_ratio, sample_max_value) if thresholding else None
        self._clip = float(clip_sample_range) if clip_sample and not thresholding else None
        self._check = bool(check_finite)
        self.timesteps = None
        self.num_inference_steps = None
        self.sigmas = None
        self._step_index = None
        self._begin_index = None
        self._eval_times = None
        self._runs = None  # ScoreSdeVePipeline mode (set_sigmas)

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
        """As diffusers' ``from_config``; converting another scheduler's config keeps its forward process,
        parameterisation, spacing and clipping, and (without ``sampler=``) picks the unisde sampler that
        implements the same algorithm."""
        if config is not None and hasattr(config, "config") and not isinstance(config, dict):
            config = config.config
        cfg = dict(config or {})
        # diffusers would replace values the source scheduler left at *its* defaults by ours; unisde keeps the
        # source's values (its clipping, spacing, …), which is what a conversion should preserve.
        cfg.pop("_use_default_values", None)
        derived = _derived_keys(cfg, kwargs)
        return super().from_config({**cfg, **derived}, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------ diffusers contract
    @property
    def order(self) -> int:
        return int(getattr(self._sampler, "order", 1))

    @property
    def init_noise_sigma(self) -> float:
        """Std of the starting noise in model space, √(s² + σ²) at the first evaluation time (unit data)."""
        t = self._eval_times[0] if self._eval_times is not None else 1.0
        s, sigma = schedule_coefficients(self.noise_schedule, t)
        return float(torch.sqrt(s**2 + sigma**2))

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = int(begin_index)

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

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list | None = None, sigmas: list | None = None, mu: float | None = None):
        """Choose the time grid and precompute every coefficient (float64, cast once to the sample's dtype).

        Exactly one of ``num_inference_steps``, ``timesteps`` (on the model's timestep scale, descending) and
        ``sigmas`` (VE-view noise levels σ̃, descending) must be given.
        """
        given = [x is not None for x in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError("pass exactly one of num_inference_steps, timesteps or sigmas")
        if mu is not None:
            raise ValueError("mu (dynamic time shifting) only applies to flow-matching schedules, which UnifiedScheduler does not support")
        cfg = self.config
        sched, param = self.noise_schedule, self.parameterization
        sampler = self.sampler_cls(sched, param, **self.sampler_options)
        final = 0.0
        if getattr(sampler, "final_from_config", False) and not cfg.set_alpha_to_one and sched.is_discrete:
            final = 1.0 / sched.num_train_timesteps
        if cfg.final_sigmas_type == "sigma_min" and sched.is_discrete:
            final = 1.0 / sched.num_train_timesteps  # the multistep schedulers' last step ends at the table's σ_min
        if timesteps is not None:
            ts = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64)
            if ts.ndim != 1 or ts.size == 0:
                raise ValueError("timesteps must be a non-empty 1-D sequence")
            grid = append_final(param.t_from_model_time(sched, torch.as_tensor(ts)), final, sched)
        elif sigmas is not None:
            grid = grid_from_sigmas(sched, sigmas.cpu() if isinstance(sigmas, torch.Tensor) else sigmas, final)
        else:
            t_min = cfg.t_min
            grid = make_grid(sched, num_inference_steps, self._grid_kind(), t_min=t_min, t_max=cfg.t_max,
                             rho=cfg.rho, steps_offset=cfg.steps_offset, final_time=final)
        eval_t = sampler.prepare(grid)
        a, b = param.coefficients(sched, eval_t)
        c_in = param.input_scale(sched, eval_t)
        model_t = param.model_time(sched, eval_t)
        # Commit only now: a failure above leaves the scheduler as it was.
        self._sampler = sampler
        self._eval_times = eval_t
        self._a, self._b, self._c_in = [float(v) for v in a], [float(v) for v in b], [float(v) for v in c_in]
        self._t_list = [float(v) for v in model_t]
        integral = sched.is_discrete and bool(torch.all(model_t == torch.round(model_t)))
        self.timesteps = (model_t.round().to(torch.int64) if integral else model_t.to(torch.float32)).to(device)
        s_all, sig_all = schedule_coefficients(sched, grid)
        ve = torch.cat([(sig_all[:-1] / s_all[:-1]), torch.zeros(1, dtype=DTYPE) if float(grid[-1]) == 0 else sig_all[-1:] / s_all[-1:]])
        self.sigmas = ve.to(torch.float32).to(device)
        self.num_inference_steps = int(grid.numel() - 1)
        self._step_index = None
        self._begin_index = None
        self._finite_flags = []
        self._runs = None

    def _init_step_index(self, timestep):
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        value = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        for k, t in enumerate(self._t_list):
            if abs(t - value) <= 1e-4 * max(1.0, abs(t)):
                self._step_index = k
                return
        shown = ", ".join(f"{t:.6g}" for t in self._t_list[:6]) + (" …" if len(self._t_list) > 6 else "")
        raise ValueError(f"timestep {value!r} is not on the current grid ({shown}); call set_timesteps again or pass one of scheduler.timesteps")

    def _time_of(self, timestep) -> torch.Tensor:
        return self.parameterization.t_from_model_time(self.noise_schedule, torch.as_tensor(
            timestep.detach().cpu() if isinstance(timestep, torch.Tensor) else timestep, dtype=DTYPE))

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model's input c_in · x (x itself for ε/x0/v/score models); valid before ``set_timesteps`` too."""
        if self.timesteps is None or timestep is None and self._step_index is None:
            if timestep is None:
                return sample
            c = self.parameterization.input_scale(self.noise_schedule, self._time_of(timestep))
            return sample * c.to(sample.dtype).to(sample.device).reshape(c.shape + (1,) * (sample.ndim - c.ndim)) if c.ndim else sample * float(c)
        if self._step_index is None:
            self._init_step_index(timestep)
        c = self._c_in[min(self._step_index, len(self._c_in) - 1)]
        return sample if c == 1.0 else sample * c

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float | None = None,
             use_clipped_model_output: bool | None = None, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True, **kwargs):
        """Advance one model evaluation. ``eta`` (DDIM pipelines) applies to samplers with an ``eta`` option
        unless the user fixed it in ``sampler_options``; ``generator`` drives every noise draw."""
        if self.timesteps is None:
            raise ValueError("step() called before set_timesteps(); call scheduler.set_timesteps(num_inference_steps) first")
        if self._step_index is None:
            self._init_step_index(timestep)
        k = self._step_index
        if k >= len(self._t_list):
            raise ValueError(f"all {len(self._t_list)} steps of the current grid are done; call set_timesteps again")
        if not isinstance(model_output, torch.Tensor) or not model_output.is_floating_point():
            raise ValueError(f"model_output must be a floating-point tensor, got {getattr(model_output, 'dtype', type(model_output).__name__)}")
        extra = None
        if model_output.shape != sample.shape:
            if model_output.ndim == sample.ndim and model_output.shape[1] == 2 * sample.shape[1] and model_output.shape[2:] == sample.shape[2:] and model_output.shape[0] == sample.shape[0]:
                model_output, extra = torch.split(model_output, sample.shape[1], dim=1)
            else:
                raise ValueError(f"model_output has shape {tuple(model_output.shape)} but the sample has {tuple(sample.shape)} "
                                 f"(or twice its channels for a learned variance)")
        if model_output.dtype != sample.dtype:
            model_output = model_output.to(sample.dtype)
        if self._check:
            self._check_finite(model_output, k)
        a, b = self._a[k], self._b[k]
        raw = (model_output if b == 1.0 else model_output * b) if a == 0.0 else torch.add(sample * a, model_output, alpha=b)
        denoised = raw if self._clip is None and self._threshold is None else self._postprocess(raw)
        if use_clipped_model_output is not None and "use_clipped_model_output" in self._sampler.opts:
            self._sampler.opts["use_clipped_model_output"] = bool(use_clipped_model_output)
        prev = self._sampler.step(k, sample, denoised, raw_denoised=raw, extra=extra, generator=generator, eta=eta)
        self._step_index = k + 1
        if self._step_index == len(self._t_list):
            self._finish(prev)
        if not return_dict:
            return prev, denoised
        return UnifiedSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)

    _FINITE_PROBE = 1024

    def _check_finite(self, model_output, k):
        """Per step, a strided probe of ~1k elements of the output (a few µs, names the step in the usual case
        of a NaN/inf spreading through the output); the final sample gets a full check in :meth:`_finish`, and a
        NaN anywhere in any output propagates element-wise into it, so none escapes silently."""
        n = model_output.numel()
        if n > 2 * self._FINITE_PROBE and model_output.is_contiguous():
            probe = model_output.as_strided((self._FINITE_PROBE,), (n // self._FINITE_PROBE,))
        else:
            probe = model_output
        if model_output.device.type == "cpu":
            if not math.isfinite(probe.sum().item()):
                self._step_index = None
                raise ValueError(f"the model output at step {k} (timestep {self._t_list[k]:.6g}) contains NaN or inf; "
                                 "sampling stopped before it reached the sample")
        else:  # deferred: no device synchronisation until the last step
            self._finite_flags.append(torch.isfinite(probe.sum()))

    def _finish(self, prev: torch.Tensor):
        flags = self._finite_flags
        self._finite_flags = []
        if not self._check:
            return
        if flags:
            bad = (~torch.stack(flags)).nonzero()
            if bad.numel():
                k = int(bad[0])
                self._step_index = None
                raise ValueError(f"the model output at step {k} (timestep {self._t_list[k]:.6g}) contained NaN or inf")
        if not bool(torch.isfinite(prev).all()):
            self._step_index = None
            raise ValueError(f"the final sample contains NaN or inf: a model output at or before the last step "
                             f"(step {len(self._t_list) - 1}, timestep {self._t_list[-1]:.6g}) was not finite")

    def _postprocess(self, x0: torch.Tensor) -> torch.Tensor:
        if self._threshold is not None:
            return _dynamic_threshold(x0, *self._threshold)
        if self._clip is not None:
            return x0.clamp(-self._clip, self._clip)
        return x0

    # ------------------------------------------------------------------ ScoreSdeVePipeline interface
    def set_sigmas(self, num_inference_steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                   sampling_eps: float | None = None):
        """ScoreSdeVePipeline's loop: per pipeline step i it feeds the model ``sigmas[i]``, calls ``step_correct``
        ``config.correct_steps`` times and ``step_pred`` once. Here the pipeline steps are the runs of equal
        evaluation times of the sampler (``pc``: correct_steps + 1 evaluations at each grid time; one-call
        samplers: one; Heun: the second stage of step i − 1 and the first of step i share t_i); a run shorter
        than correct_steps + 1 makes the first corrector calls no-ops. ``timesteps`` / ``sigmas`` then list one
        entry per run. The noise range is the config's (σ_min, σ_max, sampling_eps); other values are a ValueError.
        """
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("sampling_eps", sampling_eps)):
            if value is not None and self.config.get(name) is not None and not math.isclose(float(value), float(self.config[name]), rel_tol=1e-6):
                raise ValueError(f"set_sigmas({name}={value}) differs from the scheduler config's {name}={self.config[name]}; "
                                 "the noise range is fixed by the config")
        if self._eval_times is None or self.num_inference_steps != num_inference_steps or getattr(self, "_runs", None):
            self.set_timesteps(num_inference_steps)
        per_call = int(self.config.correct_steps) + 1
        runs, starts = [], []
        for k, t in enumerate(self._t_list):
            if runs and t == self._t_list[k - 1]:
                runs[-1] += 1
            else:
                runs.append(1)
                starts.append(k)
        if max(runs) > per_call:
            raise ValueError(f"sampler {self.config.sampler!r} evaluates the model {max(runs)} times at one time, but "
                             f"ScoreSdeVePipeline makes correct_steps + 1 = {per_call} calls per step; set correct_steps >= {max(runs) - 1}")
        device = self.timesteps.device
        self._runs, self._run_index, self._run_calls = runs, 0, 0
        self.timesteps = torch.tensor([self._t_list[k] for k in starts], dtype=self.timesteps.dtype, device=device)
        s, sigma = schedule_coefficients(self.noise_schedule, self._eval_times[starts])
        self.sigmas = (sigma / s).to(torch.float32).to(device)
        self._step_index = 0

    def _run_call(self, model_output, sample, generator, final: bool):
        runs = getattr(self, "_runs", None)
        if not runs:
            raise ValueError("step_correct/step_pred need set_sigmas(num_inference_steps) first (ScoreSdeVePipeline calls it)")
        i = self._run_index
        if i >= len(runs):
            raise ValueError(f"all {len(runs)} steps of the current grid are done; call set_sigmas again")
        per_call = int(self.config.correct_steps) + 1
        call = self._run_calls
        if final and call != per_call - 1 or not final and call >= per_call - 1:
            raise ValueError(f"ScoreSdeVe loop out of order at step {i}: expected {per_call - 1} step_correct calls before step_pred")
        self._run_calls = call + 1
        if call < per_call - runs[i]:  # this run has fewer evaluations than the pipeline makes calls
            return sample
        return self.step(model_output, self._t_list[self._step_index], sample, generator=generator).prev_sample

    def step_correct(self, model_output: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None = None,
                     return_dict: bool = True):
        """A corrector call of ScoreSdeVePipeline (see :meth:`set_sigmas`)."""
        prev = self._run_call(model_output, sample, generator, final=False)
        return UnifiedSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def step_pred(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator: torch.Generator | None = None,
                  return_dict: bool = True):
        """The predictor call of ScoreSdeVePipeline (see :meth:`set_sigmas`). ``prev_sample_mean`` equals
        ``prev_sample``: the pipeline reads it after the last step only, where samplers return the noise-free
        mean (``pc``'s final predictor step adds no noise)."""
        prev = self._run_call(model_output, sample, generator, final=True)
        self._run_index += 1
        self._run_calls = 0
        if not return_dict:
            return prev, prev
        return SdeVeCompatibleOutput(prev_sample=prev, prev_sample_mean=prev)

    # ------------------------------------------------------------------ forward process helpers
    def _s_sigma(self, timesteps, like: torch.Tensor):
        t = self._time_of(timesteps).reshape(-1)
        s, sigma = schedule_coefficients(self.noise_schedule, t)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return s.to(like.device, like.dtype).reshape(shape), sigma.to(like.device, like.dtype).reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = s(t) x0 + σ(t) ε at the model timesteps given (any device)."""
        s, sigma = self._s_sigma(timesteps, original_samples)
        return s * original_samples + sigma * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = (s ε − σ x0)/√(s² + σ²) (diffusers' v for VP schedules), ``sample`` being x0."""
        s, sigma = self._s_sigma(timesteps, sample)
        return (s * noise - sigma * sample) / torch.sqrt(s * s + sigma * sigma)


# Saved pipelines record a scheduler by its class's module; keep naming the stable public path (unisde/scheduler.py).
UnifiedScheduler.__module__ = "unisde.scheduler"


@dataclass
class UnifiedSchedulerOutput(BaseOutput):
    """``prev_sample`` and ``pred_original_sample`` (x̂0 after clipping/thresholding)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


@dataclass
class SdeVeCompatibleOutput(BaseOutput):
    """``step_pred``'s output for ScoreSdeVePipeline: ``prev_sample`` and ``prev_sample_mean``."""

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor


def _dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): clip x̂0 to the ratio-quantile of |x̂0| per sample."""
    dtype = x0.dtype
    flat = x0.float().reshape(x0.shape[0], -1) if dtype not in (torch.float32, torch.float64) else x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def _class_from_keys(cfg: dict) -> str:
    """The compatible diffusers scheduler whose __init__ keys are exactly the config's (an instance's ``config``
    carries no ``_class_name``; only a saved one does)."""
    import inspect

    import diffusers

    keys = {k for k in cfg if not k.startswith("_")}
    for name in COMPATIBLE_SCHEDULERS:
        params = set(list(inspect.signature(getattr(diffusers, name).__init__).parameters)[1:])
        if keys == params:
            return name
    return ""


def _derived_keys(cfg: dict, kwargs: dict) -> dict:
    """unisde keys implied by another diffusers scheduler's config (its schedule, parameterisation, grid, sampler)."""
    cls = cfg.get("_class_name") or _class_from_keys(cfg)
    if cls == "UnifiedScheduler" or "sampler" in cfg:
        return {}
    out: dict = {}
    if cls.startswith("EDM"):
        smin, smax = float(cfg.get("sigma_min") or 0.002), float(cfg.get("sigma_max") or 80.0)
        if cfg.get("sigma_schedule", "karras") == "exponential":
            out["schedule"] = {"name": "ve", "sigma_min": smin, "sigma_max": smax, "timestep_convention": "edm"}
            out["time_grid"] = "uniform_lambda"
        else:
            out["schedule"] = {"name": "edm", "sigma_min": smin, "sigma_max": smax, "rho": float(cfg.get("rho", 7.0)), "timestep_convention": "edm"}
            out["time_grid"] = "karras"
        if "prediction_type" in kwargs or "parameterization" in kwargs:
            pass  # the caller says what the model predicts
        elif cfg.get("prediction_type", "epsilon") == "epsilon":
            # diffusers' EDM schedulers call EDM's preconditioned network "epsilon"; unisde's name for it is "edm".
            # It goes in its own key so that prediction_type keeps diffusers' value and converting back is lossless.
            out["parameterization"] = "edm"
        else:
            raise ValueError(f"EDMEulerScheduler prediction_type={cfg.get('prediction_type')!r} is not supported; supported: 'epsilon' (EDM preconditioning)")
    elif cls == "ScoreSdeVeScheduler":
        out["schedule"] = {"name": "ve", "sigma_min": float(cfg.get("sigma_min", 0.01)), "sigma_max": float(cfg.get("sigma_max", 1348.0)), "timestep_convention": "sigma"}
        out["prediction_type"] = "score"
        out["time_grid"] = "uniform_t"
        out["t_min"] = float(cfg.get("sampling_eps", 1e-5))
    elif cls in ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler"):
        if cfg.get("use_karras_sigmas"):
            out["time_grid"] = "karras"
        else:  # these schedulers keep linspace's fractional timesteps (np.linspace without rounding)
            spacing = cfg.get("timestep_spacing", "linspace")
            out["time_grid"] = "linspace_fractional" if spacing == "linspace" else spacing
    elif cls in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
        spacing = cfg.get("timestep_spacing", "linspace")
        if cfg.get("use_karras_sigmas"):
            out["time_grid"] = "karras"
        elif cfg.get("use_lu_lambdas") or cfg.get("use_exponential_sigmas"):
            out["time_grid"] = "uniform_lambda"
        else:  # these schedulers space leading/linspace over n + 1 points and drop index 0
            out["time_grid"] = {"leading": "leading_multistep", "linspace": "linspace_multistep"}.get(spacing, spacing)
    if "sampler" not in kwargs:
        if cls in _DEFAULT_SAMPLER:
            name, options = _DEFAULT_SAMPLER[cls]
            if cls == "UniPCMultistepScheduler" and cfg.get("solver_type") in ("bh1", "bh2"):
                options = {"variant": cfg["solver_type"]}
        elif cls == "PNDMScheduler" and cfg.get("skip_prk_steps"):
            name, options = "pndm", {}  # PLMS with diffusers' skip_prk_steps warm-up (the PRK warm-up has no twin)
        elif cls in _MULTISTEP:
            name, options = ("dpmsolver++", {}) if "dpmsolver++" in list_samplers() else ("edm", {})
        else:
            name, options = None, {}
        if name is not None:
            out["sampler"] = name
            if options and "sampler_options" not in kwargs:
                out["sampler_options"] = options
    elif (cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler")
          and kwargs.get("sampler") == "edm" and "time_grid" in out and not cfg.get("use_karras_sigmas")):
        out.pop("time_grid")  # asking these configs for EDM's sampler means Algorithm 2 on its own (Karras) grid
    return out
