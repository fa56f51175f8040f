r"""``dpmsolver++``: DPM-Solver++ multistep, orders 1–3 (Lu et al. 2022, arXiv:2211.01095, Algorithm 2 and
its third-order multistep variant) as a unisde plugin.

Written against the schedule's s(t), σ(t) and the denoised estimate D only, so it runs on every schedule and
parameterisation. With the half log-SNR λ'(t) = log(s/σ) (= λ/2 of unisde's log-SNR), the probability-flow ODE
(Song et al. 2021, eq. 13 [SDE]) has the exact solution (variation of constants in x/σ; Lu et al. 2022b, §4
[DPMSolver++])

    x_{t'} = (σ_{t'}/σ_t) x_t + σ_{t'} ∫_{λ'_t}^{λ'_{t'}} e^{λ'} D(x_λ', λ') dλ',

and DPM-Solver++ integrates D exactly as a polynomial in λ' through the last ``solver_order`` evaluations.
With h_i = λ'_{i+1} − λ'_i and r_i = h_{i−1}/h_i:

    first order (DDIM):  x_{i+1} = (σ_{i+1}/σ_i) x_i + s_{i+1} (1 − e^{−h_i}) D_i,
    2M:                  the same with D_i replaced by (1 + 1/(2 r_i)) D_i − 1/(2 r_i) D_{i−1},
    3M:                  a quadratic through D_i, D_{i−1}, D_{i−2} (weights in ``DPMSolverPlusPlus._weights``);
                         by default with diffusers' half-weight second difference (see there), exactly with
                         ``exact_quadratic=True``.

The first steps use the orders their history allows (1, then 2, then ``solver_order``). A step to σ = 0 (the
clean-data end point; h = ∞) is first order and returns x = s_end D. ``lower_order_final``, when the grid has
fewer than 15 steps, makes the last step first order and the second-to-last at most second order, the rule of
diffusers' DPMSolverMultistepScheduler (it stabilises few-step sampling). ``solver_order`` shares its name with
diffusers' config key, so ``UnifiedScheduler.from_config`` of a DPMSolverMultistepScheduler config keeps it.
One model evaluation per step (``order`` = 1 in diffusers' sense of calls per step).

``algorithm_type="sde-dpmsolver++"`` is the stochastic variant (SDE-DPM-Solver++, same paper §5): the reverse SDE
(η = 1) solved exactly in its linear part. In the VE view y = x/s, σ̃ = e^{−λ'}, its drift pulls y towards D at
rate 2 per unit λ', so

    x_{t'} = (σ_{t'}/σ_t) e^{−h} x_t + s_{t'} ∫_{λ'_t}^{λ'_{t'}} 2 e^{−2(λ'_{t'} − λ')} D dλ' + σ_{t'} √(1 − e^{−2h}) z,

which is the deterministic formula with the kernel's h doubled: the same D weights evaluated at 2h (the step
ratios r are unchanged), the x weight (σ_{t'}/σ_t) e^{−h} and fresh noise. Order 1 is DDPM's posterior step; 2M
(midpoint form) is diffusers' ``algorithm_type="sde-dpmsolver++"``; 3M uses the same quadratic weights at 2h
(diffusers' SDE 3M weighs the second difference differently). The legacy noise-prediction names ``dpmsolver`` /
``sde-dpmsolver`` of diffusers configs run the data-prediction forms (the same ODE/SDE, the same order).

Being a plugin, it is registered through the ``unisde`` entry-point group exactly as the built-in samplers are.
"""

from __future__ import annotations

import math

import torch

import unisde
from unisde.samplers import Option, Sampler, grid_coefficients
from unisde.samplers.base import lincomb

__version__ = "0.1.0"


ORDERS = (1, 2, 3)


ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")


def _solver_order(value):
    return None if value in ORDERS else f"must be one of {', '.join(map(str, ORDERS))}"


def _phi_corrections(h: float) -> tuple[float, float]:
    """(b, c) = (1 + (e^{−h} − 1)/h, (e^{−h} − 1 + h)/h² − 1/2) for a step h > 0 in λ': with ∫ over the step
    of e^{λ'} times a quadratic in λ', they weigh its first and second divided differences (see ``_weights``).
    Both vanish like h/2 and −h/6 as h → 0, where the closed forms lose digits to cancellation; below h = 0.05
    their Taylor series b = Σ_{k≥2} (−h)^k/(k! h), c = Σ_{k≥3} (−h)^k/(k! h²) are summed to k = 12 instead
    (remainder < 1e-18)."""
    if h < 0.05:
        b = c = 0.0
        term = 1.0  # (−h)^k / k!
        for k in range(1, 13):
            term *= -h / k
            if k >= 2:
                b += term / h
            if k >= 3:
                c += term / (h * h)
        return b, c
    em1 = math.expm1(-h)
    return 1.0 + em1 / h, (em1 + h) / (h * h) - 0.5


