"""unisde.sample drives the same sampler loop as UnifiedScheduler: identical answers (float64, 1e-12), for every
registered sampler, with a model callable and with a denoiser callable."""

import pytest
import torch

import unisde
from unisde import NoiseSchedule
from unisde.analytic import Gaussian
from unisde.scheduler import UnifiedScheduler

F64 = torch.float64
SAMPLERS = unisde.list_samplers()


def _model(schedule, param_name):
    """A network-shaped callable (model_input, timestep) -> raw output: the exact Gaussian denoiser written in
    the parameterisation's output space."""
    param = unisde.get_parameterization(param_name)
    data = Gaussian(torch.full((4,), 0.3, dtype=F64), 0.25)

    def model(x_in, timestep):
        t = param.t_from_model_time(schedule, torch.as_tensor(timestep, dtype=F64).reshape(-1)).expand(x_in.shape[0])
        x = x_in / param.model_input(torch.ones_like(x_in), t, schedule)
        return param.from_denoised(data.denoise(x, t, schedule), x, t, schedule)

    return model, data


def _scheduler_run(sched_obj, model, noise, generator):
    x = noise * sched_obj.init_noise_sigma
    for t in sched_obj.timesteps:
        out = model(sched_obj.scale_model_input(x, t), t)
        x = sched_obj.step(out, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("param_name", ["epsilon", "v_prediction"])
def test_functional_equals_scheduler(sampler, param_name):
    schedule = NoiseSchedule.from_diffusers_config({"num_train_timesteps": 1000})
    model, _ = _model(schedule, param_name)
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    uni = UnifiedScheduler(sampler=sampler, prediction_type=param_name, timestep_spacing="trailing")
    uni.set_timesteps(8)
    ref = _scheduler_run(uni, model, noise, torch.Generator().manual_seed(1))
    # the scheduler's effective options (config keys that share an option's name, e.g. pc's snr, reach the sampler)
    out = unisde.sample(
        model,
        noise,
        schedule=uni.noise_schedule,
        parameterization=param_name,
        sampler=sampler,
        sampler_options=uni.sampler_options,
        num_inference_steps=8,
        time_grid=uni._grid_kind(),
        generator=torch.Generator().manual_seed(1),
    )
    assert out.dtype == F64 and torch.isfinite(out).all()
    assert torch.allclose(out, ref, rtol=0, atol=1e-12), (out - ref).abs().max()


@pytest.mark.parametrize("sampler", ["ddim", "edm", "ode"])
def test_denoiser_form_equals_model_form(sampler):
    schedule = NoiseSchedule.from_name("vp-linear")
    model, data = _model(schedule, "epsilon")
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    common = dict(schedule=schedule, sampler=sampler, num_inference_steps=10, time_grid="uniform_t")
    a = unisde.sample(model, noise, **common)
    b = unisde.sample(None, noise, denoiser=lambda x, t: data.denoise(x, t, schedule), **common)
    # the model form feeds float32 timesteps (as UnifiedScheduler does), so its times carry ~6e-8 relative rounding
    assert torch.allclose(a, b, rtol=0, atol=1e-6), (a - b).abs().max()


def test_noise_sampler_replaces_every_draw():
    schedule = NoiseSchedule.from_name("vp-linear")
    _, data = _model(schedule, "epsilon")
    noise = torch.randn(2, 4, dtype=F64)
    draws = []

    def zeros(x):
        draws.append(1)
        return torch.zeros_like(x)

    common = dict(
        schedule=schedule,
        denoiser=lambda x, t: data.denoise(x, t, schedule),
        num_inference_steps=6,
        time_grid="uniform_t",
    )
    stochastic = unisde.sample(None, noise, sampler="ddim", sampler_options={"eta": 1.0}, noise_sampler=zeros, **common)
    assert len(draws) >= 5
    # with every draw zero, DDIM at η = 1 is deterministic: the same answer twice
    again = unisde.sample(None, noise, sampler="ddim", sampler_options={"eta": 1.0}, noise_sampler=zeros, **common)
    assert torch.equal(stochastic, again)


def test_bad_calls_are_clear_errors():
    with pytest.raises(ValueError, match="exactly one of model and denoiser"):
        unisde.sample(None, torch.zeros(1, 2), num_inference_steps=3)
    with pytest.raises(ValueError, match="exactly one of num_inference_steps, timesteps or sigmas"):
        unisde.sample(lambda x, t: x, torch.zeros(1, 2))


@pytest.mark.parametrize(
    "sampler, options",
    [("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.7, "ancestral": "rf"}), ("dpm_2_ancestral", {}), ("lcm", {})],
)
def test_a_callers_noise_is_never_written_to_and_gives_the_samplers_own_draws_values(sampler, options):
    # ancestral steps form the next sample in their own fresh draw's buffer (Sampler.noised); a draw handed in by
    # a noise_sampler must come back untouched, and the same draws must give the same sample bit for bit
    schedule = NoiseSchedule.vp_linear()
    model, _ = _model(schedule, "epsilon")
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    kwargs = dict(schedule=schedule, sampler=sampler, num_inference_steps=6, sampler_options=options)
    own = unisde.sample(model, noise, generator=torch.Generator().manual_seed(1), **kwargs)
    replay, handed = torch.Generator().manual_seed(1), []

    def noise_sampler(like):
        z = torch.randn(like.shape, generator=replay, dtype=like.dtype)
        handed.append((z, z.clone()))
        return z

    given = unisde.sample(model, noise, noise_sampler=noise_sampler, **kwargs)
    assert handed and all(torch.equal(z, kept) for z, kept in handed)
    assert torch.equal(own, given)
