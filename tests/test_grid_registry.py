"""Time grids are registered plugins with options: a third-party grid works through UnifiedScheduler and
unisde.sample; options are validated; set_timesteps(mu=...) reaches only a grid that declares mu."""

from __future__ import annotations

import types

import pytest
import torch

import unisde
from unisde import plugins
from unisde.grids import GRIDS, Grid, get_grid, list_grids, make_grid, time_range
from unisde.samplers import Option
from unisde.scheduler import UnifiedScheduler


def quadratic(schedule, n, t_min=None, t_max=None, power=2.0, mu=None):
    t_min, t_max = time_range(schedule, t_min, t_max)
    u = torch.linspace(1, 0, n, dtype=torch.float64) ** power
    times = t_min + (t_max - t_min) * u
    return times if mu is None else times ** float(mu)


QUADRATIC = Grid(
    "quadratic",
    quadratic,
    {
        "t_min": Option(None, (float, type(None)), "smallest time"),
        "t_max": Option(None, (float, type(None)), "largest"),
        "power": Option(2.0, (float,), "spacing exponent"),
        "mu": Option(None, (float, type(None)), "a toy shift"),
    },
)


@pytest.fixture
def quadratic_grid():
    @unisde.hookimpl
    def unisde_register_grids(register):
        register(QUADRATIC)

    name = plugins.register_plugin(types.SimpleNamespace(unisde_register_grids=unisde_register_grids), name="quad")
    yield
    plugins.unregister_plugin(name)


def test_builtin_grids_are_registered():
    assert set(GRIDS) <= set(list_grids())
    assert get_grid("karras").options["rho"].default == 7.0


def test_a_plugin_grid_through_every_front_door(quadratic_grid):
    uni = UnifiedScheduler(sampler="ddim", time_grid="quadratic", time_grid_options={"power": 3.0})
    uni.set_timesteps(6)
    expected = make_grid(uni.noise_schedule, 6, "quadratic", power=3.0)
    assert torch.allclose(uni._eval_times, expected[:-1])
    uni.set_timesteps(6, mu=2.0)
    assert torch.allclose(uni._eval_times, make_grid(uni.noise_schedule, 6, "quadratic", power=3.0, mu=2.0)[:-1])
    noise = torch.randn(2, 3, dtype=torch.float64)
    out = unisde.sample(
        lambda x, t: torch.zeros_like(x),
        noise,
        sampler="ddim",
        num_inference_steps=6,
        time_grid="quadratic",
        grid_options={"power": 3.0},
    )
    assert torch.isfinite(out).all()


def test_grid_options_are_validated():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rh'\] for time grid 'karras'.*Did you mean 'rho'"):
        make_grid(unisde.NoiseSchedule.from_name("vp-linear"), 5, "karras", rh=3.0)
    with pytest.raises(ValueError, match=r"time grid 'karras': option rho must be float"):
        make_grid(unisde.NoiseSchedule.from_name("vp-linear"), 5, "karras", rho="7")
    with pytest.raises(ValueError, match="unknown grid 'karas'"):
        make_grid(unisde.NoiseSchedule.from_name("vp-linear"), 5, "karas")
    with pytest.raises(ValueError, match="nope"):  # at construction, before any work
        UnifiedScheduler(sampler="ddim", time_grid="karras", time_grid_options={"rho": 3.0, "nope": 1})
    with pytest.raises(ValueError, match="time_grid_options must be a dict"):
        UnifiedScheduler(time_grid_options=[1])


def test_mu_reaches_only_a_grid_that_declares_it():
    sched = UnifiedScheduler(sampler="ddim")
    with pytest.raises(ValueError, match=r"mu=0.5.*'leading' has no dynamic shifting"):
        sched.set_timesteps(5, mu=0.5)
