r"""The functional API: run any registered sampler on a model or a denoiser, without diffusers.

    x0 = unisde.sample(unet, torch.randn(4, 3, 32, 32), schedule="vp-linear", parameterization="epsilon",
                       sampler="edm", num_inference_steps=18)

This drives the very same sampler loop as :class:`unisde.UnifiedScheduler` (one ``send`` per model
evaluation), so the two give the same answers; what the step API cannot do, it can: a ``noise_sampler`` that
replaces every noise draw (the exact-law benchmarks feed prescribed draws through it), and a ``callback`` per
evaluation.
"""

from __future__ import annotations

from typing import Callable

import torch

from unisde.core.schedule import NoiseSchedule
from unisde.parameterizations.base import fed_timesteps

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


def run_loop(sampler, x: torch.Tensor, denoise: Denoiser, start: int = 0,
             callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Drive ``sampler.loop`` from evaluation ``start``: ``denoise(x, k)`` returns x̂0 at evaluation k (the k-th of
    the times ``sampler.prepare`` returned); returns the loop's final sample. ``sampler.prepare`` must have run."""
    loop = sampler.loop(x, start)
    x = next(loop)
    k = start
    while True:
        denoised = denoise(x, k)
        if callback is not None:
            callback(k, x, denoised)
        try:
            x = loop.send((x, denoised))
        except StopIteration as done:
            return done.value
        k += 1


def sample(model: Callable | None, noise: torch.Tensor, *, schedule="vp-linear", parameterization="epsilon",
           sampler: str = "ddim", num_inference_steps: int | None = None, timesteps=None, sigmas=None,
           time_grid: str | None = None, grid_options: dict | None = None, sampler_options: dict | None = None,
           denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           generator: torch.Generator | None = None, noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Sample from ``model`` starting at standard normal ``noise`` (scaled here to the first evaluation time's
    √(s² + σ²), i.e. ``UnifiedScheduler.init_noise_sigma``); returns the final sample in data units.

    model: ``model(model_input, model_timestep) -> raw output`` (a diffusers UNet works: an output with a
        ``.sample`` attribute is unwrapped); its output means what ``parameterization`` says.
    denoiser: instead of ``model``, ``denoiser(x, t) -> x̂0`` with t the time in [0, 1] (e.g.
        :class:`unisde.analytic.Gaussian`'s exact denoiser); then ``parameterization`` only sets the timestep
        convention of ``timesteps``.
    schedule: a name, a dict or a :class:`NoiseSchedule`; parameterization: a registered name or instance.
    sampler / sampler_options: any registered sampler and its options.
    num_inference_steps | timesteps | sigmas: exactly one, as for ``UnifiedScheduler.set_timesteps``
        (``sigmas`` are VE-view noise levels σ̃ = σ/s).
    time_grid / grid_options: the grid for ``num_inference_steps`` (default: the sampler's preference, else
        ``leading`` as UnifiedScheduler's default config).
    generator: drives the noise draws exactly as in the scheduler; noise_sampler: ``noise_sampler(x) -> z``
        replaces every draw (k-diffusion's ``noise_sampler``).
    callback: ``callback(k, x, x̂0)`` after each evaluation.
    """
    from unisde.grids import build_grid
    from unisde.plugins import get_parameterization, get_sampler

    if (model is None) == (denoiser is None):
        raise ValueError("pass exactly one of model and denoiser")
    sched = schedule if isinstance(schedule, NoiseSchedule) else NoiseSchedule.from_config(schedule)
    param = get_parameterization(parameterization)
    smp = get_sampler(sampler)(sched, **(sampler_options or {}))
    kind = time_grid or (smp.default_grid if smp.default_grid != "config" else "leading")
    grid = build_grid(sched, param, num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas,
                      kind=kind, **(grid_options or {}))
    eval_t = smp.prepare(grid)
    smp.generator, smp.noise_sampler = generator, noise_sampler
    s0, sigma0 = sched.s(eval_t[:1]), sched.sigma(eval_t[:1])  # exact, also where s(1) = 0
    x = noise * float(torch.sqrt(s0**2 + sigma0**2))
    if denoiser is not None:
        times = [torch.tensor(float(t), dtype=torch.float64) for t in eval_t]

        def denoise(x, k):
            return denoiser(x, times[k].expand(x.shape[0]))
    else:
        a, b = ([float(u) for u in v] for v in param.coefficients(sched, eval_t))
        c_in = [float(v) for v in param.input_scale(sched, eval_t)]
        model_t = param.model_time(sched, eval_t)
        model_t = fed_timesteps(model_t, sched)  # the values UnifiedScheduler feeds (int64 on a table's indices)

        def denoise(x, k):
            out = model(x * c_in[k] if c_in[k] != 1.0 else x, model_t[k].to(x.device))
            out = getattr(out, "sample", out)
            if isinstance(out, tuple):
                out = out[0]
            if out.shape != x.shape and out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
                out, smp.extra = torch.split(out, x.shape[1], dim=1)  # a learned variance in the extra channels
            out = out.to(x.dtype)
            return (out if b[k] == 1.0 else out * b[k]) if a[k] == 0.0 else torch.add(x * a[k], out, alpha=b[k])
    return run_loop(smp, x, denoise, callback=callback)
