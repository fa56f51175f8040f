r"""The benchmark's targets: exact data distributions (:func:`make_target`) with the perfect network that samples
them (:class:`ExactModel`, the analytic denoiser of :mod:`unisde.analytic` as a raw model output), and the two
bundled trained digits checkpoints (:class:`Checkpoint`, run as :class:`CheckpointModel`), whose ground truth is
their own probability-flow ODE (:mod:`unisde.bench.exact`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from unisde._tensor import unknown_name_error

EXACT_TARGETS = ("mixture-2d", "mixture-8x8", "gaussian-8x8")


@dataclass(frozen=True)
class CheckpointSpec:
    """A bundled trained checkpoint raced as a target: its pipeline folder under ``unisde/data``, the bench
    schedule (:data:`unisde.bench.contestants.SCHEDULES`) whose forward process and parameterisation it was
    trained with — the only schedule it is raced on — and a line for the report."""

    folder: str
    schedule: str
    description: str


CHECKPOINTS = {
    "digits-vp": CheckpointSpec(
        "digits-unet",
        "ddpm",
        "bundled digits UNet (unisde/data/digits-unet: UNet2DModel, 8×8×1, 0.7 M parameters), ε-prediction on "
        "diffusers' default DDPM table (linear β 1e-4 … 0.02, 1000 steps)",
    ),
    "digits-flow": CheckpointSpec(
        "digits-flow",
        "flow",
        "bundled digits rectified-flow UNet (unisde/data/digits-flow: the same UNet2DModel), flow prediction "
        "u = ε − x0 on s = 1 − t, σ = t (shift 1)",
    ),
}
"""The trained targets (issue 12: "plus both bundled digits checkpoints (VP and flow)")."""

TARGETS = EXACT_TARGETS + tuple(CHECKPOINTS)


def _grid_cov(side: int = 8, length: float = 2.0, variance: float = 0.25, jitter: float = 1e-3) -> torch.Tensor:
    """Squared-exponential covariance k(p, q) = v exp(−‖p − q‖²/(2ℓ²)) between the pixels of a side×side grid
    (distances in pixels), plus ``jitter``·I so that the smallest eigenvalue stays well above float32 rounding."""
    ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2).double()
    d2 = ((ij[:, None, :] - ij[None, :, :]) ** 2).sum(-1)
    return variance * torch.exp(-d2 / (2 * length**2)) + jitter * torch.eye(side * side, dtype=torch.float64)


def make_target(name: str):
    """The exact data distributions of the benchmark (all roughly unit scale, like normalised images).

    * ``mixture-2d``: three well-separated isotropic modes of unequal weight 0.6 / 0.3 / 0.1.
    * ``mixture-8x8``: an "8×8 image" mixture of four patterns (two blobs, a bar, a ring) with pixel
      correlations from squared-exponential kernels of length 1.5 and 3 pixels, weights 0.4 / 0.3 / 0.2 / 0.1.
    * ``gaussian-8x8``: one correlated 8×8 Gaussian (length 2) around a smooth gradient mean.
    * ``digits-vp`` / ``digits-flow``: the bundled trained checkpoints (:data:`CHECKPOINTS`), as a
      :class:`Checkpoint` (no closed form: the reference is the network's own PF-ODE).
    """
    from unisde.analytic import Gaussian, GaussianMixture

    if name == "mixture-2d":
        means = torch.tensor([[-1.2, -0.8], [1.2, -0.6], [0.0, 1.3]], dtype=torch.float64)
        return GaussianMixture([0.6, 0.3, 0.1], means, torch.tensor([0.04, 0.02, 0.01], dtype=torch.float64))
    ij = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1).double()
    if name == "mixture-8x8":

        def blob(ci, cj, r):
            return torch.exp(-((ij - torch.tensor([ci, cj], dtype=torch.float64)) ** 2).sum(-1) / (2 * r * r))

        ring = torch.exp(-((((ij - 3.5) ** 2).sum(-1).sqrt() - 2.5) ** 2))
        bar = (ij[..., 1] - 3.5).abs().lt(1.5).double()
        patterns = torch.stack([blob(2, 2, 1.5), blob(5, 5, 1.5), bar, ring]) * 1.6 - 0.8
        covs = torch.stack(
            [
                _grid_cov(length=1.5, variance=0.04),
                _grid_cov(length=3.0, variance=0.05),
                _grid_cov(length=1.5, variance=0.03),
                _grid_cov(length=3.0, variance=0.02),
            ]
        )
        return GaussianMixture([0.4, 0.3, 0.2, 0.1], patterns.reshape(4, 8, 8), covs, event_shape=(8, 8))
    if name == "gaussian-8x8":
        mean = (ij[..., 0] - 3.5) / 7.0 * 0.6
        return Gaussian(mean, _grid_cov(length=2.0, variance=0.25), event_shape=(8, 8))
    if name in CHECKPOINTS:
        return load_checkpoint(name)
    raise unknown_name_error("target", name, TARGETS)


class ExactModel:
    """The perfect network a scheduler samples: ``model(model_input, timestep)`` → raw output of the given
    parameterisation, exactly as :meth:`unisde.analytic.GaussianMixture.as_model` defines it, for a timestep
    shared by the whole batch (as every sampling loop feeds it).

    The time t of each timestep value (the inverse of the model's timestep scale, fractional timesteps included)
    and the input scale c_in are computed once per distinct value and cached: contestants share grids, and the
    inversion costs far more than the denoiser on a small batch. ``nfe`` counts every call.
    """

    def __init__(self, distribution, parameterization, schedule):
        from unisde.core.schedule import TabulatedSchedule

        self.reference = distribution.as_model(parameterization, schedule)  # validates; defines the convention
        self.distribution = distribution
        self.parameterization = self.reference.parameterization
        self.schedule = schedule
        # What the denoiser and the output conversion evaluate, s(t) and σ(t): on a table each is a spline lookup
        # that cost a tenth of a DDPM cell; remembered per time (the schedule's own values: grids.optimize).
        self._evaluate = schedule
        if isinstance(schedule, TabulatedSchedule):
            from unisde.grids.optimize import _fast_schedule

            self._evaluate = _fast_schedule(schedule)
        self.nfe = 0
        self._times: dict = {}
        self._ve_times: dict = {}

    def _time(self, timestep) -> tuple[torch.Tensor, float]:
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        if (
            isinstance(timestep, torch.Tensor)
            and timestep.numel() > 1
            and not bool((timestep == timestep.reshape(-1)[0]).all())
        ):
            raise ValueError(
                "ExactModel needs one timestep for the whole batch; use unisde.analytic's as_model for per-sample "
                "timesteps"
            )
        if value not in self._times:
            t = self.parameterization.t_from_model_time(
                self.schedule, torch.tensor(value, dtype=torch.float64)
            ).reshape(())
            self._times[value] = (t, float(self.parameterization.input_scale(self.schedule, t)))
        return self._times[value]

    def denoise_ve(self, x_ve: torch.Tensor, sigma_ve) -> torch.Tensor:
        """The same exact model as k-diffusion calls a denoiser: D(x̃; σ̃) = E[x0 | x̃] in the VE view x̃ = x/s at the
        noise level σ̃ = σ/s (Karras et al. 2022, eq. 3 [EDM]), evaluated as the exact denoiser at
        x = s(t) x̃, t = ``schedule.t_from_sigma(σ̃)`` (cached per σ̃ value in ``_ve_times``). ``sigma_ve``: a float
        or a tensor holding one σ̃ for the whole batch (k-diffusion passes it once per sample). Counted in ``nfe``."""
        if isinstance(sigma_ve, torch.Tensor):
            flat = sigma_ve.reshape(-1)
            if flat.numel() > 1 and not bool((flat == flat[0]).all()):
                raise ValueError(f"{type(self).__name__}.denoise_ve needs one noise level σ̃ for the whole batch")
            value = float(flat[0])
        else:
            value = float(sigma_ve)
        if not value > 0:
            raise ValueError(f"{type(self).__name__}.denoise_ve needs a noise level σ̃ > 0, got {value}")
        if value not in self._ve_times:
            t = self.schedule.t_from_sigma(torch.tensor(value, dtype=torch.float64)).reshape(())
            self._ve_times[value] = (t, float(self.schedule.s(t)))
        t, s = self._ve_times[value]
        self.nfe += 1
        x0 = self.distribution.denoise(x_ve.to(torch.float64) * s, t, self._evaluate)
        return x0.to(x_ve.dtype)

    def __call__(self, model_input: torch.Tensor, timestep, *args, **kwargs) -> torch.Tensor:
        t, c_in = self._time(timestep)
        self.nfe += 1
        x = model_input.to(torch.float64) / c_in
        x0 = self.distribution.denoise(x, t, self._evaluate)
        out = self.parameterization.from_denoised(x0.to(torch.float64), x, t, self._evaluate)
        return out.to(model_input.dtype)


# ---------------------------------------------------------------------------------------------- trained checkpoints


class _Float64Timesteps(torch.nn.Module):
    """diffusers' sinusoidal timestep embedding (``Timesteps`` / ``get_timestep_embedding``, the Transformer
    embedding of Ho et al. 2020, App. B [DDPM]) with the same frequencies, flip and padding, computed in float64.
    diffusers computes it in float32 whatever the model's dtype, which makes the network a step function of the
    timestep at float32 resolution (steps of 3e-5 at timestep 500): an adaptive float64 ODE solve at rtol 1e-9 of
    such a right-hand side would chase those steps. The embedding of an integer timestep changes by ~1e-7
    (relative) against diffusers' float32 one."""

    def __init__(self, proj):
        super().__init__()
        self.num_channels, self.flip = int(proj.num_channels), bool(proj.flip_sin_to_cos)
        self.shift, self.scale = float(proj.downscale_freq_shift), float(proj.scale)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float64, device=timesteps.device)
        freqs = torch.exp(exponent / (half - self.shift))
        emb = self.scale * timesteps.to(torch.float64)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if self.flip:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        if self.num_channels % 2 == 1:
            emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
        return emb


