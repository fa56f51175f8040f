r"""``ode``: the probability-flow ODE (η = 0 of the reverse family, seed 000 eq. 27) with fixed-step Runge–Kutta.

The ODE is solved in the VE view x̃ = x/s with the noise level σ̃ = σ/s as the independent variable, where every
schedule's PF-ODE becomes (DESIGN §1; exact change of variables, no approximation)

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
"""

from __future__ import annotations

import torch

from unisde.samplers.base import Option, Sampler, grid_coefficients, pf_ode_derivative

# Butcher tableaux (c, A, b) of the explicit solvers.
TABLEAUX = {
    "euler": ((0.0,), (), (1.0,)),
    "heun": ((0.0, 1.0), ((1.0,),), (0.5, 0.5)),
    "rk3": ((0.0, 0.5, 1.0), ((0.5,), (-1.0, 2.0)), (1 / 6, 2 / 3, 1 / 6)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


class ODESampler(Sampler):
    name = "ode"
    description = "probability-flow ODE in the VE view dx̃/dσ̃ = (x̃ − D)/σ̃: euler, heun, rk3 or rk4"
    default_grid = "karras"
    options = {
        "solver": Option("heun", (str,), "Runge-Kutta method: euler (1st), heun (2nd), rk3 (3rd) or rk4 (4th order)",
                         choices=tuple(TABLEAUX)),
    }

    @property
    def order(self):
        return len(TABLEAUX[self.opts["solver"]][0])

    def prepare(self, grid):
        self.grid = self.floats(grid)
        c, _, _ = TABLEAUX[self.opts["solver"]]
        s, sigma = grid_coefficients(self, grid)
        ve = sigma / s
        n = grid.numel() - 1
        # The stage noise levels σ̃_i + c_j h of every step, mapped back to times in one (vectorised) inversion.
        stage_ve = [[float(ve[i]) + cj * float(ve[i + 1] - ve[i]) for cj in c] if float(ve[i + 1]) > 0 else [float(ve[i])]
                    for i in range(n)]
        inner = [(i, j) for i in range(n) for j in range(len(stage_ve[i])) if 0 < c[j] < 1]
        inner_t = self.schedule.t_from_sigma(torch.tensor([stage_ve[i][j] for i, j in inner], dtype=torch.float64)) if inner else None
        inner_s = self.scales_and_sigmas(inner_t)[0] if inner else None
        lookup = {key: (float(inner_t[m]), float(inner_s[m])) for m, key in enumerate(inner)}
        times, self.ops = [], []
        for i in range(n):
            h = float(ve[i + 1] - ve[i])  # negative: σ̃ decreases
            stages = len(stage_ve[i])
            for j in range(stages):
                if j == 0:
                    t_j, s_j = self.grid[i], float(s[i])
                elif c[j] == 1.0:  # the step's end point: the grid's own time, no inversion error
                    t_j, s_j = self.grid[i + 1], float(s[i + 1])
                else:
                    t_j, s_j = lookup[(i, j)]
                times.append(t_j)
                self.ops.append(dict(stage=j, stages=stages, s=s_j, ve=stage_ve[i][j], h=h, step=i))
        # the model-space scale of the next evaluation (or of the end point) for each op
        for k, op in enumerate(self.ops):
            op["s_next"] = self.ops[k + 1]["s"] if k + 1 < len(self.ops) else float(s[-1])
        self._x0 = None
        self._derivs = []
        return torch.tensor(times, dtype=torch.float64)

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        op = self.ops[k]
        _, a, b = TABLEAUX[self.opts["solver"]]
        if op["stages"] == 1 and op["ve"] > 0 and op["ve"] + op["h"] <= 0:
            # Euler to σ̃ = 0 lands on D exactly: x̃ + (0 − σ̃)(x̃ − D)/σ̃ = D.
            return denoised * op["s_next"] if op["s_next"] != 1.0 else denoised
        x_ve = sample * (1.0 / op["s"])
        if op["stage"] == 0:
            self._x0, self._derivs = x_ve, []
        self._derivs.append(pf_ode_derivative(x_ve, denoised, op["ve"]))
        j = op["stage"]
        weights = b if j + 1 == op["stages"] else a[j]  # combine the derivatives of stages 0 … j
        if op["stages"] == 1:
            weights = (1.0,)
        nxt = self._x0
        for w, d in zip(weights, self._derivs):
            if w != 0.0:
                nxt = nxt + d * (w * op["h"])
        if j + 1 == op["stages"]:
            self._x0, self._derivs = None, []
        return nxt * op["s_next"]
