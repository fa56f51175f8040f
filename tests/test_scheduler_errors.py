"""Bad input to UnifiedScheduler: each case is a ValueError that names the bad value (and the valid choices,
with the closest match, where there is a list), raised before any work — and the scheduler stays usable: the
correct call made right afterwards gives exactly what it gives on a fresh scheduler."""

from __future__ import annotations

import pytest
import torch

import unisde
from unisde.diffusers.scheduler import MAX_STAGES_UNPROBED, UnifiedScheduler

SHAPE = (1, 2, 4, 4)


def model(x, t):
    return 0.5 * x + 0.01 * torch.sin(x)


def sample(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def reference_first_step(sampler="ddim", n=5):
    """The first step's prev_sample on a fresh scheduler (what a correct call after an error must return)."""
    fresh = UnifiedScheduler(sampler=sampler)
    fresh.set_timesteps(n)
    t = fresh.timesteps[0]
    return fresh.step(model(sample(), t), t, sample(), generator=torch.Generator().manual_seed(0)).prev_sample


def first_step(sched):
    t = sched.timesteps[0]
    return sched.step(model(sample(), t), t, sample(), generator=torch.Generator().manual_seed(0)).prev_sample


# ---------------------------------------------------------------------------------------------- step / set_timesteps
def test_step_before_set_timesteps():
    sched = UnifiedScheduler(sampler="ddim")
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(model(sample(), 999), 999, sample())
    sched.set_timesteps(5)
    assert torch.equal(first_step(sched), reference_first_step())


@pytest.mark.parametrize(
    "bad, message",
    [
        (1001, "1001 is larger than the schedule's 1000 training timesteps"),
        (0, "positive integer, got 0"),
        (-3, "positive integer, got -3"),
        (2.5, "positive integer, got 2.5"),
        (True, "positive integer, got True"),
    ],
)
def test_bad_num_inference_steps_keeps_the_current_grid(bad, message):
    sched = UnifiedScheduler(sampler="ddim")
    sched.set_timesteps(5)
    before = sched.timesteps.clone()
    with pytest.raises(ValueError, match=message):
        sched.set_timesteps(bad)
    assert torch.equal(sched.timesteps, before) and sched.num_inference_steps == 5
    assert torch.equal(first_step(sched), reference_first_step())


def test_custom_timesteps_outside_the_table():
    sched = UnifiedScheduler(sampler="ddim")
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="1500|timestep"):
        sched.set_timesteps(timesteps=[1500, 700, 100])
    with pytest.raises(ValueError, match="strictly decreasing"):
        sched.set_timesteps(timesteps=[100, 700])
    with pytest.raises(ValueError, match="non-empty"):
        sched.set_timesteps(timesteps=[])
    with pytest.raises(ValueError, match="finite and >= 0"):
        sched.set_timesteps(sigmas=[5.0, -1.0, 0.0])
    assert torch.equal(first_step(sched), reference_first_step())


@pytest.mark.parametrize(
    "schedule, sigmas, message",
    [
        (None, [1e6, 1.0, 0.0], r"sigmas\[0\] = 1e\+06 lies outside the schedule's VE-view noise levels \[0\.01"),
        (None, [1.0, 1e-4, 0.0], r"sigmas\[1\] = 0\.0001 lies outside .*\[0\.01\d*, 157\.4"),
        ("ve", [1e6, 1.0, 0.0], r"sigmas\[0\] = 1e\+06 lies outside .*\[0\.01, 50\]"),
        ("ve", [1.0, 0.001, 0.0], r"sigmas\[1\] = 0\.001 lies outside .*\[0\.01, 50\]"),
        (None, [0.0, 0.0], r"sigmas\[0\] = 0: a zero noise level may only be the last entry"),
        (None, [5.0, 0.0, 1.0, 0.0], r"sigmas\[1\] = 0: a zero noise level may only be the last entry"),
    ],
)
def test_custom_sigmas_outside_the_schedule(schedule, sigmas, message):
    """Levels the schedule does not have were clamped silently (``[1e6, 1, 0]`` ran from σ̃_max) and ``[0, 0]``
    gave a one-step grid at timestep −1; both front doors now refuse them, naming the entry and the range."""
    sched = UnifiedScheduler(sampler="euler", schedule=schedule)
    sched.set_timesteps(5)
    before = sched.timesteps.clone()
    with pytest.raises(ValueError, match=message):
        sched.set_timesteps(sigmas=sigmas)
    assert torch.equal(sched.timesteps, before)
    with pytest.raises(ValueError, match=message):
        unisde.sample(model, sample(), sampler="euler", schedule=schedule or sched.noise_schedule, sigmas=sigmas)
    # the schedule's own levels (float32, as scheduler.sigmas holds them) are within range at both ends
    sched.set_timesteps(sigmas=sched.sigmas.tolist())
    torch.testing.assert_close(sched.timesteps, before, rtol=1e-5, atol=1e-4)


