r"""``seeds_2`` and ``seeds_3``: SEEDS-2 and SEEDS-3, stochastic explicit exponential derivative-free solvers in data
prediction (Gonzalez et al. 2023 [SEEDS]), ComfyUI's ``sample_seeds_2`` / ``sample_seeds_3``, for any schedule.

With λ = log(s/σ) (the half log-SNR) and a stochasticity η ≥ 0, the reverse SDE family
dx = [f x − (1 + η)/2 · g² ∇log p] dt + √η g dw̄ (η = 1: the reverse SDE, η = 0: the PF-ODE; [SASolver]'s family
with τ² = η) has, from λ_s to λ = λ_s + r h, the exact solution in data prediction (variation of constants, [SEEDS] §3)

    x(λ) = (σ_λ/σ_s) e^{−η r h} x_s + s_λ ∫_{λ_s}^{λ} (1 + η) e^{−(1+η)(λ − u)} D(u) du + σ_λ N(λ),

N an Ornstein–Uhlenbeck path in λ: N(λ_s) = 0 and N(λ_b) = e^{−η(λ_b − λ_a)} N(λ_a) + √(1 − e^{−2η(λ_b − λ_a)}) z for
λ_a < λ_b, so each stage's noise continues the previous stage's (the same path, fresh increments z). D constant
gives the first-order weight s_λ(1 − e^{−rH}) of D, H = (1 + η) h; the stages replace D by combinations of
evaluations at intermediate λ and integrate exactly, with φ-function weights b(H) = (e^{−H} − 1 + H)/H (= H φ₂(−H),
:func:`unisde.core.kernels.exponential_integrator_corrections`):

``seeds_2`` (stage at λ_s + r h, r = ½ by default):
    x₁ = (σ₁/σ_s) e^{−η r h} x_s + s₁ (1 − e^{−rH}) D_s + σ₁ S_noise N(λ₁),
    x_t = (σ_t/σ_s) e^{−η h} x_s + s_t [(1 − e^{−H}) D_s + w (D₁ − D_s)] + σ_t S_noise N(λ_t),
    with w = (1 − e^{−H})/(2r) (``variant="phi_1"``: D₁ and D_s mixed 1/(2r) : 1 − 1/(2r), DPM-Solver-2's
    rule [DPMSolver]) or w = b(H)/r (``"phi_2"``: the exact integral of D linear in λ through both).
``seeds_3`` (stages at r₁ = ⅓ and r₂ = ⅔ by default):
    x₁ as above at r₁,
    x₂ = (σ₂/σ_s) e^{−η r₂ h} x_s + s₂ [(1 − e^{−r₂H}) D_s + (r₂/r₁) b(r₂H) (D₁ − D_s)] + σ₂ S_noise N(λ₂),
    x_t = (σ_t/σ_s) e^{−η h} x_s + s_t [(1 − e^{−H}) D_s + b(H)/r₂ (D₂ − D_s)] + σ_t S_noise N(λ_t)
    (the third-order exponential Runge–Kutta tableau of DPM-Solver-3 [DPMSolver] in data prediction).

At η = 0 (or S_noise = 0) no noise is drawn and both are deterministic exponential integrators of the PF-ODE, of
orders 2 and 3 (measured in tests/test_samplers_seeds_heunpp2_pece.py). Draws per step: 2 (``seeds_2``) or 3
(``seeds_3``), in stage order, where η > 0 and S_noise > 0. A step to σ = 0 is one call, x = s_end D (as ComfyUI).

Samples live in the model's own space (the formulas above in (s, σ) as ComfyUI writes them with α = s), so the
samplers run with every schedule and parameterisation; the stage times solve σ/s = e^{−λ_j}
(``schedule.t_from_sigma``). On a schedule reaching zero SNR at t = 1 (rectified flow) λ(1) = −∞: the coefficients
there are those of the capped t_end (σ̃ = σ/s ≤ 4096, as ``dpmpp_sde``; ComfyUI moves the first level to
σ = 0.9999 instead), so the first step's stages lie at finite λ. ComfyUI's defaults: η = 1, S_noise = 1.
"""

from __future__ import annotations

import abc
import math

import torch

from unisde._tensor import scaled
from unisde.core.kernels import exponential_integrator_corrections, lincomb
from unisde.samplers.base import Option, Sampler, non_negative


