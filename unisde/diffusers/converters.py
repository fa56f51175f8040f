r"""Converters: one per diffusers scheduler class, each saying everything a conversion decides.

``UnifiedScheduler.from_config(config)`` asks this registry and nothing else. A converter reads the source
config and returns the unisde keys that reproduce the source: the schedule, the parameterisation, the time grid
(name + options), the sampler (name + options) and the conventions at the diffusers boundary (what
``set_timesteps(sigmas=...)``/``scheduler.sigmas`` mean, where the starting sample lives). Every flag of the
source class is either honoured or refused: a value the converter does not list for a flag that differs from
the class default is a ValueError naming the class, the flag, the value and what unisde can do instead — never
a silent fallback to another algorithm. Keys that the source class itself does not take are ignored, as
diffusers ignores them.

``from_config(config, sampler="X")`` takes only the schedule, parameterisation and grid from the source (its
solver flags no longer apply) and runs sampler X; that works for every class whose config defines a Gaussian
(s, σ) schedule, including those without a twin yet.

Detection: ``_class_name`` when present; else the class of the object passed; else (a live scheduler's
``config`` carries no class name) the scheduler that owns that very config object; else the classes whose
``__init__`` keys best match the config's. A tie between classes that would convert differently is a ValueError
naming them — never resolved by list order.

Third-party converters register through the ``unisde_register_converters`` hook: subclass :class:`Converter`
(or :class:`BetaTableConverter` for β-table classes), set ``name`` to the source class name and, for a class
diffusers does not ship, ``source_defaults``.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
from typing import Any, ClassVar

from unisde.core.schedule import BETA_SCHEDULES
from unisde.plugins import get_converter, hookimpl, list_converters, list_samplers

logger = logging.getLogger("unisde")

ANY = None  # in ``accepts``: every value of the flag is honoured

# Flags that define the forward process, the parameterisation, the time grid or x̂0 post-processing. A conversion
# must honour them (or find them at the class default) even when ``sampler=`` replaces the source's solver.
SCHEDULE_FLAGS = frozenset(
    {
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "rescale_betas_zero_snr",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "use_lu_lambdas",
        "use_flow_sigmas",
        "flow_shift",
        "shift",
        "use_dynamic_shifting",
        "time_shift_type",
        "shift_terminal",
        "invert_sigmas",
        "sigma_min",
        "sigma_max",
        "sigma_data",
        "sigma_schedule",
        "rho",
        "timestep_type",
        "interpolation_type",
        "final_sigmas_type",
        "clip_sample",
        "clip_sample_range",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "set_alpha_to_one",
        "lambda_min_clipped",
        "sampling_eps",
        "timestep_scaling",
        "original_inference_steps",
        "variance_type",
    }
)
# Keys of diffusers configs that never change the numbers (bookkeeping).
IGNORED_KEYS = frozenset({"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path"})

BETA_KEYS = {
    "num_train_timesteps": ANY,
    "beta_start": ANY,
    "beta_end": ANY,
    "trained_betas": ANY,
    "beta_schedule": BETA_SCHEDULES,  # the tables unisde builds exactly as diffusers does
}
PREDICTIONS = ("epsilon", "sample", "v_prediction")
THRESHOLDING = {"thresholding": ANY, "dynamic_thresholding_ratio": ANY, "sample_max_value": ANY}
CLIPPING = {"clip_sample": ANY, "clip_sample_range": ANY}


def _same(a, b) -> bool:
    """Config values equal up to JSON round trips (a tuple default saved as a list)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _fmt(values) -> str:
    return ", ".join(repr(v) for v in values)


class ConversionError(ValueError):
    """A diffusers config that unisde cannot convert as asked (the message says what to do instead)."""


class Converter:
    """How one diffusers scheduler class maps to unisde.

    Class attributes
    ----------------
    name: the diffusers class name (the registry key).
    accepts: ``{flag: allowed values or ANY}`` — the values this converter honours; a listed flag must take one
        of them even when the class default is not among them (PNDM's ``skip_prk_steps``). Unlisted flags must
        keep the class default.
    sampler: the unisde sampler that reproduces the class's algorithm (None: no twin yet, see ``refusal``).
    refusal: why the class cannot convert without ``sampler=``, and the closest unisde option.
    gaussian: the config defines a Gaussian (s, σ) schedule, so ``from_config(cfg, sampler=...)`` works.
    source_defaults: the class's ``__init__`` defaults, for a class diffusers does not ship (else inspected).
    view: the variables the class's solver steps in (``"ve"``: x/s against σ̃, the Euler/Heun/LMS/KDPM2/PNDM
        classes, also on a zero-terminal-SNR table): a convention of its algorithm, like its starting noise, so the
        twin's config records it (the ``view`` key, read by samplers with a ``view`` option unless
        ``sampler_options`` sets one) and a conversion with another sampler leaves it out.
    quirk_options: options of the twin's sampler that reproduce a quirk of the class rather than choose an algorithm
        (PNDM's and LMS's img2img entry): ``is_twin`` ignores them, so ``sampler=`` naming the twin's sampler keeps
        the twin's grid and conventions, with the caller's options.
    """

    name: ClassVar[str] = ""
    accepts: ClassVar[dict[str, Any]] = {}
    sampler: ClassVar[str | None] = None
    refusal: ClassVar[str] = ""
    gaussian: ClassVar[bool] = True
    source_defaults: ClassVar[dict | None] = None
    view: ClassVar[str | None] = None
    quirk_options: ClassVar[frozenset[str]] = frozenset()

    # ------------------------------------------------------------------ what a subclass writes
    def schedule_keys(self, cfg: dict) -> dict:
        """The unisde keys of the schedule, parameterisation and time grid (``schedule``, ``parameterization``,
        ``prediction_type``, ``time_grid``, ``time_grid_options``, ``t_min``)."""
        return {}

    def sampler_keys(self, cfg: dict) -> dict:
        """``sampler`` and ``sampler_options`` of the twin (only called when ``sampler`` is set)."""
        return {"sampler": self.sampler}

    def explicit_grid(self, cfg: dict) -> bool:
        """Whether the config chose its grid explicitly (Karras/exponential σ …), so that another sampler keeps it;
        otherwise a sampler with a grid preference of its own uses that."""
        return False

    # ------------------------------------------------------------------ machinery
    @classmethod
    def defaults(cls) -> dict:
        if cls.source_defaults is not None:
            return dict(cls.source_defaults)
        import diffusers

        source = getattr(diffusers, cls.name, None)
        if source is None:  # deprecated classes (ScoreSdeVpScheduler) are exported by diffusers.schedulers only
            import diffusers.schedulers

            source = getattr(diffusers.schedulers, cls.name, None)
        if source is None:
            raise ConversionError(f"converter {cls.name!r} names no diffusers class and gives no source_defaults")
        params = list(inspect.signature(source.__init__).parameters.values())[1:]
        return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def check_flags(self, cfg: dict, twin: bool) -> list[str]:
        """Raise on a flag value this conversion would not honour; return the solver flags that ``sampler=``
        leaves unused (for the log line)."""
        defaults = self.defaults()
        unused = []
        for key, value in cfg.items():
            if key in IGNORED_KEYS or key.startswith("_") or key not in defaults:
                continue  # not a key of the source class: diffusers ignores it too
            allowed = self.accepts.get(key, ())
            if key in self.accepts and (allowed is ANY or any(_same(value, v) for v in allowed)):
                continue
            if _same(value, defaults[key]) and key not in self.accepts:  # a listed flag needs a listed value
                continue
            if not twin and key not in SCHEDULE_FLAGS:  # a solver flag: the chosen sampler replaces the solver
                if not _same(value, defaults[key]):
                    unused.append(f"{key}={value!r}")
                continue
            shown = f" (supported: {_fmt(allowed)})" if allowed else f" (supported: only the default {defaults[key]!r})"
            if key in SCHEDULE_FLAGS:
                hint = "it changes the schedule, parameterisation or time grid, so no sampler= can stand in for it"
            else:
                hint = (
                    f"to run a unisde sampler on this model's schedule instead, pass sampler= "
                    f"(e.g. {self.closest_sampler()!r})"
                )
            raise ConversionError(
                f"{self.name} flag {key}={value!r} is not supported by unisde's conversion{shown}; {hint}"
            )
        return unused

    def closest_sampler(self) -> str:
        return self.sampler or "ddim"

    def unsupported_combination(self, cfg: dict) -> str | None:
        """Why a combination of individually honoured flags has no twin (None: it has one)."""
        return None

    def is_twin(self, cfg: dict, sampler: str | None, sampler_options: dict | None) -> bool:
        """Whether the caller's choice is this class's own algorithm (then the conversion is the full twin)."""
        if sampler is None:
            return True
        if sampler != self.sampler:
            return False
        own = self.sampler_keys(cfg).get("sampler_options") or {}
        chosen = {k: v for k, v in (sampler_options or {}).items() if k not in self.quirk_options}
        return chosen == {k: v for k, v in own.items() if k not in self.quirk_options}

    def convert(self, cfg: dict, sampler: str | None = None, sampler_options: dict | None = None) -> dict:
        """The unisde keys for this source config (``sampler``: the caller's choice, or None for the twin)."""
        if sampler is None and self.sampler is None:
            raise ConversionError(f"{self.name} cannot be converted: {self.refusal}")
        if sampler is not None and not self.gaussian:
            raise ConversionError(f"{self.name} cannot be converted, not even with sampler={sampler!r}: {self.refusal}")
        twin = self.sampler is not None and self.is_twin(cfg, sampler, sampler_options)
        unused = self.check_flags(cfg, twin)
        out = self.schedule_keys(cfg)
        if twin:
            problem = self.unsupported_combination(cfg)
            if problem:
                raise ConversionError(f"{self.name} cannot be converted: {problem}")
            if self.sampler not in list_samplers():
                raise ConversionError(
                    f"{self.name} converts to sampler {self.sampler!r}, which is not installed "
                    f"(registered samplers: {_fmt(list_samplers())})"
                )
            keys = self.sampler_keys(cfg)
            if sampler is not None:  # the caller's options (if any) on top of the class's, as diffusers' kwargs do
                keys["sampler_options"] = {**(keys.get("sampler_options") or {}), **(sampler_options or {})}
            out.update(keys)
            from unisde.plugins import get_sampler

            if self.view is not None and "view" in get_sampler(out["sampler"]).options:
                out["view"] = self.view  # diffusers' σ̃ stepping, kept where sampler "auto" would pick the flow view
        else:
            from unisde.plugins import get_sampler

            out.pop("init_noise", None)  # the source's starting-noise convention belongs to its algorithm
            if not self.explicit_grid(cfg) and get_sampler(sampler).default_grid != "config":
                out.pop("time_grid", None)  # the sampler's own grid preference (EDM: Karras) over a default spacing
                out.pop("time_grid_options", None)
            out["sampler"] = sampler
            try:
                twin_keys = self.sampler_keys(cfg) if self.sampler is not None else {}
            except ConversionError:  # a combination only the twin refuses: the sampler's own defaults apply
                twin_keys = {}
            if twin_keys.get("sampler") == sampler:
                # the class's own algorithm with other options: its flags (UniPC's solver_type → variant …) stay
                # the defaults the caller's options change, instead of silently becoming the sampler's defaults
                own = twin_keys.get("sampler_options") or {}
                own = {k: v for k, v in own.items() if k not in self.quirk_options}  # no quirks off the twin
                out["sampler_options"] = {**own, **(sampler_options or {})}
            else:
                # another algorithm: the source's keys that share a name with one of its options (DEIS's
                # solver_type='logrho' and dpmsolver++'s solver_type) mean the source's algorithm, not this one
                out[SOURCE_OPTIONS_DROPPED] = True
            logger.info(
                "UnifiedScheduler.from_config: schedule, parameterisation and time grid taken from %s; "
                "sampler %r replaces its algorithm%s",
                self.name,
                sampler,
                f" (unused solver flags: {', '.join(unused)})" if unused else "",
            )
        return out