def test_timestep_not_on_the_grid():
    sched = UnifiedScheduler(sampler="ddim")
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match=r"timestep 123(\.0)? is not on the current grid \(800, 600, 400, 200, 0\)"):
        sched.step(model(sample(), 123), 123, sample())
    assert sched.step_index is None
    assert torch.equal(first_step(sched), reference_first_step())


def test_stepping_past_the_end():
    sched = UnifiedScheduler(sampler="ddim")
    sched.set_timesteps(2)
    x = sample()
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x).prev_sample
    with pytest.raises(ValueError, match="all 2 steps of the current grid are done"):
        sched.step(model(x, 0), sched.timesteps[-1], x)
    sched.set_timesteps(5)
    assert torch.equal(first_step(sched), reference_first_step())


# ---------------------------------------------------------------------------------------------- model output
@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(1, 2, 4, 5), r"model_output has shape \(1, 2, 4, 5\) but the sample has \(1, 2, 4, 4\)"),
        (torch.zeros(2, 2, 4, 4), r"model_output has shape \(2, 2, 4, 4\)"),
        (torch.zeros(1, 3, 4, 4), r"model_output has shape \(1, 3, 4, 4\)"),
        (torch.zeros(SHAPE, dtype=torch.int64), "floating-point tensor, got torch.int64"),
        (torch.zeros(SHAPE, dtype=torch.bool), "floating-point tensor, got torch.bool"),
        ([[0.0]], "floating-point tensor, got list"),
    ],
)
def test_bad_model_output(bad, message):
    sched = UnifiedScheduler(sampler="ddim")
    sched.set_timesteps(5)
    t = sched.timesteps[0]
    with pytest.raises(ValueError, match=message):
        sched.step(bad, t, sample())
    assert torch.equal(first_step(sched), reference_first_step())


@pytest.mark.parametrize("sampler", unisde.list_samplers())
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_model_output_names_the_step(sampler, bad_value):
    """A NaN/inf output at step k is a ValueError naming k and its timestep: at once where step k ends a step of
    the sampler, at the end of that step where k returns an inner point (Heun's predictor, KDPM2's midpoint: one
    model evaluation later; heunpp2's, two), never later."""
    sched = UnifiedScheduler(sampler=sampler)
    sched.set_timesteps(4)
    x = sample()
    k_bad = 1
    for k, t in enumerate(sched.timesteps[:k_bad]):
        x = sched.step(model(x, t), t, x, generator=torch.Generator().manual_seed(k)).prev_sample
    t = sched.timesteps[k_bad]
    out = model(x, t)
    out[0, 0, 1, 2] = bad_value
    unprobed = sched._state.unprobed
    with pytest.raises(ValueError, match=rf"step {k_bad} \(timestep {float(t):.6g}\) contains NaN or inf"):
        k = k_bad
        x = sched.step(out, t, x).prev_sample
        while k in unprobed:  # the step's end probe finds it
            k += 1
            x = sched.step(model(x, sched.timesteps[k]), sched.timesteps[k], x).prev_sample
    assert k <= k_bad + MAX_STAGES_UNPROBED - 1
    # usable afterwards: a new loop on the same scheduler equals a fresh scheduler's loop
    sched.set_timesteps(4)
    fresh = UnifiedScheduler(sampler=sampler)
    fresh.set_timesteps(4)
    xa, xb = full_loop(sched), full_loop(fresh)
    assert torch.isfinite(xa).all() and torch.equal(xa, xb)


def full_loop(sched):
    gen = torch.Generator().manual_seed(7)
    y = sample(1)
    for t in sched.timesteps:
        y = sched.step(model(y, t), t, y, generator=gen).prev_sample
    return y


