r"""The speed sections, each a ratio measured side by side in one process: scheduler ``step()`` overhead,
DDPMPipeline end to end, training throughput."""

from __future__ import annotations

import copy
import os
import statistics
import time
from typing import TYPE_CHECKING

import torch

from unisde.bench.contestants import _accepts, _unified, base_config

if TYPE_CHECKING:
    from unisde.bench.run import BenchConfig

OVERHEAD_PAIRS = (
    ("ddpm", "DDPMScheduler", {}),
    ("ddim", "DDIMScheduler", {}),
    ("edm-euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("edm-heun", "HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    ("flow-euler", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "flow"),
)
"""(label, diffusers class, its options[, the schedule whose config it starts from: ``ddpm`` unless given]); the
unisde side is ``UnifiedScheduler.from_config`` of the diffusers scheduler's config (its twin)."""


def _overhead(cfg: BenchConfig, log) -> list:
    import diffusers

    out = []
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(cfg.overhead_shape, generator=g)
    model_output = torch.randn(cfg.overhead_shape, generator=g)
    n = 50
    for label, cls_name, extra, *schedule in OVERHEAD_PAIRS:
        # a pair names its target schedule; pairs without one are timed on the DDPM table (not a fallback: the
        # same config feeds both sides)
        peer = getattr(diffusers, cls_name).from_config(base_config(schedule[0] if schedule else "ddpm"), **extra)
        mine = _unified(peer.config)
        kinds = [(peer, []), (mine, [])]
        gens = {id(s): torch.Generator().manual_seed(1) for s, _ in kinds}
        kw = {id(s): ({"generator": gens[id(s)]} if _accepts(s.step, "generator") else {}) for s, _ in kinds}
        calls, flip = 0, False
        while calls < cfg.overhead_steps:
            for s, _ in kinds:
                s.set_timesteps(n)
            length = min(len(peer.timesteps), len(mine.timesteps))
            for i in range(length):
                order = kinds[::-1] if flip else kinds
                flip = not flip
                for s, times in order:
                    t = s.timesteps[i]
                    # FlowMatch pipelines call no scale_model_input (the class has none): the model sees x as is
                    x = s.scale_model_input(sample, t) if hasattr(type(s), "scale_model_input") else sample
                    t0 = time.perf_counter()
                    s.step(model_output, t, x, **kw[id(s)])
                    times.append(time.perf_counter() - t0)
                calls += 1
                if calls >= cfg.overhead_steps:
                    break
        d, u = statistics.median(kinds[0][1]), statistics.median(kinds[1][1])
        out.append(
            {
                "sampler": label,
                "diffusers_scheduler": cls_name,
                "unisde_sampler": mine.config.sampler,
                "unisde_s": u,
                "diffusers_s": d,
                "ratio": u / d,
                "steps": calls,
            }
        )
        log(f"overhead: {label}: unisde {u * 1e3:.3f} ms, diffusers {d * 1e3:.3f} ms, ratio {u / d:.3f}")
    return out


# ====================================================================================== pipeline and training
BUNDLED_UNET_PATHS = (
    "unisde/data/digits-unet",
    "unisde/data/digits",
    "checkpoints/digits-unet",
    "checkpoints/digits",
    "checkpoints/digits-ddpm",
)


def load_digits_unet() -> tuple[torch.nn.Module, str]:
    """The bundled digits UNet (searched under the repository root and the package), or a random UNet2DModel of
    the training command's default digits config; returns (unet, description)."""
    from diffusers import UNet2DModel

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
    for rel in BUNDLED_UNET_PATHS:
        path = os.path.join(root, rel)
        for sub in ("unet", None):
            where = os.path.join(path, sub) if sub else path
            if os.path.isfile(os.path.join(where, "config.json")):
                return UNet2DModel.from_pretrained(where), f"bundled digits UNet ({os.path.relpath(where, root)})"
    from unisde.training.loop import default_args, unet_config_from_args

    config = unet_config_from_args(default_args(), 8, 1)
    torch.manual_seed(0)
    return UNet2DModel(**config), (
        "random UNet2DModel with the digits training config (no bundled digits UNet found "
        f"under {', '.join(BUNDLED_UNET_PATHS)})"
    )


def _pipeline(cfg: BenchConfig, log) -> dict:
    from diffusers import DDPMPipeline, DDPMScheduler

    unet, what = load_digits_unet()
    unet.eval()
    peer = DDPMScheduler.from_config(base_config("ddpm"))
    mine = _unified(peer.config)
    pipes = [DDPMPipeline(unet=unet, scheduler=peer), DDPMPipeline(unet=unet, scheduler=mine)]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    times = [[], []]

    def run(i, rep):
        t0 = time.perf_counter()
        pipes[i](
            batch_size=cfg.pipeline_batch,
            generator=torch.Generator().manual_seed(rep),
            num_inference_steps=cfg.pipeline_steps,
            output_type="np",
        )
        return time.perf_counter() - t0

    with torch.no_grad():
        run(0, 0), run(1, 0)  # warm-up
        for rep in range(cfg.pipeline_reps):
            for i in (0, 1) if rep % 2 == 0 else (1, 0):
                times[i].append(run(i, rep))
    d, u = statistics.median(times[0]), statistics.median(times[1])
    log(f"pipeline: unisde {u:.3f} s, diffusers {d:.3f} s, ratio {u / d:.3f}")
    return {
        "sampler": "ddpm",
        "diffusers_scheduler": "DDPMScheduler",
        "unisde_s": u,
        "diffusers_s": d,
        "ratio": u / d,
        "num_inference_steps": cfg.pipeline_steps,
        "batch_size": cfg.pipeline_batch,
        "unet": what,
    }


def _training(cfg: BenchConfig, log) -> dict:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from unisde.core.schedule import NoiseSchedule
    from unisde.training import make_train_step
    from unisde.training.data import real_digits

    unet, what = load_digits_unet()
    models = [copy.deepcopy(unet), copy.deepcopy(unet)]
    data = real_digits(8)
    batch = data[: cfg.training_batch]
    if batch.shape[0] < cfg.training_batch:
        batch = data[torch.arange(cfg.training_batch) % data.shape[0]]
    batch = batch.to(models[0].dtype)

    def adamw(m):  # train_unconditional.py's defaults
        return torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)

    noise_scheduler = DDPMScheduler.from_config(base_config("ddpm"))
    opt_d = adamw(models[0])
    models[0].train()

    def diffusers_step(clean, generator):
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator
        ).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        model_output = models[0](noisy, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models[0].parameters(), 1.0)
        opt_d.step()
        opt_d.zero_grad()
        return loss.detach()

    unisde_step = make_train_step(
        models[1],
        NoiseSchedule.from_diffusers_config(base_config("ddpm")),
        "epsilon",
        loss_weighting="default",
        noise_distribution="uniform_index",
        optimizer=adamw(models[1]),
        max_grad_norm=1.0,
    )
    steps = [diffusers_step, unisde_step]
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    times = [[], []]
    for i in (0, 1):  # warm-up (allocator, optimizer state)
        steps[i](batch, gens[i])
    for k in range(cfg.training_steps):
        for i in (0, 1) if k % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            steps[i](batch, gens[i])
            times[i].append(time.perf_counter() - t0)
    d, u = statistics.median(times[0]), statistics.median(times[1])
    sps_d, sps_u = cfg.training_batch / d, cfg.training_batch / u
    log(
        f"training: unisde {sps_u:.1f} samples/s, diffusers-style loop {sps_d:.1f} samples/s, ratio {sps_u / sps_d:.3f}"
    )
    return {
        "ratio": sps_u / sps_d,
        "unisde_samples_per_s": sps_u,
        "diffusers_samples_per_s": sps_d,
        "batch_size": cfg.training_batch,
        "steps": cfg.training_steps,
        "unet": what,
    }
