r"""``sde``: Euler–Maruyama on the reverse-SDE family of any schedule, with the stochasticity knob η.

The family (Song et al. 2021, eqs. 6 and 13: η = 1 the reverse SDE, η = 0 the probability-flow ODE; the score
from the denoiser by Tweedie's formula, Karras et al. 2022, eq. 3)

    dx = [f(t) x − (1 + η²)/2 · g²(t) ∇log p_t(x)] dt + η g(t) dw̄,    ∇log p_t(x) = (s D − x)/σ²

is stepped in t from each evaluation time t_i to t_{i+1} (Δ = t_i − t_{i+1} > 0) with the schedule's f and g²
at t_i, in the model's own space:

    x' = x − [f x − (1 + η²)/2 · g² (s D − x)/σ²] Δ + η g √Δ z.

The last step, to the grid's end point t = 0 where σ = 0 and the score is singular, returns the denoised
estimate x̂0 = D (times s(t_end), i.e. D itself at t = 0) instead — the Euler–Maruyama step's limit is not
defined there, and D is Tweedie's posterior mean at the last noise level. Its weak order is 1 in the step size.

``method="exponential"`` instead integrates the same family exactly with x̂0 = D held fixed over the step (the
first-order exponential integrator; DPM-Solver's idea applied to the η-family). In the VE view y = x/s with
σ̃ = σ/s the family reads dy = −(1+η²)/2 · (D − y) dσ̃²/σ̃² + η dW in σ̃², a linear SDE whose solution over a
step from σ̃ to σ̃' = q σ̃ is

    y' = D + q^{1+η²} (y − D) + σ̃' √(1 − q^{2η²}) z.

It is stable for any step count and exact for Gaussian data up to the frozen D; η = 1 is the DDPM posterior step
(fixed_small variance) and η = 0 the DDIM step on the same grid, so ``ddpm`` and ``ddim`` are its end points.
Euler–Maruyama takes this step from zero SNR too (t_i ≥ t_end of a zero-terminal-SNR schedule), where f and g²
diverge: their capped values threw the sample to ~450× its scale there (η = 0.5 on the rectified flow: output std
4.4 for data std 0.2 at 10 steps, 0.18 now).

``eta`` (default 1.0) has the name of DDIM pipelines' ``eta`` argument: a pipeline's value is used unless the
user fixed ``eta`` in ``sampler_options`` (:meth:`Sampler.eta_value`). DDIMPipeline passes ``eta=0.0`` by
default, which turns this sampler into Euler on the PF-ODE in t.
"""

from __future__ import annotations

import math

import torch

from unisde._tensor import scaled
from unisde.core.kernels import lincomb, reverse_sde_increments, zero_terminal_snr
from unisde.samplers.base import Option, Sampler, non_negative


class SDESampler(Sampler):
    name = "sde"
    description = "Euler–Maruyama on the reverse-SDE family dx = [f x − (1+η²)/2 g² ∇log p] dt + η g dw̄"
    default_grid = "uniform_t"
    stochastic = True
    options = {
        "eta": Option(1.0, (float,), "stochasticity η ≥ 0 (1: reverse SDE, 0: probability-flow ODE)", non_negative),
        "method": Option(
            "euler_maruyama",
            (str,),
            "euler_maruyama (in t) or exponential (exact linear part, x̂0 frozen per step: stable at few steps)",
            choices=("euler_maruyama", "exponential"),
        ),
        "fixed_dt": Option(
            False,
            (bool,),
            "Euler–Maruyama with Δ = 1/n for each of the n steps whatever the grid's spacing, every step one (no "
            "final denoising): diffusers' ScoreSdeVpScheduler, whose step_pred takes dt = −1/n between evaluation "
            "times linspace(1, ε, n) that lie (1 − ε)/(n − 1) apart",
        ),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        if float(sigma[-2]) <= 0:
            raise ValueError(
                f"sampler 'sde' needs positive noise levels; the grid's last evaluation time t={self.grid[-2]:.6g} "
                "has σ = 0"
            )
        # Euler–Maruyama: f Δ, g² Δ/σ² (multiplies s D − x) and g √Δ at each t_i
        fixed = self.opts["fixed_dt"]
        if fixed and self.opts["method"] != "euler_maruyama":
            raise ValueError("sampler 'sde': fixed_dt=True applies to method='euler_maruyama' only")
        dt = torch.full_like(grid[:-1], 1.0 / (grid.numel() - 1)) if fixed else None
        f_dt, g2_dt_var, g_sqrt_dt = reverse_sde_increments(self.schedule, grid, sigma, dt)
        self.f_dt, self.g2_dt_var, self.g_sqrt_dt = self.floats(f_dt), self.floats(g2_dt_var), self.floats(g_sqrt_dt)
        self.s_t = self.floats(s[:-1])
        self.s_end = float(s[-1])
        self.final_denoise = float(sigma[-1]) == 0.0 and not fixed
        # exponential method: log q = log(σ̃'/σ̃) (−inf into σ' = 0), s'/s, s' and σ' per step
        vp_sigma = sigma / s
        self.log_q = self.floats((vp_sigma[1:] / vp_sigma[:-1]).log())
        self.s_ratio, self.s_n, self.sigma_n = self.floats(s[1:] / s[:-1]), self.floats(s[1:]), self.floats(sigma[1:])
        # Euler–Maruyama has no step from zero SNR (t_i ≥ t_end of a zero-terminal-SNR schedule, where f and g²
        # diverge and their capped values throw the sample to ~450× its scale): those steps are exponential ones
        zero_snr = zero_terminal_snr(self.schedule)
        self.exact_step = [zero_snr and t >= self.schedule.t_end for t in self.grid[:-1]]
        return grid[:-1]

    def loop(self, x, start=0):
        exponential = self.opts["method"] == "exponential"
        n = len(self.s_t)
        for i in range(start, n):
            x, denoised = yield x
            if i == n - 1 and self.final_denoise:  # into σ = 0 the score is singular: return x̂0 = D
                return scaled(denoised, self.s_end) if self.s_end != 1.0 else denoised
            eta = self.eta_value()
            if exponential or self.exact_step[i]:
                x = self._exponential_step(i, x, denoised, eta)
                continue
            # x' = x − [f x − (1 + η²)/2 · g² (s D − x)/σ²] Δ + η g √Δ z
            w = 0.5 * (1.0 + eta * eta) * self.g2_dt_var[i]
            x_next = scaled(x, 1.0 - self.f_dt[i] - w) + scaled(denoised, w * self.s_t[i])
            if eta > 0:  # also on a last step to σ > 0 (a grid ending early): the target there is p_{t_end}
                x_next = x_next + scaled(self.noise_like(x), eta * self.g_sqrt_dt[i])
            x = x_next
        return x

    def _exponential_step(self, i, x, denoised, eta):
        """x' = (s'/s) r x + s' (1 − r) D + σ' √(1 − q^{2η²}) z with r = q^{1+η²} (module docstring)."""
        log_q = self.log_q[i]
        r = math.exp((1.0 + eta * eta) * log_q) if log_q != -math.inf else 0.0
        x_next = lincomb(x, self.s_ratio[i] * r, denoised, self.s_n[i] * (1.0 - r))
        if eta > 0 and self.sigma_n[i] > 0:
            std = self.sigma_n[i] * math.sqrt(-math.expm1(2.0 * eta * eta * log_q))
            x_next.add_(self.noise_like(x), alpha=std)
        return x_next
