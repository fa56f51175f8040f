"""Resolving user-facing names (schedule, parameterisation) into objects, with errors that list the choices."""

from __future__ import annotations

import json
import os

from unisde._tensor import unknown_name_error
from unisde.plugins import get_parameterization, get_schedule_factory, list_schedules
from unisde.core.schedule import SCHEDULE_NAMES, NoiseSchedule


def resolve_schedule(spec) -> NoiseSchedule:
    """A NoiseSchedule from: a NoiseSchedule; a config dict (``NoiseSchedule.to_config`` output or a diffusers
    scheduler config); a JSON string; a path to a diffusers ``scheduler_config.json`` (or a folder holding one);
    a built-in schedule name (``NoiseSchedule.from_name``) or one registered by a plugin."""
    if isinstance(spec, NoiseSchedule):
        return spec
    if isinstance(spec, dict):
        return NoiseSchedule.from_config(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"schedule must be a name, a config dict, a JSON string or a path; got {spec!r}")
    text = spec.strip()
    if text.startswith("{"):
        try:
            return NoiseSchedule.from_config(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"schedule {spec!r} looks like JSON but does not parse: {exc}") from None
    if os.path.exists(text):
        return NoiseSchedule.from_config(text)
    if text in list_schedules():
        return get_schedule_factory(text)()
    try:
        return NoiseSchedule.from_name(text)
    except ValueError:
        raise unknown_name_error("schedule", spec, list(SCHEDULE_NAMES) + list_schedules()) from None


def resolve_parameterization(name, **options):
    """The registered parameterisation ``name`` (or alias) with ``options``; the registry's ValueError (listing
    the registered names and aliases, with the closest match) otherwise."""
    return get_parameterization(name, **options)