SOURCE_OPTIONS_DROPPED = "_source_options_dropped"  # a key of convert()'s answer, for UnifiedScheduler.from_config


class Refusing(Converter):
    """A diffusers class with no unisde twin: converting it without ``sampler=`` is a clear error."""


class BetaTableConverter(Converter):
    """The β-table classes: the table keys, ``prediction_type``, the spacing and x̂0 post-processing."""

    accepts = {
        **BETA_KEYS,
        "prediction_type": PREDICTIONS,
        "timestep_spacing": ("leading", "trailing", "linspace"),
        "steps_offset": ANY,
        "rescale_betas_zero_snr": ANY,
    }
    spacing_grids: ClassVar[dict] = {}  # the class's own name for a diffusers spacing (e.g. fractional linspace)

    def schedule_keys(self, cfg):
        spacing = cfg.get("timestep_spacing", self.defaults().get("timestep_spacing", "leading"))
        out = {"time_grid": self.spacing_grids.get(spacing, spacing)}
        if cfg.get("use_karras_sigmas"):
            out["time_grid"] = "karras"
        elif cfg.get("use_exponential_sigmas") or cfg.get("use_lu_lambdas"):
            out["time_grid"] = "uniform_lambda"
        elif cfg.get("use_beta_sigmas"):  # Beta(0.6, 0.6) quantiles of σ̃ between the table's ends (Lee et al. 2024)
            out["time_grid"] = "diffusers_sigmas"
            out["time_grid_options"] = {"spacing": "beta", "timestep_spacing": "linspace"}
        return out

    def explicit_grid(self, cfg):
        flags = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
        return any(cfg.get(flag) for flag in flags)


class DDPMConverter(BetaTableConverter):
    name = "DDPMScheduler"
    sampler = "ddpm"
    accepts = {
        **BetaTableConverter.accepts,
        **CLIPPING,
        **THRESHOLDING,
        "variance_type": (
            "fixed_small",
            "fixed_small_log",
            "fixed_large",
            "fixed_large_log",
            "learned",
            "learned_range",
        ),
    }


class DDPMParallelConverter(DDPMConverter):
    name = "DDPMParallelScheduler"  # DDPM's step with a batched variant; the sequential step is DDPM's


class DDIMConverter(BetaTableConverter):
    """DDIMScheduler → ``ddim``. diffusers' step goes from timestep t to t − N//n whatever the spacing listed next;
    where the spacing's strides are not N//n (linspace; trailing with n not dividing N, e.g. n = 30: 1.3e-3 ×
    scale) the twin does the same (``diffusers_prev_timestep``, a quirk option: ``sampler="ddim"`` without it
    steps between grid points)."""

    name = "DDIMScheduler"
    sampler = "ddim"
    accepts = {**BetaTableConverter.accepts, **CLIPPING, **THRESHOLDING, "set_alpha_to_one": ANY}
    quirk_options = frozenset({"diffusers_prev_timestep"})

    def sampler_keys(self, cfg):
        return {"sampler": "ddim", "sampler_options": {"diffusers_prev_timestep": True}}


class DDIMParallelConverter(DDIMConverter):
    name = "DDIMParallelScheduler"  # DDIM's step with a batched variant; the sequential step is DDIM's


class PNDMConverter(BetaTableConverter):
    name = "PNDMScheduler"
    sampler = "pndm"
    quirk_options = frozenset({"entry", "diffusers_stage_target"})
    view = "ve"
    accepts = {**BetaTableConverter.accepts, "set_alpha_to_one": ANY, "skip_prk_steps": ANY}

    def sampler_keys(self, cfg):
        prk = not cfg.get("skip_prk_steps", False)
        # its counter restarts at the first call a pipeline makes (img2img), so does its warm-up; its first RK stage
        # steps to t_i − (N//n)//2, not to the midpoint the next call evaluates at (they differ for odd N//n)
        quirk = {"diffusers_stage_target": True} if prk else {"entry": "restart"}
        return {"sampler": "pndm", "sampler_options": {"prk_warmup": prk, **quirk}}

    def closest_sampler(self):
        return "pndm"


class _KarrasFamily(BetaTableConverter):
    """Euler, EulerAncestral, Heun, LMS, KDPM2: fractional linspace timesteps (np.linspace without rounding).

    ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas`` respace σ̃ between the σ̃'s of the first
    and last index of the *spacing's* timesteps (the table's ends only for ``linspace``; for ``leading`` and
    ``trailing`` they move with num_inference_steps): the ``diffusers_sigmas`` grid, which reads
    ``timestep_spacing``, ``steps_offset`` (and Euler's ``sigma_min`` / ``sigma_max``) from the config by name.
    With ``linspace`` spacing the same σ̃'s are the ``karras`` / ``uniform_lambda`` grids, which are kept there. The
    model is fed the exact log-σ̃ index of each level, as diffusers' ``_sigma_to_t`` computes it."""

    spacing_grids = {"linspace": "linspace_fractional"}
    view = "ve"
    accepts = {
        **BetaTableConverter.accepts,
        "use_karras_sigmas": ANY,
        "use_exponential_sigmas": ANY,
        "use_beta_sigmas": ANY,
    }
    RESPACING_FLAGS: ClassVar[dict] = {
        "use_karras_sigmas": "karras",
        "use_exponential_sigmas": "exponential",
        "use_beta_sigmas": "beta",
    }

    def respacing(self, cfg) -> str | None:
        """The σ̃ respacing the config asks for (None: the spacing's own σ̃); two flags at once are diffusers' error."""
        own = self.defaults()  # a flag the class does not take is ignored, as diffusers ignores it
        chosen = [flag for flag in self.RESPACING_FLAGS if flag in own and cfg.get(flag)]
        if len(chosen) > 1:
            raise ConversionError(
                f"{self.name}: only one of {', '.join(chosen)} can be True (diffusers refuses it too)"
            )
        return self.RESPACING_FLAGS[chosen[0]] if chosen else None

    def schedule_keys(self, cfg):
        spacing = cfg.get("timestep_spacing", self.defaults().get("timestep_spacing"))
        respacing = self.respacing(cfg)
        overrides = cfg.get("sigma_min") is not None or cfg.get("sigma_max") is not None
        out = {"time_grid": self.spacing_grids.get(spacing, spacing)}
        if respacing is not None:
            table_ends = spacing == "linspace" and not overrides
            if table_ends and respacing in ("karras", "exponential"):
                out["time_grid"] = "karras" if respacing == "karras" else "uniform_lambda"
            else:
                out["time_grid"] = "diffusers_sigmas"
                out["time_grid_options"] = {"spacing": respacing}
        # they start from σ̃_max · z in the VE view with these spacings (√(σ̃_max² + 1) · z with leading)
        out["init_noise"] = "sigma" if spacing in ("linspace", "trailing") else "marginal"
        return out

    def explicit_grid(self, cfg):
        return self.respacing(cfg) is not None


_LOG_LINEAR_REFUSAL = (
    "EulerDiscreteScheduler flag interpolation_type='log_linear' without use_karras_sigmas, use_exponential_sigmas "
    "or use_beta_sigmas is not supported by unisde's conversion: diffusers then steps through n + 1 log-uniform σ̃'s "
    "but feeds the model the timesteps of timestep_spacing, which belong to other noise levels, and stops at the "
    "table's σ̃_min without the last step to σ = 0; no unisde sampler evaluates a model off its noise level. For "
    "log-uniform σ̃ with matching timesteps use use_exponential_sigmas=True (or UnifiedScheduler(sampler='edm', "
    "time_grid='exponential')); with a respacing flag log_linear is honoured (only its end points count there)"
)


class EulerConverter(_KarrasFamily):
    """EulerDiscreteScheduler → ``edm`` (Euler). Besides the family's flags (:class:`_KarrasFamily`):

    ``sigma_min`` / ``sigma_max`` replace the respacing's ends (diffusers reads them only with a Karras, exponential
    or Beta respacing). With discrete timesteps they must lie in the table's σ̃ range: outside it diffusers clips
    the model's timestep to the table's end while the sample carries another noise level.

    ``timestep_type="continuous"`` with v-prediction (Stable Video Diffusion's config) feeds the model
    c_noise = ¼ ln σ̃ and scales its input by 1/√(σ̃² + 1): EDM's preconditioning with σ_data = 1 and c_out negated
    (Karras et al. 2022, Table 1 [EDM]; the ``edm`` parameterisation), which on the β table is diffusers'
    v-prediction with other timesteps. With both ends configured and a respacing flag (SVD: Karras σ̃ from 700 to
    0.002) the β table takes no part in sampling and the schedule is EDM's s = 1, σ̃ ∈ [sigma_min, sigma_max].
    With another prediction type diffusers ignores ``timestep_type``, and so does the conversion.

    ``interpolation_type="log_linear"`` is honoured together with a respacing flag, where diffusers reads only the
    end points of its levels (the table's σ̃_max and σ̃_min, whatever the spacing); alone it is refused (the reason
    is in the message)."""

    name = "EulerDiscreteScheduler"
    sampler = "edm"
    accepts = {
        **_KarrasFamily.accepts,
        "interpolation_type": ("linear", "log_linear"),
        "timestep_type": ("discrete", "continuous"),
        "sigma_min": ANY,
        "sigma_max": ANY,
    }

    def schedule_keys(self, cfg):
        respacing = self.respacing(cfg)
        log_linear = cfg.get("interpolation_type", "linear") == "log_linear"
        if log_linear and respacing is None:
            raise ConversionError(_LOG_LINEAR_REFUSAL)
        out = super().schedule_keys({**cfg, "timestep_spacing": "linspace"} if log_linear else cfg)
        spacing = cfg.get("timestep_spacing", self.defaults().get("timestep_spacing"))
        out["init_noise"] = "sigma" if spacing in ("linspace", "trailing") else "marginal"  # the class's own spacing
        if log_linear and out["time_grid"] == "diffusers_sigmas":
            out["time_grid_options"]["timestep_spacing"] = "linspace"  # the table's ends, not the spacing's
        continuous = cfg.get("timestep_type") == "continuous" and cfg.get("prediction_type") == "v_prediction"
        ends = {key: cfg.get(key) for key in ("sigma_min", "sigma_max") if cfg.get(key) is not None}
        if continuous:
            out["parameterization"] = "edm"  # c_noise timesteps, σ_data = 1; the edm sign follows prediction_type
            out["sigma_data"] = 1.0
            if respacing is not None and len(ends) == 2:
                out["schedule"] = {
                    "name": "edm",
                    "sigma_min": float(ends["sigma_min"]),
                    "sigma_max": float(ends["sigma_max"]),
                    "timestep_convention": "edm",
                }
                return out
        if respacing is not None and ends:
            from unisde.core.schedule import NoiseSchedule

            table = NoiseSchedule.from_diffusers_config({k: v for k, v in cfg.items() if k not in ("schedule",)})
            low = float(table.ve_sigma(1.0 / table.num_train_timesteps))
            high = float(table.ve_sigma(1.0))
            for key, value in ends.items():
                if not low * (1 - 1e-6) <= float(value) <= high * (1 + 1e-6):
                    hint = (
                        "with timestep_type='continuous' and v-prediction both sigma_min and sigma_max are needed"
                        if continuous
                        else "diffusers clips the model's timestep to the table's end there"
                    )
                    raise ConversionError(
                        f"{self.name} flag {key}={value!r} lies outside the β table's σ̃ range [{low:.6g}, "
                        f"{high:.6g}] and is not supported by unisde's conversion: {hint}"
                    )
        return out

    def sampler_keys(self, cfg):
        return {"sampler": "edm", "sampler_options": {"solver": "euler"}}


