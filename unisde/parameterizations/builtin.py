r"""The built-in parameterisations: ε, x0, v, score and EDM preconditioning (coefficients of x̂0 = a x + b F)."""

from __future__ import annotations

import math

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
    c_in = 1/√(σ̃² + σ_d²), c_noise = ¼ ln σ̃. Options: ``sigma_data`` (σ_d, default 0.5); ``prediction_type``
    ``"epsilon"`` (EDM's c_out) or ``"v_prediction"`` (c_out negated: the network predicts the velocity, as
    diffusers' EDM classes and CosineDPMSolverMultistep read it; with σ_d = 1 this is v-prediction on the VP
    schedule s = 1/√(1 + σ̃²)); ``c_noise`` ``"log"`` (¼ ln σ̃, EDM) or ``"atan"`` (2/π · atan σ̃ ∈ (0, 1), the
    noise conditioning of Stable Audio's diffusers CosineDPMSolverMultistepScheduler [StableAudio])."""

    name = "edm"
    options = {"sigma_data": 0.5, "prediction_type": "epsilon", "c_noise": "log"}
    CHOICES = {"prediction_type": ("epsilon", "v_prediction"), "c_noise": ("log", "atan")}

    def __init__(self, **options):
        super().__init__(**options)
        for key, valid in self.CHOICES.items():
            if self.config[key] not in valid:
                raise ValueError(
                    f"parameterization 'edm': option {key}={self.config[key]!r} is not one of {list(valid)}"
                )

    def _ve(self, schedule, t):
        s, sigma = schedule_coefficients(schedule, t)
        return s, sigma / s

    def coefficients(self, schedule, t):
        sd = float(self.config["sigma_data"])
        sign = -1.0 if self.config["prediction_type"] == "v_prediction" else 1.0
        s, sig = self._ve(schedule, t)
        denom = sig * sig + sd * sd
        return sd * sd / denom / s, sign * sig * sd / torch.sqrt(denom)

    def input_scale(self, schedule, t):
        sd = float(self.config["sigma_data"])
        s, sig = self._ve(schedule, t)
        return 1.0 / torch.sqrt(sig * sig + sd * sd) / s

    def model_time(self, schedule, t):
        _, sig = self._ve(schedule, t)
        if self.config["c_noise"] == "atan":
            return torch.atan(sig) * (2.0 / math.pi)
        return 0.25 * torch.log(sig)

    def t_from_model_time(self, schedule, timestep):
        timestep = torch.as_tensor(timestep, dtype=torch.float64)
        if self.config["c_noise"] == "atan":
            return schedule.t_from_sigma(torch.tan(timestep * (math.pi / 2.0)))
        return schedule.t_from_sigma(torch.exp(4 * timestep))

    def loss_weight_edm(self, schedule, t):
        """EDM's x0-space weight λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)² (Karras et al. 2022, Table 1 [EDM]) = 1/c_out²."""
        return self.default_loss_weight(schedule, t)


BUILTIN_PARAMETERIZATIONS = (
    EpsilonParameterization,
    SampleParameterization,
    VPredictionParameterization,
    ScoreParameterization,
    EDMParameterization,
)


def schedule_derivatives(schedule, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(s′(t), σ′(t)) in float64: the schedule's closed forms where it has them (``_ds``/``_dsigma``), else from
    f and g²: s′ = f s and σ′ = (g²/2 + f σ²)/σ, which is g² = 2(σσ′ − fσ²) solved for σ′ (Song et al. 2021,
    App. B [SDE]; valid where σ > 0)."""
    t = schedule._time(t)
    if hasattr(schedule, "_ds") and hasattr(schedule, "_dsigma"):
        return schedule._ds(t), schedule._dsigma(t)
    s, sigma = schedule._s(t), schedule._sigma(t)
    f, g2 = schedule.f(t), schedule.g2(t)
    return f * s, (0.5 * g2 + f * sigma * sigma) / sigma


class FlowParameterization(Parameterization):
    """Flow prediction (Lipman et al. 2023 [FM]; Liu et al. 2023 [RF]; Esser et al. 2024 [SD3]): the network
    predicts the conditional velocity u = s′ x0 + σ′ ε = dx_t/dt, which is ε − x0 on the rectified flow
    s = 1 − t, σ = t. Solving x = s x0 + σ ε and u for x0:

        x̂0 = (σ′ x − σ u) / (σ′ s − σ s′),

    with σ′s − σs′ = −sσ λ′/2 > 0 (λ decreasing). On the rectified flow this is x̂0 = x − t u, finite at t = 1
    where s = 0 (the coefficients use s and σ exactly, no zero-SNR cap). The training target is u itself."""

    name = "flow_prediction"
    aliases = ("flow",)

    def coefficients(self, schedule, t):
        t = schedule._time(t)
        s, sigma = schedule._s(t), schedule._sigma(t)
        ds, dsigma = schedule_derivatives(schedule, t)
        denom = dsigma * s - sigma * ds
        return dsigma / denom, -sigma / denom


class ConsistencyParameterization(EDMParameterization):
    """A consistency model's network (Song et al. 2023, §3 and App. C [CM]): EDM's preconditioning with the boundary
    condition f(x, ε) = x built into the skip connection, in the VE view x̃ = x/s, σ̃ = σ/s,

        D(x̃; σ̃) = c_skip x̃ + c_out F(c_in x̃; c_noise),   c_skip = σ_d²/((σ̃ − ε)² + σ_d²),
        c_out = (σ̃ − ε) σ_d/√(σ̃² + σ_d²),   c_in = 1/√(σ̃² + σ_d²),   c_noise = 1000 · ¼ ln(σ̃ + 10⁻⁴⁴),

    so D = x̃ at σ̃ = ε. c_noise is the openai consistency-models code's (and diffusers'
    CMStochasticIterativeScheduler's) rescaling of EDM's ¼ ln σ̃. Options ``sigma_data`` (σ_d, 0.5) and
    ``sigma_min`` (ε, 0.002)."""

    name = "cm"
    options = {"sigma_data": 0.5, "sigma_min": 0.002}
    CHOICES = {}

    def coefficients(self, schedule, t):
        sd, eps = float(self.config["sigma_data"]), float(self.config["sigma_min"])
        s, sig = self._ve(schedule, t)
        return sd * sd / ((sig - eps) ** 2 + sd * sd) / s, (sig - eps) * sd / torch.sqrt(sig * sig + sd * sd)

    def model_time(self, schedule, t):
        _, sig = self._ve(schedule, t)
        return 250.0 * torch.log(sig + 1e-44)

    def t_from_model_time(self, schedule, timestep):
        return schedule.t_from_sigma(torch.exp(torch.as_tensor(timestep, dtype=torch.float64) / 250.0))


BUILTIN_PARAMETERIZATIONS = BUILTIN_PARAMETERIZATIONS + (FlowParameterization, ConsistencyParameterization)
