r"""``res_multistep``: the second-order multistep Refined Exponential Solver (Zhang, Song & Chen 2023 [RES]) on the
probability-flow ODE in the VE view, ComfyUI's ``sample_res_multistep`` (and, with ``eta > 0``,
``sample_res_multistep_ancestral``), for any schedule.

In the VE view x̃ = x/s, σ̃ = σ/s the PF-ODE is dx̃/dσ̃ = (x̃ − D)/σ̃ (Karras et al. 2022, eq. 4 [EDM]). In the time
τ = −log σ̃ (the half log-SNR) it is linear, dx̃/dτ = D − x̃, and variation of constants gives over a step of
length h = log(σ̃_i/σ̃_T) from σ̃_i to a target σ̃_T (Lu et al. 2022b, §4 [DPMSolver++])

    x̃_T = e^{−h} x̃_i + ∫₀ʰ e^{−(h−r)} D(τ_i + r) dr.

RES takes D linear in τ through the current evaluation D_i (at r = 0) and the previous one D_{i−1} (at r = c₂ h),
and integrates exactly; the weights b₁ = φ₁(−h) − φ₂(−h)/c₂, b₂ = φ₂(−h)/c₂ with φ₁(z) = (e^z − 1)/z,
φ₂(z) = (φ₁(z) − 1)/z meet both second-order conditions b₁ + b₂ = φ₁, b₂ c₂ = φ₂ of a two-point exponential
integrator (Zhang, Song & Chen 2023 [RES]):

    x̃_T = e^{−h} x̃_i + h (b₁ D_i + b₂ D_{i−1})
        = e^{−h} x̃_i + (1 − e^{−h}) D_i + (h/h_{i−1}) b(h) (D_i − D_{i−1}),      c₂ = −h_{i−1}/h,

with h φ₂(−h) = b(h) = 1 + (e^{−h} − 1)/h (:func:`unisde.core.kernels.exponential_integrator_corrections`) and
h_{i−1} = log(σ̃_{i−1}/σ̃_{T,i−1}) the previous step's length. (This is DPM-Solver++(2M) with the exact φ₂ weight
in place of its (1 − e^{−h})/2: diffusers' ``solver_type="heun"`` second-order multistep update.) The first step,
a step whose history is missing (entry mid-grid) and a step to σ̃_T = 0 are first order, x̃_T = e^{−h} x̃_i +
(1 − e^{−h}) D_i (DDIM; x̃_T = D_i at σ̃_T = 0).

``eta > 0`` is the ancestral variant: each step goes to σ̃_T = σ̃_down and adds fresh noise S_noise σ̃_up z
(k-diffusion's ``get_ancestral_step``, :func:`unisde.samplers.kdpm2.ancestral_step`), so that x̃_{i+1} is back at
σ̃_{i+1}. The previous evaluation then sits h_{i−1} = log(σ̃_{i−1}/σ̃_{down,i−1}) before the current one, the length
of the previous deterministic step (ComfyUI's c₂ = (τ_{i−1} − τ_{down,i−1})/h); η = 0 is the ODE solver.

Samples live in the model's own space x = s x̃; the update is written in data-prediction form,
x_{i+1} = (σ_T/σ_i) x_i + s_{i+1}[(1 − e^{−h}) D_i + w (D_i − D_{i−1})] + s_{i+1} S_noise σ̃_up z with σ_T = s_{i+1} σ̃_T,
exact also at s(1) = 0 (the rectified flow's and zero-terminal-SNR tables' first step from pure noise, where
h = ∞ and the step is x = s_{i+1} D). One model call per step. On flow models ComfyUI steps in log t (its σ = t)
and adds the ancestral noise as in the VE view, which is not the flow's forward transition; unisde steps in log σ̃,
the half log-SNR, on every schedule (as its other exponential integrators do).
"""

from __future__ import annotations

import torch

from unisde.core.kernels import (
    exponential_integrator_coefficients,
    exponential_integrator_corrections,
    exponential_integrator_step,
)
from unisde.samplers.base import Option, Sampler, non_negative
from unisde.samplers.kdpm2 import ancestral_step