class EulerAncestralConverter(_KarrasFamily):
    name = "EulerAncestralDiscreteScheduler"
    sampler = "ddim"
    accepts = {k: v for k, v in _KarrasFamily.accepts.items() if k != "use_karras_sigmas"}

    def sampler_keys(self, cfg):
        return {"sampler": "ddim", "sampler_options": {"eta": 1.0}}


class HeunConverter(_KarrasFamily):
    name = "HeunDiscreteScheduler"
    sampler = "edm"
    accepts = {**_KarrasFamily.accepts, **CLIPPING}


class LMSConverter(_KarrasFamily):
    name = "LMSDiscreteScheduler"
    sampler = "lms"
    quirk_options = frozenset({"entry_order"})

    def sampler_keys(self, cfg):
        # its step k runs at order min(k + 1, 4) whatever history it has (img2img entry mid-grid)
        return {"sampler": "lms", "sampler_options": {"entry_order": "index"}}


class KDPM2Converter(_KarrasFamily):
    """KDPM2DiscreteScheduler → ``dpm_2``: its interleaved timesteps (grid point, midpoint at the geometric mean of
    σ̃, …), its spacings (linspace fractional, as Euler's) and its init-noise convention. ``use_karras_sigmas``,
    ``use_exponential_sigmas`` and ``use_beta_sigmas`` span σ̃ between the ends of the *spacing's* grid, as for Euler
    (see :class:`_KarrasFamily`). On Karras grids diffusers feeds the model rounded timesteps at the grid points (not
    at the midpoints), and so does the twin (``timestep_rounding="round_steps"``). Its ``add_noise`` reads
    ``sigmas[step_index]``, the step's end after a first stage (``add_noise_level="step_index"``)."""

    name = "KDPM2DiscreteScheduler"
    sampler = "dpm_2"

    def schedule_keys(self, cfg):
        out = super().schedule_keys(cfg)
        if self.respacing(cfg) == "karras":
            out["timestep_rounding"] = "round_steps"
        return out

    def sampler_keys(self, cfg):
        # add_noise reads sigmas[step_index]: the step's end after a first stage (UnifiedScheduler.add_noise_level)
        return {"sampler": self.sampler, "add_noise_level": "step_index"}


class KDPM2AncestralConverter(KDPM2Converter):
    """KDPM2AncestralDiscreteScheduler → ``dpm_2_ancestral`` (η = 1, S_noise = 1: one noise draw per two-stage step,
    from the step's generator, as diffusers draws it)."""

    name = "KDPM2AncestralDiscreteScheduler"
    sampler = "dpm_2_ancestral"


class DPMSolverSDEConverter(_KarrasFamily):
    """DPMSolverSDEScheduler → ``dpmpp_sde`` with its defaults r = ½, η = 1, S_noise = 1 (k-diffusion's
    ``sample_dpmpp_sde``, which diffusers' class reimplements), on the ``diffusers_float32_sigmas`` grid: the class's
    σ̃ bit for bit in float32 for every spacing (linspace fractional, leading with ``steps_offset``, trailing; the grid
    reads both keys by name) and respacing (Karras, exponential, Beta, between the ends of the spacing's list as
    diffusers spans them), so that the Brownian tree is queried at the very levels the class queries (the tree resolves
    σ̃ to 1e-6: a level one float32 ulp off draws other noise). ``noise_sampler_seed`` reaches the sampler by name:
    with it set both draw the same Brownian path; with None diffusers seeds the path from the global torch RNG, unisde
    from the step generator's initial seed (so a seeded pipeline run repeats), or from the global RNG as diffusers
    does when there is no generator. As KDPM2, each step's two model calls are listed as timesteps (grid point, then
    the midpoint √(σ̃_i σ̃_{i+1})) and sampling starts from σ̃_max · z (√(σ̃_max² + 1) · z with leading spacing).
    diffusers raises NotImplementedError for ``prediction_type="sample"``; the conversion reads it as x̂0, as for
    every other class."""

    name = "DPMSolverSDEScheduler"
    sampler = "dpmpp_sde"
    accepts = {**_KarrasFamily.accepts, "noise_sampler_seed": ANY}

    def schedule_keys(self, cfg):
        out = super().schedule_keys(cfg)  # init_noise; the respacing flags checked
        respacing = self.respacing(cfg)
        out["time_grid"] = "diffusers_float32_sigmas"
        out["time_grid_options"] = {"spacing": respacing} if respacing else {}
        return out

    def sampler_keys(self, cfg):
        # noise_sampler_seed reaches it by name; add_noise reads sigmas[step_index], as KDPM2's (the step's end at the
        # midpoint call)
        return {"sampler": self.sampler, "add_noise_level": "step_index"}

    def closest_sampler(self):
        return "dpmpp_sde"


class _FlowSigmas:
    """The ``use_flow_sigmas=True`` branch of the β-table classes that take it (DPMSolverMultistep, UniPC,
    DPMSolverSinglestep, DEIS, SASolver): they then run on the rectified flow and ignore the β table — the
    ``flow_match`` grid with ``levels=flow_levels`` (the class's own base levels, shifted by ``flow_shift``; μ and
    ``shift_terminal`` where the class takes them), flow prediction (α = 1 − σ, σ_t = σ), ``scheduler.sigmas`` in flow
    levels, the model fed ⌊τ N⌋ as int64 (``timestep_rounding="floor"``, their int64 cast of σ·N) and the start from
    z itself (``init_noise="unit"``, their ``init_noise_sigma`` = 1). A mixin before :class:`BetaTableConverter`;
    each class calls :meth:`_flow_schedule_keys` from its ``schedule_keys``. Flags are read only where the class takes
    them (a foreign key in a config is ignored, as the class ignores it)."""

    flow_levels: ClassVar[str] = "dpmsolver"
    FLOW_ACCEPTS: ClassVar[dict] = {
        "prediction_type": PREDICTIONS + ("flow_prediction",),
        "use_flow_sigmas": ANY,
        "flow_shift": ANY,
        "use_dynamic_shifting": ANY,
        "time_shift_type": ("exponential",),
    }

    def _own(self, cfg, key, default=None):
        """The config's value of ``key`` where the class takes that flag, else ``default``."""
        return cfg.get(key, default) if key in self.defaults() else default

    def _flow_refusal(self, cfg) -> str | None:
        """Why the config's flow flags have no twin (None: they have one, or the config does not use them)."""
        prediction = self._own(cfg, "prediction_type", "epsilon")
        if not self._own(cfg, "use_flow_sigmas"):
            if prediction == "flow_prediction":
                return (
                    "prediction_type='flow_prediction' needs use_flow_sigmas=True (diffusers would read a velocity "
                    "against the β table's σ)"
                )
            if self._own(cfg, "use_dynamic_shifting"):
                return "use_dynamic_shifting=True applies only with use_flow_sigmas=True"
            return None
        if prediction != "flow_prediction":
            return (
                f"use_flow_sigmas=True with prediction_type={prediction!r}: diffusers converts that output with "
                "α = 1 − σ, which unisde converts only for flow_prediction (supported: 'flow_prediction')"
            )
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"):
            if self._own(cfg, flag):
                return (
                    f"use_flow_sigmas=True with {flag}=True: diffusers spaces the β table's VE σ and then reads "
                    "them as flow levels; unisde does not reproduce that mix"
                )
        if self._own(cfg, "final_sigmas_type", "zero") != "zero":
            return (
                f"use_flow_sigmas=True with final_sigmas_type={cfg.get('final_sigmas_type')!r}: diffusers' last "
                "step then ends at a β-table σ_min read as a flow level (or a zero-length step); supported: 'zero'"
            )
        if not float(self._own(cfg, "flow_shift", 1.0)) > 0:
            return f"flow_shift={cfg.get('flow_shift')!r} must be > 0"
        return None

    def _flow_schedule_keys(self, cfg) -> dict | None:
        """The flow twin's schedule, parameterisation, grid and conventions; None when the config does not use flow
        sigmas. A refused flow combination is a ConversionError (a schedule flag: no ``sampler=`` stands in)."""
        problem = self._flow_refusal(cfg)
        if problem:
            raise ConversionError(
                f"{self.name} flag {problem}; it changes the schedule or time grid, so no sampler= can stand in for it"
            )
        if not self._own(cfg, "use_flow_sigmas"):
            return None
        options = {"levels": self.flow_levels, "shift": float(self._own(cfg, "flow_shift", 1.0))}
        schedule = {"name": "rectified-flow", "num_train_timesteps": int(cfg.get("num_train_timesteps", 1000))}
        return {
            "schedule": schedule,
            "parameterization": "flow_prediction",
            "time_grid": "flow_match",
            "time_grid_options": options,
            "sigmas_convention": "flow",
            "init_noise": "unit",
            "timestep_rounding": "floor",
        }

    def explicit_grid(self, cfg):
        return bool(self._own(cfg, "use_flow_sigmas")) or super().explicit_grid(cfg)

    def convert(self, cfg, sampler=None, sampler_options=None):
        out = super().convert(cfg, sampler, sampler_options)
        if out.get("final_sigmas_type") == "repeat_last" and not self.is_twin(cfg, sampler, sampler_options):
            # DEIS's/SA-Solver's zero-length last step is a quirk of their algorithm, not of the grid: another
            # sampler ends on the data
            out["final_sigmas_type"] = "zero"
        return out


