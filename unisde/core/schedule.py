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
  1 − ρ (= ᾱ) is interpolated alongside by the same construction, so no coefficient is formed as 1 − ρ by
  subtraction and tables keep float64 relative precision where ᾱ ≪ 1 or σ̃ ≫ 1 (:class:`TabulatedSchedule`).
  Consecutive float32 ᾱ entries that repeat (diffusers' float32 cumprod) are allowed: g² = 0 between them.
* Parameters must be finite and representable: closed forms need finite positive, ordered parameters whose
  coefficients (σ², e^{∫β}, …) do not overflow float64; otherwise a ValueError names the value.
* A schedule *specification* — a name, inline JSON, a :meth:`NoiseSchedule.to_config` dict or a diffusers
  scheduler config — becomes a NoiseSchedule in one place, :func:`resolve_schedule`; every entry point
  (``from_config``, ``from_name``, the CLI, training, UnifiedScheduler's ``schedule=``) goes through it. A string
  is never opened as a file: files are read only by the explicit :func:`load_schedule_file`.
* Zero terminal SNR (s(1) = 0, e.g. ``rescale_betas_zero_snr`` or the un-clipped cosine): s(1) = 0 and
  σ(1) = 1 are returned exactly, but f, g², λ and σ̃ diverge there, so they are evaluated at
  t_end = the time where SNR = s²/σ² = 2⁻²⁴ (λ ≈ −16.6, σ̃ ≈ 4096, the value diffusers uses for such tables).
  For every other schedule t_end = 1. Where σ(0) = 0, λ(0) is reported as ``LOG_SNR_MAX`` instead of +∞.
  Hence no NaN or inf ever escapes these methods.
"""

from __future__ import annotations

import abc
import inspect
import json
import math
import os
import stat
from typing import Callable, Mapping

import numpy as np
import torch

from unisde._tensor import DTYPE, MonotoneCubic, as_float64, check_unit_interval, unknown_name_error
from unisde.plugins import hookimpl

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


_BISECTION_POINTS = 2048


def _bisection_depth(count: int) -> int:
    """Halvings per ``log_snr`` call in :meth:`NoiseSchedule._t_from_log_snr`: the largest k ≤ 8 whose 2^k − 1
    midpoints per value stay within ``_BISECTION_POINTS`` evaluations (1, one at a time, for large batches, where
    the arithmetic dominates and the extra midpoints would cost more than the calls they save)."""
    k = 1
    while k < 8 and max(count, 1) * ((1 << (k + 1)) - 1) <= _BISECTION_POINTS:
        k += 1
    return k


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

    def __init__(
        self, *, timestep_convention: str = "t", timestep_scale: float = 1.0, num_train_timesteps: int | None = None
    ):
        if timestep_convention not in TIMESTEP_CONVENTIONS:
            raise unknown_name_error("timestep_convention", timestep_convention, TIMESTEP_CONVENTIONS)
        self.timestep_convention = timestep_convention
        self.timestep_scale = _finite_number(timestep_scale, "timestep_scale", self.name, positive=True)
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
        """Bisection on the non-increasing λ(t) over [0, t_end]; 64 halvings reach float64 resolution.

        The halvings run in blocks of k (:func:`_bisection_depth`): the 2^k − 1 midpoints the next k halvings can
        visit, each formed from the bracket it would halve exactly as one halving at a time forms it, are
        evaluated in one call of ``log_snr``, and then the path is walked. The same comparisons on the same
        values give the same result bit for bit, in 64/k calls instead of 64: on a few values (a scalar timestep
        inversion, a grid) each call costs its overhead, ~0.25 ms on a table's cubics, not its arithmetic."""
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.t_end)
        done = 0
        while done < 64:
            k = min(_bisection_depth(lam.numel()), 64 - done)
            done += k
            if k == 1:  # one halving (large batches)
                mid = 0.5 * (lo + hi)
                above = self.log_snr(mid) > lam
                lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
                continue
            span = 1 << k
            # every[..., p]: the bracket end at position p of the 2^k parts of [lo, hi], one level at a time: each
            # new point is the midpoint of its two neighbours, the bracket a halving there would halve
            every = torch.stack([lo, hi], dim=-1)
            for _ in range(k):
                mids = 0.5 * (every[..., :-1] + every[..., 1:])
                every = torch.stack([every[..., :-1], mids], dim=-1).flatten(-2)
                every = torch.cat([every, hi.unsqueeze(-1)], dim=-1)
            inner = every[..., 1:span]
            above = self.log_snr(inner.reshape(-1)).reshape(inner.shape) > lam.unsqueeze(-1)
            lo_i = torch.zeros(lam.shape, dtype=torch.long, device=lam.device)
            hi_i = torch.full(lam.shape, span, dtype=torch.long, device=lam.device)
            for _ in range(k):
                mid_i = (lo_i + hi_i) // 2
                go_up = above.gather(-1, (mid_i - 1).unsqueeze(-1)).squeeze(-1)
                lo_i = torch.where(go_up, mid_i, lo_i)
                hi_i = torch.where(go_up, hi_i, mid_i)
            lo = every.gather(-1, lo_i.unsqueeze(-1)).squeeze(-1)
            hi = every.gather(-1, hi_i.unsqueeze(-1)).squeeze(-1)
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

    def prior_sample(
        self, shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32
    ) -> torch.Tensor:
        """Draw x_1 ~ N(0, prior_std² I) of the given shape."""
        noise = torch.randn(
            tuple(shape), generator=generator, device=device if generator is None else generator.device, dtype=dtype
        )
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
        raise ValueError(
            f"schedule {self.name!r} has no training-index timesteps; use timestep_convention 't', 'sigma' or 'edm'"
        )

    _t_from_index_timestep = _index_timestep

    @property
    def is_discrete(self) -> bool:
        """True for tables whose model timesteps are training indices 0 … N−1."""
        return self.timestep_convention == "index"

    def _check_finite(self) -> None:
        """ValueError naming the schedule's parameters if s, σ, f, g², λ or σ̃² is not finite somewhere on a grid
        of [0, 1] (65 points and t_end): parameters so large that a coefficient overflows float64 (σ_max with
        σ_max² > 1.8e308, a VP β integral with e^{∫β} > 1.8e308, …). Constructors call it once."""
        t = torch.cat([torch.linspace(0.0, 1.0, 65, dtype=DTYPE), torch.tensor([self.t_end], dtype=DTYPE)])
        checks = (
            ("s", self.s),
            ("sigma", self.sigma),
            ("f", self.f),
            ("g2", self.g2),
            ("log_snr", self.log_snr),
            ("ve_sigma²", lambda u: self.ve_sigma(u) ** 2),
        )
        for label, fn in checks:
            values = fn(t)
            bad = ~torch.isfinite(values)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(
                    f"{self!r}: {label}(t) = {values[i].item()} at t = {t[i].item():.6g} is not a finite "
                    "float64; the parameters are outside the range this schedule can represent"
                )

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
            raise ValueError(
                f"betas must lie in (0, 1) (the last may equal 1 for zero terminal SNR); betas[{i}] = {betas[i].item()}"
            )
        return NoiseSchedule.from_alphas_cumprod(torch.cumprod(1 - betas, 0), **kw)

    @staticmethod
    def from_alphas_cumprod(alphas_cumprod, **kw) -> "TabulatedSchedule":
        """A DDPM ᾱ table: s_i = √ᾱ_i, σ_i = √(1 − ᾱ_i), decreasing in (0, 1) (the last may be 0).

        Consecutive entries equal within float32 rounding (ᾱ_{i+1} ≤ ᾱ_i (1 + 2⁻²⁴)) are accepted and made
        equal (running minimum): diffusers builds ᾱ = cumprod(1 − β) in float32, where a factor 1 − β_i rounds so
        that ᾱ repeats once β_i ᾱ_i is below half an ulp of ᾱ_i — e.g. at index 4095 of a 10⁶-step
        ``squaredcos_cap_v2`` table. A repeat means g² = 0 on that interval (λ constant), so the extension stays
        monotone and g² ≥ 0. A larger increase is a ValueError naming both entries.
        """
        abar = as_float64(alphas_cumprod, "alphas_cumprod")
        _check_table(abar, "alphas_cumprod")
        bad = (abar <= 0) | (abar >= 1)
        bad[-1] = bool(abar[-1] < 0 or abar[-1] >= 1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"alphas_cumprod must lie in (0, 1) (the last may be 0); alphas_cumprod[{i}] = {abar[i].item()}"
            )
        rise = abar[1:] > abar[:-1] * (1 + FLOAT32_ROUNDING)
        if rise.any():
            i = int(rise.nonzero()[0]) + 1
            raise ValueError(
                f"alphas_cumprod must be decreasing with the index (equal within float32 rounding "
                f"allowed); alphas_cumprod[{i - 1}] = {abar[i - 1].item()} and "
                f"alphas_cumprod[{i}] = {abar[i].item()}"
            )
        abar = torch.cummin(abar, 0).values
        sched = TabulatedSchedule(rho=1 - abar, complement=abar, **kw)
        sched._check_finite()
        return sched

    @staticmethod
    def from_sigmas(sigmas, scales=None, **kw) -> "TabulatedSchedule":
        """A VE/EDM-style table σ_0 < … < σ_{N−1} (model space), with optional per-index scales s_i (default 1)."""
        sigmas = as_float64(sigmas, "sigmas")
        _check_table(sigmas, "sigmas")
        if (sigmas <= 0).any():
            i = int((sigmas <= 0).nonzero()[0])
            raise ValueError(f"sigmas must be > 0; sigmas[{i}] = {sigmas[i].item()}")
        if not torch.isfinite(sigmas**2).all():
            i = int((~torch.isfinite(sigmas**2)).nonzero()[0])
            raise ValueError(
                f"sigmas[{i}] = {sigmas[i].item()} is too large: σ² overflows float64 (σ must be < {SIGMA_MAX:.3g})"
            )
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
        if not torch.isfinite(ve**2).all():
            i = int((~torch.isfinite(ve**2)).nonzero()[0])
            raise ValueError(
                f"sigmas[{i}] / scales[{i}] = {ve[i].item()} is too large: σ̃² = (σ/s)² overflows float64 "
                f"(σ̃ must be < {SIGMA_MAX:.3g})"
            )
        _check_strict(ve, "sigmas / scales", increasing=True)
        # ρ = σ̃²/(1 + σ̃²) and 1 − ρ = 1/(1 + σ̃²), each without cancellation.
        rho, complement = ve**2 / (1 + ve**2), 1 / (1 + ve**2)
        vp = bool(torch.allclose(scales**2 + sigmas**2, torch.ones_like(sigmas), rtol=0, atol=1e-12))
        sched = TabulatedSchedule(rho=rho, scales=None if vp else scales, complement=complement, **kw)
        sched._check_finite()
        return sched

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
        sigma0 = _finite_number(sigma0, "sigma0", "from_sde", minimum=0.0)
        if (
            isinstance(num_panels, bool)
            or not isinstance(num_panels, (int, np.integer))
            or not 1 <= num_panels <= 10**6
        ):
            raise ValueError(f"from_sde: num_panels must be an integer in [1, 10⁶], got {num_panels!r}")
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
        fv = _sample_coefficient(f, "f", tn)
        g2v = _sample_coefficient(g2, "g2", tn)
        if (g2v < -1e-12).any():
            i = (g2v < -1e-12).nonzero()[0].tolist()
            raise ValueError(
                f"from_sde: g2(t) must be >= 0 on [0, 1]; g2({tn[tuple(i)].item():.6g}) = {g2v[tuple(i)].item()}"
            )
        panel_f = (h * fv) @ w
        log_s_edges = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(panel_f, 0)])
        log_s_nodes = log_s_edges[:-1, None] + (h * fv) @ partial.T
        integrand = g2v * torch.exp(-2 * log_s_nodes)
        var_edges = sigma0**2 + torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum((h * integrand) @ w, 0)])
        s_edges = torch.exp(log_s_edges)
        bad = ~torch.isfinite(var_edges) | (s_edges <= 0) | ~torch.isfinite(s_edges)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"from_sde: s(t) = exp ∫f = {s_edges[i].item()} and σ̃²(t) = {var_edges[i].item()} at "
                f"t = {edges[i].item():.6g} leave the float64 range (s must stay > 0 and σ̃² finite)"
            )
        rho, complement = var_edges / (1 + var_edges), 1 / (1 + var_edges)
        sched = TabulatedSchedule(
            rho=rho[1:],
            scales=s_edges[1:],
            t_knots=edges,
            rho0=float(rho[0]),
            timestep_convention="t",
            complement=complement[1:],
        )
        sched.name = "from-sde"
        sched._check_finite()
        return sched

    @staticmethod
    def from_diffusers_config(config, **kw) -> "NoiseSchedule":
        """The schedule a diffusers scheduler config describes: a dict, a ``ConfigMixin`` object (its ``.config``),
        or a path (str or ``os.PathLike``) to a ``scheduler_config.json`` or to a pipeline folder holding one; a
        path is read by :func:`read_schedule_config` (regular JSON file only).

        β-based configs (DDPM, DDIM, PNDM, Euler, Heun, LMS, DPMSolver, UniPC, …): every ``beta_schedule``
        DDPMScheduler accepts, ``trained_betas``, ``rescale_betas_zero_snr`` and ``num_train_timesteps``; the
        table is built in float32 exactly as diffusers builds it. EDMEuler/EDMDPMSolver configs give
        :meth:`edm` (``sigma_schedule="karras"``) or a geometric σ range (``"exponential"``) with EDM's
        c_noise timesteps; ScoreSdeVe configs give :meth:`ve` fed σ as the timestep. A UnifiedScheduler config
        whose ``schedule`` is set gives that schedule (:func:`resolve_schedule`: a name, inline JSON or a dict,
        never a file). A dict with a ``name`` key is a :meth:`to_config` description, resolved as such. Keys
        diffusers does not use for the schedule are ignored, as diffusers ignores them; ``kw``
        (``timestep_convention``, …) goes to the table of a β-based config.
        """
        if isinstance(config, (str, os.PathLike)):
            cfg = read_schedule_config(config)
        else:
            cfg = _as_config_dict(config, "from_diffusers_config")
        if "name" in cfg:
            return _from_unisde_config(cfg, "schedule config")
        return _from_diffusers_dict(cfg, **kw)

    @staticmethod
    def from_config(config) -> "NoiseSchedule":
        """Rebuild a schedule from :meth:`to_config` output, a diffusers scheduler config, a name or inline JSON.

        The same as :func:`resolve_schedule` (see there); a ``str`` is never opened as a file.
        """
        return resolve_schedule(config)

    @staticmethod
    def from_name(name: str, **kw) -> "NoiseSchedule":
        """A named schedule with keyword overrides of its parameters: the closed forms vp-linear (alias vp),
        vp-cosine (cosine), sub-vp (subvp), ve, edm; the diffusers tables ddpm-linear, ddpm-cosine
        (``squaredcos_cap_v2``) and scaled-linear (Stable Diffusion's); or a name a plugin registered
        (``unisde_register_schedules``). Built-in names take precedence over plugin names.

        An unknown name is a ValueError listing the valid names with the closest match; an unknown keyword is a
        ValueError naming it and the schedule's parameters.
        """
        return _schedule_by_name(name, kw, "schedule")


