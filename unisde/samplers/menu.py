r"""The names of k-diffusion's functions and of ComfyUI's / A1111's sampler menus that are an existing unisde
sampler with some options fixed or other defaults — one algorithm, one implementation, several names:

    euler            = ``edm`` with solver="euler"         (k-diffusion ``sample_euler``: Karras et al. 2022,
                                                            Algorithm 2 with Euler steps and the same churn)
    heun             = ``edm``                              (``sample_heun``: Algorithm 2 itself)
    euler_ancestral  = ``ddim`` with η = 1 by default       (``sample_euler_ancestral``: σ_down / σ_up of
                                                            ``get_ancestral_step`` is DDIM's η-rule in the VE
                                                            view; diffusers' EulerAncestralDiscreteScheduler)
    uni_pc           = ``unipc`` with variant="bh1"         (ComfyUI's ``uni_pc``)
    uni_pc_bh2       = ``unipc`` with variant="bh2"         (ComfyUI's ``uni_pc_bh2``)
    res_multistep_ancestral = ``res_multistep`` with η = 1 by default (ComfyUI's)
    exp_heun_2_x0    = ``seeds_2`` with r = 1, η = 0, φ₂     (ComfyUI's ``sample_exp_heun_2_x0``)
    exp_heun_2_x0_sde = ``seeds_2`` with r = 1, φ₂ default  (ComfyUI's ``sample_exp_heun_2_x0_sde``)
    dpmpp_2m_sde_heun = ``dpmpp_2m_sde`` with solver_type="heun" (k-diffusion / ComfyUI; in the unisde-dpmsolver
                                                            plugin, beside its base)
    sa_solver_pece   = ``sa_solver`` with pece=True         (ComfyUI's ``sa_solver_pece``: the corrected sample
                                                            evaluated again; [SASolver])

ComfyUI's ``*_gpu`` names (dpmpp_sde_gpu, dpmpp_2m_sde_gpu, dpmpp_2m_sde_heun_gpu, dpmpp_3m_sde_gpu) draw the
same noise law on the GPU and are aliases of their samplers.

Each is registered as a sampler of its own, so ``sampler="euler"`` works everywhere a sampler name does. A fixed
option is not an option of the preset (passing it is the usual unknown-option error); a changed default stays an
option.
"""

from __future__ import annotations

import dataclasses

from unisde.samplers.base import Sampler
from unisde.samplers.ddim import DDIMSampler
from unisde.samplers.edm import EDMSampler
from unisde.samplers.res_multistep import ResMultistepSampler
from unisde.samplers.sa_solver import SASolverSampler
from unisde.samplers.seeds import SEEDS2Sampler
from unisde.samplers.unipc import UniPCSampler


def preset(
    base: type[Sampler],
    name: str,
    description: str,
    *,
    fixed: dict | None = None,
    defaults: dict | None = None,
    aliases: tuple = (),
) -> type[Sampler]:
    """A sampler class that runs ``base`` under the name ``name`` (and ``aliases``) with the options in ``fixed``
    set (and removed from its options) and the defaults in ``defaults`` changed."""
    fixed, defaults = dict(fixed or {}), dict(defaults or {})
    unknown = sorted((set(fixed) | set(defaults)) - set(base.options))
    if unknown:
        raise ValueError(f"preset {name!r} of sampler {base.name!r} names unknown options {unknown}")
    options = {}
    for key, spec in base.options.items():
        if key in fixed:
            spec.validate(f"preset {name!r}", key, fixed[key])
            continue
        if key in defaults:
            spec = dataclasses.replace(spec, default=spec.validate(f"preset {name!r}", key, defaults[key]))
        options[key] = spec

    def validate_options(cls, given: dict) -> dict:  # the base's own checks and settings, on the preset's options
        return {**base.validate_options.__func__(cls, given), **fixed}

    return type(
        base.__name__ + "_" + name,
        (base,),
        {
            "name": name,
            "aliases": tuple(aliases),
            "description": description,
            "options": options,
            "validate_options": classmethod(validate_options),
            "preset_of": (base.name, fixed, defaults),
            "__module__": __name__,
            "__doc__": f"``{name}``: sampler ``{base.name}`` with {fixed or defaults} ({description}).",
        },
    )


EulerSampler = preset(
    EDMSampler,
    "euler",
    "k-diffusion sample_euler: Euler steps on the PF-ODE in σ̃ with EDM's churn (diffusers' EulerDiscrete)",
    fixed={"solver": "euler"},
)
HeunSampler = preset(EDMSampler, "heun", "k-diffusion sample_heun: EDM Algorithm 2 (Heun, churn)")
EulerAncestralSampler = preset(
    DDIMSampler,
    "euler_ancestral",
    "k-diffusion sample_euler_ancestral: Euler to σ̃_down, fresh noise σ̃_up (= DDIM η = 1; diffusers' "
    "EulerAncestralDiscrete)",
    defaults={"eta": 1.0},
)
UniPCBH1Sampler = preset(UniPCSampler, "uni_pc", "ComfyUI uni_pc: UniPC with B(h) = −h", fixed={"variant": "bh1"})
UniPCBH2Sampler = preset(
    UniPCSampler, "uni_pc_bh2", "ComfyUI uni_pc_bh2: UniPC with B(h) = e^{−h} − 1", fixed={"variant": "bh2"}
)

ResMultistepAncestralSampler = preset(
    ResMultistepSampler,
    "res_multistep_ancestral",
    "ComfyUI res_multistep_ancestral: RES 2nd-order multistep with ancestral noise (η = 1 by default)",
    defaults={"eta": 1.0},
)

ExpHeun2X0Sampler = preset(
    SEEDS2Sampler,
    "exp_heun_2_x0",
    "ComfyUI exp_heun_2_x0: exponential Heun in x̂0 and log-SNR (SEEDS-2 with the stage at the step's end, r = 1, "
    "deterministic, φ₂ weights by default)",
    fixed={"eta": 0.0, "s_noise": 0.0, "r": 1.0},
    defaults={"variant": "phi_2"},
)
ExpHeun2X0SDESampler = preset(
    SEEDS2Sampler,
    "exp_heun_2_x0_sde",
    "ComfyUI exp_heun_2_x0_sde: stochastic exponential Heun (SEEDS-2 with r = 1, η = 1, φ₂ weights by default)",
    fixed={"r": 1.0},
    defaults={"variant": "phi_2"},
)

SASolverPECESampler = preset(
    SASolverSampler,
    "sa_solver_pece",
    "ComfyUI sa_solver_pece: SA-Solver in PECE mode, the corrected sample evaluated again (2 calls per step)",
    fixed={"pece": True},
)

MENU_SAMPLERS = (
    EulerSampler,
    HeunSampler,
    EulerAncestralSampler,
    UniPCBH1Sampler,
    UniPCBH2Sampler,
    ResMultistepAncestralSampler,
    SASolverPECESampler,
    ExpHeun2X0Sampler,
    ExpHeun2X0SDESampler,
)