class DEISConverter(_FlowSigmas, BetaTableConverter):
    """DEISMultistepScheduler → ``deis`` (log ρ multistep, orders 1–3, ``lower_order_final``): diffusers' multistep
    spacings (n + 1 points without index 0 for leading/linspace) and its last step to the table's σ_min (index 0),
    i.e. ``final_sigmas_type="sigma_min"``. diffusers maps algorithm_type dpmsolver/dpmsolver++ and solver_type
    midpoint/heun/bh1/bh2 to deis/logrho, and so does the conversion.

    With ``use_flow_sigmas=True`` it runs on the rectified flow (:class:`_FlowSigmas`) with DPM-Solver multistep's
    levels (``levels="dpmsolver"``: its ``set_timesteps`` computes the same ones, μ setting the shift to e^μ), and,
    a quirk the twin keeps, appends its last level again: the last of its n steps is the zero-length step
    τ_{n−1} → τ_{n−1} (``final_sigmas_type="repeat_last"``), whose log ρ weights vanish, so the result keeps the
    noise of that level (τ_{n−1} ≈ shift/n for shift·n ≫ 1) and ``lower_order_final`` lowers the order of the last
    two steps counting that one. ``sampler=`` another algorithm ends on the data instead. Parity there is to rounding
    in float64; in float32 diffusers' own result moves by ≈ 5·10⁻⁵ × scale (its float32 levels give α = 1 − σ at
    σ ≈ 0.999 a 10⁻⁵ error, which its form (α_t/α_s) x − σ_t(e^h − 1) ε̂ amplifies), the twin's by ≈ 3·10⁻⁷."""

    name = "DEISMultistepScheduler"
    sampler = "deis"
    spacing_grids = {"leading": "leading_multistep", "linspace": "linspace_multistep"}
    accepts = {
        **BetaTableConverter.accepts,
        **THRESHOLDING,
        "solver_order": (1, 2, 3),
        "lower_order_final": ANY,
        "algorithm_type": ("deis", "dpmsolver", "dpmsolver++"),
        "solver_type": ("logrho", "midpoint", "heun", "bh1", "bh2"),
        "use_karras_sigmas": (False,),
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
        **_FlowSigmas.FLOW_ACCEPTS,
    }
    _GRID_REFUSAL = (
        "diffusers' DEIS ends such a grid with a zero-length step (σ_min → σ_min) that leaves the sample "
        "at σ_min instead of denoising it, and feeds the model timesteps rounded (Karras) or truncated "
        "(exponential, Beta) to integers; unisde cannot reproduce that"
    )

    def check_flags(self, cfg, twin):
        flags = (
            ("use_karras_sigmas", "karras"),
            ("use_exponential_sigmas", "exponential"),
            ("use_beta_sigmas", "beta"),
        )
        for flag, grid in flags:
            if cfg.get(flag):
                raise ConversionError(
                    f"{self.name} flag {flag}=True is not supported by unisde's conversion: "
                    f"{self._GRID_REFUSAL}. To sample this model with DEIS on that grid, build "
                    f"UnifiedScheduler(sampler='deis', time_grid={grid!r}, ...) directly"
                )
        return super().check_flags(cfg, twin)

    def schedule_keys(self, cfg):
        flow = self._flow_schedule_keys(cfg)
        if flow is not None:
            return {**flow, "final_sigmas_type": "repeat_last"}
        return {**super().schedule_keys(cfg), "final_sigmas_type": "sigma_min"}

    def sampler_keys(self, cfg):
        return {"sampler": "deis"}  # solver_order and lower_order_final reach it by option name


class SASolverConverter(_FlowSigmas, BetaTableConverter):
    """SASolverScheduler → ``sa_solver`` (Xue et al. 2023 [SASolver]; data prediction, predictor and corrector orders
    1–3, ``lower_order_final``): diffusers' multistep spacings (n + 1 points without index 0 for leading/linspace,
    its default linspace) and its last step to the table's σ_min (index 0), i.e. ``final_sigmas_type="sigma_min"``.
    Its default ``tau_func`` (τ = 1 for model timesteps 200 … 800, else 0) is ``tau=1`` with ``tau_window`` the
    times (200 + ½)/N … (800 + 1½)/N of those indices (index i sits at t = (i + 1)/N); its order-2 weights (the
    slope term's exponential weight replaced by h²/2) are ``simple_order_2=True``, which ``sampler="sa_solver"`` with
    other options keeps (the class's algorithm) and another sampler does not. Refused by name: a custom
    ``tau_func`` (a Python callable, which a config cannot carry; pass sampler_options tau/tau_window instead),
    ``algorithm_type="noise_prediction"``, learned variances (diffusers slices 3 channels and draws noise shaped
    like the whole output) and the Karras/exponential/Beta σ grids, which diffusers ends with a zero-length step
    (σ_min → σ_min) and feeds rounded or truncated timesteps.

    With ``use_flow_sigmas=True`` it runs on the rectified flow (:class:`_FlowSigmas`) with DPM-Solver multistep's
    levels (``levels="dpmsolver"``: its ``set_timesteps`` computes the same ones) and, a quirk the twin keeps,
    appends its last level again: the last of its n steps is the zero-length step τ_{n−1} → τ_{n−1}
    (``final_sigmas_type="repeat_last"``) — the corrector of the step before still runs there, then the predictor's
    weights and noise vanish — so the result keeps the noise of that level (τ_{n−1} ≈ shift/n for shift·n ≫ 1) and
    ``lower_order_final`` counts that step. Its ``tau_func`` then reads the model timestep ⌊τ N⌋, so 200 … 800 is
    ``tau_window`` [200/N, 801/N) in τ = t. ``sampler=`` another algorithm ends on the data instead."""

    name = "SASolverScheduler"
    sampler = "sa_solver"
    spacing_grids = {"leading": "leading_multistep", "linspace": "linspace_multistep"}
    accepts = {
        **BetaTableConverter.accepts,
        **THRESHOLDING,
        "predictor_order": (1, 2, 3),
        "corrector_order": (1, 2, 3),
        "lower_order_final": ANY,
        "algorithm_type": ("data_prediction",),
        "tau_func": (None,),
        "variance_type": (None,),
        "use_karras_sigmas": (False,),
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
        **_FlowSigmas.FLOW_ACCEPTS,
    }
    _REFUSALS = {
        "use_karras_sigmas": "its Karras σ grid ends with a zero-length step (σ_min → σ_min) that leaves the sample "
        "at σ_min instead of denoising it",
        "use_exponential_sigmas": "its exponential σ grid ends with a zero-length step (σ_min → σ_min) that leaves "
        "the sample at σ_min instead of denoising it",
        "use_beta_sigmas": "its Beta σ grid ends with a zero-length step (σ_min → σ_min) that leaves the sample at "
        "σ_min instead of denoising it",
        "algorithm_type": "unisde's sa_solver is SA-Solver's data-prediction form (the default "
        "'data_prediction'); the noise-prediction form is not implemented",
        "tau_func": "a Python callable cannot be converted; pass sampler='sa_solver' with sampler_options "
        "{'tau': …, 'tau_window': [t_lo, t_hi]} for a constant τ on a time window",
        "variance_type": "with a learned variance diffusers keeps the first 3 output channels and draws noise shaped "
        "like the whole output, which unisde does not reproduce",
    }

    def check_flags(self, cfg, twin):
        defaults = self.defaults()
        for flag, reason in self._REFUSALS.items():
            if flag in cfg and not _same(cfg[flag], defaults[flag]):
                raise ConversionError(
                    f"{self.name} flag {flag}={cfg[flag]!r} is not supported by unisde's conversion: {reason}"
                )
        return super().check_flags(cfg, twin)

    def schedule_keys(self, cfg):
        flow = self._flow_schedule_keys(cfg)
        if flow is not None:
            return {**flow, "final_sigmas_type": "repeat_last"}
        return {**super().schedule_keys(cfg), "final_sigmas_type": "sigma_min"}

    def sampler_keys(self, cfg):
        n = int(cfg.get("num_train_timesteps", 1000))
        # tau_func's 200 ≤ timestep ≤ 800 in the sampler's time t: table index i sits at t = (i + 1)/N (half-index
        # margins), a flow level τ = t is fed ⌊τ N⌋, so τ ∈ [200/N, 801/N)
        window = [200 / n, math.nextafter(801 / n, 0.0)] if cfg.get("use_flow_sigmas") else [200.5 / n, 801.5 / n]
        return {
            "sampler": "sa_solver",
            "sampler_options": {
                "predictor_order": int(cfg.get("predictor_order", 2)),
                "corrector_order": int(cfg.get("corrector_order", 2)),
                "tau": 1.0,
                "tau_window": window,
                "lower_order_final": bool(cfg.get("lower_order_final", True)),
                # its order-2 weights (h²/2 for the slope term's exponential weight), not the exact integrals
                "simple_order_2": True,
            },
        }

    def closest_sampler(self):
        return "sa_solver"


_IPNDM_REFUSAL = (
    "IPNDMScheduler (Dance Diffusion) reads no β table: it assumes a v-prediction model on the offset-free cosine "
    "schedule s = cos(πτ/2), σ = sin(πτ/2) fed τ ∈ [0, 1] (unisde's cosine schedule needs an offset > 0), visits the "
    "'crash' grid σ = sin²(πu/2), u = 1, (n−1)/n, …, 1/n (no unisde time grid), and on its first step from τ = 1 "
    "(α = 0) it rebuilds x̂0 from ε̂ divided by max(α, 1e-8) = 1e-8, which discards the model output there "
    "(x₁ = σ₁·x, whatever the model says). unisde's 'ipndm' sampler runs the same Adams–Bashforth warm-up on any "
    "other schedule."
)


class _MultistepFamily(_FlowSigmas, BetaTableConverter):
    """DPMSolverMultistep and UniPC: leading/linspace over n + 1 points without index 0.

    With ``use_flow_sigmas=True`` (Wan 2.1 ships UniPC so, with ``flow_shift=3.0``) they run on the rectified flow
    (:class:`_FlowSigmas`) with ``levels="unipc"`` / ``"dpmsolver"`` (their own base levels).

    ``use_exponential_sigmas`` / ``use_beta_sigmas`` space σ̃ between the table's ends (``uniform_lambda``; the
    ``diffusers_sigmas`` grid with Beta(0.6, 0.6) quantiles) and feed the model the int64 truncation of each level's
    fractional index (``timestep_rounding="diffusers_floor"``); Karras σ̃ (and DPM-Solver's λ-uniform ones) the
    rounded index (``"diffusers_round"``; DPMSolverMultistep skips that rounding on the cosine table, so its int64
    cast truncates them: ``"diffusers_floor"``, and they repeat 998 at the start). The twin steps between its
    float64 levels (which agree with diffusers' σ̃ to ~1e-7) but feeds the model the index diffusers computes for its
    own float64 σ̃ against its float32 log-σ̃ table
    (:func:`unisde.grids.diffusers_float32.diffusers_table_respaced_timesteps`), which on some tables (SD's
    scaled_linear, the cosine one) puts σ̃_max at 998.9999997 and so feeds 998 where the exact index gives 999: the
    timesteps are diffusers' own, bit for bit. A respacing flag with ``final_sigmas_type="sigma_min"`` is
    refused (zero-length last step)."""

    spacing_grids = {"leading": "leading_multistep", "linspace": "linspace_multistep"}
    accepts = {
        **BetaTableConverter.accepts,
        **THRESHOLDING,
        "use_karras_sigmas": ANY,
        "use_lu_lambdas": ANY,
        "use_exponential_sigmas": ANY,
        "use_beta_sigmas": ANY,
        "final_sigmas_type": ("zero", "sigma_min"),
        "solver_order": (1, 2, 3),
        "lower_order_final": ANY,
        **_FlowSigmas.FLOW_ACCEPTS,
        "shift_terminal": ANY,
    }

    def schedule_keys(self, cfg):
        flow = self._flow_schedule_keys(cfg)
        if flow is not None:
            return flow
        respaced = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
        flag = next((f for f in respaced if cfg.get(f)), None)
        if flag and cfg.get("final_sigmas_type", "zero") == "sigma_min":
            raise ConversionError(
                f"{self.name} flag final_sigmas_type='sigma_min' with {flag}=True is not supported by unisde's "
                "conversion: that grid already ends at the table's σ_min, so diffusers' last step is the "
                "zero-length σ_min → σ_min step, which leaves the sample noisy instead of denoising it "
                "(supported: final_sigmas_type='zero')"
            )
        out = super().schedule_keys(cfg)
        if cfg.get("use_exponential_sigmas") or cfg.get("use_beta_sigmas"):
            # diffusers casts these levels' fractional _sigma_to_t indices to int64 (truncation) for the model
            out["timestep_rounding"] = "diffusers_floor"
        return out