def _weight_b(H: float) -> float:
    """b(H) = (e^{−H} − 1 + H)/H, accurate for small H (:func:`exponential_integrator_corrections`)."""
    return exponential_integrator_corrections(H)[0]


ETA = Option(1.0, (float,), "stochasticity η ≥ 0 (0: the PF-ODE, no noise; 1: the reverse SDE)", non_negative)
S_NOISE = Option(1.0, (float,), "scale S_noise of the drawn noise (0: none)", non_negative)


class _SEEDS(Sampler):
    """The shared loop: per step i, the stages x_j = a_j x_i + Σ_k w_{jk} D_k + noise_j N_j (k < j, D_0 = D_i),
    then the step's result, of the same form; N continued as an Ornstein–Uhlenbeck path in λ."""

    default_grid = "karras"

    @property
    def stochastic(self):
        return self.opts["eta"] > 0 and self.opts["s_noise"] > 0

    @abc.abstractmethod
    def fractions(self) -> list[float]:
        """The stages' positions r_j ∈ (0, 1] in λ within a step (ascending)."""

    @abc.abstractmethod
    def stage_weights(self, j: int, H: float, r: list[float]) -> list[float]:
        """Stage j's (j = len(r): the step's result) D weights per unit s_j, for D_s, D_1, …, with H = (1 + η)h
        and r the fractions (r_j of the stage itself = 1 for the result)."""

    def prepare(self, grid):
        """Per step i: for each stage and the result, (x weight, D weights, noise scale, OU decay and increment
        std of its path segment); the stage times. Returns the evaluation times t_0, t_{0,1}, …, t_1, …"""
        self.grid = self.floats(grid)
        s, sigma = (self.floats(v) for v in self.grid_coefficients(grid))  # t_end-capped where s(1) = 0
        n = len(s) - 1
        if any(v <= 0 for v in sigma[:-1]):
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid σ = {sigma[:-1]}"
            )
        eta, s_noise = self.opts["eta"], self.opts["s_noise"]
        noisy = eta > 0 and s_noise > 0
        fractions = self.fractions()
        lam = [math.log(a / b) if b > 0 else math.inf for a, b in zip(s, sigma)]
        inner = [(i, r) for i in range(n) if sigma[i + 1] > 0 for r in fractions]
        levels = torch.tensor([math.exp(-(lam[i] + r * (lam[i + 1] - lam[i]))) for i, r in inner], dtype=torch.float64)
        t_stage = self.floats(self.schedule.t_from_sigma(levels)) if inner else []
        s_stage = self.floats(self.scales_and_sigmas(torch.tensor(t_stage, dtype=torch.float64))[0]) if inner else []
        stage_at = {key: (t, sc) for key, t, sc in zip(inner, t_stage, s_stage)}
        times, self.step_starts, self.steps = [], {}, []
        for i in range(n):
            self.step_starts[len(times)] = i
            times.append(self.grid[i])
            if sigma[i + 1] == 0.0:  # to clean data: x = s_end D
                self.steps.append([(0.0, [s[i + 1]], 0.0, 0.0, 0.0)])
                continue
            h = lam[i + 1] - lam[i]
            H = (1.0 + eta) * h
            plan, previous = [], 0.0
            for j, r in enumerate([*fractions, 1.0]):
                if j < len(fractions):  # a stage, at λ_j = λ_s + r h
                    t_j, s_j = stage_at[(i, r)]
                    times.append(t_j)
                    sigma_j = s_j * math.exp(-(lam[i] + r * h))  # σ_j = s_j e^{−λ_j}: exactly at λ_j
                else:
                    s_j, sigma_j = s[i + 1], sigma[i + 1]
                x_weight = sigma_j / sigma[i] * math.exp(-eta * r * h)
                d_weights = [s_j * w for w in self.stage_weights(j, H, fractions)]
                gap = eta * (r - previous) * h  # the OU segment from the previous stage's λ (from λ_s at j = 0)
                decay, std = (math.exp(-gap), math.sqrt(-math.expm1(-2.0 * gap))) if noisy else (0.0, 0.0)
                plan.append((x_weight, d_weights, sigma_j * s_noise if noisy else 0.0, decay, std))
                previous = r
            self.steps.append(plan)
        return torch.tensor(times, dtype=torch.float64)

    def loop(self, x, start=0):
        for i in range(self.entry_step(start), len(self.steps)):
            plan = self.steps[i]
            x, denoised = yield x  # D_s at λ_s
            x_s, evaluations, path = x, [denoised], None
            for j, (a, weights, noise, decay, std) in enumerate(plan):
                out = evaluations[0] * weights[0] if a == 0.0 else lincomb(x_s, a, evaluations[0], weights[0])
                for d, w in zip(evaluations[1:], weights[1:]):
                    if w != 0.0:
                        out.add_(d, alpha=w)
                if noise > 0.0:  # N(λ_j) = e^{−gap} N(λ_{j−1}) + √(1 − e^{−2 gap}) z
                    z = self.noise_like(x_s)
                    path = scaled(z, std) if path is None else path.mul_(decay).add_(z, alpha=std)
                    out.add_(path, alpha=noise)
                if j == len(plan) - 1:
                    x = out
                else:
                    _, d_j = yield out  # D at the stage
                    evaluations.append(d_j)
        return x


