"""unisde: every diffusion model's schedule, parameterisation and sampler on one SDE footing.

``UnifiedScheduler``, ``load_pipeline`` and ``analytic`` import diffusers, so they are loaded on first access.
"""

from unisde.core import sde  # noqa: F401
from unisde.core.schedule import NoiseSchedule
from unisde.plugins import get_parameterization, get_sampler, hookimpl, list_parameterizations, list_samplers

__version__ = "0.1.0"

_LAZY = {
    "UnifiedScheduler": ("unisde.scheduler", "UnifiedScheduler"),
    "sample": ("unisde.sampling", "sample"),
    "load_pipeline": ("unisde.diffusers.pipeline", "load_pipeline"),
}


def _lazy_scheduler_module():
    """Put ``unisde.scheduler`` in ``sys.modules`` as a module executed on first attribute access.

    A saved pipeline's model_index.json names the scheduler ``["unisde.scheduler", "UnifiedScheduler"]`` and
    diffusers resolves such a non-diffusers library through ``sys.modules`` only; this keeps ``import unisde``
    free of the diffusers import while ``DiffusionPipeline.from_pretrained(path)`` after it finds the class.
    """
    import importlib.util
    import sys

    name = f"{__name__}.scheduler"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


scheduler = _lazy_scheduler_module()


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unisde' has no attribute {name!r}")


__all__ = [
    "NoiseSchedule",
    "UnifiedScheduler",
    "load_pipeline",
    "sample",
    "hookimpl",
    "get_sampler",
    "get_parameterization",
    "list_samplers",
    "list_parameterizations",
    "sde",
]
