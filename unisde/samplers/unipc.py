r"""``unipc``: UniPC (Zhao et al. 2023, arXiv:2302.04867) — the unified predictor (UniP) and corrector (UniC) in
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
"""

from __future__ import annotations

import math

import numpy as np

from unisde.samplers.base import Option, Sampler, grid_coefficients, lincomb

VARIANTS = ("bh1", "bh2")


def _order(value):
    return None if value in (1, 2, 3) else "must be 1, 2 or 3"


def _step_indices(value):
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return f"must list non-negative step indices, got {list(value)}"
    return None


def _weights(h: float, ratios: list[float], order: int, variant: str, corrector: bool) -> tuple[float, float, list[float]]:
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
        "solver_order": Option(2, (int,), "multistep order 1, 2 or 3; a diffusers config's solver_order fills it", _order),
        "variant": Option("bh2", (str,), "B(h) = e^{−h} − 1 (bh2) or −h (bh1); a UniPC config's solver_type", choices=VARIANTS),
        "lower_order_final": Option(True, (bool,), "lower the order to the number of steps left (diffusers' UniPC rule)"),
        "disable_corrector": Option((), (list, tuple), "step indices whose prediction is not corrected", _step_indices),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        s, sigma = grid_coefficients(self, grid)
        n = grid.numel() - 1
        top = self.opts["solver_order"]
        variant = self.opts["variant"]
        self.s_n, self.sig_ratio, self.orders = self.floats(s[1:]), [], []
        lam = [math.log(float(si)) - math.log(float(gi)) if float(gi) > 0 else math.inf for si, gi in zip(s, sigma)]
        self.predictor, self.corrector, self._r = [], [], []
        for k in range(n):
            order = min(top, n - k) if self.opts["lower_order_final"] else top
            order = min(order, k + 1)
            if float(sigma[k + 1]) == 0.0:  # e^{−h} = 0: x = s_end D exactly; no difference term is finite
                order = 1
            self.orders.append(order)
            self.sig_ratio.append(float(sigma[k + 1]) / float(sigma[k]))
            h = lam[k + 1] - lam[k]
            ratios = [(lam[k - i] - lam[k]) / h for i in range(1, order)] if math.isfinite(h) else []
            self._r.append(ratios)
            self.predictor.append(_weights(h, ratios, order, variant, False) if math.isfinite(h) else (-1.0, -1.0, []))
            self.corrector.append(_weights(h, ratios, order, variant, True) if math.isfinite(h) else None)
        skip = set(self.opts["disable_corrector"])
        self.correct = [k > 0 and (k - 1) not in skip and self.corrector[k - 1] is not None for k in range(n)]
        self._history: list = []
        self._last_sample = None
        self._last_step = -1
        return grid[:-1]

    def _base(self, k, x, d0):
        """x_ = (σ_{k+1}/σ_k) x − s_{k+1} (e^{−h} − 1) D_k."""
        phi_1 = self.predictor[k][0]
        return lincomb(x, self.sig_ratio[k], d0, -self.s_n[k] * phi_1) if self.sig_ratio[k] != 0.0 else d0 * self.s_n[k]

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        if k != self._last_step + 1:  # entered mid-grid: no valid history
            self._history, self._last_sample = [], None
        self._last_step = k
        if self.correct[k] and self._last_sample is not None and len(self._history) >= self.orders[k - 1]:
            sample = self._corrected(k - 1, self._last_sample, denoised)
        self._history = [denoised, *self._history[:2]]
        self._last_sample = sample
        out = self._base(k, sample, denoised)
        if len(self._history) < self.orders[k]:  # fewer evaluations than the tables assume (entered mid-grid)
            return out
        _, b_h, rho = self.predictor[k]
        return self._add_differences(out, k, denoised, rho, -self.s_n[k] * b_h)

    def _add_differences(self, out, k, d0, rho, scale):
        """out + scale · Σ_i ρ_i D1_i with D1_i = (D_{k−i} − D_k)/r_i, r_i = (λ'_{k−i} − λ'_k)/h_k (history[i] = D_{k−i})."""
        for i, weight in enumerate(rho, start=1):
            out = out.add(self._history[i] - d0, alpha=scale * weight / self._r[k][i - 1])
        return out

    def _corrected(self, k, x_last, d_new):
        """UniC for the step k → k+1, with D_{k+1} = ``d_new`` evaluated at the predicted x_{k+1}."""
        d0 = self._history[0]
        _, b_h, rho = self.corrector[k]
        out = self._add_differences(self._base(k, x_last, d0), k, d0, rho[:-1], -self.s_n[k] * b_h)
        return out.add(d_new - d0, alpha=-self.s_n[k] * b_h * rho[-1])
