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

``view`` chooses the variables of the same algorithm (:func:`unisde.core.kernels.view_coefficients`): ``"ve"`` as
above; ``"flow"``: y = x/(s + σ) against τ = σ/(s + σ), where the PF-ODE is again dy/dτ = (y − D)/τ and everything
is finite at s = 0 (diffusers' FlowMatch Heun; ComfyUI's k-diffusion on flow models); ``"auto"`` (default): flow
where the schedule reaches zero SNR at t = 1, else ve. On a zero-SNR schedule the VE view starts at the capped
σ̃ = 4096 and its first trapezoid spans σ̃ from 4096 to O(1): on the rectified flow (N(0.5, 0.04 I) data, FlowMatch
grid) its error is 0.89 / 0.049 / 6.2e-3 at 5 / 10 / 20 steps against 2.0e-2 / 5.4e-3 / 1.5e-3 in the flow view.
The churn (σ̂ = (1 + γ) σ̃ with S_tmin, S_tmax in σ̃) is the forward process's transition from t_{i+1} to t̂_{i+1}
in model space in either view. diffusers' Euler and Heun classes step in σ̃: their converters set ``view="ve"``.
"""

from __future__ import annotations

import math

import torch

from unisde._tensor import scaled
from unisde.core.kernels import lincomb
from unisde.samplers.base import Option, Sampler, non_negative, positive, view_option


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
        "view": view_option(),
    }

    @property
    def order(self):  # diffusers' `order`: model calls per step
        return 2 if self.opts["solver"] == "heun" else 1

    @property
    def stochastic(self):
        return self.opts["s_churn"] > 0

    def prepare(self, grid):
        """Per step i, in model space (x = c y, with the view's scale c and level ℓ): the Euler step from ℓ̂_i to
        ℓ_{i+1}, the Heun correction, and the churn that lifts the result from t_{i+1} to t̂_{i+1} (the next step's
        starting level). The churn is EDM's, defined in σ̃ whatever the view (σ̂ = (1 + γ) σ̃, S_tmin ≤ σ̃ ≤ S_tmax):
        the forward process's transition from t_{i+1} to t̂_{i+1} in model space, x̂ = (ŝ/s) x + ŝ √(σ̃̂² − σ̃²) z,
        the same in every view (in the VE view it is x̃ + √(σ̃̂² − σ̃²) z)."""
        self.grid = self.floats(grid)
        n = grid.numel() - 1
        o = self.opts
        s, sigma = self.grid_coefficients(grid)  # VE coefficients: EDM's churn lives in σ̃
        ve = sigma / s
        gamma = torch.where(
            (ve >= o["s_tmin"]) & (ve <= o["s_tmax"]),
            torch.full_like(ve, min(o["s_churn"] / n, math.sqrt(2) - 1)),
            torch.zeros_like(ve),
        )
        gamma[-1] = 0.0
        ve_max = float(self.schedule.ve_sigma(1.0))
        ve_hat = torch.minimum(ve * (1 + gamma), torch.full_like(ve, max(ve_max, float(ve[0]))))
        # a raise by rounding only (σ̃(1) = ve_max and the grid's capped σ̃_0 differ in the last bits) is none: it would
        # move the first evaluation from t = 1 to the cap t_end, the very point the flow view is exact at
        churned = ve_hat > ve * (1 + 1e-12)
        ve_hat = torch.where(churned, ve_hat, ve)
        if bool(churned.any()):  # inverting σ̃ is a bisection: only where there is churn
            t_hat = torch.where(churned, self.schedule.t_from_sigma(ve_hat.clamp(min=1e-300)), grid)
        else:
            t_hat = grid
        s_hat = torch.where(churned, self.scales_and_sigmas(t_hat)[0], s)
        # the ODE's variables: (c, ℓ) on the grid and at the churned times (unisde.core.kernels.view_coefficients)
        c, level = self.view_coefficients(grid)
        c_at_hat, level_at_hat = self.view_coefficients(t_hat)
        c_hat, level_hat = torch.where(churned, c_at_hat, c), torch.where(churned, level_at_hat, level)
        heun = o["solver"] == "heun"
        self.two_stage = [heun and float(level[i + 1]) > 0 for i in range(n)]
        self.euler, self.correction, self.folded, self.churn = [], [], [], []
        times, self.step_starts = [], {}
        for i in range(n):
            self.step_starts[len(times)] = i
            times.append(float(t_hat[i]))
            if self.two_stage[i]:
                times.append(self.grid[i + 1])
            h, vh, ch, cn = float(level[i + 1] - level_hat[i]), float(level_hat[i]), float(c_hat[i]), float(c[i + 1])
            std = (
                float(torch.sqrt((ve_hat[i + 1] ** 2 - ve[i + 1] ** 2).clamp(min=0))) * o["s_noise"]
                if i + 1 < n
                else 0.0
            )
            # the result lives at t̂_{i+1} after the churn: y at ℓ_{i+1} times c_{i+1}, then times ŝ/s
            out_scale = cn * (float(s_hat[i + 1]) / float(s[i + 1])) if std > 0 else cn
            # Euler y' = ŷ + h (ŷ − D)/ℓ̂ as x' = a x + b D; the predictor of a Heun step stays at ℓ_{i+1}
            scale = cn if self.two_stage[i] else out_scale
            self.euler.append((scale * (1 + h / vh) / ch, -scale * h / vh))
            # Heun y' = ŷ + (h/2)(d + d') with d' = (y_pred − D')/ℓ_{i+1}: four terms (x̂, D, x_pred, D')
            half, vn = 0.5 * h, float(level[i + 1])
            self.correction.append(
                (
                    out_scale * (1 + half / vh) / ch,
                    -out_scale * half / vh,
                    out_scale * half / (cn * vn) if vn > 0 else 0.0,
                    -out_scale * half / vn if vn > 0 else 0.0,
                )
            )
            # the same correction when the sample passed back is the predictor itself (a pipeline's usual loop):
            # x̂ is (x_pred − e1 D̂)/e0's partner, so D̂ = (x_pred − e0 x̂)/e1 folds into the x̂ and x_pred terms
            # and the step takes three terms (x̂, x_pred, D') instead of four
            (w_hat, w_d_hat, w_pred, w_d), (e0, e1) = self.correction[-1], self.euler[-1]
            folded = (w_hat - w_d_hat * e0 / e1, w_pred + w_d_hat / e1, w_d)
            self.folded.append(folded if self.two_stage[i] and e1 != 0.0 else None)
            self.churn.append(std * float(s_hat[i + 1]) if std > 0 else 0.0)
        return torch.tensor(times, dtype=torch.float64)

    def loop(self, x, start=0):
        for i in range(self.entry_step(start), len(self.euler)):
            x, denoised = yield x  # at σ̂_i: the churn of step i was added at the end of step i − 1
            x_hat, denoised_hat = x, denoised
            x = x_pred = lincomb(x_hat, self.euler[i][0], denoised_hat, self.euler[i][1])
            if self.two_stage[i]:
                x, denoised = yield x
                if x is x_pred and self.folded[i] is not None:
                    a, c, d = self.folded[i]
                    x = scaled(x_hat, a).add_(x, alpha=c).add_(denoised, alpha=d)
                else:  # a pipeline changed the sample between the two evaluations (inpainting's blend)
                    a, b, c, d = self.correction[i]
                    x = scaled(x_hat, a).add_(denoised_hat, alpha=b).add_(x, alpha=c).add_(denoised, alpha=d)
            if self.churn[i] > 0:
                x = x.add_(self.noise_like(x), alpha=self.churn[i])
        return x
