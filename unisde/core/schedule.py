r"""NoiseSchedule: the continuous-time view of any Gaussian forward process.

Every forward process unisde supports is  x_t = s(t) x_0 + σ(t) ε,  ε ~ N(0, I),  t ∈ [0, 1] with t = 0 the
data and t = 1 the prior (Kingma et al. 2021, eq. 1 [VDM]).
It is the marginal of the linear SDE  dx = f(t) x dt + g(t) dw
(Song et al. 2021, eq. 5 [SDE]) with (Lu et al. 2022, §2.1 [DPMSolver])

    f(t) = s'(t) / s(t),        g²(t) = 2 (σ σ' − f σ²) = −σ² dλ/dt,

where λ(t) = log(s² / σ²) is the log signal-to-noise ratio; conversely
(the mean and variance ODEs of a linear SDE, Song et al. 2021, App. B [SDE])
s(t) = exp ∫₀ᵗ f,  σ²(t) = s² (σ(0)²/s(0)² + ∫₀ᵗ g² / s²).

Conventions used throughout the package
---------------------------------------
* ``sigma(t)`` is σ in the model's own space (x = s x0 + σ ε). ``ve_sigma(t)`` is the noise level of the
  "VE view" x̃ = x / s, namely σ̃ = σ / s = exp(−λ / 2); for VE/EDM schedules s ≡ 1 and the two coincide.
  ``t_from_sigma`` takes a VE-view σ̃ (the convention of diffusers' Euler/Heun/EDM schedulers and k-diffusion).
* Discrete tables (DDPM β's, ᾱ's, σ tables) put training index i = 0 … N−1 at t_i = (i + 1) / N (the
  DPM-Solver convention) and add the clean-data point t = 0 (s = 1, σ = 0). ``t_from_index`` /
  ``index_from_t`` convert.
* Coefficients are computed in float64; callers cast once to the sample's dtype.
* Tabulated schedules are interpolated with monotone C¹ cubics in s (or s = √(1 − ρ) for VP tables) and in
  ρ = σ̃² / (1 + σ̃²) = 1 / (1 + SNR) ∈ [0, 1] (= 1 − ᾱ for VP tables). ρ is bounded, so t = 0 (ρ = 0) and a
  zero-terminal-SNR end (ρ = 1) need no special case; monotone ρ means λ non-increasing, hence g² ≥ 0.
* Zero terminal SNR (s(1) = 0, e.g. ``rescale_betas_zero_snr`` or the un-clipped cosine): s(1) = 0 and
  σ(1) = 1 are returned exactly, but f, g², λ and σ̃ diverge there, so they are evaluated at
  t_end = the time where SNR = s²/σ² = 2⁻²⁴ (λ ≈ −16.6, σ̃ ≈ 4096, the value diffusers uses for such tables).
  For every other schedule t_end = 1. Where σ(0) = 0, λ(0) is reported as ``LOG_SNR_MAX`` instead of +∞.
  Hence no NaN or inf ever escapes these methods.
"""

from __future__ import annotations

import abc

import json
import math
import os
from typing import Callable, Mapping

import numpy as np
import torch

from unisde._tensor import DTYPE, MonotoneCubic, as_float64, check_unit_interval, unknown_name_error

LOG_SNR_MAX = 50.0
"""log-SNR reported where σ = 0 exactly (σ̃ = e⁻²⁵); also the upper clamp of ``t_from_log_snr``."""

ZERO_SNR_LOG_SNR = math.log(2.0**-24 / (1 - 2.0**-24))
"""λ at which a zero-terminal-SNR schedule's diverging quantities are capped (SNR = 2⁻²⁴)."""

TIMESTEP_CONVENTIONS = ("index", "t", "sigma", "edm")