class DPMSolverMultistepConverter(_MultistepFamily):
    name = "DPMSolverMultistepScheduler"
    flow_levels = "dpmsolver"

    def schedule_keys(self, cfg):
        out = super().schedule_keys(cfg)
        # diffusers rounds the model's timesteps on Karras/λ-uniform σ, not the σ's; on the cosine table it skips
        # the rounding, and its int64 cast truncates them
        if cfg.get("use_karras_sigmas") or cfg.get("use_lu_lambdas"):
            cosine = cfg.get("beta_schedule") == "squaredcos_cap_v2"
            out["timestep_rounding"] = "diffusers_floor" if cosine else "diffusers_round"
        return out

    sampler = "dpmsolver++"
    accepts = {
        **_MultistepFamily.accepts,
        "algorithm_type": ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"),
        "solver_type": ("midpoint", "heun"),
        "euler_at_final": ANY,
    }

    def sampler_keys(self, cfg):
        return {"sampler": "dpmsolver++"}  # solver_order, algorithm_type, solver_type … reach it by option name

    def unsupported_combination(self, cfg):
        if cfg.get("algorithm_type") == "sde-dpmsolver++" and cfg.get("solver_order", 2) == 3:
            return (
                "algorithm_type='sde-dpmsolver++' with solver_order=3: diffusers weighs SDE-3M's second "
                "difference differently from the published method unisde implements, so the images would differ; "
                "use solver_order=2, or run unisde's SDE-3M on purpose with sampler='dpmsolver++', "
                "sampler_options={'algorithm_type': 'sde-dpmsolver++', 'solver_order': 3}"
            )
        return None

    def closest_sampler(self):
        return "dpmsolver++" if "dpmsolver++" in list_samplers() else "unipc"


class UniPCConverter(_MultistepFamily):
    """UniPCMultistepScheduler → ``unipc`` (``solver_type`` → ``variant``). With ``solver_type="bh1"`` and
    ``final_sigmas_type="zero"`` diffusers' last step, into σ = 0, returns NaN (measured at 4, 5 and 10 steps); the
    twin's is finite, so those runs have no diffusers result to match."""

    name = "UniPCMultistepScheduler"
    flow_levels = "unipc"

    def schedule_keys(self, cfg):
        out = super().schedule_keys(cfg)
        if cfg.get("use_karras_sigmas"):
            out["timestep_rounding"] = "diffusers_round"  # diffusers rounds the model's timesteps on Karras σ
        return out

    sampler = "unipc"
    accepts = {
        **_MultistepFamily.accepts,
        "solver_type": ("bh1", "bh2"),
        "disable_corrector": ANY,
        "predict_x0": ANY,  # reaches the sampler by name (False: UniPC's noise-prediction form)
    }

    def sampler_keys(self, cfg):
        return {"sampler": "unipc", "sampler_options": {"variant": cfg.get("solver_type", "bh2")}}

    def convert(self, cfg, sampler=None, sampler_options=None):
        out = super().convert(cfg, sampler, sampler_options)
        if out.get("sampler") != "unipc":
            # UniPC's solver_type (bh1/bh2) names its B(h); another sampler with a solver_type option (DPM-Solver's
            # midpoint/heun) would read it by name as its own, so it keeps its default
            out["solver_type"] = None
        return out

    def unsupported_combination(self, cfg):
        if cfg.get("predict_x0", True):
            return None
        if cfg.get("thresholding"):
            return (
                "predict_x0=False with thresholding=True: diffusers' UniPC thresholds x̂0 only in its data-prediction "
                "form and ignores the flag here, while unisde would apply it; set thresholding=False (what diffusers "
                "does) or predict_x0=True"
            )
        if cfg.get("prediction_type") == "flow_prediction":
            return "predict_x0=False with prediction_type='flow_prediction': diffusers refuses it too"
        return None


class EDMEulerConverter(Converter):
    name = "EDMEulerScheduler"
    sampler = "edm"
    accepts = {
        "sigma_min": ANY,
        "sigma_max": ANY,
        "sigma_data": ANY,
        "rho": ANY,
        "num_train_timesteps": ANY,
        "sigma_schedule": ("karras", "exponential"),
        "prediction_type": ("epsilon", "v_prediction"),
    }

    def schedule_keys(self, cfg):
        smin, smax = float(cfg.get("sigma_min") or 0.002), float(cfg.get("sigma_max") or 80.0)
        # diffusers calls EDM's preconditioned network "epsilon" (c_out > 0) and "v_prediction" (c_out < 0, CosXL);
        # the edm parameterisation reads the config's prediction_type for that sign
        out = {"parameterization": "edm"}
        if cfg.get("sigma_schedule", "karras") == "exponential":
            out["schedule"] = {"name": "ve", "sigma_min": smin, "sigma_max": smax, "timestep_convention": "edm"}
            out["time_grid"] = "uniform_lambda"
        else:
            out["schedule"] = {
                "name": "edm",
                "sigma_min": smin,
                "sigma_max": smax,
                "rho": float(cfg.get("rho", 7.0)),
                "timestep_convention": "edm",
            }
            out["time_grid"] = "karras"
        return out

    def explicit_grid(self, cfg):
        return True  # EDM's σ range and spacing are the model's

    def sampler_keys(self, cfg):
        return {"sampler": "edm", "sampler_options": {"solver": "euler"}}


class EDMDPMSolverMultistepConverter(EDMEulerConverter):
    """EDMDPMSolverMultistepScheduler → ``dpmsolver++`` on EDMEuler's schedule, parameterisation and grid (Karras ρ
    or exponential σ between σ_min and σ_max, then 0): DPM-Solver++ 1–3M in data prediction (Lu et al. 2022b
    [DPMSolver++]) on s = 1, σ̃ = σ, which is the multistep DPM-Solver++ with α = 1 diffusers writes there.
    ``solver_order``, ``algorithm_type``, ``solver_type``, ``lower_order_final`` and ``euler_at_final`` reach the
    sampler by name; the last step, into σ = 0, is first order in both. ``final_sigmas_type="sigma_min"`` is
    refused: diffusers' grid already ends at σ_min, so its last step is the zero-length σ_min → σ_min step, which
    returns the noisy sample undenoised (and NaN at third order with ≥ 15 steps, where r = h_{k−1}/h = ∞)."""

    name = "EDMDPMSolverMultistepScheduler"
    sampler = "dpmsolver++"
    accepts = {
        **EDMEulerConverter.accepts,
        **THRESHOLDING,
        "solver_order": (1, 2, 3),
        "algorithm_type": ("dpmsolver++", "sde-dpmsolver++"),
        "solver_type": ("midpoint", "heun"),
        "lower_order_final": ANY,
        "euler_at_final": ANY,
        "final_sigmas_type": ("zero",),
    }

    def sampler_keys(self, cfg):
        return {"sampler": "dpmsolver++"}  # solver_order, algorithm_type, solver_type … reach it by option name

    def unsupported_combination(self, cfg):
        if cfg.get("algorithm_type") == "sde-dpmsolver++" and cfg.get("solver_order", 2) == 3:
            return (
                "algorithm_type='sde-dpmsolver++' with solver_order=3: diffusers' EDM class has no SDE third-order "
                "step (its step() fails there); use solver_order 1 or 2, or run unisde's SDE-3M on purpose with "
                "sampler='dpmsolver++', sampler_options={'algorithm_type': 'sde-dpmsolver++', 'solver_order': 3}"
            )
        return None

    def closest_sampler(self):
        return "dpmsolver++" if "dpmsolver++" in list_samplers() else "edm"


class CosineDPMSolverMultistepConverter(EDMDPMSolverMultistepConverter):
    """CosineDPMSolverMultistepScheduler (Stable Audio [StableAudio]) → ``dpmsolver++`` with
    ``algorithm_type="sde-dpmsolver++"`` and Brownian-tree noise. Its process is EDM's s = 1, σ̃ ∈ [σ_min, σ_max]
    (defaults 0.3, 500) with the exponential (default) or Karras ρ σ grid: the ``ve`` / ``edm`` schedule with the
    ``uniform_lambda`` / ``karras`` grid, as for EDMEuler. Its network is EDM-preconditioned (c_in, c_skip, c_out
    with σ_data, default 1) but fed c_noise = 2/π · atan σ̃ and, by default, trained for v (c_out negated): the
    ``edm`` parameterisation with ``c_noise="atan"`` and the config's ``prediction_type``. With σ_data = 1 this is
    v-prediction on the cosine process s = cos(πτ/2), σ = sin(πτ/2) fed τ = 2/π · atan σ̃ — hence the name. The
    solver is always SDE-DPM-Solver++ 1–2M (Lu et al. 2022b [DPMSolver++]), its noise the increments of one
    Brownian path over [σ_min, σ_max] seeded by the step generator's ``initial_seed()``
    (:mod:`unisde.samplers.brownian`: torchsde's path bit for bit; a fresh random seed without a generator, so only
    seeded runs repeat), queried at the σ̃ levels computed in float32 as the class computes them (the grids'
    ``float32`` option). ``solver_order=3`` is refused: the class has no third-order step (its ``step()`` fails
    there)."""

    name = "CosineDPMSolverMultistepScheduler"
    accepts = {
        "sigma_min": ANY,
        "sigma_max": ANY,
        "sigma_data": ANY,
        "rho": ANY,
        "num_train_timesteps": ANY,
        "sigma_schedule": ("exponential", "karras"),
        "prediction_type": ("epsilon", "v_prediction"),
        "solver_order": (1, 2, 3),
        "solver_type": ("midpoint", "heun"),
        "lower_order_final": ANY,
        "euler_at_final": ANY,
        "final_sigmas_type": ("zero",),
    }

    def schedule_keys(self, cfg):
        out = super().schedule_keys({**self.defaults(), **cfg})  # its default σ grid is exponential, not EDM's
        out["parameterization_options"] = {"c_noise": "atan"}
        # the Brownian path is queried at the grid's σ̃: they must be diffusers' float32 levels bit for bit
        out["time_grid_options"] = {"float32": True}
        return out

    def sampler_keys(self, cfg):
        return {
            "sampler": "dpmsolver++",
            "sampler_options": {"algorithm_type": "sde-dpmsolver++", "noise": "brownian_tree"},
        }

    def unsupported_combination(self, cfg):
        if cfg.get("solver_order", 2) == 3:
            return (
                "solver_order=3: diffusers' CosineDPMSolverMultistepScheduler has no third-order step (its step() "
                "fails there); use solver_order 1 or 2, or run unisde's SDE-3M on purpose with sampler='dpmsolver++', "
                "sampler_options={'algorithm_type': 'sde-dpmsolver++', 'solver_order': 3, 'noise': 'brownian_tree'}"
            )
        return None


