r"""``ddpm``: the ancestral step of DDPM — a draw from the forward process's posterior q(x_{t'} | x_t, x̂0).

For a general schedule, with r = s_t / s_{t'} and σ²_{t|t'} = σ_t² − r² σ_{t'}² (the forward transition's
variance; β_t for a VP table), the posterior is Gaussian with (Ho et al. 2020 eqs. 6–7 in (s, σ) form)

    mean = s_{t'} σ²_{t|t'} / σ_t² · x̂0 + r σ_{t'}² / σ_t² · x_t,    variance = σ²_{t|t'} σ_{t'}² / σ_t².

Seed 000 §3.1 / seed 003 show this is Euler–Maruyama on the reverse VP-SDE (eq. 26) up to O(Δt²).
``variance_type``: fixed_small (the posterior variance), fixed_large (σ²_{t|t'}), learned (the model's extra
channels are the variance) or learned_range (they interpolate log-variance between the two, Nichol & Dhariwal).
"""

from __future__ import annotations


import torch

from unisde.samplers.base import Option, Sampler, grid_coefficients, lincomb

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMSampler(Sampler):
    name = "ddpm"
    description = "DDPM ancestral sampling (posterior step); Euler–Maruyama on the reverse SDE up to O(Δt²)"
    stochastic = True
    default_grid = "config"
    options = {
        "variance_type": Option("fixed_small", (str,), "posterior variance choice", choices=VARIANCE_TYPES),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = grid_coefficients(self, grid)
        s_t, s_n, var_t, var_n = s[:-1], s[1:], sigma[:-1] ** 2, sigma[1:] ** 2
        r = s_t / s_n
        trans = (var_t - r * r * var_n).clamp(min=0)
        self.coef_x0 = self.floats(s_n * trans / var_t)
        self.coef_x = self.floats(r * var_n / var_t)
        small = (trans * var_n / var_t).clamp(min=1e-20)
        self.log_small = self.floats(small.log())
        self.log_large = self.floats(trans.clamp(min=1e-20).log())
        self.std_small = self.floats(small.sqrt())
        self.std_large = self.floats(trans.sqrt())
        # diffusers adds noise whenever the model timestep is > 0; on a table that is every index but 0.
        times = grid[:-1]
        if self.schedule.is_discrete:
            self.draw = [bool(v > 0) for v in self.schedule.timestep(times)]
        else:
            self.draw = [True] * (len(self.grid) - 2) + [False]
        return times

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        prev = lincomb(denoised, self.coef_x0[k], sample, self.coef_x[k])
        if not self.draw[k]:
            return prev
        noise = self.noise_like(sample, generator)
        vt = self.opts["variance_type"]
        if vt in ("learned", "learned_range") and extra is None:
            raise ValueError(f"variance_type={vt!r} needs a model output with twice the sample's channels (learned variance)")
        if vt == "learned":
            return prev + extra.sqrt() * noise
        if vt == "learned_range":
            frac = (extra + 1) / 2
            log_var = frac * self.log_large[k] + (1 - frac) * self.log_small[k]
            return prev + torch.exp(0.5 * log_var) * noise
        std = self.std_large[k] if vt in ("fixed_large", "fixed_large_log") else self.std_small[k]
        return prev.add_(noise, alpha=std)
