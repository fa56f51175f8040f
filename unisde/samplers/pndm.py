r"""``pndm``: pseudo linear multistep (PLMS; Liu et al. 2022 [PNDM], arXiv:2202.09778) — Adams–Bashforth on the
noise estimate ε̂ with DDIM's step as the transfer, for any schedule.

DDIM's deterministic step (:mod:`unisde.samplers.ddim`, η = 0) carries x from t to t' given an ε̂ — the
transfer part φ of Liu et al. 2022, eq. 9 [PNDM]:

    φ(x, ε̂; t → t') = (s_{t'}/s_t) x + (σ_{t'} − s_{t'} σ_t/s_t) ε̂      (x̂0 = (x − σ_t ε̂)/s_t, then s_{t'} x̂0 + σ_{t'} ε̂).

PLMS replaces ε̂ by the Adams–Bashforth combination of the last evaluations, with the constant-step weights
(1), (3, −1)/2, (23, −16, 5)/12, (55, −59, 37, −9)/24 (Liu et al. 2022, eq. 12 [PNDM]). Its warm-up is diffusers' PNDMScheduler with
``skip_prk_steps=True`` (the Stable Diffusion setting): the first step is taken twice — a DDIM step from t_0 to
t_1, a model call there, and the step from t_0 again with the average of the two ε̂ (Heun's method in the DDIM
transfer) — so t_1 appears twice in ``timesteps`` and n steps cost n + 1 model calls. ε̂ = (x − s D)/σ comes
from the denoised estimate, so it runs with every parameterisation; ``UnifiedScheduler.from_config`` of a PNDM
config with ``skip_prk_steps=True`` selects it.

The loop keeps the ε̂ history locally. Entered mid-grid (img2img) at a call k > 0, it has neither the first
sample nor earlier ε̂: it takes DDIM's step from its own evaluation point to the end of call k's step (for k = 1,
which evaluates at t_1 and would redo t_0 → t_1, that leaves x where it is), and Adams–Bashforth builds up again
from there.
"""

from __future__ import annotations

import torch

from unisde.core.kernels import lincomb
from unisde.samplers.base import Sampler

# Adams–Bashforth weights on ε̂_k, ε̂_{k−1}, … for constant steps (Liu et al. 2022, eq. 12 [PNDM])
AB_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class PNDMSampler(Sampler):
    name = "pndm"
    aliases = ("plms",)
    description = "PLMS: 4th-order Adams–Bashforth on ε̂ in DDIM's transfer, diffusers' PNDM (skip_prk_steps)"
    default_grid = "config"
    final_from_config = True  # honours set_alpha_to_one=False (end at index 0), as diffusers' PNDM does
    options: dict = {}

    def prepare(self, grid):
        """Per model call: the transfer φ of the step it takes (from grid point a to b), the same transfer from
        the call's own evaluation point (for a loop entered there), and ε̂ = (x − s D)/σ at that point. Calls 0
        and 1 are the warm-up (both step t_0 → t_1), call j ≥ 2 steps t_{j−1} → t_j."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        s, sigma = self.floats(s), self.floats(sigma)
        n = grid.numel() - 1
        steps = [(0, 1)] + ([(0, 1)] + [(j - 1, j) for j in range(2, n + 1)] if n >= 2 else [])
        evals = [0] + ([1] + list(range(1, n)) if n >= 2 else [])  # grid index of each call's evaluation
        if any(sigma[e] <= 0 for e in evals):
            raise ValueError("sampler 'pndm' needs positive noise levels at every evaluation time")
        self.transfer, self.transfer_here, self.eps_coefs = [], [], []
        for (a, b), e in zip(steps, evals):
            self.transfer.append((s[b] / s[a], sigma[b] - s[b] * sigma[a] / s[a]))
            self.transfer_here.append((s[b] / s[e], sigma[b] - s[b] * sigma[e] / s[e]))
            self.eps_coefs.append((1.0 / sigma[e], -s[e] / sigma[e]))
        return grid[torch.tensor(evals)]

    def loop(self, x, start=0):
        eps_history = []  # ε̂ of the previous steps, newest first (the Adams–Bashforth history of this loop)
        k = start
        if start == 0:  # warm-up (diffusers' skip_prk_steps): Heun's method in the DDIM transfer for t_0 → t_1
            x_first, denoised = yield x
            eps_first = self._eps(0, x_first, denoised)
            x = lincomb(x_first, self.transfer[0][0], eps_first, self.transfer[0][1])  # DDIM predictor
            if len(self.transfer) == 1:
                return x
            x, denoised = yield x  # at t_1
            averaged = (self._eps(1, x, denoised) + eps_first) * 0.5
            x = lincomb(x_first, self.transfer[1][0], averaged, self.transfer[1][1])  # t_0 → t_1 again
            eps_history, k = [eps_first], 2
        elif start < len(self.transfer):  # entered mid-grid: DDIM's step from this call's own point
            x, denoised = yield x
            eps = self._eps(start, x, denoised)
            x = lincomb(x, self.transfer_here[start][0], eps, self.transfer_here[start][1])
            eps_history, k = [eps], start + 1
        for k in range(k, len(self.transfer)):  # PLMS: Adams–Bashforth on ε̂ (Liu et al. 2022, eq. 12), then φ
            x, denoised = yield x
            eps_history = [self._eps(k, x, denoised), *eps_history[:3]]
            weights = AB_WEIGHTS[len(eps_history) - 1]
            combined = eps_history[0] * weights[0]
            for w, e in zip(weights[1:], eps_history[1:]):
                combined = combined.add(e, alpha=w)
            x = lincomb(x, self.transfer[k][0], combined, self.transfer[k][1])
        return x

    def _eps(self, k, x, denoised):
        """ε̂ = (x − s D)/σ at call k's evaluation point."""
        return lincomb(x, self.eps_coefs[k][0], denoised, self.eps_coefs[k][1])
