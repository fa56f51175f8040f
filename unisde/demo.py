r"""The main job (``unisde demo`` / ``make demo``): one trained checkpoint, every registered sampler.

Loads the bundled digits checkpoint (a diffusers pipeline folder trained by ``unisde train``), samples a batch
with every registered sampler (plugins included) through a real ``DDPMPipeline`` whose scheduler is a
:class:`~unisde.UnifiedScheduler`, and reports for each sampler the number of model evaluations (NFE, every
UNet call counted), the wall time and the Fréchet distance in 64-d pixel space to the real digits

    FD = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^{1/2}),

beside the real-vs-real floor (the same distance between two disjoint halves of the data). It also writes one
PNG grid per sampler and a plot of the checkpoint's schedule (s, σ, f, g, λ against t).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

BUNDLED_CHECKPOINT = os.path.join(os.path.dirname(__file__), "data", "digits-unet")

# Steps per sampler chosen so every sampler spends a comparable number of UNet calls (~30; Heun-type
# samplers call the model twice per step, pc once per corrector and predictor, ncsn T times per level + 1).
DEFAULT_STEPS = {"ddpm": 30, "ddim": 30, "edm": 15, "ode": 15, "sde": 30, "pc": 15, "ncsn": 15, "lms": 30, "unipc": 30, "pndm": 29, "dpmsolver++": 30}
DEFAULT_OPTIONS = {"ncsn": {"n_steps_each": 2}}
DEFAULT_NUM_SAMPLES = 500


@dataclass
class DemoRow:
    sampler: str
    nfe: int
    seconds: float
    frechet: float
    floor: float
    grid: str


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two sample sets (rows are samples), float64."""
    from scipy import linalg

    x, y = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64).reshape(len(y), -1)
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root, _ = linalg.sqrtm(cov_x @ cov_y, disp=False)
    root = np.real(root)
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * root))