SCHEDULE_NAMES = (
    "vp-linear",
    "vp-cosine",
    "cosine",
    "sub-vp",
    "ve",
    "edm",
    "ddpm-linear",
    "ddpm-cosine",
    "scaled-linear",
    "rectified-flow",
)

_BETA_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
SIGMA_SCHEDULES = ("karras", "exponential")

DIFFUSERS_SCHEDULE_KEYS = frozenset(
    _BETA_KEYS
    + (
        "_class_name",
        "_diffusers_version",
        "sigma_min",
        "sigma_max",
        "sigma_data",
        "sigma_schedule",
        "rho",
        "snr",
        "schedule",
    )
)
"""Keys whose presence makes a dict without ``name`` a diffusers scheduler config (see :func:`resolve_schedule`)."""

TABLE_KEYS = ("rho", "rho_complement", "scales", "t_knots", "rho0", "timestep_convention", "timestep_scale")
"""Keys of a ``{"name": "table", ...}`` config (:class:`TabulatedSchedule`; ``rho`` is required)."""

MAX_TRAIN_TIMESTEPS = 10**7
"""Largest ``num_train_timesteps`` a diffusers config may ask for (a float64 table of N entries costs 8N bytes)."""

MAX_SCHEDULE_FILE_BYTES = 10 * 2**20
"""Size limit of a schedule / scheduler config JSON file read by :func:`read_schedule_config` (10 MiB)."""

