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

from unisde.samplers.base import Option, Sampler, grid_coefficients, lincomb, non_negative, positive


class EDMSampler(Sampler):
    name = "edm"
    description = "EDM Algorithm 2: Heun (or Euler) on the PF-ODE in σ̃ with optional churn"
    default_grid = "karras"
    options = {
        "solver": Option("heun", (str,), "heun (2nd order, Euler on the last step) or euler", choices=("heun", "euler")),
        "s_churn": Option(0.0, (float,), "total churn S_churn ≥ 0", non_negative),
        "s_tmin": Option(0.0, (float,), "churn only where σ̃ ≥ S_tmin", non_negative),
        "s_tmax": Option(float("inf"), (float,), "churn only where σ̃ ≤ S_tmax", non_negative),
        "s_noise": Option(1.0, (float,), "noise inflation S_noise", positive),
    }

    @property
    def order(self):  # diffusers' `order`: model calls per step
        return 2 if self.opts["solver"] == "heun" else 1

    @property
    def stochastic(self):
        return self.opts["s_churn"] > 0

    def prepare(self, grid):
        self.grid = self.floats(grid)
        sched = self.schedule
        n = grid.numel() - 1
        s, sigma = grid_coefficients(self, grid)
        ve = sigma / s
        o = self.opts
        gamma = torch.where((ve >= o["s_tmin"]) & (ve <= o["s_tmax"]), torch.full_like(ve, min(o["s_churn"] / n, math.sqrt(2) - 1)), torch.zeros_like(ve))
        gamma[-1] = 0.0
        ve_max = float(sched.ve_sigma(1.0))
        ve_hat = torch.minimum(ve * (1 + gamma), torch.full_like(ve, max(ve_max, float(ve[0]))))
        t_hat = torch.where(ve_hat > ve, sched.t_from_sigma(ve_hat.clamp(min=1e-300)), grid)
        s_hat, _ = self.scales_and_sigmas(t_hat)
        s_hat = torch.where(ve_hat > ve, s_hat, s)
        heun = o["solver"] == "heun"
        times, self.ops = [], []
        for i in range(n):
            times.append(float(t_hat[i]))
            two_stage = heun and float(ve[i + 1]) > 0
            h = float(ve[i + 1] - ve_hat[i])
            # Euler in model space: x' = s_{i+1}[(1 + h/σ̂)/ŝ · x − h/σ̂ · D].
            nxt_s = float(s[i + 1])
            euler = (nxt_s * (1 + h / float(ve_hat[i])) / float(s_hat[i]), -nxt_s * h / float(ve_hat[i]))
            churn_std = float(torch.sqrt((ve_hat[i + 1] ** 2 - ve[i + 1] ** 2).clamp(min=0))) * o["s_noise"] if i + 1 < n else 0.0
            to_hat = float(s_hat[i + 1]) / nxt_s if i + 1 < n else 1.0
            stage1 = dict(kind="euler", euler=euler, s=float(s_hat[i]), ve=float(ve_hat[i]), h=h, two_stage=two_stage,
                          churn_std=churn_std, s_next=nxt_s, s_next_hat=float(s_hat[i + 1]) if i + 1 < n else nxt_s, to_hat=to_hat)
            self.ops.append(stage1)
            if two_stage:
                times.append(float(grid[i + 1]))
                self.ops.append(dict(kind="heun", s=nxt_s, ve=float(ve[i + 1]), h=h, churn_std=churn_std,
                                     s_next=nxt_s, s_next_hat=stage1["s_next_hat"], to_hat=to_hat))
        self._saved = None
        return torch.tensor(times, dtype=torch.float64)

    def _to_next(self, op, x_ve, generator):
        """x̃ at σ̃_{i+1} → model-space sample at σ̂_{i+1} (adding the churn noise of the next step)."""
        if op["churn_std"] > 0:
            x_ve = torch.add(x_ve, self.noise_like(x_ve, generator), alpha=op["churn_std"])
            return x_ve * op["s_next_hat"]
        return x_ve * op["s_next"]

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        op = self.ops[k]
        inv_s, inv_ve = 1.0 / op["s"], 1.0 / op["ve"]
        if op["kind"] == "euler":
            if op["two_stage"]:
                # Keep (x_i, D_i) rather than d_i: the Heun correction is then one 4-term combination.
                self._saved = (sample, denoised, inv_s, inv_ve)
                hv = op["h"] * inv_ve
                return lincomb(sample, op["s_next"] * inv_s * (1 + hv), denoised, -op["s_next"] * hv)
            if op["churn_std"] > 0:
                x_ve = lincomb(sample, inv_s * (1 + op["h"] * inv_ve), denoised, -op["h"] * inv_ve)
                return self._to_next(op, x_ve, generator)
            a, b = op["euler"]
            return lincomb(sample, a, denoised, b)
        x_start, d_start, inv_s0, inv_ve0 = self._saved
        self._saved = None
        # x̃_{i+1} = x̂_i + (h/2)(d_i + d'),  d_i = (x̂_i − D_i)/σ̂_i,  d' = (x̃_pred − D')/σ̃_{i+1}, in model space.
        half = 0.5 * op["h"]
        scale = op["s_next_hat"] if op["churn_std"] > 0 else op["s_next"]
        out = x_start * (scale * inv_s0 * (1 + half * inv_ve0))
        out.add_(d_start, alpha=-scale * half * inv_ve0)
        out.add_(sample, alpha=scale * half * inv_s * inv_ve)
        out.add_(denoised, alpha=-scale * half * inv_ve)
        if op["churn_std"] > 0:
            out.add_(self.noise_like(out, generator), alpha=op["churn_std"] * scale)
        return out