def _fraction(value):
    return None if 0 < value <= 1 else "must lie in (0, 1]"


class SEEDS2Sampler(_SEEDS):
    name = "seeds_2"
    description = (
        "SEEDS-2 (Gonzalez et al. 2023; ComfyUI sample_seeds_2): two-stage stochastic exponential solver in data "
        "prediction, η = 1 the reverse SDE"
    )
    order = 2  # model calls per step (one on a step to σ = 0)
    options = {
        "eta": ETA,
        "s_noise": S_NOISE,
        "r": Option(0.5, (float,), "the stage's position λ_s + r h in the step, 0 < r ≤ 1", _fraction),
        "variant": Option(
            "phi_1",
            (str,),
            "ComfyUI's solver_type — phi_1: D_s and D₁ mixed 1 − 1/(2r) : 1/(2r) (DPM-Solver-2); phi_2: the φ₂ "
            "weight b(H)/r",
            choices=("phi_1", "phi_2"),
        ),
    }

    def fractions(self):
        return [self.opts["r"]]

    def stage_weights(self, j, H, r):
        if j == 0:  # the stage: D_s held constant over [λ_s, λ_s + r h]
            return [-math.expm1(-r[0] * H)]
        first = -math.expm1(-H)
        slope = first / (2.0 * r[0]) if self.opts["variant"] == "phi_1" else _weight_b(H) / r[0]
        return [first - slope, slope]


class SEEDS3Sampler(_SEEDS):
    name = "seeds_3"
    description = (
        "SEEDS-3 (Gonzalez et al. 2023; ComfyUI sample_seeds_3): three-stage stochastic exponential solver in data "
        "prediction, η = 1 the reverse SDE"
    )
    order = 3  # model calls per step (one on a step to σ = 0)
    options = {
        "eta": ETA,
        "s_noise": S_NOISE,
        "r_1": Option(1.0 / 3.0, (float,), "the first stage's position in the step, 0 < r_1 < r_2", _fraction),
        "r_2": Option(2.0 / 3.0, (float,), "the second stage's position in the step, r_1 < r_2 ≤ 1", _fraction),
    }

    @classmethod
    def validate_options(cls, options):
        out = super().validate_options(options)
        if not out["r_1"] < out["r_2"]:
            raise ValueError(
                f"sampler {cls.name!r}: options r_1={out['r_1']!r} and r_2={out['r_2']!r} are invalid: the stages must "
                "be ordered, 0 < r_1 < r_2 ≤ 1"
            )
        return out

    def fractions(self):
        return [self.opts["r_1"], self.opts["r_2"]]

    def stage_weights(self, j, H, r):
        r1, r2 = r
        if j == 0:
            return [-math.expm1(-r1 * H)]
        if j == 1:  # D linear in λ through D_s and D₁, integrated over [λ_s, λ_s + r₂ h]
            slope = (r2 / r1) * _weight_b(r2 * H)
            return [-math.expm1(-r2 * H) - slope, slope]
        slope = _weight_b(H) / r2  # the result: D linear through D_s and D₂ (D₁ drops out)
        return [-math.expm1(-H) - slope, 0.0, slope]
