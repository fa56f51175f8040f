"""Flow matching end to end, through diffusers' own pipelines with tiny random components (prompt embeddings passed
directly, so no tokenizer or text encoder is built; no VAE where ``output_type="latent"`` needs none):
StableDiffusion3 (+ img2img), Flux (dynamic shifting: sigmas + mu; + img2img), Wan (its UniPC flow config, a
DPM-Solver flow config and FlowMatch Euler), LTX-Video (LTXPipeline: dynamic shifting + shift_terminal; image to
video; LTXConditionPipeline: timesteps alone and per-token timesteps; LTXI2VLongMultiPromptPipeline: ComfyUI-style
sigmas with their terminal 0 for LTXEulerAncestralRF and FlowMatch Euler) and CogView4 (linear time shift, timesteps
passed with sigmas). The default conversion ``UnifiedScheduler.from_config(pipe.scheduler.config)`` gives the native
scheduler's output, and every registered sampler runs in the SD3, Flux, Wan, LTX and CogView4 pipelines with finite
output."""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLLTXVideo,
    CogView4Pipeline,
    CogView4Transformer2DModel,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    LTXConditionPipeline,
    LTXI2VLongMultiPromptPipeline,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    WanPipeline,
    WanTransformer3DModel,
)

import unisde
from unisde.scheduler import UnifiedScheduler

DIM = 16  # text embedding width of every tiny model here
WAN_UNIPC = dict(
    beta_end=0.02,
    beta_schedule="linear",
    beta_start=0.0001,
    disable_corrector=[],
    dynamic_thresholding_ratio=0.995,
    final_sigmas_type="zero",
    flow_shift=3.0,
    lower_order_final=True,
    num_train_timesteps=1000,
    predict_x0=True,
    prediction_type="flow_prediction",
    rescale_betas_zero_snr=False,
    sample_max_value=1.0,
    solver_order=2,
    solver_p=None,
    solver_type="bh2",
    steps_offset=0,
    thresholding=False,
    timestep_spacing="linspace",
    trained_betas=None,
    use_beta_sigmas=False,
    use_exponential_sigmas=False,
    use_flow_sigmas=True,
    use_karras_sigmas=False,
)
FLUX = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0, use_dynamic_shifting=True
)  # FLUX.1-dev's scheduler config
LTX = dict(
    base_image_seq_len=1024,
    base_shift=0.95,
    max_image_seq_len=4096,
    max_shift=2.05,
    shift=1.0,
    shift_terminal=0.1,
    use_dynamic_shifting=True,
)  # LTX-Video 0.9.1's
COGVIEW4 = dict(
    base_image_seq_len=256,
    base_shift=0.25,
    max_shift=0.75,
    shift_terminal=None,
    use_dynamic_shifting=True,
    time_shift_type="linear",
)  # CogView4-6B's


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other test processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def embeds():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 5, DIM, generator=g), torch.randn(1, DIM, generator=g), torch.rand(1, 3, 8, 8, generator=g)


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(4,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=1,
        sample_size=8,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


NO_TEXT_SD3 = dict(
    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None
)


@pytest.fixture(scope="module")
def sd3():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=DIM,
        joint_attention_dim=DIM,
        pooled_projection_dim=DIM,
        out_channels=4,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=tiny_vae(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        **NO_TEXT_SD3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=DIM,
        pooled_projection_dim=DIM,
        axes_dims_rope=[2, 2, 4],
    ).eval()
    pipe = FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**FLUX),
        vae=tiny_vae(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def output(pipe, seed=1, **kwargs):
    """One pipeline call; the global RNG is seeded too, since some pipelines (SD3) pass no generator to step()."""
    torch.manual_seed(7)
    out = pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
    return torch.as_tensor(out.images if hasattr(out, "images") else out.frames)


def assert_converted_parity(pipe, **kwargs):
    """The native scheduler's output, then the default conversion's: equal to 1e-5 of the output's scale."""
    native = pipe.scheduler
    try:
        expected = output(pipe, **kwargs)
        pipe.scheduler = UnifiedScheduler.from_config(native.config)
        got = output(pipe, **kwargs)
    finally:
        converted, pipe.scheduler = pipe.scheduler, native
    assert got.shape == expected.shape and torch.isfinite(expected).all()
    scale = expected.abs().max()
    error = float((got - expected).abs().max() / scale)
    assert error <= 1e-5, (type(native).__name__, error)
    return converted


# ---------------------------------------------------------------------------------------------- SD3
SD3_SCHEDULERS = [
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "ddim"),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "use_dynamic_shifting": True}, "ddim"),  # SD3.5: mu from size
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "stochastic_sampling": True}, "lcm"),
    ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, "edm"),
    ("FlowMatchLCMScheduler", {"shift": 3.0}, "lcm"),
    ("LTXEulerAncestralRFScheduler", {"eta": 0.7}, "ddim"),
]