class CMStochasticIterativeConverter(Converter):
    """CMStochasticIterativeScheduler (consistency models, Song et al. 2023 [CM]) → ``cm_stochastic``: the EDM
    schedule (σ_min, σ_max, ρ), the ``cm`` parameterisation (EDM preconditioning with the boundary condition in
    c_skip/c_out, c_noise = 250 ln σ̃; ``sigma_data``, ``sigma_min``), the ``karras`` grid on the training
    discretisation of ``num_train_timesteps`` levels (indices i·⌊N/n⌋ from σ_max; custom ``timesteps`` are such
    indices, ``timesteps_convention="train_index"``), ``clip_denoised`` as clipping x̂0 to [−1, 1], the start from
    σ_max · z (``init_noise="sigma"``) and Algorithm 1's re-noising with ``s_noise``."""

    name = "CMStochasticIterativeScheduler"
    sampler = "cm_stochastic"
    accepts = {
        "num_train_timesteps": ANY,
        "sigma_min": ANY,
        "sigma_max": ANY,
        "sigma_data": ANY,
        "s_noise": ANY,
        "rho": ANY,
        "clip_denoised": ANY,
    }

    def schedule_keys(self, cfg):
        cfg = {**self.defaults(), **cfg}
        n, smin = int(cfg["num_train_timesteps"]), float(cfg["sigma_min"])
        if n < 2:
            raise ConversionError(f"{self.name} num_train_timesteps={n}: the Karras discretisation needs >= 2 levels")
        return {
            "schedule": {
                "name": "edm",
                "sigma_min": smin,
                "sigma_max": float(cfg["sigma_max"]),
                "rho": float(cfg["rho"]),
                "timestep_convention": "edm",
            },
            "num_train_timesteps": n,
            "parameterization": "cm",
            "parameterization_options": {"sigma_data": float(cfg["sigma_data"]), "sigma_min": smin},
            "time_grid": "karras",
            "time_grid_options": {"train_steps": n},
            "timesteps_convention": "train_index",
            "init_noise": "sigma",
            "clip_sample": bool(cfg["clip_denoised"]),
            "clip_sample_range": 1.0,
        }

    def explicit_grid(self, cfg):
        return True  # the model was distilled on that discretisation

    def sampler_keys(self, cfg):
        return {"sampler": "cm_stochastic", "sampler_options": {"s_noise": float(cfg.get("s_noise", 1.0))}}

    def closest_sampler(self):
        return "cm_stochastic"


class ScoreSdeVeConverter(Converter):
    name = "ScoreSdeVeScheduler"
    sampler = "pc"
    accepts = {
        "sigma_min": ANY,
        "sigma_max": ANY,
        "sampling_eps": ANY,
        "num_train_timesteps": ANY,
        "snr": ANY,
        "correct_steps": ANY,
    }

    def schedule_keys(self, cfg):
        return {
            "schedule": {
                "name": "ve",
                "sigma_min": float(cfg.get("sigma_min", 0.01)),
                "sigma_max": float(cfg.get("sigma_max", 1348.0)),
                "timestep_convention": "sigma",
            },
            "prediction_type": "score",
            "time_grid": "uniform_t",
            "t_min": float(cfg.get("sampling_eps", 1e-5)),
        }

    def explicit_grid(self, cfg):
        return False


class DPMSolverSinglestepConverter(_FlowSigmas, BetaTableConverter):
    """Singlestep DPM-Solver(++): the multistep schedulers' linspace over n + 1 points without index 0 (the class has
    no ``timestep_spacing``), Karras or exponential σ; every algorithm/solver flag reaches the sampler by name. As the
    multistep classes, it feeds the model rounded timesteps on Karras σ and truncated ones (its int64 cast) on
    exponential σ, each level's index as diffusers computes it (``"diffusers_round"`` / ``"diffusers_floor"``, see
    :class:`_MultistepFamily`), while stepping between the exact levels.

    With ``use_flow_sigmas=True`` it runs on the rectified flow (:class:`_FlowSigmas`) with DPM-Solver multistep's
    levels (``levels="dpmsolver"``: its ``set_timesteps`` computes the same ones, μ setting the shift to e^μ) and its
    last step into σ = 0 (``final_sigmas_type="zero"``, the only value it pairs with flow levels without reading a
    β-table σ_min as one; so ``algorithm_type="dpmsolver"``, which diffusers allows only with ``"sigma_min"`` and
    whose noise form has no flow prediction there, does not arise). Its ``set_timesteps(timesteps=...)`` then uses
    only their number; the twin refuses custom timesteps instead."""

    name = "DPMSolverSinglestepScheduler"
    sampler = "dpmsolver_singlestep"
    accepts = {
        **BETA_KEYS,
        "prediction_type": PREDICTIONS,
        **THRESHOLDING,
        "use_karras_sigmas": ANY,
        "use_exponential_sigmas": ANY,
        "final_sigmas_type": ("zero", "sigma_min"),
        "solver_order": (1, 2, 3),
        "lower_order_final": ANY,
        "solver_type": ("midpoint", "heun"),
        "algorithm_type": ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"),
        **_FlowSigmas.FLOW_ACCEPTS,
    }

    def schedule_keys(self, cfg):
        flow = self._flow_schedule_keys(cfg)
        if flow is not None:
            return flow
        out = super().schedule_keys(cfg)
        if out["time_grid"] not in ("karras", "uniform_lambda"):
            out["time_grid"] = "linspace_multistep"
        elif cfg.get("use_karras_sigmas"):
            out["timestep_rounding"] = "diffusers_round"
        else:
            out["timestep_rounding"] = "diffusers_floor"
        return out

    def unsupported_combination(self, cfg):
        if cfg.get("algorithm_type") == "dpmsolver" and cfg.get("final_sigmas_type", "zero") == "zero":
            return (
                "algorithm_type='dpmsolver' with final_sigmas_type='zero': diffusers refuses that pair (its noise form "
                "cannot step to σ = 0), so a config holding it has no diffusers result to reproduce (and with "
                "use_flow_sigmas, which needs 'zero', diffusers' noise form takes no flow_prediction output either); "
                "use algorithm_type='dpmsolver++', or final_sigmas_type='sigma_min' without flow sigmas"
            )
        return None

    @staticmethod
    def _diffusers_slip(cfg) -> bool:
        return (
            cfg.get("algorithm_type") == "sde-dpmsolver++"
            and cfg.get("solver_type") == "heun"
            and cfg.get("solver_order", 2) == 3
        )

    def is_twin(self, cfg, sampler, sampler_options):
        return not (sampler is not None and self._diffusers_slip(cfg)) and super().is_twin(
            cfg, sampler, sampler_options
        )

    def sampler_keys(self, cfg):
        if self._diffusers_slip(cfg):
            raise ConversionError(
                "DPMSolverSinglestepScheduler flags algorithm_type='sde-dpmsolver++', solver_type='heun', "
                "solver_order=3 are not supported together by unisde's conversion: diffusers weighs that step's second "
                "difference by (1 − e^{−2h} − 2h)/(4h²) − ½ (the ½ with the wrong sign; the exact integral is "
                "−c(2h)), and unisde does not reproduce the slip. Use solver_type='midpoint', solver_order 1 or 2, "
                "or pass sampler='dpmsolver_singlestep' to run the exact third-order form"
            )
        return {"sampler": "dpmsolver_singlestep"}  # solver_order, solver_type, … reach it by option name

    def closest_sampler(self):
        return "dpmsolver_singlestep"


class LCMConverter(BetaTableConverter):
    """LCM: the ``lcm`` grid (``original_inference_steps``), the ``lcm`` sampler with ``timestep_scaling``. LCM reads
    neither ``timestep_spacing``, ``steps_offset`` nor ``set_alpha_to_one`` (its last step returns the consistency
    function's output), so any value of those converts. Its grid is the distillation's: a ``sampler=`` keeps it."""

    name = "LCMScheduler"
    sampler = "lcm"
    accepts = {
        **BETA_KEYS,
        "prediction_type": PREDICTIONS,
        "rescale_betas_zero_snr": ANY,
        **CLIPPING,
        **THRESHOLDING,
        "original_inference_steps": ANY,
        "timestep_scaling": ANY,
        "timestep_spacing": ANY,
        "steps_offset": ANY,
        "set_alpha_to_one": ANY,
    }

    def schedule_keys(self, cfg):
        steps = cfg.get("original_inference_steps", self.defaults()["original_inference_steps"])
        return {"time_grid": "lcm", "time_grid_options": {"original_inference_steps": int(steps)}}

    def explicit_grid(self, cfg):
        return True

    def sampler_keys(self, cfg):
        scaling = cfg.get("timestep_scaling", self.defaults()["timestep_scaling"])
        return {"sampler": "lcm", "sampler_options": {"timestep_scaling": float(scaling)}}

    def closest_sampler(self):
        return "lcm"


class TCDConverter(LCMConverter):
    """TCD: the ``lcm`` grid and the ``tcd`` sampler (γ = a pipeline's ``eta``, 0.3 by default as in
    ``TCDScheduler.step``), ending at the first training index as diffusers does. TCDScheduler applies neither
    clipping, thresholding nor LCM's boundary condition whatever its config says, so the conversion sets
    ``clip_sample`` and ``thresholding`` off."""

    name = "TCDScheduler"
    sampler = "tcd"

    def schedule_keys(self, cfg):
        return {**super().schedule_keys(cfg), "clip_sample": False, "thresholding": False}

    quirk_options = frozenset({"diffusers_final_step"})

    def sampler_keys(self, cfg):
        return {"sampler": "tcd", "sampler_options": {"diffusers_final_step": True}}

    def closest_sampler(self):
        return "tcd"


class DDIMInverseConverter(BetaTableConverter):
    """DDIM inversion: the leading/trailing grid walked upwards by ``ddim_inverse`` (``set_alpha_to_one``,
    ``clip_sample`` and ``clip_sample_range`` reach it by name). diffusers converts the output of the model run at
    the step's target timestep with the coefficients of its source time; for ε-prediction that is ε̂ at the target,
    which ``ddim_inverse`` reproduces; for v/x0 prediction the conversion mixes the two times (x0-prediction divides
    by σ = 0 on the first step), so only ``sampler=`` converts those."""

    name = "DDIMInverseScheduler"
    sampler = "ddim_inverse"
    accepts = {
        **BETA_KEYS,
        "prediction_type": PREDICTIONS,
        "timestep_spacing": ("leading", "trailing"),
        "steps_offset": ANY,
        "rescale_betas_zero_snr": ANY,
        "set_alpha_to_one": ANY,
        **CLIPPING,
    }

    def is_twin(self, cfg, sampler, sampler_options):
        return not (sampler is not None and cfg.get("prediction_type", "epsilon") != "epsilon") and super().is_twin(
            cfg, sampler, sampler_options
        )

    def sampler_keys(self, cfg):
        prediction = cfg.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ConversionError(
                f"DDIMInverseScheduler flag prediction_type={prediction!r} is not supported by unisde's conversion "
                "(supported: 'epsilon'): diffusers converts the output of the model evaluated at each step's target "
                "timestep with the coefficients of the step's start, which for this prediction type is not an estimate "
                "unisde can reproduce; to invert this model with unisde's DDIM inversion pass "
                "sampler='ddim_inverse' (or sampler='inverse' for any deterministic sampler)"
            )
        return {"sampler": "ddim_inverse", "sampler_options": {"diffusers_source_index": True}}

    def closest_sampler(self):
        return "ddim_inverse"


