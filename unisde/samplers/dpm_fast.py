r"""``dpm_fast``: DPM-Solver-Fast (Lu et al. 2022a [DPMSolver], its fixed step-size schedule) as k-diffusion's
``sample_dpm_fast`` runs it — a budget of n model evaluations spent on singlestep DPM-Solver-3/2/1 steps uniform in
the log noise level — in the view of :func:`unisde.core.kernels.view_coefficients`, so it runs on every schedule.

In a view y = x/c with noise level ℓ (σ̃ = σ/s in the VE view, τ = σ/(s + σ) in the flow view) the PF-ODE is
dy/dℓ = (y − D)/ℓ, and with λ = −log ℓ (the half log-SNR in the VE view) and ε̂ = (y − D)/ℓ its exact solution from
λ_s to λ_t = λ_s + h is y_t = y_s − ∫_{λ_s}^{λ_t} e^{−λ} ε̂ dλ (Lu et al. 2022a's variation-of-constants formula with
α = 1, σ = ℓ). DPM-Solver-k approximates ε̂ by a polynomial in λ through k evaluations inside the step (nodes
λ_s + r h):

    DPM-Solver-1 (DDIM):        y_t = y_s − ℓ_t (e^h − 1) ε̂_s,
    DPM-Solver-2 (r₁ = ½):      u₁ = DPM-Solver-1 to λ_s + r₁h,  y_t = y_s − ℓ_t (e^h − 1) [ε̂_s + (ε̂₁ − ε̂_s)/(2r₁)],
    DPM-Solver-3 (r = ⅓, ⅔):    u₁ as above; u₂ from the line through ε̂_s, ε̂₁ integrated exactly (the φ-weight
                                (r₂/r₁)((e^{r₂h} − 1)/(r₂h) − 1)); y_t = y_s − ℓ_t (e^h − 1) ε̂_s
                                − (ℓ_t/r₂)((e^h − 1)/h − 1)(ε̂₂ − ε̂_s),

the noise-prediction forms of :mod:`unisde.samplers.dpm_singlestep` (``algorithm_type="dpmsolver"``: its order-2
``heun`` weight for u₂, its ``midpoint`` weights for the steps' last stages; first-order weights from
:func:`unisde.core.kernels.exponential_integrator_coefficients`), written here on the pair (c ℓ, c) = (σ, c) so that
x = c y stays in the model's own space (:func:`singlestep_plan`).

The plan (DPM-Solver-Fast): with the budget n the grid's number of steps (ComfyUI's ``total_steps``), K = ⌊n/3⌋ + 1
steps uniform in λ between ℓ_max = ℓ(t_0) and ℓ_min, the grid's last positive level (ℓ(t_n), or ℓ(t_{n−1}) where the
grid ends at σ = 0: ComfyUI's rule), of orders [3, …, 3, 2, 1] when 3 | n, else [3, …, 3, n mod 3]; they add up to
n. Only the grid's two ends and its length matter: the evaluation times are the nodes λ_i, λ_i + h/3, λ_i + 2h/3
(or λ_i + h/2), mapped to t by the view's inverse. The solver stops at ℓ_min, as k-diffusion's does; the result is
the view's sample y there taken as the grid's final sample, x = c_end y (c_end = 1 at the clean end t = 0: the x̃ that
k-diffusion and ComfyUI return). ``denoise_to_zero`` instead spends the last evaluation of the budget on x = c_end D
at ℓ_min (the ``denoise_to_zero`` of Lu et al.'s code), and a one-step grid to σ = 0 (an empty interval) always
does that.

``eta`` > 0 (k-diffusion's DPM-Solver-Fast with ``eta``): each step solves down to ℓ_down and adds fresh noise back up
to the node ℓ_{i+1}: in the VE view k-diffusion's ``get_ancestral_step`` (σ̃_down, σ̃_up), with σ̃_down kept ≥ σ̃_min and
σ̃_up² = σ̃_{i+1}² − σ̃_down²; in the flow view the rectified-flow ancestral step
(:func:`unisde.core.kernels.rf_ancestral_step`, τ_down ≥ τ_min), whose forward noising keeps the marginal exact
where the VE rule (no rescaling) would not. The nodes inside a step divide [λ_i, λ_down]. A pipeline's ``eta`` is not
read (it would move the evaluation times after ``prepare``). On an increasing grid (``inverse``, data → noise) the
same steps run backwards in λ with ``eta`` = 0, as k-diffusion's do for σ_min > σ_max.

Order: with n = 3m + 2 every step is DPM-Solver-3 but a last DPM-Solver-2 one, and the error falls like K⁻³ in the
number of steps K; otherwise the plan ends with a DPM-Solver-1 step whose O(h²) local error makes the method second
order where that step matters (tests/test_samplers_dpm_fast_adaptive.py measures both).

Entering the plan at an evaluation inside a step (img2img) shortens that step to the evaluations left, as
:mod:`unisde.samplers.dpm_singlestep` does: entered at λ_i + h/3 it is a DPM-Solver-2 step to the step's end with
its midpoint (r₁ = ½) at λ_i + 2h/3; entered at the last node, a DPM-Solver-1 step.
"""

