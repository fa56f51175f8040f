r"""What is raced: every registered unisde sampler (with option and time-grid variants), the diffusers schedulers
with their unisde twins (the same algorithm, converted from the diffusers config), k-diffusion's deterministic
sampler functions (when k-diffusion is installed) with their unisde twins, and the generic diffusers sampling loop
that runs each of them within an NFE budget."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from unisde._tensor import unknown_name_error

SCHEDULES = ("ddpm", "edm", "flow", "flow-shift3")
FLOW_SHIFTS = {"flow": 1.0, "flow-shift3": 3.0}
"""The rectified-flow models (FlowMatchEulerDiscreteScheduler's config, flow prediction) and their grids' shift."""

_SEED_STEPS = 4321  # the generator passed to step() (shared by every contestant)


def base_config(schedule: str) -> dict:
    """The diffusers scheduler config defining the forward process and model: DDPMScheduler(), EDMEulerScheduler() or,
    for the rectified flow (s = 1 − t, σ = t, flow prediction), FlowMatchEulerDiscreteScheduler(shift=1 or 3)."""
    import diffusers

    if schedule in FLOW_SHIFTS:
        return dict(diffusers.FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFTS[schedule]).config)
    if schedule == "ddpm":
        return dict(diffusers.DDPMScheduler().config)
    if schedule == "edm":
        return dict(diffusers.EDMEulerScheduler().config)
    raise unknown_name_error("schedule", schedule, SCHEDULES)


@dataclass
class Contestant:
    """One sampler configuration: ``make()`` builds a fresh scheduler; ``twin_of`` names the diffusers
    contestant a unisde one is converted from (same algorithm), for the agreement table; ``grid_variant``: a unisde
    sampler on a time grid other than its default (``BenchConfig.sampled_variants_max_nfe``)."""

    library: str
    label: str
    make: Callable
    twin_of: str | None = None
    grid_variant: bool = False


def _unified(cfg: dict, **kwargs):
    from unisde.diffusers.scheduler import UnifiedScheduler

    return UnifiedScheduler.from_config(cfg, **kwargs)


# Sampler option variants tried (a sampler not listed runs with its defaults).
SAMPLER_VARIANTS = {
    "edm": ({}, {"solver": "euler"}),
    "sde": ({}, {"method": "exponential"}),
    "dpmsolver++": (
        {},
        {"solver_order": 3},
        {"solver_order": 3, "exact_quadratic": True},
        {"algorithm_type": "sde-dpmsolver++"},
    ),
}
POLYEXPONENTIAL = ("polyexponential", {"rho": 2.0})  # the ρ of k-diffusion's polyexponential peers (kdiffusion.py)
UNISDE_GRIDS = {
    "ddpm": (None, "trailing", "karras", "uniform_lambda", POLYEXPONENTIAL),
    "edm": (None, "uniform_lambda", POLYEXPONENTIAL),
    "flow": (None, "uniform_lambda", "karras", POLYEXPONENTIAL),
    "flow-shift3": (None, "uniform_lambda", "karras", POLYEXPONENTIAL),
}
"""Time-grid variants of every unisde sampler per schedule: a grid name, or (name, options)."""


def unisde_contestants(schedule: str, cfg: dict, grid_variants: bool) -> list[Contestant]:
    """Every registered sampler (plugins included), with the option and time-grid variants above."""
    from unisde.plugins import list_samplers

    out = []
    for name in list_samplers():
        for options in SAMPLER_VARIANTS.get(name, ({},)):
            for grid in UNISDE_GRIDS[schedule] if grid_variants else (None,):
                grid, grid_options = grid if isinstance(grid, tuple) else (grid, {})
                shown = grid + "".join(f"({k}={v})" for k, v in grid_options.items()) if grid else None
                bits = [f"{k}={v}" for k, v in options.items()] + ([f"grid={shown}"] if grid else [])
                label = name + (f"[{', '.join(bits)}]" if bits else "")
                kwargs = {"sampler": name, "sampler_options": dict(options)}
                if grid is not None:
                    kwargs["time_grid"] = grid
                    if grid_options:
                        kwargs["time_grid_options"] = dict(grid_options)
                out.append(
                    Contestant("unisde", label, lambda kw=kwargs: _unified(cfg, **kw), grid_variant=grid is not None)
                )
    return out


def _ddpm_schedulers() -> list[tuple[str, str, dict]]:
    return [
        ("DDPM", "DDPMScheduler", {}),
        ("DDIM", "DDIMScheduler", {}),
        ("Euler", "EulerDiscreteScheduler", {}),
        ("EulerAncestral", "EulerAncestralDiscreteScheduler", {}),
        ("Heun", "HeunDiscreteScheduler", {}),
        ("LMS", "LMSDiscreteScheduler", {}),
        ("DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2}),
        ("DPM++3M", "DPMSolverMultistepScheduler", {"solver_order": 3}),
        ("SDE-DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
        ("UniPC", "UniPCMultistepScheduler", {}),
        ("PNDM", "PNDMScheduler", {}),
        ("DEIS", "DEISMultistepScheduler", {}),
        ("DPM++2S", "DPMSolverSinglestepScheduler", {}),
        ("KDPM2", "KDPM2DiscreteScheduler", {}),
        ("KDPM2Ancestral", "KDPM2AncestralDiscreteScheduler", {}),
        ("SA-Solver", "SASolverScheduler", {}),
        ("DPMSolverSDE", "DPMSolverSDEScheduler", {}),
        ("LCM", "LCMScheduler", {}),
        ("TCD", "TCDScheduler", {}),
    ]


def _edm_schedulers() -> list[tuple[str, str, dict]]:
    return [
        ("EDMEuler", "EDMEulerScheduler", {}),
        ("EDM-DPM++2M", "EDMDPMSolverMultistepScheduler", {"solver_order": 2}),
        ("EDM-DPM++3M", "EDMDPMSolverMultistepScheduler", {"solver_order": 3}),
        ("EDM-SDE-DPM++2M", "EDMDPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    ]


def _flow_schedulers(shift: float) -> list[tuple[str, str, dict]]:
    """FlowMatch Euler (deterministic and ``stochastic_sampling``) and Heun, and the multistep solvers diffusers runs
    on flow models through ``use_flow_sigmas`` (the grid σ = shift·τ/(1 + (shift − 1)τ), flow prediction)."""
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": shift}
    return [
        ("FlowMatchEuler", "FlowMatchEulerDiscreteScheduler", {}),
        ("FlowMatchEulerStochastic", "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
        ("FlowMatchHeun", "FlowMatchHeunDiscreteScheduler", {}),
        ("UniPC-flow", "UniPCMultistepScheduler", flow),
        ("DPM++2M-flow", "DPMSolverMultistepScheduler", {**flow, "solver_order": 2}),
        ("DPM++3M-flow", "DPMSolverMultistepScheduler", {**flow, "solver_order": 3}),
        (
            "SDE-DPM++2M-flow",
            "DPMSolverMultistepScheduler",
            {**flow, "solver_order": 2, "algorithm_type": "sde-dpmsolver++"},
        ),
        ("DPM++2S-flow", "DPMSolverSinglestepScheduler", flow),
        ("DEIS-flow", "DEISMultistepScheduler", flow),
    ]


def _unscaled(sample, timestep=None):
    return sample


def _with_flow_pipeline_conventions(scheduler):
    """FlowMatch schedulers have neither ``init_noise_sigma`` nor ``scale_model_input``: their pipelines start from
    z itself and feed x unscaled. Give the instance those two (1 and the identity) so the generic loop runs it as
    its pipelines do; other schedulers are returned unchanged."""
    cls = type(scheduler)
    if not hasattr(cls, "scale_model_input"):
        scheduler.scale_model_input = _unscaled
    if not hasattr(cls, "init_noise_sigma") and "init_noise_sigma" not in vars(scheduler):
        scheduler.init_noise_sigma = 1.0
    return scheduler


def _has_param(cls, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


# Diffusers schedulers whose algorithm a unisde sampler reproduces (UnifiedScheduler.from_config picks it).
_TWIN_CLASSES = (
    "DDPMScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
    "EDMEulerScheduler",
    "PNDMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LCMScheduler",
    "TCDScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
)


def diffusers_contestants(schedule: str, cfg: dict, grid_variants: bool) -> tuple[list[Contestant], list[Contestant]]:
    """The diffusers schedulers (with spacing / Karras variants) and their unisde twins (converted configs)."""
    import diffusers

    from unisde.plugins import list_samplers

    flow = schedule in FLOW_SHIFTS
    rows = (
        _ddpm_schedulers()
        if schedule == "ddpm"
        else _flow_schedulers(FLOW_SHIFTS[schedule])
        if flow
        else _edm_schedulers()
    )
    peers, twins = [], []
    for short, cls_name, options in rows:
        cls = getattr(diffusers, cls_name)
        # A multistep solver on a flow model takes its schedule from use_flow_sigmas, not from FlowMatch's config keys.
        flow_match = cls_name.startswith("FlowMatch")
        source = cfg if not flow or flow_match else {"num_train_timesteps": cfg["num_train_timesteps"]}
        variants = [({}, "")]
        if grid_variants and flow and flow_match and not options.get("stochastic_sampling"):
            for option in ("karras", "exponential", "beta"):
                if _has_param(cls, f"use_{option}_sigmas"):
                    variants.append(({f"use_{option}_sigmas": True}, option))
        if grid_variants and schedule == "ddpm":
            if _has_param(cls, "timestep_spacing"):
                variants += [
                    ({"timestep_spacing": "trailing"}, "trailing"),
                    ({"timestep_spacing": "linspace"}, "linspace"),
                ]
            for option in ("karras", "exponential", "beta"):  # diffusers' σ-spacing options, where the class has them
                if _has_param(cls, f"use_{option}_sigmas"):
                    variants.append(({f"use_{option}_sigmas": True}, option))
        if grid_variants and schedule == "edm" and _has_param(cls, "sigma_schedule"):
            variants.append(({"sigma_schedule": "exponential"}, "exponential"))
        for extra, tag in variants:
            label = short + (f"[{tag}]" if tag else "")

            def make(cls=cls, kw={**options, **extra}, source=source):
                return _with_flow_pipeline_conventions(cls.from_config(source, **kw))

            peers.append(Contestant("diffusers", label, make))
            # DPM-Solver++(2M/3M) and SDE-DPM-Solver++(2M) have a twin when the dpmsolver++ plugin is installed
            # (solver_order, algorithm_type and the grid come from the config; diffusers' SDE 3M weighs its second
            # difference differently, so it has none).
            algorithm = options.get("algorithm_type", "dpmsolver++")
            dpm2m = (
                cls_name == "DPMSolverMultistepScheduler"
                and "dpmsolver++" in list_samplers()
                and (options.get("solver_order"), algorithm)
                in ((2, "dpmsolver++"), (3, "dpmsolver++"), (2, "sde-dpmsolver++"))
            )
            if cls_name in _TWIN_CLASSES or dpm2m:

                def make_twin(make=make):
                    # from_config picks the same algorithm and grid (multistep spacings included). The source class
                    # is named: a bare config of a scheduler already garbage-collected is detected by its keys,
                    # which extra keys (clip_sample passed to LMS) can make ambiguous.
                    source = make()
                    return _unified({**source.config, "_class_name": type(source).__name__})

                try:  # a config the unisde twin cannot express (an unsupported option value) has no twin
                    make_twin()
                except ValueError:
                    continue
                twins.append(Contestant("unisde", f"≡{label}", make_twin, twin_of=label))
    return peers, twins


def kdiffusion_available() -> bool:
    from unisde.bench.kdiffusion import load_sampling

    return load_sampling() is not None


# The unisde sampler running the same algorithm as a k-diffusion function (in the VE view, on the same σ̃ grid);
# sample_lms (quadrature coefficients at epsrel 1e-4) and sample_dpm_fast have no exact twin.
_KDIFFUSION_TWINS = {
    "sample_euler": ("euler", {"view": "ve"}),
    "sample_heun": ("heun", {"view": "ve"}),
    "sample_dpm_2": ("dpm_2", {"view": "ve"}),
    "sample_dpmpp_2m": ("dpmsolver++", {}),  # DPM-Solver++(2M) steps in λ, the same in every view
}


def kdiffusion_contestants(
    schedule: str, cfg: dict, grid_variants: bool, twins: bool = True
) -> tuple[list[Contestant], list[Contestant]]:
    """k-diffusion's deterministic samplers (:data:`unisde.bench.kdiffusion.KDIFFUSION_SAMPLERS`) run through its
    own functions on its own σ̃ grids (Karras; with ``grid_variants`` also exponential and polyexponential) over the
    schedule's σ̃ range, and, with ``twins``, the unisde samplers of the same algorithms on the same grids (the
    registered ``karras`` / ``exponential`` grids, whose formulas and range are k-diffusion's), run as k-diffusion's
    are (:class:`unisde.bench.kdiffusion.UnisdeTwin`). ([], []) when k-diffusion is not installed (the caller says
    so)."""
    from unisde.bench.kdiffusion import KDIFFUSION_SAMPLERS, KDiffusionPeer, UnisdeTwin, load_sampling
    from unisde.plugins import list_samplers

    if load_sampling() is None:
        return [], []
    noise_schedule = _unified(cfg).noise_schedule
    peers, twin_list = [], []
    for label in KDIFFUSION_SAMPLERS:
        grids = (None,) if label == "sample_dpm_fast" else ("karras", "exponential", "polyexponential")
        for grid in grids if grid_variants else grids[:1]:
            name = label + (f"[{grid}]" if grid else "")
            peers.append(
                Contestant(
                    "k-diffusion", name, lambda label=label, grid=grid: KDiffusionPeer(label, noise_schedule, grid)
                )
            )
            twin = _KDIFFUSION_TWINS.get(label)
            if twins and twin is not None and grid in ("karras", "exponential") and twin[0] in list_samplers():
                twin_list.append(
                    Contestant(
                        "unisde",
                        f"≡{name}",
                        lambda twin=twin, grid=grid: UnisdeTwin(twin[0], twin[1], grid, noise_schedule),
                        twin_of=name,
                    )
                )
    return peers, twin_list


def _accepts(fn, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def steps_for_nfe(scheduler, budget: int) -> int | None:
    """Largest num_inference_steps whose timestep list (one model call each) fits the NFE budget, or None. A
    scheduler on a stored ``optimized`` grid serves one step count only (its number of times)."""
    config = getattr(scheduler, "config", None)
    if config is not None and config.get("time_grid") == "optimized":
        n = len((config.get("time_grid_options") or {}).get("times") or ())
        scheduler.set_timesteps(n)
        return n if len(scheduler.timesteps) <= budget else None
    n = budget
    while n >= 1:
        scheduler.set_timesteps(n)
        calls = len(scheduler.timesteps)
        if calls <= budget:
            return n
        n = min(n - 1, max(1, (n * budget) // calls))
    return None


def sample_loop(scheduler, model, z: torch.Tensor, num_inference_steps: int, seed: int = _SEED_STEPS) -> torch.Tensor:
    """The generic diffusers loop: x = z·init_noise_sigma; for t: x = step(model(scale_model_input(x, t), t), t, x)."""
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    extra = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    x = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **extra).prev_sample
    return x
