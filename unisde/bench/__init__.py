r"""Benchmarks against diffusers (issue 5) and k-diffusion (issue 12; when installed, ``pip install 'unisde[bench]'``):
sampler accuracy per model evaluation against exact ground truth, scheduler ``step()`` overhead, end-to-end
DDPMPipeline time and training throughput.

Accuracy
--------
Every contestant samples the same exact model — the analytic denoiser of :mod:`unisde.analytic` wrapped as
the raw output of an ε-model (diffusers' default DDPM table: linear β, 1000 steps) or of the EDM-preconditioned
model (EDMEulerScheduler's σ ∈ [0.002, 80], Karras et al. 2022, eqs. 7–8, Table 1 [EDM])
— so the only error left is the sampler's. The two bundled trained checkpoints (``digits-vp``: the DDPM table and ε;
``digits-flow``: the rectified flow) are targets too, each on its own schedule: the trajectory error against the
network's own probability-flow ODE solved from the same starts, with the Fréchet distance to the real digits
alongside (:func:`unisde.bench.accuracy.measure_checkpoint`). It is measured without sampling noise wherever possible
(:mod:`unisde.bench.exact`): on Gaussian targets the exact W₂ (and KL) of the sampler's exact output law
N(b, A Aᵀ) — the sampler is affine in its start and noise draws, which are prescribed — for deterministic and
stochastic contestants alike; on other targets the trajectory error of deterministic contestants against the
converged probability-flow ODE from the same starts. Stochastic contestants on mixtures (and runs that are not
affine) keep the sliced Wasserstein-2 distance

    SW₂(X, Y)² = E_θ W₂²(θᵀX, θᵀY)   (θ uniform on the unit sphere; a fixed set of ``projections`` directions)

to one fixed set of exact samples, against its *noise floor* (the same distance between two independent exact
sets of the same size; mean and standard deviation over three pairs). A stochastic unisde sampler is raced on its
other time grids there up to ``BenchConfig.sampled_variants_max_nfe`` (20) only: beyond it that metric reads the
floor, not the grid. The report prints, per NFE, the best
unisde vs the best peer (diffusers or k-diffusion) result on the noise-free metric against the targets ≤ 0.67× at
NFE ≤ 10 and ≤ 1.0× at NFE 20 and 50 (:func:`unisde.bench.accuracy.comparisons`).

NFE is counted honestly: every call of the model is counted by the model itself (``ExactModel.nfe``), and a
contestant's ``num_inference_steps`` is the largest one whose counted calls do not exceed the NFE budget (so
Heun's 2n − 1 calls, correctors and per-level Langevin steps all count).

Overhead, pipeline, training
----------------------------
* ``step()`` alone: every diffusers scheduler a user can swap for its unisde twin (``UnifiedScheduler.from_config``
  of its config; :data:`unisde.bench.speed.OVERHEAD_PAIRS`) at three sample sizes (8×1×8×8, SD latents 2×4×64×64,
  Flux-style 1×4096×64 tokens; ``--quick``: a few pairs at the small size), on a fixed float32 sample and model
  output. The two walk sampling loops in lockstep, call by call (order alternating); per call index the median
  over loops, summed over the loop, is the mean cost of one call. Targets: ratio ≤ 0.8 (≤ 1.0 for FlowMatch
  Euler); a miss is explained in numbers (the noise draws' share, the ratio with ``check_finite=False``).
* The peak extra memory of one ``step()`` at the SD size, from torch's profiler (``profile_memory``: every CPU
  allocation and free), in sample-sized buffers, against 3 + the method's history (what diffusers' scheduler holds
  between calls).
* DDPMPipeline end to end with the bundled digits UNet (a random UNet2DModel of the training command's
  default config when no bundled one is found), ≥ 11 repetitions, each running both pipelines back to back (order
  alternating); the median of the repetitions' ratios, with its min–max and IQR. Target ≤ 1.0.
* Training: samples/s of :func:`unisde.training.make_train_step` vs a loop written as diffusers'
  ``train_unconditional.py`` writes it (randint timesteps, ``add_noise``, ε-MSE, backward, grad-norm clip at
  1, AdamW(β = (0.95, 0.999), weight decay 1e-6)), on two identical copies of one UNet, steps interleaved.

On an accelerator (``unisde bench --device cuda``, :func:`unisde.bench.speed.device_settings`): the ``step()``
times of every twin pair at SD-latent size and the DDPMPipeline ratio at SD-latent size (batch 2, a random UNet
at 4×64×64), each timed call bracketed by ``torch.cuda.synchronize``; a device that is not present is a ValueError
before any work. The tests never need one (the same code path runs on the CPU in ``tests/test_bench_device.py``).

torch runs single-threaded throughout (``torch.set_num_threads(1)``, restored afterwards): a step is a handful
of element-wise kernels on 131k elements and the benchmark models are small, so intra-op threading buys little,
while on a shared machine (the 2-core CI box this was written on) threads spinning against other processes made
the same call up to 10× slower and noisy. Both sides of every ratio run under the same setting. The accuracy
section, whose numbers do not depend on timing, runs its cells (target × schedule) in ``BenchConfig.workers``
such single-threaded processes (two in the full and medium presets, ``--workers``): the same records, in the same
order, as one process gives; the speed sections run after it, alone, with glibc's heap pinned
(:func:`unisde.bench.speed.steady_heap`): left to its dynamic thresholds, whether a step's freed temporaries fault
in again at the next step depended on the process's history (diffusers' TCD step at 1×4096×64: 1.4 ms a call in
one full run, 4.1 ms in the next).

:func:`run_benchmarks` returns the JSON-able results; :func:`render_markdown` and :func:`plot_accuracy` turn
them into ``BENCHMARKS.md`` and its figure.

Modules
-------
* :mod:`unisde.bench.targets`: the exact data distributions and :class:`ExactModel`, the perfect network.
* :mod:`unisde.bench.metrics`: sliced W₂ and its fixed projection directions.
* :mod:`unisde.bench.exact`: exact output laws on Gaussian targets, closed-form W₂ / KL, the converged PF-ODE
  reference of the trajectory metric, and the run harness that prescribes every noise draw.
* :mod:`unisde.bench.contestants`: what is raced (unisde samplers, diffusers schedulers and k-diffusion's sampler
  functions, with their unisde twins) and the sampling loop that runs a contestant within an NFE budget.
* :mod:`unisde.bench.kdiffusion`: k-diffusion's ``sampling`` module, its functions as peers on the exact VE-view
  denoiser (NFE counted per run) and the unisde twins run the same way.
* :mod:`unisde.bench.accuracy`: the accuracy section (metric per target and contestant, best-vs-best ratios).
* :mod:`unisde.bench.speed`: the overhead, pipeline and training sections.
* :mod:`unisde.bench.run`: :class:`BenchConfig` and :func:`run_benchmarks`.
* :mod:`unisde.bench.report`: ``BENCHMARKS.md`` and its figure.
"""

