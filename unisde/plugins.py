"""The plugin registry: samplers, parameterisations and schedules come from pluggy plugins.

A plugin is any module or object with ``@unisde.hookimpl`` functions for the hooks below, published through
the ``unisde`` entry-point group::

    [project.entry-points.unisde]
    my_sampler = "my_package.my_module"

Each hook hands the plugin a ``register`` callback; the package's own samplers and parameterisations are
registered through exactly these hooks (and the same entry-point group), so built-ins have no privileges.

A plugin that fails to import is reported with a warning naming it and everything else keeps working; set the
environment variable ``UNISDE_STRICT_PLUGINS=1`` to make it raise instead (useful while writing a plugin).
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from unisde._tensor import unknown_name_error

PROJECT = "unisde"
ENTRY_POINT_GROUP = "unisde"
STRICT_ENV = "UNISDE_STRICT_PLUGINS"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

BUILTIN_MODULES = ("unisde.parameterizations", "unisde.samplers", "unisde.grids.builtin", "unisde.diffusers.converters")


class HookSpecs:
    """The hooks a unisde plugin may implement."""

    @hookspec
    def unisde_register_samplers(self, register: Callable) -> None:
        """Register sampler classes: ``register(SamplerClass)`` (``SamplerClass.name`` is its name)."""

    @hookspec
    def unisde_register_parameterizations(self, register: Callable) -> None:
        """Register parameterisation classes: ``register(ParameterizationClass)``."""

    @hookspec
    def unisde_register_grids(self, register: Callable) -> None:
        """Register time grids: ``register(unisde.grids.Grid(name, times, options))``."""

    @hookspec
    def unisde_register_converters(self, register: Callable) -> None:
        """Register diffusers-config converters: ``register(ConverterClass)`` (``name`` = the diffusers class name;
        see :mod:`unisde.diffusers.converters`)."""

    @hookspec
    def unisde_register_schedules(self, register: Callable) -> None:
        """Register named schedules: ``register(name, factory)`` with ``factory(**kw) -> NoiseSchedule``."""


class PluginError(ValueError):
    """A plugin misbehaved (duplicate name, bad registration)."""


@dataclass
class Entry:
    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str
    aliases: tuple = field(default_factory=tuple)


KINDS = {"sampler": "unisde_register_samplers", "parameterization": "unisde_register_parameterizations",
         "schedule": "unisde_register_schedules",
         "grid": "unisde_register_grids", "converter": "unisde_register_converters"}

_state: dict = {"pm": None, "registry": None, "origins": {}}


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in ("1", "true", "yes")


def _unisde_version() -> str:
    try:
        return metadata.version("unisde")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading built-ins and the ``unisde`` entry points on first use."""
    if _state["pm"] is None:
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(HookSpecs)
        origins: dict[str, tuple[str, str]] = {}
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            dist_version = dist.version if dist is not None else "?"
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                if _strict():
                    raise
                warnings.warn(f"unisde plugin {ep.name!r} ({ep.value}, distribution {dist_name}) failed to load and is "
                              f"skipped: {type(exc).__name__}: {exc}. Set {STRICT_ENV}=1 to raise instead.", RuntimeWarning, stacklevel=2)
                continue
            if pm.is_registered(plugin):
                continue
            pm.register(plugin, name=getattr(plugin, "__name__", ep.name))
            origins[pm.get_name(plugin)] = (dist_name, dist_version)
        for modname in BUILTIN_MODULES:  # running from a source tree without installed entry points
            module = importlib.import_module(modname)
            if not pm.is_registered(module):
                pm.register(module, name=modname)
                origins[modname] = ("unisde", _unisde_version())
        _state["pm"], _state["origins"], _state["registry"] = pm, origins, None
    return _state["pm"]


def _entry_points():
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # Python < 3.10 API
        return list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))


def register_plugin(plugin: Any, name: str | None = None, distribution: str = "(runtime)", version: str = "") -> str:
    """Register a plugin object at run time (tests, notebooks). Returns its name."""
    pm = get_plugin_manager()
    pname = pm.register(plugin, name=name)
    _state["origins"][pname] = (distribution, version)
    _state["registry"] = None
    return pname


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _state["origins"].pop(name, None)
    _state["registry"] = None


