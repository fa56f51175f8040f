r"""``dpmsolver++``: DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2) as a unisde plugin.

Written against the schedule's s(t), σ(t) and the denoised estimate D only, so it runs on every schedule and
parameterisation. With the half log-SNR λ'(t) = log(s/σ) (= λ/2 of unisde's log-SNR), the probability-flow ODE
(seed 000 eq. 27) has the exact solution (variation of constants in x/σ)

    x_{t'} = (σ_{t'}/σ_t) x_t + σ_{t'} ∫_{λ'_t}^{λ'_{t'}} e^{λ'} D(x_λ', λ') dλ',

and DPM-Solver++ integrates D exactly as a polynomial in λ'. With h_i = λ'_{i+1} − λ'_i:

    first order (DDIM):  x_{i+1} = (σ_{i+1}/σ_i) x_i + s_{i+1} (1 − e^{−h_i}) D_i,
    2M:                  the same with D_i replaced by (1 + 1/(2 r_i)) D_i − 1/(2 r_i) D_{i−1},  r_i = h_{i−1}/h_i.

The first step is first order (no history). A step to σ = 0 (the clean-data end point; h = ∞, r = 0) is first
order and returns x = s_end D. ``lower_order_final`` also makes the last step first order when the grid has
fewer than 15 steps, the rule of diffusers' DPMSolverMultistepScheduler (it stabilises few-step sampling).
One model evaluation per step (``order`` = 1 in diffusers' sense of calls per step).

Being a plugin, it is registered through the ``unisde`` entry-point group exactly as the built-in samplers are.
"""

from __future__ import annotations

import math

import torch

import unisde
from unisde.samplers import Option, Sampler, grid_coefficients

__version__ = "0.1.0"


class DPMSolverPlusPlus(Sampler):
    name = "dpmsolver++"
    aliases = ("dpmsolver_2m", "dpm++2m")
    description = "DPM-Solver++(2M): 2nd-order multistep exponential integrator in data prediction (Lu et al. 2022)"
    default_grid = "uniform_lambda"
    stochastic = False
    options = {
        "lower_order_final": Option(True, (bool,), "first-order last step when there are fewer than 15 steps (diffusers' rule)"),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = grid_coefficients(self, grid)
        n = grid.numel() - 1
        self.ratio, self.phi, self.second = [], [], []
        h_prev = None
        for i in range(n):
            s_n, sig_i, sig_n = float(s[i + 1]), float(sigma[i]), float(sigma[i + 1])
            if sig_n == 0.0:  # e^{−h} = 0: x = s_end D (first order is exact in the limit)
                self.ratio.append(0.0)
                self.phi.append(s_n)
                self.second.append(None)
                h_prev = None
                continue
            lam_i = math.log(float(s[i])) - math.log(sig_i)
            lam_n = math.log(s_n) - math.log(sig_n)
            h = lam_n - lam_i
            self.ratio.append(sig_n / sig_i)
            self.phi.append(-s_n * math.expm1(-h))  # s_{i+1} (1 − e^{−h}), accurate for small h
            last_lowered = i == n - 1 and self.opts["lower_order_final"] and n < 15
            if h_prev is None or last_lowered:
                self.second.append(None)
            else:
                r = h_prev / h
                self.second.append((1.0 + 0.5 / r, -0.5 / r))
            h_prev = h
        self._previous = None
        return grid[:-1]

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        weights = self.second[k]
        previous, self._previous = self._previous, denoised
        if weights is None or previous is None:
            d = denoised
        else:
            d = denoised * weights[0] + previous * weights[1]
        if self.ratio[k] == 0.0:
            return d * self.phi[k]
        return sample * self.ratio[k] + d * self.phi[k]


@unisde.hookimpl
def unisde_register_samplers(register):
    register(DPMSolverPlusPlus)
