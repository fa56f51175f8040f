"""The stable import path of :class:`UnifiedScheduler` that saved pipelines name.

A pipeline saved with a ``UnifiedScheduler`` records ``["unisde.scheduler", "UnifiedScheduler"]`` in its
``model_index.json``; the class lives in :mod:`unisde.diffusers.scheduler` and is re-exported here so that those
folders keep loading. diffusers decides how to load a component by looking its base classes up by name in the
module the model_index names (``getattr(module, "SchedulerMixin")``), so those names resolve here too.

The names resolve on first access (PEP 562): executing this module imports nothing, so it can never observe
:mod:`unisde.diffusers.scheduler` half-imported (diffusers' own module inspection may execute it mid-import).
"""

_EXPORTS = {
    "UnifiedScheduler": "unisde.diffusers.scheduler",
    "UnifiedSchedulerOutput": "unisde.diffusers.scheduler",
    "COMPATIBLE_SCHEDULERS": "unisde.diffusers.scheduler",
    "ConfigMixin": "diffusers.configuration_utils",
    "SchedulerMixin": "diffusers.schedulers.scheduling_utils",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unisde.scheduler' has no attribute {name!r}")