class DPMSolverPlusPlus(Sampler):
    name = "dpmsolver++"
    aliases = ("dpmsolver_2m", "dpm++2m")
    description = "DPM-Solver++(1S/2M/3M) and SDE-DPM-Solver++: multistep exponential integrators in data prediction (Lu et al. 2022)"
    default_grid = "uniform_lambda"
    stochastic = True  # with algorithm_type="sde-dpmsolver++"
    options = {
        "solver_order": Option(2, (int,), "multistep order 1 (DDIM), 2 (2M) or 3 (3M); a diffusers config's "
                               "solver_order fills it", _solver_order),
        "exact_quadratic": Option(False, (bool,), "3M: weigh the second divided difference fully (true third "
                                  "order); default halves it as diffusers, k-diffusion and the DPM-Solver code do"),
        "algorithm_type": Option("dpmsolver++", (str,), "dpmsolver++ (probability-flow ODE) or sde-dpmsolver++ (reverse "
                                 "SDE, exact linear part); a diffusers config's algorithm_type fills it", choices=ALGORITHMS),
        "lower_order_final": Option(True, (bool,), "with fewer than 15 steps: first-order last step and at most "
                                    "second-order second-to-last step (diffusers' rule)"),
    }

    def prepare(self, grid):
        """Per step k: the ratio σ_{k+1}/σ_k (0 for a step to σ = 0) and the weights of D_k, D_{k−1}, D_{k−2}
        (as many as the step's order), all Python floats from float64."""
        self.grid = self.floats(grid)
        s, sigma = grid_coefficients(self, grid)
        n = grid.numel() - 1
        top = self.opts["solver_order"]
        few = self.opts["lower_order_final"] and n < 15
        sde = self.opts["algorithm_type"].startswith("sde")
        kernel = 2.0 if sde else 1.0  # the SDE's D-kernel decays twice as fast in λ' (module docstring)
        self.ratio, self.weights, self.first, self.noise_std = [], [], [], []
        steps: list[float] = []  # h of the previous steps since the start (or since a step to σ = 0)
        for i in range(n):
            s_n, sig_i, sig_n = float(s[i + 1]), float(sigma[i]), float(sigma[i + 1])
            if sig_n == 0.0:  # e^{−h} = 0: x = s_end D (first order is exact in the limit; 0 · ∞ otherwise)
                self.ratio.append(0.0)
                self.weights.append((s_n,))
                self.first.append(s_n)
                self.noise_std.append(0.0)
                steps = []
                continue
            h = (math.log(s_n) - math.log(sig_n)) - (math.log(float(s[i])) - math.log(sig_i))
            order = min(top, len(steps) + 1)
            if few and i == n - 1:
                order = 1
            elif few and i == n - 2:
                order = min(order, 2)
            self.ratio.append(sig_n / sig_i * (math.exp(-h) if sde else 1.0))
            self.weights.append(self._weights(order, s_n, kernel * h, steps, self.opts["exact_quadratic"]))
            self.first.append(-s_n * math.expm1(-kernel * h))
            self.noise_std.append(sig_n * math.sqrt(-math.expm1(-2.0 * h)) if sde else 0.0)
            steps = (steps + [kernel * h])[-2:]
        self._history: list[torch.Tensor] = []
        return grid[:-1]

    @staticmethod
    def _weights(order: int, s_n: float, h: float, steps: list[float], exact: bool) -> tuple[float, ...]:
        """Weights of D_k, D_{k−1}, … in x_{k+1} − (σ_{k+1}/σ_k) x_k for one step of size h in λ'.

        D is extrapolated as a polynomial in λ' through the last ``order`` evaluations (r0 = h_{k−1}/h,
        r1 = h_{k−2}/h; divided differences D1_0 = (D_k − D_{k−1})/r0, D1_1 = (D_{k−1} − D_{k−2})/r1) and
        e^{λ'} D integrated exactly over the step:
            s_{k+1} [(1 − e^{−h}) D_k + b(h) D′ − c(h) D″],
        with D′ = D1_0 + r0/(r0 + r1) (D1_0 − D1_1) ≈ h ∂D/∂λ' and D″ = 2 (D1_0 − D1_1)/(r0 + r1) ≈ h² ∂²D/∂λ'²
        for 3M. The reference 3M (DPM-Solver/DPM-Solver++ code, diffusers' DPMSolverMultistepScheduler,
        k-diffusion's dpmpp_3m) uses half that D″, so it integrates quadratics inexactly (local error O(h³):
        second order asymptotically, ≈ 3.4× per halving measured in tests/test_plugin_dpmsolver.py); the default
        reproduces it for parity with diffusers, ``exact_quadratic=True`` uses the full D″ (third order, ≈ 7.3×).
        2M uses the midpoint form s_{k+1} (1 − e^{−h}) (D_k + D1_0/2)
        (Algorithm 2), which drops b(h) − (1 − e^{−h})/2 = O(h²): still second order, and diffusers' 2M.
        """
        a = -s_n * math.expm1(-h)  # s_{k+1} (1 − e^{−h}), accurate for small h
        if order == 1:
            return (a,)
        r0 = steps[-1] / h
        if order == 2:
            return (a * (1.0 + 0.5 / r0), -a * 0.5 / r0)
        r1 = steps[-2] / h
        b, c = _phi_corrections(h)
        b, c = s_n * b, s_n * c * (2.0 if exact else 1.0)
        p, q = r0 / (r0 + r1), 1.0 / (r0 + r1)
        u = (b * (1.0 + p) - c * q) / r0  # weight of (D_k − D_{k−1})
        w = (c * q - b * p) / r1  # weight of (D_{k−1} − D_{k−2})
        return (a + u, w - u, -w)

    def step(self, k, sample, denoised, *, raw_denoised, extra, generator, eta=None):
        weights = self.weights[k]
        history, self._history = self._history, [denoised, *self._history[:1]]
        if len(weights) > len(history) + 1:
            # The tables assume evaluations 0 … k−1 were all seen; without them (a loop entered mid-grid) the
            # step is first order rather than reading a missing or stale D.
            weights = (self.first[k],)
        if self.ratio[k] == 0.0:
            out = denoised * weights[0]
        else:
            out = lincomb(sample, self.ratio[k], denoised, weights[0])
        for previous, weight in zip(history, weights[1:]):
            out = out.add(previous, alpha=weight)
        if self.noise_std[k] > 0.0:
            out = out.add(self.noise_like(sample, generator), alpha=self.noise_std[k])
        return out


@unisde.hookimpl
def unisde_register_samplers(register):
    register(DPMSolverPlusPlus)
