r"""``heunpp2``: Heun++ (ComfyUI's ``sample_heunpp2``, from the sd-webui-samplers-scheduler extension [HeunPP]) —
Euler steps on the probability-flow ODE whose slope is a weighted mean of the slopes at up to three stages,
run in a view y = x/c, ℓ = σ/c (:func:`unisde.core.kernels.view_coefficients`), for any schedule.

In the view the PF-ODE is dy/dℓ = d(y, ℓ) = (y − D(y; ℓ))/ℓ (Karras et al. 2022, eq. 4 [EDM]). On the grid
ℓ_0 > ℓ_1 > … > ℓ_n, with ℓ_ref the level the loop starts from (ℓ_0 for a full run), step i with Δ = ℓ_{i+1} − ℓ_i
and d_i = d(y_i, ℓ_i) is

* a plain Euler step where it is the last step: y_{i+1} = y_i + Δ d_i (= D_i where ℓ_n = 0);
* Heun-like where it is the next-to-last: the Euler predictor y' = y_i + Δ d_i, d' = d(y', ℓ_{i+1}), and
  y_{i+1} = y_i + Δ (w₁ d_i + w₂ d') with w₂ = ℓ_{i+1}/(2 ℓ_ref), w₁ = 1 − w₂;
* else three stages, the predictor carried on one more grid interval: y' = y_i + Δ d_i, d' = d(y', ℓ_{i+1}),
  y'' = y' + (ℓ_{i+2} − ℓ_{i+1}) d', d'' = d(y'', ℓ_{i+2}), and
  y_{i+1} = y_i + Δ (w₁ d_i + w₂ d' + w₃ d'') with w₂ = ℓ_{i+1}/(3 ℓ_ref), w₃ = ℓ_{i+2}/(3 ℓ_ref), w₁ = 1 − w₂ − w₃.

The weights sum to 1, so each step is consistent, but they do not meet the second-order condition (w₂ = ½ for
Heun's trapezoid): they move from about (⅓, ⅓, ⅓) at the start towards Euler's (1, 0, 0) as ℓ falls, and the method
is first order (tests/test_samplers_seeds_heunpp2_pece.py). How much the extra stages help depends on the view: in
the flow view (τ_0 = 1) the weights stay large and the error on the rectified flow is about half Euler's; in the VE
view of a VP table (σ̃_0 ≈ 14.6, the weights ≈ Euler's once σ̃ ≪ σ̃_0) it is within 3 % of Euler's, at three times
the calls. Model calls in order: t_i, t_{i+1}, t_{i+2} per three-stage step, then
t_{n−2}, t_{n−1} and t_{n−1} — 3n − 3 for n ≥ 2. ``ℓ_ref`` is where the loop starts (ComfyUI's ``sigmas[0]``:
entered mid-grid, as an img2img pipeline enters, the weights are those of a run on the rest of the grid, as
ComfyUI runs a partial denoise on the truncated σ list).

``view`` (``"auto"``: the flow view y = x/(s + σ), τ = σ/(s + σ) on a schedule reaching zero SNR at t = 1, else
the VE view x̃ = x/s, σ̃ = σ/s): ComfyUI runs ``sample_heunpp2`` in σ̃ on ε/v models and in σ = t on flow models,
which are these two views. Its churn options (``s_churn``, default 0 in the menu) are not offered here: ``edm``
has EDM's churn.
"""

from __future__ import annotations

import torch

from unisde.core.kernels import lincomb
from unisde.samplers.base import Sampler, view_option


