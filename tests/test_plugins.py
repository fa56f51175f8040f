"""The plugin registry: lookup errors, aliases, runtime plugins through the public hooks, duplicate names,
broken entry points (warning, or raise under UNISDE_STRICT_PLUGINS=1)."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

import unisde
from unisde import plugins
from unisde.parameterizations import Parameterization, schedule_coefficients


@pytest.fixture(autouse=True)
def fresh_registry():
    plugins.reset()
    yield
    plugins.reset()


def test_unknown_names_list_valid_names_and_closest_match():
    with pytest.raises(
        ValueError,
        match=r"unknown parameterization 'epsilonn'; valid choices: .*edm.*eps.*v_prediction.*Did you mean 'epsilon'\?",
    ):
        unisde.get_parameterization("epsilonn")
    with pytest.raises(ValueError, match=r"unknown sampler 'no-such-sampler'; valid choices:"):
        unisde.get_sampler("no-such-sampler")


@pytest.mark.parametrize("alias, name", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
def test_aliases_resolve_to_the_same_class(alias, name):
    assert type(unisde.get_parameterization(alias)) is type(unisde.get_parameterization(name))
    assert name in unisde.list_parameterizations() and alias not in unisde.list_parameterizations()


def test_builtins_come_from_the_same_hooks():
    names = set(unisde.list_parameterizations())
    assert {"epsilon", "sample", "v_prediction", "score", "edm"} <= names
    origins = {entry.plugin for kind, entry in plugins.plugin_table() if kind == "parameterization"}
    assert origins == {"unisde.parameterizations"}


class _HalfEps(Parameterization):
    """A toy parameterisation: the model predicts ε/2 (x̂0 = (x − 2σ F)/s)."""

    name = "half_eps"
    aliases = ("heps",)

    def coefficients(self, schedule, t):
        s, sigma = schedule_coefficients(schedule, t)
        return 1 / s, -2 * sigma / s


class _ToySampler:
    name = "toy"


def _plugin(*, sampler=None, parameterization=None):
    module = types.SimpleNamespace()
    if sampler is not None:

        @unisde.hookimpl
        def unisde_register_samplers(register):
            register(sampler)

        module.unisde_register_samplers = unisde_register_samplers
    if parameterization is not None:

        @unisde.hookimpl
        def unisde_register_parameterizations(register):
            register(parameterization)

        module.unisde_register_parameterizations = unisde_register_parameterizations
    return module


def test_runtime_plugin_adds_a_sampler_and_a_parameterization():
    name = plugins.register_plugin(_plugin(sampler=_ToySampler, parameterization=_HalfEps), name="toy-plugin")
    assert unisde.get_sampler("toy") is _ToySampler and "toy" in unisde.list_samplers()
    param = unisde.get_parameterization("heps")
    assert isinstance(param, _HalfEps) and "half_eps" in unisde.list_parameterizations()
    # It works as a parameterisation: its output is half the ε-prediction's.
    schedule = unisde.NoiseSchedule.vp_linear()
    x, x0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    eps = unisde.get_parameterization("eps").from_denoised(x0, x, 0.4, schedule)
    assert torch.allclose(param.from_denoised(x0, x, 0.4, schedule), eps / 2, rtol=1e-12, atol=1e-12)
    entry = [e for kind, e in plugins.plugin_table() if e.name == "toy"][0]
    assert entry.plugin == name == "toy-plugin" and entry.distribution == "(runtime)"
    plugins.unregister_plugin(name)
    with pytest.raises(ValueError, match="unknown sampler 'toy'"):
        unisde.get_sampler("toy")


class _Clash(_HalfEps):
    name = "epsilon"
    aliases = ()


def test_duplicate_names_warn_naming_both_plugins_and_keep_the_builtin(monkeypatch):
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    plugins.register_plugin(_plugin(parameterization=_Clash), name="clashing-plugin")
    with pytest.warns(
        RuntimeWarning,
        match=r"'epsilon' is registered twice: by plugin 'unisde\.parameterizations' "
        r"\(unisde\) and by plugin 'clashing-plugin' \(\(runtime\)\)",
    ):
        names = unisde.list_parameterizations()
    assert "epsilon" in names
    assert not isinstance(unisde.get_parameterization("epsilon"), _Clash)  # the built-in is kept
    [conflict] = plugins.plugin_conflicts()
    assert (conflict.kept_plugin, conflict.ignored_plugin) == ("unisde.parameterizations", "clashing-plugin")


def test_duplicate_names_raise_in_strict_mode(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    plugins.register_plugin(_plugin(parameterization=_Clash), name="clashing-plugin")
    with pytest.raises(
        plugins.PluginError,
        match=r"'epsilon' is registered twice: by plugin '(unisde\.parameterizations|clashing-plugin)'.*"
        r"and by plugin '(clashing-plugin|unisde\.parameterizations)'",
    ) as info:
        unisde.list_parameterizations()
    assert "unisde.parameterizations" in str(info.value) and "clashing-plugin" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_duplicate_alias_warns_and_keeps_the_rest_of_the_registration(monkeypatch):
    class AliasClash(_HalfEps):
        name = "other"
        aliases = ("eps", "oth")

    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    plugins.register_plugin(_plugin(parameterization=AliasClash), name="alias-plugin")
    with pytest.warns(RuntimeWarning, match=r"'eps' is registered twice.*alias-plugin"):
        assert unisde.get_parameterization("eps").name == "epsilon"
    assert isinstance(unisde.get_parameterization("oth"), AliasClash)
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    plugins.reset()
    plugins.register_plugin(_plugin(parameterization=AliasClash), name="alias-plugin")
    with pytest.raises(plugins.PluginError, match=r"'eps' is registered twice.*alias-plugin"):
        unisde.get_parameterization("epsilon")


class _BrokenEntryPoint:
    name = "broken_sampler"
    value = "broken_pkg.samplers"
    dist = types.SimpleNamespace(metadata={"Name": "broken-pkg"}, version="0.0.1")

    def load(self):
        raise ImportError("No module named 'broken_pkg'")


def test_broken_plugin_warns_and_builtins_keep_working(monkeypatch):
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)
    monkeypatch.setattr(plugins, "_entry_points", lambda: [_BrokenEntryPoint()])
    with pytest.warns(
        RuntimeWarning,
        match=r"plugin 'broken_sampler' \(broken_pkg\.samplers, distribution broken-pkg\) failed to load.*"
        r"ImportError.*UNISDE_STRICT_PLUGINS=1",
    ):
        names = unisde.list_parameterizations()
    assert "epsilon" in names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loaded once: later lookups do not warn again
        assert unisde.get_parameterization("eps").name == "epsilon"


def test_strict_mode_raises_the_import_error(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    monkeypatch.setattr(plugins, "_entry_points", lambda: [_BrokenEntryPoint()])
    with pytest.raises(ImportError, match="broken_pkg"):
        unisde.list_parameterizations()


def test_plugins_command_lists_builtins(capsys):
    from unisde.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "parameterization" in out and "v_prediction" in out and "unisde.parameterizations" in out
