"""k-diffusion's sampler functions as a reference and a benchmark peer.

k-diffusion (Crowson, ``pip install k-diffusion``; ``make install-test`` installs it with ``--no-deps``) keeps its
samplers in ``k_diffusion/sampling.py``, whose own imports are torch, scipy, torchdiffeq, torchsde and tqdm; the
package's ``__init__`` imports its training stack as well (kornia, clip, wandb, clean-fid …). :func:`load_sampling`
imports ``sampling`` alone, unmodified. ``pip install 'unisde[bench]'`` installs k-diffusion (with its whole
dependency list) and the modules ``sampling`` imports; ``pip install --no-deps k-diffusion`` next to the extra is
the light install, as ``make install-test`` does.

In ``unisde bench`` k-diffusion's deterministic samplers are peers of their own (library ``k-diffusion``):
:class:`KDiffusionPeer` runs its functions (:data:`KDIFFUSION_SAMPLERS`) on its grids (:data:`KDIFFUSION_GRIDS`)
over the schedule's σ̃ range on the exact denoiser in the VE view, counting the model calls; :class:`UnisdeTwin`
runs the unisde sampler of the same algorithm the same way, for the report's agreement rows.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import sys
import types
from contextlib import contextmanager

import torch


def load_sampling():
    """k-diffusion's ``sampling`` module, imported without the package ``__init__``; None when k-diffusion is not
    installed. ``sampling`` imports ``utils`` for ``append_dims``, and ``utils`` imports torchvision at module level
    for image helpers that sampling never calls: when torchvision is missing, an empty placeholder stands in
    during that import only (libraries probe for torchvision with ``find_spec``, which a leftover would break)."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    placeholders = []
    if importlib.util.find_spec("torchvision") is None:
        torchvision = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = types.ModuleType("torchvision.transforms.functional")
        torchvision.transforms = transforms
        placeholders = [torchvision, transforms, transforms.functional]
        sys.modules.update({module.__name__: module for module in placeholders})
    try:
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for module in placeholders:
            sys.modules.pop(module.__name__, None)


# ---------------------------------------------------------------------------------------------- benchmark peers

KDIFFUSION_SAMPLERS = {
    # label: (k-diffusion function, its model calls for a grid of n levels σ̃_0 > … > σ̃_{n−1} > 0 then 0)
    "sample_euler": ("sample_euler", lambda n: n),
    # Heun and DPM-2 make a second call in every step except the last (σ̃_next = 0: an Euler step)
    "sample_heun": ("sample_heun", lambda n: 2 * n - 1),
    "sample_dpm_2": ("sample_dpm_2", lambda n: 2 * n - 1),
    "sample_lms": ("sample_lms", lambda n: n),
    "sample_dpmpp_2m": ("sample_dpmpp_2m", lambda n: n),
    # DPM-Solver-Fast takes the NFE itself: ⌊n/3⌋ + 1 steps of orders 3, …, 3 and n mod 3 (or 2, 1) adding up to n
    "sample_dpm_fast": ("sample_dpm_fast", lambda n: n),
}
"""k-diffusion's deterministic samplers raced by ``unisde bench`` (no churn: s_churn = 0, its default)."""

KDIFFUSION_GRIDS = {
    "karras": ("get_sigmas_karras", {"rho": 7.0}),
    "exponential": ("get_sigmas_exponential", {}),
    # ρ = 1 (the function's default) is the exponential grid itself; ρ = 2 crowds the levels towards σ̃_min
    "polyexponential": ("get_sigmas_polyexponential", {"rho": 2.0}),
}
"""k-diffusion's σ̃ grids (n levels between σ̃_max and σ̃_min, then 0), by the name the report uses."""