@pytest.mark.parametrize(
    "name, config, sampler", SD3_SCHEDULERS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(SD3_SCHEDULERS)]
)
def test_sd3_pipeline_parity(sd3, embeds, name, config, sampler):
    emb, pooled, _ = embeds
    sd3.scheduler = getattr(diffusers, name)(**config)
    converted = assert_converted_parity(
        sd3,
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=0.5 * emb,
        negative_pooled_prompt_embeds=0.5 * pooled,
        guidance_scale=2.0,
        height=8,
        width=8,
        num_inference_steps=3,
        output_type="np" if sampler == "ddim" else "latent",
    )
    assert converted.config.sampler == sampler


def test_sd3_img2img_pipeline_parity(sd3, embeds):
    emb, pooled, image = embeds
    pipe = StableDiffusion3Img2ImgPipeline(
        **{**sd3.components, "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)}
    )
    pipe.set_progress_bar_config(disable=True)
    assert_converted_parity(
        pipe,
        image=image,
        strength=0.6,
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        guidance_scale=1.0,
        height=8,
        width=8,
        num_inference_steps=5,
        output_type="latent",
    )


# ---------------------------------------------------------------------------------------------- Flux
def test_flux_pipeline_parity(flux, embeds):
    """Flux passes its own base sigmas and mu (dynamic shifting from the image sequence length)."""
    emb, pooled, _ = embeds
    assert_converted_parity(
        flux,
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        height=8,
        width=8,
        num_inference_steps=3,
        output_type="latent",
    )


def test_flux_img2img_pipeline_parity(flux, embeds):
    emb, pooled, image = embeds
    pipe = FluxImg2ImgPipeline(**flux.components)
    pipe.set_progress_bar_config(disable=True)
    assert_converted_parity(
        pipe,
        image=image,
        strength=0.7,
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        height=8,
        width=8,
        num_inference_steps=4,
        output_type="latent",
    )


# ---------------------------------------------------------------------------------------------- Wan
def wan_pipeline(scheduler):
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=DIM,
        freq_dim=16,
        ffn_dim=16,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_call(emb, **kwargs):
    return {
        **dict(
            prompt_embeds=emb,
            negative_prompt_embeds=0.5 * emb,
            guidance_scale=2.0,
            height=16,
            width=16,
            num_frames=5,
            output_type="latent",
        ),
        **kwargs,
    }


@pytest.mark.parametrize(
    "scheduler",
    [
        diffusers.UniPCMultistepScheduler(**WAN_UNIPC),  # Wan 2.1's own
        diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"),
        diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0),
    ],
    ids=["unipc-flow", "dpmsolver-flow", "flowmatch"],
)
def test_wan_pipeline_parity(embeds, scheduler):
    emb, _, _ = embeds
    converted = assert_converted_parity(wan_pipeline(scheduler), **wan_call(emb, num_inference_steps=4))
    if not isinstance(scheduler, diffusers.FlowMatchEulerDiscreteScheduler):
        assert converted.timesteps.dtype == torch.int64  # the model is fed ⌊τ N⌋, as by diffusers


