r"""The functional API: run any registered sampler on a model or a denoiser, without diffusers.

    x0 = unisde.sample(unet, torch.randn(4, 3, 32, 32), schedule="vp-linear", parameterization="epsilon",
                       sampler="edm", num_inference_steps=18)

This drives the very same sampler loop as :class:`unisde.UnifiedScheduler` (one ``send`` per model
evaluation), so the two give the same answers; what the step API cannot do, it can: a ``noise_sampler`` that
replaces every noise draw (the exact-law benchmarks feed prescribed draws through it), and a ``callback`` per
evaluation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from unisde.core.schedule import NoiseSchedule
from unisde.parameterizations.base import denoised_from_output, fed_timesteps

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]

FINITE_PROBE = 1024  # elements read per finiteness check of a large tensor


def probe_is_deferred(x: torch.Tensor) -> bool:
    """Whether :func:`finite_probe` of ``x`` returns a device flag to be read later (off the CPU) rather than a
    bool now."""
    return not x.is_cpu


def finite_probe(x: torch.Tensor):
    """Whether ``x`` is free of NaN/inf, judged on a strided probe of ~1k elements for large contiguous tensors (a
    few µs; a NaN or inf spreading through an output is caught at the step it appears, and the loop's final sample
    is checked in full). On the CPU: a bool, now. On other devices: a 0-dim bool tensor to be read later, so that
    checking costs no device synchronisation per step.

    The fast CPU test is that the probe's sum is finite (a finite sum means no element is NaN or ±inf); only when
    it is not — a real NaN/inf, or finite float16 values whose sum overflows (1024 × 100 > 65504) — are the elements
    themselves tested, so finite outputs of any magnitude pass."""
    n = x.numel()
    probe = x.as_strided((FINITE_PROBE,), (n // FINITE_PROBE,)) if n > 2 * FINITE_PROBE and x.is_contiguous() else x
    if not probe_is_deferred(x):
        return math.isfinite(probe.sum().item()) or bool(torch.isfinite(probe).all())
    return torch.isfinite(probe).all()


def probe_is_complete(x: torch.Tensor) -> bool:
    """Whether :func:`finite_probe` of ``x`` reads every element (small or non-contiguous tensors)."""
    return x.numel() <= 2 * FINITE_PROBE or not x.is_contiguous()


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of ``x`` is finite, read now (one device synchronisation off the CPU). Same test as
    :func:`finite_probe` on every element: a finite sum means no NaN or ±inf; only a non-finite sum (a real NaN/inf,
    or finite values whose sum overflows) has the elements tested. One read pass and a scalar, where
    ``torch.isfinite(x).all()`` writes a boolean tensor first (8× slower on a 1×4096×64 CPU sample)."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def check_sampler_output(sampler, out, like: torch.Tensor, k: int) -> None:
    """A ValueError naming the sampler and the distribution that provides it unless what its loop yielded or
    returned after model evaluation ``k`` is a tensor of the sample's shape, dtype and device."""
    if (
        isinstance(out, torch.Tensor)
        and out.shape == like.shape
        and out.dtype == like.dtype
        and out.device == like.device
    ):
        return
    from unisde.plugins import describe_origin

    if isinstance(out, torch.Tensor):
        got = f"a tensor of shape {tuple(out.shape)}, {out.dtype} on {out.device}"
    else:
        got = "None" if out is None else f"a {type(out).__name__}"
    raise ValueError(
        f"{describe_origin('sampler', sampler)} returned {got} after model evaluation {k}; expected a "
        f"tensor like the sample: shape {tuple(like.shape)}, {like.dtype} on {like.device}. This is a bug "
        "in the sampler's loop: report it to the distribution named here"
    )


