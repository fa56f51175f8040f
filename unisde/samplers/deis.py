r"""``deis``: DEIS, the diffusion exponential integrator sampler (Zhang & Chen 2023 [DEIS], arXiv:2204.13902) in its
"ρAB" form with log ρ interpolation — diffusers' DEISMultistepScheduler (``solver_type="logrho"``) — for any
schedule.

With ρ = σ̃ = σ/s, the VE-view noise level, the probability-flow ODE in x̃ = x/s is dx̃/dρ = ε̂(x̃, ρ) with
ε̂ = (x̃ − D)/ρ, the noise estimate (Zhang & Chen 2023, §4, eq. 15 [DEIS]; the PF-ODE of Karras et al. 2022,
eq. 4 [EDM]). Its exact solution over a step is x̃_{k+1} = x̃_k + ∫_{ρ_k}^{ρ_{k+1}} ε̂ dρ. Multistep DEIS of order p
replaces ε̂ by the polynomial in log ρ through the last p estimates ε̂_k, ε̂_{k−1}, … and integrates it exactly:

    x̃_{k+1} = x̃_k + Σ_j c_{k,j} ε̂_{k−j},   c_{k,j} = ∫_{ρ_k}^{ρ_{k+1}} L_{k,j}(log ρ) dρ,

with L_{k,j} the Lagrange basis polynomial of node log ρ_{k−j}. With P(u) = L_{k,j}(u), ∫ P(log ρ) dρ =
ρ Σ_m (−1)^m P^{(m)}(log ρ) (repeated integration by parts in u = log ρ, dρ = e^u du), which vanishes at ρ = 0,
so a step to clean data is an ordinary step; order 1 is DDIM (Euler in ρ). The weights are computed once per
grid, in float64 (:func:`logrho_weights`; diffusers evaluates the same closed forms in float32). The loop keeps
ε̂_k, ε̂_{k−1}, … as a local history, so each step runs at min(``solver_order``, evaluations so far) — from the
start, and again from wherever an img2img pipeline
enters the grid — and ``lower_order_final`` lowers the last steps to the number of steps left when the grid has
fewer than 15 steps (diffusers' rule). A zero-length last step (ρ_n = ρ_{n−1}: diffusers' DEIS appends its last flow
level again, ``final_sigmas_type="repeat_last"``) has every weight 0 and keeps the sample; it counts as a step for
``lower_order_final``, as there. One model evaluation per step; x = s x̃ in the model's own space, the step
written as x_{k+1} = a x_k + b D_k + s_{k+1} Σ_{j≥1} c_{k,j} ε̂_{k−j} with ε̂ = (x − s D)/σ, so that no x/s is formed
(float32 keeps its digits where s ≪ 1, e.g. at the start of a cosine table, σ̃ ≈ 2·10⁴).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import Polynomial

from unisde.core.kernels import lincomb
from unisde.samplers.base import Option, Sampler

ORDERS = (1, 2, 3, 4)


def _order(value):
    return None if value in ORDERS else f"must be one of {', '.join(map(str, ORDERS))}"


def logrho_weights(nodes: list[float], start: float, end: float) -> tuple[float, ...]:
    """∫_start^end L_j(log ρ) dρ for the Lagrange basis L_j of the nodes log ρ_j (node 0 is ``start``, the current
    point), float64. In u = log(ρ/start) the integrand is start·e^u L_j(u): Gauss–Legendre quadrature (24 nodes, exact
    to rounding for |u_end| ≤ 1) on short steps, else the antiderivative start·e^u Σ_m (−1)^m L_j^{(m)}(u), which is
    0 at ρ = 0 (a step to clean data) and, for |u_end| > 1, free of cancellation. ``nodes`` are ρ values > 0."""
    logs = [math.log(v / start) for v in nodes]
    delta = math.log(end / start) if end > 0 else -math.inf
    weights = []
    for j, u_j in enumerate(logs):
        basis = Polynomial([1.0])
        for m, u_m in enumerate(logs):
            if m != j:
                basis = basis * Polynomial([-u_m / (u_j - u_m), 1.0 / (u_j - u_m)])
        if abs(delta) <= 1.0:
            u = 0.5 * delta * (_GL_X + 1.0)
            weights.append(float(start * 0.5 * delta * np.dot(_GL_W, np.exp(u) * basis(u))))
            continue
        anti = sum(((-1) ** m) * basis.deriv(m) for m in range(len(logs)))
        weights.append((end * float(anti(delta)) if end > 0 else 0.0) - start * float(anti(0.0)))
    return tuple(weights)


_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


class DEISSampler(Sampler):
    name = "deis"
    description = "DEIS multistep (log ρ Adams–Bashforth on ε̂ in ρ = σ̃, orders 1–4): diffusers' DEISMultistep"
    default_grid = "uniform_lambda"
    # a zero-length last step (ρ_{k+1} = ρ_k, diffusers' flow σ): every weight ∫_{ρ_k}^{ρ_k} … dρ is 0 and a = 1
    takes_zero_length_end = True
    options = {
        "solver_order": Option(
            2, (int,), "multistep order 1 … 4 (diffusers: 1–3); a diffusers config's solver_order fills it", _order
        ),
        "lower_order_final": Option(
            True, (bool,), "on grids of < 15 steps, lower the last steps' order to the steps left (diffusers' rule)"
        ),
    }

    def prepare(self, grid):
        """Per step k and every order p it may run at: x_{k+1} = a x_k + b D_k + Σ_{j≥1} w_j ε̂_{k−j}, the update
        x̃_{k+1} = x̃_k + Σ_j c_{k,j} ε̂_{k−j} in model space with ε̂_k's x̃-part folded into a, b (the DDIM form, well
        conditioned where s_k ≪ 1), and ε̂ = (x − s D)/σ at each evaluation."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        ve, s, sigma = self.floats(sigma / s), self.floats(s), self.floats(sigma)
        n = grid.numel() - 1
        if any(v <= 0 for v in ve[:-1]):
            raise ValueError(f"sampler 'deis' needs positive noise levels at every evaluation time; grid σ̃ = {ve[:-1]}")
        top, final = self.opts["solver_order"], self.opts["lower_order_final"] and n < 15
        self.eps_coefs = [(1.0 / sigma[k], -s[k] / sigma[k]) for k in range(n)]
        self.steps = []
        for k in range(n):
            highest = min(top, k + 1, n - k if final else top)
            tables = []
            for p in range(1, highest + 1):
                c = logrho_weights(ve[k - p + 1 : k + 1][::-1], ve[k], ve[k + 1])
                tables.append(
                    (
                        s[k + 1] * (ve[k] + c[0]) / (s[k] * ve[k]),
                        -s[k + 1] * c[0] / ve[k],
                        [s[k + 1] * cj for cj in c[1:]],
                    )
                )
            self.steps.append(tables)
        return grid[:-1]

    def loop(self, x, start=0):
        history = []  # ε̂_k, ε̂_{k−1}, … (newest first): this loop's multistep history
        for k in range(start, len(self.steps)):
            x, denoised = yield x
            history = [self._eps(k, x, denoised), *history[: self.opts["solver_order"] - 1]]
            a, b, weights = self.steps[k][min(len(history), len(self.steps[k])) - 1]
            x = lincomb(x, a, denoised, b)  # x̃_{k+1} = x̃_k + Σ_j c_{k,j} ε̂_{k−j}, written in model space
            for w, eps in zip(weights, history[1:]):
                x = x.add_(eps, alpha=w)
        return x

    def _eps(self, k, x, denoised):
        """ε̂ = (x − s D)/σ at evaluation k: the PF-ODE derivative dx̃/dσ̃ = (x̃ − D)/σ̃, computed without x/s."""
        return lincomb(x, self.eps_coefs[k][0], denoised, self.eps_coefs[k][1])
