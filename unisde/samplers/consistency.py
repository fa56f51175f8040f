r"""Consistency-model sampling: ``lcm`` (Luo et al. 2023 [LCM], multistep latent consistency sampling — the
multistep consistency sampling of Song et al. 2023, Algorithm 1 [CM]) and ``tcd`` (Zheng et al. 2024 [TCD],
strategic stochastic sampling),
written against s(t), σ(t) and x̂0, as diffusers' LCMScheduler and TCDScheduler run them.

``lcm``: per evaluation, the consistency function f = c_skip x + c_out x̂0 (the *boundary condition*, below) is
the sample's clean estimate; the next sample re-noises it to the next time with fresh noise,

    x_{k+1} = s_{k+1} f_k + σ_{k+1} z,     z ~ N(0, I),

and the last evaluation returns f itself (the grid ends at t = 0, where σ = 0: no noise is drawn). The times
are the ``lcm`` grid (:mod:`unisde.grids.lcm`): a subset of the ``original_inference_steps`` timesteps the model
was distilled on.

**The boundary condition.** A consistency model must satisfy f(x, t_min) = x; LCM builds it in with EDM-style
skip scalings of the model's timestep τ (its training index), τ' = τ · ``timestep_scaling``:

    c_skip = σ_data² / (τ'² + σ_data²),     c_out = τ' / √(τ'² + σ_data²),     σ_data = 0.5,

applied to x̂0 *after* diffusers' clipping/thresholding of x̂0. They are a sampler option here (``boundary_condition``,
on by default), not a parameterisation, for three reasons: (1) diffusers clips or thresholds x̂0 before the
scalings, and the driver post-processes x̂0 before the sampler sees it, so only the sampler can apply them in
that order; (2) they are a convention of LCM's sampling (a function of the model's timestep and a sampling
constant, ``timestep_scaling``), which unisde's parameterisations do not carry; (3) they are the identity to
within c_skip ≤ 1e-5 for τ ≥ 16 at the default scaling, so an LCM model run by another sampler loses nothing
measurable without them. One consequence for the diffusers ``step()`` API: ``pred_original_sample`` is x̂0
before the scalings; the loop exposes f as ``output_denoised`` after each evaluation (the value
LatentConsistencyModelPipeline decodes after its last step; a driver returning it as ``pred_original_sample``
makes that decode exact — today they differ by c_skip (x − x̂0) + (c_out − 1) x̂0 at the last timestep,
≤ 1e-5 relative for ≥ 16 at the default scaling).

``tcd``: TCD's step with γ (diffusers calls it ``eta``; a pipeline's ``eta`` fills it unless set here):
with t' the next time, the intermediate time s = (1 − γ) t' (on a table: the training index ⌊(1 − γ) τ'⌋),
a DDIM step to s followed by forward noise from s to t',

    x_s = s_s x̂0 + σ_s ε̂,     x_{t'} = (s_{t'}/s_s) x_s + √(σ_{t'}² − (s_{t'}/s_s)² σ_s²) z,

with ε̂ = (x − s_t x̂0)/σ_t. γ = 0 is deterministic DDIM; γ = 1 is consistency sampling without the boundary
condition. The last evaluation returns x_s with s = (1 − γ) t_end and draws no noise. diffusers' TCDScheduler
ends at the table's first index (its last prev_timestep is 0), not on the clean data: ``diffusers_final_step``
reproduces that, and its converter sets it. TCD applies no boundary condition and no clipping.
"""

from __future__ import annotations

import math

import torch

from unisde._tensor import scaled
from unisde.core.kernels import lincomb, schedule_coefficients
from unisde.samplers.base import Option, Sampler, positive, unit_interval


