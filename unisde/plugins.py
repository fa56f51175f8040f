"""The plugin registry: samplers, parameterisations and schedules come from pluggy plugins.

A plugin is any module or object with ``@unisde.hookimpl`` functions for the hooks below, published through
the ``unisde`` entry-point group::

    [project.entry-points.unisde]
    my_sampler = "my_package.my_module"

Each hook hands the plugin a ``register`` callback; the package's own samplers and parameterisations are
registered through exactly these hooks (and the same entry-point group), so built-ins have no privileges.

A misbehaving plugin never breaks the others. A plugin that fails to import or to register, a hook that
raises, and a name registered twice are each reported with a ``RuntimeWarning`` naming the plugins and their
distributions; the offending plugin (or hook, or second registration) is skipped and everything else keeps
working. On a duplicate name the built-in registration wins, and between two external plugins the one
registered first. ``unisde plugins`` lists what was skipped (:func:`plugin_conflicts`, :func:`plugin_failures`).
Set the environment variable ``UNISDE_STRICT_PLUGINS=1`` to raise instead (useful while writing a plugin).
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

BUILTIN_MODULES = (
    "unisde.parameterizations",
    "unisde.samplers",
    "unisde.core.schedule",
    "unisde.core.wuerstchen",
    "unisde.grids.builtin",
    "unisde.grids.lcm",
    "unisde.grids.named",
    "unisde.grids.diffusers_float32",
    "unisde.grids.optimize",
    "unisde.diffusers.converters",
    "unisde.diffusers.converters_more",
)


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


@dataclass(frozen=True)
class Conflict:
    """A name registered twice: the registration kept and the one ignored (plugin and distribution of each)."""

    kind: str
    name: str
    kept_plugin: str
    kept_distribution: str
    ignored_plugin: str
    ignored_distribution: str

    def message(self) -> str:
        return (
            f"{self.kind} name {self.name!r} is registered twice: by plugin {self.kept_plugin!r} "
            f"({self.kept_distribution}) and by plugin {self.ignored_plugin!r} ({self.ignored_distribution})"
        )


@dataclass(frozen=True)
class PluginFailure:
    """A plugin skipped because loading it, or one of its registration hooks, raised."""

    plugin: str
    distribution: str
    stage: str  # "load" or "register <kind>s"
    error: str

    def message(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution}) failed at {self.stage} and is skipped: {self.error}"


# kind -> the hook that registers it. A new kind is one line here plus its hookspec; its hook calls
# ``register(obj)`` with an object that has a ``name`` (and optional ``aliases``) or ``register(name, obj)``.
KINDS = {
    "sampler": "unisde_register_samplers",
    "parameterization": "unisde_register_parameterizations",
    "schedule": "unisde_register_schedules",
    "grid": "unisde_register_grids",
    "converter": "unisde_register_converters",
}

_state: dict = {"pm": None, "registry": None, "origins": {}, "load_failures": [], "conflicts": [], "hook_failures": []}


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
        failures: list[PluginFailure] = []

        def add(load, name, label, dist_name, dist_version):
            try:
                plugin = load()
                if pm.is_registered(plugin):
                    return
                pm.register(plugin, name=name(plugin))  # pluggy validates the hook implementations here
            except Exception as exc:  # a broken plugin must not break the others
                if _strict():
                    raise
                failures.append(PluginFailure(label, dist_name, "load", f"{type(exc).__name__}: {exc}"))
                warnings.warn(
                    f"unisde plugin {label} failed to load and is skipped: {type(exc).__name__}: {exc}. "
                    f"Set {STRICT_ENV}=1 to raise instead.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return
            origins[pm.get_name(plugin)] = (dist_name, dist_version)

        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            dist_version = dist.version if dist is not None else "?"
            add(
                ep.load,
                lambda plugin, ep=ep: getattr(plugin, "__name__", ep.name),
                f"{ep.name!r} ({ep.value}, distribution {dist_name})",
                dist_name,
                dist_version,
            )
        for modname in BUILTIN_MODULES:  # running from a source tree without installed entry points
            add(
                lambda modname=modname: importlib.import_module(modname),
                lambda plugin, modname=modname: modname,
                f"{modname!r} (built-in, distribution unisde)",
                "unisde",
                _unisde_version(),
            )
        _state["pm"], _state["origins"], _state["registry"] = pm, origins, None
        _state["load_failures"] = failures
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
    _state.update(pm=None, registry=None, origins={}, load_failures=[], conflicts=[], hook_failures=[])


def _is_builtin(plugin_name: str) -> bool:
    return plugin_name in BUILTIN_MODULES or _state["origins"].get(plugin_name, ("",))[0] == "unisde"


def _entry_fields(kind: str, plugin: str, obj, target, aliases) -> tuple[str, Any, tuple]:
    """(name, object, aliases) of one ``register`` call: ``register(obj)`` with ``obj.name`` (and optional
    ``obj.aliases``), or ``register(name, obj)`` / ``register((name, obj))``, each with optional ``aliases=``."""
    if target is None and isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        obj, target = obj
    if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
        raise PluginError(
            f"plugin {plugin!r} registered a {kind} with aliases that are not a tuple of names: {aliases!r}"
        )
    if target is not None:
        if not isinstance(obj, str) or not obj:
            raise PluginError(
                f"plugin {plugin!r} registered a {kind} under a name that is not a non-empty string: {obj!r}"
            )
        return obj, target, tuple(aliases)
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin!r} registered a {kind} without a 'name' attribute: {obj!r}")
    return name, obj, tuple(aliases) + tuple(getattr(obj, "aliases", ()))


def _collect() -> dict[str, dict[str, Entry]]:
    if _state["registry"] is not None:
        return _state["registry"]
    pm = get_plugin_manager()
    registry: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
    conflicts: list[Conflict] = []
    failures: list[PluginFailure] = []
    order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}  # registration order
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        # Registration order, built-ins first: on a duplicate name the built-in (or else the first) one is kept.
        impls = sorted(
            hook.get_hookimpls(),
            key=lambda impl: (not _is_builtin(impl.plugin_name), order.get(impl.plugin_name, len(order))),
        )
        for impl in impls:
            pname = impl.plugin_name
            dist, version = _state["origins"].get(pname, ("(runtime)", ""))
            staged: list[tuple[str, Any, tuple]] = []

            def register(obj, target=None, *, aliases=(), _kind=kind, _pname=pname, _staged=staged):
                _staged.append(_entry_fields(_kind, _pname, obj, target, aliases))

            try:
                impl.function(register=register)
            except Exception as exc:  # a hook that raises registers nothing, and the other plugins keep working
                if _strict():
                    raise
                failure = PluginFailure(pname, dist, f"register {kind}s", f"{type(exc).__name__}: {exc}")
                failures.append(failure)
                warnings.warn(
                    f"unisde {failure.message()}. Set {STRICT_ENV}=1 to raise instead.", RuntimeWarning, stacklevel=3
                )
                continue
            table = registry[kind]
            for name, target, names in staged:
                kept = []
                for key in (name, *names):
                    owner = table.get(key) or (table.get(aliases[kind][key]) if key in aliases[kind] else None)
                    if owner is None and key in kept:
                        owner = Entry(name, target, pname, dist, version)  # the same plugin, twice in one call
                    if owner is None:
                        kept.append(key)
                        continue
                    conflict = Conflict(kind, key, owner.plugin, owner.distribution, pname, dist)
                    if _strict():
                        raise PluginError(conflict.message())
                    conflicts.append(conflict)
                    warnings.warn(
                        f"unisde: {conflict.message()}; keeping plugin {owner.plugin!r}'s and ignoring "
                        f"plugin {pname!r}'s. Set {STRICT_ENV}=1 to raise instead.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                if name not in kept:
                    continue  # the name itself is taken: the whole registration is ignored
                table[name] = Entry(name, target, pname, dist, version, tuple(kept[1:]))
                for alias in kept[1:]:
                    aliases[kind][alias] = name
    registry["_aliases"] = aliases  # type: ignore[assignment]
    _state["conflicts"], _state["hook_failures"], _state["registry"] = conflicts, failures, registry
    return registry


def plugin_conflicts() -> list[Conflict]:
    """Names registered twice, each with the registration kept and the one ignored."""
    _collect()
    return list(_state["conflicts"])


def plugin_failures() -> list[PluginFailure]:
    """Plugins (or registration hooks) skipped because they raised."""
    _collect()
    return list(_state["load_failures"]) + list(_state["hook_failures"])


def registry_snapshot() -> dict:
    """The registry of every plugin's samplers, grids, schedules, parameterisations and converters, as now: a new
    object after any plugin is registered or unregistered (or :func:`reset`), so that what was computed from one
    registry can tell by identity that the registry has changed."""
    return _collect()


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
    """The sampler class registered as ``name`` (ValueError listing the valid names otherwise). A sampler that picks
    its evaluation times from the model's outputs (class attribute ``adaptive = True``, e.g. ``dpm_adaptive``) has no
    time grid to run on: asking for it here is a ValueError saying how to run it (:func:`get_adaptive_sampler`)."""
    obj = _lookup("sampler", name).obj
    if getattr(obj, "adaptive", False):
        raise ValueError(
            f"sampler {name!r} chooses its evaluation times from the model's outputs (adaptive step size with error "
            "control), so it has no fixed list of timesteps and cannot run in UnifiedScheduler's step() loop or on a "
            f"time grid; use unisde.sample(..., sampler={name!r}) or unisde.sampling.sample_adaptive(...) (which "
            "also returns the NFE and the accepted/rejected steps)"
            + (f", or a fixed-grid sampler: {obj.grid_alternatives}" if getattr(obj, "grid_alternatives", "") else "")
        )
    return obj


def get_adaptive_sampler(name: str):
    """The adaptive-step sampler class registered as ``name`` (run by :func:`unisde.sampling.sample_adaptive`);
    a ValueError for an unknown name or a sampler on a time grid."""
    obj = _lookup("sampler", name).obj
    if not getattr(obj, "adaptive", False):
        raise ValueError(
            f"sampler {name!r} runs on a fixed time grid: use unisde.sample or UnifiedScheduler; the adaptive-step "
            f"samplers are {list_adaptive_samplers()}"
        )
    return obj


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
    """Names of every registered sampler that runs on a time grid with one x̂0 per evaluation, sorted: every one
    :func:`get_sampler` returns except those needing the unconditional x̂0 too (:func:`list_guided_samplers`), so
    every name here runs in :class:`unisde.UnifiedScheduler` and :func:`unisde.sample` with any model."""
    return sorted(
        name
        for name, entry in _collect()["sampler"].items()
        if not getattr(entry.obj, "adaptive", False) and not getattr(entry.obj, "needs_uncond", False)
    )


def list_guided_samplers() -> list[str]:
    """Names of the registered samplers that need the unconditional x̂0 as well as the guided one (class attribute
    ``needs_uncond = True``: the CFG++ samplers, :mod:`unisde.samplers.cfg_pp`), sorted. :func:`get_sampler` returns
    them and :func:`unisde.sample` runs them with a denoiser (or model) returning (guided, unconditional);
    :class:`unisde.UnifiedScheduler` refuses them."""
    return sorted(name for name, entry in _collect()["sampler"].items() if getattr(entry.obj, "needs_uncond", False))


def list_adaptive_samplers() -> list[str]:
    """Names of the registered adaptive-step samplers (:func:`get_adaptive_sampler`), sorted."""
    return sorted(name for name, entry in _collect()["sampler"].items() if getattr(entry.obj, "adaptive", False))


def list_parameterizations() -> list[str]:
    """Names of every registered parameterisation, sorted (aliases not included)."""
    return sorted(_collect()["parameterization"])


def list_schedules() -> list[str]:
    """Names of every registered schedule (the built-in ones of :mod:`unisde.core.schedule` included), sorted."""
    return sorted(_collect()["schedule"])


def plugin_table() -> list[Entry]:
    """Every registered sampler, parameterisation and schedule with the distribution that registered it."""
    registry = _collect()
    out = []
    for kind in KINDS:
        for entry in sorted(registry[kind].values(), key=lambda e: e.name):
            out.append((kind, entry))
    return out


def describe_origin(kind: str, obj_or_name) -> str:
    """Who provides a registered plugin object, for error messages: ``"sampler 'pndm' (plugin
    'unisde.samplers', distribution unisde 0.3)"``. ``obj_or_name`` is a name, a registered class or an instance
    of one; a class that is not the one registered under its name is described by its import path instead."""
    if isinstance(obj_or_name, str):
        name, cls = obj_or_name, None
    else:
        cls = obj_or_name if isinstance(obj_or_name, type) else type(obj_or_name)
        name = getattr(cls, "name", "") or cls.__name__
    path = f"class {cls.__module__}.{cls.__qualname__}" if cls is not None else ""
    try:
        entry = _lookup(kind, name)
    except ValueError:
        return f"{kind} {name!r} ({path + ', ' if path else ''}not registered)"
    if cls is not None and entry.obj is not cls:
        return f"{kind} {name!r} ({path}, not the registered one)"
    version = f" {entry.version}" if entry.version else ""
    return f"{kind} {entry.name!r} (plugin {entry.plugin!r}, distribution {entry.distribution}{version})"
