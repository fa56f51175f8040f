r"""The benchmark's ground truth: exact data distributions (:func:`make_target`) and the perfect network that
samples them (:class:`ExactModel`, the analytic denoiser of :mod:`unisde.analytic` as a raw model output)."""

from __future__ import annotations

import torch

from unisde._tensor import unknown_name_error

TARGETS = ("mixture-2d", "mixture-8x8", "gaussian-8x8")


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
                raise ValueError("ExactModel.denoise_ve needs one noise level σ̃ for the whole batch")
            value = float(flat[0])
        else:
            value = float(sigma_ve)
        if not value > 0:
            raise ValueError(f"ExactModel.denoise_ve needs a noise level σ̃ > 0, got {value}")
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
