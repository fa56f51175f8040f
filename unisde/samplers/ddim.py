r"""``ddim``: Song et al.'s DDIM step in (s, σ) form, for any schedule.

    x_{t'} = s_{t'} x̂0 + √(σ_{t'}² − c²) ε̂ + c z,      c = η · √(σ²_{t|t'} σ_{t'}² / σ_t²),

with ε̂ = (x_t − s_t x̂0)/σ_t and σ²_{t|t'} as in :mod:`unisde.samplers.ddpm`. η = 0 is deterministic and equals
Euler on the probability-flow ODE in the VE view exactly (Song, Meng & Ermon 2021, §4.3,
eqs. 13–14 [DDIM]; in t it is Euler up to O(Δt²));
η = 1 draws from the DDPM posterior with the fixed_small variance.

``ancestral="rf"`` chooses c as ComfyUI's ``sample_euler_ancestral_RF`` (diffusers' LTXEulerAncestralRFScheduler)
does, in flow noise levels τ = σ/(s + σ) (t itself on the rectified flow): the step goes down to
τ_d = τ'(1 + (τ'/τ − 1) η) and forward-noises from there to τ', which in the form above is

    √(σ_{t'}² − c²) = s_{t'} σ̃_d,   σ̃_d = τ_d/(1 − τ_d),

so η = 0 is the same deterministic step and η = 1 goes down to τ'²/τ. ``s_noise`` scales the drawn noise only
(k-diffusion's S_noise), leaving the deterministic part as it is.
"""

from __future__ import annotations

import math

import torch

from unisde.core.kernels import lincomb, posterior_coefficients, rf_ancestral_step
from unisde.samplers.base import Option, Sampler, non_negative