def checkpoint_path(name: str) -> str:
    """The pipeline folder of checkpoint target ``name`` in the installed package (``unisde/data/<folder>``)."""
    import unisde

    if name not in CHECKPOINTS:
        raise unknown_name_error("checkpoint target", name, tuple(CHECKPOINTS))
    return os.path.join(os.path.dirname(os.path.abspath(unisde.__file__)), "data", CHECKPOINTS[name].folder)


class Checkpoint:
    r"""A bundled trained checkpoint as a benchmark target: its UNet in float64 (``network``, eval mode, the time
    embedding in float64 too: :class:`_Float64Timesteps`), the noise schedule and parameterisation of its saved
    scheduler config (``schedule``, ``parameterization``), and the sample shape (``event_shape`` (C, H, W),
    ``dim`` = C·H·W; pixels in [−1, 1]).

    It stands where the exact targets' distribution stands (the race reads ``event_shape``, ``dim`` and
    ``denoise``), but has no closed form and no exact sampler: the reference of the trajectory metric is the
    network's own probability-flow ODE (:func:`unisde.bench.exact.model_denoiser`), and sample quality is the
    Fréchet distance to the real digits. ``num_components`` is None (not a mixture)."""

    num_components = None

    def __init__(self, name: str):
        import json

        from diffusers import UNet2DModel

        from unisde.diffusers.scheduler import UnifiedScheduler

        self.name, self.spec = name, CHECKPOINTS[name]
        self.path = checkpoint_path(name)
        unet = UNet2DModel.from_pretrained(os.path.join(self.path, "unet")).eval().requires_grad_(False)
        self.network32 = unet  # as a pipeline runs it (float32, diffusers' float32 time embedding)
        import copy

        unet = copy.deepcopy(unet).to(torch.float64)
        unet.time_proj = _Float64Timesteps(unet.time_proj)
        self.network = unet
        with open(os.path.join(self.path, "scheduler", "scheduler_config.json")) as fh:
            scheduler = UnifiedScheduler.from_config(json.load(fh))
        self.schedule, self.parameterization = scheduler.noise_schedule, scheduler.parameterization
        cfg = unet.config
        self.event_shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
        self.dim = math.prod(self.event_shape)
        self.description = self.spec.description
        self._same: dict = {}

    def raw(self, model_input: torch.Tensor, timestep, dtype=torch.float64) -> torch.Tensor:
        """The network's raw output at ``model_input`` (B, C, H, W) and ``timestep`` (a number, a 0-d tensor or one
        per sample; fed as given — a Python number as a float64 tensor, not truncated to an integer as
        UNet2DModel would), without autograd, in ``dtype``: float64 (``network``), or float32 (``network32``, the
        checkpoint as a pipeline runs it)."""
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor(float(timestep), dtype=torch.float64)
        network = self.network if dtype == torch.float64 else self.network32
        with torch.no_grad():
            out = network(model_input.to(dtype), timestep).sample
        return out

    def _is_own(self, schedule) -> bool:
        key = id(schedule)
        if key not in self._same:
            import json

            own = schedule is self.schedule or json.dumps(schedule.to_config(), sort_keys=True, default=str) == (
                json.dumps(self.schedule.to_config(), sort_keys=True, default=str)
            )
            self._same[key] = (schedule, own)  # the schedule is kept alive, so its id is not reused
        return self._same[key][1]

    def check_schedule(self, schedule, parameterization) -> None:
        """ValueError unless ``schedule`` and ``parameterization`` (the bench's for the target's schedule) are the
        checkpoint's own: the race must feed the network the inputs and timesteps it was trained on."""
        if not self._is_own(schedule) or parameterization.name != self.parameterization.name:
            raise ValueError(
                f"checkpoint target {self.name!r} was trained with {self.schedule.to_config()} and "
                f"{self.parameterization.name!r}, not {schedule.to_config()} and {parameterization.name!r}"
            )

    def denoise(self, x: torch.Tensor, t, schedule=None, dtype=torch.float64) -> torch.Tensor:
        r"""x̂0 of the network for the sample x (B, *event) at time t (one for the batch) of ``schedule`` (default:
        the checkpoint's own). Another schedule is mapped to the checkpoint's time of the same VE noise level
        σ̃ = σ/s, with x rescaled by √(s² + σ²)_own / √(s² + σ²) (both views' x / √(s² + σ²) = cos τ x0 + sin τ ε
        agree at τ = atan σ̃) — as :meth:`unisde.analytic.GaussianMixture.denoise` takes any schedule. The network
        runs in ``dtype`` (:meth:`raw`); the result is float64."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0]
        own = self.schedule
        if schedule is None or self._is_own(schedule):
            tm, xm = t, x.to(torch.float64)
        else:
            from unisde.bench.exact import t_of_angle

            s, sigma = float(schedule.s(t)), float(schedule.sigma(t))
            tm = t_of_angle(own, math.atan2(sigma, s))
            gain = math.hypot(float(own.s(tm)), float(own.sigma(tm))) / math.hypot(s, sigma)
            xm = x.to(torch.float64) * gain
        param = self.parameterization
        a, b = (float(v) for v in param.coefficients(own, tm))
        out = self.raw(xm * float(param.input_scale(own, tm)), param.model_time(own, tm).to(torch.float64), dtype)
        return a * xm + b * out.to(torch.float64)

    def __repr__(self):
        return f"Checkpoint({self.name!r}, {self.path!r})"


_LOADED: dict = {}


def load_checkpoint(name: str) -> Checkpoint:
    """The :class:`Checkpoint` of target ``name``, loaded once per process."""
    if name not in _LOADED:
        _LOADED[name] = Checkpoint(name)
    return _LOADED[name]


class _DtypeView:
    """A :class:`Checkpoint`'s ``denoise`` with its network in another dtype (what :class:`CheckpointModel` hands
    to the unisde twins of k-diffusion's functions as ``distribution``)."""

    def __init__(self, checkpoint: Checkpoint, dtype):
        self.checkpoint, self.dtype = checkpoint, dtype
        self.event_shape, self.dim = checkpoint.event_shape, checkpoint.dim

    def denoise(self, x, t, schedule=None):
        return self.checkpoint.denoise(x, t, schedule, self.dtype)


