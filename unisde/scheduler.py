"""The stable import path of :class:`UnifiedScheduler` that saved pipelines name.

A pipeline saved with a ``UnifiedScheduler`` records ``["unisde.scheduler", "UnifiedScheduler"]`` in its
``model_index.json``; the class lives in :mod:`unisde.diffusers.scheduler` and is re-exported here so that those
folders keep loading.
"""

# diffusers decides how to load a component by looking its base classes up by name in the module the
# model_index names (``getattr(module, "SchedulerMixin")``), so this module must expose them.
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from unisde.diffusers.scheduler import COMPATIBLE_SCHEDULERS, UnifiedScheduler, UnifiedSchedulerOutput

__all__ = ["UnifiedScheduler", "UnifiedSchedulerOutput", "COMPATIBLE_SCHEDULERS", "ConfigMixin", "SchedulerMixin"]