class DDIMSampler(Sampler):
    name = "ddim"
    description = "DDIM (η = 0: Euler on the PF-ODE; η > 0: partially stochastic)"
    default_grid = "config"
    stochastic = True
    final_from_config = True  # honours set_alpha_to_one=False (end at index 0), as diffusers DDIM/PNDM do
    options = {
        "eta": Option(
            0.0, (float,), "stochasticity η ≥ 0 (0: deterministic, 1: DDPM posterior variance)", non_negative
        ),
        "use_clipped_model_output": Option(False, (bool,), "recompute ε̂ from the clipped x̂0"),
        "ancestral": Option(
            "ddim",
            (str,),
            "how η sets the noise: DDIM's posterior rule (ddim) or the flow "
            "down-step of ComfyUI's euler_ancestral_RF (rf, needs η ≤ 1)",
            choices=("ddim", "rf"),
        ),
        "s_noise": Option(
            1.0, (float,), "scale of the drawn noise (the deterministic part is unchanged)", non_negative
        ),
        "diffusers_prev_timestep": Option(
            False,
            (bool,),
            "diffusers' DDIMScheduler step target on a β table: from training index j to j − N//n (the table's "
            "end below 0), not to the next grid point; the two differ where the spacing's strides are not N//n "
            "(linspace; trailing with n not dividing N), and the next step then reads that sample as one at the "
            "next grid point (set by the DDIMScheduler converter)",
        ),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid, exact=True)  # data-prediction form: finite at s = 0
        s_next, sigma_next = s[1:], sigma[1:]
        if self.opts["diffusers_prev_timestep"]:
            s_next, sigma_next = self._diffusers_targets(grid, s_next, sigma_next)
        posterior = posterior_coefficients(s[:-1], sigma[:-1], s_next, sigma_next)[3]
        self.s_t, self.sigma_t = self.floats(s[:-1]), self.floats(sigma[:-1])
        self.s_n, self.var_n = self.floats(s_next), self.floats(sigma_next**2)
        self.posterior = self.floats(posterior)
        self.tau = self.floats(sigma / (s + sigma))  # flow levels (rf ancestral); 0 at the clean end point
        self.flow_scale_n = self.floats(s[1:] + sigma[1:])
        self.affine_steps = None
        if self.opts["eta"] == 0.0:  # x' = (σ'/σ) x + (s' − s σ'/σ) x̂0 (the loop below with std = 0)
            ratios = [math.sqrt(v) / sg for v, sg in zip(self.var_n, self.sigma_t)]
            self.affine_steps = [(r, s_n - r * s_t) for r, s_n, s_t in zip(ratios, self.s_n, self.s_t)]
        return grid[:-1]

    def _diffusers_targets(self, grid, s_next, sigma_next):
        """(s, σ) at diffusers DDIM's step targets: training index j_i − N//n of each evaluation's index j_i
        (t = (j + 1)/N), the grid's end point where that is below 0 (``diffusers_prev_timestep``)."""
        sched, n = self.schedule, grid.numel() - 1
        if not (sched.is_discrete and sched.num_train_timesteps):
            raise ValueError("sampler 'ddim': diffusers_prev_timestep=True needs a β table (training indices)")
        big_n = sched.num_train_timesteps
        stride = big_n // n
        targets = [round(t * big_n - 1) - stride for t in self.grid[:-1]]
        inside = [i for i, j in enumerate(targets) if j >= 0]
        s_next, sigma_next = s_next.clone(), sigma_next.clone()
        s_next[:], sigma_next[:] = s_next[-1].item(), sigma_next[-1].item()  # below index 0: the grid's end point
        if inside:  # one coefficient call for every target (set_timesteps cost, not the step's)
            times = torch.tensor([(targets[i] + 1) / big_n for i in inside], dtype=grid.dtype)
            s_in, sigma_in = self.grid_coefficients(times, exact=True)
            s_next[inside], sigma_next[inside] = s_in, sigma_in
        return s_next, sigma_next

    def rf_std(self, i: int, eta: float) -> float:
        """c of ComfyUI's euler_ancestral_RF step i: down to τ_d = τ'(1 + (τ'/τ − 1)η), forward noise to τ'."""
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"sampler 'ddim' with ancestral='rf': eta={eta} must lie in [0, 1]")
        # the forward noise from τ_d to τ' in the flow view, times its scale s' + σ' (= σ'/τ') in model space
        return self.flow_scale_n[i] * rf_ancestral_step(self.tau[i], self.tau[i + 1], eta)[2]

    def renoise_denoised(self, denoised):
        """The x̂0 whose ε̂ = (x − s x̂0)/σ carries the sample to the next noise level: the unclipped one (diffusers'
        default; the clipped one with ``use_clipped_model_output``). The CFG++ variant returns the unconditional x̂0
        here (:class:`unisde.samplers.cfg_pp.DDIMCFGPPSampler`)."""
        return denoised if self.opts["use_clipped_model_output"] or self.raw_denoised is None else self.raw_denoised

    def loop(self, x, start=0):
        for i in range(start, len(self.s_t)):
            x, denoised = yield x
            eta = self.eta_value()
            if eta > 0 and self.opts["ancestral"] == "rf":
                std = self.rf_std(i, eta)
            else:
                std = eta * math.sqrt(self.posterior[i]) if eta > 0 else 0.0
            # x' = s' x̂0 + √(σ'² − std²) ε̂ + std z with ε̂ = (x − s x̂0)/σ
            direction = math.sqrt(max(self.var_n[i] - std * std, 0.0)) / self.sigma_t[i]
            x0_for_eps = self.renoise_denoised(denoised)
            if x0_for_eps is denoised:  # no clipping in between: two terms
                terms = ((x, direction), (denoised, self.s_n[i] - direction * self.s_t[i]))
            else:  # ε̂ from another x̂0 (unclipped: diffusers' default; unconditional: CFG++) than the data term's
                terms = ((x, direction), (x0_for_eps, -direction * self.s_t[i]), (denoised, self.s_n[i]))
            # (rf: no draw into the clean end)
            draws = eta > 0 and (self.opts["ancestral"] == "ddim" or (self.tau[i + 1] > 0 and self.opts["s_noise"] > 0))
            if draws:
                x = self.noised(x, std * self.opts["s_noise"], *terms)
            else:
                x = lincomb(*terms[0], *terms[1])
                for y, c in terms[2:]:
                    x.add_(y, alpha=c)
        return x
