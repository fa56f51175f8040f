r"""``ncsn``: annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1, with NCSNv2's step-size rule).

Any schedule is sampled through its VE view x̃ = x/s, σ̃ = σ/s (Karras et al. 2022, eq. 4 with s = 1), where its
forward process is SMLD's x̃ = x0 + σ̃ ε (Song et al. 2021, eq. 8). The noise levels σ̃_1 > … > σ̃_L are
those of the time grid's evaluation times (default grid ``uniform_lambda``: geometric in σ̃, as NCSN's levels).
At level i the sampler takes T = ``n_steps_each`` Langevin steps (Song & Ermon 2019, Alg. 1, written as in
Song & Ermon 2020, Alg. 1: drift α_i, noise √(2 α_i))

    x̃ ← x̃ + α_i ∇log p(x̃; σ̃_i) + √(2 α_i) z,     α_i = ε σ̃_i² / σ̃_L²,
    ∇log p(x̃; σ̃) = (D(x̃; σ̃) − x̃) / σ̃²                  (Tweedie's formula; Karras et al. 2022, eq. 3)

each one a model evaluation, so NFE = T · L (+1 with the final denoising step) and the scheduler's
``num_inference_steps`` is the number of levels L. ``step_lr`` is ε in the VE view's units (squared data
units). NCSNv2 (Song & Ermon 2020, technique 4) chooses ε so that, for data concentrated at a point, the
variance of the iterate after the T steps of a level is as close as possible to that level's σ̃_i²: with
a = ε/σ̃_L² and γ the ratio of consecutive levels,

    r(a) = (1 − a)^{2T} γ² + (1 − (1 − a)^{2T}) / (1 − a/2)   (≥ 1),   ε = σ̃_L² · argmin_{0<a<1} r(a).

The default ``step_lr=None`` applies this rule to the actual grid (γ = geometric-mean ratio of its levels,
T = ``n_steps_each``), so the step adapts to the schedule's σ̃_L and to the number of levels; for NCSNv2's
CIFAR-10 setting (L = 232 levels from 50 to 0.01, T = 5) it gives ε/σ_L² = 0.0618, i.e. their published
ε = 6.2e-6. A float fixes ε instead (e.g. 6.2e-6 to copy NCSNv2 on a σ_L = 0.01 grid).

``denoise=True`` (NCSNv2's final step) evaluates the model once more at the smallest level and returns
x̃ + σ̃_L² ∇log p = D(x̃; σ̃_L) (Tweedie's formula), removing the residual noise of level σ̃_L; with
``denoise=False`` the last Langevin sample (noise level σ̃_L) is returned. The sample handed back between
evaluations is x = s(t) x̃ at the next evaluation time, and the final one is s(t_end) x̃ (x̃ itself at t = 0).
"""

from __future__ import annotations

import math

import torch

from unisde.samplers.base import Option, Sampler