FLOAT32_ROUNDING = 2.0**-24
"""Unit roundoff of float32: consecutive ᾱ entries within this relative distance count as equal."""

SIGMA_MAX = math.sqrt(torch.finfo(DTYPE).max) / 2
"""Largest σ (or σ̃) a schedule may reach: beyond it σ² (and g² ∝ σ²) overflows float64 (≈ 6.7e153)."""


# ====================================================================== the one resolver
def schedule_names() -> list[str]:
    """Every schedule name :func:`resolve_schedule` accepts: the built-in ones and those plugins registered."""
    from unisde.plugins import list_schedules

    return sorted(set(SCHEDULE_NAMES) | set(list_schedules()))


def resolve_schedule(spec) -> NoiseSchedule:
    """The one place a schedule specification becomes a :class:`NoiseSchedule`.

    ``spec`` is one of
      * a NoiseSchedule (returned as is);
      * a name (str): a built-in name or one a plugin registered (:meth:`NoiseSchedule.from_name`);
      * inline JSON (a str starting with ``{``) holding a dict as below;
      * a dict (or a diffusers ``ConfigMixin`` object / FrozenDict): with a ``name`` key it is
        :meth:`NoiseSchedule.to_config` output — a schedule name with its parameters, ``"table"``
        (keys :data:`TABLE_KEYS`) or ``"diffusers"`` (a β config); without ``name`` it must be a diffusers
        scheduler config, recognised by one of :data:`DIFFUSERS_SCHEDULE_KEYS`; a dict that is neither is a
        ValueError naming its keys;
      * an ``os.PathLike`` (e.g. ``pathlib.Path``): an explicit file, read by :func:`load_schedule_file`.

    A ``str`` is never opened as a file, even when it names one: a config value such as ``"/dev/zero"`` is an
    unknown schedule name (ValueError listing the valid names). Reading a file is always an explicit call
    (:func:`load_schedule_file`, a ``pathlib.Path``, or the command line's :func:`resolve_schedule_argument`).
    No spec ever falls back to another schedule.
    """
    if isinstance(spec, NoiseSchedule):
        return spec
    if isinstance(spec, os.PathLike):
        return load_schedule_file(spec)
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                cfg = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"schedule {_clip(text)} looks like inline JSON but does not parse: {exc}") from None
            return _from_config_dict(cfg, "inline JSON schedule config")
        return _schedule_by_name(text, {}, "schedule")
    config = getattr(spec, "config", None)
    if not isinstance(spec, Mapping) and isinstance(config, Mapping):  # a diffusers ConfigMixin object
        spec = config
    if isinstance(spec, Mapping):
        return _from_config_dict(dict(spec), "schedule config")
    raise ValueError(
        f"a schedule is a NoiseSchedule, a name ({', '.join(SCHEDULE_NAMES)}, or a plugin's), inline "
        f"JSON, a config dict or a pathlib.Path; got {type(spec).__name__} {_clip(repr(spec))}"
    )