# ---------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="ddmi"), r"unknown sampler 'ddmi'; valid choices: .*ddim.*ddpm.*edm.*Did you mean 'dd(im|pm)'\?"),
        (dict(sampler="edn"), r"unknown sampler 'edn'; valid choices: .*Did you mean 'edm'\?"),
        (
            dict(prediction_type="epsilonn"),
            r"unknown parameterization 'epsilonn'; valid choices: .*epsilon.*v_prediction.*Did you mean 'epsilon'\?",
        ),
        (dict(prediction_type="v_predicton"), r"Did you mean 'v_prediction'\?"),
        (
            dict(sampler="ddim", sampler_options={"etaa": 1.0}),
            r"unknown option\(s\) \['etaa'\] for sampler 'ddim'; valid options: ancestral, "
            r"diffusers_prev_timestep, eta, s_noise, use_clipped_model_output\. Did you mean 'eta'\?",
        ),
        (dict(sampler="edm", sampler_options={"s_chrun": 1.0}), r"valid options: .*s_churn.*Did you mean 's_churn'\?"),
        (dict(sampler="ddim", sampler_options={"eta": "one"}), r"option eta must be float, got 'one' \(str\)"),
        (dict(sampler="ddim", sampler_options={"eta": -0.5}), r"eta=-0.5 is invalid: must be >= 0"),
        (
            dict(sampler="ddim", sampler_options={"use_clipped_model_output": 1}),
            r"use_clipped_model_output must be bool",
        ),
        (dict(sampler="edm", sampler_options={"s_churn": True}), r"s_churn must be float, got True \(bool\)"),
        (
            dict(sampler="edm", sampler_options={"solver": "heum"}),
            r"solver='heum' is not one of \['heun', 'euler'\]\. Did you mean 'heun'\?",
        ),
        (dict(sampler="ddpm", sampler_options={"variance_type": "fixed_smal"}), r"Did you mean 'fixed_small'\?"),
        (dict(sampler="ddim", sampler_options=[("eta", 1.0)]), "sampler_options must be a dict, got list"),
        (dict(time_grid="karas"), r"unknown time_grid 'karas'; valid choices: .*Did you mean 'karras'\?"),
        (dict(timestep_spacing="leadin"), r"unknown timestep_spacing 'leadin'.*Did you mean 'leading'\?"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnifiedScheduler(**kwargs)


def test_every_sampler_rejects_an_unknown_option_listing_its_own():
    for name in unisde.list_samplers():
        cls = unisde.get_sampler(name)
        with pytest.raises(ValueError) as info:
            UnifiedScheduler(sampler=name, sampler_options={"no_such_option": 1})
        text = str(info.value)
        assert "no_such_option" in text
        assert all(option in text for option in cls.options), (name, text)


def test_bad_from_config_keeps_nothing_half_built():
    """A conversion with a bad override fails as a whole; the source config is untouched and converts fine."""
    from diffusers import DDIMScheduler

    cfg = DDIMScheduler().config
    with pytest.raises(ValueError, match="unknown sampler"):
        UnifiedScheduler.from_config(cfg, sampler="nope")
    sched = UnifiedScheduler.from_config(cfg)
    assert sched.config.sampler == "ddim"
    sched.set_timesteps(5)
    assert torch.isfinite(first_step(sched)).all()


def test_score_sde_interface_misuse():
    """ScoreSdeVePipeline's calls: step_pred/step_correct before set_sigmas, a σ range other than the config's,
    and calls out of order are ValueErrors; set_sigmas afterwards gives a working loop."""
    from diffusers import ScoreSdeVeScheduler

    sched = UnifiedScheduler.from_config(ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0).config, sampler="ddim")
    x = sample()
    with pytest.raises(ValueError, match="set_sigmas"):
        sched.step_pred(x, 0, x)
    with pytest.raises(
        ValueError, match=r"set_sigmas\(sigma_max=80.0\) differs from the scheduler config's sigma_max=50.0"
    ):
        sched.set_sigmas(3, sigma_max=80.0)
    sched.set_timesteps(3)
    sched.set_sigmas(3)
    with pytest.raises(ValueError, match="out of order"):  # correct_steps = 1: a step_correct call comes first
        sched.step_pred(x, sched.timesteps[0], x)
    sched.set_sigmas(3)
    gen = torch.Generator().manual_seed(0)
    for t, sigma in zip(sched.timesteps, sched.sigmas):
        x = sched.step_correct(-x / (float(sigma) ** 2 + 1), x, generator=gen).prev_sample
        x = sched.step_pred(-x / (float(sigma) ** 2 + 1), t, x, generator=gen).prev_sample_mean
    assert torch.isfinite(x).all()