from unisde.bench.contestants import (
    SAMPLER_VARIANTS,
    SCHEDULES,
    UNISDE_GRIDS,
    Contestant,
    base_config,
    diffusers_contestants,
    kdiffusion_available,
    kdiffusion_contestants,
    sample_loop,
    steps_for_nfe,
    unisde_contestants,
)
from unisde.bench.metrics import projection_directions, sliced_w2
from unisde.bench.report import (
    OVERHEAD_TARGET,
    PIPELINE_TARGET,
    TRAINING_TARGET,
    agreement_rows,
    best_by_library,
    plot_accuracy,
    render_markdown,
)
from unisde.bench.run import FULL_NFE, QUICK_NFE, SECTIONS, BenchConfig, run_benchmarks
from unisde.bench.speed import BUNDLED_UNET_PATHS, OVERHEAD_PAIRS, load_digits_unet
from unisde.bench.targets import TARGETS, ExactModel, make_target

__all__ = [
    "BUNDLED_UNET_PATHS",
    "FULL_NFE",
    "OVERHEAD_PAIRS",
    "OVERHEAD_TARGET",
    "PIPELINE_TARGET",
    "QUICK_NFE",
    "SAMPLER_VARIANTS",
    "SCHEDULES",
    "SECTIONS",
    "TARGETS",
    "TRAINING_TARGET",
    "UNISDE_GRIDS",
    "BenchConfig",
    "Contestant",
    "ExactModel",
    "agreement_rows",
    "base_config",
    "best_by_library",
    "diffusers_contestants",
    "kdiffusion_available",
    "kdiffusion_contestants",
    "load_digits_unet",
    "make_target",
    "plot_accuracy",
    "projection_directions",
    "render_markdown",
    "run_benchmarks",
    "sample_loop",
    "sliced_w2",
    "steps_for_nfe",
    "unisde_contestants",
]
