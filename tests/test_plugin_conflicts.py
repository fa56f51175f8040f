"""A misbehaving plugin never breaks the others: duplicate names keep the built-in (or first) registration with a
RuntimeWarning naming both plugins and distributions, a registration hook that raises is skipped with a warning
naming its plugin, and UNISDE_STRICT_PLUGINS=1 turns each into an exception. ``unisde plugins`` lists both."""

from __future__ import annotations

import types
import warnings

import pytest

import unisde
from unisde import plugins


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def _module(**hooks):
    """A plugin object whose hooks call ``register`` with the given arguments (a list of argument tuples per hook)
    or raise the given exception."""
    module = types.SimpleNamespace()
    for hook_name, calls in hooks.items():

        def hook(register, _calls=calls):
            if isinstance(_calls, Exception):
                raise _calls
            for args in _calls:
                register(*args)

        setattr(module, hook_name, unisde.hookimpl(specname=hook_name)(hook))
    return module


class _EdmImpostor:
    name = "edm"


class _First:
    name = "twice"


class _Second:
    name = "twice"


def test_two_external_plugins_first_registration_is_kept():
    plugins.register_plugin(
        _module(unisde_register_samplers=[(_First,)]), name="first-plugin", distribution="dist-a", version="1.0"
    )
    plugins.register_plugin(
        _module(unisde_register_samplers=[(_Second,)]), name="second-plugin", distribution="dist-b", version="2.0"
    )
    with pytest.warns(
        RuntimeWarning,
        match=r"sampler name 'twice' is registered twice: by plugin 'first-plugin' "
        r"\(dist-a\) and by plugin 'second-plugin' \(dist-b\)",
    ):
        assert unisde.get_sampler("twice") is _First
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, when the registry is built
        assert unisde.get_sampler("twice") is _First
    kept_ignored = [(c.kept_plugin, c.ignored_plugin) for c in plugins.plugin_conflicts()]
    assert kept_ignored == [("first-plugin", "second-plugin")]


def test_plugin_reusing_a_builtin_sampler_name_leaves_builtin_lookups_working():
    """The reported failure: one plugin registering 'edm' made UnifiedScheduler(sampler='edm') raise."""
    from unisde.diffusers.scheduler import UnifiedScheduler

    builtin = unisde.get_sampler("edm")
    plugins.reset()
    impostor = _module(unisde_register_samplers=[(_EdmImpostor,)])
    plugins.register_plugin(impostor, name="impostor", distribution="bad-dist")
    with pytest.warns(RuntimeWarning, match=r"'edm' is registered twice.*'impostor' \(bad-dist\)"):
        scheduler = UnifiedScheduler(sampler="edm")
    assert scheduler.sampler_cls is builtin and unisde.get_sampler("edm") is builtin
    assert "ddpm" in unisde.list_samplers()


