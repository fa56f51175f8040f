r"""``unipc``: UniPC (Zhao et al. 2023 [UniPC], arXiv:2302.04867) — the unified predictor (UniP) and corrector (UniC) in
data prediction, multistep, written against s(t), σ(t) and the denoised estimate D, so it runs on every schedule.

With λ' = log(s/σ) (the half log-SNR of :mod:`unisde_dpmsolver`), a step from t_k to t_{k+1} of size h > 0 in λ'
starts from the exponential-integrator base x_ = (σ_{k+1}/σ_k) x_k − s_{k+1} (e^{−h} − 1) D_k and adds
divided differences D1_i = (D_{k−i} − D_k)/r_i of earlier evaluations (r_i = (λ'_{k−i} − λ'_k)/h):

    UniP (order p):  x_{k+1} = x_ − s_{k+1} B(h) Σ_{i<p} ρ^P_i D1_i,
    UniC (order p):  x^c_{k+1} = x_ − s_{k+1} B(h) (Σ_{i<p} ρ^C_i D1_i + ρ^C_p (D_{k+1} − D_k)),

where D_{k+1} is the model's estimate at the *predicted* x_{k+1}, so the corrector costs no extra evaluation: it
is applied at the start of the next step, before that step's predictor. The weights ρ solve R ρ = b with
R_{ij} = r_j^{i} and b_i = i! φ_{i+1}(−h)-type coefficients divided by B(h) (``_weights``); B(h) = e^{−h} − 1
(``variant="bh2"``, the default) or −h (``bh1``). Order 2's predictor uses ρ = ½ and order 1's corrector
ρ = ½, the choices of the reference implementation. ``lower_order_final`` lowers the order to the number of
steps left (diffusers' rule for UniPC); a step to σ = 0 is first order and returns x = s_end D. This is
diffusers' UniPCMultistepScheduler (data prediction), whose configs convert to it.

``predict_x0=False`` is UniPC's noise-prediction form (Zhao et al. 2023, Algorithms 5–6 [UniPC]; diffusers'
``predict_x0=False``): every formula above with s and σ exchanged and h → −h, on ε̂ = (x − s D)/σ instead of D —
the base x_ = (s_{k+1}/s_k) x_k − σ_{k+1} (e^h − 1) ε̂_k, B(h) = e^h − 1 (bh2) or h (bh1), the same ratios r_i and
the weights ρ at −h, as :func:`unisde.core.kernels.exponential_integrator_coefficients` (σ, s) gives them. Its step
to σ = 0 is the limit x = s_end D; diffusers' returns NaN there (σ_{k+1} (e^h − 1) = 0 · ∞ with
``final_sigmas_type="zero"``), so only its ``"sigma_min"`` runs have a last step to match.

The loop keeps D_k, D_{k−1}, … as a local history, so each step runs at min(table order, evaluations so far) —
from the start of the grid, and again from wherever an img2img pipeline enters it — and every prediction the
loop made itself is corrected at the next evaluation with the weights of the order it was made at (as
diffusers' UniPC does after ``set_begin_index``). x_ is :func:`unisde.core.kernels.exponential_integrator_step`,
the step DPM-Solver++(1) takes too.
"""

from __future__ import annotations

import math

import numpy as np

from unisde.core.kernels import exponential_integrator_coefficients, exponential_integrator_step, lincomb
from unisde.samplers.base import Option, Sampler

VARIANTS = ("bh1", "bh2")


def _order(value):
    return None if value in (1, 2, 3) else "must be 1, 2 or 3"


def _step_indices(value):
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return f"must list non-negative step indices, got {list(value)}"
    return None


def _weights(
    h: float, ratios: list[float], order: int, variant: str, corrector: bool
) -> tuple[float, float, list[float]]:
    """(e^{−h} − 1, B(h), ρ) for one step: ρ for the predictor (length order − 1) or the corrector (length order)."""
    hh = -h
    phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else phi_1
    rks = np.array(list(ratios) + [1.0], dtype=np.float64)
    rows, rhs = [], []
    phi_k, factorial = phi_1 / hh - 1.0, 1.0
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        rhs.append(phi_k * factorial / b_h)
        factorial *= i + 1
        phi_k = phi_k / hh - 1.0 / factorial
    R, b = np.array(rows), np.array(rhs)
    if corrector:
        rho = [0.5] if order == 1 else list(np.linalg.solve(R, b))
    elif order == 1:
        rho = []
    else:
        rho = [0.5] if order == 2 else list(np.linalg.solve(R[:-1, :-1], b[:-1]))
    return phi_1, b_h, [float(r) for r in rho]


