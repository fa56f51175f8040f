r"""The built-in parameterisations: ε, x0, v, score and EDM preconditioning (coefficients of x̂0 = a x + b F)."""

from __future__ import annotations

import torch

from unisde.parameterizations.base import Parameterization, schedule_coefficients


class EpsilonParameterization(Parameterization):
    """ε-prediction (DDPM; Ho et al. 2020, eq. 15 [DDPM]): x̂0 = (x − σ ε̂) / s."""

    name = "epsilon"
    aliases = ("eps",)

    def coefficients(self, schedule, t):
        s, sigma = schedule_coefficients(schedule, t)
        return 1.0 / s, -sigma / s


class SampleParameterization(Parameterization):
    """x0-prediction: the output is x̂0 itself."""

    name = "sample"
    aliases = ("x0",)

    def coefficients(self, schedule, t):
        s, _ = schedule_coefficients(schedule, t)
        return torch.zeros_like(s), torch.ones_like(s)


class VPredictionParameterization(Parameterization):
    """v-prediction (Salimans & Ho) relative to the variance-normalised sample x/r, r = √(s² + σ²):
    with α = s/r, β = σ/r, v = α ε − β x0 and x̂0 = α x / r − β v. For VP schedules r = 1, which is diffusers'
    v_prediction exactly."""

    name = "v_prediction"
    aliases = ("v",)

    def coefficients(self, schedule, t):
        s, sigma = schedule_coefficients(schedule, t)
        r2 = s * s + sigma * sigma
        return s / r2, -sigma / torch.sqrt(r2)


class ScoreParameterization(Parameterization):
    """Score-prediction (NCSN / score-SDE): F ≈ ∇log p_t(x), x̂0 = (x + σ² F) / s (Karras et al. 2022, eq. 3 [EDM])."""

    name = "score"

    def coefficients(self, schedule, t):
        s, sigma = schedule_coefficients(schedule, t)
        return 1.0 / s, sigma * sigma / s


class EDMParameterization(Parameterization):
    """EDM preconditioning (Karras et al. 2022, eq. 7 and Table 1 [EDM]) in the VE view x̃ = x/s, σ̃ = σ/s:
    D(x̃; σ̃) = c_skip x̃ + c_out F(c_in x̃; c_noise), c_skip = σ_d²/(σ̃² + σ_d²), c_out = σ̃ σ_d/√(σ̃² + σ_d²),
    c_in = 1/√(σ̃² + σ_d²), c_noise = ¼ ln σ̃. Option ``sigma_data`` (σ_d, default 0.5)."""

    name = "edm"
    options = {"sigma_data": 0.5}

    def _ve(self, schedule, t):
        s, sigma = schedule_coefficients(schedule, t)
        return s, sigma / s

    def coefficients(self, schedule, t):
        sd = float(self.config["sigma_data"])
        s, sig = self._ve(schedule, t)
        denom = sig * sig + sd * sd
        return sd * sd / denom / s, sig * sd / torch.sqrt(denom)

    def input_scale(self, schedule, t):
        sd = float(self.config["sigma_data"])
        s, sig = self._ve(schedule, t)
        return 1.0 / torch.sqrt(sig * sig + sd * sd) / s

    def model_time(self, schedule, t):
        _, sig = self._ve(schedule, t)
        return 0.25 * torch.log(sig)

    def t_from_model_time(self, schedule, timestep):
        return schedule.t_from_sigma(torch.exp(4 * torch.as_tensor(timestep, dtype=torch.float64)))

    def loss_weight_edm(self, schedule, t):
        """EDM's x0-space weight λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)² (Karras et al. 2022, Table 1 [EDM]) = 1/c_out²."""
        return self.default_loss_weight(schedule, t)


BUILTIN_PARAMETERIZATIONS = (EpsilonParameterization, SampleParameterization, VPredictionParameterization,
                             ScoreParameterization, EDMParameterization)