from __future__ import annotations

import math

import torch

from unisde._tensor import scaled
from unisde.core.kernels import exponential_integrator_coefficients, exponential_integrator_step, rf_ancestral_step
from unisde.samplers.base import Option, Sampler, non_negative, positive, view_option
from unisde.samplers.dpm_singlestep import DPMSolverSinglestepSampler
from unisde.samplers.kdpm2 import ancestral_step

NODES = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}
"""The interior nodes r of DPM-Solver-1/2/3 steps, as fractions of the step in λ (Lu et al. 2022a; k-diffusion's
defaults r₁ = ½ and r₁, r₂ = ⅓, ⅔)."""

F64 = torch.float64


def fast_orders(nfe: int) -> list[int]:
    """The orders of DPM-Solver-Fast's ⌊nfe/3⌋ + 1 steps, adding up to ``nfe``: [3, …, 3, 2, 1] when 3 | nfe,
    else [3, …, 3, nfe mod 3]."""
    steps = nfe // 3 + 1
    return [3] * (steps - 2) + [2, 1] if nfe % 3 == 0 else [3] * (steps - 1) + [nfe % 3]


def singlestep_plan(scales: list[float], levels: list[float]):
    """One singlestep DPM-Solver step in noise prediction from node 0 to the last node, with one model evaluation at
    every node but the last (q = len(levels) − 1 ≤ 3 evaluations, order q). ``scales`` c and ``levels`` ℓ are the
    view's at the nodes (the last node's scale is the one the result is wanted in: 1 gives the view's y itself).

    Returns, per evaluation k, (weight of x_0, (weights of ε̂_0, …, ε̂_k)): the prediction of node k + 1 from x at
    node 0 and ε̂ = (x − c D)/σ at nodes 0 … k, with σ = c ℓ — order k + 1 through those nodes. The stages are
    DPM-Solver-3's (Lu et al. 2022a [DPMSolver]; k-diffusion's ``dpm_solver_3_step``): the second stage of an
    order-3 step integrates the line through ε̂_0, ε̂_1 exactly (the ``heun`` form of
    :meth:`DPMSolverSinglestepSampler._weights`), every step's last stage takes the ``midpoint`` form (DPM-Solver-2's
    ε̂_0 + (ε̂_1 − ε̂_0)/(2 r₁); DPM-Solver-3's slope through its last node only), with the nodes' positions
    r_j = (λ_j − λ_0)/h in the step read off the levels (λ = −log ℓ)."""
    q = len(levels) - 1
    w = torch.tensor(scales, dtype=F64)
    u = w * torch.tensor(levels, dtype=F64)  # c ℓ = σ: the noise weight in model space
    lam = [-math.log(v) for v in levels]
    plan = []
    for k in range(q):
        pair = torch.tensor([0, k + 1])
        H, ratio, first = (float(v) for v in exponential_integrator_coefficients(u[pair], w[pair]))
        h = lam[k + 1] - lam[0]
        nodes = [(lam[j] - lam[0]) / h for j in range(1, k + 1)]
        weights = DPMSolverSinglestepSampler._weights(k + 1, first, float(u[k + 1]), H, nodes, k == 1 and q == 3)
        plan.append((ratio, weights))
    return plan