# ---------------------------------------------------------------------------------------------- LTX
def ltx_pipeline(cls, scheduler, vae=None):
    """A tiny LTX-Video pipeline of class ``cls`` (LTXPipeline, LTXImageToVideoPipeline, …); ``vae``: a tiny
    AutoencoderKLLTXVideo (:func:`ltx_vae`) for the classes that read it even for latent output."""
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=DIM,
        num_layers=1,
        caption_channels=DIM,
    ).eval()
    pipe = cls(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_vae():
    """4 latent channels, 4× spatial and 4× temporal compression (two space-time downsamplings), 4 channels wide."""
    torch.manual_seed(0)
    return AutoencoderKLLTXVideo(
        latent_channels=4,
        block_out_channels=(4, 4, 4, 4),
        decoder_block_out_channels=(4, 4, 4, 4),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=1,
        patch_size_t=1,
    ).eval()


def ltx_call(emb, **kwargs):
    mask = torch.ones(1, emb.shape[1])
    return {
        **dict(
            prompt_embeds=emb,
            prompt_attention_mask=mask,
            negative_prompt_embeds=0.5 * emb,
            negative_prompt_attention_mask=mask,
            guidance_scale=2.0,
            height=32,
            width=32,
            num_frames=9,
            output_type="latent",
        ),
        **kwargs,
    }


def test_ltx_pipeline_parity(embeds):
    emb, _, _ = embeds
    pipe = ltx_pipeline(LTXPipeline, diffusers.FlowMatchEulerDiscreteScheduler(**LTX))
    converted = assert_converted_parity(pipe, **ltx_call(emb, num_inference_steps=4))
    assert abs(float(converted.sigmas[-2]) - 0.1) < 1e-6  # stretched to shift_terminal


@pytest.fixture(scope="module")
def video_vae():
    return ltx_vae()


def test_ltx_image_to_video_pipeline_parity(embeds, video_vae):
    """The first frame held at the image's latents, the rest stepped: LTX's shifted sigmas with μ."""
    emb, _, image = embeds
    pipe = ltx_pipeline(LTXImageToVideoPipeline, diffusers.FlowMatchEulerDiscreteScheduler(**LTX), video_vae)
    assert_converted_parity(pipe, **ltx_call(emb, image=image, num_inference_steps=4))


@pytest.mark.parametrize(
    "config, extra",
    [
        ({"shift_terminal": 0.1}, {}),  # text to video: one level for every token
        ({"shift": 2.0}, {"image": True}),  # the image's tokens at level 0, the others stepped
        ({"shift_terminal": 0.1}, {"image": True, "denoise_strength": 0.5, "latents": True}),  # entered mid-grid
    ],
    ids=["t2v", "image", "denoise"],
)
def test_ltx_condition_pipeline_parity(embeds, video_vae, config, extra):
    """LTXConditionPipeline passes timesteps alone (linear-quadratic, fed as given, levels t/N shifted) and steps with
    per-token timesteps, every token from its own level to the next grid level below (and −u as model output)."""
    emb, _, image = embeds
    pipe = ltx_pipeline(LTXConditionPipeline, diffusers.FlowMatchEulerDiscreteScheduler(**config), video_vae)
    if extra.pop("image", False):
        extra["image"] = image
    if extra.pop("latents", False):
        extra["latents"] = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert_converted_parity(pipe, **ltx_call(emb, num_inference_steps=5, **extra))
    uni = UnifiedScheduler.from_config(pipe.scheduler.config, sampler="heun")
    pipe.scheduler, native = uni, pipe.scheduler
    try:
        with pytest.raises(ValueError, match="per_token_timesteps"):  # one level for all tokens would be wrong
            output(pipe, **ltx_call(emb, num_inference_steps=3, image=image))
    finally:
        pipe.scheduler = native


LONG = dict(
    prompt="p",
    guidance_scale=2.0,
    height=32,
    width=32,
    num_frames=33,
    temporal_tile_size=16,
    temporal_overlap=8,
    output_type="latent",
)  # two temporal windows of 4 latent frames, 2 overlapping


@pytest.mark.parametrize(
    "scheduler, call",
    [
        (diffusers.LTXEulerAncestralRFScheduler(eta=0.6), {"sigmas": [1.0, 0.7, 0.4, 0.1, 0.0]}),  # ComfyUI's
        (diffusers.LTXEulerAncestralRFScheduler(), {"sigmas": [1.0, 0.7, 0.4, 0.1, 0.0], "cond_image": True}),
        (
            diffusers.LTXEulerAncestralRFScheduler.from_config(
                diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.1).config
            ),
            {"num_inference_steps": 4},
        ),
        (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), {"sigmas": [1.0, 0.7, 0.4, 0.1, 0.0]}),
    ],
    ids=["rf-sigmas", "rf-sigmas-image", "rf-from-flowmatch", "flowmatch-sigmas"],
)
def test_ltx_long_multi_prompt_pipeline_parity(embeds, video_vae, scheduler, call):
    """LTXI2VLongMultiPromptPipeline: per temporal window a fresh set_timesteps (ComfyUI-style sigmas with their
    terminal 0, or num_inference_steps), the loop over timesteps[:-1], a generator seeded per window. The text
    encoder is replaced by fixed embeddings (no tokenizer is built)."""
    emb, _, image = embeds
    pipe = ltx_pipeline(LTXI2VLongMultiPromptPipeline, scheduler, video_vae)
    mask = torch.ones(1, emb.shape[1])
    pipe.encode_prompt = lambda **kwargs: (emb, mask, 0.5 * emb, mask)
    if call.pop("cond_image", False):
        call["cond_image"] = image
    assert_converted_parity(pipe, **LONG, **call)


