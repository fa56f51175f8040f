r"""The main job (``unisde demo`` / ``make demo``): the bundled checkpoints, every registered sampler.

Loads the two bundled digits checkpoints (diffusers pipeline folders trained by ``unisde train``): ``digits-unet``
(DDPM β table, ε-prediction) and ``digits-flow`` (the same UNet trained as a rectified flow with flow prediction
and SD3's logit-normal times). Each is sampled with every registered sampler (plugins included) through a real
``DDPMPipeline`` whose scheduler is a :class:`~unisde.UnifiedScheduler`, and for each (checkpoint, sampler) the
demo reports the number of model evaluations (NFE, every UNet call counted), the wall time and the Fréchet
distance in 64-d pixel space to the 1797 real digits

    FD = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^{1/2}),

beside the real-vs-real floor at the same sample size (n real digits against the other 1797 − n, n capped at
half the data): the distance a perfect sampler would get with n samples. Samplers that *encode* (inversion, data
→ noise) cannot sample from noise; for them the demo encodes n real digits and decodes the latents with DDIM on
the same grid, and reports the NFE of both passes and the FD of the reconstructions against the *other* real
digits (so a perfect round trip scores the floor exactly). It also writes one PNG grid per (checkpoint, sampler)
and a plot of each checkpoint's schedule (s, σ, f, g, λ against t).

On the flow checkpoint, the samplers with a ``view`` option (``edm``, ``lms``, ``dpm_2``, …) solve the ODE in the
flow view x/(s + σ) against τ = σ/(s + σ) (their ``"auto"`` default on zero-terminal-SNR schedules), exact at
t = 1. ``FLOW_EXTRA_RUNS`` adds EDM in the VE view x̃ = x/s for comparison: it starts at the rectified flow's
capped t_end (σ̃ = 4096, where s = 2⁻¹²) instead of t = 1 and takes its first trapezoid step from σ̃ = 4096 to
σ̃(t₁) ≈ 13 with 15 steps; the table shows what that costs.

The second checkpoint is sampled with fewer images per sampler (``DEFAULT_NUM_SAMPLES_SECOND``) to keep the demo
at about 2–3 minutes on 2 CPU cores; its floor is computed at that size.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

BUNDLED_CHECKPOINT = os.path.join(os.path.dirname(__file__), "data", "digits-unet")
BUNDLED_FLOW_CHECKPOINT = os.path.join(os.path.dirname(__file__), "data", "digits-flow")
BUNDLED_CHECKPOINTS = (BUNDLED_CHECKPOINT, BUNDLED_FLOW_CHECKPOINT)

# Steps per sampler chosen so every sampler spends a comparable number of UNet calls (~30; Heun-type
# samplers call the model twice per step, pc once per corrector and predictor, ncsn T times per level + 1).
DEFAULT_STEPS = {
    "ddpm": 30,
    "ddim": 30,
    "edm": 15,
    "ode": 15,
    "sde": 30,
    "pc": 15,
    "ncsn": 15,
    "lms": 30,
    "unipc": 30,
    "pndm": 29,
    "dpmsolver++": 30,
    "deis": 30,
    "dpm_2": 15,
    "dpm_2_ancestral": 15,
    "dpmsolver_singlestep": 30,
    "ipndm": 30,
    "ipndm_v": 30,
    "lcm": 30,
    "tcd": 30,
    "inverse": 30,
    "ddim_inverse": 30,
}
DEFAULT_OPTIONS = {"ncsn": {"n_steps_each": 2}}
DEFAULT_NUM_SAMPLES = 500
DEFAULT_NUM_SAMPLES_SECOND = 200
FLOW_EXTRA_RUNS = [("edm", {"view": "ve"}, "view=ve")]
"""Extra rows for flow checkpoints (FlowMatch configs): EDM's Heun in the VE view x̃ = x/s, whose first step starts
at σ̃ = 4096 (the capped t_end), beside the default run in the flow view x/(s + σ) against τ (diffusers' FlowMatch
Heun)."""
"""Images per sampler for the second (and any further) checkpoint of the default run: fewer, to keep the demo
at about 2–3 minutes on 2 CPU cores (the floor is computed at the same size)."""


@dataclass
class DemoRow:
    sampler: str
    nfe: int
    seconds: float
    frechet: float
    floor: float
    grid: str
    checkpoint: str = ""
    num_samples: int = 0
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.sampler} ({self.note})" if self.note else self.sampler


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
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
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


def real_floor(real: np.ndarray, n: int, seed: int = 0) -> float:
    """FD between n real digits and the other len(real) − n (n capped at half the data): the distance a perfect
    sampler would get with n samples against the real set."""
    n = max(2, min(int(n), len(real) // 2))
    order = np.random.default_rng(seed).permutation(len(real))
    return frechet_distance(real[order[:n]], real[order[n:]])


def _sample(unet, scheduler, num_samples, n_steps, seed):
    """n images from noise through a DDPMPipeline; returns (images (n, H, W, C) in [0, 1], NFE)."""
    from diffusers import DDPMPipeline

    counting = CountingUNet(unet)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.unet = counting  # count every UNet call the pipeline makes
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipe(
            batch_size=num_samples,
            generator=torch.Generator().manual_seed(seed),
            num_inference_steps=n_steps,
            output_type="np",
        ).images
    return images, counting.nfe


def _encode_decode(unet, config, name, real, n_steps, options):
    """An encoding sampler's round trip: real digits → latents (the sampler) → images (DDIM on the same grid);
    returns (images (n, H, W, C) in [0, 1], NFE of both passes)."""
    from unisde.diffusers.scheduler import UnifiedScheduler

    counting = CountingUNet(unet)
    x = torch.from_numpy(np.ascontiguousarray(real)).float()
    with torch.no_grad():
        for scheduler in (
            UnifiedScheduler.from_config(config, sampler=name, sampler_options=options),
            UnifiedScheduler.from_config(config, sampler="ddim", sampler_options={"eta": 0.0}),
        ):
            scheduler.set_timesteps(n_steps)
            for t in scheduler.timesteps:
                x = scheduler.step(counting(x, t).sample, t, x).prev_sample
    images = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return images, counting.nfe


def run_demo(
    checkpoint: str = BUNDLED_CHECKPOINT,
    output_dir: str = "demo_out",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    samplers: list[str] | None = None,
    steps: dict | None = None,
    likelihood: bool = True,
    verbose: bool = True,
) -> list[DemoRow]:
    """One checkpoint, every sampler (module doc): grids, schedule plot, results.{json,md} in ``output_dir``."""
    from unisde.diffusers.pipeline import load_pipeline
    from unisde.diffusers.scheduler import UnifiedScheduler
    from unisde.plugins import get_sampler, list_samplers
    from unisde.training.data import real_digits

    if not os.path.isdir(checkpoint):
        raise ValueError(f"checkpoint folder {checkpoint!r} does not exist")
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    names = list(samplers) if samplers else list_samplers()
    for name in names:
        get_sampler(name)
    torch.manual_seed(seed)
    label = os.path.basename(os.path.normpath(checkpoint))
    base = load_pipeline(checkpoint)
    unet = base.unet.eval()
    resolution = int(unet.config.sample_size)
    real = real_digits(resolution).numpy()
    floor = real_floor(real, num_samples, seed)
    os.makedirs(output_dir, exist_ok=True)
    runs = [(name, DEFAULT_OPTIONS.get(name, {}), "") for name in names]
    if base.scheduler.config.get("sigmas_convention") == "flow":
        runs += [(name, options, note) for name, options, note in FLOW_EXTRA_RUNS if name in names]
    rows: list[DemoRow] = []
    for name, options, note in runs:
        n_steps = (steps or {}).get(name, DEFAULT_STEPS.get(name, 50))
        start = time.perf_counter()
        reference = real
        if getattr(get_sampler(name), "encodes", False):
            # the round trip of n real digits, compared with the *other* digits: a perfect inversion scores the floor
            order = np.random.default_rng(seed).permutation(len(real))
            n = max(2, min(num_samples, len(real) // 2))
            reference = real[order[n:]]
            images, nfe = _encode_decode(unet, base.scheduler.config, name, real[order[:n]], n_steps, options)
            note = "encode real digits, decode with ddim"
        else:
            scheduler = UnifiedScheduler.from_config(base.scheduler.config, sampler=name, sampler_options=options)
            images, nfe = _sample(unet, scheduler, num_samples, n_steps, seed)
        seconds = time.perf_counter() - start
        generated = images.transpose(0, 3, 1, 2) * 2.0 - 1.0  # back to the training range [−1, 1]
        if not np.isfinite(generated).all():
            raise ValueError(f"{label}: sampler {name!r} produced non-finite images")
        fd = frechet_distance(generated, reference)
        suffix = "".join(f"_{k}-{v}" for k, v in options.items()) if note and options else ""
        grid = save_grid(images, os.path.join(output_dir, f"samples_{name}{suffix}.png"))
        rows.append(DemoRow(name, nfe, seconds, fd, floor, grid, label, len(images), note))
        if verbose:
            print(
                f"  {label:<12} {rows[-1].label:<24} NFE {nfe:>4}  {seconds:6.2f} s  FD {fd:8.3f}  (floor {floor:.3f})",
                flush=True,
            )
    _schedule_plot(base.scheduler, output_dir)
    summary = {"checkpoint": checkpoint, "num_samples": num_samples, "floor": floor, "rows": [asdict(r) for r in rows]}
    if likelihood:
        summary["bits_per_dim"] = _bits_per_dim(checkpoint, seed)
        if verbose:
            print(f"  {label}: PF-ODE likelihood of real digits: {summary['bits_per_dim']}", flush=True)
    with open(os.path.join(output_dir, "results.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as fh:
        fh.write(format_table(rows, num_samples, summary.get("bits_per_dim")))
    return rows


def run_demos(
    checkpoints=BUNDLED_CHECKPOINTS,
    output_dir: str = "demo_out",
    num_samples=None,
    seed: int = 0,
    samplers: list[str] | None = None,
    steps: dict | None = None,
    likelihood: bool = True,
    verbose: bool = True,
) -> tuple[list[DemoRow], dict]:
    """:func:`run_demo` on each checkpoint (outputs in ``output_dir/<checkpoint name>/``), one table for all in
    ``output_dir/results.md``. ``num_samples``: one number for all, one per checkpoint, or None (500 for the first,
    ``DEFAULT_NUM_SAMPLES_SECOND`` for the others). Returns (rows, {checkpoint: bits/dim string or None})."""
    checkpoints = list(checkpoints)
    if num_samples is None:
        counts = [DEFAULT_NUM_SAMPLES] + [DEFAULT_NUM_SAMPLES_SECOND] * (len(checkpoints) - 1)
    elif isinstance(num_samples, int):
        counts = [num_samples] * len(checkpoints)
    else:
        counts = list(num_samples)
        if len(counts) == 1:
            counts = counts * len(checkpoints)
        if len(counts) != len(checkpoints):
            raise ValueError(f"num_samples: give one number or one per checkpoint ({len(checkpoints)}), got {counts}")
    for path in checkpoints:
        if not os.path.isdir(path):
            raise ValueError(f"checkpoint folder {path!r} does not exist")
    names = [os.path.basename(os.path.normpath(p)) for p in checkpoints]
    if len(set(names)) != len(names):
        raise ValueError(
            f"checkpoint folders need distinct names (their outputs go to {output_dir}/<name>/), got {names}"
        )
    rows, bpd = [], {}
    for path, name, n in zip(checkpoints, names, counts):
        if verbose:
            print(f"{name}: {n} images per sampler", flush=True)
        sub = os.path.join(output_dir, name)
        rows += run_demo(path, sub, n, seed, samplers, steps, likelihood, verbose)
        with open(os.path.join(sub, "results.json")) as fh:
            bpd[name] = json.load(fh).get("bits_per_dim")
    with open(os.path.join(output_dir, "results.md"), "w") as fh:
        fh.write(format_table(rows))
        for name, value in bpd.items():
            if value:
                fh.write(f"\nPF-ODE likelihood of real digits under {name}: {value}\n")
    return rows, bpd


def _schedule_plot(scheduler, output_dir):
    try:
        from unisde.plots import plot_schedules
    except ImportError:
        return None
    return plot_schedules({"checkpoint": scheduler.noise_schedule}, os.path.join(output_dir, "schedule.png"))


def _bits_per_dim(checkpoint, seed, n: int = 32):
    """Bits/dim of n real digits under the checkpoint (PF-ODE likelihood, Hutchinson trace, uniform
    dequantisation over the digits' 17 levels), as a printable string."""
    from unisde.likelihood import dataset_bits_per_dim
    from unisde.likelihood_data import load_pipeline_model, load_quantized_dataset

    data, num_bins = load_quantized_dataset("digits")
    unet, schedule, param = load_pipeline_model(checkpoint)
    mean, se, nfes, _ = dataset_bits_per_dim(
        unet, data, schedule, param, num_bins=num_bins, num_samples=n, batch_size=n, seed=seed, rtol=1e-4, atol=1e-4
    )
    return f"{mean:.3f} ± {se:.3f} bits/dim ({n} digits, Hutchinson trace, {sum(nfes)} NFE, rtol 1e-4)"


CARD_BEGIN, CARD_END = "<!-- unisde-demo:begin -->", "<!-- unisde-demo:end -->"


def update_model_card(checkpoint: str, rows: list[DemoRow], bits_per_dim: str | None, grid_sampler: str = "edm") -> str:
    """Write the demo's quality table (this checkpoint's rows), bits/dim and a sample grid into the checkpoint's model
    card (README.md), replacing the section of a previous run."""
    import shutil

    card_path = os.path.join(checkpoint, "README.md")
    with open(card_path) as fh:
        card = fh.read()
    if CARD_BEGIN in card:
        card = card[: card.index(CARD_BEGIN)].rstrip() + "\n" + card[card.index(CARD_END) + len(CARD_END) :]
    label = os.path.basename(os.path.normpath(checkpoint))
    rows = [r for r in rows if r.checkpoint in ("", label)]
    # the grid of grid_sampler's best run (on a flow checkpoint: EDM in the flow view rather than the VE view)
    row = min((r for r in rows if r.sampler == grid_sampler), key=lambda r: r.frechet, default=rows[0])
    shutil.copyfile(row.grid, os.path.join(checkpoint, "samples.png"))
    section = (
        f"\n{CARD_BEGIN}\n## Quality (measured by `unisde demo`)\n\n"
        f"![samples from the `{row.label}` sampler](samples.png)\n\n"
        + format_table(rows, bpd=bits_per_dim)
        + f"{CARD_END}\n"
    )
    with open(card_path, "w") as fh:
        fh.write(card.rstrip() + "\n" + section)
    return card_path


def format_table(rows: list[DemoRow], num_samples: int | None = None, bpd=None) -> str:
    """The Markdown table: checkpoint, sampler, NFE, seconds, images, Fréchet distance and the floor at that size.
    ``num_samples`` fills the images column of rows that do not record it."""
    lines = [
        "| checkpoint | sampler | NFE | seconds | images | Fréchet distance (64-d pixels) | real-vs-real floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r.num_samples or num_samples or ""
        lines.append(
            f"| {r.checkpoint} | {r.label} | {r.nfe} | {r.seconds:.2f} | {n} | {r.frechet:.3f} | {r.floor:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    if bpd is not None:
        text += f"\nPF-ODE likelihood of real digits: {bpd}\n"
    return text