def resolve_schedule_argument(text) -> NoiseSchedule:
    """The schedule a command-line argument (``unisde schedule ARG``, ``unisde train --schedule ARG``) names.

    In this order: a schedule name; inline JSON; an existing path, read by :func:`load_schedule_file` (typing
    a path on the command line is the explicit act of naming a file); otherwise a ValueError — "no such file"
    for an argument that looks like a path (ends in ``.json`` or holds a path separator), else the unknown-name
    error of :func:`resolve_schedule`. Non-string arguments go to :func:`resolve_schedule`.
    """
    if not isinstance(text, str) or text.strip().startswith("{"):
        return resolve_schedule(text)
    if _is_schedule_name(text.strip()):
        return resolve_schedule(text)
    if os.path.lexists(text):
        return load_schedule_file(text)
    if text.endswith(".json") or "/" in text or os.sep in text:
        raise ValueError(
            f"no such file {text!r}; expected a schedule name ({', '.join(schedule_names())}), "
            "inline JSON or a schedule / scheduler config file (or a pipeline directory)"
        )
    return resolve_schedule(text)


def read_schedule_config(path) -> dict:
    """The JSON object in the schedule or scheduler config file ``path`` (the only place unisde reads one).

    ``path`` is a regular JSON file of at most :data:`MAX_SCHEDULE_FILE_BYTES`, or a pipeline folder holding
    ``scheduler_config.json`` or ``scheduler/scheduler_config.json``. Anything else — a FIFO, a device such as
    /dev/zero, a socket, an oversized file — is a ValueError naming the path, raised before any byte is read:
    the path is checked with ``stat``, opened non-blocking, and checked again on the open descriptor.
    """
    path = os.fsdecode(os.fspath(path))
    if os.path.isdir(path):
        for candidate in ("scheduler_config.json", os.path.join("scheduler", "scheduler_config.json")):
            if os.path.lexists(os.path.join(path, candidate)):  # checked below: a link to /dev/zero is named
                path = os.path.join(path, candidate)
                break
        else:
            raise ValueError(
                f"directory {path!r} has neither scheduler_config.json nor scheduler/scheduler_config.json"
            )
    try:
        _check_schedule_file(os.stat(path), path)
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
        )
    except FileNotFoundError:
        raise ValueError(f"no such file {path!r}") from None
    except OSError as exc:
        raise ValueError(f"cannot read schedule file {path!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        _check_schedule_file(os.fstat(fh.fileno()), path)  # the path may name another file since the stat
        data = fh.read(MAX_SCHEDULE_FILE_BYTES + 1)
    if len(data) > MAX_SCHEDULE_FILE_BYTES:
        raise ValueError(f"schedule file {path!r} exceeds {MAX_SCHEDULE_FILE_BYTES} bytes")
    try:
        cfg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path!r} is not a valid scheduler config: not JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path!r} is not a valid scheduler config: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def load_schedule_file(path) -> NoiseSchedule:
    """The schedule described by the JSON file ``path`` (:func:`read_schedule_config`): a
    :meth:`NoiseSchedule.to_config` description or a diffusers scheduler config, resolved by
    :func:`resolve_schedule`; errors name the path."""
    cfg = read_schedule_config(path)
    try:
        return _from_config_dict(cfg, "schedule config")
    except ValueError as exc:
        raise ValueError(f"{os.fsdecode(os.fspath(path))!r} is not a valid scheduler config: {exc}") from None


