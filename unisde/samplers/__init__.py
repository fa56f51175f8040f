"""Samplers: each a plugin registered through :func:`unisde_register_samplers`, exactly as third-party ones are."""

from ..plugins import hookimpl
from .base import Option, Sampler, grid_coefficients
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .edm import EDMSampler
from .lms import LMSSampler
from .ncsn import NCSNSampler
from .ode import ODESampler
from .pc import PCSampler
from .pndm import PNDMSampler
from .sde import SDESampler
from .unipc import UniPCSampler

BUILTIN_SAMPLERS: tuple = (DDPMSampler, DDIMSampler, NCSNSampler, PCSampler, EDMSampler, SDESampler, ODESampler, LMSSampler, UniPCSampler, PNDMSampler)


@hookimpl
def unisde_register_samplers(register):
    for cls in BUILTIN_SAMPLERS:
        register(cls)


__all__ = ["Sampler", "Option", "grid_coefficients", "DDPMSampler", "DDIMSampler", "EDMSampler", "NCSNSampler", "PCSampler", "SDESampler", "ODESampler", "LMSSampler", "UniPCSampler", "PNDMSampler"]