class RefusingByName:
    """Mixin: ``_REFUSALS = {flag: reason}``; a value of a listed flag that ``accepts`` does not list is refused with
    its reason (before the generic check, whose message gives none)."""

    _REFUSALS: ClassVar[dict[str, str]] = {}

    def check_flags(self, cfg, twin):
        defaults = self.defaults()
        for flag, reason in self._REFUSALS.items():
            if flag not in cfg or flag not in defaults or _same(cfg[flag], defaults[flag]):
                continue
            allowed = self.accepts.get(flag, ())
            if flag in self.accepts and (allowed is ANY or any(_same(cfg[flag], v) for v in allowed)):
                continue
            raise ConversionError(
                f"{self.name} flag {flag}={cfg[flag]!r} is not supported by unisde's conversion: {reason}"
            )
        return super().check_flags(cfg, twin)


class DPMSolverMultistepInverseConverter(RefusingByName, BetaTableConverter):
    """DPMSolverMultistepInverseScheduler (DPM-Solver++ inversion, used by DiffEdit) → ``inverse`` around
    ``dpmsolver++``: the multistep exponential integrator (Lu et al. 2022b [DPMSolver++]) run from data towards noise
    on an increasing grid, where its formulas hold unchanged with h < 0. Its (default, only converted) linspace
    spacing visits the indices round(linspace(0, N − 1, n + 1)) upwards, the model evaluated at the first n: from
    index 0 (the table's σ_min, not the data itself) to N − 1. That is the ``linspace_multistep`` grid ending at index
    0 (``final_sigmas_type="sigma_min"``) walked upwards by ``inverse``, whose inner ``dpmsolver++`` takes
    ``solver_order``, ``solver_type``, ``algorithm_type`` (``dpmsolver++``, ``dpmsolver``), ``lower_order_final`` and
    ``euler_at_final`` from the config (``invert_options``). Refused by name, with the reason: the leading and
    trailing spacings, the Karras/exponential/Beta/flow σ grids, the SDE algorithm types, learned variances and a
    ``lambda_min_clipped`` other than −∞ (see ``_REFUSALS``)."""

    name = "DPMSolverMultistepInverseScheduler"
    sampler = "inverse"
    SOLVER_KEYS = ("solver_order", "solver_type", "algorithm_type", "lower_order_final", "euler_at_final")
    accepts = {
        **BETA_KEYS,
        "prediction_type": PREDICTIONS,
        **THRESHOLDING,
        "timestep_spacing": ("linspace",),
        "steps_offset": ANY,  # read by the leading spacing only
        "flow_shift": ANY,  # read with use_flow_sigmas only
        "solver_order": (1, 2, 3),
        "algorithm_type": ("dpmsolver++", "dpmsolver"),
        "solver_type": ("midpoint", "heun"),
        "lower_order_final": ANY,
        "euler_at_final": ANY,
    }
    _REFUSALS = {
        "timestep_spacing": "its leading spacing evaluates at i·⌊N/(n + 1)⌋ (+ steps_offset) and then jumps to "
        "index N − 1, and its trailing spacing starts above index 0 and ends with the zero-length step "
        "N − 1 → N − 1; no unisde grid walked upwards visits either (supported: 'linspace')",
        "use_karras_sigmas": "its Karras σ grid ends with the zero-length step σ_max → σ_max and feeds the model "
        "rounded timesteps; no unisde grid walked upwards reproduces it",
        "use_exponential_sigmas": "its exponential σ grid ends with the zero-length step σ_max → σ_max and feeds "
        "the model truncated timesteps; no unisde grid walked upwards reproduces it",
        "use_beta_sigmas": "its Beta σ grid ends with the zero-length step σ_max → σ_max; no unisde grid walked "
        "upwards reproduces it",
        "use_flow_sigmas": "its flow grid decreases (from τ ≈ 1 towards 0), so the 'inverse' scheduler then "
        "samples rather than inverts, ending with a zero-length step",
        "algorithm_type": "the SDE forms draw fresh noise, and a stochastic sampler has no inverse (run upwards "
        "their noise weight √(1 − e^{−2h}) has h < 0: NaN in diffusers)",
        "variance_type": "a learned variance's extra channels are not converted for inversion",
        "lambda_min_clipped": "clipping λ moves the grid's top below index N − 1, which the linspace grid walked "
        "upwards does not follow",
        "prediction_type": "flow_prediction needs use_flow_sigmas, which is refused",
    }

    def schedule_keys(self, cfg):
        return {"time_grid": "linspace_multistep", "final_sigmas_type": "sigma_min"}

    def explicit_grid(self, cfg):
        return True  # the grid walked upwards must stay the class's, whatever sampler= inverts

    def sampler_keys(self, cfg):
        if "dpmsolver++" not in list_samplers():
            raise ConversionError(
                f"{self.name} converts to sampler 'inverse' around 'dpmsolver++', which is not installed "
                "(pip install plugins/unisde-dpmsolver)"
            )
        defaults = self.defaults()
        options = {key: cfg.get(key, defaults[key]) for key in self.SOLVER_KEYS}
        return {"sampler": "inverse", "sampler_options": {"invert": "dpmsolver++", "invert_options": options}}

    def closest_sampler(self):
        return "inverse"


class FlowMatchEulerConverter(Converter):
    """FlowMatch Euler (SD3, Flux, Wan, LTX, CogView4): the rectified flow, flow prediction, the ``flow_match`` grid
    with the config's shift options, and DDIM with η = 0 — which on the rectified flow is the Euler step
    x + (t′ − t) u exactly. ``stochastic_sampling=True`` re-noises x̂0 to the next level instead,
    x′ = (1 − σ′) x̂0 + σ′ z: the ``lcm`` sampler without its boundary condition (s′ x̂0 + σ′ z on any schedule),
    drawing z from the step's generator as diffusers does."""

    name = "FlowMatchEulerDiscreteScheduler"
    sampler = "ddim"
    accepts = {
        "num_train_timesteps": ANY,
        "shift": ANY,
        "use_dynamic_shifting": ANY,
        "base_shift": ANY,
        "max_shift": ANY,
        "base_image_seq_len": ANY,
        "max_image_seq_len": ANY,
        "shift_terminal": ANY,
        "use_karras_sigmas": ANY,
        "use_exponential_sigmas": ANY,
        "use_beta_sigmas": ANY,
        "time_shift_type": ("exponential", "linear"),
        "invert_sigmas": (False,),
        "stochastic_sampling": ANY,
    }
    GRID_KEYS = ("num_train_timesteps", "shift", "use_dynamic_shifting", "time_shift_type", "shift_terminal")

    def schedule_keys(self, cfg):
        defaults = {**FlowMatchEulerConverter.defaults(), **self.defaults()}
        value = {k: cfg.get(k, defaults[k]) for k in self.GRID_KEYS}
        if value["shift"] is None or not value["shift"] > 0:
            raise ConversionError(f"{self.name} shift={value['shift']!r} must be > 0")
        spacing = (
            "karras"
            if cfg.get("use_karras_sigmas")
            else "exponential"
            if cfg.get("use_exponential_sigmas")
            else "beta"
            if cfg.get("use_beta_sigmas")
            else "linear"
        )
        options = {"spacing": spacing} if spacing != "linear" else {}
        return {
            "schedule": {"name": "rectified-flow", "num_train_timesteps": int(value["num_train_timesteps"])},
            "parameterization": "flow_prediction",
            "time_grid": "flow_match",
            "time_grid_options": options,
            "sigmas_convention": "flow",
            "init_noise": "marginal",
            "stochastic_sampling": False,
        }  # translated into the sampler (lcm), not a UnifiedScheduler flag

    def explicit_grid(self, cfg):
        return True  # the shift is part of how the model is meant to be sampled

    def sampler_keys(self, cfg):
        # its step output holds prev_sample only; without x̂0 to return, DDIM's step is one pass over the model
        # output, x + (σ' − σ) u, as FlowMatch Euler's (UnifiedScheduler._fused_steps)
        if cfg.get("stochastic_sampling"):
            return {
                "sampler": "lcm",
                "sampler_options": {"boundary_condition": False},
                "return_pred_original_sample": False,
            }
        return {"sampler": "ddim", "sampler_options": {"eta": 0.0}, "return_pred_original_sample": False}

    def is_twin(self, cfg, sampler, sampler_options):
        if sampler is None:
            return True
        keys = self.sampler_keys(cfg)
        return sampler == keys["sampler"] and dict(sampler_options or {}) == dict(keys.get("sampler_options") or {})


class FlowMatchLCMConverter(FlowMatchEulerConverter):
    """FlowMatchLCMScheduler: FlowMatch Euler's grid (shift, μ, ``shift_terminal``, Karras/exponential/beta σ) and
    the step x′ = (1 − σ′) x̂0 + σ′ z with x̂0 = x − σ u — consistency sampling without a boundary condition, i.e.
    the ``lcm`` sampler with ``boundary_condition=False`` (its last step returns x̂0, where σ′ = 0). Scale-wise
    generation (``scale_factors``: x̂0 resized between steps) changes the sample's shape, which no unisde sampler
    does, so it is refused."""

    name = "FlowMatchLCMScheduler"
    sampler = "lcm"
    accepts = {
        **{k: v for k, v in FlowMatchEulerConverter.accepts.items() if k != "stochastic_sampling"},
        "scale_factors": (None,),
        "upscale_mode": ANY,
    }

    def sampler_keys(self, cfg):
        return {"sampler": "lcm", "sampler_options": {"boundary_condition": False}}

    def closest_sampler(self):
        return "lcm"


