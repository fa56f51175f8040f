r"""``pndm``: pseudo linear multistep (PLMS, Liu et al. 2022, arXiv:2202.09778) — Adams–Bashforth on the
noise estimate ε̂ with DDIM's step as the transfer, for any schedule.

DDIM's deterministic step (:mod:`unisde.samplers.ddim`, η = 0) carries x from t to t' given an ε̂:

    φ(x, ε̂; t → t') = (s_{t'}/s_t) x + (σ_{t'} − s_{t'} σ_t/s_t) ε̂      (x̂0 = (x − σ_t ε̂)/s_t, then s_{t'} x̂0 + σ_{t'} ε̂).

PLMS replaces ε̂ by the Adams–Bashforth combination of the last evaluations, with the constant-step weights
(1), (3, −1)/2, (23, −16, 5)/12, (55, −59, 37, −9)/24 (PNDM eq. 12). Its warm-up is diffusers' PNDMScheduler with
``skip_prk_steps=True`` (the Stable Diffusion setting): the first step is taken twice — a DDIM step from t_0 to
t_1, a model call there, and the step from t_0 again with the average of the two ε̂ (Heun's method in the DDIM
transfer) — so t_1 appears twice in ``timesteps`` and n steps cost n + 1 model calls. ε̂ = (x − s D)/σ comes
from the denoised estimate, so it runs with every parameterisation; ``UnifiedScheduler.from_config`` of a PNDM
config with ``skip_prk_steps=True`` selects it.
"""

from __future__ import annotations

import torch

from unisde.samplers.base import Sampler, grid_coefficients, lincomb

# Adams–Bashforth weights on ε̂_k, ε̂_{k−1}, … for constant steps (PNDM eq. 12)
AB_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class PNDMSampler(Sampler):
    name = "pndm"
    aliases = ("plms",)
    description = "PLMS: 4th-order Adams–Bashforth on ε̂ in DDIM's transfer, diffusers' PNDM (skip_prk_steps)"
    default_grid = "config"
    final_from_config = True  # honours set_alpha_to_one=False (end at index 0), as diffusers' PNDM does
    options: dict = {}

    def prepare(self, grid):
        """Per model call: the step it takes (from grid point a to b), its transfer coefficients and its role
        (0: DDIM predictor of the first step, 1: that step redone with the averaged ε̂, ≥ 2: Adams–Bashforth)."""
        self.grid = self.floats(grid)
        s, sigma = grid_coefficients(self, grid)
        s, sigma = self.floats(s), self.floats(sigma)
        n = grid.numel() - 1
        steps = [(0, 1)] + ([(0, 1)] + [(j - 1, j) for j in range(2, n + 1)] if n >= 2 else [])
        evals = [0] + ([1] + list(range(1, n)) if n >= 2 else [])  # grid index of each call's evaluation
        if any(sigma[e] <= 0 for e in evals):
            raise ValueError("sampler 'pndm' needs positive noise levels at every evaluation time")
        self.calls = []
        for (a, b), e in zip(steps, evals):
            self.calls.append(dict(
                x_coef=s[b] / s[a], eps_coef=sigma[b] - s[b] * sigma[a] / s[a],
                # DDIM from the call's own evaluation point (differs from a only for call 1, whose point is b)
                x_coef_here=s[b] / s[e], eps_coef_here=sigma[b] - s[b] * sigma[e] / s[e],
                inv_sigma=1.0 / sigma[e], s_over_sigma=s[e] / sigma[e]))
        self._eps: list[torch.Tensor] = []
        self._first_sample = None
        self._first_eps = None
        self._last_call = -1
        return grid[torch.tensor(evals)]

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        op = self.calls[k]
        restart = k != self._last_call + 1  # entered mid-grid (img2img): no history before this call
        self._last_call = k
        eps = lincomb(sample, op["inv_sigma"], denoised, -op["s_over_sigma"])
        if restart and k > 0:  # a DDIM step from here, then Adams–Bashforth builds up again
            self._eps, self._first_sample = [eps], None
            return lincomb(sample, op["x_coef_here"], eps, op["eps_coef_here"])
        if k == 0:
            self._first_sample, self._first_eps = sample, eps
            return lincomb(sample, op["x_coef"], eps, op["eps_coef"])
        if k == 1 and self._first_sample is not None:
            averaged = (eps + self._first_eps) * 0.5
            self._eps = [self._first_eps]
            return lincomb(self._first_sample, op["x_coef"], averaged, op["eps_coef"])
        self._eps = [eps, *self._eps[:3]]
        weights = AB_WEIGHTS[len(self._eps) - 1]
        combined = self._eps[0] * weights[0]
        for w, e in zip(weights[1:], self._eps[1:]):
            combined = combined.add(e, alpha=w)
        return lincomb(sample, op["x_coef"], combined, op["eps_coef"])
