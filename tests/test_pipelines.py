"""UnifiedScheduler inside real diffusers pipelines, with tiny random components built here (no downloads).

Every registered sampler (``unisde.list_samplers()``, so plugins are included) runs end to end through
DDPMPipeline, DDIMPipeline, StableDiffusionPipeline (text-to-image) and StableDiffusionImg2ImgPipeline and
gives finite images of the right shape; ScoreSdeVePipeline runs with ``pc`` (its own algorithm, at parity with
ScoreSdeVeScheduler — tests/test_scheduler_parity.py) and with every sampler whose evaluations group by time.
A pipeline saved with a UnifiedScheduler reloads with ``DiffusionPipeline.from_pretrained`` (its
model_index.json names ``["unisde", "UnifiedScheduler"]``) with the same sampler and options.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DModel,
)
from diffusers.utils import logging as diffusers_logging
from tiny_pipelines import sd_components as tiny_sd_components

import unisde
from unisde.diffusers.scheduler import UnifiedScheduler

SAMPLERS = unisde.list_samplers()
SIZE = 8
STEPS = 3

diffusers_logging.disable_progress_bar()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions gain nothing from intra-op threads and, on a shared machine, lose a lot to them
    (measured: 12 ms vs 3 s per tiny UNet call under load); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(channels=3) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=SIZE,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def options_for(sampler: str) -> dict:
    """Keep multi-evaluation samplers cheap: annealed Langevin with few steps per level."""
    cls = unisde.get_sampler(sampler)
    opts = {}
    for key in ("n_steps_each",):
        if key in cls.options:
            opts[key] = 2
    return opts


@pytest.fixture(scope="module")
def sd_components(tmp_path_factory):
    """Tiny Stable Diffusion (``tests/tiny_pipelines.py``): UNet2DConditionModel, AutoencoderKL (scale factor 1), CLIP
    text encoder and a CLIP tokenizer built from a vocabulary written here (unknown words map to <|endoftext|>)."""
    return tiny_sd_components(SIZE, tmp_path_factory.mktemp("tokenizer"))


def sd_scheduler(sampler: str) -> UnifiedScheduler:
    ref = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return UnifiedScheduler.from_config(ref.config, sampler=sampler, sampler_options=options_for(sampler))


def check_images(images, batch, size=SIZE):
    assert isinstance(images, np.ndarray) and images.shape == (batch, size, size, 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0


# ---------------------------------------------------------------------------------------------- DDPM / DDIM
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_ddpm_pipeline_every_sampler(sampler):
    """DDPMPipeline ignores init_noise_sigma and scale_model_input: works because samples live in model space."""
    pipe = DDPMPipeline(
        unet=tiny_unet(), scheduler=UnifiedScheduler(sampler=sampler, sampler_options=options_for(sampler))
    )
    images = pipe(
        batch_size=2, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    check_images(images, 2)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_ddim_pipeline_every_sampler(sampler):
    """DDIMPipeline's constructor converts any scheduler to DDIM; the UnifiedScheduler is assigned afterwards.
    The pipeline passes eta (and use_clipped_model_output) to step."""
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler())
    pipe.scheduler = UnifiedScheduler.from_config(
        pipe.scheduler.config, sampler=sampler, sampler_options=options_for(sampler)
    )
    images = pipe(
        batch_size=1, num_inference_steps=STEPS, eta=0.5, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    check_images(images, 1)


def test_ddpm_pipeline_matches_ddpm_scheduler():
    """The same pipeline, the same seed: UnifiedScheduler(ddpm) and DDPMScheduler give the same images."""
    unet = tiny_unet()
    ref = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())(
        batch_size=1, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(3)
    ).images
    uni = DDPMPipeline(unet=unet, scheduler=UnifiedScheduler.from_config(DDPMScheduler().config))(
        batch_size=1, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(3)
    ).images
    assert np.abs(ref - uni).max() <= 1e-5


# ---------------------------------------------------------------------------------------------- Stable Diffusion
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_stable_diffusion_text_to_image(sd_components, sampler):
    pipe = StableDiffusionPipeline(**sd_components, scheduler=sd_scheduler(sampler))
    out = pipe(
        "a photo of a cat",
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        height=SIZE,
        width=SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    check_images(out.images, 1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_stable_diffusion_img2img(sd_components, sampler):
    """img2img: strength picks timesteps[t_start·order:], set_begin_index, add_noise at the first of them."""
    pipe = StableDiffusionImg2ImgPipeline(**sd_components, scheduler=sd_scheduler(sampler))
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = pipe(
        "a cat",
        image=image,
        strength=0.75,
        num_inference_steps=4,
        guidance_scale=2.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    check_images(out.images, 1)


def test_stable_diffusion_matches_ddim_scheduler(sd_components):
    """Same pipeline and seed: UnifiedScheduler converted from DDIMScheduler gives DDIM's images."""
    ref_sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=3.0, height=SIZE, width=SIZE, output_type="np")
    ref = StableDiffusionPipeline(**sd_components, scheduler=ref_sched)(
        "a cat", generator=torch.Generator().manual_seed(0), **kwargs
    ).images
    uni = StableDiffusionPipeline(**sd_components, scheduler=UnifiedScheduler.from_config(ref_sched.config))(
        "a cat", generator=torch.Generator().manual_seed(0), **kwargs
    ).images
    assert np.abs(ref - uni).max() <= 1e-5


