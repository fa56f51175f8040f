r"""The speed sections, each a ratio measured side by side in one process: scheduler ``step()`` overhead and the
peak memory of one step, DDPMPipeline end to end, training throughput."""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
import time
import types
import warnings
from collections import deque
from typing import TYPE_CHECKING

import torch

from unisde._tensor import unknown_name_error
from unisde.bench.contestants import _accepts, _unified, base_config
from unisde.bench.report import OVERHEAD_TARGET

if TYPE_CHECKING:
    from unisde.bench.run import BenchConfig

OVERHEAD_PAIRS = (
    ("DDPM", "DDPMScheduler", {}, "ddpm"),
    ("DDIM", "DDIMScheduler", {}, "ddpm"),
    ("PNDM", "PNDMScheduler", {}, "ddpm"),
    ("Euler", "EulerDiscreteScheduler", {}, "ddpm"),
    ("EulerAncestral", "EulerAncestralDiscreteScheduler", {}, "ddpm"),
    ("Heun", "HeunDiscreteScheduler", {}, "ddpm"),
    ("LMS", "LMSDiscreteScheduler", {}, "ddpm"),
    ("KDPM2", "KDPM2DiscreteScheduler", {}, "ddpm"),
    ("KDPM2Ancestral", "KDPM2AncestralDiscreteScheduler", {}, "ddpm"),
    ("DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2}, "ddpm"),
    ("SDE-DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}, "ddpm"),
    ("DPM++2S", "DPMSolverSinglestepScheduler", {}, "ddpm"),
    ("DPMSolverSDE", "DPMSolverSDEScheduler", {}, "ddpm"),
    ("UniPC", "UniPCMultistepScheduler", {}, "ddpm"),
    ("DEIS", "DEISMultistepScheduler", {}, "ddpm"),
    ("SA-Solver", "SASolverScheduler", {}, "ddpm"),
    ("LCM", "LCMScheduler", {}, "ddpm"),
    ("TCD", "TCDScheduler", {}, "ddpm"),
    ("EDMEuler", "EDMEulerScheduler", {}, "edm"),
    ("EDM-DPM++2M", "EDMDPMSolverMultistepScheduler", {"solver_order": 2}, "edm"),
    ("FlowMatchEuler", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "flow"),
    ("FlowMatchHeun", "FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, "flow"),
)
"""(label, diffusers class, its options, the schedule whose config it starts from): every diffusers scheduler a
user can swap for its unisde twin, ``UnifiedScheduler.from_config`` of the diffusers scheduler's config (the same
algorithm: :mod:`unisde.diffusers.converters`), on its class's default settings."""

QUICK_OVERHEAD_PAIRS = ("DDPM", "DDIM", "Euler", "Heun", "DPM++2M", "UniPC", "FlowMatchEuler")
"""The pairs of ``unisde bench --quick`` (one of each kind of step: ancestral, affine, two-stage, multistep,
predictor–corrector, FlowMatch's fused one-pass step)."""

OVERHEAD_SHAPES = ((8, 1, 8, 8), (2, 4, 64, 64), (1, 4096, 64))
"""The sample sizes of the overhead section: a small batch where Python overhead dominates, Stable Diffusion's
64×64 latents (batch 2: classifier-free guidance) and a Flux-style sequence of 4096 tokens × 64 channels."""

MEMORY_SHAPE = (2, 4, 64, 64)
"""The sample size at which the peak memory of one ``step()`` is measured (SD latents)."""

OVERHEAD_TARGETS = {"FlowMatchEuler": 1.0}
"""Per-pair overhead targets where the issue sets one other than :data:`unisde.bench.report.OVERHEAD_TARGET`: FlowMatch
Euler's own step is already one pass (x + (σ' − σ) u), which the twin can only match."""

MEMORY_BUFFERS = 3
"""The memory target: the peak extra memory of one step ≤ this many sample-sized buffers plus the method's history
(what diffusers' scheduler of the algorithm holds between calls; :func:`_memory`)."""


# glibc's mallopt parameters (malloc.h) and the values the speed sections pin them to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
STEADY_MMAP_THRESHOLD = 64 << 20
STEADY_TRIM_THRESHOLD = 128 << 20


def steady_heap() -> str:
    """Pin glibc's heap for the speed sections (for the rest of the process: glibc cannot go back to its dynamic
    thresholds) and say how, for the report; on another C library nothing is changed, and the string says so.

    With glibc's dynamic defaults a freed block at the top of the heap is handed back to the OS once the free space
    there passes the trim threshold, and the next step faults its pages in again. Whether that happens depends on
    what the process allocated before: at 1×4096×64 diffusers' TCD step took 380–530 minor page faults per call in
    such processes (1.6–1.9 ms a call) and 22–26 with the heap pinned (1.4–1.6 ms), unisde's 0–60. Blocks up to 64 MiB
    taken from the heap and a trim threshold of 128 MiB make every run time the arithmetic, not the heap's history;
    it favours the side that allocates more temporaries (diffusers'), so the ratios are conservative."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return "not pinned (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "not pinned (libc.so.6 not found)"
    settings = ((_M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD))
    if not all([libc.mallopt(param, value) == 1 for param, value in settings]):  # both set, whatever the first says
        return "not pinned (mallopt refused)"
    return (
        f"glibc heap pinned: blocks up to {STEADY_MMAP_THRESHOLD >> 20} MiB from the heap, trim threshold "
        f"{STEADY_TRIM_THRESHOLD >> 20} MiB"
    )


def overhead_target(label: str) -> float:
    return OVERHEAD_TARGETS.get(label, OVERHEAD_TARGET)


def overhead_pairs(labels=None) -> list:
    """The rows of :data:`OVERHEAD_PAIRS` named by ``labels`` (None: all), in that table's order; an unknown label
    is a ValueError listing the valid ones."""
    if labels is None:
        return list(OVERHEAD_PAIRS)
    known = [p[0] for p in OVERHEAD_PAIRS]
    for label in labels:
        if label not in known:
            raise unknown_name_error("overhead pair", label, known)
    return [p for p in OVERHEAD_PAIRS if p[0] in labels]


def make_pair(row) -> tuple:
    """(diffusers scheduler, its unisde twin) of one :data:`OVERHEAD_PAIRS` row."""
    import diffusers

    _, cls_name, extra, schedule = row
    peer = getattr(diffusers, cls_name).from_config(base_config(schedule), **extra)
    return peer, _unified(peer.config)


def _pairs(cfg: BenchConfig, log) -> list:
    """(row, diffusers scheduler, unisde twin) per configured pair; a pair whose twin cannot be built here (its
    sampler's plugin is not installed, e.g. ``dpmsolver++``) is left out with a logged reason, not a failed run."""
    out = []
    for row in overhead_pairs(cfg.overhead_pairs):
        try:
            out.append((row, *make_pair(row)))
        except (ValueError, ImportError) as exc:
            log(f"overhead: {row[0]} left out: its unisde twin cannot be built here ({exc})")
    return out


def check_device(device: str) -> torch.device:
    """``device`` as a torch.device the speed sections can time on: the CPU, or an accelerator present here; else a
    ValueError naming it and what to do (before any work)."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if where.type == "cpu":
        return where
    if where.type != "cuda":
        raise ValueError(f"device {device!r}: the speed sections time on cpu or cuda (a CUDA GPU), not {where.type}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: torch.cuda.is_available() is False here (no CUDA GPU, or a CPU build of torch "
            f"{torch.__version__}); run `unisde bench --device cuda` on a machine with one, or leave --device out"
        )
    if where.index is not None and where.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s) here")
    return where


def synchronizer(device: torch.device):
    """A callable that waits for ``device``'s queued work (``torch.cuda.synchronize``): every timed call on an
    accelerator is bracketed by two, so its time is the work it queued, not the launch alone. A no-op on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _time_pair(
    peer, mine, sample, model_output, steps: int, loops: int, seconds: float, device: torch.device | None = None
) -> tuple[float, float, int]:
    """Mean seconds per ``step()`` call of each side over one sampling loop of ``steps`` inference steps.

    The two schedulers walk their loops in lockstep, call by call, the order alternating, each ``step()`` timed
    alone (``scale_model_input`` outside the clock). A first loop warms both up and is not counted; then up to
    ``loops`` loops run (at least one; no new one starts once ``seconds`` have passed since the warm-up began).
    Per call index k the median over loops is taken, and these medians are summed over the loop: robust to a stray
    slow call and to the two populations of a two-stage method (a predictor call and a corrector call differ) where
    the median of all calls would jump between them; the first and last calls (loop start, final checks) count.
    On an accelerator (``device``) the timesteps live there, as a pipeline puts them, and each call is timed from
    a synchronised device to a synchronised device (:func:`synchronizer`)."""
    device = device or sample.device
    sync = synchronizer(device)
    kinds = (peer, mine)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    kw = [({"generator": g} if _accepts(s.step, "generator") else {}) for s, g in zip(kinds, gens)]
    per_loop: list = [[], []]
    started, flip, measured = time.perf_counter(), False, -1  # loop -1: the warm-up
    while measured < loops and (measured < 1 or time.perf_counter() - started < seconds):
        for s in kinds:
            s.set_timesteps(steps, device=device)
        length = min(len(peer.timesteps), len(mine.timesteps))
        times = [[0.0] * length, [0.0] * length]
        for i in range(length):
            order = (1, 0) if flip else (0, 1)
            flip = not flip
            for j in order:
                s = kinds[j]
                t = s.timesteps[i]
                # FlowMatch pipelines call no scale_model_input (the class has none): the model sees x as is
                x = s.scale_model_input(sample, t) if hasattr(type(s), "scale_model_input") else sample
                sync()
                t0 = time.perf_counter()
                s.step(model_output, t, x, **kw[j])
                sync()
                times[j][i] = time.perf_counter() - t0
        if measured >= 0:  # the first loop warms both up and is not counted
            per_loop[0].append(times[0])
            per_loop[1].append(times[1])
        measured += 1
    means = [sum(statistics.median(c) for c in zip(*per_loop[j])) / len(per_loop[j][0]) for j in (0, 1)]
    return means[0], means[1], measured


_RANDOM_OPS = frozenset({"normal", "normal_", "randn", "randn_like"})


def _noise_per_call(scheduler, sample, model_output, steps: int) -> tuple[float, float]:
    """Per ``step()`` call over one loop of ``steps`` inference steps, untimed: (standard normal numbers drawn outside
    any Brownian tree, in units of the sample's size — torch's random ops counted by a dispatch mode; seconds spent
    in Brownian-tree queries — diffusers' ``BrownianTreeNoiseSampler`` (torchsde), timed in a second loop without the
    dispatch mode; unisde's ``dpmpp_sde`` draws the same numbers from its own tree, :mod:`unisde.samplers.brownian`,
    whose draws are counted as plain draws)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    try:
        from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler as Tree
    except ImportError:  # torchsde missing: no Brownian tree anywhere
        Tree = None
    state = {"inside": 0, "tree_s": 0.0, "drawn": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not state["inside"] and func.overloadpacket.__name__ in _RANDOM_OPS and isinstance(out, torch.Tensor):
                state["drawn"] += out.numel()
            return out

    def run(mode):
        kw = {"generator": torch.Generator().manual_seed(1)} if _accepts(scheduler.step, "generator") else {}
        scheduler.set_timesteps(steps)
        with mode:
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(sample, t) if hasattr(type(scheduler), "scale_model_input") else sample
                scheduler.step(model_output, t, x, **kw)
        return len(scheduler.timesteps)

    original = Tree.__call__ if Tree is not None else None

    def timed(self, *args, **kwargs):
        state["inside"] += 1
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            state["tree_s"] += time.perf_counter() - t0
            state["inside"] -= 1

    if Tree is not None:
        Tree.__call__ = timed
    try:
        calls = run(Count())
        state["tree_s"] = 0.0
        run(contextlib.nullcontext())
    finally:
        if Tree is not None:
            Tree.__call__ = original
    return state["drawn"] / sample.numel() / calls, state["tree_s"] / calls


def _randn_seconds(shape, device: torch.device | None = None) -> float:
    """Median time of one sample-sized noise draw (float32) as the schedulers draw it (diffusers' ``randn_tensor``
    with a CPU generator: drawn on the CPU, then moved to ``device``)."""
    from diffusers.utils.torch_utils import randn_tensor

    device = device or torch.device("cpu")
    sync = synchronizer(device)
    g = torch.Generator().manual_seed(0)
    randn_tensor(shape, generator=g, device=device)
    times = []
    for _ in range(7):
        sync()
        t0 = time.perf_counter()
        randn_tensor(shape, generator=g, device=device)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _miss_note(rec: dict, noise: tuple, randn_s: float, unchecked: float | None) -> str:
    """Why a pair misses its target, in numbers: the share of diffusers' step its noise takes — plain draws (their
    count times the measured cost of one sample-sized draw) and Brownian-tree queries (timed) — and the ratio net of
    it (a twin draws the very same numbers as its source, so they cost both sides alike); the ratio without unisde's
    finiteness probe (``check_finite=False``) when it was timed."""
    bits = []
    (d_draws, d_tree), (u_draws, u_tree) = noise
    noise_d, noise_u = d_draws * randn_s + d_tree, u_draws * randn_s + u_tree
    if noise_d > 0:
        what = []
        if d_draws:
            what.append(f"{d_draws:.2g} sample-sized draws per call at {randn_s * 1e6:.0f} µs each")
        if d_tree:
            what.append(f"Brownian-tree queries (torchsde) of {d_tree * 1e6:.0f} µs per call")
        share = min(noise_d / rec["diffusers_s"], 1.0)
        # the ratio of what is left; not shown where that rest is a small difference of noisy times
        net = (
            f"; net of it {max(rec['unisde_s'] - noise_u, 0.0) / (rec['diffusers_s'] - noise_d):.2f}"
            if share <= 0.8
            else ""
        )
        bits.append(f"noise ({', '.join(what)}) takes {share:.0%} of diffusers' step{net}")
    if unchecked is not None:
        bits.append(f"with check_finite=False {unchecked:.2f}")
    return "; ".join(bits)


def _overhead(cfg: BenchConfig, log) -> list:
    """``step()`` time of every pair in ``cfg.overhead_pairs`` at every size in ``cfg.overhead_shapes``."""
    device = check_device(cfg.device)
    out = []
    with warnings.catch_warnings():
        # torchsde warns when a float32 query point falls outside its float64 interval by rounding (both sides)
        warnings.simplefilter("ignore")
        for shape in cfg.overhead_shapes:
            g = torch.Generator().manual_seed(0)
            sample = torch.randn(shape, generator=g).to(device)
            model_output = torch.randn(shape, generator=g).to(device)
            size = "×".join(map(str, shape))
            randn_s = _randn_seconds(shape, device)
            for row, peer, mine in _pairs(cfg, log):
                label, cls_name = row[0], row[1]
                steps, loops, seconds = cfg.overhead_inference_steps, cfg.overhead_loops, cfg.overhead_seconds
                d, u, measured = _time_pair(peer, mine, sample, model_output, steps, loops, seconds, device)
                target = overhead_target(label)
                rec = {
                    "sampler": label,
                    "diffusers_scheduler": cls_name,
                    "unisde_sampler": mine.config.sampler,
                    "shape": list(shape),
                    "unisde_s": u,
                    "diffusers_s": d,
                    "ratio": u / d,
                    "target": target,
                    "met": u / d <= target,
                    "steps": cfg.overhead_inference_steps,
                    "calls": len(peer.timesteps),
                    "loops": measured,
                    "device": str(device),
                }
                if not rec["met"]:  # say why, in numbers
                    noise = tuple(_noise_per_call(s, sample, model_output, steps) for s in (peer, mine))
                    unchecked = None
                    if noise[0][0] * randn_s + noise[0][1] < 0.5 * d:  # not noise-bound: time it without the probe
                        bare = _unified(peer.config, check_finite=False)
                        d2, u2, _ = _time_pair(peer, bare, sample, model_output, steps, loops, seconds, device)
                        unchecked = u2 / d2
                    rec["note"] = _miss_note(rec, noise, randn_s, unchecked)
                out.append(rec)
                log(
                    f"overhead {size}: {label}: unisde {u * 1e6:.1f} µs, diffusers {d * 1e6:.1f} µs, "
                    f"ratio {u / d:.3f} (target ≤ {target})" + (f" — {rec['note']}" if rec.get("note") else "")
                )
    return out


# ====================================================================================== memory of one step
@contextlib.contextmanager
def _quiet_fd2():
    """File descriptor 2 sent to /dev/null (restored afterwards, also on an exception)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(fn, *args, **kwargs) -> tuple:
    """(``fn(*args, **kwargs)``, the peak of the bytes allocated during the call and alive at once).

    Method: torch's profiler with ``profile_memory=True`` on the CPU. Every allocation of torch's CPU allocator during
    the call, and every free of such a buffer, is then a ``[memory]`` event carrying its signed size; the running sum
    of those events in time order is the memory the call added, and its maximum (≥ 0) is the peak. This sees every
    tensor buffer the call allocates, a kernel's workspace included; frees of buffers that existed before the call
    carry no size there and are not subtracted, so the peak is an upper bound when the call drops old buffers first
    (a multistep history entry). Python objects other than tensors are not counted (``tracemalloc`` sees the
    reverse: Python's objects, not torch's buffers). File descriptor 2 is silenced during the call: kineto logs
    every profiler start and stop there, below Python's ``sys.stderr``."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_fd2():
        prof.start()
        try:
            out = fn(*args, **kwargs)
        finally:
            prof.stop()
    cpu = torch.autograd.DeviceType.CPU
    events = sorted(
        (e.start_ns(), i, e.nbytes())
        for i, e in enumerate(prof.profiler.kineto_results.events())
        if e.name() == "[memory]" and e.device_type() == cpu
    )
    live = peak = 0
    for _, _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return out, peak


_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    torch.Generator,
    torch.device,
    torch.dtype,
    str,
    bytes,
    int,
    float,
)


def held_bytes(root, exclude=(), min_bytes: int = 0) -> int:
    """Bytes of the distinct tensor storages reachable from ``root`` (a scheduler: its attributes, containers,
    a running generator's local variables, ``__slots__``), each at least ``min_bytes``, except the storages of the
    tensors in ``exclude``. What a scheduler keeps alive between two ``step()`` calls: a multistep method's history,
    a two-stage method's first stage, a Brownian tree's cache."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set = set()
    storages: dict = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in skip and storage.nbytes() >= min_bytes:
                storages[storage.data_ptr()] = storage.nbytes()
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            stack.extend(obj)
        elif isinstance(obj, types.GeneratorType):
            if obj.gi_frame is not None:
                stack.extend(obj.gi_frame.f_locals.values())
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    stack.append(getattr(obj, name, None))
    return sum(storages.values())


def _memory_of_steps(scheduler, sample, model_output, steps: int) -> list[tuple[float, float]]:
    """Per ``step()`` call of one sampling loop: (peak extra memory during the call, memory the scheduler holds
    after it, the returned sample excluded), both in units of the sample's bytes."""
    unit = sample.numel() * sample.element_size()
    kw = {"generator": torch.Generator().manual_seed(1)} if _accepts(scheduler.step, "generator") else {}
    scheduler.set_timesteps(steps)
    rows = []
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(sample, t) if hasattr(type(scheduler), "scale_model_input") else sample
        result, peak = peak_extra_bytes(scheduler.step, model_output, t, x, **kw)
        # the caller's new sample is the caller's; x̂0 in the output is dropped with it by a pipeline
        held = held_bytes(scheduler, exclude=(result[0],), min_bytes=unit // 4)
        rows.append((peak / unit, held / unit))
        del result
    return rows


def _memory(cfg: BenchConfig, log) -> list:
    """The peak extra memory of one ``step()`` (:func:`peak_extra_bytes`) of every pair in ``cfg.overhead_pairs`` at
    ``cfg.memory_shape``, the most over the calls of a loop of ``cfg.overhead_inference_steps`` steps, against the
    target :data:`MEMORY_BUFFERS` + the method's history. The history is measured on the reference: the most
    sample-sized buffers diffusers' scheduler of the algorithm holds between two calls (:func:`held_bytes`: a
    multistep method's past outputs, a two-stage method's first stage, a Brownian tree's cache). What the unisde
    scheduler holds between calls is reported next to it."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(cfg.memory_shape, generator=g)
    model_output = torch.randn(cfg.memory_shape, generator=g)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row, peer, mine in _pairs(cfg, log):
            label, cls_name = row[0], row[1]
            sides = {}
            for side, scheduler in (("unisde", mine), ("diffusers", peer)):
                rows = _memory_of_steps(scheduler, sample, model_output, cfg.overhead_inference_steps)
                sides[side] = (max(r[0] for r in rows), max(r[1] for r in rows))
            (u_peak, u_held), (d_peak, d_held) = sides["unisde"], sides["diffusers"]
            target = MEMORY_BUFFERS + d_held
            out.append(
                {
                    "sampler": label,
                    "diffusers_scheduler": cls_name,
                    "unisde_sampler": mine.config.sampler,
                    "shape": list(cfg.memory_shape),
                    "unisde_peak": u_peak,
                    "unisde_held": u_held,
                    "diffusers_peak": d_peak,
                    "diffusers_held": d_held,
                    "history": d_held,
                    "target": target,
                    "met": u_peak <= target + 1e-3,  # a few bytes of 0-dim tensors are no buffer
                }
            )
            log(
                f"memory {label}: unisde peak {u_peak:.2f} sample buffers (holds {u_held:.2f} between calls), "
                f"diffusers peak {d_peak:.2f} (holds {d_held:.2f}); target ≤ {target:.2f}"
            )
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


PIPELINE_MODELS = ("digits", "sd-latent")
"""The UNets the pipeline section can run (:func:`pipeline_unet`)."""
SD_LATENT_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
"""The UNet of the pipeline section at SD-latent size (``pipeline_model="sd-latent"``): Stable Diffusion's latent
shape (4 × 64 × 64) on a small random UNet2DModel, so that the scheduler's share of a step is larger than with
SD's own UNet (the ratio is a bound for the real pipeline)."""


def pipeline_unet(kind: str) -> tuple[torch.nn.Module, str]:
    """(UNet, description) of the pipeline section: ``digits`` — the bundled 8×8 UNet; ``sd-latent`` — a random
    UNet at SD-latent size (:data:`SD_LATENT_UNET`, seeded)."""
    if kind == "digits":
        return load_digits_unet()
    if kind == "sd-latent":
        from diffusers import UNet2DModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            unet = UNet2DModel(**SD_LATENT_UNET)
        channels = ", ".join(map(str, SD_LATENT_UNET["block_out_channels"]))
        return unet, f"random UNet2DModel at SD-latent size (4×64×64; block_out_channels {channels})"
    raise unknown_name_error("pipeline model", kind, PIPELINE_MODELS)


def _pipeline(cfg: BenchConfig, log) -> dict:
    from diffusers import DDPMPipeline, DDPMScheduler

    device = check_device(cfg.device)
    sync = synchronizer(device)
    unet, what = pipeline_unet(cfg.pipeline_model)
    unet.eval().to(device)
    peer = DDPMScheduler.from_config(base_config("ddpm"))
    mine = _unified(peer.config)
    pipes = [DDPMPipeline(unet=unet, scheduler=peer), DDPMPipeline(unet=unet, scheduler=mine)]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    times = [[], []]

    def run(i, rep):
        sync()
        t0 = time.perf_counter()
        pipes[i](
            batch_size=cfg.pipeline_batch,
            generator=torch.Generator().manual_seed(rep),
            num_inference_steps=cfg.pipeline_steps,
            output_type="np",  # the images come back to the host: the device's work is done when this returns
        )
        return time.perf_counter() - t0

    with torch.no_grad():
        run(0, 0), run(1, 0)  # warm-up
        for rep in range(cfg.pipeline_reps):
            for i in (0, 1) if rep % 2 == 0 else (1, 0):
                times[i].append(run(i, rep))
    # each repetition runs both pipelines back to back, so its ratio cancels the machine's slower drifts
    ratios = sorted(u / d for d, u in zip(*times))
    ratio = statistics.median(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratio,) * 3
    d, u = statistics.median(times[0]), statistics.median(times[1])
    log(
        f"pipeline: unisde {u:.3f} s, diffusers {d:.3f} s; ratio {ratio:.3f} (median of {len(ratios)} interleaved "
        f"runs; min–max {ratios[0]:.3f}–{ratios[-1]:.3f}, IQR {q1:.3f}–{q3:.3f})"
    )
    return {
        "sampler": "ddpm",
        "diffusers_scheduler": "DDPMScheduler",
        "unisde_s": u,
        "diffusers_s": d,
        "ratio": ratio,
        "ratio_of_medians": u / d,
        "ratios": ratios,
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "ratio_q1": q1,
        "ratio_q3": q3,
        "reps": len(ratios),
        "num_inference_steps": cfg.pipeline_steps,
        "batch_size": cfg.pipeline_batch,
        "unet": what,
        "device": str(device),
    }


def device_settings(device: str) -> dict:
    """The :class:`~unisde.bench.run.BenchConfig` settings of ``unisde bench --device DEVICE``: the speed sections
    on that device — absolute ``step()`` times of every twin pair at SD-latent size (2×4×64×64, 20 inference steps)
    and the DDPMPipeline ratio at SD-latent size (batch 2: classifier-free guidance's; a random UNet,
    :data:`SD_LATENT_UNET`), each timed call synchronised with the device. The accuracy section is
    device-independent (exact float64 arithmetic) and not part of it; the peak memory of one step is the CPU
    allocator's. The device is checked first (:func:`check_device`): a ValueError before any work."""
    check_device(device)
    return dict(
        device=device,
        sections=("overhead", "pipeline"),
        overhead_shapes=(MEMORY_SHAPE,),
        pipeline_model="sd-latent",
        pipeline_batch=2,
        pipeline_steps=50,
    )


def _training(cfg: BenchConfig, log) -> dict:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from unisde.core.schedule import NoiseSchedule
    from unisde.training import make_train_step
    from unisde.training.data import real_digits
    from unisde.training.objectives import adamw

    unet, what = load_digits_unet()
    models = [copy.deepcopy(unet), copy.deepcopy(unet)]
    data = real_digits(8)
    batch = data[: cfg.training_batch]
    if batch.shape[0] < cfg.training_batch:
        batch = data[torch.arange(cfg.training_batch) % data.shape[0]]
    batch = batch.to(models[0].dtype)

    # train_unconditional.py's hyperparameters on both sides; each side builds its optimizer as its own training
    # script does: the example torch's default AdamW, unisde's training unisde.training.objectives.adamw (fused)
    hyper = dict(lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    noise_scheduler = DDPMScheduler.from_config(base_config("ddpm"))
    opt_d = torch.optim.AdamW(models[0].parameters(), **hyper)
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
        optimizer=adamw(models[1].parameters(), **hyper),
        max_grad_norm=1.0,
    )
    fused = bool(unisde_step.optimizer.defaults.get("fused"))
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
        "optimizers": {"diffusers": "torch.optim.AdamW", "unisde": f"unisde.training.objectives.adamw (fused={fused})"},
    }
