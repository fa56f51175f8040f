"""Samplers: each a plugin registered through :func:`unisde_register_samplers`, exactly as third-party ones are."""

from unisde.plugins import hookimpl
from unisde.samplers.base import Option, Sampler, grid_coefficients
from unisde.samplers.cfg_pp import CFG_PP_SAMPLERS
from unisde.samplers.consistency import CMStochasticSampler, LCMSampler, TCDSampler
from unisde.samplers.ddim import DDIMSampler
from unisde.samplers.ddpm import DDPMSampler
from unisde.samplers.deis import DEISSampler
from unisde.samplers.dpm_adaptive import DPMAdaptiveSampler
from unisde.samplers.dpm_fast import DPMFastSampler
from unisde.samplers.dpm_singlestep import DPMSolverSinglestepSampler
from unisde.samplers.dpmpp_sde import DPMPP2SAncestralSampler, DPMPPSDESampler
from unisde.samplers.edm import EDMSampler
from unisde.samplers.er_sde import ERSDESampler
from unisde.samplers.fitted import FittedSampler
from unisde.samplers.gradient_estimation import GradientEstimationSampler
from unisde.samplers.heunpp2 import HeunPP2Sampler
from unisde.samplers.inverse import DDIMInverseSampler, InverseSampler
from unisde.samplers.ipndm import IPNDMSampler, IPNDMVSampler
from unisde.samplers.kdpm2 import DPM2AncestralSampler, DPM2Sampler
from unisde.samplers.lms import LMSSampler
from unisde.samplers.menu import MENU_SAMPLERS
from unisde.samplers.ncsn import NCSNSampler
from unisde.samplers.ode import ODESampler
from unisde.samplers.pc import PCSampler
from unisde.samplers.pndm import PNDMSampler
from unisde.samplers.res_multistep import ResMultistepSampler
from unisde.samplers.restart import RestartSampler
from unisde.samplers.sa_solver import SASolverSampler
from unisde.samplers.sde import SDESampler
from unisde.samplers.seeds import SEEDS2Sampler, SEEDS3Sampler
from unisde.samplers.unipc import UniPCSampler

BUILTIN_SAMPLERS: tuple = (
    DDPMSampler,
    DDIMSampler,
    NCSNSampler,
    PCSampler,
    EDMSampler,
    SDESampler,
    ODESampler,
    LMSSampler,
    UniPCSampler,
    PNDMSampler,
    DPM2Sampler,
    DPM2AncestralSampler,
    IPNDMSampler,
    IPNDMVSampler,
    DEISSampler,
    DPMSolverSinglestepSampler,
    LCMSampler,
    TCDSampler,
    DDIMInverseSampler,
    InverseSampler,
    DPMPP2SAncestralSampler,
    DPMPPSDESampler,
    ResMultistepSampler,
    ERSDESampler,
    RestartSampler,
    SASolverSampler,
    CMStochasticSampler,
    DPMFastSampler,
    DPMAdaptiveSampler,  # adaptive: left out of list_samplers(), run by unisde.sampling.sample_adaptive
    GradientEstimationSampler,
    FittedSampler,
    HeunPP2Sampler,
    SEEDS2Sampler,
    SEEDS3Sampler,
    *MENU_SAMPLERS,  # k-diffusion / ComfyUI names of the samplers above with options fixed (euler, heun, …)
    *CFG_PP_SAMPLERS,  # need the unconditional x̂0: left out of list_samplers(), run by unisde.sample only
)


@hookimpl
def unisde_register_samplers(register):
    for cls in BUILTIN_SAMPLERS:
        register(cls)


__all__ = [
    "Sampler",
    "Option",
    "grid_coefficients",
    "DDPMSampler",
    "DDIMSampler",
    "EDMSampler",
    "NCSNSampler",
    "PCSampler",
    "SDESampler",
    "ODESampler",
    "LMSSampler",
    "UniPCSampler",
    "PNDMSampler",
    "DPM2Sampler",
    "DPM2AncestralSampler",
    "IPNDMSampler",
    "IPNDMVSampler",
    "DEISSampler",
    "DPMSolverSinglestepSampler",
    "LCMSampler",
    "TCDSampler",
    "DDIMInverseSampler",
    "InverseSampler",
    "DPMPP2SAncestralSampler",
    "DPMPPSDESampler",
    "ResMultistepSampler",
    "ERSDESampler",
    "RestartSampler",
    "SASolverSampler",
    "CMStochasticSampler",
    "DPMFastSampler",
    "DPMAdaptiveSampler",
    "GradientEstimationSampler",
    "HeunPP2Sampler",
    "SEEDS2Sampler",
    "SEEDS3Sampler",
]
