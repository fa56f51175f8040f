"""`unisde sample`: any pipeline folder, any sampler; an image grid plus the exact scheduler config; bad input is
a one-line error before any weight is loaded."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from unisde.cli import main
from unisde.cli.sample import image_grid
from unisde.demo import BUNDLED_CHECKPOINT


def test_sample_the_bundled_digits_checkpoint(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                str(BUNDLED_CHECKPOINT),
                "--sampler",
                "edm",
                "--steps",
                "4",
                "--num_images",
                "4",
                "--out",
                str(out),
                "--sampler_options",
                '{"s_churn": 0.5}',
                "--grid",
                "karras",
            ]
        )
        == 0
    )
    image = Image.open(out)
    assert image.size == (2 * 8, 2 * 8)
    record = json.loads((tmp_path / "grid.json").read_text())
    assert record["scheduler_config"]["sampler"] == "edm" and record["scheduler_config"]["sampler_options"] == {
        "s_churn": 0.5
    }
    assert record["scheduler_config"]["time_grid"] == "karras" and record["steps"] == 4


@pytest.fixture
def tiny_sd_folder(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )
    words = ["a</w>", "cat</w>"] + [c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=16,
            projection_dim=8,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path / "tiny-sd"
    pipe.save_pretrained(folder)
    return folder


def test_sample_a_text_to_image_pipeline_saved_to_disk(tiny_sd_folder, tmp_path):
    out = tmp_path / "sd.png"
    assert (
        main(
            [
                "sample",
                str(tiny_sd_folder),
                "--sampler",
                "dpmsolver++",
                "--steps",
                "3",
                "--prompt",
                "a cat",
                "--num_images",
                "2",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "sd.json").read_text())
    assert record["prompt"] == "a cat" and record["scheduler_config"]["sampler"] == "dpmsolver++"
    assert record["scheduler_config"]["beta_schedule"] == "scaled_linear"  # the pipeline's own schedule kept
    assert Image.open(out).size[0] == 2 * 8


def _no_weights_loaded(monkeypatch):
    import diffusers

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sampler", "nope", "--steps", "3"], "unknown sampler 'nope'"),
        (["--sampler", "edm", "--steps", "3", "--prompt", "a cat"], "unconditional: it takes no --prompt"),
        (["--sampler", "edm", "--steps", "0"], "--steps must be >= 1"),
        (["--sampler", "edm", "--steps", "3", "--grid", "karas"], "Did you mean 'karras'"),
        (["--sampler", "edm", "--steps", "3", "--sampler_options", '{"s_chur": 1}'], "s_chur"),
    ],
)
def test_bad_input_is_one_line_before_loading(monkeypatch, capsys, argv, message):
    _no_weights_loaded(monkeypatch)
    assert main(["sample", str(BUNDLED_CHECKPOINT)] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_folder_that_is_not_a_pipeline(monkeypatch, capsys, tmp_path):
    _no_weights_loaded(monkeypatch)
    assert main(["sample", str(tmp_path), "--sampler", "ddim", "--steps", "2"]) == 2
    assert "no model_index.json" in capsys.readouterr().err


def test_an_adaptive_sampler_runs_on_the_bundled_unconditional_pipeline(tmp_path, capsys):
    """dpm_adaptive has no grid for a pipeline loop: the command runs unisde.sampling.sample_adaptive on the UNet
    over the --steps grid's interval and records the NFE it took; the images equal that call's output."""
    from diffusers import DiffusionPipeline

    from unisde.diffusers.scheduler import UnifiedScheduler
    from unisde.sampling import sample_adaptive

    out = tmp_path / "adaptive.png"
    options = '{"rtol": 0.05, "atol": 0.05}'
    argv = ["sample", str(BUNDLED_CHECKPOINT), "--sampler", "dpm_adaptive", "--steps", "10", "--num_images", "2"]
    assert main([*argv, "--out", str(out), "--sampler_options", options, "--seed", "3"]) == 0
    record = json.loads((tmp_path / "adaptive.json").read_text())
    assert record["scheduler_config"]["sampler"] == "dpm_adaptive" and record["adaptive"]["nfe"] > 0
    assert f"{record['adaptive']['nfe']} model evaluations" in capsys.readouterr().out

    pipe = DiffusionPipeline.from_pretrained(str(BUNDLED_CHECKPOINT))
    source = UnifiedScheduler.from_config(dict(pipe.scheduler.config), sampler="ddim")
    generator = torch.Generator().manual_seed(3)
    size = pipe.unet.config.sample_size
    noise = torch.randn((2, pipe.unet.config.in_channels, size, size), generator=generator)
    with torch.no_grad():
        x, info = sample_adaptive(
            pipe.unet,
            noise,
            schedule=source.noise_schedule,
            parameterization=source.parameterization,
            sampler="dpm_adaptive",
            num_inference_steps=10,
            sampler_options=json.loads(options),
            generator=generator,
        )
    assert info == record["adaptive"]
    expected = pipe.numpy_to_pil((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())
    got = Image.open(out)
    assert got.tobytes() == image_grid(expected).tobytes()


def test_an_adaptive_sampler_on_a_text_pipeline_is_refused_before_loading(tiny_sd_folder, monkeypatch, capsys):
    _no_weights_loaded(monkeypatch)
    argv = ["sample", str(tiny_sd_folder), "--sampler", "dpm_adaptive", "--steps", "4", "--prompt", "a cat"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot run inside StableDiffusionPipeline's fixed-step loop" in err and len(err.splitlines()) == 1