class ResMultistepSampler(Sampler):
    name = "res_multistep"
    description = (
        "RES multistep (ComfyUI sample_res_multistep[_ancestral]): 2nd-order exponential integrator in log σ̃ "
        "with φ-function weights; eta > 0 adds ancestral noise"
    )
    default_grid = "karras"
    options = {
        "eta": Option(
            0.0,
            (float,),
            "ancestral η ≥ 0 (0: the deterministic ODE solver; 1: DDPM's posterior variance, ComfyUI's "
            "res_multistep_ancestral); a pipeline's eta is not read",
            non_negative,
        ),
        "s_noise": Option(1.0, (float,), "scale S_noise of the ancestral noise (no effect at eta = 0)", non_negative),
    }

    @property
    def stochastic(self):
        return self.opts["eta"] > 0 and self.opts["s_noise"] > 0

    def prepare(self, grid):
        """Per step i: the first-order weights (σ_T/σ_i, s_{i+1}(1 − e^{−h})) to σ̃_T = σ̃_down, the weight
        w = s_{i+1} (h/h_{i−1}) b(h) of D_i − D_{i−1} (0 where the step or the previous one reaches σ̃ = 0 or starts
        at σ̃ = ∞: there c₂ is infinite and b₂ = 0, as ComfyUI's nan_to_num makes it), and the noise scale
        s_{i+1} S_noise σ̃_up."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid, exact=True)  # data-prediction form: finite at s = 0
        ve = sigma / s  # +∞ where s = 0
        ve_f, s_f = self.floats(ve), self.floats(s)
        n = grid.numel() - 1
        if any(v <= 0 for v in ve_f[:-1]):
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid σ̃ = {ve_f[:-1]}"
            )
        eta, s_noise = self.opts["eta"], self.opts["s_noise"]
        self.steps, self.guidance, previous_h = [], [], float("inf")
        for i in range(n):
            down, up = ancestral_step(ve_f[i], ve_f[i + 1], eta)
            pair_s = s[i : i + 2]
            pair_sigma = torch.stack([sigma[i], s[i + 1] * down])  # the target σ_T = s_{i+1} σ̃_down in model space
            h, ratio, first = (float(v) for v in exponential_integrator_coefficients(pair_s, pair_sigma))
            if down == 0.0:  # h = ∞: x = s_{i+1} D_i whatever x holds
                ratio, first, slope = 0.0, s_f[i + 1], 0.0
            elif previous_h == float("inf") or h == float("inf"):
                slope = 0.0
            else:
                slope = s_f[i + 1] * (h / previous_h) * exponential_integrator_corrections(h)[0]
            self.steps.append((ratio, first, slope, s_f[i + 1] * s_noise * up))
            # the CFG++ variant's weights of D − U after a step run on U: s_{i+1} on a first-order step, (σ_T/σ_i) s_i
            # on a second-order one (ComfyUI adds D − U to x̃ before its exponential step there; cfg_pp module)
            self.guidance.append((s_f[i + 1], s_f[i + 1] if down == 0.0 else ratio * s_f[i]))
            previous_h = h
        return grid[:-1]

    def loop(self, x, start=0):
        previous = None  # D_{i−1}: this loop's history (entered mid-grid, the first step is first order)
        for i in range(start, len(self.steps)):
            x, guided = yield x
            denoised = self.unconditional(guided)  # CFG++: the step runs on U (else D itself)
            ratio, first, slope, noise = self.steps[i]
            if previous is not None and slope != 0.0:  # (1 − e^{−h}) D_i + w (D_i − D_{i−1}), w = slope/s_{i+1}
                x_next = exponential_integrator_step(x, ratio, denoised, first + slope).add_(previous, alpha=-slope)
            else:
                x_next = exponential_integrator_step(x, ratio, denoised, first)
            if noise > 0:  # ancestral: back up from σ̃_down to σ̃_{i+1} with fresh noise
                x_next = x_next.add_(self.noise_like(x_next), alpha=noise)
            x_next = self.add_guidance(x_next, guided, denoised, self.guidance[i][previous is not None])
            previous, x = denoised, x_next
        return x
