"""A third-party plugin adds a sampler (one loop, under 40 lines) and a converter for a made-up diffusers-style
scheduler class; both work through UnifiedScheduler.from_config, a real DDPMPipeline and unisde.sample."""

from __future__ import annotations

import math
import types

import pytest
import torch

import unisde
from unisde import plugins
from unisde.analytic import Gaussian
from unisde.core.kernels import lincomb
from unisde.diffusers.converters import BetaTableConverter
from unisde.samplers import Option, Sampler
from unisde.scheduler import UnifiedScheduler

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- the plugin
class MidpointSampler(Sampler):
    """Explicit midpoint (RK2) on the PF-ODE dx̃/dσ̃ = (x̃ − D)/σ̃, the half step at the geometric mean of σ̃."""

    name = "toy_midpoint"
    default_grid = "karras"
    order = 2
    options = {"final_euler": Option(True, (bool,), "an Euler step into σ̃ = 0")}

    def prepare(self, grid):
        s, sigma = self.grid_coefficients(grid)
        ve = sigma / s
        mid = (ve[:-1] * ve[1:]).clamp(min=0).sqrt()
        t_mid = self.schedule.t_from_sigma(mid.clamp(min=1e-12))
        self.s, self.ve, self.s_mid, self.ve_mid = (
            self.floats(v) for v in (s, ve, self.scales_and_sigmas(t_mid)[0], mid)
        )
        self.step_starts, times = {}, []
        for i in range(len(self.ve) - 1):
            self.step_starts[len(times)] = i
            times += [float(grid[i])] + ([float(t_mid[i])] if self.ve[i + 1] > 0 else [])
        return torch.tensor(times, dtype=F64)

    def loop(self, x, start=0):
        for i in range(self.entry_step(start), len(self.ve) - 1):
            x, denoised = yield x
            x_ve, h = x / self.s[i], self.ve[i + 1] - self.ve[i]
            if self.ve[i + 1] == 0:  # Euler into σ̃ = 0 lands on D
                x = denoised * self.s[i + 1]
                continue
            x_mid = lincomb(
                x_ve,
                1 + (self.ve_mid[i] - self.ve[i]) / self.ve[i],
                denoised,
                -(self.ve_mid[i] - self.ve[i]) / self.ve[i],
            )
            x_mid, d_mid = yield x_mid * self.s_mid[i]
            x = lincomb(x_ve, 1.0, (x_mid / self.s_mid[i] - d_mid) / self.ve_mid[i], h) * self.s[i + 1]
        return x


class ToyDiffusionConverter(BetaTableConverter):
    """A made-up diffusers-style class (not in diffusers): a β table whose algorithm is the midpoint sampler."""

    name = "ToyDiffusionScheduler"
    sampler = "toy_midpoint"
    source_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "timestep_spacing": "trailing",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_euler": True,
    }
    accepts = {**BetaTableConverter.accepts, "final_euler": (True,)}

    def explicit_grid(self, cfg):
        return False


@unisde.hookimpl
def unisde_register_samplers(register):
    register(MidpointSampler)


@unisde.hookimpl
def unisde_register_converters(register):
    register(ToyDiffusionConverter)


@pytest.fixture
def toy_plugin():
    module = types.SimpleNamespace(
        unisde_register_samplers=unisde_register_samplers, unisde_register_converters=unisde_register_converters
    )
    name = plugins.register_plugin(module, name="toy-third-party", distribution="toy-dist")
    yield
    plugins.unregister_plugin(name)


def test_the_sampler_is_one_short_loop():
    import inspect

    source = inspect.getsource(MidpointSampler)
    assert len(source.strip().splitlines()) <= 40
    assert inspect.isgeneratorfunction(MidpointSampler.loop)


def test_converter_and_sampler_through_from_config(toy_plugin):
    cfg = {
        "_class_name": "ToyDiffusionScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "v_prediction",
    }
    uni = UnifiedScheduler.from_config(cfg)
    assert uni.config.sampler == "toy_midpoint" and uni.config.prediction_type == "v_prediction"
    assert uni.config.time_grid == "trailing" and uni.order == 2
    with pytest.raises(ValueError, match="ToyDiffusionScheduler flag final_euler=False"):
        UnifiedScheduler.from_config({**cfg, "final_euler": False})
    assert "toy_midpoint" in unisde.list_samplers() and "ToyDiffusionScheduler" in plugins.list_converters()


def test_the_sampler_is_second_order_on_an_exact_gaussian(toy_plugin):
    schedule = unisde.NoiseSchedule.from_name("vp-linear")
    data = Gaussian(torch.zeros(3, dtype=F64), 0.25)
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def solve(n):
        return unisde.sample(
            None,
            noise,
            denoiser=lambda x, t: data.denoise(x, t, schedule),
            schedule=schedule,
            sampler="toy_midpoint",
            num_inference_steps=n,
            time_grid="uniform_lambda",
        )

    reference = solve(400)
    errors = [float((solve(n) - reference).abs().max()) for n in (10, 20)]
    order = math.log2(errors[0] / errors[1])
    assert order > 1.6, errors


def test_it_runs_in_a_ddpm_pipeline(toy_plugin):
    from diffusers import DDPMPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    sched = UnifiedScheduler.from_config({"_class_name": "ToyDiffusionScheduler"})
    images = DDPMPipeline(unet=unet, scheduler=sched)(
        batch_size=2, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (2, 8, 8, 1) and (images >= 0).all() and (images <= 1).all()
