"""``UnifiedScheduler.set_timesteps`` keeps the tables it computed (schedule interpolants, the sampler's prepare) and
reuses them when called again with the same inputs, as a pipeline does once per image: the reuse must give every
sampler the very loop a fresh computation gives, whatever the previous loop did, and must never serve another
config, sampler option or argument."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from diffusers import DDPMScheduler

from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.plugins import get_sampler, list_samplers

CONFIG = DDPMScheduler().config
SHAPE = (2, 1, 4, 4)


def _model(x, t):
    # a smooth stand-in for a network: deterministic in (x, t), different at every step
    return 0.3 * x + 0.01 * float(t) / 1000.0 + 0.05


def _loop(scheduler, steps=8, stop=None, **kwargs):
    scheduler.set_timesteps(steps, **kwargs)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for i, t in enumerate(scheduler.timesteps):
        if stop is not None and i == stop:
            return x
        out = _model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def _runnable(name):
    scheduler = UnifiedScheduler.from_config(CONFIG, sampler=name)
    try:
        _loop(scheduler)
    except ValueError:  # a sampler this DDPM config does not run (its own error is tested elsewhere)
        return None
    return scheduler


SAMPLERS = list_samplers()


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_reused_grid_gives_the_loop_a_fresh_one_gives(name):
    fresh = _runnable(name)
    if fresh is None:
        pytest.skip(f"{name} does not run on the DDPM config")
    expected = _loop(UnifiedScheduler.from_config(CONFIG, sampler=name))
    # the second and third loops reuse the first one's tables; the first one stopped half-way, the second ran through
    reused = UnifiedScheduler.from_config(CONFIG, sampler=name)
    _loop(reused, stop=4)
    assert reused._grid_cache is not None
    kept = reused._grid_cache
    torch.testing.assert_close(_loop(reused), expected, rtol=0, atol=0)
    torch.testing.assert_close(_loop(reused), expected, rtol=0, atol=0)
    assert reused._grid_cache is kept  # not recomputed
    torch.testing.assert_close(_loop(fresh), expected, rtol=0, atol=0)


def test_most_samplers_run_on_the_ddpm_config():
    # the parametrised test above skips only what cannot run here: it must cover nearly every sampler
    ran = [name for name in SAMPLERS if _runnable(name) is not None]
    assert len(ran) >= len(SAMPLERS) - 6, sorted(set(SAMPLERS) - set(ran))


def test_a_reuse_skips_the_samplers_prepare(monkeypatch):
    calls = []
    cls = get_sampler("dpmsolver++")
    prepare = cls.prepare
    monkeypatch.setattr(cls, "prepare", lambda self, grid: calls.append(len(grid)) or prepare(self, grid))
    scheduler = UnifiedScheduler.from_config(CONFIG, sampler="dpmsolver++")
    scheduler.set_timesteps(10)
    scheduler.set_timesteps(10)
    scheduler.set_timesteps(10, device="cpu")
    assert len(calls) == 1
    scheduler.set_timesteps(12)  # another argument: computed afresh
    scheduler.set_timesteps(timesteps=[999, 500, 100])
    scheduler.set_timesteps(timesteps=[999, 500, 100])
    assert len(calls) == 3


def test_the_tables_are_recomputed_for_other_options_configs_and_arguments():
    scheduler = UnifiedScheduler.from_config(CONFIG, sampler="ddim")
    scheduler.set_timesteps(10)
    first = scheduler.timesteps.clone()
    kept = scheduler._grid_cache
    scheduler.sampler_options["eta"] = 1.0  # options changed in place: not the tables' options
    scheduler.set_timesteps(10)
    assert scheduler._grid_cache is not kept and scheduler._sampler.opts["eta"] == 1.0
    kept = scheduler._grid_cache
    scheduler.register_to_config(timestep_spacing="trailing")  # a new config
    scheduler.set_timesteps(10)
    assert scheduler._grid_cache is not kept and torch.equal(scheduler.timesteps, first)
    # the same values with another type are another input (50 and 50.0, a list of ints and of floats)
    for args in ({"timesteps": [999, 500]}, {"timesteps": [999.0, 500.0]}, {"timesteps": torch.tensor([999, 500])}):
        kept = scheduler._grid_cache
        scheduler.set_timesteps(**args)
        assert scheduler._grid_cache is not kept


def test_a_caller_writing_into_the_timesteps_does_not_reach_the_next_loop():
    scheduler = UnifiedScheduler.from_config(CONFIG, sampler="ddim")
    scheduler.set_timesteps(10)
    expected = scheduler.timesteps.clone(), scheduler.sigmas.clone()
    scheduler.timesteps.zero_()
    scheduler.sigmas.zero_()
    scheduler.set_timesteps(10)
    assert torch.equal(scheduler.timesteps, expected[0]) and torch.equal(scheduler.sigmas, expected[1])


def test_an_input_that_is_not_plain_numbers_is_never_kept():
    scheduler = UnifiedScheduler.from_config(CONFIG, sampler="ddim")
    scheduler.set_timesteps(timesteps=[999, 500, 100])
    kept = scheduler._grid_cache
    assert kept is not None
    for bad in (torch.tensor(10), "10", [[999, 500]]):  # the usual errors; a failed call keeps nothing
        with pytest.raises((ValueError, TypeError)):
            scheduler.set_timesteps(bad) if not isinstance(bad, list) else scheduler.set_timesteps(timesteps=bad)
        assert scheduler._grid_cache is kept
    from unisde.diffusers.scheduler import _grid_key

    assert _grid_key([[999, 500]]) is None and _grid_key("10") is None
    assert _grid_key(10) != _grid_key(10.0)


def test_copies_compute_their_own_tables():
    scheduler = UnifiedScheduler.from_config(CONFIG, sampler="dpmpp_sde")
    expected = _loop(UnifiedScheduler.from_config(CONFIG, sampler="dpmpp_sde"))
    _loop(scheduler, stop=3)
    for other in (copy.deepcopy(scheduler), pickle.loads(pickle.dumps(scheduler))):
        assert "_grid_cache" not in other.__dict__
        torch.testing.assert_close(_loop(other), expected, rtol=0, atol=0)


def test_a_sampler_keeping_loop_state_on_itself_starts_each_reused_loop_clean():
    # a third-party sampler may keep what its loop accumulates on self (here: every x̂0 seen, and it averages them);
    # a reused grid hands each loop a copy of the sampler as prepare() left it, so an earlier loop's history never
    # enters a later one
    import unisde
    from unisde import plugins
    from unisde.samplers.ddim import DDIMSampler

    class Averaging(DDIMSampler):
        name = "averaging_ddim"
        aliases = ()

        def prepare(self, grid):
            self.seen = []
            return super().prepare(grid)

        def loop(self, x, start=0):
            inner = super().loop(x, start)
            x = next(inner)
            try:
                while True:
                    x_in, denoised = yield x
                    self.seen.append(denoised)
                    x = inner.send((x_in, sum(self.seen) / len(self.seen)))
            except StopIteration as done:
                return done.value

    class Plugin:
        @unisde.hookimpl
        def unisde_register_samplers(self, register):
            register(Averaging)

    name = plugins.register_plugin(Plugin(), name="averaging-plugin")
    try:
        expected = _loop(UnifiedScheduler.from_config(CONFIG, sampler="averaging_ddim"))
        scheduler = UnifiedScheduler.from_config(CONFIG, sampler="averaging_ddim")
        _loop(scheduler, stop=5)
        torch.testing.assert_close(_loop(scheduler), expected, rtol=0, atol=0)
        torch.testing.assert_close(_loop(scheduler), expected, rtol=0, atol=0)
    finally:
        plugins.unregister_plugin(name)


def test_a_plugin_registered_between_calls_recomputes_the_tables():
    # a grid or sampler registered at run time may replace what the tables were computed with
    from unisde import plugins

    scheduler = UnifiedScheduler.from_config(CONFIG, sampler="ddim")
    scheduler.set_timesteps(10)
    kept = scheduler._grid_cache
    scheduler.set_timesteps(10)
    assert scheduler._grid_cache is kept
    name = plugins.register_plugin(object(), name="empty-plugin")
    try:
        scheduler.set_timesteps(10)
        assert scheduler._grid_cache is not kept
    finally:
        plugins.unregister_plugin(name)