@contextmanager
def _float64_default():
    """k-diffusion builds its grids (``torch.linspace`` without a dtype) and DPM-Solver-Fast's λ steps
    (``torch.tensor(sigma_max)``) in torch's default dtype: the bench runs every contestant in float64, so the
    default is float64 for the duration of a call (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def ve_sigma_range(schedule) -> tuple[float, float]:
    """(σ̃_min, σ̃_max) of ``schedule`` as a k-diffusion user passes them: σ̃ = σ/s at the ends of unisde's default
    time range (:func:`unisde.grids.default_time_range`), the same range unisde's own ``karras`` and
    ``exponential`` grids span. On a schedule with s(1) = 0 (rectified flow, zero-terminal-SNR tables) σ̃(1) is
    infinite, and σ̃_max is the schedule's capped value σ̃(t_end) = 4096 (SNR 2⁻²⁴, unisde's VE-view cap): a
    k-diffusion sampler needs a finite σ̃_max, so it starts there, from N(0, σ̃_max² I), not at t = 1."""
    from unisde.grids import default_time_range

    t_min, t_max = default_time_range(schedule)
    return float(schedule.ve_sigma(t_min)), float(schedule.ve_sigma(t_max))


class KDiffusionPeer:
    """One k-diffusion sampler function on one of its σ̃ grids, with the face the bench's harness drives
    (:func:`unisde.bench.exact.run_scheduler`): ``set_timesteps(n)`` builds the grid of n levels with k-diffusion's
    own grid function over :func:`ve_sigma_range` of the schedule (``sample_dpm_fast`` takes n = its NFE and the
    range's ends instead of a grid); ``timesteps`` has one entry per model call the function makes on that grid
    (diffusers' convention, which :func:`unisde.bench.contestants.steps_for_nfe` counts); ``sample_exact`` runs the
    function itself on the bench's exact model, in float64.

    The model is the target's exact denoiser in the VE view (:meth:`unisde.bench.targets.ExactModel.denoise_ve`):
    D(x̃; σ̃) at x = s(t) x̃, t = ``t_from_sigma(σ̃)``. The start is k-diffusion's x̃ = σ̃_max z; the output is the
    function's x̃ at the grid's end, σ̃ = 0, i.e. the sample itself (``sample_dpm_fast`` stops at σ̃_min > 0, where
    its λ grid ends, and its x̃ there is scored as the sample, as k-diffusion's scripts use it). A wrapper counts the
    model calls of every run and a count other than the one read off the function's code is an error."""

    def __init__(self, label: str, schedule, grid: str | None = "karras"):
        if label not in KDIFFUSION_SAMPLERS:
            raise ValueError(f"unknown k-diffusion sampler {label!r}; choose from {sorted(KDIFFUSION_SAMPLERS)}")
        self.label, self.function = label, KDIFFUSION_SAMPLERS[label][0]
        self.fast = self.function == "sample_dpm_fast"
        if self.fast and grid is not None:
            raise ValueError("sample_dpm_fast builds its own λ grid: pass grid=None")
        if not self.fast and grid not in KDIFFUSION_GRIDS:
            raise ValueError(f"unknown k-diffusion grid {grid!r}; choose from {sorted(KDIFFUSION_GRIDS)}")
        self.grid = grid
        self.sigma_min, self.sigma_max = ve_sigma_range(schedule)
        self.sigmas: torch.Tensor | None = None
        self.n = 0
        self.timesteps: tuple = ()

    def __deepcopy__(self, memo):
        # the state is the grid, replaced (never changed in place) by set_timesteps: a shallow copy is a fresh one
        return copy.copy(self)

    def set_timesteps(self, num_inference_steps: int):
        n = int(num_inference_steps)
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        sampling = _require_sampling()
        if self.fast:
            self.sigmas = None
        else:
            name, kwargs = KDIFFUSION_GRIDS[self.grid]
            with _float64_default():
                self.sigmas = getattr(sampling, name)(n, self.sigma_min, self.sigma_max, **kwargs).to(torch.float64)
        self.n = n
        self.timesteps = tuple(range(self.expected_calls))

    @property
    def expected_calls(self) -> int:
        return KDIFFUSION_SAMPLERS[self.label][1](self.n)

    def sample_exact(self, model, z: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Run the function from x̃ = σ̃_max z on ``model`` (an :class:`unisde.bench.targets.ExactModel`). Returns the
        output (B, *event) in float64, and the first model call's angle τ₀ = atan σ̃ and sample y₀ = x̃ cos τ₀
        (B, d) (the start of the bench's PF-ODE reference, :mod:`unisde.bench.exact`)."""
        if not self.n:
            raise RuntimeError(f"{self.label}: call set_timesteps before sample_exact")
        sampling = _require_sampling()
        first: list = []
        calls = 0

        def denoiser(x, sigma):
            nonlocal calls
            calls += 1
            if not first:
                level = float(sigma.reshape(-1)[0])
                tau = math.atan(level)
                first.append((tau, x.to(torch.float64).reshape(x.shape[0], -1) * math.cos(tau)))
            return model.denoise_ve(x, sigma)

        fn = getattr(sampling, self.function)
        with _float64_default():
            if self.fast:
                x = z.to(torch.float64) * self.sigma_max
                out = fn(denoiser, x, self.sigma_min, self.sigma_max, self.n, disable=True)
            else:
                x = z.to(torch.float64) * self.sigmas[0]
                out = fn(denoiser, x, self.sigmas, disable=True)
        if calls != self.expected_calls:
            raise RuntimeError(
                f"k-diffusion {self.function} made {calls} model calls on {self.n} levels, where its code reads "
                f"{self.expected_calls}: the NFE accounting of unisde.bench.kdiffusion is out of date"
            )
        tau0, y0 = first[0]
        return out.to(torch.float64), tau0, y0


def _require_sampling():
    sampling = load_sampling()
    if sampling is None:
        raise RuntimeError("k-diffusion is not installed (pip install 'unisde[bench]')")
    return sampling


class UnisdeTwin:
    """A unisde sampler run as :class:`KDiffusionPeer` runs k-diffusion's function — the twin of the same algorithm
    for the report's "same algorithm, same answer" rows: on unisde's registered time grid ``grid`` (``karras`` and
    ``exponential`` are k-diffusion's formulas over the same σ̃ range, from t_end where s(1) = 0), from k-diffusion's
    start x̃ = σ̃_0 z (x = σ(t_0) z in the model's space), on the exact denoiser at the
    sampler's float64 times (:func:`unisde.sampling.run_loop`, the functional core). Through
    :class:`unisde.UnifiedScheduler` the run would start from N(0, (s² + σ²) I) (``init_noise_sigma``) and the model
    would see diffusers' float32 timesteps, which moves the exact W₂ by 1e-5 to 1e-3 relative (gaussian-8x8, NFE 10)
    and hides what this pair shows: the two codes agree to float64 rounding."""

    def __init__(self, sampler: str, options: dict, grid: str, schedule):
        from unisde.plugins import get_sampler

        self.cls, self.options, self.grid_kind, self.schedule = get_sampler(sampler), dict(options), grid, schedule
        self.cls(schedule, **self.options)  # unknown options fail here, before any run
        self.sampler = None
        self.timesteps: tuple = ()

    def __deepcopy__(self, memo):
        return copy.copy(self)  # set_timesteps replaces the prepared sampler; sample_exact runs a copy of it

    def set_timesteps(self, num_inference_steps: int):
        from unisde.grids import make_grid

        sampler = self.cls(self.schedule, **self.options)
        # where s(1) = 0 the grid starts at t_end (σ̃ = 4096), as k-diffusion's does (ve_sigma_range), not at t = 1
        ends = {"t_max": self.schedule.t_end} if self.schedule.t_end < 1.0 else {}
        times = sampler.prepare(make_grid(self.schedule, int(num_inference_steps), self.grid_kind, **ends))
        self.sampler, self.times = sampler, [torch.tensor(float(t), dtype=torch.float64) for t in times]
        self.timesteps = tuple(float(t) for t in times)  # one model call per evaluation time

    def sample_exact(self, model, z: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """As :meth:`KDiffusionPeer.sample_exact`, with the start's angle τ₀ = atan2(σ, s) at the first time."""
        from unisde.sampling import run_loop

        if self.sampler is None:
            raise RuntimeError("call set_timesteps before sample_exact")
        sampler, times, sched = copy.deepcopy(self.sampler), self.times, model.schedule
        s0, sigma0 = float(sched.s(times[0])), float(sched.sigma(times[0]))
        x = z.to(torch.float64) * sigma0
        tau0 = math.atan2(sigma0, s0)
        y0 = x.reshape(x.shape[0], -1) / math.hypot(s0, sigma0)

        def denoise(x, k):
            model.nfe += 1
            return model.distribution.denoise(x, times[k], sched)

        return run_loop(sampler, x, denoise), tau0, y0