def technique4_ratio(gamma: float, n_steps_each: int) -> float:
    """a = ε/σ̃_L² minimising NCSNv2's variance ratio r(a) (module docstring) for level ratio γ ≥ 1 and T steps."""

    def r(a):
        c = (1.0 - a) ** (2 * n_steps_each)
        return c * gamma * gamma + (1.0 - c) / (1.0 - 0.5 * a)

    # r is smooth on (0, 1); a coarse scan brackets the minimum and golden-section search refines it.
    grid = [i / 1000 for i in range(1, 1000)]
    best = min(range(len(grid)), key=lambda i: r(grid[i]))
    lo, hi = grid[max(best - 1, 0)] if best > 0 else 1e-9, grid[min(best + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if r(m1) <= r(m2):
            hi = m2
        else:
            lo = m1
    return 0.5 * (lo + hi)


def _positive_int(value):
    return None if value >= 1 else "must be >= 1"


def _optional_positive(value):
    return None if value is None or value > 0 else "must be > 0 (or None for the NCSNv2 ratio)"


class NCSNSampler(Sampler):
    name = "ncsn"
    description = "annealed Langevin dynamics (NCSN/NCSNv2) in the VE view, T steps per noise level"
    default_grid = "uniform_lambda"
    stochastic = True
    options = {
        "n_steps_each": Option(
            5, (int,), "Langevin steps T per noise level (each one model evaluation)", _positive_int
        ),
        "step_lr": Option(
            None,
            (float, type(None)),
            "ε of α_i = ε σ̃_i²/σ̃_L² (None: NCSNv2's technique-4 rule on this grid)",
            _optional_positive,
        ),
        "denoise": Option(True, (bool,), "finish with x̂0 = D(x̃; σ̃_L), one more model evaluation"),
    }

    @property
    def order(self):  # model evaluations per noise level, so pipelines' `timesteps[t_start * order:]` stays aligned
        return int(self.opts["n_steps_each"])

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        levels = grid.numel() - 1
        if float(sigma[levels - 1]) <= 0:
            raise ValueError(
                f"sampler 'ncsn' needs positive noise levels; the grid's last evaluation time "
                f"t={self.grid[levels - 1]:.6g} has σ = 0"
            )
        ve = sigma[:-1] / s[:-1]
        ve_min = float(ve[-1])
        n_each = int(self.opts["n_steps_each"])
        if self.opts["step_lr"] is not None:
            eps = float(self.opts["step_lr"])
            if eps >= 2.0 * ve_min**2:
                # x̃ ← (1 − a) x̃ + … with a = α_i/σ̃_i² = ε/σ̃_L² wherever σ̃_i dwarfs the data: |1 − a| ≥ 1 diverges
                raise ValueError(
                    f"sampler 'ncsn': step_lr={eps:g} diverges on this grid: the Langevin step "
                    f"α_i = ε σ̃_i²/σ̃_L² contracts only for ε < 2 σ̃_L² = {2.0 * ve_min**2:.4g} (σ̃_L = "
                    f"{ve_min:.4g}, the grid's smallest VE noise level); NCSNv2's rule (step_lr=None) "
                    "picks about 0.06 σ̃_L²"
                )
        else:
            gamma = (float(ve[0]) / ve_min) ** (1.0 / (levels - 1)) if levels > 1 else 1.0
            eps = technique4_ratio(gamma, n_each) * ve_min**2
        alpha = eps * ve**2 / ve_min**2
        s_list, ve_list, alpha_list = self.floats(s), self.floats(ve), self.floats(alpha)
        self.s_end = s_list[-1]
        # per level i: 1/s_i, α_i/σ̃_i² (x̃ + α (D − x̃)/σ̃² = (1 − α/σ̃²) x̃ + (α/σ̃²) D; < 1 for α_i = γ σ̃_i², γ < 1),
        # the noise scale √(2 α_i), and the scale of the sample handed on after the level's last step: the next
        # level's s, or at the last level its own (the final denoising evaluation) or s(t_end)
        self.inv_s = [1.0 / s_list[i] for i in range(levels)]
        self.ratio = [alpha_list[i] / ve_list[i] ** 2 for i in range(levels)]
        self.noise_std = [math.sqrt(2.0 * alpha_list[i]) for i in range(levels)]
        self.s = s_list[:levels]
        self.s_after = s_list[1:levels] + [s_list[levels - 1] if self.opts["denoise"] else self.s_end]
        times = [self.grid[i] for i in range(levels) for _ in range(n_each)]
        self.step_starts = {i * n_each: i for i in range(levels)}
        if self.opts["denoise"]:
            self.step_starts[len(times)] = levels  # entering at the final denoising evaluation
            times.append(self.grid[levels - 1])
        return torch.tensor(times, dtype=torch.float64)

    def loop(self, x, start=0):
        n_each = int(self.opts["n_steps_each"])
        for i in range(self.entry_step(start), len(self.s)):  # noise levels σ̃_1 > … > σ̃_L
            for j in range(n_each):  # T Langevin steps at level i
                x, denoised = yield x
                x_ve = x * self.inv_s[i]
                x_ve = x_ve + (denoised - x_ve) * self.ratio[i] + self.noise_like(x) * self.noise_std[i]
                x = x_ve * (self.s[i] if j < n_each - 1 else self.s_after[i])  # model space at the next evaluation
        if self.opts["denoise"]:  # Tweedie's estimate x̂0 = D(x̃; σ̃_L) at the smallest level
            x, denoised = yield x
            return denoised * self.s_end if self.s_end != 1.0 else denoised
        return x
