r"""``ode``: the probability-flow ODE (Song et al. 2021, eq. 13; η = 0 of the reverse family), fixed-step Runge–Kutta.

The ODE is solved in the VE view x̃ = x/s with the noise level σ̃ = σ/s as the independent variable, where every
schedule's PF-ODE becomes (Karras et al. 2022, eqs. 1 and 4 with s = 1 and σ̃ as the time; an exact change of
variables, no approximation)

    dx̃/dσ̃ = (x̃ − D(x̃; σ̃)) / σ̃.

Why σ̃ rather than t or λ: the right-hand side then involves only the denoiser, so one solver is exact for the
same data on every schedule (a schedule only reparametrises the grid), and it is the variable of EDM's Heun,
whose grids (``karras``) are designed for it. Each step from σ̃_i to σ̃_{i+1} is one explicit Runge–Kutta step
(``solver``):

* ``euler`` — 1st order, one evaluation per step;
* ``heun`` — 2nd order (trapezoidal predictor–corrector), two evaluations;
* ``rk3`` — Kutta's 3rd-order method (nodes 0, ½, 1; weights 1/6, 2/3, 1/6), three evaluations;
* ``rk4`` — the classical 4th-order method (nodes 0, ½, ½, 1), four evaluations.

Intermediate stages are model evaluations at the times t(σ̃_i + c h) (listed in ``timesteps``; for
discrete tables these are fractional model timesteps). A step ending at σ̃ = 0 (the clean-data end point) is
an Euler step, which lands exactly on x̃ = D(x̃_i; σ̃_i) — the right-hand side is 0/0 at σ̃ = 0, so no higher
stage can be evaluated there (EDM Algorithm 2 does the same). The global error of the fixed-step solver is
O(h^p) with p its order on the part of the path with σ̃ > 0; the tests measure p with an exact denoiser.

``view`` (:func:`unisde.core.kernels.view_coefficients`) solves the same ODE in another variable: ``"flow"``,
y = x/(s + σ) against τ = σ/(s + σ) ∈ [0, 1], where it reads dy/dτ = (y − D)/τ too and is exact at s = 0;
``"auto"`` (default) takes it where the schedule reaches zero SNR at t = 1 (rectified flow, zero-SNR tables), where
σ̃ runs from the cap 4096 and the first Runge–Kutta step over [O(1), 4096] in σ̃ is inaccurate (rk3 on the
rectified flow at 5 steps: error 0.21 in σ̃, 7.8e-3 in τ).
"""

from __future__ import annotations

import torch

from unisde._tensor import scaled
from unisde.core.kernels import pf_ode_derivative
from unisde.samplers.base import Option, Sampler, view_option

# Butcher tableaux (c, A, b) of the explicit solvers.
TABLEAUX = {
    "euler": ((0.0,), (), (1.0,)),
    "heun": ((0.0, 1.0), ((1.0,),), (0.5, 0.5)),
    "rk3": ((0.0, 0.5, 1.0), ((0.5,), (-1.0, 2.0)), (1 / 6, 2 / 3, 1 / 6)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


class ODESampler(Sampler):
    name = "ode"
    description = "probability-flow ODE dy/dℓ = (y − D)/ℓ in the VE (σ̃) or flow (τ) view: euler, heun, rk3 or rk4"
    default_grid = "karras"
    options = {
        "solver": Option(
            "heun",
            (str,),
            "Runge-Kutta method: euler (1st), heun (2nd), rk3 (3rd) or rk4 (4th order)",
            choices=tuple(TABLEAUX),
        ),
        "view": view_option(),
    }

    @property
    def order(self):
        return len(TABLEAUX[self.opts["solver"]][0])

    def prepare(self, grid):
        """Per step i: h = ℓ_{i+1} − ℓ_i, the stage noise levels ℓ_i + c_j h and the model-space scale c of each
        stage's sample with the step's end point's appended (the scale the step's result is handed on in); ℓ and c
        are the view's (σ̃ and s in the VE view, :meth:`Sampler.view_coefficients`)."""
        self.grid = self.floats(grid)
        c, _, _ = TABLEAUX[self.opts["solver"]]
        s, ve = self.view_coefficients(grid)
        n = grid.numel() - 1
        # A step into σ̃ = 0 has a single (Euler) stage: the right-hand side is 0/0 there.
        self.stage_ve = [
            [float(ve[i]) + cj * float(ve[i + 1] - ve[i]) for cj in c] if float(ve[i + 1]) > 0 else [float(ve[i])]
            for i in range(n)
        ]
        # The inner stages' noise levels, mapped back to times in one (vectorised) inversion.
        inner = [(i, j) for i in range(n) for j in range(len(self.stage_ve[i])) if 0 < c[j] < 1]
        inner_ve = torch.tensor([self.stage_ve[i][j] for i, j in inner], dtype=torch.float64)
        inner_t = self.view_times(inner_ve) if inner else None
        inner_s = self.view_coefficients(inner_t)[0] if inner else None
        lookup = {key: (float(inner_t[m]), float(inner_s[m])) for m, key in enumerate(inner)}
        times, self.h, self.scales, self.step_starts = [], [], [], {}
        for i in range(n):
            self.step_starts[len(times)] = i
            self.h.append(float(ve[i + 1] - ve[i]))  # negative: σ̃ decreases
            scales = []
            for j in range(len(self.stage_ve[i])):
                if j == 0:
                    t_j, s_j = self.grid[i], float(s[i])
                elif c[j] == 1.0:  # the step's end point: the grid's own time, no inversion error
                    t_j, s_j = self.grid[i + 1], float(s[i + 1])
                else:
                    t_j, s_j = lookup[(i, j)]
                times.append(t_j)
                scales.append(s_j)
            self.scales.append(scales + [float(s[i + 1])])
        return torch.tensor(times, dtype=torch.float64)

    def loop(self, x, start=0):
        _, A, b = TABLEAUX[self.opts["solver"]]
        for i in range(self.entry_step(start), len(self.h)):
            h, ve, scale = self.h[i], self.stage_ve[i], self.scales[i]
            stages = len(ve)
            if stages == 1 and ve[0] > 0 and ve[0] + h <= 0:
                # Euler to σ̃ = 0 lands on D exactly: x̃ + (0 − σ̃)(x̃ − D)/σ̃ = D.
                x, denoised = yield x
                x = scaled(denoised, scale[1]) if scale[1] != 1.0 else denoised
                continue
            k = []  # the stage derivatives k_j = f(x̃_i + h Σ_m a_jm k_m, σ̃_i + c_j h)
            for j in range(stages):
                x, denoised = yield x
                x_ve = scaled(x, 1.0 / scale[j])
                if j == 0:
                    x_start = x_ve
                k.append(pf_ode_derivative(x_ve, denoised, ve[j]))
                # the next stage's input x̃_i + h Σ a_{j+1,m} k_m, or after the last stage x̃_{i+1} = x̃_i + h Σ b_m k_m
                weights = (1.0,) if stages == 1 else b if j + 1 == stages else A[j]
                x_next = x_start
                for w, k_m in zip(weights, k):
                    if w != 0.0:
                        x_next = x_next + k_m * (w * h)
                x = scaled(x_next, scale[j + 1])
        return x