def reset() -> None:
    """Forget the plugin manager and registry (they are rebuilt on next use)."""
    _state["pm"], _state["registry"], _state["origins"] = None, None, {}


def _collect() -> dict[str, dict[str, Entry]]:
    if _state["registry"] is not None:
        return _state["registry"]
    pm = get_plugin_manager()
    registry: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):
            pname = impl.plugin_name
            dist, version = _state["origins"].get(pname, ("(runtime)", ""))

            def register(obj, factory=None, *, _kind=kind, _pname=pname, _dist=dist, _version=version):
                if _kind == "schedule":
                    name, target, names = str(obj), factory, ()
                else:
                    name = getattr(obj, "name", None)
                    if not name:
                        raise PluginError(f"plugin {_pname!r} registered a {_kind} without a 'name' attribute: {obj!r}")
                    target, names = obj, tuple(getattr(obj, "aliases", ()))
                table = registry[_kind]
                for key in (name, *names):
                    owner = table.get(key) or (table.get(aliases[_kind][key]) if key in aliases[_kind] else None)
                    if owner is not None:
                        raise PluginError(f"{_kind} name {key!r} is registered twice: by plugin {owner.plugin!r} "
                                          f"({owner.distribution}) and by plugin {_pname!r} ({_dist})")
                table[name] = Entry(name, target, _pname, _dist, _version, names)
                for alias in names:
                    aliases[_kind][alias] = name

            impl.function(register=register)
    registry["_aliases"] = aliases  # type: ignore[assignment]
    _state["registry"] = registry
    return registry


def _lookup(kind: str, name: str) -> Entry:
    registry = _collect()
    table = registry[kind]
    key = str(name)
    if key not in table:
        key = registry["_aliases"][kind].get(key, key)
    if key not in table:
        raise unknown_name_error(kind, name, list(table) + list(registry["_aliases"][kind]))
    return table[key]


def get_sampler(name: str):
    """The sampler class registered as ``name`` (ValueError listing the valid names otherwise)."""
    return _lookup("sampler", name).obj


def get_parameterization(name, **options):
    """An instance of the parameterisation registered as ``name`` or one of its aliases, with ``options``.

    A Parameterization instance is returned unchanged.
    """
    if not isinstance(name, str) and hasattr(name, "coefficients"):
        return name
    return _lookup("parameterization", name).obj(**options)


def get_schedule_factory(name: str):
    """The factory registered by a plugin as schedule ``name``."""
    return _lookup("schedule", name).obj


def get_grid(name: str):
    """The time grid (:class:`unisde.grids.Grid`) registered as ``name``."""
    return _lookup("grid", name).obj


def list_grids() -> list[str]:
    """Names of every registered time grid, sorted."""
    return sorted(_collect()["grid"])


def get_converter(class_name: str):
    """The converter registered for the diffusers scheduler class ``class_name`` (ValueError otherwise)."""
    return _lookup("converter", class_name).obj


def list_converters() -> list[str]:
    """The diffusers scheduler class names that have a registered converter, sorted."""
    return sorted(_collect()["converter"])


def list_samplers() -> list[str]:
    """Names of every registered sampler, sorted."""
    return sorted(_collect()["sampler"])


def list_parameterizations() -> list[str]:
    """Names of every registered parameterisation, sorted (aliases not included)."""
    return sorted(_collect()["parameterization"])


def list_schedules() -> list[str]:
    """Names of schedules registered by plugins (the built-in closed forms live in NoiseSchedule.from_name)."""
    return sorted(_collect()["schedule"])


def plugin_table() -> list[Entry]:
    """Every registered sampler, parameterisation and schedule with the distribution that registered it."""
    registry = _collect()
    out = []
    for kind in KINDS:
        for entry in sorted(registry[kind].values(), key=lambda e: e.name):
            out.append((kind, entry))
    return out
