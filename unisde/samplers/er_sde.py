r"""``er_sde``: the ER-SDE-Solver (Cui et al. 2023 [ERSDE]), ComfyUI's ``sample_er_sde`` — stage-1 to stage-3
solvers of the extended reverse-time SDE in data prediction, for any schedule.

In the VE view (λ = σ̃ = σ/s, [ERSDE]'s λ_t = σ_t/α_t) the extended reverse-time SDEs form a family indexed by a
noise-scale function φ(λ): their solution from λ_s down to λ_t < λ_s is ([ERSDE], the "exact solution" of the
ER SDE in data prediction, and its Taylor expansion in λ about λ_s)

    x̃_t = r x̃_s + φ(λ_t) ∫_{λ_t}^{λ_s} φ′(λ)/φ(λ)² D(λ) dλ + √(λ_t² − λ_s² r²) z,        r = φ(λ_t)/φ(λ_s).

D held constant gives stage 1, x̃_t = r x̃_s + (1 − r) D_s (+ the noise); its first and second Taylor terms add

    c₂ D′ + c₃ D″,     c₂ = ∫_{λ_t}^{λ_s} (φ(λ_t)/φ(λ) − 1) dλ,     c₃ = ∫_{λ_t}^{λ_s} (λ − λ_s)(φ(λ_t)/φ(λ) − 1) dλ

(after an integration by parts, [ERSDE]'s (λ_t − λ_s) + φ(λ_t) ∫ dλ/φ and (λ_t − λ_s)²/2 + φ(λ_t) ∫ (λ − λ_s)/φ dλ),
with the derivatives from the past evaluations as ComfyUI and the authors' code take them:
D′ ≈ d_i = (D_i − D_{i−1})/(λ_i − λ_{i−1}) and D″ ≈ 2 (d_i − d_{i−1})/(λ_i − λ_{i−2}). Stage p is used once p
evaluations exist (``max_stage`` caps it; entered mid-grid the loop warms up again from stage 1). A step to σ̃ = 0
returns x̂0 (φ(0) = 0: r = 0, no noise). The backward difference is off by Δλ D″/2, an error stage 3 does not
cancel: on the exact Gaussian PF-ODE (``ode``) stages 1, 2, 3 measure orders 1, 2, 2 (stage 3 with a smaller
error constant; tests/test_samplers_res_er_restart.py).

The noise-scale functions (``noise_scaler``): ``default`` φ(λ) = λ (e^{λ^0.3} + 10) (ComfyUI's default, the
authors' "SDE_5" [ERSDE]); ``ode`` φ(λ) = λ, for which r = λ_t/λ_s and the noise vanishes exactly: the
probability-flow ODE solved by the same stages (its deterministic limit); ``sde`` φ(λ) = λ², the reverse-time SDE
([SDE] eq. 6), whose stage 1 is the ancestral (DDPM posterior) step. φ(λ)/λ must be non-decreasing (noise variance
≥ 0), which all three are. ``s_noise`` scales the drawn noise only: s_noise = 0 with a stochastic φ is a
deterministic but biased sampler (the SDE's drift without its noise), not the ODE.

Where unisde differs from ComfyUI: c₂ and c₃ are computed to float64 accuracy by 48-point Gauss–Legendre
quadrature in log λ (the integrands λ_t ψ_t/ψ(λ) − λ with ψ = φ/λ are smooth there), not by ComfyUI's 200-point
left Riemann sum of the integration-by-parts form. That sum's error, ≈ h²/400 for a step h = λ_s − λ_t after the
factor φ(λ_t), is of c₂'s own order h²: c₂ comes out ≈ 0.5 % too small whatever the step, and c₃ (order h³) is off
by a relative ~h⁻¹/400 (−76 % at h = 0.02 λ) — error terms that shrink only like h, i.e. a first-order floor with a
small constant under the solver's second order.

Samples live in the model's own space, x = s x̃ ([ERSDE]'s VP form with α = s): x_t = (σ_t/σ_s)(ψ_t/ψ_s) x_s
+ s_t[(1 − r) D_s + c₂ D′ + c₃ D″] + σ_t √(1 − (ψ_t/ψ_s)²) S_noise z, exact also at s(1) = 0 (λ_s = ∞:
ψ_t/ψ_s = 0 for ``default`` and ``sde``, 1 for ``ode``). One model call per step. ComfyUI too takes λ = σ̃ (from the
half log-SNR) on flow models, so the two agree there up to the quadrature above (and ComfyUI's first level, moved
just off t = 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unisde.core.kernels import lincomb
from unisde.samplers.base import Option, Sampler, non_negative

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(48)


def _log_psi_default(lam: torch.Tensor) -> torch.Tensor:
    """log ψ(λ) for φ(λ) = λ (e^{λ^0.3} + 10): λ^0.3 + log(1 + 10 e^{−λ^0.3}), finite for any λ ≤ ∞ (no overflow)."""
    p = lam**0.3
    return p + torch.log1p(10.0 * torch.exp(-p))


NOISE_SCALERS = {
    # name: log ψ(λ) with ψ(λ) = φ(λ)/λ, the noise-scale function divided by λ
    "default": _log_psi_default,
    "ode": torch.zeros_like,
    "sde": torch.log,
}


def er_sde_taylor_coefficients(log_psi, lam_t: float, lam_s: float) -> tuple[float, float]:
    """(c₂, c₃) of a step from λ_s down to λ_t > 0 (module docstring): the integrals over λ ∈ [λ_t, λ_s] of
    (φ(λ_t)/φ(λ) − 1) and (λ − λ_s)(φ(λ_t)/φ(λ) − 1), by Gauss–Legendre quadrature in u = log λ (dλ = λ du)."""
    lo, hi = math.log(lam_t), math.log(lam_s)
    u = torch.from_numpy(0.5 * (hi - lo) * _GAUSS_NODES + 0.5 * (hi + lo))
    lam = torch.exp(u)
    t = torch.tensor([lam_t], dtype=torch.float64)
    inner = lam_t * torch.exp(log_psi(t) - log_psi(lam)) - lam  # (φ(λ_t)/φ(λ) − 1) λ
    w = torch.from_numpy(0.5 * (hi - lo) * _GAUSS_WEIGHTS)
    return float((w * inner).sum()), float((w * (lam - lam_s) * inner).sum())


def _max_stage(value):
    return None if value in (1, 2, 3) else "must be 1, 2 or 3"


class ERSDESampler(Sampler):
    name = "er_sde"
    description = "ER-SDE-Solver (ComfyUI sample_er_sde): stages 1–3 of the extended reverse-time SDE in σ̃"
    default_grid = "karras"
    options = {
        "max_stage": Option(
            3, (int,), "highest stage 1, 2 or 3 (Taylor terms in D′, D″ from past evaluations)", _max_stage
        ),
        "noise_scaler": Option(
            "default",
            (str,),
            "noise-scale function φ(λ): default λ(e^{λ^0.3} + 10) (ComfyUI), ode λ (no noise: the PF-ODE), "
            "sde λ² (the reverse-time SDE)",
            choices=tuple(NOISE_SCALERS),
        ),
        "s_noise": Option(
            1.0, (float,), "scale S_noise of the drawn noise (the deterministic part is unchanged)", non_negative
        ),
    }

    @property
    def stochastic(self):
        return self.opts["noise_scaler"] != "ode" and self.opts["s_noise"] > 0

    def prepare(self, grid):
        """Per step i and stage p ≤ min(i + 1, ``max_stage``): the weights (a, (w_i, w_{i−1}, w_{i−2})) of
        x_{i+1} = a x_i + Σ_j w_j D_j (the divided differences folded in), and the noise scale."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid, exact=True)  # data-prediction form: finite at s = 0
        lam = sigma / s  # σ̃, +∞ where s = 0
        log_psi = NOISE_SCALERS[self.opts["noise_scaler"]]
        delta = self.floats(log_psi(lam[1:]) - log_psi(lam[:-1]))  # log(ψ_t/ψ_s) ≤ 0
        lam_f, s_f, sig_f = self.floats(lam), self.floats(s), self.floats(sigma)
        n = grid.numel() - 1
        if any(v <= 0 for v in lam_f[:-1]):
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid σ̃ = {lam_f[:-1]}"
            )
        self.steps = []
        for i in range(n):
            st = s_f[i + 1]
            if lam_f[i + 1] == 0.0:  # φ(0) = 0: r = 0, no noise, x = s_t D
                self.steps.append(([(0.0, (st,))] * min(i + 1, self.opts["max_stage"]), 0.0))
                continue
            q = math.exp(delta[i])  # ψ_t/ψ_s
            r = lam_f[i + 1] / lam_f[i] * q  # 0 at λ_s = ∞
            a = sig_f[i + 1] / sig_f[i] * q  # (s_t/s_s) r, finite at s_s = 0
            tables = [(a, (st * (1.0 - r),))]
            if i >= 1 and self.opts["max_stage"] >= 2:
                c2, c3 = er_sde_taylor_coefficients(log_psi, lam_f[i + 1], lam_f[i])
                g1 = 1.0 / (lam_f[i] - lam_f[i - 1])  # d_i = g1 (D_i − D_{i−1}); −0 where λ_{i−1} = ∞
                tables.append((a, (st * (1.0 - r + c2 * g1), -st * c2 * g1)))
                if i >= 2 and self.opts["max_stage"] >= 3:
                    g0 = 1.0 / (lam_f[i - 1] - lam_f[i - 2])  # d_{i−1} = g0 (D_{i−1} − D_{i−2})
                    e = 2.0 / (lam_f[i] - lam_f[i - 2])  # D″ ≈ e (d_i − d_{i−1})
                    w0, w1, w2 = tables[-1][1] + (0.0,)
                    k = st * c3 * e
                    tables.append((a, (w0 + k * g1, w1 - k * (g1 + g0), w2 + k * g0)))
            std = sig_f[i + 1] * math.sqrt(-math.expm1(2.0 * delta[i])) * self.opts["s_noise"]
            self.steps.append((tables, std))
        return grid[:-1]

    def loop(self, x, start=0):
        history = []  # D_i, D_{i−1}, D_{i−2} (newest first): this loop's evaluations
        for i in range(start, len(self.steps)):
            x, denoised = yield x
            history = [denoised, *history[:2]]
            tables, std = self.steps[i]
            a, weights = tables[min(len(history), len(tables)) - 1]
            x_next = denoised * weights[0] if a == 0.0 else lincomb(x, a, denoised, weights[0])
            for w, d in zip(weights[1:], history[1:]):
                if w != 0.0:
                    x_next = x_next.add_(d, alpha=w)
            if std > 0:
                x_next = x_next.add_(self.noise_like(x_next), alpha=std)
            x = x_next
        return x
