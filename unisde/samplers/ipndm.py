r"""``ipndm`` and ``ipndm_v``: improved PNDM (Zhang & Chen 2023, §5 and App. [DEIS], arXiv:2204.13902) —
Adams–Bashforth on the probability-flow ODE in the VE view with a lower-order warm-up, for any schedule.

In x̃ = x/s with σ̃ = σ/s as the independent variable the PF-ODE reads dx̃/dσ̃ = d = (x̃ − D)/σ̃ (= ε̂; Karras et
al. 2022, eq. 4 [EDM]). iPNDM takes, per step of size h = σ̃_{k+1} − σ̃_k,

    x̃_{k+1} = x̃_k + h Σ_j b_{p,j} d_{k−j},      p = min(``max_order``, evaluations so far),

with the constant-step Adams–Bashforth weights b_1 = (1), b_2 = (3, −1)/2, b_3 = (23, −16, 5)/12,
b_4 = (55, −59, 37, −9)/24 (PNDM's weights, Liu et al. 2022, eq. 12 [PNDM], but warming up at orders 1, 2, 3
instead of with Runge–Kutta steps — the "improved" of iPNDM). Written with ε̂ this is PLMS's transfer:
x_{k+1} = s_{k+1} (x_k − σ_k ε̂_AB)/s_k + σ_{k+1} ε̂_AB, diffusers' IPNDMScheduler step. The constant-step weights
are exact only on grids uniform in σ̃ (order ``max_order`` there); on smoothly graded grids (Karras, uniform λ)
their error is O(h) per weight and the method is second order.

``ipndm_v``, the variable-step version (ComfyUI's ``sample_ipndm_v``, from zju-pi/diff-sampler), uses the exact
variable-step weights b_{p,j} = (1/h) ∫_{σ̃_k}^{σ̃_{k+1}} L_j(σ̃) dσ̃ (L_j the Lagrange basis of σ̃_k, σ̃_{k−1}, …; the
weights of :mod:`unisde.samplers.lms`, so ``ipndm_v`` is ``lms`` with iPNDM's options) and keeps order
``max_order`` on any grid; they reduce to the constant ones on a uniform grid. Its order-2 weights equal the
published closed form; the published order-3 and order-4 closed forms are not these integrals (order 4's do not
sum to 1 on a non-uniform grid, so that version does not converge there, and on a uniform grid they are
(57, −65, 43, −11)/24, a third-order rule, not AB4), so unisde uses the integrals.

One model evaluation per step. The derivatives d_k use only σ̃ > 0; a step to σ̃ = 0 is an ordinary step (the
Adams–Bashforth extrapolation, as diffusers' IPNDM/PNDM take it) unless ``denoise_to_zero`` makes it return x̂0
(ComfyUI's ``t_next == 0`` branch). The loop keeps the derivatives as a local history, so entered mid-grid
(img2img) it warms up again from order 1. Samples live in the model's own space, x = s x̃.
"""

from __future__ import annotations

import torch

from unisde.core.kernels import pf_ode_derivative
from unisde.samplers.base import Option, Sampler
from unisde.samplers.lms import adams_bashforth_weights

# Adams–Bashforth weights on d_k, d_{k−1}, … for constant steps (Liu et al. 2022, eq. 12 [PNDM])
AB_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _max_order(value):
    return None if value in (1, 2, 3, 4) else "must be 1, 2, 3 or 4"


class IPNDMSampler(Sampler):
    name = "ipndm"
    description = "iPNDM: constant-step Adams–Bashforth (order ≤ 4, lower-order warm-up) on the PF-ODE in σ̃"
    default_grid = "karras"
    options = {
        "max_order": Option(4, (int,), "highest Adams–Bashforth order 1 … 4", _max_order),
        "denoise_to_zero": Option(False, (bool,), "a step to σ̃ = 0 returns x̂0 (ComfyUI) instead of the multistep step"),
    }

    def step_weights(self, ve: list[float], k: int, order: int) -> tuple[float, ...]:
        """b_{p,j} of step k at order p (the step size h multiplies them)."""
        return AB_WEIGHTS[order - 1]

    def prepare(self, grid):
        """Per step k: s_k, s_{k+1}, σ̃_k and h_k·b_{p,j} for every order p ≤ min(k + 1, ``max_order``)."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        ve = self.floats(sigma / s)
        n = grid.numel() - 1
        if any(v <= 0 for v in ve[:-1]):
            raise ValueError(f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid σ̃ = {ve[:-1]}")
        self.s_t, self.s_n, self.ve = self.floats(s[:-1]), self.floats(s[1:]), ve[:-1]
        self.weights = [[tuple((ve[k + 1] - ve[k]) * b for b in self.step_weights(ve, k, p))
                         for p in range(1, min(k + 1, self.opts["max_order"]) + 1)] for k in range(n)]
        self.to_denoised = [self.opts["denoise_to_zero"] and ve[k + 1] == 0.0 for k in range(n)]
        return grid[:-1]

    def loop(self, x, start=0):
        derivatives = []  # d_k, d_{k−1}, … (newest first): this loop's Adams–Bashforth history
        for k in range(start, len(self.weights)):
            x, denoised = yield x
            if self.to_denoised[k]:
                x = denoised * self.s_n[k] if self.s_n[k] != 1.0 else denoised.clone()
                continue
            x_ve = x * (1.0 / self.s_t[k]) if self.s_t[k] != 1.0 else x
            derivatives = [pf_ode_derivative(x_ve, denoised, self.ve[k]), *derivatives[:self.opts["max_order"] - 1]]
            for w, d in zip(self.weights[k][min(len(derivatives), len(self.weights[k])) - 1], derivatives):
                x_ve = x_ve.add(d, alpha=w)  # x̃_{k+1} = x̃_k + h Σ_j b_{p,j} d_{k−j}
            x = x_ve * self.s_n[k] if self.s_n[k] != 1.0 else x_ve
        return x


class IPNDMVSampler(IPNDMSampler):
    name = "ipndm_v"
    description = "iPNDM_v: variable-step Adams–Bashforth (order ≤ 4, ComfyUI's sample_ipndm_v) on the PF-ODE in σ̃"

    def step_weights(self, ve, k, order):
        h = ve[k + 1] - ve[k]
        return tuple(w / h for w in adams_bashforth_weights([ve[k - j] for j in range(order)], ve[k], ve[k + 1]))
