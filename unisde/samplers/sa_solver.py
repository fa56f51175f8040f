r"""``sa_solver``: SA-Solver (Xue et al. 2023 [SASolver], arXiv:2309.05019) — stochastic Adams predictor-corrector
multistep in data prediction, written against s(t), σ(t) and the denoised estimate D, so it runs on every schedule.

With λ = log(s/σ) (the half log-SNR of :mod:`unisde_dpmsolver`) and a stochasticity τ ≥ 0, the reverse SDE family
dx = [f x − (1 + τ²)/2 · g² ∇log p] dt + τ g dw̄ (τ = 0: the PF-ODE, τ = 1: the reverse SDE) has, from λ_s to
λ_t = λ_s + h, the exact solution (variation of constants in data prediction; Xue et al. 2023, §4 [SASolver])

    x_t = e^{−τ²h} (σ_t/σ_s) x_s + (1 + τ²) σ_t e^{−τ²λ_t} ∫_{λ_s}^{λ_t} e^{(1+τ²)λ} D(λ) dλ + σ_t √(1 − e^{−2τ²h}) ξ.

SA-Solver replaces D by the Lagrange polynomial in λ through earlier evaluations and integrates exactly: with
c = 1 + τ², u = λ − λ_t and ℓ_i the Lagrange basis through the nodes u_j = λ_j − λ_t, D_i weighs

    c · s_t · ∫_{−h}^{0} e^{cu} ℓ_i(u) du                       (σ_t e^{−τ²λ_t} e^{cλ_t} = σ_t e^{λ_t} = s_t).

* the predictor (stochastic Adams–Bashforth, order p) uses D_k, D_{k−1}, …, D_{k−p+1} for the step k → k + 1
  and draws the step's noise ξ_k;
* the corrector (stochastic Adams–Moulton, order q) recomputes the same step when D_{k+1} — evaluated at the
  *predicted* x_{k+1}, so it costs no evaluation — is known, through D_{k+1}, D_k, …, D_{k−q+2}, with the same
  ξ_k; the corrected sample replaces x_{k+1} before the next predictor (as UniPC's corrector).

These are the exact integrals of [SASolver] eqs. 15/18 (ComfyUI's default). With ``simple_order_2`` (diffusers'
SASolverScheduler, whose conversion sets it; ComfyUI's ``simple_order_2``) both add at order 2
(h²/2 − ∫_{−h}^0 e^{cu}(u + h) du)/Δ · c s_t to the newest weight and subtract it from the other (Δ the distance in
λ of the two nodes): the slope term's exponential weight replaced by the plain h²/2, an O(h³) change that keeps the
order ("similar to UniPC", for few steps) but grows like h²/Δ where the exact term stays below h/(cΔ), so that a
step long in λ against the spacing of its history extrapolates D with weights of tens (measured below).

With τ = 0 the predictor-corrector pair converges at order min(p + 1, q) on the exact Gaussian PF-ODE (measured
in tests/test_converters_more_classes.py and tests/test_samplers_seeds_heunpp2_pece.py). τ is ``tau`` at the steps
whose start time lies in ``tau_window`` = [t_lo, t_hi] and 0 elsewhere (a piecewise constant τ(t): stochasticity in
the middle of the process only, as the authors sample); diffusers' default ``tau_func`` (τ = 1 for model timesteps
200 … 800 of a 1000-entry table) is ``tau_window=[0.2005, 0.8015]`` — index i sits at t = (i + 1)/N, and the
half-index margins make a rounded
timestep fall on the same side. Each step draws one noise tensor from
the generator, also where τ = 0 (as diffusers does, so the stream stays aligned). Orders ramp up from the start
of the loop (and from wherever an img2img pipeline enters it): the predictor at step k runs at
min(``predictor_order``, k + 1), the corrector of step k at min(``corrector_order``, k + 2); with
``lower_order_final`` both also at most the number of steps left (+1 for the corrector), diffusers' rule, where a
last step to σ = 0 (the clean-data end point) does not count: that step is x = s_end D, with no order, no noise and no
correction after it, so the step before it, into the grid's smallest σ > 0, is the last that extrapolates and runs at
order 1 — as the last step of diffusers' own grids, which end at that σ_min, does (ComfyUI's ``sample_sa_solver``
lowers its predictor so too). That step is the longest in λ: the ``flow_match`` grid's last level shift·1/N sits at
λ ≈ 5–7, the level before it at λ ≈ 1–2. On the rectified flow with Gaussian data of variance 0.25, the exact output
law at 5 and 10 steps (tests/test_samplers_seeds_heunpp2_pece.py) had variance 75 and 20 (PECE 5300 and 114) with
that step counted as not the last and the h²/2 form, 2.1 and 1.7 with the exact weights, and has 0.13 and 0.30 (PECE
0.16 and 0.26) with the step to σ = 0 not counted. A
zero-length last step (λ_n = λ_{n−1}: diffusers' SA-Solver appends its last flow level again,
``final_sigmas_type="repeat_last"``) keeps the sample: its weights and noise vanish; it counts for
``lower_order_final`` and draws its noise, as there.
With ``simple_order_2`` this is diffusers' SASolverScheduler with ``algorithm_type="data_prediction"``, whose
configs convert to it.

``pece=True`` (the ``sa_solver_pece`` preset, ComfyUI's ``sample_sa_solver_pece``; [SASolver]'s
predict–evaluate–correct–evaluate mode): the corrected sample is evaluated again, one more model call per corrected
step, and that D replaces the prediction's D_{k+1} in the history — the next predictor starts from the corrected
sample's own evaluation, and the next corrector interpolates through it. At τ = 0 this is the Adams–Bashforth–Moulton
PECE pair; the corrector of the last step before σ = 0 then matters (its re-evaluation gives the output
x = s_end D), where without PECE it is discarded. Model calls: t_0, then t_k twice for k = 1 … n − 1 (2n − 1). Entered
mid-grid at step k the loop starts afresh, with nothing to correct: one call at t_k, the second of the two listed
(a pipeline entering at ``t_start * order`` lands there).

Where unisde differs from ComfyUI's ``sample_sa_solver[_pece]`` (same family, other defaults and rules): ComfyUI's
orders default to 3 (predictor) and 4 (corrector; unisde takes 1–3), on a grid ending at σ = 0 it lowers the
corrector one step earlier (at evaluation k at most n − 1 − k for the predictor, as unisde, and n − k for the
corrector, where unisde allows n − k + 1), it judges τ's window by the
σ at the step's end (σ_{k+1} between the σ of 20 % and 80 % of the model's range) where unisde takes the step's start
time in ``tau_window``, and it draws noise only where τ > 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unisde._tensor import scaled
from unisde.core.kernels import lincomb
from unisde.samplers.base import Option, Sampler, non_negative


def _order(value):
    return None if value in (1, 2, 3) else "must be 1, 2 or 3"


def _window(value):
    if (
        len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or not value[0] <= value[1]
    ):
        return f"must be [t_lo, t_hi] with finite t_lo <= t_hi, got {list(value)}"
    return None


def exponential_moments(h: float, c: float, count: int) -> list[float]:
    """M_k = ∫_{−h}^{0} e^{cu} u^k du for k = 0 … count − 1 (h ≥ 0, c > 0), float64.

    With H = c h and J_k = ∫_{−H}^{0} e^v v^k dv, M_k = J_k / c^{k+1}; J_0 = 1 − e^{−H} and J_k = −(−H)^k e^{−H} −
    k J_{k−1} (integration by parts) for H ≥ 1, where the recursion is stable; below, where it cancels (J_k ~ H^{k+1}),
    the series J_k = Σ_{m≥0} (−1)^{k+m} H^{k+m+1}/((k + m + 1) m!) is summed to 30 terms (remainder < 1e-30)."""
    H = c * h
    out = []
    if H >= 1.0:
        j = -math.expm1(-H)
        for k in range(count):
            if k > 0:
                j = -((-H) ** k) * math.exp(-H) - k * j
            out.append(j / c ** (k + 1))
        return out
    for k in range(count):
        total, term = 0.0, 1.0  # term = H^m / m!
        for m in range(30):
            if m > 0:
                term *= H / m
            total += (-1) ** (k + m) * term * H ** (k + 1) / (k + m + 1)
        out.append(total / c ** (k + 1))
    return out


def adams_weights(nodes: list[float], h: float, c: float) -> list[float]:
    """∫_{−h}^{0} e^{cu} ℓ_i(u) du for the Lagrange basis ℓ_i through ``nodes`` (u_j = λ_j − λ_t, newest first)."""
    moments = exponential_moments(h, c, len(nodes))
    weights = []
    for i, ui in enumerate(nodes):
        others = [uj for j, uj in enumerate(nodes) if j != i]
        poly = np.poly(others) / np.prod([ui - uj for uj in others]) if others else np.array([1.0])
        # np.poly lists coefficients from the highest power down
        weights.append(float(sum(a * moments[len(poly) - 1 - m] for m, a in enumerate(poly))))
    return weights


class SASolverSampler(Sampler):
    name = "sa_solver"
    aliases = ("sasolver",)
    description = (
        "SA-Solver: stochastic Adams predictor-corrector in data prediction (Xue et al. 2023), diffusers' SASolver"
    )
    default_grid = "linspace_multistep"
    stochastic = True
    # a zero-length last step (λ_{k+1} = λ_k, diffusers' flow σ): the predictor's moments, noise and order-2 shift are
    # 0 and its x weight 1; its corrector, whose nodes would coincide, never runs (no evaluation follows)
    takes_zero_length_end = True
    options = {
        "predictor_order": Option(2, (int,), "stochastic Adams–Bashforth order 1, 2 or 3", _order),
        "corrector_order": Option(2, (int,), "stochastic Adams–Moulton order 1, 2 or 3", _order),
        "tau": Option(1.0, (float,), "τ inside tau_window (0: the PF-ODE; 1: the reverse SDE)", non_negative),
        "tau_window": Option(
            (0.2005, 0.8015),
            (list, tuple),
            "[t_lo, t_hi]: the step start times where τ = tau (0 elsewhere); the default is diffusers' "
            "τ(t) = 1 for timesteps 200 … 800 of a 1000-entry table",
            _window,
        ),
        "lower_order_final": Option(
            True,
            (bool,),
            "orders at most the number of steps left (+1 for the corrector), diffusers' rule; a last step to σ = 0 "
            "(x = s_end D) not counted",
        ),
        "simple_order_2": Option(
            False,
            (bool,),
            "diffusers' order-2 weights: the slope term's exponential weight replaced by h²/2 (its SASolverScheduler, "
            "whose conversion sets it; ComfyUI's simple_order_2); False: the exact integrals of [SASolver] eqs. 15/18",
        ),
        "pece": Option(
            False,
            (bool,),
            "PECE: evaluate the corrected sample again (one more call per corrected step) and use that D from there "
            "on (ComfyUI's sa_solver_pece)",
        ),
    }

    @property
    def order(self):  # diffusers' `order`: model calls per step
        return 2 if self.opts["pece"] else 1

    def prepare(self, grid):
        """Per step k: τ_k, the x weight e^{−τ²h} σ_{k+1}/σ_k, the noise std σ_{k+1} √(1 − e^{−2τ²h}), and for every
        order the step may run at the predictor's D weights; per step k also the corrector's weights for every
        order its correction (at evaluation k + 1) may run at."""
        self.grid = self.floats(grid)
        s, sigma = (self.floats(v) for v in self.grid_coefficients(grid))
        n = len(s) - 1
        o = self.opts
        P, C, few = o["predictor_order"], o["corrector_order"], o["lower_order_final"]
        lo, hi = (float(v) for v in o["tau_window"])
        lam = [math.log(si / gi) if gi > 0 else math.inf for si, gi in zip(s, sigma)]
        # lower_order_final counts the steps that extrapolate: not a last step to σ = 0 (x = s_end D, no order)
        last = n - 1 if sigma[n] == 0.0 else n
        simple = o["simple_order_2"]
        self.x_coef, self.noise_std, self.pred, self.corr = [], [], [], []
        for k in range(n):
            tau = o["tau"] if lo <= self.grid[k] <= hi else 0.0
            c = 1.0 + tau * tau
            if sigma[k + 1] == 0.0:  # to clean data: e^{−h} = 0, x = s_end D (every order's limit is not finite)
                self.x_coef.append(0.0)
                self.noise_std.append(0.0)
                self.pred.append([[s[k + 1]]])
                self.corr.append(None)
                continue
            h = lam[k + 1] - lam[k]
            self.x_coef.append(math.exp(-tau * tau * h) * sigma[k + 1] / sigma[k])
            self.noise_std.append(sigma[k + 1] * math.sqrt(-math.expm1(-2.0 * tau * tau * h)))
            top_p = min(P, last - k, k + 1) if few else min(P, k + 1)  # nodes λ_k … λ_{k−p+1} exist for p ≤ k + 1
            self.pred.append(
                [
                    self._weights([lam[k - j] - lam[k + 1] for j in range(p)], h, c, s[k + 1], simple)
                    for p in range(1, top_p + 1)
                ]
            )
            if h == 0.0:  # the zero-length last step: no evaluation follows it to correct with
                self.corr.append(None)
                continue
            top_c = min(C, last - k + 1, k + 2) if few else min(C, k + 2)
            # the corrector's nodes: λ_{k+1} (its own evaluation), λ_k, λ_{k−1}, …
            self.corr.append(
                [
                    self._weights([lam[k + 1 - j] - lam[k + 1] for j in range(q)], h, c, s[k + 1], simple)
                    for q in range(1, top_c + 1)
                ]
            )
        if not o["pece"]:
            self.step_starts = None  # one call per step
            return grid[:-1]
        # PECE: evaluation k ≥ 1 at the prediction, then at the corrected sample (where step k − 1 has a corrector:
        # all in a run); a fresh loop can start only where nothing is to be corrected: at t_0 or a second call
        times, self.step_starts = [self.grid[0]], {0: 0}
        for k in range(1, n):
            times.extend([self.grid[k]] * (1 if self.corr[k - 1] is None else 2))
            self.step_starts[len(times) - 1] = k
        return torch.tensor(times, dtype=torch.float64)

    @staticmethod
    def _weights(nodes: list[float], h: float, c: float, s_t: float, simple: bool) -> list[float]:
        """D weights c s_t ∫ e^{cu} ℓ_i(u) du (newest node first); ``simple``: diffusers' order-2 modification."""
        weights = [c * s_t * w for w in adams_weights(nodes, h, c)]
        if simple and len(nodes) == 2:
            slope = (h * c - 1.0 + math.exp(-c * h)) / (c * c)  # ∫_{−h}^{0} e^{cu} (u + h) du
            shift = c * s_t * (0.5 * h * h - slope) / (nodes[0] - nodes[1])
            weights = [weights[0] + shift, weights[1] - shift]
        return weights

    def loop(self, x, start=0):
        history = []  # D_k, D_{k−1}, … (newest first) of this loop
        depth = max(self.opts["predictor_order"], self.opts["corrector_order"])
        x_last = noise_last = None
        last_order = 0  # the corrector order of the previous step (0: not correctable)
        for k in range(self.entry_step(start), len(self.pred)):
            x, denoised = yield x
            if x_last is not None and last_order:  # the corrector of step k − 1, with D_k at its prediction x_k
                weights = self.corr[k - 1][last_order - 1]
                x = lincomb(x_last, self.x_coef[k - 1], denoised, weights[0])
                for previous, weight in zip(history, weights[1:]):
                    x.add_(previous, alpha=weight)
                if self.noise_std[k - 1] > 0.0:
                    x.add_(noise_last, alpha=self.noise_std[k - 1])
                if self.opts["pece"]:  # evaluate the corrected x_k: its D_k replaces the prediction's from here on
                    x, denoised = yield x
            history = [denoised, *history[: depth - 1]]
            noise = self.noise_like(x)  # one draw per step, also where τ = 0 (diffusers' stream)
            run = len(history)  # evaluations of this loop so far
            weights = self.pred[k][min(run, len(self.pred[k])) - 1]
            if self.x_coef[k] == 0.0:
                x_next = scaled(denoised, weights[0])
            else:
                x_next = lincomb(x, self.x_coef[k], denoised, weights[0])
            for previous, weight in zip(history[1:], weights[1:]):
                x_next.add_(previous, alpha=weight)
            if self.noise_std[k] > 0.0:
                x_next.add_(noise, alpha=self.noise_std[k])
            x_last, noise_last = x, noise
            last_order = 0 if self.corr[k] is None else min(run + 1, len(self.corr[k]))
            x = x_next
        return x
