r"""``lms``: linear multistep (variable-step Adams–Bashforth) on the probability-flow ODE in the VE view.

The PF-ODE (Song et al. 2021, eq. 13 [SDE]) in x̃ = x/s with σ̃ = σ/s as the independent variable reads dx̃/dσ̃ = d(x̃, σ̃) =
(x̃ − D)/σ̃ (see :mod:`unisde.samplers.ode`). The Adams–Bashforth step of order p interpolates the last p
derivatives d_k, d_{k−1}, … at σ̃_k, σ̃_{k−1}, … by a polynomial in σ̃ and integrates it exactly over the step:

    x̃_{k+1} = x̃_k + Σ_j c_{k,j} d_{k−j},    c_{k,j} = ∫_{σ̃_k}^{σ̃_{k+1}} L_{k,j}(σ̃) dσ̃,

with L_{k,j} the Lagrange basis polynomial of node σ̃_{k−j}. The weights are computed once per grid in
:meth:`LMSSampler.prepare` (Gauss–Legendre quadrature with as many nodes as the order, exact for these
polynomials, in float64). The first steps use the orders their history allows (1, 2, …, ``lms_order``). This is
the algorithm of diffusers' LMSDiscreteScheduler (which integrates the same polynomials numerically), and
``UnifiedScheduler.from_config`` of an LMS config selects it. One model evaluation per step; the derivatives
only use σ̃ > 0, so a step to σ̃ = 0 is an ordinary step (the polynomial is extrapolated to 0).
"""

from __future__ import annotations

import numpy as np
import torch

from unisde.samplers.base import Option, Sampler, grid_coefficients, pf_ode_derivative

ORDERS = (1, 2, 3, 4)


def _lms_order(value):
    return None if value in ORDERS else f"must be one of {', '.join(map(str, ORDERS))}"


def adams_bashforth_weights(nodes: list[float], start: float, end: float) -> tuple[float, ...]:
    """∫_start^end L_j(τ) dτ for the Lagrange basis L_j of ``nodes`` (node 0 is the current point), float64."""
    p = len(nodes)
    x, w = np.polynomial.legendre.leggauss(max(p, 1))  # exact for degree ≤ 2p − 1 ≥ p − 1
    half = 0.5 * (end - start)
    tau = start + half * (x + 1.0)
    weights = []
    for j, node in enumerate(nodes):
        basis = np.ones_like(tau)
        for m, other in enumerate(nodes):
            if m != j:
                basis *= (tau - other) / (node - other)
        weights.append(float(half * np.dot(w, basis)))
    return tuple(weights)


class LMSSampler(Sampler):
    name = "lms"
    description = "linear multistep (variable-step Adams–Bashforth, order ≤ 4) on the PF-ODE in σ̃: diffusers' LMS"
    default_grid = "karras"
    options = {
        "lms_order": Option(4, (int,), "highest multistep order 1 … 4 (diffusers' LMS step uses 4)", _lms_order),
    }

    def prepare(self, grid):
        """Per step k: the scales s_k, s_{k+1}, σ̃_k and the weights of d_k, d_{k−1}, … for every order the step
        may run at (the full order when the loop saw every earlier step, lower when it was entered mid-grid)."""
        self.grid = self.floats(grid)
        s, sigma = grid_coefficients(self, grid)
        ve = self.floats(sigma / s)
        n = grid.numel() - 1
        top = self.opts["lms_order"]
        if any(v <= 0 for v in ve[:-1]):
            raise ValueError(f"sampler 'lms' needs positive noise levels at every evaluation time; grid σ̃ = {ve[:-1]}")
        self.s_t, self.s_n, self.ve = self.floats(s[:-1]), self.floats(s[1:]), ve[:-1]
        self.weights = []
        for k in range(n):
            highest = min(k + 1, top)
            self.weights.append([adams_bashforth_weights([ve[k - j] for j in range(p)], ve[k], ve[k + 1])
                                 for p in range(1, highest + 1)])
        self._derivatives: list[torch.Tensor] = []
        self._last_step = -1
        return grid[:-1]

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        if k != self._last_step + 1:  # a loop entered mid-grid (img2img): no valid history before it
            self._derivatives = []
        self._last_step = k
        x_ve = sample * (1.0 / self.s_t[k]) if self.s_t[k] != 1.0 else sample
        self._derivatives = [pf_ode_derivative(x_ve, denoised, self.ve[k]), *self._derivatives[:3]]
        options = self.weights[k]
        weights = options[min(len(self._derivatives), len(options)) - 1]
        out = x_ve
        for w, d in zip(weights, self._derivatives):
            out = out.add(d, alpha=w)
        return out * self.s_n[k] if self.s_n[k] != 1.0 else out
