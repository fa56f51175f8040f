r"""``lms``: linear multistep (variable-step Adams–Bashforth) on the probability-flow ODE in the VE view.

The PF-ODE (Song et al. 2021, eq. 13 [SDE]) in x̃ = x/s with σ̃ = σ/s as the independent variable reads dx̃/dσ̃ = d(x̃, σ̃) =
(x̃ − D)/σ̃ (see :mod:`unisde.samplers.ode`). The Adams–Bashforth step of order p interpolates the last p
derivatives d_k, d_{k−1}, … at σ̃_k, σ̃_{k−1}, … by a polynomial in σ̃ and integrates it exactly over the step:

    x̃_{k+1} = x̃_k + Σ_j c_{k,j} d_{k−j},    c_{k,j} = ∫_{σ̃_k}^{σ̃_{k+1}} L_{k,j}(σ̃) dσ̃,

with L_{k,j} the Lagrange basis polynomial of node σ̃_{k−j}. The weights are computed once per grid in
:meth:`LMSSampler.prepare` (Gauss–Legendre quadrature with as many nodes as the order, exact for these
polynomials, in float64). The loop keeps the derivatives it has seen as a local history, so each step runs at
the order it allows, min(``lms_order``, evaluations so far): 1, 2, … from the start of the grid and again from
wherever an img2img pipeline enters it. This is
the algorithm of diffusers' LMSDiscreteScheduler (which integrates the same polynomials numerically), and
``UnifiedScheduler.from_config`` of an LMS config selects it, with ``entry_order="index"``: diffusers runs step k
at order min(k + 1, 4) whatever history it holds, so after an img2img entry its first steps weight the derivatives
they have by the first weights of that higher-order rule (its ``zip`` drops the rest) — not a consistent
Adams–Bashforth step, reproduced as it is. One model evaluation per step; the derivatives
only use σ̃ > 0, so a step to σ̃ = 0 is an ordinary step (the polynomial is extrapolated to 0).

``view`` (:func:`unisde.core.kernels.view_coefficients`): ``"flow"`` takes the same steps in y = x/(s + σ) against
τ = σ/(s + σ), exact at s = 0; ``"auto"`` (default) does so where the schedule reaches zero SNR at t = 1, where the
polynomials in σ̃ would span the capped σ̃ = 4096 (rectified flow, 5 / 10 steps: error 0.085 / 0.013 in σ̃,
0.046 / 4e-4 in τ). diffusers' LMS steps in σ̃: its converter sets ``view="ve"``.
"""

from __future__ import annotations

import functools

import numpy as np

from unisde._tensor import scaled
from unisde.core.kernels import pf_ode_derivative
from unisde.samplers.base import Option, Sampler, view_option

ORDERS = (1, 2, 3, 4)


def _lms_order(value):
    return None if value in ORDERS else f"must be one of {', '.join(map(str, ORDERS))}"


@functools.lru_cache(maxsize=None)
def _gauss_legendre(points: int):
    """Gauss–Legendre nodes and weights on [−1, 1] (computed once per count: set_timesteps asks for them per step)."""
    return np.polynomial.legendre.leggauss(points)


def adams_bashforth_weights(nodes: list[float], start: float, end: float) -> tuple[float, ...]:
    """∫_start^end L_j(τ) dτ for the Lagrange basis L_j of ``nodes`` (node 0 is the current point), float64."""
    x, w = _gauss_legendre(max(len(nodes), 1))  # exact for degree ≤ 2p − 1 ≥ p − 1
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
    description = "linear multistep (variable-step Adams–Bashforth, order ≤ 4) on the PF-ODE in σ̃ or τ: diffusers' LMS"
    default_grid = "karras"
    options = {
        "lms_order": Option(4, (int,), "highest multistep order 1 … 4 (diffusers' LMS step uses 4)", _lms_order),
        "entry_order": Option(
            "history",
            (str,),
            "the order of a step: history (min(lms_order, evaluations so far): 1, 2, … again after an img2img "
            "entry) or index (diffusers' LMSDiscreteScheduler: min(k + 1, lms_order) at step k, of whose weights "
            "the derivatives seen so far take the first ones: after a mid-grid entry its zip drops the rest)",
            choices=("history", "index"),
        ),
        "view": view_option(),
    }

    def prepare(self, grid):
        """Per step k: the view's scales c_k, c_{k+1} and level ℓ_k (s and σ̃ in the VE view,
        :meth:`Sampler.view_coefficients`) and the Adams–Bashforth weights of d_k, d_{k−1}, … for every order
        1 … min(k + 1, ``lms_order``) the step may run at."""
        self.grid = self.floats(grid)
        s, ve = self.view_coefficients(grid)
        ve = self.floats(ve)
        n = grid.numel() - 1
        top = self.opts["lms_order"]
        if any(v <= 0 for v in ve[:-1]):
            raise ValueError(f"sampler 'lms' needs positive noise levels at every evaluation time; grid σ̃ = {ve[:-1]}")
        self.s_t, self.s_n, self.ve = self.floats(s[:-1]), self.floats(s[1:]), ve[:-1]
        self.weights = [
            [
                adams_bashforth_weights([ve[k - j] for j in range(p)], ve[k], ve[k + 1])
                for p in range(1, min(k + 1, top) + 1)
            ]
            for k in range(n)
        ]
        return grid[:-1]

    def loop(self, x, start=0):
        derivatives = []  # d_k, d_{k−1}, … (newest first): the Adams–Bashforth history of this loop
        index_order = self.opts["entry_order"] == "index"
        for k in range(start, len(self.weights)):
            x, denoised = yield x
            x_ve = scaled(x, 1.0 / self.s_t[k]) if self.s_t[k] != 1.0 else x
            derivatives = [pf_ode_derivative(x_ve, denoised, self.ve[k]), *derivatives[: self.opts["lms_order"] - 1]]
            order = len(self.weights[k]) if index_order else min(len(derivatives), len(self.weights[k]))
            for w, d in zip(self.weights[k][order - 1], derivatives):  # x̃_{k+1} = x̃_k + Σ_j c_{k,j} d_{k−j}
                x_ve = x_ve.add(d, alpha=w)
            x = scaled(x_ve, self.s_n[k]) if self.s_n[k] != 1.0 else x_ve
        return x