def non_finite_origin(
    where: str,
    sample: torch.Tensor,
    output: torch.Tensor | None,
    output_name: str,
    denoised: torch.Tensor | None,
    sampler,
) -> str:
    """Which input made the sampler's new sample non-finite at ``where`` (e.g. "step 3 (timestep 499)"). Called
    only once the new sample's probe failed, so these full checks cost nothing in a normal run: the sample passed
    in, the model output, x̂0 computed from it (an overflow of a low-precision dtype), or else the sampler."""
    if not bool(torch.isfinite(sample).all()):
        return f"the sample passed in at {where} contains NaN or inf"
    if output is not None and not bool(torch.isfinite(output).all()):
        return f"the {output_name} at {where} contains NaN or inf"
    if denoised is not None and not bool(torch.isfinite(denoised).all()):
        return (
            f"x̂0 computed from the {output_name} at {where} contains inf although the output is finite: it "
            f"overflows {sample.dtype} (sample in float32 or bfloat16)"
        )
    from unisde.plugins import describe_origin

    return (
        f"the sample returned by {describe_origin('sampler', sampler)} after {where} contains NaN or inf although "
        "its inputs are finite: a bug or a numerical limit of the sampler (report it to the distribution named "
        "here)"
    )


def split_denoised(sampler, out, like: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(guided x̂0, unconditional x̂0 or None) from what the denoiser returned at evaluation ``k``: the pair (D, U) for a
    sampler with ``needs_uncond`` (CFG++), one tensor for every other sampler, each of the sample's shape; otherwise a
    ValueError naming the sampler and what to pass."""
    needs = getattr(sampler, "needs_uncond", False)
    name = getattr(sampler, "name", type(sampler).__name__)
    pair = isinstance(out, (tuple, list))
    if needs and not pair:
        from unisde.plugins import get_sampler

        got = "a single tensor" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        base = name.removesuffix("_cfg_pp")  # the CFG++ samplers' base sampler, by ComfyUI's naming
        known = base != name and _registered(get_sampler, base)
        hint = f", or sampler {base!r} with the guided x̂0 alone" if known else ""
        raise ValueError(
            f"sampler {name!r} (CFG++) needs the unconditional x̂0 as well as the guided one, but the denoiser "
            f"returned {got} at evaluation {k}: pass denoiser=lambda x, t: (guided, unconditional), e.g. "
            "(u + w·(c − u), u) with c, u the conditional and unconditional x̂0, or a model returning (guided output, "
            f"unconditional output){hint}"
        )
    if pair and not needs:
        from unisde.plugins import list_guided_samplers

        raise ValueError(
            f"the denoiser returned a {type(out).__name__} of {len(out)} at evaluation {k}, but sampler {name!r} takes "
            "one x̂0: return the guided x̂0 alone (classifier-free guidance combined), or use a sampler that reads the "
            f"unconditional x̂0 too: {list_guided_samplers()}"
        )
    parts = tuple(out) if pair else (out,)
    if len(parts) != (2 if needs else 1) or any(
        not isinstance(p, torch.Tensor) or p.shape != like.shape for p in parts
    ):
        got = tuple(tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__ for p in parts)
        raise ValueError(
            f"the denoiser returned {got if pair else got[0]} at evaluation {k}; expected "
            + ("(guided x̂0, unconditional x̂0), each" if needs else "x̂0")
            + f" of the sample's shape {tuple(like.shape)}"
        )
    return (parts[0], parts[1]) if needs else (parts[0], None)


def _registered(get_sampler, name: str) -> bool:
    try:
        get_sampler(name)
    except ValueError:
        return False
    return True


def run_loop(
    sampler,
    x: torch.Tensor,
    denoise: Denoiser,
    start: int = 0,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Drive ``sampler.loop`` from evaluation ``start``: ``denoise(x, k)`` returns x̂0 at evaluation k (the k-th of
    the times ``sampler.prepare`` returned); returns the loop's final sample. ``sampler.prepare`` must have run.
    For a sampler with ``needs_uncond`` (the CFG++ samplers) ``denoise`` returns the pair (guided x̂0, unconditional
    x̂0) and the unconditional one is set as ``sampler.uncond_denoised`` during the send; a single tensor there, or a
    pair for any other sampler, is a ValueError at the first evaluation, before any step.

    Every sample the loop hands back must be a tensor of x's shape, dtype and device (else a ValueError naming the
    sampler and its distribution). With ``check_finite`` x̂0 and each new sample are probed for NaN/inf as
    :class:`unisde.UnifiedScheduler` does (:func:`finite_probe`: at once on the CPU, at the end elsewhere), and the
    ValueError says at which evaluation, and in what, it first appeared."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"the sample must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.device.type == "meta":
        raise ValueError("the sample is on the meta device (a tensor without data): move it to a real device first")
    like = x
    deferred = []  # (evaluation, what, flag) on devices other than the CPU
    loop = sampler.loop(x, start)
    x = next(loop)
    check_sampler_output(sampler, x, like, start)
    k = start
    while True:
        denoised, uncond = split_denoised(sampler, denoise(x, k), x, k)
        if check_finite:
            for estimate, what in ((denoised, "denoised estimate"), (uncond, "unconditional denoised estimate")):
                ok = True if estimate is None else finite_probe(estimate)
                if ok is False:
                    raise ValueError(
                        f"the {what} (model output) at evaluation {k} contains NaN or inf; "
                        "sampling stopped before it reached the sample"
                    )
                if ok is not True:
                    deferred.append((k, f"the {what} (model output)", ok))
        if callback is not None:
            callback(k, x, denoised)
        sampler.uncond_denoised = uncond  # CFG++ samplers read it during this send; None for the others
        try:
            new, done = loop.send((x, denoised)), False
        except StopIteration as stop:
            new, done = stop.value, True
        finally:
            sampler.uncond_denoised = None  # never left for a later send or another driver
        check_sampler_output(sampler, new, like, k)
        if check_finite:
            ok = finite_probe(new)
            if ok is False:
                raise ValueError(non_finite_origin(f"evaluation {k}", x, None, "denoised estimate", denoised, sampler))
            if ok is not True:
                deferred.append((k, "the sample returned by the sampler", ok))
        if done:
            if deferred:  # one synchronisation for the whole loop
                bad = (~torch.stack([flag for _, _, flag in deferred])).nonzero()
                if bad.numel():
                    j, what, _ = deferred[int(bad[0])]
                    raise ValueError(f"{what} at evaluation {j} contained NaN or inf")
            if check_finite and not bool(torch.isfinite(new).all()):
                raise ValueError("the final sample contains NaN or inf")
            return new
        x, k = new, k + 1


def sample(
    model: Callable | None,
    noise: torch.Tensor,
    *,
    schedule="vp-linear",
    parameterization="epsilon",
    sampler: str = "ddim",
    num_inference_steps: int | None = None,
    timesteps=None,
    sigmas=None,
    time_grid: str | None = None,
    grid_options: dict | None = None,
    sampler_options: dict | None = None,
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample from ``model`` starting at standard normal ``noise`` (scaled here to the first evaluation time's
    √(s² + σ²), i.e. ``UnifiedScheduler.init_noise_sigma``); returns the final sample in data units.

    model: ``model(model_input, model_timestep) -> raw output`` (a diffusers UNet works: an output with a
        ``.sample`` attribute is unwrapped); its output means what ``parameterization`` says.
    denoiser: instead of ``model``, ``denoiser(x, t) -> x̂0`` with t the time in [0, 1] (e.g.
        :class:`unisde.analytic.Gaussian`'s exact denoiser); then ``parameterization`` only sets the timestep
        convention of ``timesteps``.
    A CFG++ sampler (``unisde.plugins.list_guided_samplers()``: ``euler_cfg_pp``, ``dpmpp_2m_cfg_pp``, …;
        :mod:`unisde.samplers.cfg_pp`) needs the unconditional x̂0 as well as the guided one: its ``denoiser``
        returns the pair (guided x̂0, unconditional x̂0), e.g. ``(u + w * (c - u), u)``, or its ``model`` the pair of
        raw outputs (guided, unconditional), each converted to x̂0 with the same coefficients. A single tensor there,
        or a pair for any other sampler, is a ValueError at the first evaluation, before any step.
    schedule: a name, a dict or a :class:`NoiseSchedule`; parameterization: a registered name or instance.
    sampler / sampler_options: any registered sampler and its options; ``"dpm_adaptive"`` (adaptive step size,
        no fixed grid) runs :func:`sample_adaptive` on the interval of the grid described here.
    num_inference_steps | timesteps | sigmas: exactly one, as for ``UnifiedScheduler.set_timesteps``
        (``sigmas`` are VE-view noise levels σ̃ = σ/s).
    time_grid / grid_options: the grid for ``num_inference_steps`` (default: the sampler's preference, else
        ``leading`` as UnifiedScheduler's default config).
    generator: drives the noise draws exactly as in the scheduler; noise_sampler: ``noise_sampler(x) -> z``
        replaces every draw (k-diffusion's ``noise_sampler``).
    callback: ``callback(k, x, x̂0)`` after each evaluation.
    """
    from unisde.grids import build_grid
    from unisde.plugins import get_parameterization, get_sampler, list_adaptive_samplers

    if isinstance(sampler, str) and sampler in list_adaptive_samplers():  # no fixed grid: its own driver
        return sample_adaptive(
            model,
            noise,
            schedule=schedule,
            parameterization=parameterization,
            sampler=sampler,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            sigmas=sigmas,
            time_grid=time_grid,
            grid_options=grid_options,
            sampler_options=sampler_options,
            denoiser=denoiser,
            generator=generator,
            noise_sampler=noise_sampler,
            callback=callback,
        )[0]
    if (model is None) == (denoiser is None):
        raise ValueError("pass exactly one of model and denoiser")
    sched = schedule if isinstance(schedule, NoiseSchedule) else NoiseSchedule.from_config(schedule)
    param = get_parameterization(parameterization)
    smp = get_sampler(sampler)(sched, **(sampler_options or {}))
    kind = time_grid or (smp.default_grid if smp.default_grid != "config" else "leading")
    grid = build_grid(
        sched,
        param,
        num_inference_steps=num_inference_steps,
        timesteps=timesteps,
        sigmas=sigmas,
        kind=kind,
        **(grid_options or {}),
    )
    eval_t = smp.prepare(grid)
    smp.generator, smp.noise_sampler = generator, noise_sampler
    t0 = torch.tensor([smp.noise_time(eval_t[0])], dtype=torch.float64)
    s0, sigma0 = sched.s(t0), sched.sigma(t0)  # exact, also where s(1) = 0
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
            return _denoised_from_model(model, smp, x, c_in[k], model_t[k], a[k], b[k])

    return run_loop(smp, x, denoise, callback=callback)


def _denoised_from_model(model, smp, x: torch.Tensor, c_in: float, model_t: torch.Tensor, a: float, b: float):
    """x̂0 from one call of a network-shaped ``model(model_input, model_timestep)`` at x with the parameterisation's
    input scale ``c_in``, fed timestep ``model_t`` and output coefficients x̂0 = a x + b F (Python floats). A pair of
    outputs of one shape (guided, unconditional: the CFG++ samplers') gives the pair of x̂0, checked by
    :func:`split_denoised`."""
    out = model(x * c_in if c_in != 1.0 else x, model_t.to(x.device))
    out = getattr(out, "sample", out)
    if isinstance(out, (tuple, list)) and len(out) == 2:
        pair = [getattr(o, "sample", o) for o in out]
        if all(isinstance(o, torch.Tensor) for o in pair) and pair[0].shape == pair[1].shape:
            uncond = _denoised_from_output(smp, x, pair[1], a, b)
            return _denoised_from_output(smp, x, pair[0], a, b), uncond  # guided last: its extra channels stay
    if isinstance(out, tuple):
        out = out[0]
    return _denoised_from_output(smp, x, out, a, b)


def _denoised_from_output(smp, x: torch.Tensor, out: torch.Tensor, a: float, b: float) -> torch.Tensor:
    if out.shape != x.shape and out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
        out, smp.extra = torch.split(out, x.shape[1], dim=1)  # a learned variance in the extra channels
    out = out.to(x.dtype)
    return denoised_from_output(x, out, a, b)


def sample_adaptive(
    model: Callable | None,
    noise: torch.Tensor,
    *,
    schedule="vp-linear",
    parameterization="epsilon",
    sampler: str = "dpm_adaptive",
    num_inference_steps: int | None = None,
    timesteps=None,
    sigmas=None,
    time_grid: str | None = None,
    grid_options: dict | None = None,
    sampler_options: dict | None = None,
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Run an adaptive-step sampler (``unisde.plugins.list_adaptive_samplers()``: ``dpm_adaptive``,
    :mod:`unisde.samplers.dpm_adaptive`), whose evaluation times depend on the model's outputs; returns
    ``(sample, info)`` with info as k-diffusion's ``return_info``: ``nfe`` (model evaluations), ``steps`` (attempts),
    ``n_accept``, ``n_reject``.

    The arguments are :func:`sample`'s. The grid they describe (default grid: the sampler's, ``karras``) only sets
    the interval: from its first time (where ``noise`` is scaled to √(s² + σ²), as in :func:`sample`) down to its
    last positive noise level — ``sigmas=[σ̃_max, σ̃_min]`` is k-diffusion's ``sample_dpm_adaptive(model, x, sigma_min,
    sigma_max)``. ``callback(k, x, x̂0)`` is called after each evaluation."""
    from unisde.grids import build_grid
    from unisde.plugins import get_adaptive_sampler, get_parameterization

    sampler_cls = get_adaptive_sampler(sampler)
    if (model is None) == (denoiser is None):
        raise ValueError("pass exactly one of model and denoiser")
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        got = getattr(noise, "dtype", type(noise).__name__)
        raise ValueError(f"the noise must be a floating-point tensor, got {got}")
    sched = schedule if isinstance(schedule, NoiseSchedule) else NoiseSchedule.from_config(schedule)
    param = get_parameterization(parameterization)
    smp = sampler_cls(sched, **(sampler_options or {}))
    grid = build_grid(
        sched,
        param,
        num_inference_steps=num_inference_steps,
        timesteps=timesteps,
        sigmas=sigmas,
        kind=time_grid or smp.default_grid,
        **(grid_options or {}),
    )
    first = smp.prepare(grid)
    smp.generator, smp.noise_sampler = generator, noise_sampler
    s0, sigma0 = sched.s(first), sched.sigma(first)
    x = noise * float(torch.sqrt(s0**2 + sigma0**2))

    def denoise(x, t: float):
        times = torch.tensor([t], dtype=torch.float64)
        if denoiser is not None:
            return denoiser(x, times.expand(x.shape[0]))
        a, b = (float(v) for v in param.coefficients(sched, times))
        c_in = float(param.input_scale(sched, times))
        model_t = fed_timesteps(param.model_time(sched, times), sched)[0]
        return _denoised_from_model(model, smp, x, c_in, model_t, a, b)

    loop = smp.loop(x)
    x, t = next(loop)
    k = 0
    while True:
        denoised = denoise(x, t)
        if not isinstance(denoised, torch.Tensor) or denoised.shape != x.shape:
            got = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
            raise ValueError(f"the denoiser returned {got} at evaluation {k}; expected x̂0 of the sample's shape")
        if not bool(torch.isfinite(denoised).all()):  # the loop reads a norm per attempt anyway: no extra sync
            raise ValueError(
                f"the denoised estimate (model output) at evaluation {k} (t = {t:.6g}) contains NaN or inf"
            )
        if callback is not None:
            callback(k, x, denoised)
        try:
            x, t = loop.send((x, denoised))
        except StopIteration as stop:
            out = stop.value
            break
        k += 1
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the final sample contains NaN or inf")
    return out, dict(smp.info)