class HeunPP2Sampler(Sampler):
    name = "heunpp2"
    description = (
        "Heun++ (ComfyUI sample_heunpp2): Euler with the slope a level-weighted mean of up to three stages' slopes"
    )
    default_grid = "karras"
    order = 3  # model calls per step (two on the next-to-last step, one on the last)
    options = {"view": view_option()}

    def prepare(self, grid):
        """Per step i, in model space (x = c y): the Euler predictors x' = a x + b D (to ℓ_{i+1}, and from there to
        ℓ_{i+2} on a three-stage step), and the view's (c, ℓ) at t_i, t_{i+1}, t_{i+2} for the final combination,
        whose weights depend on where the loop starts (:meth:`combination`)."""
        self.grid = self.floats(grid)
        c, level = (self.floats(v) for v in self.view_coefficients(grid))
        n = len(level) - 1
        if any(v <= 0 for v in level[:-1]):
            name = "σ̃" if self.view == "ve" else "τ"
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid {name} = "
                f"{level[:-1]}"
            )
        if any(b >= a for a, b in zip(level, level[1:])):
            # the weights ℓ/(3ℓ_0) are fractions of the starting level only on a falling grid; upwards (inversion)
            # they grow without bound and the sample with them
            raise ValueError(
                f"sampler {self.name!r} steps down from its first noise level (weights ℓ/(3ℓ_0) ≤ 1/3) and cannot run "
                "on an increasing grid (inversion); invert 'heun' or 'euler' instead"
            )
        self.c, self.level = c, level
        times, self.step_starts, self.stages, self.counts = [], {}, [], []
        for i in range(n):
            self.step_starts[len(times)] = i
            count = 1 if i == n - 1 else 2 if i == n - 2 else 3  # model calls of step i
            times.extend(self.grid[i : i + count])
            self.counts.append(count)
            # Euler from ℓ_j to ℓ_{j+1} in the view, y' = (ℓ_{j+1}/ℓ_j) y + (1 − ℓ_{j+1}/ℓ_j) D, times c_{j+1}: the
            # whole last step, else the predictors of stages 2 (and 3)
            self.stages.append(
                [
                    (c[j + 1] * level[j + 1] / (level[j] * c[j]), c[j + 1] * (1.0 - level[j + 1] / level[j]))
                    for j in range(i, i + max(count - 1, 1))
                ]
            )
        return torch.tensor(times, dtype=torch.float64)

    def combination(self, i: int, ref: float) -> list[tuple[float, float]]:
        """(x weight, D weight) per stage of step i's result x_{i+1} = c_{i+1}(y_i + Δ Σ_k w_k (y_k − D_k)/ℓ_k),
        y_k = x_k/c_k, with the weights w_k of ``ref`` = ℓ_ref (module docstring)."""
        stages = self.counts[i]
        levels = self.level[i : i + stages]
        scales = self.c[i : i + stages]
        w = [lv / (stages * ref) for lv in levels[1:]]
        w = [1.0 - sum(w), *w]
        out_scale, delta = self.c[i + 1], self.level[i + 1] - self.level[i]
        terms = [
            (out_scale * delta * wk / (lk * ck), -out_scale * delta * wk / lk) for wk, lk, ck in zip(w, levels, scales)
        ]
        terms[0] = (terms[0][0] + out_scale / scales[0], terms[0][1])  # the y_i of y_i + Δ d̄
        return terms

    def loop(self, x, start=0):
        first = self.entry_step(start)
        ref = self.level[first]
        for i in range(first, len(self.stages)):
            x, denoised = yield x  # D_i at ℓ_i
            euler = self.stages[i]
            if self.counts[i] == 1:  # the last step: Euler (x = c_n D where ℓ_n = 0)
                a, b = euler[0]
                x = denoised * b if a == 0.0 else lincomb(x, a, denoised, b)
                continue
            samples, denoised_all = [x], [denoised]
            for a, b in euler:  # Euler predictors to ℓ_{i+1} (and on to ℓ_{i+2})
                x_k, d_k = yield lincomb(samples[-1], a, denoised_all[-1], b)
                samples.append(x_k)
                denoised_all.append(d_k)
            terms = self.combination(i, ref)
            (a0, b0), rest = terms[0], terms[1:]
            x = lincomb(samples[0], a0, denoised_all[0], b0)
            for (a, b), x_k, d_k in zip(rest, samples[1:], denoised_all[1:]):
                x.add_(x_k, alpha=a).add_(d_k, alpha=b)
        return x
