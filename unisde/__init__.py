"""unisde: every diffusion model's schedule, parameterisation and sampler on one SDE footing."""

from .plugins import (get_parameterization, get_sampler, hookimpl, list_parameterizations, list_samplers)
from .schedule import NoiseSchedule
from . import sde  # noqa: F401

__version__ = "0.1.0"

__all__ = ["NoiseSchedule", "hookimpl", "get_sampler", "get_parameterization", "list_samplers",
           "list_parameterizations", "sde"]
