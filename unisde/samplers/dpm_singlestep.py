r"""``dpmsolver_singlestep``: singlestep DPM-Solver++ and DPM-Solver, orders 1–3 (DPM-Solver-1/2/3, Lu et al.
2022a [DPMSolver]; DPM-Solver++(2S), Lu et al. 2022b [DPMSolver++]), as diffusers' DPMSolverSinglestepScheduler runs
them, written against s(t), σ(t) and the denoised estimate D only, so it runs on every schedule and
parameterisation.

A singlestep method of order p takes one step t_b → t_{b+p} with p model evaluations, at t_b and at p − 1
intermediate times inside the step; every intermediate sample is itself a lower-order singlestep prediction from
x_b. As in diffusers, the evaluation times are the grid's points t_0 > t_1 > … and the grid is cut into groups
of 1, 2 or 3 consecutive points (the *order list*): inside a group starting at b, evaluation k (order
p = k − b + 1) predicts x_{k+1} from x_b and D_b, …, D_k, and only the last prediction of a group is a step of
the solver; the others are the intermediate samples the next evaluation is made at. With the half log-SNR
λ' = log(s/σ), H = λ'_{k+1} − λ'_b and r_j = (λ'_{b+j} − λ'_b)/H (r = 1/3, 2/3 on λ-uniform grids, the
nodes of DPM-Solver-3):

    order 1 (DDIM):   x_{k+1} = (σ_{k+1}/σ_b) x_b + s_{k+1} (1 − e^{−H}) D_b,
    order 2:          + s_{k+1} (1 − e^{−H}) · ½ D1 (``midpoint``)  or  + s_{k+1} b(H) D1 (``heun``),
                      D1 = (D_{b+1} − D_b)/r_1,
    order 3:          + s_{k+1} b(H) D1' (``midpoint``: only the second intermediate point, DPM-Solver-3's
                      final step, D1' = (D_{b+2} − D_b)/r_2), or the full quadratic through the three
                      evaluations (``heun``): + s_{k+1} [b(H) D′ − c(H) D″],

with b, c from :func:`unisde.core.kernels.exponential_integrator_corrections` (the same helpers DPM-Solver++
multistep uses) and the first-order weights from :func:`unisde.core.kernels.exponential_integrator_coefficients`.
The order list is diffusers' ``get_order_list``: [1, 2, 3, 1, 2, 3, …] (or [1, 2, …] for order 2) with
``lower_order_final`` ending in [1, 2] + [1] or [1] so that the last group fits; diffusers forces
``lower_order_final`` when the steps are not a multiple of the order or the grid ends at σ = 0, and a step to
σ = 0 (h = ∞) is always first order: x = s_end D. Entering the grid mid-group (img2img) shortens the group to the
evaluations this loop has made, as diffusers' scheduler does after ``set_begin_index``. One model evaluation
per grid point (diffusers' ``order`` = 1): n steps of ``num_inference_steps`` are n evaluations.

``algorithm_type``:

* ``dpmsolver++`` (default): data prediction, as above.
* ``dpmsolver``: DPM-Solver proper, noise prediction ε̂ = (x − s D)/σ: every formula with s and σ exchanged and
  H → −H, e.g. x_{k+1} = (s_{k+1}/s_b) x_b − σ_{k+1} (e^{H} − 1) ε̂_b.
* ``sde-dpmsolver++``: SDE-DPM-Solver++ (Lu et al. 2022b [DPMSolver++], as diffusers implements it): the reverse
  SDE with its linear part solved exactly — the data-prediction formulas with σ replaced by σ²/s (so H → 2H),
  the x weight (σ_{k+1}/σ_b) e^{−H} and fresh noise σ_{k+1} √(1 − e^{−2H}) z at *every* evaluation, as diffusers
  draws it (so intermediate samples are stochastic too). The third-order ``heun`` form weighs D″ by −c(2H),
  the exact integral; diffusers' DPMSolverSinglestepScheduler has +(1 − e^{−2H} − 2H)/(4H²) − ½ there (the
  sign of the ½ flipped), so its converter refuses that one combination rather than reproduce the slip.
"""