class UniPCSampler(Sampler):
    name = "unipc"
    description = "UniPC: unified predictor-corrector multistep in data prediction (bh1/bh2), diffusers' UniPC"
    default_grid = "uniform_lambda"
    options = {
        "solver_order": Option(
            2, (int,), "multistep order 1, 2 or 3; a diffusers config's solver_order fills it", _order
        ),
        "variant": Option(
            "bh2", (str,), "B(h) = e^{−h} − 1 (bh2) or −h (bh1); a UniPC config's solver_type", choices=VARIANTS
        ),
        "lower_order_final": Option(
            True, (bool,), "lower the order to the number of steps left (diffusers' UniPC rule)"
        ),
        "disable_corrector": Option((), (list, tuple), "step indices whose prediction is not corrected", _step_indices),
        "predict_x0": Option(
            True,
            (bool,),
            "True: data prediction (the multistep history holds D); False: UniPC's noise-prediction form on "
            "ε̂ = (x − s D)/σ (diffusers' predict_x0, which a UniPC config fills)",
        ),
    }

    def prepare(self, grid):
        """Per step k: the base step's coefficients, the table order, the ratios r_i, and for every order p the
        step may run at, −s_{k+1} B(h) and the UniP / UniC weights ρ."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        n = grid.numel() - 1
        top, variant = self.opts["solver_order"], self.opts["variant"]
        data = self.opts["predict_x0"]
        u = s if data else sigma  # the pair (u, w) of the exponential integrator: (s, σ), or (σ, s) on ε̂
        h, x_coef, d_coef = (self.floats(v) for v in exponential_integrator_coefficients(u, sigma if data else s))
        s_f, sig_f = self.floats(s), self.floats(sigma)
        self.eps_coefs = None if data else [(1.0 / sig_f[k], -s_f[k] / sig_f[k]) for k in range(n)]
        self.x_coef, self.d_coef = x_coef, d_coef
        lam = [math.log(float(si)) - math.log(float(gi)) if float(gi) > 0 else math.inf for si, gi in zip(s, sigma)]
        self.orders, self.ratios, self.scale, self.rho_p, self.rho_c = [], [], [], [], []
        for k in range(n):
            finite = math.isfinite(h[k])  # σ_{k+1} = 0: e^{−h} = 0, x = s_end D exactly; no difference is finite
            if not finite and not data:  # the limit on ε̂: x' = (s'/s)(x − σ ε̂) = s' D (0 · ∞ otherwise)
                self.d_coef[k] = -s_f[k + 1] * sig_f[k] / s_f[k]
            order = min(top, n - k) if self.opts["lower_order_final"] else top
            order = min(order, k + 1) if finite else 1
            self.orders.append(order)
            step = lam[k + 1] - lam[k]  # h in λ' whatever the form: the ratios r_i are the same in both
            self.ratios.append([(lam[k - i] - lam[k]) / step for i in range(1, order)])
            tables = [
                _weights(h[k], self.ratios[k][: p - 1], p, variant, False) if finite else (0.0, 0.0, [])
                for p in range(1, order + 1)
            ]
            self.scale.append(-float(u[k + 1]) * tables[0][1])  # −s_{k+1} B(h) (−σ_{k+1} B(−h) on ε̂)
            self.rho_p.append([rho for _, _, rho in tables])
            self.rho_c.append(
                [_weights(h[k], self.ratios[k][: p - 1], p, variant, True)[2] for p in range(1, order + 1)]
                if finite
                else None
            )
        skip = set(self.opts["disable_corrector"])
        self.correct = [k > 0 and (k - 1) not in skip and self.rho_c[k - 1] is not None for k in range(n)]
        return grid[:-1]

    def loop(self, x, start=0):
        history = []  # D_k, D_{k−1}, … (newest first) of this loop
        x_last, last_order = None, 0  # the previous step of this loop: where it started, its order
        for k in range(start, len(self.orders)):
            x, denoised = yield x
            if self.eps_coefs is not None:  # the noise-prediction form works on ε̂ = (x − s D)/σ
                denoised = lincomb(x, self.eps_coefs[k][0], denoised, self.eps_coefs[k][1])
            if x_last is not None and self.correct[k]:  # UniC for step k − 1, with D_k at its prediction x_k
                x = self._unic(k - 1, last_order, x_last, history, denoised)
            history = [denoised, *history[: self.opts["solver_order"] - 1]]
            order = min(self.orders[k], len(history))
            x_last, last_order = x, order
            x = self._unip(k, order, x, history)  # UniP: the prediction x_{k+1}
        return x

    def _unip(self, k, order, x, history):
        """x_{k+1} = x_ − s_{k+1} B(h) Σ_{i<p} ρ^P_i D1_i."""
        out = exponential_integrator_step(x, self.x_coef[k], history[0], self.d_coef[k])
        return self._add_differences(out, k, history, self.rho_p[k][order - 1])

    def _unic(self, k, order, x_last, history, d_new):
        """x^c_{k+1} = x_ − s_{k+1} B(h) (Σ_{i<p} ρ^C_i D1_i + ρ^C_p (D_{k+1} − D_k)) from x_k = ``x_last``."""
        rho = self.rho_c[k][order - 1]
        out = exponential_integrator_step(x_last, self.x_coef[k], history[0], self.d_coef[k])
        out = self._add_differences(out, k, history, rho[:-1])
        return out.add(d_new - history[0], alpha=self.scale[k] * rho[-1])

    def _add_differences(self, out, k, history, rho):
        """out − s_{k+1} B(h) Σ_i ρ_i D1_i with D1_i = (D_{k−i} − D_k)/r_i (history[i] = D_{k−i})."""
        for i, weight in enumerate(rho, start=1):
            out = out.add(history[i] - history[0], alpha=self.scale[k] * weight / self.ratios[k][i - 1])
        return out