class LTXEulerAncestralRFConverter(FlowMatchEulerConverter):
    """LTXEulerAncestralRFScheduler (ComfyUI's ``sample_euler_ancestral_RF``): its step goes down to
    σ_d = σ′(1 + (σ′/σ − 1) η), then forward-noises to σ′ with ``s_noise`` · z: ``ddim`` with ``ancestral="rf"``.
    With ``num_inference_steps`` it takes the grid of ``FlowMatchEulerDiscreteScheduler.from_config`` of its own
    config — FlowMatch's shift keys included when it was made from a FlowMatch config, as its docs suggest for LTX
    pipelines — so those keys are its keys here too. Its ComfyUI path, ``set_timesteps(sigmas=[…, 0])`` (or
    ``timesteps=``, an alias), uses the levels as given, the last as the end point, which it also lists as a
    timestep whose step keeps the sample: ``sigmas_convention="flow_levels"``."""

    name = "LTXEulerAncestralRFScheduler"
    sampler = "ddim"
    accepts = {
        **FlowMatchEulerConverter.accepts,
        "stochastic_sampling": ANY,  # read by FlowMatch's step only, which this class never takes
        "num_train_timesteps": ANY,
        "eta": ANY,
        "s_noise": ANY,
    }

    @classmethod
    def defaults(cls) -> dict:
        return {**FlowMatchEulerConverter.defaults(), **super().defaults()}

    def schedule_keys(self, cfg):
        return {**super().schedule_keys(cfg), "sigmas_convention": "flow_levels"}

    def unsupported_combination(self, cfg):
        eta, s_noise = float(cfg.get("eta", 1.0)), float(cfg.get("s_noise", 1.0))
        if not 0.0 <= eta <= 1.0 or s_noise < 0:
            return (
                f"eta={eta}, s_noise={s_noise}: the RF down-step is converted for 0 <= eta <= 1 and s_noise >= 0 "
                "(beyond, σ_d leaves [0, σ′])"
            )
        if eta > 0 and s_noise == 0:
            return (
                f"eta={eta} with s_noise=0.0: diffusers then skips the rescaling from σ_d to σ′ along with the "
                "noise, leaving each sample at the down-step level σ_d while the next step assumes σ′; unisde's "
                "ddim with ancestral='rf', s_noise=0 rescales (pass sampler='ddim' with those options)"
            )
        return None

    def sampler_keys(self, cfg):
        return {
            "sampler": "ddim",
            "sampler_options": {
                "eta": float(cfg.get("eta", 1.0)),
                "ancestral": "rf",
                "s_noise": float(cfg.get("s_noise", 1.0)),
            },
        }


class FlowMatchHeunConverter(FlowMatchEulerConverter):
    """FlowMatch Heun: EDM's Heun (Karras et al. 2022, Alg. 1) in the flow view x/(s + σ) against τ = σ/(s + σ),
    which on the rectified flow is (x, t) itself; Euler into τ = 0."""

    name = "FlowMatchHeunDiscreteScheduler"
    sampler = "edm"
    accepts = {"num_train_timesteps": ANY, "shift": ANY}

    def sampler_keys(self, cfg):
        return {"sampler": "edm", "sampler_options": {"solver": "heun", "view": "flow"}}


# ---------------------------------------------------------------------------------------------- refusals
def _refusing(class_name: str, reason: str, *, gaussian: bool = False, base: type = Refusing, closest: str = "ddim"):
    """A converter for a class without a twin: schedule/grid from ``base`` (a class whose schedule unisde reads is
    ``gaussian``: ``sampler=`` works on it), conversion refused with ``reason``."""
    if base is not Refusing:
        gaussian = True
    elif gaussian is False and "Gaussian" not in reason and "flow" not in reason:
        reason = f"{reason} unisde does not read this class's schedule keys yet, so sampler= cannot stand in either."
    return type(
        class_name.replace("Scheduler", "Converter"),
        (base,),
        {
            "name": class_name,
            "sampler": None,
            "gaussian": gaussian,
            "closest_sampler": lambda self: closest,
            "refusal": f"{reason} To run a unisde sampler on this model's schedule, pass sampler= "
            f"(e.g. UnifiedScheduler.from_config(config, sampler={closest!r}))."
            if gaussian
            else reason,
        },
    )


_NO_TWIN_YET = "unisde has no sampler that reproduces its algorithm yet."
_NON_GAUSSIAN = (
    "it is not a Gaussian (s, σ) diffusion (discrete/masked-token or another process), which unisde's "
    "samplers do not apply to."
)
_FLOW = (
    "flow-matching (rectified-flow) configs are not supported by this version of unisde; refusing rather than "
    "running the model under a wrong (DDPM) schedule."
)


class _BetaRefusing(BetaTableConverter, Refusing):
    """A β-table class without a twin: its schedule, spacing, Karras/exponential σ and x̂0 post-processing are
    read, so ``sampler=`` runs a unisde sampler on it."""

    accepts = {
        **BetaTableConverter.accepts,
        **CLIPPING,
        **THRESHOLDING,
        "use_karras_sigmas": ANY,
        "use_exponential_sigmas": ANY,
        "use_lu_lambdas": ANY,
        "set_alpha_to_one": ANY,
    }


REFUSING = (
    _refusing("IPNDMScheduler", _IPNDM_REFUSAL, closest="ipndm"),
    _refusing("DiscreteDDIMScheduler", f"discrete DDIM: {_NO_TWIN_YET}", base=_BetaRefusing),
    _refusing("KarrasVeScheduler", f"the stochastic Karras VE sampler: {_NO_TWIN_YET}", closest="edm"),
    _refusing(
        "RePaintScheduler", f"RePaint (inpainting resampling): {_NO_TWIN_YET}", base=_BetaRefusing, closest="ddpm"
    ),
    _refusing("FlowMapEulerDiscreteScheduler", _FLOW, gaussian=False),
    _refusing("HeliosScheduler", _FLOW, gaussian=False),
    _refusing("HeliosDMDScheduler", _FLOW, gaussian=False),
    _refusing("SCMScheduler", f"sCM (continuous-time consistency, TrigFlow): {_NO_TWIN_YET}", gaussian=False),
    _refusing("PiflowScheduler", f"π-Flow (policy-based flow): {_FLOW}", gaussian=False),
    _refusing("MiniMaxH3Scheduler", _NON_GAUSSIAN, gaussian=False),
    _refusing("VQDiffusionScheduler", _NON_GAUSSIAN, gaussian=False),
    _refusing("AmusedScheduler", _NON_GAUSSIAN, gaussian=False),
    _refusing("BlockRefinementScheduler", _NON_GAUSSIAN, gaussian=False),
    _refusing("EntropyBoundScheduler", _NON_GAUSSIAN, gaussian=False),
    _refusing("ConsistencyDecoderScheduler", f"the consistency decoder's sampler: {_NON_GAUSSIAN}", gaussian=False),
    _refusing("RFD4ProteinaScheduler", _NON_GAUSSIAN, gaussian=False),
)

BUILTIN_CONVERTERS = (
    DDPMConverter,
    DDPMParallelConverter,
    DDIMConverter,
    DDIMParallelConverter,
    PNDMConverter,
    EulerConverter,
    EulerAncestralConverter,
    HeunConverter,
    LMSConverter,
    DPMSolverMultistepConverter,
    UniPCConverter,
    EDMEulerConverter,
    EDMDPMSolverMultistepConverter,
    CosineDPMSolverMultistepConverter,
    CMStochasticIterativeConverter,
    ScoreSdeVeConverter,
    KDPM2Converter,
    KDPM2AncestralConverter,
    DPMSolverSDEConverter,
    DEISConverter,
    SASolverConverter,
    DPMSolverSinglestepConverter,
    LCMConverter,
    TCDConverter,
    DDIMInverseConverter,
    DPMSolverMultistepInverseConverter,
    FlowMatchEulerConverter,
    FlowMatchHeunConverter,
    FlowMatchLCMConverter,
    LTXEulerAncestralRFConverter,
) + REFUSING


@hookimpl
def unisde_register_converters(register):
    for converter in BUILTIN_CONVERTERS:
        register(converter)


# ---------------------------------------------------------------------------------------------- detection
def _owner_class(config) -> str | None:
    """The class of the live scheduler whose ``config`` is this very object (``pipe.scheduler.config`` carries no
    class name; the object that holds it knows)."""
    from diffusers.configuration_utils import FrozenDict

    if not isinstance(config, FrozenDict):
        return None
    for ref in gc.get_referrers(config):
        if getattr(ref, "_internal_dict", None) is config:
            return type(ref).__name__
        if isinstance(ref, dict):  # the owner's attribute dict
            for owner in gc.get_referrers(ref):
                if getattr(owner, "_internal_dict", None) is config:
                    return type(owner).__name__
    return None


def _keys_match(cfg: dict) -> str:
    """The registered class whose ``__init__`` keys best match the config's (Jaccard similarity); a tie between
    classes that convert differently is a ValueError naming them."""
    keys = {k for k in cfg if not k.startswith("_")}
    scored = []
    for name in list_converters():
        try:
            params = set(get_converter(name).defaults())
        except Exception:  # noqa: BLE001 - a class this diffusers version lacks cannot be the source
            continue
        if params:
            scored.append((len(keys & params) / len(keys | params), name))
    if not scored:
        raise ConversionError("no converter is registered")
    best = max(score for score, _ in scored)
    tied = sorted(name for score, name in scored if score == best)
    if best < 0.5:
        raise ConversionError(
            f"the config's keys {sorted(keys)} match no diffusers scheduler class; add "
            "'_class_name' (the source class) or pass the scheduler object itself"
        )
    if len(tied) > 1:
        conversions = set()
        for name in tied:
            converter = get_converter(name)()
            try:
                conversions.add(repr(sorted(converter.convert(cfg).items())))
            except ConversionError as exc:
                conversions.add(f"error: {exc}")
        if len(conversions) > 1:
            raise ConversionError(
                f"the config's keys match {', '.join(tied)} equally, and they run different "
                "algorithms; pass the scheduler object (from_config(pipe.scheduler)) or a config "
                "with '_class_name'"
            )
    return tied[0]


def source_class(config, obj=None) -> str:
    """The diffusers class a config comes from (see the module docstring for the order of the evidence)."""
    cfg = dict(config)
    if cfg.get("_class_name"):
        return str(cfg["_class_name"])
    if obj is not None and not isinstance(obj, dict):
        return type(obj).__name__
    return _owner_class(config) or _keys_match(cfg)


def convert(
    config, sampler: str | None = None, sampler_options: dict | None = None, obj=None, name: str | None = None
) -> dict:
    """The unisde keys that reproduce a diffusers scheduler config (see :class:`Converter`); ``name``: the source
    class when the caller has found it already (:func:`source_class`)."""
    name = name or source_class(config, obj)
    if name not in list_converters():
        raise ConversionError(
            f"no unisde converter for the diffusers scheduler class {name!r}; classes with one: "
            f"{_fmt(list_converters())}. Pass sampler= with a config whose schedule unisde reads, or "
            "register a converter (docs/plugins.md)"
        )
    return get_converter(name)().convert(dict(config), sampler, sampler_options)


def foreign_keys(config, name: str) -> set[str]:
    """The keys of a source config that its class does not take: diffusers keeps the keys of the config a scheduler
    was made from (``EulerAncestralDiscreteScheduler.from_config(pndm.config)`` carries PNDM's ``set_alpha_to_one``
    and ``skip_prk_steps``) and the class ignores them. A conversion ignores them too (:meth:`Converter.check_flags`),
    and ``UnifiedScheduler.from_config`` drops them, since the UnifiedScheduler would otherwise read them as its own
    keys (``set_alpha_to_one=False`` moved the end of an EulerAncestral twin's grid from σ = 0 to the table's
    first level). ``name``: the source class (:func:`source_class`)."""
    own = get_converter(name).defaults()
    return {key for key in config if not key.startswith("_") and key not in own}
