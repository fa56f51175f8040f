r"""Whole-pipeline parity: ``pipe.scheduler = UnifiedScheduler.from_config(pipe.scheduler.config)`` gives the images
the pipeline gave with its native scheduler, same seed.

Every converted class that Stable Diffusion users ship or swap in runs through StableDiffusionPipeline (txt2img),
StableDiffusionImg2ImgPipeline (strength 0.3 and 0.75), StableDiffusionInpaintPipeline with the 9-channel
inpainting UNet and with a 4-channel UNet (the path that blends the known region with ``scheduler.add_noise`` at
every step), StableDiffusionXLPipeline and, for LCMScheduler, LatentConsistencyModelPipeline. Components are tiny
and random (``tests/tiny_pipelines.py``; prompt embeddings passed directly), float32, 8×8 latents, 4 steps.

Each native scheduler is made as users make it, ``<Class>.from_config(sd_config)`` from Stable Diffusion 1.5's
scheduler config (PNDM, leading spacing, ``steps_offset=1``, ``set_alpha_to_one=False``), which also carries the
keys of that earlier class into the native config, as in a real pipeline. Spacing and Karras variants run through
the three pipelines where the grid matters most (txt2img: the starting noise; img2img: the entry mid-grid and
``add_noise`` there; 4-channel inpainting: ``add_noise`` at every step).

Compared: the final latents (``output_type="latent"``, which the VAE decodes into the images), max |Δ| ≤ 1e-5 ·
scale with scale = max |latents| of the native run. The twin's intermediate latents are not compared: diffusers'
Euler-type classes keep x̃ = x/s, the twin x itself (same final sample at σ = 0).

Conversion: ``UnifiedScheduler.from_config(pipe.scheduler.config)`` of a live config finds the config's owner by a
heap scan (~0.25 s); it runs once per scheduler case, and the other pipelines of that case rebuild the twin from
its config (``UnifiedScheduler.from_config(twin.config)``, no conversion).
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers import (
    LatentConsistencyModelPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from tiny_pipelines import (
    embedded_components,
    image,
    mask,
    prompt_embeds,
    sd_unet,
    sdxl_components,
    sdxl_embeds,
)

from unisde.diffusers.scheduler import UnifiedScheduler

# diffusers' schedulers pass torch tensors through NumPy 2 (tens of thousands of deprecation warnings per run);
# torchsde warns when a float32 σ̃ query rounds one ulp past its interval's end
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning"),
]

SIZE = 8
STEPS = 4  # img2img: strength 0.3 enters at step 3, 0.75 at step 1 (PNDM: at its repeated timestep t_1)
REL_TOL = 1e-5

# Stable Diffusion 1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5, diffusers ≥ 0.19), written here
SD_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

# (id, diffusers class, config overrides): the classes SD users ship or swap in, on SD's own config
CLASSES = [
    ("DDIM", "DDIMScheduler", {}),
    ("DDPM", "DDPMScheduler", {}),
    ("PNDM", "PNDMScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("EulerAncestral", "EulerAncestralDiscreteScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
    ("KDPM2", "KDPM2DiscreteScheduler", {}),
    ("KDPM2Ancestral", "KDPM2AncestralDiscreteScheduler", {}),
    ("DPM++2M", "DPMSolverMultistepScheduler", {}),
    ("DPM++2M-Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("SDE-DPM++2M", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSinglestep", "DPMSolverSinglestepScheduler", {}),
    ("UniPC", "UniPCMultistepScheduler", {}),
    ("DEIS", "DEISMultistepScheduler", {}),
]
# spacing and respacing variants (the starting-noise scale, fractional timesteps, rounded Karras timesteps)
VARIANTS = [
    ("DDIM-trailing", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("PNDM-trailing", "PNDMScheduler", {"timestep_spacing": "trailing"}),
    ("Euler-trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("Euler-linspace", "EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("Euler-Karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerAncestral-trailing", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("Heun-Karras", "HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    ("LMS-linspace", "LMSDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("LMS-Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("KDPM2-linspace", "KDPM2DiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("KDPM2-Karras", "KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    ("KDPM2Ancestral-Karras", "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    ("DPM++2M-linspace", "DPMSolverMultistepScheduler", {"timestep_spacing": "linspace"}),
    ("DPMSinglestep-Karras", "DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    ("UniPC-trailing", "UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("UniPC-Karras", "UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    # the model fed diffusers' truncated float32-table index (998 at SD's σ̃_max, not the exact index's 999)
    ("DPM++2M-exponential", "DPMSolverMultistepScheduler", {"use_exponential_sigmas": True}),
    ("UniPC-beta", "UniPCMultistepScheduler", {"use_beta_sigmas": True}),
    # its Brownian path seeded by the config (with None diffusers draws the seed from the global RNG)
    ("DPMSolverSDE", "DPMSolverSDEScheduler", {"noise_sampler_seed": 3}),
]
PIPELINES = ["txt2img", "img2img-0.3", "img2img-0.75", "inpaint-9ch", "inpaint-4ch", "sdxl"]
VARIANT_PIPELINES = ["txt2img", "img2img-0.75", "inpaint-4ch"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions gain nothing from intra-op threads and, on a shared machine, lose a lot to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipelines():
    """name → (pipeline factory taking a scheduler, call kwargs); components built once."""
    unet, unet9 = sd_unet(SIZE), sd_unet(SIZE, in_channels=9)
    base = embedded_components(unet, SIZE)
    inpaint9 = embedded_components(unet9, SIZE)
    xl = sdxl_components(SIZE)
    common = dict(num_inference_steps=STEPS, guidance_scale=3.0, output_type="latent", **prompt_embeds())
    picture, region = image(SIZE), mask(SIZE)
    inpaint = dict(image=picture, mask_image=region, height=SIZE, width=SIZE, **common)
    return {
        "txt2img": (lambda s: StableDiffusionPipeline(**base, scheduler=s), dict(height=SIZE, width=SIZE, **common)),
        "img2img-0.3": (
            lambda s: StableDiffusionImg2ImgPipeline(**base, scheduler=s),
            dict(image=picture, strength=0.3, **common),
        ),
        "img2img-0.75": (
            lambda s: StableDiffusionImg2ImgPipeline(**base, scheduler=s),
            dict(image=picture, strength=0.75, **common),
        ),
        # strength 1 (the default): pure noise · init_noise_sigma, the UNet sees mask and masked-image latents
        "inpaint-9ch": (lambda s: StableDiffusionInpaintPipeline(**inpaint9, scheduler=s), inpaint),
        # strength 0.75: add_noise for the start, then at every step for the known region
        "inpaint-4ch": (
            lambda s: StableDiffusionInpaintPipeline(**base, scheduler=s),
            dict(inpaint, strength=0.75),
        ),
        "sdxl": (
            lambda s: StableDiffusionXLPipeline(**xl, scheduler=s),
            dict(
                num_inference_steps=STEPS,
                guidance_scale=3.0,
                output_type="latent",
                height=SIZE,
                width=SIZE,
                **sdxl_embeds(),
            ),
        ),
    }


_CONVERTED: dict[str, dict] = {}


def convert(case_id: str, live_config) -> UnifiedScheduler:
    """``UnifiedScheduler.from_config(pipe.scheduler.config)``, run once per case (see the module docstring)."""
    if case_id not in _CONVERTED:
        _CONVERTED[case_id] = dict(UnifiedScheduler.from_config(live_config).config)
    return UnifiedScheduler.from_config(_CONVERTED[case_id])


def native_vs_twin(pipelines, pipeline: str, case) -> tuple[float, float]:
    """(max |Δ| / scale, scale) between the pipeline's latents with the native scheduler and with its twin."""
    case_id, class_name, overrides = case
    make, kwargs = pipelines[pipeline]
    pipe = make(getattr(diffusers, class_name).from_config({**SD_CONFIG, **overrides}))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.scheduler = convert(case_id, pipe.scheduler.config)
    uni = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.isfinite(ref).all() and ref.shape == uni.shape
    scale = float(ref.abs().max())
    return float((uni - ref).abs().max()) / scale, scale


