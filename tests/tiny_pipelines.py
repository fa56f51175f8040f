"""Tiny random components for diffusers pipelines, built locally (no downloads, nothing from the Hub).

Shared by the pipeline tests: a Stable Diffusion UNet (4 or 9 input channels, optionally with LCM's guidance
embedding), an SDXL UNet (``text_time`` added conditions), a one-block AutoencoderKL (scale factor 1: latents
have the image's size), a CLIP text encoder with a tokenizer whose vocabulary is written here, and random prompt
embeddings for pipelines called with ``prompt_embeds``. Every builder seeds torch itself, so two calls give the
same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

CROSS_DIM = 8  # width of the text embeddings the SD UNet attends to
TOKENS = 4  # sequence length of the random prompt embeddings
XL_POOLED = 8  # SDXL: width of the pooled text embedding (text_encoder_2's projection_dim)
XL_TIME_DIM = 4  # SDXL: addition_time_embed_dim (six time ids per image)


def sd_unet(size: int, in_channels: int = 4, time_cond_proj_dim: int | None = None) -> UNet2DConditionModel:
    """SD-shaped UNet2DConditionModel: two levels (8, 16 channels), one cross-attention block. ``in_channels=9``
    is the inpainting UNet (latents + mask + masked-image latents); ``time_cond_proj_dim`` adds LCM's guidance
    embedding."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        norm_num_groups=4,
        attention_head_dim=2,
        time_cond_proj_dim=time_cond_proj_dim,
    ).eval()


def sdxl_unet(size: int) -> UNet2DConditionModel:
    """SDXL-shaped UNet: ``addition_embed_type="text_time"`` (pooled text embedding + six time ids), linear
    projections in the transformer blocks."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        norm_num_groups=4,
        attention_head_dim=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=XL_TIME_DIM,
        projection_class_embeddings_input_dim=6 * XL_TIME_DIM + XL_POOLED,
    ).eval()


def tiny_vae(size: int) -> AutoencoderKL:
    """One-block AutoencoderKL with 4 latent channels: vae_scale_factor 1, so latents are size × size."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=size,
    ).eval()


def clip_text(folder: Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """A one-layer CLIP text encoder (width 8) and a CLIP tokenizer built from a vocabulary written into
    ``folder`` (unknown words map to <|endoftext|>), model_max_length 16."""
    words = (
        ["a</w>", "cat</w>", "photo</w>", "of</w>"]
        + [c for c in "abcdefghijklmnopqrstuvwxyz"]
        + [c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz"]
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=CROSS_DIM,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=16,
            projection_dim=8,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
    return text_encoder, tokenizer


def sd_components(size: int, folder: Path) -> dict:
    """Keyword arguments of StableDiffusionPipeline / Img2Img (all but the scheduler), with a real tokenizer and
    text encoder and no safety checker."""
    text_encoder, tokenizer = clip_text(folder)
    return dict(
        unet=sd_unet(size),
        vae=tiny_vae(size),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def embedded_components(unet, size: int) -> dict:
    """SD-family pipeline components without a text encoder (the caller passes ``prompt_embeds``)."""
    return dict(
        unet=unet,
        vae=tiny_vae(size),
        text_encoder=None,
        tokenizer=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_components(size: int) -> dict:
    """StableDiffusionXLPipeline components without text encoders (the caller passes :func:`sdxl_embeds`)."""
    return dict(
        unet=sdxl_unet(size),
        vae=tiny_vae(size),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        force_zeros_for_empty_prompt=False,
    )


def prompt_embeds(seed: int = 0, negative: bool = True) -> dict:
    """Random (1, TOKENS, CROSS_DIM) prompt embeddings (and negative ones for classifier-free guidance)."""
    g = torch.Generator().manual_seed(seed)
    out = {"prompt_embeds": torch.randn(1, TOKENS, CROSS_DIM, generator=g)}
    if negative:
        out["negative_prompt_embeds"] = torch.randn(1, TOKENS, CROSS_DIM, generator=g)
    return out


def sdxl_embeds(seed: int = 0) -> dict:
    """Random SDXL prompt embeddings: sequence and pooled, positive and negative."""
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(1, TOKENS, CROSS_DIM, generator=g),
        "negative_prompt_embeds": torch.randn(1, TOKENS, CROSS_DIM, generator=g),
        "pooled_prompt_embeds": torch.randn(1, XL_POOLED, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(1, XL_POOLED, generator=g),
    }


def image(size: int, seed: int = 1) -> torch.Tensor:
    """A random image in [0, 1] (the range pipelines take tensors in), shape (1, 3, size, size)."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def mask(size: int) -> torch.Tensor:
    """An inpainting mask in [0, 1], shape (1, 1, size, size): the right half is repainted."""
    m = torch.zeros(1, 1, size, size)
    m[..., size // 2 :] = 1.0
    return m