def test_strict_mode_raises_on_a_duplicate(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    plugins.register_plugin(_module(unisde_register_samplers=[(_EdmImpostor,)]), name="impostor")
    with pytest.raises(plugins.PluginError, match="'edm' is registered twice"):
        unisde.list_samplers()


def test_a_hook_that_raises_is_skipped_with_a_warning_naming_the_plugin():
    plugins.register_plugin(
        _module(unisde_register_samplers=RuntimeError("boom")), name="exploding-plugin", distribution="exploding-dist"
    )
    with pytest.warns(
        RuntimeWarning,
        match=r"plugin 'exploding-plugin' \(exploding-dist\) failed at register samplers "
        r"and is skipped: RuntimeError: boom",
    ):
        names = unisde.list_samplers()
    assert "edm" in names and "ddpm" in names
    [failure] = plugins.plugin_failures()
    assert (failure.plugin, failure.stage) == ("exploding-plugin", "register samplers")


def test_a_hook_that_raises_midway_registers_nothing():
    class Partial:
        name = "partial"

    module = types.SimpleNamespace()

    @unisde.hookimpl
    def unisde_register_samplers(register):
        register(Partial)
        raise KeyError("second registration failed")

    module.unisde_register_samplers = unisde_register_samplers
    plugins.register_plugin(module, name="half-plugin")
    with pytest.warns(RuntimeWarning, match="half-plugin"):
        assert "partial" not in unisde.list_samplers()


def test_strict_mode_raises_the_hooks_exception(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    plugins.register_plugin(_module(unisde_register_samplers=RuntimeError("boom")), name="exploding-plugin")
    with pytest.raises(RuntimeError, match="boom"):
        unisde.list_samplers()


def test_registration_without_a_name_is_a_skipped_hook():
    plugins.register_plugin(_module(unisde_register_samplers=[(object(),)]), name="nameless-plugin")
    with pytest.warns(RuntimeWarning, match=r"'nameless-plugin'.*PluginError.*without a 'name' attribute"):
        assert "edm" in unisde.list_samplers()


def test_name_object_pairs_register_any_kind():
    """``register(name, obj)`` and ``register((name, obj))`` work for every kind, not only schedules."""

    class Sampler:
        pass

    pairs = [("pair-sampler", Sampler), (("tuple-sampler", Sampler),)]
    plugins.register_plugin(_module(unisde_register_samplers=pairs), name="pair-plugin")
    assert unisde.get_sampler("pair-sampler") is Sampler and unisde.get_sampler("tuple-sampler") is Sampler


def test_plugin_schedule_resolves_and_a_builtin_schedule_name_is_kept():
    from unisde.core.schedule import NoiseSchedule, resolve_schedule

    def wide_ve(sigma_max=500.0):
        return NoiseSchedule.ve(0.01, sigma_max)

    plugins.register_plugin(
        _module(unisde_register_schedules=[("wide-ve", wide_ve), ("ve", wide_ve)]),
        name="schedule-plugin",
        distribution="sched-dist",
    )
    with pytest.warns(
        RuntimeWarning,
        match=r"schedule name 've' is registered twice: by plugin "
        r"'unisde\.core\.schedule' \(unisde\) and by plugin 'schedule-plugin' "
        r"\(sched-dist\)",
    ):
        assert resolve_schedule("wide-ve").sigma_max == 500.0
    assert resolve_schedule({"name": "wide-ve", "sigma_max": 80.0}).sigma_max == 80.0
    assert resolve_schedule("ve").sigma_max == 50.0  # the built-in, not the plugin's
    with pytest.raises(ValueError, match=r"schedule 'wide-ve' has no parameter\(s\) \['sigma_min'\]"):
        resolve_schedule({"name": "wide-ve", "sigma_min": 1.0})
    with pytest.raises(ValueError, match=r"unknown schedule 'wide-v'.*wide-ve.*Did you mean"):
        resolve_schedule("wide-v")


class _BadHookEntryPoint:
    """An entry point whose module has a hook implementation pluggy rejects (unknown argument)."""

    name = "bad_hook"
    value = "bad_hook_pkg"
    dist = types.SimpleNamespace(metadata={"Name": "bad-hook-pkg"}, version="0.1")

    def load(self):
        module = types.ModuleType("bad_hook_pkg")

        @unisde.hookimpl
        def unisde_register_samplers(register, unexpected):
            pass

        module.unisde_register_samplers = unisde_register_samplers
        return module


def test_plugin_that_pluggy_rejects_is_skipped(monkeypatch):
    monkeypatch.setattr(plugins, "_entry_points", lambda: [_BadHookEntryPoint()])
    with pytest.warns(RuntimeWarning, match=r"'bad_hook' \(bad_hook_pkg, distribution bad-hook-pkg\) failed to load"):
        assert "edm" in unisde.list_samplers()
    assert [f.stage for f in plugins.plugin_failures()] == ["load"]


def test_plugins_command_lists_conflicts_and_skipped_plugins(capsys):
    from unisde.cli import main

    impostor = _module(unisde_register_samplers=[(_EdmImpostor,)])
    plugins.register_plugin(impostor, name="impostor", distribution="bad-dist")
    plugins.register_plugin(_module(unisde_register_parameterizations=ValueError("no")), name="exploding-plugin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the command reports them as lines, not warnings
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert (
        "conflicts (1)" in out
        and "sampler 'edm': kept plugin 'unisde.samplers' (unisde), ignored plugin 'impostor' (bad-dist)" in out
    )
    assert "skipped plugins (1)" in out
    assert "exploding-plugin ((runtime)) at register parameterizations: ValueError: no" in out
    assert "v_prediction" in out  # the table itself is complete