def ancestral_target(view: str, level: float, level_next: float, eta: float, floor: float):
    """(ℓ_down, r, ς) of a DPM-Solver-Fast / -adaptive step from ``level`` to ``level_next`` with ``eta``: the solver
    steps to ℓ_down ≥ ``floor`` and the view's forward process brings y back to ``level_next`` as r y + ς z.
    VE view: k-diffusion's get_ancestral_step with σ̃_down clamped at σ̃_min and σ̃_up² = σ̃'² − σ̃_down² (r = 1);
    flow view: :func:`unisde.core.kernels.rf_ancestral_step` with τ_down ≥ τ_min."""
    if not eta:
        return level_next, 1.0, 0.0
    if view == "flow":
        return rf_ancestral_step(level, level_next, eta, floor=floor)
    down, _ = ancestral_step(level, level_next, eta)
    down = max(down, floor)
    return down, 1.0, math.sqrt(max(level_next**2 - down**2, 0.0))


class DPMFastSampler(Sampler):
    name = "dpm_fast"
    description = (
        "DPM-Solver-Fast (k-diffusion sample_dpm_fast): the budget n as DPM-Solver-3/2/1 steps uniform in log σ̃ "
        "between the grid's ends"
    )
    default_grid = "karras"
    options = {
        "eta": Option(
            0.0,
            (float,),
            "ancestral η ≥ 0 per step (k-diffusion's; 0: the ODE solver); a pipeline's eta is not read",
            non_negative,
        ),
        "s_noise": Option(1.0, (float,), "noise inflation S_noise of the ancestral noise", positive),
        "denoise_to_zero": Option(
            False,
            (bool,),
            "spend the budget's last evaluation on x̂0 at σ̃_min (a grid ending at σ = 0) instead of returning the "
            "sample there, as k-diffusion does",
        ),
        "view": view_option(),
    }

    @property
    def stochastic(self):
        return self.opts["eta"] > 0

    def prepare(self, grid):
        """The plan: per DPM-Solver step, its evaluation times and, for each entry point inside it, the prediction
        weights of :func:`singlestep_plan` (Python floats from float64), the ε̂ coefficients per evaluation and the
        ancestral noise scale."""
        self.grid = self.floats(grid)
        c, lev = self.view_coefficients(grid)
        c, lev = self.floats(c), self.floats(lev)
        n = len(lev) - 1
        to_zero = lev[-1] == 0.0
        last = n - 1 if to_zero else n  # the grid point of ℓ_min
        if to_zero and n == 1:  # an empty interval: the one evaluation denoises
            self.steps, self.eps_coefs, self.finish = [], [], c[-1]
            return grid[:1]
        denoise = self.opts["denoise_to_zero"]
        if denoise and not to_zero:
            raise ValueError(
                f"sampler 'dpm_fast': denoise_to_zero=True needs a grid ending at σ = 0; this one ends at level "
                f"{lev[-1]:.6g} (t = {self.grid[-1]:.6g})"
            )
        level_max, level_min = lev[0], lev[last]  # the interval's first and last level
        if not (level_min > 0.0 and level_max > 0.0 and level_min != level_max and math.isfinite(level_max)):
            raise ValueError(
                f"sampler 'dpm_fast' needs two distinct positive noise levels at the grid's first and last positive "
                f"points; got ℓ = {level_max!r} and {level_min!r}"
            )
        if level_min > level_max and self.opts["eta"]:  # an increasing grid (``inverse``): data → noise
            raise ValueError("sampler 'dpm_fast': eta must be 0 on an increasing grid (from data to noise)")
        nfe = n - 1 if denoise else n
        orders = fast_orders(nfe)
        lam = torch.linspace(-math.log(level_max), -math.log(level_min), len(orders) + 1, dtype=F64).tolist()
        eta, view = self.opts["eta"], self.view
        node_levels, pieces = [], []  # per step: its evaluation levels; (ℓ_down, r, ς, order)
        for i, order in enumerate(orders):
            level_next = level_min if i == len(orders) - 1 else math.exp(-lam[i + 1])
            level = level_max if i == 0 else math.exp(-lam[i])
            down, ratio, noise = ancestral_target(view, level, level_next, eta, level_min)
            lam_i = -math.log(level)
            h = -math.log(down) - lam_i  # the step in λ (negative on an increasing grid)
            node_levels.append([level] + [math.exp(-(lam_i + r * h)) for r in NODES[order]])
            pieces.append((down, ratio, noise, order))
        flat = [v for nodes in node_levels for v in nodes]
        times = self.view_times(torch.tensor(flat, dtype=F64))
        times[0] = grid[0]  # the grid's own first time, not its round trip through ℓ
        scales = self.floats(self.view_coefficients(torch.cat([times, grid[-1:]]))[0])[:-1]
        # the scale of the last step's result: the grid end's (the result is y at ℓ_min taken as the final sample),
        # or, before a final x̂0 evaluation at ℓ_min, that grid point's own
        c_result = c[last] if denoise else c[-1]
        self.eps_coefs, self.steps, k = [], [], 0
        for i, (nodes, (down, ratio, noise, order)) in enumerate(zip(node_levels, pieces)):
            node_scales = scales[k : k + order]
            self.eps_coefs += [(1.0 / (sc * lv), -1.0 / lv) for sc, lv in zip(node_scales, nodes)]  # ε̂ = (x − cD)/σ
            # where the step's result lives: at the next step's first node (time of ℓ_{i+1}), or at the end
            target = c_result if i == len(orders) - 1 else scales[k + order]
            plans = []
            for j in range(order):  # entered at its j-th evaluation: a shortened step from there
                levels = nodes[j:] + [down]
                plans.append(singlestep_plan(node_scales[j:] + [target * ratio], levels))
            self.steps.append((k, plans, target * noise * self.opts["s_noise"]))
            k += order
        self.finish = c[-1] if denoise else None  # x = c_end x̂0 at ℓ_min
        return times if not denoise else torch.cat([times, grid[last : last + 1]])

    def loop(self, x, start=0):
        step = next((i for i, (k, plans, _) in enumerate(self.steps) if k <= start < k + len(plans)), len(self.steps))
        for i in range(step, len(self.steps)):
            first, plans, noise = self.steps[i]
            plan = plans[max(start - first, 0)]  # a step entered mid-way is shortened
            base, values = None, []
            for k, (ratio, weights) in enumerate(plan, first + len(plans) - len(plan)):
                x, denoised = yield x
                if base is None:
                    base = x
                a, b = self.eps_coefs[k]
                values.append(scaled(x, a).add_(denoised, alpha=b))
                x = exponential_integrator_step(base, ratio, values[0], weights[0])
                for value, weight in zip(values[1:], weights[1:]):
                    if weight != 0.0:
                        x = x.add_(value, alpha=weight)
            if noise > 0.0:
                x = x.add_(self.noise_like(x), alpha=noise)
        if self.finish is not None:  # x̂0 at ℓ_min (denoise_to_zero, or a one-step grid to σ = 0)
            x, denoised = yield x
            x = denoised * self.finish
        return x
