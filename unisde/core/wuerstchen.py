r"""``wuerstchen-cosine``: the continuous cosine schedule of Würstchen / Stable Cascade (diffusers'
DDPMWuerstchenScheduler), registered through ``unisde_register_schedules`` like any schedule plugin.

The cosine ᾱ of Nichol & Dhariwal 2021, eq. 17 [IDDPM] (Pernias et al. 2024 [Wuerstchen]) on a warped time w(t),
clamped as the class clamps it:

    ᾱ(t) = clip(cos²(φ(w(t))) / cos²(φ(0)), 10⁻⁴, 1 − 10⁻⁴),   φ(u) = (u + s)/(1 + s) · π/2,
    w(t) = 1 − (1 − t)^k (k > 1),  t^k (k < 1),  t (k = 1),   k = ``scaler``,

with s(t) = √ᾱ, σ(t) = √(1 − ᾱ) (variance preserving), f = ½ d ln ᾱ/dt = −(π/2)/(1 + s) · tan φ(w) · w'(t) and
g² = −2f where ᾱ is not clamped; on the clamped ends (t close to 1, where ᾱ would fall below 10⁻⁴, and t close to
0, where it would exceed 1 − 10⁻⁴) ᾱ is constant, so f = g² = 0 and λ is flat (still non-increasing). The model
is fed t itself (``timestep_convention="t"``, scale 1), as Stable Cascade's decoder takes ``timestep_ratio`` = t.
σ(0) = 10⁻² > 0: the class's last step ends at ᾱ(0) = 1 − 10⁻⁴, not on the data (its converter sets
``final_sigmas_type="sigma_min"``, which ends a grid on a continuous schedule at its t = 0 noise level).
"""

from __future__ import annotations

import math

import torch

from unisde.core.schedule import NoiseSchedule, _finite_number
from unisde.plugins import hookimpl

ABAR_MIN, ABAR_MAX = 1e-4, 0.9999  # diffusers' clamp of ᾱ


class WuerstchenCosineSchedule(NoiseSchedule):
    """Würstchen's clamped, time-warped cosine schedule (module docstring)."""

    name = "wuerstchen-cosine"

    def __init__(self, scaler: float = 1.0, s: float = 0.008, timestep_convention="t", timestep_scale=1.0):
        super().__init__(timestep_convention=timestep_convention, timestep_scale=timestep_scale)
        self.scaler = _finite_number(scaler, "scaler", self.name, positive=True)
        self.offset = _finite_number(s, "s (cosine offset)", self.name, minimum=0.0)
        self._log_cos0 = math.log(math.cos(self.offset / (1 + self.offset) * math.pi / 2))
        self.spec = {"name": self.name, "scaler": self.scaler, "s": self.offset}
        self._check_finite()

    def _warp(self, t):
        """(w(t), w'(t)); w' at t = 0 for k < 1 is infinite, but ᾱ is clamped there (f = 0)."""
        k = self.scaler
        if k > 1:
            return 1 - (1 - t) ** k, k * (1 - t) ** (k - 1)
        if k < 1:
            return t**k, k * t.clamp(min=torch.finfo(t.dtype).tiny) ** (k - 1)
        return t, torch.ones_like(t)

    def _raw_abar(self, t):
        w, _ = self._warp(t)
        phi = (w + self.offset) / (1 + self.offset) * (math.pi / 2)
        return torch.exp(2 * (torch.log(torch.cos(phi).clamp(min=0.0)) - self._log_cos0))

    def _abar(self, t):
        return self._raw_abar(t).clamp(ABAR_MIN, ABAR_MAX)

    def _s(self, t):
        return self._abar(t).sqrt()

    def _sigma(self, t):
        return (1 - self._abar(t)).sqrt()

    def _f(self, t):
        w, dw = self._warp(t)
        phi = (w + self.offset) / (1 + self.offset) * (math.pi / 2)
        raw = self._raw_abar(t)
        inside = (raw > ABAR_MIN) & (raw < ABAR_MAX)
        f = -(math.pi / 2) / (1 + self.offset) * torch.tan(phi) * dw
        return torch.where(inside, f, torch.zeros_like(f))

    def _g2(self, t):
        return -2 * self._f(t)

    def _log_snr(self, t):
        abar = self._abar(t)
        return torch.log(abar) - torch.log1p(-abar)


@hookimpl
def unisde_register_schedules(register):
    register(WuerstchenCosineSchedule.name, WuerstchenCosineSchedule)