def _expand_like(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample coefficient of shape () or (B,) against x of shape (B, ...)."""
    coef = coef.to(device=x.device)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


class NoiseSchedule(abc.ABC):
    """Continuous-time description (s, σ, f, g², λ) of a forward process x_t = s(t) x0 + σ(t) ε.

    Subclasses implement ``_s``, ``_sigma``, ``_f``, ``_g2`` (float64 tensor in, float64 tensor out, t already
    validated) and may override ``_log_snr`` and ``_t_from_log_snr`` with closed forms.

    Attributes
    ----------
    name: short identifier (``"vp-linear"``, ``"table"``, …).
    timestep_convention: how a time t maps to the value a model is fed (see :meth:`timestep`):
        ``"index"`` — the diffusers training index (tables), fractional indices interpolated linearly in log σ̃
        between table entries (diffusers' ``_sigma_to_t`` convention);
        ``"t"`` — t × ``timestep_scale`` (score-SDE continuous models use scale 999);
        ``"sigma"`` — σ̃ itself (score-SDE NCSN++ / diffusers ScoreSdeVe);
        ``"edm"`` — ¼ ln σ̃ (EDM's c_noise, diffusers EDMEulerScheduler).
    num_train_timesteps: number of table entries N for tabulated schedules (else the nominal count).
    t_end: cap for quantities that diverge at t = 1 under zero terminal SNR (1.0 otherwise).
    """

    name = "schedule"

    def __init__(self, *, timestep_convention: str = "t", timestep_scale: float = 1.0, num_train_timesteps: int | None = None):
        if timestep_convention not in TIMESTEP_CONVENTIONS:
            raise unknown_name_error("timestep_convention", timestep_convention, TIMESTEP_CONVENTIONS)
        self.timestep_convention = timestep_convention
        self.timestep_scale = float(timestep_scale)
        self.num_train_timesteps = num_train_timesteps
        self.t_end = 1.0
        self.spec: dict = {}

    # ------------------------------------------------------------------ primitives (subclasses)
    @abc.abstractmethod
    def _s(self, t):
        """s(t) for validated float64 t."""

    @abc.abstractmethod
    def _sigma(self, t):
        """σ(t) in model space for validated float64 t."""

    @abc.abstractmethod
    def _f(self, t):
        """f(t) = d log s/dt for validated float64 t ≤ t_end."""

    @abc.abstractmethod
    def _g2(self, t):
        """g²(t) for validated float64 t ≤ t_end (may be clamped at 0 by the caller)."""

    def _log_snr(self, t):
        s, sigma = self._s(t), self._sigma(t)
        return 2 * torch.log(s) - 2 * torch.log(sigma)

    def _t_from_log_snr(self, lam):
        """Bisection on the non-increasing λ(t) over [0, t_end]; 64 halvings reach float64 resolution."""
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.t_end)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # ------------------------------------------------------------------ public API
    def _time(self, t, name="t") -> torch.Tensor:
        t = as_float64(t, name)
        check_unit_interval(t, name)
        return t

    def _capped(self, t):
        return t.clamp(max=self.t_end) if self.t_end < 1.0 else t

    def s(self, t) -> torch.Tensor:
        """Signal scale s(t) (dimensionless), float64."""
        return self._s(self._time(t))

    def sigma(self, t) -> torch.Tensor:
        """Noise standard deviation σ(t) in the model's own space (x = s x0 + σ ε), float64."""
        return self._sigma(self._time(t))

    def f(self, t) -> torch.Tensor:
        """Drift coefficient f(t) = d log s / dt (per unit t), Lu et al. 2022, §2.1 [DPMSolver]. Finite everywhere."""
        return self._f(self._capped(self._time(t)))

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion g²(t) = dσ²/dt − 2 f σ² = −σ² dλ/dt ≥ 0 (per unit t), Lu et al. 2022, §2.1 [DPMSolver]."""
        return self._g2(self._capped(self._time(t))).clamp(min=0.0)

    def g(self, t) -> torch.Tensor:
        """Diffusion coefficient g(t) = √g²(t)."""
        return self.g2(t).sqrt()

    def log_snr(self, t) -> torch.Tensor:
        """λ(t) = log(s² / σ²), non-increasing; ``LOG_SNR_MAX`` where σ = 0, capped at t_end (module doc)."""
        t = self._capped(self._time(t))
        lam = self._log_snr(t)
        return torch.nan_to_num(lam, nan=LOG_SNR_MAX, posinf=LOG_SNR_MAX).clamp(max=LOG_SNR_MAX)

    def ve_sigma(self, t) -> torch.Tensor:
        """Noise level of the VE view x̃ = x / s: σ̃ = σ / s = exp(−λ / 2) (capped at t_end)."""
        return torch.exp(-0.5 * self.log_snr(t))

    def t_from_log_snr(self, lam) -> torch.Tensor:
        """Inverse of :meth:`log_snr`: the t ∈ [0, t_end] with λ(t) = lam (clamped to the schedule's range)."""
        lam = as_float64(lam, "lam")
        return self._t_from_log_snr(lam).clamp(0.0, self.t_end)

    def t_from_sigma(self, sigma) -> torch.Tensor:
        """Inverse of :meth:`ve_sigma`: t for a VE-view noise level σ̃ = σ/s (σ̃ > 0; clamped to the range)."""
        sigma = as_float64(sigma, "sigma")
        if (sigma < 0).any():
            raise ValueError(f"sigma must be >= 0, got {sigma[sigma < 0][0].item()}")
        lam = (-2.0 * torch.log(sigma)).clamp(max=LOG_SNR_MAX)
        return self.t_from_log_snr(lam)

    def marginal(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean s(t) x0 and std σ(t) of p(x_t | x0)
        (Kingma et al. 2021, eq. 1 [VDM]), broadcast over x0's batch dimension.

        ``t`` is a scalar or has shape (B,); returns (mean with x0's shape and dtype, std broadcastable).
        """
        t = self._time(t)
        s = _expand_like(self._s(t), x0).to(x0.dtype)
        sigma = _expand_like(self._sigma(t), x0).to(x0.dtype)
        return s * x0, sigma

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = s(t) x0 + σ(t) ε for per-sample (B,) or scalar t."""
        mean, std = self.marginal(x0, t)
        return mean + std * noise

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior at t = 1, √(s(1)² + σ(1)²) for unit-variance data.

        This is diffusers' convention (init_noise_sigma = √(σ_max² + 1) in the VE view, 1 for VP tables).
        """
        one = torch.ones((), dtype=DTYPE)
        return float(torch.sqrt(self._s(one) ** 2 + self._sigma(one) ** 2))

    def prior_sample(self, shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """Draw x_1 ~ N(0, prior_std² I) of the given shape."""
        noise = torch.randn(tuple(shape), generator=generator, device=device if generator is None else generator.device, dtype=dtype)
        return (noise * self.prior_std).to(device) if device is not None else noise * self.prior_std

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, prior_std² I) in nats, summed over all but the first (batch) dimension."""
        var = self.prior_std**2
        x = x.to(DTYPE)
        d = x[0].numel()
        return -0.5 * d * math.log(2 * math.pi * var) - 0.5 * x.flatten(1).pow(2).sum(1) / var

    # ------------------------------------------------------------------ model timesteps
    def timestep(self, t) -> torch.Tensor:
        """The value a model trained under this schedule is fed at time t (see ``timestep_convention``)."""
        t = self._time(t)
        conv = self.timestep_convention
        if conv == "t":
            return t * self.timestep_scale
        if conv == "sigma":
            return self.ve_sigma(t)
        if conv == "edm":
            return 0.25 * torch.log(self.ve_sigma(t))
        return self._index_timestep(t)

    def t_from_timestep(self, timestep) -> torch.Tensor:
        """Inverse of :meth:`timestep`."""
        ts = as_float64(timestep, "timestep")
        conv = self.timestep_convention
        if conv == "t":
            t = ts / self.timestep_scale
            check_unit_interval(t, "timestep / timestep_scale")
            return t
        if conv == "sigma":
            return self.t_from_sigma(ts)
        if conv == "edm":
            return self.t_from_sigma(torch.exp(4 * ts))
        return self._t_from_index_timestep(ts)

    def _index_timestep(self, t):
        raise ValueError(f"schedule {self.name!r} has no training-index timesteps; use timestep_convention 't', 'sigma' or 'edm'")

    _t_from_index_timestep = _index_timestep

    @property
    def is_discrete(self) -> bool:
        """True for tables whose model timesteps are training indices 0 … N−1."""
        return self.timestep_convention == "index"

    # ------------------------------------------------------------------ description
    def to_config(self) -> dict:
        """A JSON-able description from which :func:`NoiseSchedule.from_config` rebuilds this schedule."""
        return dict(self.spec)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec.items() if k not in ("name", "values"))
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0, **kw) -> "NoiseSchedule":
        """Score-SDE VP-SDE with β(t) = β_min + t (β_max − β_min) (Song et al. 2021, eq. 11 and App. B [SDE])."""
        return VPLinearSchedule(beta_min, beta_max, **kw)

    @staticmethod
    def vp_cosine(s: float = 0.008, **kw) -> "NoiseSchedule":
        """Nichol & Dhariwal cosine schedule ᾱ(t) = cos²((t + s)/(1 + s) · π/2) / cos²(s/(1 + s) · π/2)."""
        return VPCosineSchedule(s, **kw)

    @staticmethod
    def sub_vp(beta_min: float = 0.1, beta_max: float = 20.0, **kw) -> "NoiseSchedule":
        """Score-SDE sub-VP SDE: s as VP-linear, σ = 1 − s²."""
        return SubVPSchedule(beta_min, beta_max, **kw)

    @staticmethod
    def ve(sigma_min: float = 0.01, sigma_max: float = 50.0, **kw) -> "NoiseSchedule":
        """Score-SDE VE-SDE: s = 1, σ(t) = σ_min (σ_max/σ_min)^t (Song et al. 2021, eq. 9 and App. B [SDE])."""
        return VESchedule(sigma_min, sigma_max, **kw)

    @staticmethod
    def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, **kw) -> "NoiseSchedule":
        """EDM (Karras et al. 2022): s = 1, σ(t) = (σ_min^{1/ρ} + t (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ.

        Uniform steps in t are exactly EDM's ρ-spaced discretisation.
        """
        return EDMSchedule(sigma_min, sigma_max, rho, **kw)

    @staticmethod
    def from_betas(betas, **kw) -> "TabulatedSchedule":
        """A DDPM β table (index 0 … N−1, each in (0, 1); the last may be 1 for zero terminal SNR)."""
        betas = as_float64(betas, "betas")
        _check_table(betas, "betas")
        bad = (betas <= 0) | (betas > 1)
        bad[:-1] |= betas[:-1] >= 1
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"betas must lie in (0, 1) (the last may equal 1 for zero terminal SNR); betas[{i}] = {betas[i].item()}")
        return NoiseSchedule.from_alphas_cumprod(torch.cumprod(1 - betas, 0), **kw)

    @staticmethod
    def from_alphas_cumprod(alphas_cumprod, **kw) -> "TabulatedSchedule":
        """A DDPM ᾱ table: s_i = √ᾱ_i, σ_i = √(1 − ᾱ_i), strictly decreasing in (0, 1) (the last may be 0)."""
        abar = as_float64(alphas_cumprod, "alphas_cumprod")
        _check_table(abar, "alphas_cumprod")
        bad = (abar <= 0) | (abar >= 1)
        bad[-1] = bool(abar[-1] < 0 or abar[-1] >= 1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"alphas_cumprod must lie in (0, 1) (the last may be 0); alphas_cumprod[{i}] = {abar[i].item()}")
        _check_strict(abar, "alphas_cumprod", increasing=False)
        return TabulatedSchedule(rho=1 - abar, **kw)

    @staticmethod
    def from_sigmas(sigmas, scales=None, **kw) -> "TabulatedSchedule":
        """A VE/EDM-style table σ_0 < … < σ_{N−1} (model space), with optional per-index scales s_i (default 1)."""
        sigmas = as_float64(sigmas, "sigmas")
        _check_table(sigmas, "sigmas")
        if (sigmas <= 0).any():
            i = int((sigmas <= 0).nonzero()[0])
            raise ValueError(f"sigmas must be > 0; sigmas[{i}] = {sigmas[i].item()}")
        if scales is None:
            scales = torch.ones_like(sigmas)
        else:
            scales = as_float64(scales, "scales")
            if scales.shape != sigmas.shape:
                raise ValueError(f"scales has shape {tuple(scales.shape)} but sigmas has {tuple(sigmas.shape)}")
            if (scales <= 0).any():
                i = int((scales <= 0).nonzero()[0])
                raise ValueError(f"scales must be > 0; scales[{i}] = {scales[i].item()}")
        ve = sigmas / scales
        _check_strict(ve, "sigmas / scales", increasing=True)
        rho = ve**2 / (1 + ve**2)
        vp = bool(torch.allclose(scales**2 + sigmas**2, torch.ones_like(sigmas), rtol=0, atol=1e-12))
        return TabulatedSchedule(rho=rho, scales=None if vp else scales, **kw)

    @staticmethod
    def from_sde(f: Callable, g2: Callable, sigma0: float = 0.0, num_panels: int = 2048) -> "TabulatedSchedule":
        """Recover (s, σ) from drift f(t) and squared diffusion g²(t) by the mean and variance ODEs of a linear SDE
        (Song et al. 2021, App. B [SDE]).

        log s(t) = ∫₀ᵗ f,  σ̃²(t) = σ0² + ∫₀ᵗ g²/s²  (σ̃ = σ/s, s(0) = 1), integrated with composite 8-point
        Gauss–Legendre quadrature on ``num_panels`` panels and tabulated at the panel edges. The edges are graded
        towards both ends (t = 3u² − 2u³, u uniform): near t = 0, σ grows like a power of t and near t = 1 a
        zero-terminal-SNR f diverges, and uniform panels there left the interpolated σ off by up to 2e-3
        relative at t = 1e-3 (sub-VP); graded panels keep it below 1e-4 for t ≥ 1e-4.
        """
        nodes, weights = np.polynomial.legendre.leggauss(8)
        nodes = (nodes + 1) / 2
        weights = weights / 2
        # Integration matrix: integral from the panel's left edge to each node of the Lagrange basis.
        vander = np.vander(nodes, 8, increasing=True)
        primitive = np.vander(nodes, 9, increasing=True)[:, 1:] / np.arange(1, 9)
        partial = torch.as_tensor(primitive @ np.linalg.inv(vander), dtype=DTYPE)
        w = torch.as_tensor(weights, dtype=DTYPE)
        u = torch.linspace(0, 1, num_panels + 1, dtype=DTYPE)
        edges = u * u * (3 - 2 * u)
        h = (edges[1:] - edges[:-1])[:, None]  # per-panel widths
        tn = edges[:-1, None] + h * torch.as_tensor(nodes, dtype=DTYPE)[None, :]
        fv = as_float64(f(tn.flatten()), "f(t)").reshape(tn.shape)
        g2v = as_float64(g2(tn.flatten()), "g2(t)").reshape(tn.shape)
        if (g2v < -1e-12).any():
            raise ValueError("g2(t) must be >= 0 on [0, 1]")
        panel_f = (h * fv) @ w
        log_s_edges = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(panel_f, 0)])
        log_s_nodes = log_s_edges[:-1, None] + (h * fv) @ partial.T
        integrand = g2v * torch.exp(-2 * log_s_nodes)
        var_edges = float(sigma0) ** 2 + torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum((h * integrand) @ w, 0)])
        s_edges = torch.exp(log_s_edges)
        rho = var_edges / (1 + var_edges)
        sched = TabulatedSchedule(rho=rho[1:], scales=s_edges[1:], t_knots=edges, rho0=float(rho[0]), timestep_convention="t")
        sched.name = "from-sde"
        return sched

    @staticmethod
    def from_diffusers_config(config, **kw) -> "NoiseSchedule":
        """The schedule a diffusers scheduler config describes (dict, ConfigMixin object, or JSON path).

        β-based configs (DDPM, DDIM, PNDM, Euler, Heun, LMS, DPMSolver, UniPC, …): every ``beta_schedule``
        DDPMScheduler accepts, ``trained_betas``, ``rescale_betas_zero_snr`` and ``num_train_timesteps``; the
        table is built in float32 exactly as diffusers builds it. EDMEuler/EDMDPMSolver configs give
        :meth:`edm` (``sigma_schedule="karras"``) or a geometric σ range (``"exponential"``) with EDM's
        c_noise timesteps; ScoreSdeVe configs give :meth:`ve` fed σ as the timestep.
        """
        cfg = _config_dict(config)
        cls = cfg.get("_class_name", "")
        if isinstance(cfg.get("schedule"), (str, dict)) and cfg.get("schedule"):
            return NoiseSchedule.from_config(cfg["schedule"])
        if cls.startswith("EDM") or "sigma_data" in cfg and "beta_schedule" not in cfg:
            smin, smax = float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0))
            if cfg.get("sigma_schedule", "karras") == "exponential":
                return NoiseSchedule.ve(smin, smax, timestep_convention="edm", num_train_timesteps=cfg.get("num_train_timesteps", 1000))
            return NoiseSchedule.edm(smin, smax, float(cfg.get("rho", 7.0)), timestep_convention="edm", num_train_timesteps=cfg.get("num_train_timesteps", 1000))
        if cls == "ScoreSdeVeScheduler" or ("snr" in cfg and "sigma_max" in cfg and "beta_schedule" not in cfg):
            return NoiseSchedule.ve(float(cfg.get("sigma_min", 0.01)), float(cfg.get("sigma_max", 1348.0)), timestep_convention="sigma", num_train_timesteps=cfg.get("num_train_timesteps", 2000))
        betas = diffusers_betas(cfg)
        abar = torch.cumprod(1.0 - betas, dim=0)  # float32 like diffusers, then float64 below
        sched = NoiseSchedule.from_alphas_cumprod(abar.to(DTYPE), **kw)
        sched.spec = {"name": "diffusers", **{k: cfg[k] for k in _BETA_KEYS if k in cfg}}
        return sched

    @staticmethod
    def from_config(config) -> "NoiseSchedule":
        """Rebuild from :meth:`to_config` output, a schedule name, a diffusers config dict, or a JSON file path."""
        if isinstance(config, NoiseSchedule):
            return config
        if isinstance(config, str):
            if os.path.exists(config):
                return NoiseSchedule.from_diffusers_config(config)
            return NoiseSchedule.from_name(config)
        cfg = dict(config)
        name = cfg.pop("name", None)
        if name is None:
            return NoiseSchedule.from_diffusers_config(cfg)
        if name == "diffusers":
            return NoiseSchedule.from_diffusers_config(cfg)
        if name == "table":
            sched = TabulatedSchedule(rho=torch.tensor(cfg["rho"], dtype=DTYPE), scales=None if cfg.get("scales") is None else torch.tensor(cfg["scales"], dtype=DTYPE))
            return sched
        return NoiseSchedule.from_name(name, **cfg)

    @staticmethod
    def from_name(name: str, **kw) -> "NoiseSchedule":
        """A named closed-form schedule: vp-linear, vp-cosine (alias cosine), sub-vp, ve, edm, or ddpm-linear
        (the diffusers default DDPM table), with keyword overrides of its parameters."""
        key = str(name).lower().replace("_", "-")
        factories = {
            "vp-linear": NoiseSchedule.vp_linear, "vp": NoiseSchedule.vp_linear,
            "vp-cosine": NoiseSchedule.vp_cosine, "cosine": NoiseSchedule.vp_cosine,
            "sub-vp": NoiseSchedule.sub_vp, "subvp": NoiseSchedule.sub_vp,
            "ve": NoiseSchedule.ve, "edm": NoiseSchedule.edm,
            "ddpm-linear": lambda **k: NoiseSchedule.from_diffusers_config({"beta_schedule": "linear", **k}),
            "ddpm-cosine": lambda **k: NoiseSchedule.from_diffusers_config({"beta_schedule": "squaredcos_cap_v2", **k}),
            "scaled-linear": lambda **k: NoiseSchedule.from_diffusers_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, **k}),
        }
        if key not in factories:
            raise unknown_name_error("schedule", name, SCHEDULE_NAMES)
        return factories[key](**kw)


