"""The diffusers scheduler contract pipelines rely on, checked on UnifiedScheduler against the real diffusers
classes where one defines the expected value (add_noise, get_velocity, custom timesteps/sigmas, EDM input
scaling), and by construction elsewhere (signatures, output types, indices, save/reload, config conversion)."""

from __future__ import annotations

import inspect
import logging
import math

import diffusers
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EDMEulerScheduler, EulerDiscreteScheduler

import unisde
from unisde.analytic import Gaussian
from unisde.diffusers.scheduler import COMPATIBLE_SCHEDULERS, UnifiedScheduler, UnifiedSchedulerOutput
from unisde.grids import GRIDS

SHAPE = (1, 2, 4, 4)
# The keys only unisde defines: diffusers' own classes do not know them, so converting *back* drops them.
UNISDE_KEYS = {
    "sampler",
    "sampler_options",
    "schedule",
    "time_grid",
    "t_min",
    "t_max",
    "check_finite",
    "prediction_type",
}


def fake_model(x, timestep):
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x)


def run(sched, x, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    for t in sched.timesteps:
        x = sched.step(fake_model(sched.scale_model_input(x, t), t), t, x, generator=gen, **kw).prev_sample
    return x


def noise(seed=0, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class DiffusersWarnings:
    """Collects the warnings diffusers' logger emits (it does not propagate to the root logger, so caplog
    cannot see them)."""

    def __enter__(self):
        self.records: list[str] = []
        self.logger = logging.getLogger("diffusers")
        self.handler = logging.Handler(level=logging.WARNING)
        self.handler.emit = lambda record: self.records.append(record.getMessage())
        self.level = diffusers.utils.logging.get_verbosity()
        diffusers.utils.logging.set_verbosity_warning()
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        diffusers.utils.logging.set_verbosity(self.level)


# ---------------------------------------------------------------------------------------------- signatures
def test_set_timesteps_signature():
    params = inspect.signature(UnifiedScheduler.set_timesteps).parameters
    assert list(params)[1:6] == ["num_inference_steps", "device", "timesteps", "sigmas", "mu"]
    assert all(params[name].default is None for name in list(params)[1:6])


def test_step_signature_names_eta_and_generator():
    """Pipelines decide whether to pass eta/generator with ``set(inspect.signature(scheduler.step).parameters)``."""
    params = set(inspect.signature(UnifiedScheduler.step).parameters)
    assert {"model_output", "timestep", "sample", "eta", "generator", "return_dict"} <= params
    # the exact test the pipelines make
    sched = UnifiedScheduler()
    assert "eta" in set(inspect.signature(sched.step).parameters.keys())
    assert "generator" in set(inspect.signature(sched.step).parameters.keys())


# ---------------------------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_int64_on_the_model_scale(sampler, spacing):
    ref = DDPMScheduler(timestep_spacing=spacing)
    uni = UnifiedScheduler.from_config(ref.config, sampler=sampler)
    ref.set_timesteps(7)
    uni.set_timesteps(7)
    assert uni.timesteps.dtype == torch.int64
    assert torch.equal(uni.timesteps, ref.timesteps)
    assert uni.num_inference_steps == 7


def test_set_timesteps_device_and_exclusive_arguments():
    uni = UnifiedScheduler()
    uni.set_timesteps(5, device="cpu")
    assert uni.timesteps.device.type == "cpu"
    for bad in (dict(), dict(num_inference_steps=5, timesteps=[900, 500]), dict(timesteps=[900], sigmas=[1.0, 0.0])):
        with pytest.raises(ValueError, match="exactly one"):
            uni.set_timesteps(**bad)
    with pytest.raises(ValueError, match="mu"):
        uni.set_timesteps(5, mu=0.5)


def test_custom_timesteps_match_ddpm():
    """DDPMScheduler supports custom timesteps; the ancestral loop on them is the same in both."""
    custom = [999, 800, 512, 300, 111, 40, 3]
    ref = DDPMScheduler()
    ref.set_timesteps(timesteps=custom)
    uni = UnifiedScheduler.from_config(ref.config)
    uni.set_timesteps(timesteps=custom)
    assert uni.timesteps.tolist() == custom and uni.timesteps.dtype == torch.int64
    z = noise()
    x_ref, x_uni = run(ref, z.clone()), run(uni, z.clone())
    scale = float(z.abs().max())
    assert float((x_ref - x_uni).abs().max()) <= 1e-5 * scale
    # a torch tensor works too
    uni.set_timesteps(timesteps=torch.tensor(custom))
    assert uni.timesteps.tolist() == custom


def test_custom_sigmas_match_euler():
    """Custom VE-view σ̃ (descending, final 0) honoured as diffusers' Euler does."""
    sigmas = [14.0, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0]
    ref = EulerDiscreteScheduler()
    ref.set_timesteps(sigmas=sigmas)
    uni = UnifiedScheduler.from_config(ref.config)
    uni.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(uni.sigmas, torch.tensor(sigmas), rtol=1e-5, atol=0)
    torch.testing.assert_close(uni.timesteps.double(), ref.timesteps.double(), rtol=1e-3, atol=0.05)
    x_tilde = noise() * ref.init_noise_sigma
    x_ref = run(ref, x_tilde.clone())
    s0 = float(uni.noise_schedule.s(uni._eval_times[0]))
    x_uni = run(uni, x_tilde * s0)
    # the model depends on τ only through 1e-4 τ, so the small timestep interpolation difference is below this
    assert float((x_ref - x_uni).abs().max()) <= 1e-4 * float(x_tilde.abs().max())


def test_custom_timesteps_must_decrease():
    uni = UnifiedScheduler()
    with pytest.raises(ValueError, match="strictly decreasing"):
        uni.set_timesteps(timesteps=[100, 500, 900])


# ---------------------------------------------------------------------------------------------- noise level, inputs
def test_init_noise_sigma():
    uni = UnifiedScheduler()
    uni.set_timesteps(10)
    assert uni.init_noise_sigma == pytest.approx(1.0, abs=1e-6)  # VP: s² + σ² = 1
    edm = UnifiedScheduler.from_config(EDMEulerScheduler().config)
    edm.set_timesteps(10)
    assert edm.init_noise_sigma == pytest.approx(math.sqrt(1 + 80.0**2), rel=1e-9)  # s = 1, σ = σ_max
    ve = UnifiedScheduler(
        schedule={"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}, prediction_type="score", sampler="edm"
    )
    ve.set_timesteps(4)
    assert ve.init_noise_sigma == pytest.approx(math.sqrt(1 + 50.0**2), rel=1e-9)


def test_scale_model_input_before_set_timesteps():
    x = noise()
    assert torch.equal(UnifiedScheduler().scale_model_input(x, 500), x)  # ε-model input is x itself
    assert torch.equal(UnifiedScheduler().scale_model_input(x), x)
    ref = EDMEulerScheduler()
    uni = UnifiedScheduler.from_config(ref.config)
    sigma = 3.7
    c_noise = float(ref.precondition_noise(torch.tensor(sigma)))
    torch.testing.assert_close(
        uni.scale_model_input(x, c_noise), ref.precondition_inputs(x, sigma), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(
        uni.scale_model_input(x, torch.tensor([c_noise])), ref.precondition_inputs(x, sigma), rtol=1e-5, atol=1e-7
    )


# ---------------------------------------------------------------------------------------------- step output
def test_step_output_fields_and_tuple_order():
    uni = UnifiedScheduler(sampler="ddim")
    uni.set_timesteps(4)
    x = noise()
    t = uni.timesteps[0]
    out = uni.step(fake_model(x, t), t, x)
    assert isinstance(out, UnifiedSchedulerOutput) and set(out.keys()) == {"prev_sample", "pred_original_sample"}
    uni.set_timesteps(4)
    tup = uni.step(fake_model(x, t), t, x, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 2
    assert torch.equal(tup[0], out.prev_sample) and torch.equal(tup[1], out.pred_original_sample)
    # x̂0 for an ε-model: (x − σ ε̂)/s
    s, sigma = float(uni.noise_schedule.s(uni._eval_times[0])), float(uni.noise_schedule.sigma(uni._eval_times[0]))
    torch.testing.assert_close(out.pred_original_sample, (x - sigma * fake_model(x, t)) / s, rtol=1e-5, atol=1e-5)


def test_step_eta_from_pipeline_reaches_ddim():
    """DDIMPipeline passes eta to step: η = 0 is deterministic, η = 1 draws noise (a different result)."""
    uni = UnifiedScheduler(sampler="ddim")
    uni.set_timesteps(5)
    x0 = run(uni, noise(), seed=0, eta=0.0)
    uni.set_timesteps(5)
    x0b = run(uni, noise(), seed=1, eta=0.0)
    uni.set_timesteps(5)
    x1 = run(uni, noise(), seed=0, eta=1.0)
    assert torch.equal(x0, x0b) and not torch.allclose(x0, x1)


# ---------------------------------------------------------------------------------------------- forward process
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_add_noise_and_get_velocity_match_ddpm(beta_schedule):
    ref = DDPMScheduler(beta_schedule=beta_schedule)
    uni = UnifiedScheduler.from_config(ref.config)
    x0, eps = noise(1, (4, 2, 3, 3)), noise(2, (4, 2, 3, 3))
    idx = [0, 17, 500, 999]
    expected = ref.add_noise(x0, eps, torch.tensor(idx))
    for ts in (torch.tensor(idx), torch.tensor(idx, dtype=torch.int32), torch.tensor(idx, dtype=torch.float64), idx):
        torch.testing.assert_close(uni.add_noise(x0, eps, ts), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        uni.get_velocity(x0, eps, torch.tensor(idx)), ref.get_velocity(x0, eps, torch.tensor(idx)), rtol=1e-5, atol=1e-6
    )
    # one timestep for the whole batch (img2img's latent_timestep is repeated, a scalar works too)
    torch.testing.assert_close(
        uni.add_noise(x0, eps, torch.tensor([500])),
        ref.add_noise(x0, eps, torch.tensor([500] * 4)),
        rtol=1e-5,
        atol=1e-6,
    )
    half = uni.add_noise(x0.half(), eps.half(), torch.tensor(idx))
    assert half.dtype == torch.float16


# ---------------------------------------------------------------------------------------------- order, indices, len
def test_order_and_heun_timesteps():
    heun = UnifiedScheduler(sampler="edm")
    heun.set_timesteps(6)
    assert heun.order == 2 and len(heun.timesteps) == 2 * 6 - 1
    # Heun lists each intermediate time twice, like diffusers' Heun
    assert torch.equal(heun.timesteps[1::2], heun.timesteps[2::2])
    euler = UnifiedScheduler(sampler="edm", sampler_options={"solver": "euler"})
    euler.set_timesteps(6)
    assert euler.order == 1 and len(euler.timesteps) == 6
    assert UnifiedScheduler().order == 1


def test_begin_index_and_step_index():
    """img2img: set_begin_index(k) then start at timesteps[k]; equals starting the loop there by timestep lookup."""
    uni = UnifiedScheduler(sampler="ddim")
    uni.set_timesteps(10)
    assert uni.step_index is None and uni.begin_index is None
    x = noise()
    start = 4
    uni.set_begin_index(start)
    assert uni.begin_index == start
    gen = torch.Generator().manual_seed(0)
    y = x.clone()
    for i, t in enumerate(uni.timesteps[start:]):
        y = uni.step(fake_model(y, t), t, y, generator=gen).prev_sample
        assert uni.step_index == start + i + 1
    uni.set_timesteps(10)
    assert uni.begin_index is None and uni.step_index is None
    z = x.clone()
    for t in uni.timesteps[start:]:
        z = uni.step(fake_model(z, t), t, z).prev_sample
    assert torch.equal(y, z)


def test_len_is_num_train_timesteps():
    assert len(UnifiedScheduler()) == 1000
    assert len(UnifiedScheduler(num_train_timesteps=250)) == 250


# ---------------------------------------------------------------------------------------------- persistence
def test_save_and_reload_keeps_sampler_and_options(tmp_path):
    uni = UnifiedScheduler.from_config(
        DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").config,
        sampler="edm",
        sampler_options={"s_churn": 2.5, "s_noise": 1.01},
        time_grid="uniform_lambda",
    )
    uni.save_pretrained(tmp_path / "scheduler")
    back = UnifiedScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert back.config.sampler == "edm" and back.sampler_options == {"s_churn": 2.5, "s_noise": 1.01}
    assert back.config.time_grid == "uniform_lambda" and back.config.prediction_type == "v_prediction"
    assert back.config.beta_schedule == "squaredcos_cap_v2"
    uni.set_timesteps(5)
    back.set_timesteps(5)
    assert torch.equal(uni.timesteps, back.timesteps)
    z = noise()
    assert torch.equal(run(uni, z.clone(), seed=3), run(back, z.clone(), seed=3))


def test_compatibles_and_convert_back():
    assert sorted(UnifiedScheduler._compatibles) == sorted(COMPATIBLE_SCHEDULERS) and len(COMPATIBLE_SCHEDULERS) == 11
    assert {cls.__name__ for cls in UnifiedScheduler().compatibles} == set(COMPATIBLE_SCHEDULERS)
    ref = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="trailing",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    uni = UnifiedScheduler.from_config(ref.config, sampler="edm")
    with DiffusersWarnings() as caught:
        back = DDIMScheduler.from_config(uni.config)
    for key in (
        "beta_schedule",
        "beta_start",
        "beta_end",
        "timestep_spacing",
        "prediction_type",
        "clip_sample",
        "set_alpha_to_one",
    ):
        assert back.config[key] == ref.config[key], key
    # the only keys diffusers complains about are unisde's own
    for message in caught.records:
        assert "were passed to DDIMScheduler" in message
        listed = message[message.index("{") : message.index("}") + 1]
        assert all(f"'{k}'" in listed for k in ("sampler",)) and not any(
            f"'{k}'" in listed for k in ("beta_schedule", "timestep_spacing", "clip_sample", "num_train_timesteps")
        )
    back.set_timesteps(10)
    ref.set_timesteps(10)
    assert torch.equal(back.timesteps, ref.timesteps)


def test_choosing_another_sampler_says_so_in_one_log_line(caplog):
    """from_config(cfg, sampler=X) takes only the schedule, parameterisation and grid from the source, and says so
    in one INFO line of the "unisde" logger naming the source class and the sampler; converting it as is says
    nothing."""
    ref = diffusers.KDPM2DiscreteScheduler(use_karras_sigmas=True)  # alive: its config is traced to its class
    cfg = ref.config
    with caplog.at_level(logging.INFO, logger="unisde"):
        UnifiedScheduler.from_config(cfg)
        assert not [r for r in caplog.records if r.name == "unisde"]
        UnifiedScheduler.from_config(cfg, sampler="ddim")
    lines = [r.getMessage() for r in caplog.records if r.name == "unisde"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "taken from KDPM2DiscreteScheduler" in lines[0] and "sampler 'ddim' replaces its algorithm" in lines[0]


@pytest.mark.parametrize("name", COMPATIBLE_SCHEDULERS)
def test_from_config_of_every_compatible_scheduler_is_silent(name):
    cls = getattr(diffusers, name)
    ref = cls()
    with DiffusersWarnings() as caught:
        uni = UnifiedScheduler.from_config(ref.config)
    assert not caught.records, caught.records
    # and converting back yields the class's own keys with the same values
    with DiffusersWarnings():
        back = cls.from_config(uni.config)
    for key, value in ref.config.items():
        if not key.startswith("_"):
            assert back.config[key] == value, (name, key)
    # the converted scheduler samples (its default sampler for that algorithm)
    if uni.config.sampler in unisde.list_samplers():
        uni.set_timesteps(4)
        x = run(uni, noise() * uni.init_noise_sigma)
        assert torch.isfinite(x).all()


# ---------------------------------------------------------------------------------------------- grids × samplers
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sampler", unisde.list_samplers())
@pytest.mark.parametrize("schedule", ["ddpm-table", "edm"])
def test_every_grid_works_for_every_sampler(sampler, grid, schedule):
    """Plumbing: every registered sampler accepts every time grid on a discrete VP table (ε-model) and on the
    EDM schedule (EDM-preconditioned model), feeds the model timesteps inside the model's own range, and ends
    with a finite sample of the right shape. (Accuracy per sampler is tested with its sampler; with 4 steps the
    stochastic ones — Euler–Maruyama, Langevin — overshoot by design, so no accuracy bound is asserted here.)"""
    if schedule == "edm":
        uni = UnifiedScheduler.from_config(
            EDMEulerScheduler().config, sampler=sampler, time_grid=grid, sampler_options={}
        )
        lo, hi = 0.25 * math.log(0.002) - 1e-6, 0.25 * math.log(80.0) + 1e-6
    else:
        uni = UnifiedScheduler(sampler=sampler, time_grid=grid)
        lo, hi = 0, 999
    uni.set_timesteps(4)
    times = uni._eval_times
    # steps start at non-increasing times (inversion samplers walk the grid upwards); inner evaluations may sit
    # anywhere inside their step (dpm_2_ancestral's midpoint lies below the next step's start)
    starts = times[sorted(getattr(uni._sampler, "step_starts", None) or range(len(times)))]
    assert bool(
        (starts[1:] >= starts[:-1]).all()
        if getattr(uni._sampler, "encodes", False)
        else (starts[1:] <= starts[:-1]).all()
    )
    assert len(uni.timesteps) >= 4
    assert float(uni.timesteps.min()) >= lo and float(uni.timesteps.max()) <= hi
    model = Gaussian(torch.full((32,), 0.3), 0.25, event_shape=SHAPE[1:]).as_model(
        uni.config.prediction_type, uni.noise_schedule
    )
    gen = torch.Generator().manual_seed(5)
    x = noise() * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    assert x.shape == SHAPE and torch.isfinite(x).all()


@pytest.mark.parametrize(
    "name, grid",
    [
        ("EulerDiscreteScheduler", "karras"),
        ("EulerAncestralDiscreteScheduler", "karras"),
        ("LMSDiscreteScheduler", "karras"),
        ("HeunDiscreteScheduler", "linspace_fractional"),
        ("PNDMScheduler", "karras"),
    ],
)
def test_asking_for_edm_uses_its_karras_grid_unless_the_config_is_heun(name, grid):
    """`from_config(cfg, sampler="edm")` (the README's one-liner) runs Algorithm 2 on its ρ-grid; a Heun config
    already is that algorithm on its own grid, which it keeps; with the config's own sampler the grid stays."""
    source = getattr(diffusers, name)()  # kept alive: a live config is traced to its class (LMS and KDPM2 share keys)
    cfg = source.config
    assert UnifiedScheduler.from_config(cfg, sampler="edm")._grid_kind() == grid
    own = UnifiedScheduler.from_config(cfg)
    if name != "PNDMScheduler":
        assert own._grid_kind() == "linspace_fractional"