def _check_schedule_file(info: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kinds = (
            (stat.S_ISDIR, "a directory"),
            (stat.S_ISFIFO, "a FIFO"),
            (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"),
        )
        kind = next((word for test, word in kinds if test(info.st_mode)), "not a regular file")
        raise ValueError(f"schedule file {path!r} is {kind}; a schedule file must be a regular JSON file")
    if info.st_size > MAX_SCHEDULE_FILE_BYTES:
        raise ValueError(
            f"schedule file {path!r} has {info.st_size} bytes, more than the {MAX_SCHEDULE_FILE_BYTES} "
            "a schedule config may have"
        )


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_config_dict(config, where: str) -> dict:
    inner = getattr(config, "config", None)
    if not isinstance(config, Mapping) and isinstance(inner, Mapping):
        config = inner
    if isinstance(config, Mapping):
        return dict(config)
    raise ValueError(
        f"{where}: expected a scheduler config dict, a ConfigMixin object or a path to a JSON file, "
        f"got {type(config).__name__}"
    )


def _from_config_dict(cfg, where: str) -> NoiseSchedule:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a JSON object (dict), got {type(cfg).__name__} {_clip(repr(cfg))}")
    cfg = dict(cfg)
    if "name" in cfg:
        return _from_unisde_config(cfg, where)
    if not cfg:
        raise ValueError(
            f"{where} is empty; give a 'name' ({', '.join(SCHEDULE_NAMES)}, 'table', 'diffusers') or "
            "the keys of a diffusers scheduler config"
        )
    if DIFFUSERS_SCHEDULE_KEYS.intersection(cfg):
        return _from_diffusers_dict(cfg)
    raise ValueError(
        f"{where} with keys {sorted(map(str, cfg))} is neither a unisde schedule config (a 'name' key: a "
        f"schedule name, 'table' or 'diffusers') nor a diffusers scheduler config (keys such as "
        f"{', '.join(sorted(k for k in DIFFUSERS_SCHEDULE_KEYS if not k.startswith('_')))})"
    )


def _from_unisde_config(cfg: dict, where: str) -> NoiseSchedule:
    cfg = dict(cfg)
    name = cfg.pop("name")
    if not isinstance(name, str):
        raise ValueError(f"{where}: 'name' must be a string, got {name!r}")
    if name == "table":
        return _table_from_config(cfg, f"{where} 'table'")
    if name == "diffusers":
        unknown = sorted(set(cfg) - DIFFUSERS_SCHEDULE_KEYS)
        if unknown:
            raise ValueError(
                f"{where} 'diffusers': unknown keys {unknown}; valid keys: {', '.join(sorted(DIFFUSERS_SCHEDULE_KEYS))}"
            )
        return _from_diffusers_dict(cfg)
    return _schedule_by_name(name, cfg, f"{where}")


def _builtin_factories() -> dict:
    def ddpm(beta_schedule, beta_start=0.0001, beta_end=0.02):
        def factory(num_train_timesteps=1000, beta_start=beta_start, beta_end=beta_end, rescale_betas_zero_snr=False):
            return _from_diffusers_dict(
                {
                    "beta_schedule": beta_schedule,
                    "num_train_timesteps": num_train_timesteps,
                    "beta_start": beta_start,
                    "beta_end": beta_end,
                    "rescale_betas_zero_snr": rescale_betas_zero_snr,
                }
            )

        return factory

    return {
        "vp-linear": VPLinearSchedule,
        "vp": VPLinearSchedule,
        "vp-cosine": VPCosineSchedule,
        "cosine": VPCosineSchedule,
        "sub-vp": SubVPSchedule,
        "subvp": SubVPSchedule,
        "ve": VESchedule,
        "edm": EDMSchedule,
        "ddpm-linear": ddpm("linear"),
        "ddpm-cosine": ddpm("squaredcos_cap_v2"),
        "scaled-linear": ddpm("scaled_linear", 0.00085, 0.012),
        "rectified-flow": RectifiedFlowSchedule,
        "flow": RectifiedFlowSchedule,
    }


BUILTIN_ALIASES = {"vp": "vp-linear", "cosine": "vp-cosine", "subvp": "sub-vp"}
"""Alternative names of built-in schedules (alias → name)."""


@hookimpl
def unisde_register_schedules(register):
    """The built-in schedules, registered through the same hook as a plugin's (``unisde plugins`` lists them, and a
    plugin reusing one of their names is reported as a conflict; the built-in is kept)."""
    factories = _builtin_factories()
    for name, factory in factories.items():
        if name not in BUILTIN_ALIASES:
            register(
                name, factory, aliases=tuple(a for a, n in BUILTIN_ALIASES.items() if n == name and a in factories)
            )


def builtin_schedule_key(name) -> str | None:
    """The built-in schedule ``name`` refers to (case, ``_`` vs ``-`` ignored; aliases included), or None."""
    key = str(name).strip().lower().replace("_", "-")
    return key if key in _builtin_factories() else None


def _is_schedule_name(name: str) -> bool:
    if builtin_schedule_key(name) is not None:
        return True
    from unisde.plugins import list_schedules

    return name in list_schedules()


def _schedule_by_name(name, kw: dict, where: str) -> NoiseSchedule:
    key = str(name).strip().lower().replace("_", "-")
    factories = _builtin_factories()
    factory = factories.get(key)
    if factory is None:
        from unisde.plugins import get_schedule_factory, list_schedules

        if str(name) not in list_schedules():
            err = unknown_name_error("schedule", name, schedule_names())
            if isinstance(name, str) and ("/" in name or os.sep in name or name.endswith(".json")):
                err = ValueError(
                    f"{err} A schedule given as a string is a name or inline JSON and is never opened as "
                    "a file; read a file with unisde.core.schedule.load_schedule_file(path)."
                )
            raise err
        factory = get_schedule_factory(str(name))
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kw)
        except TypeError:
            params = [
                p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            unknown = sorted(set(kw) - set(params))
            raise ValueError(
                f"{where}: schedule {name!r} has no parameter(s) {unknown or sorted(kw)}; its parameters: "
                f"{', '.join(params)}"
            ) from None
    schedule = factory(**kw)
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule factory {name!r} returned {type(schedule).__name__}, not a NoiseSchedule")
    return schedule


def _table_from_config(cfg: dict, where: str) -> "TabulatedSchedule":
    """A :class:`TabulatedSchedule` from its :meth:`to_config` keys, every entry validated (errors name it)."""
    unknown = sorted(set(cfg) - set(TABLE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {', '.join(TABLE_KEYS)}")
    if "rho" not in cfg:
        raise ValueError(f"{where} needs 'rho': the table ρ_i = σ̃_i²/(1 + σ̃_i²) (= 1 − ᾱ_i for a VP table)")
    rho = _config_table(cfg["rho"], "rho", where)
    n = rho.numel()
    scales = None if cfg.get("scales") is None else _config_table(cfg["scales"], "scales", where, n)
    rho0 = _finite_number(cfg.get("rho0", 0.0), "rho0", where, minimum=0.0)
    if rho0 >= 1:
        raise ValueError(f"{where}: rho0 = {rho0} must lie in [0, 1)")
    bad = (rho <= 0) | (rho > 1)
    bad[:-1] |= rho[:-1] >= 1
    if scales is not None:
        bad[-1] |= bool(rho[-1] >= 1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"{where}: rho[{i}] = {rho[i].item()} is outside (0, 1) (ρ = σ̃²/(1 + σ̃²); only the last "
            "entry of a table without scales may be 1: zero terminal SNR)"
        )
    previous = torch.cat([torch.tensor([rho0], dtype=DTYPE), rho])
    drop = previous[1:] < previous[:-1]
    if drop.any():
        i = int(drop.nonzero()[0])
        before = f"rho[{i - 1}] = {rho[i - 1].item()}" if i > 0 else f"rho0 = {rho0}"
        raise ValueError(
            f"{where}: rho must be non-decreasing (ρ grows with t, so λ decreases and g² ≥ 0); "
            f"rho[{i}] = {rho[i].item()} < {before}"
        )
    complement = None
    if cfg.get("rho_complement") is not None:
        complement = _config_table(cfg["rho_complement"], "rho_complement", where, n)
        off = ((rho + complement - 1).abs() > 2.0**-50) | (complement < 0)
        if off.any():
            i = int(off.nonzero()[0])
            raise ValueError(
                f"{where}: rho_complement[{i}] = {complement[i].item()} is not 1 − rho[{i}] = "
                f"{1 - rho[i].item()} (to 2⁻⁵⁰)"
            )
        complement = torch.cummin(complement, 0).values  # ties of ρ may differ by an ulp in the complement
    if scales is not None and (scales <= 0).any():
        i = int((scales <= 0).nonzero()[0])
        raise ValueError(f"{where}: scales[{i}] = {scales[i].item()} must be > 0")
    t_knots = None
    if cfg.get("t_knots") is not None:
        t_knots = _config_table(cfg["t_knots"], "t_knots", where, n + 1)
        if t_knots[0] != 0 or t_knots[-1] != 1 or bool((t_knots[1:] <= t_knots[:-1]).any()):
            raise ValueError(f"{where}: t_knots must increase strictly from 0 to 1, got {_clip(str(t_knots.tolist()))}")
    options = {}
    if "timestep_convention" in cfg:
        options["timestep_convention"] = cfg["timestep_convention"]
    if "timestep_scale" in cfg:
        options["timestep_scale"] = _finite_number(cfg["timestep_scale"], "timestep_scale", where, positive=True)
    sched = TabulatedSchedule(rho=rho, scales=scales, t_knots=t_knots, rho0=rho0, complement=complement, **options)
    sched._check_finite()
    return sched


def _config_table(values, name: str, where: str, length: int | None = None) -> torch.Tensor:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ValueError(f"{where}: {name} must be a list of numbers, got {type(values).__name__}")
    try:
        table = as_float64(values, f"{where}: {name}")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {name} must be a list of finite numbers: {exc}") from None
    _check_table(table, f"{where}: {name}")
    if length is not None and table.numel() != length:
        raise ValueError(f"{where}: {name} has {table.numel()} entries, expected {length}")
    return table


def _finite_number(value, name: str, where: str, *, positive: bool = False, minimum: float | None = None) -> float:
    """``value`` as a float, or a ValueError naming it unless it is a finite real number (> 0 / ≥ minimum)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        and not (isinstance(value, torch.Tensor) and value.numel() == 1)
    ):
        raise ValueError(f"{where}: {name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where}: {name} must be finite, got {name}={number}")
    if positive and not number > 0:
        raise ValueError(f"{where}: {name} must be > 0, got {name}={number}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {name}={number}")
    return number


def _sample_coefficient(fn: Callable, name: str, t: torch.Tensor) -> torch.Tensor:
    """fn evaluated at every t (shape preserved), with a ValueError for a wrong shape or a non-finite value."""
    out = fn(t.flatten())
    if isinstance(out, torch.Tensor):
        out = out.detach().to(DTYPE)
    else:
        out = torch.as_tensor(np.asarray(out, dtype=np.float64))
    if out.shape != (t.numel(),):
        raise ValueError(
            f"from_sde: {name}(t) must return one value per time, a tensor of shape ({t.numel()},) for "
            f"t of that shape; got shape {tuple(out.shape)} (a scalar {name} must be broadcast, e.g. "
            f"lambda t: torch.full_like(t, c))"
        )
    bad = ~torch.isfinite(out)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"from_sde: {name}(t) is not finite at t = {t.flatten()[i].item():.6g}: {out[i].item()}")
    return out.reshape(t.shape)


def _num_train_timesteps(cfg: Mapping, default: int) -> int:
    value = cfg.get("num_train_timesteps")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value != int(value):
        raise ValueError(f"num_train_timesteps must be a positive integer, got {value!r}")
    if not 1 <= int(value) <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"num_train_timesteps must lie in [1, {MAX_TRAIN_TIMESTEPS}], got {value!r}")
    return int(value)


def _config_value(cfg: Mapping, key: str, default):
    value = cfg.get(key)
    return default if value is None else value


def _from_diffusers_dict(cfg: Mapping, **kw) -> NoiseSchedule:
    """The schedule of a diffusers scheduler config dict (see :meth:`NoiseSchedule.from_diffusers_config`)."""
    nested = cfg.get("schedule")
    if nested is not None and nested != "" and nested != {}:
        if not isinstance(nested, (str, Mapping)):
            raise ValueError(
                f"scheduler config 'schedule' must be a name, inline JSON or a dict, got {type(nested).__name__}"
            )
        return resolve_schedule(nested)
    cls = str(cfg.get("_class_name") or "")
    where = f"diffusers config of {cls}" if cls else "diffusers config"
    if cls.startswith("EDM") or "sigma_data" in cfg and "beta_schedule" not in cfg:
        smin = _finite_number(_config_value(cfg, "sigma_min", 0.002), "sigma_min", where)
        smax = _finite_number(_config_value(cfg, "sigma_max", 80.0), "sigma_max", where)
        n = _num_train_timesteps(cfg, 1000)
        kind = _config_value(cfg, "sigma_schedule", "karras")
        if kind == "exponential":
            return NoiseSchedule.ve(smin, smax, timestep_convention="edm", num_train_timesteps=n)
        if kind != "karras":
            raise unknown_name_error("sigma_schedule", kind, SIGMA_SCHEDULES)
        rho = _finite_number(_config_value(cfg, "rho", 7.0), "rho", where)
        return NoiseSchedule.edm(smin, smax, rho, timestep_convention="edm", num_train_timesteps=n)
    if cls == "ScoreSdeVeScheduler" or ("snr" in cfg and "sigma_max" in cfg and "beta_schedule" not in cfg):
        smin = _finite_number(_config_value(cfg, "sigma_min", 0.01), "sigma_min", where)
        smax = _finite_number(_config_value(cfg, "sigma_max", 1348.0), "sigma_max", where)
        return NoiseSchedule.ve(
            smin, smax, timestep_convention="sigma", num_train_timesteps=_num_train_timesteps(cfg, 2000)
        )
    betas = diffusers_betas(cfg)
    abar = torch.cumprod(1.0 - betas, dim=0)  # float32 like diffusers, then float64 below
    try:
        sched = NoiseSchedule.from_alphas_cumprod(abar.to(DTYPE), **kw)
    except ValueError as exc:
        described = ", ".join(f"{k}={cfg[k]!r}" for k in _BETA_KEYS if k in cfg and k != "trained_betas")
        raise ValueError(f"{where} ({described or 'defaults'}) gives an invalid table: {exc}") from None
    sched.spec = {"name": "diffusers", **{k: cfg[k] for k in _BETA_KEYS if k in cfg}}
    return sched


def diffusers_betas(cfg: Mapping) -> torch.Tensor:
    """β table of a diffusers β-based config, built in float32 exactly as DDPMScheduler builds it.

    ``num_train_timesteps`` must lie in [1, :data:`MAX_TRAIN_TIMESTEPS`]; ``beta_start`` and ``beta_end`` must be
    finite numbers in [0, 1] (diffusers' defaults 0.0001 and 0.02 where absent or None).
    """
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr

    n = _num_train_timesteps(cfg, 1000)
    start = _finite_number(_config_value(cfg, "beta_start", 0.0001), "beta_start", "diffusers config", minimum=0.0)
    end = _finite_number(_config_value(cfg, "beta_end", 0.02), "beta_end", "diffusers config", minimum=0.0)
    for name, value in (("beta_start", start), ("beta_end", end)):
        if value > 1:
            raise ValueError(f"diffusers config: {name} must lie in [0, 1], got {name}={value}")
    schedule = _config_value(cfg, "beta_schedule", "linear")
    trained = cfg.get("trained_betas")
    if trained is not None:
        betas = as_float64(trained, "trained_betas").to(torch.float32)
        _check_table(betas, "trained_betas")
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
        raise ValueError(
            f"{name} must be strictly {word} with the index; {name}[{i - 1}] = {values[i - 1].item()} and "
            f"{name}[{i}] = {values[i].item()}"
        )


# ====================================================================== tabulated
class TabulatedSchedule(NoiseSchedule):
    """A schedule given by a table, extended to continuous t by monotone C¹ cubics (module doc).

    ``rho`` holds ρ_i = σ̃_i² / (1 + σ̃_i²) for table index i at t_i = (i + 1)/N (non-decreasing, in (0, 1]; ties
    allowed, see :meth:`NoiseSchedule.from_alphas_cumprod`); ``scales`` the s_i (None for a VP table, where
    s = √(1 − ρ) everywhere, so the extension is exactly variance preserving and f = −g²/2). ``complement``
    holds 1 − ρ_i computed without cancellation (ᾱ_i for a VP table, 1 / (1 + σ̃_i²) for a σ table); it defaults
    to 1 − ρ_i, which keeps only absolute precision ε ≈ 1.1e-16 where ρ_i ≈ 1. ``t_knots`` are the knot times
    (default 0, 1/N, …, 1). The knot t = 0 carries s = 1 and ρ = ``rho0`` (0: clean data).

    Both ρ and 1 − ρ are interpolated, each by its own monotone cubic. The PCHIP construction commutes with
    y ↦ 1 − y (Fritsch & Carlson 1980 [PCHIP]), so in exact arithmetic the two cubics are complementary and this
    is one interpolant; in float64 each quantity is taken from the cubic in which it is small: s = √(1 − ρ) for a
    VP table, λ = log(1 − ρ) − log ρ, f and g² from 1 − ρ, σ and dρ/dt near t = 0 from ρ. So s, σ, f, g² and λ
    keep float64 relative precision even where ᾱ ≪ 1 (a VP table's end, where √(1 − ρ) formed by subtraction
    had relative error ε / (2ᾱ)) or σ̃ ≫ 1 (a VE table's end).
    """

    name = "table"

    def __init__(
        self,
        rho: torch.Tensor,
        scales: torch.Tensor | None = None,
        t_knots: torch.Tensor | None = None,
        rho0: float = 0.0,
        timestep_convention: str = "index",
        timestep_scale: float = 1.0,
        complement: torch.Tensor | None = None,
    ):
        n = rho.numel()
        super().__init__(timestep_convention=timestep_convention, timestep_scale=timestep_scale, num_train_timesteps=n)
        if t_knots is None:
            t_knots = torch.arange(n + 1, dtype=DTYPE) / n
        self.t_knots = t_knots.to(DTYPE)
        self.table_rho = rho.to(DTYPE)
        self.table_complement = (1 - self.table_rho) if complement is None else complement.to(DTYPE)
        self.rho0 = float(rho0)
        self.vp = scales is None
        self.table_scales = None if scales is None else scales.to(DTYPE)
        self._rho = MonotoneCubic(self.t_knots, torch.cat([torch.tensor([self.rho0], dtype=DTYPE), self.table_rho]))
        self._comp = MonotoneCubic(
            self.t_knots, torch.cat([torch.tensor([1 - self.rho0], dtype=DTYPE), self.table_complement])
        )
        if not self.vp:
            self._scale = MonotoneCubic(self.t_knots, torch.cat([torch.ones(1, dtype=DTYPE), self.table_scales]))
        # VE-view σ̃ of every table entry, for the index ↔ timestep convention (diffusers' `_sigma_to_t`).
        self.table_log_sigma = 0.5 * (torch.log(self.table_rho) - torch.log(self.table_complement))
        if self.table_complement[-1] <= 0.0:  # zero terminal SNR: ᾱ = 0 exactly at the last entry
            lam_end = torch.tensor([ZERO_SNR_LOG_SNR], dtype=DTYPE)
            self.t_end = float(NoiseSchedule._t_from_log_snr(self, lam_end)[0])

    @property
    def spec(self) -> dict:
        """The :meth:`to_config` description, built on demand (a 10⁶-entry table is 10⁶ floats per list)."""
        if self._spec is not None:
            return self._spec
        spec = {
            "name": "table",
            "rho": self.table_rho.tolist(),
            "rho_complement": self.table_complement.tolist(),
            "scales": None if self.vp else self.table_scales.tolist(),
        }
        uniform = torch.arange(self.table_rho.numel() + 1, dtype=DTYPE) / self.table_rho.numel()
        if not torch.equal(self.t_knots, uniform):
            spec["t_knots"] = self.t_knots.tolist()
        if self.rho0 != 0.0:
            spec["rho0"] = self.rho0
        if (self.timestep_convention, self.timestep_scale) != ("index", 1.0):
            spec.update(timestep_convention=self.timestep_convention, timestep_scale=self.timestep_scale)
        return spec

    @spec.setter
    def spec(self, value):
        self._spec = None if not value else value

    def __repr__(self):
        if self._spec is not None:
            return super().__repr__()
        kind = "VP" if self.vp else "scaled"
        low, high = math.exp(self.table_log_sigma[0]), math.exp(min(float(self.table_log_sigma[-1]), 700.0))
        return f"TabulatedSchedule({kind}, N={self.table_rho.numel()}, sigma_tilde=[{low:.4g}, {high:.4g}])"

    # continuous extension
    def _parts(self, t):
        """ρ(t), 1 − ρ(t) and dρ/dt, each from the cubic in which it is small (class doc)."""
        rho, drho = self._rho(t, derivative=True)
        comp, dcomp = self._comp(t, derivative=True)
        return rho, comp, torch.where(rho <= 0.5, drho, -dcomp)

    def _s(self, t):
        if self.vp:
            return torch.sqrt(self._comp(t))
        return self._scale(t)

    def _sigma(self, t):
        rho = self._rho(t)
        if self.vp:
            return torch.sqrt(rho)
        return self._scale(t) * torch.sqrt(rho / self._comp(t))

    def _f(self, t):
        if self.vp:
            _, comp, drho = self._parts(t)
            return -0.5 * drho / comp
        s, ds = self._scale(t, derivative=True)
        return ds / s

    def _g2(self, t):
        _, comp, drho = self._parts(t)
        if self.vp:
            return drho / comp
        return self._scale(t) ** 2 * drho / comp**2

    def _log_snr(self, t):
        return torch.log(self._comp(t)) - torch.log(self._rho(t))

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
        out = _interp(log_sigma, table, None)  # the fractional index; no table-sized arange (10⁶-step tables)
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
        # Linear in the index between table entries, gathered per timestep (no table-sized temporaries); a
        # zero-terminal-SNR last entry (+∞) is replaced by a placeholder, never used on that interval.
        pos = ts.clamp(0, n - 1)
        i = pos.floor().clamp(max=max(n - 2, 0)).long()
        lo, hi = table[i], table[(i + 1).clamp(max=n - 1)]
        hi = torch.where(torch.isfinite(hi), hi, lo + 1.0)
        log_sigma = lo + (pos - i.to(pos.dtype)) * (hi - lo)
        t_frac = self.t_from_sigma(torch.exp(log_sigma))
        return torch.where(use_linear, linear, t_frac)


def _interp(x, xp, fp):
    """Piecewise-linear interpolation of (xp, fp) at x (xp non-decreasing), clamped at the ends; ``fp=None`` means
    fp = 0, 1, …, len(xp) − 1 (the fractional position in xp) without building it.

    Where xp repeats (a table whose float32 ᾱ entries tie), x equal to the repeated value maps to the last of
    the run (``searchsorted(right=True)``), and a zero-width interval contributes its left value.
    """
    if xp.numel() == 1:
        return torch.zeros_like(x) if fp is None else fp[0].expand_as(x).clone()
    xc = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, xc.contiguous(), right=True).clamp(1, xp.numel() - 1) - 1
    width = xp[i + 1] - xp[i]
    safe = torch.where(width > 0, width, torch.ones_like(width))
    w = torch.where(width > 0, (xc - xp[i]) / safe, torch.zeros_like(xc))
    if fp is None:
        return i.to(x.dtype) + w
    return fp[i] + w * (fp[i + 1] - fp[i])


# ====================================================================== closed forms
def _sigma_range(sigma_min, sigma_max, where: str) -> tuple[float, float]:
    """(σ_min, σ_max) as floats: finite, 0 < σ_min < σ_max ≤ SIGMA_MAX (σ² must not overflow), else ValueError."""
    sigma_min = _finite_number(sigma_min, "sigma_min", where, positive=True)
    sigma_max = _finite_number(sigma_max, "sigma_max", where, positive=True)
    if not sigma_min < sigma_max:
        raise ValueError(f"{where}: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if sigma_max > SIGMA_MAX:
        raise ValueError(
            f"{where}: sigma_max={sigma_max} is too large: σ² overflows float64 (σ must be < {SIGMA_MAX:.3g})"
        )
    return sigma_min, sigma_max


class VPLinearSchedule(NoiseSchedule):
    """VP-SDE with linear β(t): log s = −½ B(t), B(t) = β_min t + ½ (β_max − β_min) t², σ² = 1 − s²."""

    name = "vp-linear"

    def __init__(
        self, beta_min=0.1, beta_max=20.0, timestep_convention="t", timestep_scale=999.0, num_train_timesteps=1000
    ):
        super().__init__(
            timestep_convention=timestep_convention,
            timestep_scale=timestep_scale,
            num_train_timesteps=num_train_timesteps,
        )
        beta_min = _finite_number(beta_min, "beta_min", self.name, positive=True)
        beta_max = _finite_number(beta_max, "beta_max", self.name, positive=True)
        if not beta_min <= beta_max:
            raise ValueError(
                f"{self.name}: need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}"
            )
        self.beta_min, self.beta_max = beta_min, beta_max
        self.spec = {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}
        self._check_finite()  # e^{∫β} must stay finite: ½(β_min + β_max) < 709

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
        super().__init__(
            timestep_convention=timestep_convention,
            timestep_scale=timestep_scale,
            num_train_timesteps=num_train_timesteps,
        )
        self.offset = _finite_number(s, "s (cosine offset)", self.name, positive=True)
        self._log_cos0 = math.log(math.cos(self.offset / (1 + self.offset) * math.pi / 2))
        # t_end: ᾱ(t)/(1 − ᾱ(t)) = 2⁻²⁴.
        abar_end = 2.0**-24 / (1 + 2.0**-24)
        phi_end = math.acos(math.sqrt(abar_end) * math.exp(self._log_cos0))
        self.t_end = phi_end * 2 * (1 + self.offset) / math.pi - self.offset
        self.spec = {"name": self.name, "s": self.offset}
        if not 0.0 < self.t_end <= 1.0:  # s so large that (t + s)/(1 + s) no longer resolves t in float64
            raise ValueError(
                f"{self.name}: cosine offset s={self.offset} is too large (the schedule's end time "
                f"{self.t_end} leaves (0, 1])"
            )
        self._check_finite()

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

    def __init__(
        self, sigma_min=0.01, sigma_max=50.0, timestep_convention="sigma", timestep_scale=1.0, num_train_timesteps=2000
    ):
        super().__init__(
            timestep_convention=timestep_convention,
            timestep_scale=timestep_scale,
            num_train_timesteps=num_train_timesteps,
        )
        sigma_min, sigma_max = _sigma_range(sigma_min, sigma_max, self.name)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.spec = {
            "name": self.name,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "timestep_convention": timestep_convention,
        }
        self._check_finite()

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

    def __init__(
        self,
        sigma_min=0.002,
        sigma_max=80.0,
        rho=7.0,
        timestep_convention="edm",
        timestep_scale=1.0,
        num_train_timesteps=1000,
    ):
        super().__init__(
            timestep_convention=timestep_convention,
            timestep_scale=timestep_scale,
            num_train_timesteps=num_train_timesteps,
        )
        sigma_min, sigma_max = _sigma_range(sigma_min, sigma_max, self.name)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.rho = _finite_number(rho, "rho", self.name, positive=True)
        self._a, self._b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        self.spec = {
            "name": self.name,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rho": self.rho,
            "timestep_convention": timestep_convention,
        }
        if not self._a < self._b:  # ρ so large that σ_min^{1/ρ} and σ_max^{1/ρ} round to the same float64
            raise ValueError(
                f"{self.name}: rho={self.rho} is too large to resolve sigma_min={sigma_min} < "
                f"sigma_max={sigma_max} (σ^(1/ρ) rounds to the same value)"
            )
        self._check_finite()

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


class RectifiedFlowSchedule(NoiseSchedule):
    """Rectified flow / flow matching (Liu et al. 2023 [RF]; Lipman et al. 2023 [FM]; Esser et al. 2024 [SD3]):
    s = 1 − t, σ = t, so f = −1/(1 − t), g² = 2t/(1 − t), λ = 2 log((1 − t)/t), σ̃ = t/(1 − t). s(1) = 0: the
    coefficients that diverge there (f, g², σ̃) are capped at t_end (SNR 2⁻²⁴) as for zero-terminal-SNR tables,
    while s and σ themselves (and the closed-form derivatives s′ = −1, σ′ = 1) stay exact, so samplers written in
    data-prediction form take the first step from pure noise exactly (DDIM η = 0 there is FlowMatch Euler).
    Model timesteps are t · ``num_train_timesteps`` (diffusers' FlowMatch convention, float)."""

    name = "rectified-flow"

    def __init__(self, num_train_timesteps: int = 1000, timestep_convention: str = "t", timestep_scale=None):
        n = int(_finite_number(num_train_timesteps, "num_train_timesteps", self.name, positive=True))
        super().__init__(
            timestep_convention=timestep_convention,
            timestep_scale=float(n) if timestep_scale is None else timestep_scale,
            num_train_timesteps=n,
        )
        # t_end: ((1 − t)/t)² = 2⁻²⁴  ⇒  t = 1/(1 + 2⁻¹²)
        self.t_end = 1.0 / (1.0 + 2.0**-12)
        self.spec = {"name": self.name, "num_train_timesteps": n}
        self._check_finite()

    def _s(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return t.clone()

    def _ds(self, t):
        return -torch.ones_like(t)

    def _dsigma(self, t):
        return torch.ones_like(t)

    def _f(self, t):
        return -1.0 / (1.0 - t)

    def _g2(self, t):
        return 2.0 * t / (1.0 - t)

    def _log_snr(self, t):
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def _t_from_log_snr(self, lam):
        return torch.sigmoid(-0.5 * lam)