SCHEDULE_NAMES = ("vp-linear", "vp-cosine", "cosine", "sub-vp", "ve", "edm", "ddpm-linear", "ddpm-cosine", "scaled-linear")

_BETA_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


def _config_dict(config) -> dict:
    if isinstance(config, (str, os.PathLike)):
        path = str(config)
        if os.path.isdir(path):
            for cand in ("scheduler_config.json", os.path.join("scheduler", "scheduler_config.json")):
                if os.path.exists(os.path.join(path, cand)):
                    path = os.path.join(path, cand)
                    break
        with open(path) as fh:
            return json.load(fh)
    if hasattr(config, "config") and isinstance(getattr(config, "config"), Mapping):
        return dict(config.config)
    if isinstance(config, Mapping):
        return dict(config)
    raise ValueError(f"expected a scheduler config dict, a ConfigMixin object or a JSON path, got {type(config).__name__}")


def diffusers_betas(cfg: Mapping) -> torch.Tensor:
    """β table of a diffusers β-based config, built in float32 exactly as DDPMScheduler builds it."""
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr

    n = int(cfg.get("num_train_timesteps", 1000))
    if n <= 0:
        raise ValueError(f"num_train_timesteps must be positive, got {n}")
    start, end = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    schedule = cfg.get("beta_schedule", "linear")
    trained = cfg.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float32)
    elif schedule == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(n)
    elif schedule == "laplace":
        betas = betas_for_alpha_bar(n, alpha_transform_type="laplace")
    elif schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start
    else:
        raise unknown_name_error("beta_schedule", schedule, BETA_SCHEDULES)
    if cfg.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    return betas


