"""Resolving user-facing names (schedule, parameterisation) into objects, with errors that list the choices."""

from __future__ import annotations

from unisde.core.schedule import NoiseSchedule, resolve_schedule_argument
from unisde.core.schedule import resolve_schedule as core_resolve_schedule
from unisde.plugins import get_parameterization


def resolve_schedule(spec) -> NoiseSchedule:
    """The schedule of ``unisde train --schedule`` (and of :func:`unisde.training.make_objective`).

    A string is a command-line argument, resolved by :func:`unisde.core.schedule.resolve_schedule_argument`: a
    schedule name (built-in or a plugin's), inline JSON, or an existing path — a ``NoiseSchedule.to_config()``
    JSON, a diffusers ``scheduler_config.json`` or a pipeline folder — read by ``load_schedule_file`` (regular
    JSON files only). Anything else (a NoiseSchedule, a config dict, a ``pathlib.Path``) goes to
    :func:`unisde.core.schedule.resolve_schedule`, the one resolver every entry point uses.
    """
    if isinstance(spec, str):
        return resolve_schedule_argument(spec)
    return core_resolve_schedule(spec)


def resolve_parameterization(name, **options):
    """The registered parameterisation ``name`` (or alias) with ``options``; the registry's ValueError (listing
    the registered names and aliases, with the closest match) otherwise."""
    return get_parameterization(name, **options)