class LCMSampler(Sampler):
    name = "lcm"
    aliases = ("consistency",)
    description = "LCM / multistep consistency sampling: f = c_skip x + c_out x̂0, re-noised to the next time"
    default_grid = "lcm"
    stochastic = True
    options = {
        "boundary_condition": Option(
            True,
            (bool,),
            "apply LCM's c_skip/c_out scalings to x̂0 (the consistency function); False re-noises x̂0 itself",
        ),
        "timestep_scaling": Option(
            10.0, (float,), "τ' = τ · timestep_scaling in c_skip, c_out (LCMScheduler's timestep_scaling)", positive
        ),
        "sigma_data": Option(0.5, (float,), "σ_data of the boundary-condition scalings", positive),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        self.s_next, self.sigma_next = self.floats(s[1:]), self.floats(sigma[1:])
        tau = self.floats(self.schedule.timestep(grid[:-1]))  # the model's timestep (training index on a table)
        self.c_skip, self.c_out = [], []
        for value in tau:
            if self.opts["boundary_condition"]:
                scaled_time, sd2 = value * self.opts["timestep_scaling"], self.opts["sigma_data"] ** 2
                self.c_skip.append(sd2 / (scaled_time * scaled_time + sd2))
                self.c_out.append(scaled_time / math.sqrt(scaled_time * scaled_time + sd2))
            else:
                self.c_skip.append(0.0)
                self.c_out.append(1.0)
        self.output_denoised = None
        return grid[:-1]

    def loop(self, x, start=0):
        n = len(self.c_skip)
        for k in range(start, n):
            x, denoised = yield x
            f = (
                denoised
                if self.c_skip[k] == 0.0 and self.c_out[k] == 1.0
                else lincomb(denoised, self.c_out[k], x, self.c_skip[k])
            )  # the consistency function at (x, t_k)
            self.output_denoised = f
            if k == n - 1:  # the last step returns f itself and draws no noise (diffusers' LCMScheduler)
                x = f
            else:  # formed in its own fresh draw's buffer (a caller's noise is never written to)
                x = self.noised(x, self.sigma_next[k], (f, self.s_next[k]))
        return x


class TCDSampler(Sampler):
    name = "tcd"
    description = "TCD: DDIM to s = (1 − γ) t' then forward noise to t' (γ = eta; Zheng et al. 2024)"
    default_grid = "lcm"
    stochastic = True
    options = {
        "eta": Option(
            0.3,
            (float,),
            "γ ∈ [0, 1] (diffusers' TCDScheduler.step eta); a pipeline's eta fills it unless set here",
            unit_interval,
        ),
        "diffusers_final_step": Option(
            False,
            (bool,),
            "on a table, end the last step at the first training index "
            "(t = 1/N) as diffusers' TCDScheduler does, instead of on the clean data",
        ),
    }

    def prepare(self, grid):
        grid = grid.clone()
        if self.opts["diffusers_final_step"] and self.schedule.is_discrete and float(grid[-1]) == 0.0:
            grid[-1] = 1.0 / self.schedule.num_train_timesteps
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        self.s_t, self.sigma_t = self.floats(s[:-1]), self.floats(sigma[:-1])
        self.s_next, self.sigma_next = self.floats(s[1:]), self.floats(sigma[1:])
        self.next_timestep = self.floats(self.schedule.timestep(grid[1:])) if self.schedule.is_discrete else None
        self._intermediate = {}
        self.intermediates(self.opts["eta"])  # the option's γ now; a pipeline's other eta at its first step
        return grid[:-1]

    def intermediates(self, gamma: float) -> list[tuple[float, float]]:
        """(s, σ) at TCD's intermediate time of every step k: s = (1 − γ) t', or on a table the index ⌊(1 − γ) τ'⌋
        of the next timestep τ'. One evaluation of the schedule for all steps, cached per γ (a pipeline's eta is
        known only while the loop runs)."""
        table = self._intermediate.get(gamma)
        if table is None:
            times = []
            for k in range(len(self.s_t)):
                if self.grid[k + 1] == 0.0:  # the clean-data end point: s = (1 − γ) · 0
                    times.append(0.0)
                elif self.next_timestep is not None:  # diffusers' floor((1 − γ) τ'), computed in float32 as there
                    index = int(torch.floor((1.0 - gamma) * torch.tensor(round(self.next_timestep[k]))))
                    times.append((index + 1) / self.schedule.num_train_timesteps)
                else:
                    times.append((1.0 - gamma) * self.grid[k + 1])
            s, sigma = schedule_coefficients(self.schedule, torch.tensor(times, dtype=torch.float64))
            table = [(1.0, 0.0) if t == 0.0 else (a, b) for t, a, b in zip(times, self.floats(s), self.floats(sigma))]
            self._intermediate[gamma] = table
        return table

    def loop(self, x, start=0):
        n = len(self.s_t)
        for k in range(start, n):
            x, denoised = yield x
            gamma = self.eta_value()
            if not 0.0 <= gamma <= 1.0:
                raise ValueError(f"sampler 'tcd': γ (eta) must lie in [0, 1], got {gamma!r} (from the pipeline's eta)")
            s_s, sigma_s = self.intermediates(gamma)[k]
            # x_s = s_s x̂0 + σ_s ε̂ with ε̂ = (x − s_t x̂0)/σ_t: the DDIM step to the intermediate time
            c_x = sigma_s / self.sigma_t[k]
            c_d = s_s - c_x * self.s_t[k]
            if gamma > 0 and k < n - 1:
                # x_{t'} = r x_s + std z with x_s's coefficients multiplied through by r: no pass forms x_s itself
                ratio = self.s_next[k] / s_s
                std = math.sqrt(max(self.sigma_next[k] ** 2 - (ratio * sigma_s) ** 2, 0.0))
                x = self.noised(x, std, (x, ratio * c_x), (denoised, ratio * c_d))
            else:
                x = lincomb(x, c_x, denoised, c_d)
        return x


class CMStochasticSampler(Sampler):
    r"""``cm_stochastic``: multistep consistency sampling, Song et al. 2023, Algorithm 1 [CM] — diffusers'
    CMStochasticIterativeScheduler. The consistency function D(x, σ̃) (the ``cm`` parameterisation builds the
    boundary condition D(x, ε) = x into the network's skip connection) maps the sample to a clean estimate that
    lives at the boundary noise level ε = ``sigma_min``; the next sample re-noises it to the next level σ̃' with
    the missing variance only, in the VE view x̃ = x/s:

        x̃_{k+1} = D_k + S_noise √(max(σ̃_{k+1}² − ε², 0)) z,      x_{k+1} = s_{k+1} x̃_{k+1},

    so the last step (to σ̃ = 0, or to ε) returns D itself. ε defaults to the schedule's σ̃ at t = 0 (σ_min of a
    VE/EDM schedule, 0 where σ(0) = 0, which makes this LCM's re-noising without a boundary condition). One noise
    draw per step whenever the grid has more than one step, the last included (multiplied by 0), as diffusers
    draws them, so a shared generator leaves the loop in the same state."""

    name = "cm_stochastic"
    description = "multistep consistency sampling (Song et al. 2023, Alg. 1): D re-noised to √(σ̃'² − ε²)"
    default_grid = "karras"
    stochastic = True
    options = {
        "s_noise": Option(1.0, (float,), "noise inflation S_noise (diffusers' s_noise)", positive),
        "sigma_min": Option(
            None,
            (float, type(None)),
            "ε, the consistency function's boundary level σ̃ (None: the schedule's σ̃ at t = 0)",
            lambda v: None if v is None or v >= 0 else "must be >= 0",
        ),
    }

    def prepare(self, grid):
        """Per step k: s_{k+1} and the noise std s_{k+1} S_noise √(max(σ̃_{k+1}² − ε², 0))."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        eps = self.opts["sigma_min"]
        if eps is None:
            eps = float(self.schedule.ve_sigma(0.0))
        ve = self.floats(sigma / s)
        self.scale = self.floats(s[1:])
        self.noise = [
            self.scale[k] * self.opts["s_noise"] * math.sqrt(max(ve[k + 1] ** 2 - eps * eps, 0.0))
            for k in range(len(self.scale))
        ]
        self.draw = len(self.scale) > 1
        return grid[:-1]

    def loop(self, x, start=0):
        for k in range(start, len(self.scale)):
            x, denoised = yield x
            z = self.noise_like(x) if self.draw else None  # drawn also where its weight is 0 (diffusers' stream)
            if self.noise[k] == 0.0:
                x = scaled(denoised, self.scale[k])
            else:
                x = lincomb(denoised, self.scale[k], z, self.noise[k])
        return x