def _check_table(values: torch.Tensor, name: str) -> None:
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D table, got shape {tuple(values.shape)}")


def _check_strict(values: torch.Tensor, name: str, increasing: bool) -> None:
    diff = values[1:] - values[:-1]
    bad = diff <= 0 if increasing else diff >= 0
    if bad.any():
        i = int(bad.nonzero()[0]) + 1
        word = "increasing" if increasing else "decreasing"
        raise ValueError(f"{name} must be strictly {word} with the index; {name}[{i - 1}] = {values[i - 1].item()} and {name}[{i}] = {values[i].item()}")


# ====================================================================== tabulated
class TabulatedSchedule(NoiseSchedule):
    """A schedule given by a table, extended to continuous t by monotone C¹ cubics (module doc).

    ``rho`` holds ρ_i = σ̃_i² / (1 + σ̃_i²) for table index i at t_i = (i + 1)/N; ``scales`` the s_i (None for a
    VP table, where s = √(1 − ρ) everywhere, so the extension is exactly variance preserving and f = −g²/2).
    The knot t = 0 carries s = 1 and ρ = ``rho0`` (0: clean data).
    """

    name = "table"

    def __init__(self, rho: torch.Tensor, scales: torch.Tensor | None = None, t_knots: torch.Tensor | None = None,
                 rho0: float = 0.0, timestep_convention: str = "index", timestep_scale: float = 1.0):
        n = rho.numel()
        super().__init__(timestep_convention=timestep_convention, timestep_scale=timestep_scale, num_train_timesteps=n)
        if t_knots is None:
            t_knots = torch.arange(n + 1, dtype=DTYPE) / n
        self.t_knots = t_knots.to(DTYPE)
        self.table_rho = rho.to(DTYPE)
        self.vp = scales is None
        self.table_scales = None if scales is None else scales.to(DTYPE)
        self._rho = MonotoneCubic(self.t_knots, torch.cat([torch.tensor([rho0], dtype=DTYPE), self.table_rho]))
        if not self.vp:
            self._scale = MonotoneCubic(self.t_knots, torch.cat([torch.ones(1, dtype=DTYPE), self.table_scales]))
        # VE-view σ̃ of every table entry, for the index ↔ timestep convention (diffusers' `_sigma_to_t`).
        self.table_log_sigma = 0.5 * (torch.log(self.table_rho) - torch.log1p(-self.table_rho))
        if self.table_rho[-1] >= 1.0:
            lam_end = torch.tensor([ZERO_SNR_LOG_SNR], dtype=DTYPE)
            self.t_end = float(NoiseSchedule._t_from_log_snr(self, lam_end)[0])
        self.spec = {"name": "table", "rho": self.table_rho.tolist(), "scales": None if self.vp else self.table_scales.tolist()}

    # continuous extension
    def _rho_d(self, t):
        return self._rho(t, derivative=True)

    def _s(self, t):
        if self.vp:
            return torch.sqrt((1 - self._rho(t)).clamp(min=0))
        return self._scale(t)

    def _sigma(self, t):
        rho = self._rho(t)
        if self.vp:
            return torch.sqrt(rho.clamp(min=0))
        return self._scale(t) * torch.sqrt(rho / (1 - rho))

    def _f(self, t):
        if self.vp:
            rho, drho = self._rho_d(t)
            return -0.5 * drho / (1 - rho)
        s, ds = self._scale(t, derivative=True)
        return ds / s

    def _g2(self, t):
        rho, drho = self._rho_d(t)
        if self.vp:
            return drho / (1 - rho)
        return self._scale(t) ** 2 * drho / (1 - rho) ** 2

    def _log_snr(self, t):
        rho = self._rho(t)
        return torch.log1p(-rho) - torch.log(rho)

    # index ↔ time
    def t_from_index(self, index) -> torch.Tensor:
        """Time of training index i: t_i = (i + 1) / N (float64)."""
        return (as_float64(index, "index") + 1) / self.num_train_timesteps

    def index_from_t(self, t) -> torch.Tensor:
        """Fractional training index of time t: i = t N − 1 (inverse of :meth:`t_from_index`)."""
        return self._time(t) * self.num_train_timesteps - 1

    def _index_timestep(self, t):
        log_sigma = 0.5 * self.log_snr(t).neg()
        table = self.table_log_sigma.to(t.device)
        idx = torch.arange(table.numel(), dtype=DTYPE, device=t.device)
        out = _interp(log_sigma, table, idx)
        linear = t * self.num_train_timesteps - 1
        # Below the first entry, and in a zero-terminal-SNR last interval (σ̃ → ∞), the index is linear in t;
        # exactly at a table entry it is that entry's integer index.
        use_linear = log_sigma < table[0]
        if not torch.isfinite(table[-1]):
            use_linear |= linear > table.numel() - 2
        out = torch.where(use_linear, linear, out)
        at_knot = (linear - torch.round(linear)).abs() < 1e-9
        return torch.where(at_knot, torch.round(linear), out)

    def _t_from_index_timestep(self, ts):
        n = self.num_train_timesteps
        if ((ts < -1) | (ts > n - 1)).any():
            bad = ts[(ts < -1) | (ts > n - 1)][0].item()
            raise ValueError(f"timestep {bad} outside the training range [-1, {n - 1}]")
        linear = (ts + 1) / n
        table = self.table_log_sigma.to(ts.device)
        use_linear = (ts == torch.round(ts)) | (ts < 0)
        if not torch.isfinite(table[-1]):
            use_linear |= ts > n - 2
            table = torch.cat([table[:-1], table[-2:-1] + 1.0])  # placeholder, never used on that interval
        log_sigma = _interp(ts.clamp(min=0), torch.arange(n, dtype=DTYPE, device=ts.device), table)
        t_frac = self.t_from_sigma(torch.exp(log_sigma))
        return torch.where(use_linear, linear, t_frac)


