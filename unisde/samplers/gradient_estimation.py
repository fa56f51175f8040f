r"""``gradient_estimation``: the gradient-estimation sampler of Permenter & Yuan 2024 [GradEst] (ComfyUI's
``sample_gradient_estimation``) — Euler on the probability-flow ODE in σ̃ with the derivative extrapolated from the
last two evaluations, for any schedule.

Permenter & Yuan read DDIM as gradient descent on the distance to the data manifold, with d = (x̃ − D)/σ̃ (= ε̂, the
PF-ODE derivative dx̃/dσ̃ of Karras et al. 2022, eq. 4 [EDM]) an estimate of that gradient whose error is
roughly constant from one step to the next; combining the current and previous estimates cancels it (their
gradient-estimation sampler):

    d̄_i = γ d_i + (1 − γ) d_{i−1},      x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i) d̄_i,

with γ = 2 (``ge_gamma``) their choice and the first step plain Euler (d̄_0 = d_0). γ = 1 is Euler (``euler``
without churn); γ = 1.5 on a grid uniform in σ̃ would be Adams–Bashforth-2. On the exact PF-ODE the method with
γ = 2 is first order (d̄ extrapolates d to the end of the step instead of its middle:
tests/test_samplers_dpm_fast_adaptive.py measures the order), its purpose being robustness to a learned denoiser's
error rather than the truncation error.

It is the two-term multistep step of :class:`unisde.samplers.ipndm.IPNDMSampler` with weights (γ, 1 − γ) in place of
Adams–Bashforth's, so it is written as that loop: one model evaluation per step, a step to σ̃ = 0 an ordinary step
(x̃ − σ̃ d̄, as ComfyUI takes it), entered mid-grid (img2img) it starts again with an Euler step, and ``view`` (default
``"auto"``: the flow variables y = x/(s + σ), τ = σ/(s + σ) on a schedule reaching zero SNR, as ComfyUI runs it on
flow models) chooses the ODE's variables (:func:`unisde.core.kernels.view_coefficients`).
"""

from __future__ import annotations

from unisde.samplers.base import Option, view_option
from unisde.samplers.ipndm import IPNDMSampler


class GradientEstimationSampler(IPNDMSampler):
    name = "gradient_estimation"
    description = "gradient estimation (Permenter & Yuan 2024; ComfyUI): Euler in σ̃ with d̄ = γ d_i + (1 − γ) d_{i−1}"
    default_grid = "karras"
    options = {
        "ge_gamma": Option(2.0, (float,), "γ of d̄ = γ d_i + (1 − γ) d_{i−1} (2: the paper's; 1: Euler)"),
        "view": view_option(),
    }

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        """The user's options plus the multistep loop's own settings: a two-term history, no final x̂0 shortcut."""
        return {**super().validate_options(options), "max_order": 2, "denoise_to_zero": False}

    def step_weights(self, ve, k, order):
        """(1) for the first step, (γ, 1 − γ) on (d_i, d_{i−1}) after it; the step size multiplies them."""
        gamma = self.opts["ge_gamma"]
        return (1.0,) if order == 1 else (gamma, 1.0 - gamma)