def save_grid(images: np.ndarray, path: str, nrow: int = 10, scale: int = 4) -> str:
    """Save up to nrow² images (N, H, W[, C]) in [0, 1] as one PNG grid, upscaled by ``scale``."""
    from PIL import Image

    images = np.asarray(images)[: nrow * nrow]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n, h, w = images.shape[:3]
    rows = int(np.ceil(n / nrow))
    canvas = np.ones((rows * (h + 1) + 1, nrow * (w + 1) + 1) + images.shape[3:], dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = img
    pil = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pil.save(path)
    return path


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and counts its forward calls (each is one model evaluation, NFE)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.nfe = 0

    def forward(self, *args, **kwargs):
        self.nfe += 1
        return self.unet(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)


def run_demo(checkpoint: str = BUNDLED_CHECKPOINT, output_dir: str = "demo_out", num_samples: int = DEFAULT_NUM_SAMPLES,
             seed: int = 0, samplers: list[str] | None = None, steps: dict | None = None, likelihood: bool = True,
             verbose: bool = True) -> list[DemoRow]:
    from diffusers import DDPMPipeline

    from unisde.diffusers.pipeline import load_pipeline
    from unisde.plugins import get_sampler, list_samplers
    from unisde.diffusers.scheduler import UnifiedScheduler
    from unisde.training.data import real_digits

    if not os.path.isdir(checkpoint):
        raise ValueError(f"checkpoint folder {checkpoint!r} does not exist")
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    names = list(samplers) if samplers else list_samplers()
    for name in names:
        get_sampler(name)
    torch.manual_seed(seed)
    base = load_pipeline(checkpoint)
    unet = base.unet.eval()
    resolution = int(unet.config.sample_size)
    real = real_digits(resolution).numpy()
    order = np.random.default_rng(seed).permutation(len(real))
    half = len(real) // 2
    floor = frechet_distance(real[order[:half]], real[order[half:]])
    os.makedirs(output_dir, exist_ok=True)
    rows: list[DemoRow] = []
    for name in names:
        n_steps = (steps or {}).get(name, DEFAULT_STEPS.get(name, 50))
        scheduler = UnifiedScheduler.from_config(base.scheduler.config, sampler=name,
                                                 sampler_options=DEFAULT_OPTIONS.get(name, {}))
        counting = CountingUNet(unet)
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipe.unet = counting  # count every UNet call the pipeline makes
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        with torch.no_grad():
            images = pipe(batch_size=num_samples, generator=torch.Generator().manual_seed(seed),
                          num_inference_steps=n_steps, output_type="np").images
        seconds = time.perf_counter() - start
        generated = images.transpose(0, 3, 1, 2) * 2.0 - 1.0  # back to the training range [−1, 1]
        fd = frechet_distance(generated, real)
        grid = save_grid(images, os.path.join(output_dir, f"samples_{name}.png"))
        rows.append(DemoRow(name, counting.nfe, seconds, fd, floor, grid))
        if verbose:
            print(f"  {name:<12} NFE {counting.nfe:>4}  {seconds:6.2f} s  FD {fd:8.3f}", flush=True)
    _schedule_plot(base.scheduler, output_dir)
    summary = {"checkpoint": checkpoint, "num_samples": num_samples, "floor": floor, "rows": [asdict(r) for r in rows]}
    if likelihood:
        summary["bits_per_dim"] = _bits_per_dim(checkpoint, seed)
        if verbose:
            print(f"  PF-ODE likelihood of real digits: {summary['bits_per_dim']}", flush=True)
    with open(os.path.join(output_dir, "results.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as fh:
        fh.write(format_table(rows, num_samples, summary.get("bits_per_dim")))
    return rows


def _schedule_plot(scheduler, output_dir):
    try:
        from unisde.plots import plot_schedules
    except ImportError:
        return None
    return plot_schedules({"checkpoint": scheduler.noise_schedule}, os.path.join(output_dir, "schedule.png"))


def _bits_per_dim(checkpoint, seed, n: int = 32):
    """Bits/dim of n real digits under the checkpoint (PF-ODE likelihood, Hutchinson trace, uniform
    dequantisation over the digits' 17 levels), as a printable string."""
    from unisde.likelihood_data import load_pipeline_model, load_quantized_dataset
    from unisde.likelihood import dataset_bits_per_dim

    data, num_bins = load_quantized_dataset("digits")
    unet, schedule, param = load_pipeline_model(checkpoint)
    mean, se, nfes, _ = dataset_bits_per_dim(unet, data, schedule, param, num_bins=num_bins, num_samples=n,
                                             batch_size=n, seed=seed, rtol=1e-4, atol=1e-4)
    return f"{mean:.3f} ± {se:.3f} bits/dim ({n} digits, Hutchinson trace, {sum(nfes)} NFE, rtol 1e-4)"


CARD_BEGIN, CARD_END = "<!-- unisde-demo:begin -->", "<!-- unisde-demo:end -->"


def update_model_card(checkpoint: str, rows: list[DemoRow], bits_per_dim: str | None, grid_sampler: str = "edm") -> str:
    """Write the demo's quality table, bits/dim and a sample grid into the checkpoint's model card (README.md),
    replacing the section of a previous run."""
    import shutil

    card_path = os.path.join(checkpoint, "README.md")
    with open(card_path) as fh:
        card = fh.read()
    if CARD_BEGIN in card:
        card = card[: card.index(CARD_BEGIN)].rstrip() + "\n" + card[card.index(CARD_END) + len(CARD_END):]
    row = next((r for r in rows if r.sampler == grid_sampler), rows[0])
    shutil.copyfile(row.grid, os.path.join(checkpoint, "samples.png"))
    section = (f"\n{CARD_BEGIN}\n## Quality (measured by `unisde demo`)\n\n"
               f"![samples from the `{row.sampler}` sampler](samples.png)\n\n"
               + format_table(rows, len(rows) and DEFAULT_NUM_SAMPLES, bits_per_dim) + f"{CARD_END}\n")
    with open(card_path, "w") as fh:
        fh.write(card.rstrip() + "\n" + section)
    return card_path


def format_table(rows: list[DemoRow], num_samples: int, bpd=None) -> str:
    lines = [f"| sampler | NFE | seconds | Fréchet distance (64-d pixels, {num_samples} samples) | real-vs-real floor |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.sampler} | {r.nfe} | {r.seconds:.2f} | {r.frechet:.3f} | {r.floor:.3f} |")
    text = "\n".join(lines) + "\n"
    if bpd is not None:
        text += f"\nPF-ODE likelihood of real digits: {bpd}\n"
    return text
