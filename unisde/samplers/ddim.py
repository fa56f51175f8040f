r"""``ddim``: Song et al.'s DDIM step in (s, σ) form, for any schedule.

    x_{t'} = s_{t'} x̂0 + √(σ_{t'}² − c²) ε̂ + c z,      c = η · √(σ²_{t|t'} σ_{t'}² / σ_t²),

with ε̂ = (x_t − s_t x̂0)/σ_t and σ²_{t|t'} as in :mod:`unisde.samplers.ddpm`. η = 0 is deterministic and equals
Euler on the probability-flow ODE in the VE view exactly (Song, Meng & Ermon 2021, §4.3,
eqs. 13–14 [DDIM]; in t it is Euler up to O(Δt²));
η = 1 draws from the DDPM posterior with the fixed_small variance.
"""

from __future__ import annotations

import math


from unisde.samplers.base import Option, Sampler, grid_coefficients, lincomb, non_negative


class DDIMSampler(Sampler):
    name = "ddim"
    description = "DDIM (η = 0: Euler on the PF-ODE; η > 0: partially stochastic)"
    default_grid = "config"
    stochastic = True
    final_from_config = True  # honours set_alpha_to_one=False (end at index 0), as diffusers DDIM/PNDM do
    options = {
        "eta": Option(0.0, (float,), "stochasticity η ≥ 0 (0: deterministic, 1: DDPM posterior variance)", non_negative),
        "use_clipped_model_output": Option(False, (bool,), "recompute ε̂ from the clipped x̂0"),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = grid_coefficients(self, grid)
        var_t, var_n = sigma[:-1] ** 2, sigma[1:] ** 2
        r = s[:-1] / s[1:]
        posterior = ((var_t - r * r * var_n).clamp(min=0) * var_n / var_t)
        self.s_t, self.sigma_t = self.floats(s[:-1]), self.floats(sigma[:-1])
        self.s_n, self.var_n = self.floats(s[1:]), self.floats(var_n)
        self.posterior = self.floats(posterior)
        return grid[:-1]

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        eta = self.eta_value(eta)
        std = eta * math.sqrt(self.posterior[k]) if eta > 0 else 0.0
        direction = math.sqrt(max(self.var_n[k] - std * std, 0.0)) / self.sigma_t[k]
        x0_for_eps = denoised if self.opts["use_clipped_model_output"] else raw_denoised
        if x0_for_eps is denoised:
            # ε̂ = (x − s x̂0)/σ folded in: x' = (c/σ) x + (s' − c s/σ) x̂0, two passes.
            prev = lincomb(sample, direction, denoised, self.s_n[k] - direction * self.s_t[k])
        else:
            prev = lincomb(sample, direction, x0_for_eps, -direction * self.s_t[k])
            prev.add_(denoised, alpha=self.s_n[k])
        if eta > 0:
            prev.add_(self.noise_like(sample, generator), alpha=std)
        return prev
