r"""``ddpm``: the ancestral step of DDPM — a draw from the forward process's posterior q(x_{t'} | x_t, x̂0).

For a general schedule, with r = s_t / s_{t'} and σ²_{t|t'} = σ_t² − r² σ_{t'}² (the forward transition's
variance; β_t for a VP table), the posterior is Gaussian with (Ho et al. 2020, eqs. 6–7 in (s, σ) form;
:func:`unisde.core.kernels.posterior_coefficients`)

    mean = s_{t'} σ²_{t|t'} / σ_t² · x̂0 + r σ_{t'}² / σ_t² · x_t,    variance = σ²_{t|t'} σ_{t'}² / σ_t².

Ancestral sampling is a discretisation of the reverse VP-SDE (Song et al. 2021, eq. 6 with the VP SDE of eq. 11,
and App. E): it agrees with Euler–Maruyama on it up to O(Δt²) per step (tests/test_equivalences.py).
``variance_type``: fixed_small (the posterior variance), fixed_large (σ²_{t|t'}), learned (the model's extra
channels are the variance) or learned_range (they interpolate log-variance between the two, Nichol & Dhariwal
2021, eq. 15).

``diffusers_last_x0_weight`` (a quirk of diffusers' UnCLIPScheduler, set by its converter): that class weighs x̂0 on
its step from training index 0 into the data by β_0/(1 − ᾱ_0) of its float32 table, 1 in exact arithmetic (the
posterior mean there is x̂0) but 1 − 5.3e-4 for its default cosine table, because the table stores ᾱ_0 = 1 − β_0
rounded to float32; the option multiplies that step's x̂0 weight by the given number.
"""

from __future__ import annotations

import torch

from unisde.core.kernels import lincomb, posterior_coefficients
from unisde.samplers.base import Option, Sampler, positive

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMSampler(Sampler):
    name = "ddpm"
    description = "DDPM ancestral sampling (posterior step); Euler–Maruyama on the reverse SDE up to O(Δt²)"
    stochastic = True
    reads_raw_denoised = False  # the posterior mean uses the clipped x̂0 alone
    default_grid = "config"
    options = {
        "variance_type": Option("fixed_small", (str,), "posterior variance choice", choices=VARIANCE_TYPES),
        "diffusers_last_x0_weight": Option(
            1.0,
            (float,),
            "factor on the x̂0 weight (exactly 1) of the step from training index 0 into the data: diffusers' "
            "UnCLIPScheduler's β_0/(1 − ᾱ_0) from its float32 table (set by its converter); needs a β table",
            positive,
        ),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid, exact=True)  # data-prediction form: finite at s = 0
        coef_x0, coef_x, transition, posterior = posterior_coefficients(s[:-1], sigma[:-1], s[1:], sigma[1:])
        self.coef_x0, self.coef_x = self.floats(coef_x0), self.floats(coef_x)
        small = posterior.clamp(min=1e-20)
        self.log_small = self.floats(small.log())
        self.log_large = self.floats(transition.clamp(min=1e-20).log())
        self.std_small = self.floats(small.sqrt())
        self.std_large = self.floats(transition.sqrt())
        # diffusers adds noise whenever the model timestep is > 0; on a table that is every index but 0.
        times = grid[:-1]
        if self.schedule.is_discrete:
            self.draw = [bool(v > 0) for v in self.schedule.timestep(times)]
        else:
            self.draw = [True] * (len(self.grid) - 2) + [False]
        weight = self.opts["diffusers_last_x0_weight"]
        if weight != 1.0:
            if not self.schedule.is_discrete:
                raise ValueError("sampler 'ddpm': diffusers_last_x0_weight needs a β table (training indices)")
            if not self.draw[-1] and self.grid[-1] == 0.0:  # the step from index 0 into the data, where diffusers'
                self.coef_x0[-1] *= weight  # x̂0 weight √1 · β_0/(1 − ᾱ_0) is 1 only in exact arithmetic
        return times

    def loop(self, x, start=0):
        vt = self.opts["variance_type"]
        for i in range(start, len(self.coef_x0)):
            x, denoised = yield x
            mean = lincomb(denoised, self.coef_x0[i], x, self.coef_x[i])  # posterior mean μ̃(x_t, x̂0)
            if not self.draw[i]:
                x = mean
                continue
            z = self.noise_like(x)
            if vt in ("learned", "learned_range") and self.extra is None:
                raise ValueError(
                    f"variance_type={vt!r} needs a model output with twice the sample's channels (learned variance)"
                )
            if vt == "learned":
                x = mean + self.extra.sqrt() * z
            elif vt == "learned_range":  # log-variance between log β̃ and log β (Nichol & Dhariwal 2021, eq. 15)
                frac = (self.extra + 1) / 2
                log_var = frac * self.log_large[i] + (1 - frac) * self.log_small[i]
                x = mean + torch.exp(0.5 * log_var) * z
            else:
                std = self.std_large[i] if vt in ("fixed_large", "fixed_large_log") else self.std_small[i]
                x = mean.add_(z, alpha=std)
        return x