def test_ltx_pipeline_with_rf_scheduler_refused_like_diffusers(embeds):
    """LTXPipeline hands its scheduler FlowMatch base levels (a numpy array) and μ: LTXEulerAncestralRF rejects the
    array, and the conversion the μ that its given levels could not apply."""
    emb, _, _ = embeds
    pipe = ltx_pipeline(LTXPipeline, diffusers.LTXEulerAncestralRFScheduler())
    with pytest.raises(TypeError, match="sigmas"):
        output(pipe, **ltx_call(emb, num_inference_steps=3))
    pipe.scheduler = UnifiedScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="mu="):
        output(pipe, **ltx_call(emb, num_inference_steps=3))


# ---------------------------------------------------------------------------------------------- CogView4
def cogview4_pipeline(scheduler):
    torch.manual_seed(0)
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=4,
        num_attention_heads=2,
        out_channels=4,
        text_embed_dim=DIM,
        time_embed_dim=8,
        condition_dim=4,
    ).eval()
    pipe = CogView4Pipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogview4_call(emb, **kwargs):
    return {
        **dict(
            prompt_embeds=emb,
            negative_prompt_embeds=0.5 * emb,
            guidance_scale=2.0,
            height=32,
            width=32,
            output_type="latent",
        ),
        **kwargs,
    }


def test_cogview4_pipeline_parity(embeds):
    """CogView4 passes unshifted integer timesteps together with sigmas that the linear time shift moves."""
    emb, _, _ = embeds
    pipe = cogview4_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(**COGVIEW4))
    converted = assert_converted_parity(pipe, **cogview4_call(emb, num_inference_steps=4))
    assert converted.timesteps.tolist() == [1000.0, 667.0, 334.0, 1.0]  # fed to the model unshifted
    assert float(converted.sigmas[1]) < 0.667 - 0.1  # the steps use the shifted levels (μ < 1 here)


# ---------------------------------------------------------------------------------------------- every sampler
SAMPLERS = unisde.list_samplers()
FLOW_PIPELINES = ("sd3", "flux", "wan", "ltx", "cogview4")


@pytest.fixture(scope="module")
def flow_pipelines(sd3, flux, embeds):
    """Each flow pipeline with its model's own scheduler, and its call (no guidance: one model call per step)."""
    emb, pooled, _ = embeds
    common = dict(prompt_embeds=emb, pooled_prompt_embeds=pooled, height=8, width=8, output_type="latent")
    return {
        "sd3": (sd3, {**common, "guidance_scale": 1.0}),
        "flux": (flux, common),
        "wan": (wan_pipeline(diffusers.UniPCMultistepScheduler(**WAN_UNIPC)), wan_call(emb, guidance_scale=1.0)),
        "ltx": (
            ltx_pipeline(LTXPipeline, diffusers.FlowMatchEulerDiscreteScheduler(**LTX)),
            ltx_call(emb, guidance_scale=1.0),
        ),
        "cogview4": (
            cogview4_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(**COGVIEW4)),
            cogview4_call(emb, guidance_scale=1.0),
        ),
    }


@pytest.mark.parametrize("pipeline", FLOW_PIPELINES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_in_every_flow_pipeline(flow_pipelines, pipeline, sampler):
    """Every registered sampler on the rectified flow, keeping the model's flow grid (SD3's shift, Flux's and LTX's
    μ, LTX's shift_terminal, Wan's UniPC flow levels, CogView4's unshifted timesteps): finite output, one model call
    per listed timestep."""
    pipe, call = flow_pipelines[pipeline]
    native = pipe.scheduler
    pipe.scheduler = uni = UnifiedScheduler.from_config(native.config, sampler=sampler)
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        out = output(pipe, num_inference_steps=2, **call)
    finally:
        hook.remove()
        pipe.scheduler = native
    assert torch.isfinite(out).all(), (pipeline, sampler)
    assert uni.config.sampler == sampler and uni._grid_kind() == "flow_match"
    assert len(calls) == len(uni.timesteps) >= 2