from __future__ import annotations

import math

import torch

from unisde.core.kernels import (
    exponential_integrator_coefficients,
    exponential_integrator_corrections,
    exponential_integrator_step,
    lincomb,
)
from unisde.samplers.base import Option, Sampler

ALGORITHMS = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def _order(value):
    return None if value in (1, 2, 3) else "must be 1, 2 or 3"


def order_list(steps: int, order: int, lower_order_final: bool, final_to_zero: bool) -> list[int]:
    """The order of every evaluation (its position in its group): diffusers' ``get_order_list`` with the
    ``lower_order_final`` that its ``set_timesteps`` forces when ``steps`` is not a multiple of ``order`` or the
    grid ends at σ = 0 (``final_to_zero``, whose last evaluation is then first order)."""
    lower = lower_order_final or steps % order != 0 or final_to_zero
    if order == 1:
        orders = [1] * steps
    elif not lower:
        orders = [o for _ in range(steps // order) for o in range(1, order + 1)]
    elif order == 2:
        orders = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
    elif steps % 3 == 0:
        orders = [1, 2, 3] * (steps // 3 - 1) + [1, 2] + [1]
    else:
        orders = [1, 2, 3] * (steps // 3) + [1, 2][: steps % 3]
    if final_to_zero:
        orders[-1] = 1
    return orders


class DPMSolverSinglestepSampler(Sampler):
    name = "dpmsolver_singlestep"
    aliases = ("dpm_singlestep", "dpmsolver++_singlestep", "dpm++3s")
    description = "singlestep DPM-Solver++ / DPM-Solver (1S/2S/3S, intermediate evaluations), diffusers' singlestep"
    default_grid = "uniform_lambda"
    options = {
        "solver_order": Option(
            2,
            (int,),
            "order of each singlestep step: 1 (DDIM), 2 or 3 evaluations per step; "
            "a diffusers config's solver_order fills it",
            _order,
        ),
        "solver_type": Option(
            "midpoint",
            (str,),
            "midpoint (DPM-Solver-2/3's forms) or heun (the full polynomial "
            "integrated exactly), as diffusers' solver_type",
            choices=SOLVER_TYPES,
        ),
        "algorithm_type": Option(
            "dpmsolver++",
            (str,),
            "dpmsolver++ (data prediction), dpmsolver (noise "
            "prediction) or sde-dpmsolver++ (reverse SDE, exact linear part)",
            choices=ALGORITHMS,
        ),
        "lower_order_final": Option(
            False,
            (bool,),
            "end with a first-order step (diffusers' rule; forced on a grid "
            "ending at σ = 0 or when the steps are not a multiple of the order)",
        ),
    }

    @property
    def stochastic(self):
        return self.opts["algorithm_type"].startswith("sde")

    def prepare(self, grid):
        """Per evaluation k and per order p ≤ its listed order (an entry mid-group lowers it): the weight of x_b,
        the weights of v_b, …, v_k (v = D, or ε̂ for ``dpmsolver``) and the noise level; Python floats from
        float64. Each form is the exponential integrator on a pair (u, w) of scale functions — (s, σ) for
        dpmsolver++, (s, σ²/s) for sde-dpmsolver++ (H = 2h), (σ, s) for dpmsolver (H = −h) — as in the
        unisde-dpmsolver plugin's multistep solver."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        n = grid.numel() - 1
        o = self.opts
        algorithm = o["algorithm_type"]
        sde, noise_prediction = algorithm.startswith("sde"), algorithm == "dpmsolver"
        s_f, sig_f = self.floats(s), self.floats(sigma)
        u, w = {"dpmsolver++": (s, sigma), "sde-dpmsolver++": (s, sigma**2 / s)}.get(algorithm, (sigma, s))
        lam = self.floats(torch.log(s) - torch.log(sigma))  # λ' = log(s/σ), +∞ at σ = 0
        self.orders = order_list(n, o["solver_order"], o["lower_order_final"], sig_f[-1] == 0.0)
        self.eps_coefs = [(1.0 / sig_f[k], -s_f[k] / sig_f[k]) for k in range(n)] if noise_prediction else None
        self.tables = []  # tables[k][p − 1] = (x_b weight, (v_b, …, v_k weights), noise std)
        for k in range(n):
            per_order = []
            for p in range(1, self.orders[k] + 1):
                b = k - p + 1
                pair = torch.tensor([b, k + 1])
                H, ratio, first = (float(v) for v in exponential_integrator_coefficients(u[pair], w[pair]))
                if sig_f[k + 1] == 0.0:  # h = ∞ (first order only): x = s_end D, the limit of every form
                    ratio, first = 0.0, s_f[k + 1]
                    if noise_prediction:  # the same in ε̂ = (x − s D)/σ: x' = (s'/s) x − (s' σ/s) ε̂
                        ratio, first = s_f[k + 1] / s_f[b], -s_f[k + 1] * sig_f[b] / s_f[b]
                    per_order.append((ratio, (first,), 0.0))
                    continue
                h = lam[k + 1] - lam[b]
                weights = self._weights(
                    p,
                    first,
                    float(u[k + 1]),
                    H,
                    [(lam[b + j] - lam[b]) / h for j in range(1, p)],
                    o["solver_type"] == "heun",
                )
                per_order.append((ratio, weights, sig_f[k + 1] * math.sqrt(-math.expm1(-2.0 * h)) if sde else 0.0))
            self.tables.append(per_order)
        return grid[:-1]

    @staticmethod
    def _weights(order: int, first: float, scale: float, H: float, ratios: list[float], heun: bool):
        """Weights of v_b, v_{b+1}, … for one prediction of ``order`` over a step H in log(u/w) with prefactor
        ``scale`` = u_{k+1} and first-order weight ``first``; ``ratios`` = [r_1, r_2] (see the module docstring)."""
        if order == 1:
            return (first,)
        b, c = exponential_integrator_corrections(H)
        if order == 2:
            slope = (scale * b if heun else 0.5 * first) / ratios[0]  # weight of D1 = (v_{b+1} − v_b)/r_1
            return (first - slope, slope)
        r1, r2 = ratios
        if not heun:  # DPM-Solver-3's last step: the first divided difference through the second node only
            slope = scale * b / r2
            return (first - slope, 0.0, slope)
        # D′ = (r2 D1_0 − r1 D1_1)/(r2 − r1), D″ = 2 (D1_1 − D1_0)/(r2 − r1), D1_j = (v_{b+j} − v_b)/r_j
        pb, pc = scale * b, scale * c
        w1 = (pb * r2 + 2.0 * pc) / (r1 * (r2 - r1))
        w2 = -(pb * r1 + 2.0 * pc) / (r2 * (r2 - r1))
        return (first - w1 - w2, w1, w2)

    def loop(self, x, start=0):
        for k in range(start, len(self.tables)):
            x, denoised = yield x
            order = min(self.orders[k], k - start + 1)  # a group entered mid-way is shortened
            if order == 1:
                base, values = x, []  # the step starts here; later evaluations of the group predict from it
            values.append(
                denoised if self.eps_coefs is None else lincomb(x, self.eps_coefs[k][0], denoised, self.eps_coefs[k][1])
            )
            ratio, weights, noise_std = self.tables[k][order - 1]
            x = exponential_integrator_step(base, ratio, values[0], weights[0])
            for value, weight in zip(values[1:], weights[1:]):
                if weight != 0.0:
                    x.add_(value, alpha=weight)
            if noise_std > 0.0:
                x.add_(self.noise_like(base), alpha=noise_std)
        return x