class CheckpointModel(ExactModel):
    """A trained checkpoint with the face the race expects of a model (:class:`ExactModel`'s): ``model(model_input,
    timestep)`` → the network's raw output (what a pipeline feeds it, passed through; the network runs in ``dtype``,
    float64 by default, and the output is returned in the input's dtype), ``nfe`` counting every call,
    ``parameterization`` / ``schedule`` (the bench's, checked to be the checkpoint's own), ``denoise_ve``
    (inherited, on ``distribution``) for k-diffusion's functions, and ``distribution`` (``denoise(x, t,
    schedule)``, the network in ``dtype``) for the unisde twins run as k-diffusion's are."""

    def __init__(self, checkpoint: Checkpoint, parameterization, schedule, dtype=torch.float64):
        checkpoint.check_schedule(schedule, parameterization)
        self.checkpoint, self.dtype = checkpoint, dtype
        self.distribution = checkpoint if dtype == torch.float64 else _DtypeView(checkpoint, dtype)
        self.parameterization, self.schedule = parameterization, schedule
        self._evaluate = schedule
        self.nfe = 0
        self._times: dict = {}
        self._ve_times: dict = {}

    def in_dtype(self, dtype) -> "CheckpointModel":
        """The same network and schedule with the network in ``dtype``, sharing this model's time inversions."""
        other = CheckpointModel(self.checkpoint, self.parameterization, self.schedule, dtype)
        other._times, other._ve_times = self._times, self._ve_times
        return other

    def __call__(self, model_input: torch.Tensor, timestep, *args, **kwargs) -> torch.Tensor:
        self.nfe += 1
        return self.checkpoint.raw(model_input, timestep, self.dtype).to(model_input.dtype)