# ---------------------------------------------------------------------------------------------- ScoreSdeVe
def score_sde_scheduler(sampler=None) -> UnifiedScheduler:
    ref = ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, snr=0.16)
    extra = {} if sampler is None else {"sampler": sampler, "sampler_options": options_for(sampler)}
    return UnifiedScheduler.from_config(ref.config, **extra)


def test_score_sde_ve_pipeline_pc_matches_diffusers():
    """ScoreSdeVePipeline with the converted scheduler (sampler `pc`) reproduces ScoreSdeVeScheduler's images."""
    if "pc" not in SAMPLERS:
        pytest.skip(f"sampler 'pc' is not registered (unisde.list_samplers() = {SAMPLERS})")
    unet = tiny_unet()
    ref = ScoreSdeVePipeline(unet=unet, scheduler=ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, snr=0.16))(
        batch_size=1, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    sched = score_sde_scheduler()
    assert sched.config.sampler == "pc"
    uni = ScoreSdeVePipeline(unet=unet, scheduler=sched)(
        batch_size=1, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    check_images(uni, 1)
    # starting noise: diffusers scales z by σ_max, unisde by √(1 + σ_max²) (relative 2e-4 at σ_max = 50)
    assert np.abs(ref - uni).max() <= 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_score_sde_ve_pipeline_every_sampler(sampler):
    sched = score_sde_scheduler(sampler)
    sched.set_timesteps(3)
    runs = []  # the pipeline's steps: runs of equal consecutive evaluation times (heunpp2 revisits t_{i+1} later)
    for k, t in enumerate(sched._t_list):
        if k and t == sched._t_list[k - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    if max(runs) > sched.config.correct_steps + 1:
        with pytest.raises(ValueError, match="correct_steps"):
            sched.set_sigmas(3)
        return
    images = ScoreSdeVePipeline(unet=tiny_unet(), scheduler=sched)(
        batch_size=1, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    check_images(images, 1)


# ---------------------------------------------------------------------------------------------- save / reload
def test_pipeline_save_and_reload_with_unified_scheduler(tmp_path):
    sched = UnifiedScheduler.from_config(
        DDPMScheduler(beta_schedule="squaredcos_cap_v2").config,
        sampler="edm",
        sampler_options={"s_churn": 1.5, "solver": "euler"},
        time_grid="uniform_lambda",
    )
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=sched)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    # diffusers writes the defining module for a class from outside its libraries, and resolves it through
    # sys.modules only; `import unisde` registers unisde.scheduler there (lazily).
    assert index["scheduler"] == ["unisde.scheduler", "UnifiedScheduler"]
    back = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(back.scheduler) is UnifiedScheduler
    assert back.scheduler.config.sampler == "edm"
    assert back.scheduler.sampler_options == {"s_churn": 1.5, "solver": "euler"}
    assert (
        back.scheduler.config.time_grid == "uniform_lambda"
        and back.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    )
    a = pipe(
        batch_size=1, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    b = back(
        batch_size=1, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert np.abs(a - b).max() <= 1e-5  # same algorithm; reloaded weights may round differently at 1 ulp


def test_pipeline_reloads_in_a_fresh_process_after_import_unisde(tmp_path):
    """The user's situation: a new interpreter, `import unisde`, DiffusionPipeline.from_pretrained(path)."""
    sched = UnifiedScheduler(sampler="ddim", sampler_options={"eta": 0.3}, time_grid="trailing")
    DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(tmp_path)
    code = (
        "import json, sys, unisde\n"
        "from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r})\n"
        "s = pipe.scheduler\n"
        "print(json.dumps([type(s).__name__, s.config.sampler, s.sampler_options, s.config.time_grid]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["UnifiedScheduler", "ddim", {"eta": 0.3}, "trailing"]
