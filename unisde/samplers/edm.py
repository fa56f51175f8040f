r"""``edm``: Karras et al. (2022) Algorithm 2 — Heun's method on the probability-flow ODE in the VE view.

In the VE view x̃ = x/s, σ̃ = σ/s every schedule's PF-ODE is dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ (Karras et al. 2022,
eqs. 1 and 4 [EDM]: Song et al. 2021, eq. 13 [SDE] after the change of variables),
which is why this sampler runs on any model. Per step i:

    γ_i = min(S_churn/n, √2 − 1) if S_tmin ≤ σ̃_i ≤ S_tmax else 0,   σ̂_i = (1 + γ_i) σ̃_i,
    x̂_i = x̃_i + √(σ̂_i² − σ̃_i²) S_noise z                      (the "churn", before the model call)
    d_i = (x̂_i − D(x̂_i; σ̂_i))/σ̂_i,   x̃_{i+1} = x̂_i + (σ̃_{i+1} − σ̂_i) d_i            (Euler)
    if σ̃_{i+1} ≠ 0:  d' = (x̃_{i+1} − D(x̃_{i+1}; σ̃_{i+1}))/σ̃_{i+1},
                     x̃_{i+1} = x̂_i + (σ̃_{i+1} − σ̂_i)(d_i + d')/2                    (Heun correction)

The churn of step i is added at the end of step i − 1, so the model is always evaluated at σ̂_i; the first
step's churn is absorbed into the starting noise level (the sample starts at σ̂_0). Samples are returned in
the model's own space x = s x̃. ``solver="euler"`` gives the first-order variant (diffusers' Euler schedulers).
"""

from __future__ import annotations

import math

import torch

from unisde.core.kernels import lincomb
from unisde.samplers.base import Option, Sampler, non_negative, positive


class EDMSampler(Sampler):
    name = "edm"
    description = "EDM Algorithm 2: Heun (or Euler) on the PF-ODE in σ̃ with optional churn"
    default_grid = "karras"
    options = {
        "solver": Option(
            "heun", (str,), "heun (2nd order, Euler on the last step) or euler", choices=("heun", "euler")
        ),
        "s_churn": Option(0.0, (float,), "total churn S_churn ≥ 0", non_negative),
        "s_tmin": Option(0.0, (float,), "churn only where σ̃ ≥ S_tmin", non_negative),
        "s_tmax": Option(float("inf"), (float,), "churn only where σ̃ ≤ S_tmax", non_negative),
        "s_noise": Option(1.0, (float,), "noise inflation S_noise", positive),
        "view": Option(
            "ve",
            (str,),
            "the ODE's variables: ve (x̃ = x/s against σ̃ = σ/s, EDM) or flow (x/(s + σ) "
            "against τ = σ/(s + σ): diffusers' FlowMatch Heun; finite at s = 0)",
            choices=("ve", "flow"),
        ),
    }

    @property
    def order(self):  # diffusers' `order`: model calls per step
        return 2 if self.opts["solver"] == "heun" else 1

    @property
    def stochastic(self):
        return self.opts["s_churn"] > 0

    def prepare(self, grid):
        """Per step i, in model space (x = s x̃): the Euler step from σ̂_i to σ̃_{i+1}, the Heun correction, and the
        churn that lifts the result from σ̃_{i+1} to σ̂_{i+1} (the next step's starting level)."""
        self.grid = self.floats(grid)
        n = grid.numel() - 1
        o = self.opts
        if o["view"] == "flow":
            # the same algorithm in y = x/(s + σ), τ = σ/(s + σ), where the PF-ODE is again dy/dτ = (y − D)/τ:
            # below, s stands for the view's scale s + σ and ve for its level τ
            if o["s_churn"] > 0:
                raise ValueError("sampler 'edm': s_churn > 0 is defined for view='ve' only (EDM's σ̃ churn)")
            s_exact, sigma_exact = self.grid_coefficients(grid, exact=True)
            s, ve = s_exact + sigma_exact, sigma_exact / (s_exact + sigma_exact)
            sigma = ve * s
        else:
            s, sigma = self.grid_coefficients(grid)
            ve = sigma / s
        gamma = torch.where(
            (ve >= o["s_tmin"]) & (ve <= o["s_tmax"]),
            torch.full_like(ve, min(o["s_churn"] / n, math.sqrt(2) - 1)),
            torch.zeros_like(ve),
        )
        gamma[-1] = 0.0
        ve_max = float(self.schedule.ve_sigma(1.0)) if o["view"] == "ve" else 1.0
        ve_hat = torch.minimum(ve * (1 + gamma), torch.full_like(ve, max(ve_max, float(ve[0]))))
        t_hat = torch.where(ve_hat > ve, self.schedule.t_from_sigma(ve_hat.clamp(min=1e-300)), grid)
        s_hat = torch.where(ve_hat > ve, self.scales_and_sigmas(t_hat)[0], s)
        heun = o["solver"] == "heun"
        self.two_stage = [heun and float(ve[i + 1]) > 0 for i in range(n)]
        self.euler, self.correction, self.churn = [], [], []
        times, self.step_starts = [], {}
        for i in range(n):
            self.step_starts[len(times)] = i
            times.append(float(t_hat[i]))
            if self.two_stage[i]:
                times.append(self.grid[i + 1])
            h, vh, sh, sn = float(ve[i + 1] - ve_hat[i]), float(ve_hat[i]), float(s_hat[i]), float(s[i + 1])
            std = (
                float(torch.sqrt((ve_hat[i + 1] ** 2 - ve[i + 1] ** 2).clamp(min=0))) * o["s_noise"]
                if i + 1 < n
                else 0.0
            )
            out_scale = float(s_hat[i + 1]) if std > 0 else sn  # the result lives at σ̂_{i+1} after the churn
            # Euler x̃' = x̂ + h (x̂ − D)/σ̂ as x' = a x + b D; the predictor of a Heun step stays at σ̃_{i+1}
            scale = sn if self.two_stage[i] else out_scale
            self.euler.append((scale * (1 + h / vh) / sh, -scale * h / vh))
            # Heun x̃' = x̂ + (h/2)(d + d') with d' = (x̃_pred − D')/σ̃_{i+1}: four terms (x̂, D, x_pred, D')
            half, vn = 0.5 * h, float(ve[i + 1])
            self.correction.append(
                (
                    out_scale * (1 + half / vh) / sh,
                    -out_scale * half / vh,
                    out_scale * half / (sn * vn) if vn > 0 else 0.0,
                    -out_scale * half / vn if vn > 0 else 0.0,
                )
            )
            self.churn.append(std * out_scale)
        return torch.tensor(times, dtype=torch.float64)

    def loop(self, x, start=0):
        for i in range(self.entry_step(start), len(self.euler)):
            x, denoised = yield x  # at σ̂_i: the churn of step i was added at the end of step i − 1
            x_hat, denoised_hat = x, denoised
            x = lincomb(x_hat, self.euler[i][0], denoised_hat, self.euler[i][1])
            if self.two_stage[i]:
                x, denoised = yield x
                a, b, c, d = self.correction[i]
                x_next = x_hat * a
                x = x_next.add_(denoised_hat, alpha=b).add_(x, alpha=c).add_(denoised, alpha=d)
            if self.churn[i] > 0:
                x = x.add_(self.noise_like(x), alpha=self.churn[i])
        return x