def _interp(x, xp, fp):
    """Piecewise-linear interpolation of (xp, fp) at x (xp increasing), clamped at the ends."""
    xc = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, xc.contiguous(), right=True).clamp(1, xp.numel() - 1) - 1
    w = (xc - xp[i]) / (xp[i + 1] - xp[i])
    return fp[i] + w * (fp[i + 1] - fp[i])


# ====================================================================== closed forms
class VPLinearSchedule(NoiseSchedule):
    """VP-SDE with linear β(t): log s = −½ B(t), B(t) = β_min t + ½ (β_max − β_min) t², σ² = 1 − s²."""

    name = "vp-linear"

    def __init__(self, beta_min=0.1, beta_max=20.0, timestep_convention="t", timestep_scale=999.0, num_train_timesteps=1000):
        super().__init__(timestep_convention=timestep_convention, timestep_scale=timestep_scale, num_train_timesteps=num_train_timesteps)
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.spec = {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _B(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def _s(self, t):
        return torch.exp(-0.5 * self._B(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._B(t)))

    def _f(self, t):
        return -0.5 * self.beta(t)

    def _g2(self, t):
        return self.beta(t)

    def _log_snr(self, t):
        b = self._B(t)
        return -b - torch.log(-torch.expm1(-b))


class SubVPSchedule(VPLinearSchedule):
    """Score-SDE sub-VP: s as VP-linear, σ = 1 − s², g² = β(t)(1 − s⁴)."""

    name = "sub-vp"

    def _sigma(self, t):
        return -torch.expm1(-self._B(t))

    def _g2(self, t):
        return self.beta(t) * -torch.expm1(-2 * self._B(t))

    def _log_snr(self, t):
        b = self._B(t)
        return -b - 2 * torch.log(-torch.expm1(-b))


class VPCosineSchedule(NoiseSchedule):
    """Cosine VP schedule; ᾱ(1) = 0, so quantities that diverge at t = 1 are capped at t_end (module doc)."""

    name = "vp-cosine"

    def __init__(self, s=0.008, timestep_convention="t", timestep_scale=999.0, num_train_timesteps=1000):
        super().__init__(timestep_convention=timestep_convention, timestep_scale=timestep_scale, num_train_timesteps=num_train_timesteps)
        if not s > 0:
            raise ValueError(f"cosine offset s must be > 0, got {s}")
        self.offset = float(s)
        self._log_cos0 = math.log(math.cos(self.offset / (1 + self.offset) * math.pi / 2))
        # t_end: ᾱ(t)/(1 − ᾱ(t)) = 2⁻²⁴.
        abar_end = 2.0**-24 / (1 + 2.0**-24)
        phi_end = math.acos(math.sqrt(abar_end) * math.exp(self._log_cos0))
        self.t_end = phi_end * 2 * (1 + self.offset) / math.pi - self.offset
        self.spec = {"name": self.name, "s": self.offset}

    def _phi(self, t):
        return (t + self.offset) / (1 + self.offset) * (math.pi / 2)

    def _s(self, t):
        return (torch.cos(self._phi(t)) / math.exp(self._log_cos0)).clamp(min=0.0, max=1.0)

    def _sigma(self, t):
        return torch.sqrt((1 - self._s(t) ** 2).clamp(min=0.0))

    def _f(self, t):
        return -(math.pi / 2) / (1 + self.offset) * torch.tan(self._phi(t))

    def _g2(self, t):
        return -2 * self._f(t)

    def _log_snr(self, t):
        abar = self._s(t) ** 2
        return torch.log(abar) - torch.log1p(-abar)


class VESchedule(NoiseSchedule):
    """VE: s = 1, σ(t) = σ_min (σ_max/σ_min)^t, f = 0, g² = 2 σ² ln(σ_max/σ_min). σ(0) = σ_min (score-SDE)."""

    name = "ve"

    def __init__(self, sigma_min=0.01, sigma_max=50.0, timestep_convention="sigma", timestep_scale=1.0, num_train_timesteps=2000):
        super().__init__(timestep_convention=timestep_convention, timestep_scale=timestep_scale, num_train_timesteps=num_train_timesteps)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.spec = {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "timestep_convention": timestep_convention}

    def _s(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _f(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return 2 * self._sigma(t) ** 2 * self._log_ratio

    def _log_snr(self, t):
        return -2 * (math.log(self.sigma_min) + t * self._log_ratio)

    def _t_from_log_snr(self, lam):
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio


class EDMSchedule(NoiseSchedule):
    """EDM: s = 1, σ(t) = (a + t (b − a))^ρ with a = σ_min^{1/ρ}, b = σ_max^{1/ρ}; g² = 2 σ σ'."""

    name = "edm"

    def __init__(self, sigma_min=0.002, sigma_max=80.0, rho=7.0, timestep_convention="edm", timestep_scale=1.0, num_train_timesteps=1000):
        super().__init__(timestep_convention=timestep_convention, timestep_scale=timestep_scale, num_train_timesteps=num_train_timesteps)
        if not 0 < sigma_min < sigma_max or not rho > 0:
            raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self._a, self._b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        self.spec = {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho, "timestep_convention": timestep_convention}

    def _base(self, t):
        return self._a + t * (self._b - self._a)

    def _s(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self._base(t) ** self.rho

    def _f(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        base = self._base(t)
        return 2 * base**self.rho * self.rho * base ** (self.rho - 1) * (self._b - self._a)

    def _log_snr(self, t):
        return -2 * self.rho * torch.log(self._base(t))

    def _t_from_log_snr(self, lam):
        return (torch.exp(-0.5 * lam / self.rho) - self._a) / (self._b - self._a)