def check(pipelines, pipeline, case):
    err, scale = native_vs_twin(pipelines, pipeline, case)
    print(f"{case[0]} × {pipeline}: max|Δ|/scale = {err:.2e} (scale {scale:.3g})")
    assert err <= REL_TOL, f"{case[0]} in {pipeline}: max|Δ| = {err:.3g} × scale {scale:.3g} > {REL_TOL:g} × scale"


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("case", CLASSES, ids=[c[0] for c in CLASSES])
def test_converted_scheduler_gives_the_native_latents(pipelines, case, pipeline):
    check(pipelines, pipeline, case)


@pytest.mark.parametrize("pipeline", VARIANT_PIPELINES)
@pytest.mark.parametrize("case", VARIANTS, ids=[c[0] for c in VARIANTS])
def test_spacing_and_karras_variants(pipelines, case, pipeline):
    check(pipelines, pipeline, case)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_latent_consistency_pipeline(steps):
    """LatentConsistencyModelPipeline with LCMScheduler (from SD's config, LCM's defaults: 50 original steps,
    timestep_scaling 10): the guidance-embedding UNet, the noise LCM's step draws from the pipeline's generator,
    the denoised output after its boundary condition."""
    pipe = LatentConsistencyModelPipeline(
        **embedded_components(sd_unet(SIZE, time_cond_proj_dim=8), SIZE),
        scheduler=diffusers.LCMScheduler.from_config(SD_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        num_inference_steps=steps,
        guidance_scale=6.0,
        output_type="latent",
        height=SIZE,
        width=SIZE,
        prompt_embeds=prompt_embeds(negative=False)["prompt_embeds"],
    )
    ref = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.scheduler = convert("LCM", pipe.scheduler.config)
    uni = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    scale = float(ref.abs().max())
    err = float((uni - ref).abs().max()) / scale
    print(f"LCM × {steps} steps: max|Δ|/scale = {err:.2e} (scale {scale:.3g})")
    assert err <= REL_TOL


def test_keys_of_an_earlier_class_do_not_reach_the_twin():
    """EulerAncestral made from SD's PNDM config carries PNDM's set_alpha_to_one=False, which EulerAncestral ignores
    (its grid ends at σ = 0). Read as the twin's own key it moved the twin's last step to the table's first level:
    the twin ignores it too, and its grid ends where the native one does."""
    native = diffusers.EulerAncestralDiscreteScheduler.from_config(SD_CONFIG)
    assert native.config.set_alpha_to_one is False  # diffusers keeps the earlier class's key
    twin = UnifiedScheduler.from_config(native)
    native.set_timesteps(STEPS)
    twin.set_timesteps(STEPS)
    assert torch.equal(twin.timesteps, native.timesteps.to(twin.timesteps.dtype))
    assert float(twin.sigmas[-1]) == 0.0 == float(native.sigmas[-1])
    assert torch.allclose(twin.sigmas, native.sigmas, rtol=1e-5)
