r"""``ipndm`` and ``ipndm_v``: improved PNDM (Zhang & Chen 2023, §5 and App. [DEIS], arXiv:2204.13902) —
Adams–Bashforth on the probability-flow ODE in the VE view with a lower-order warm-up, for any schedule.

In x̃ = x/s with σ̃ = σ/s as the independent variable the PF-ODE reads dx̃/dσ̃ = d = (x̃ − D)/σ̃ (= ε̂; Karras et
al. 2022, eq. 4 [EDM]). iPNDM takes, per step of size h = σ̃_{k+1} − σ̃_k,

    x̃_{k+1} = x̃_k + h Σ_j b_{p,j} d_{k−j},      p = min(``max_order``, evaluations so far),

with the constant-step Adams–Bashforth weights b_1 = (1), b_2 = (3, −1)/2, b_3 = (23, −16, 5)/12,
b_4 = (55, −59, 37, −9)/24 (PNDM's weights, Liu et al. 2022, eq. 12 [PNDM], but warming up at orders 1, 2, 3
instead of with Runge–Kutta steps — the "improved" of iPNDM). Written with ε̂ this is PLMS's transfer:
x_{k+1} = s_{k+1} (x_k − σ_k ε̂_AB)/s_k + σ_{k+1} ε̂_AB, diffusers' IPNDMScheduler step. The constant-step weights
are exact only on grids uniform in σ̃ (order ``max_order`` there); on smoothly graded grids (Karras, uniform λ)
their error is O(h) per weight and the method is second order.

``ipndm_v``, the variable-step version (ComfyUI's ``sample_ipndm_v``, from zju-pi/diff-sampler), uses the exact
variable-step weights b_{p,j} = (1/h) ∫_{σ̃_k}^{σ̃_{k+1}} L_j(σ̃) dσ̃ (L_j the Lagrange basis of σ̃_k, σ̃_{k−1}, …; the
weights of :mod:`unisde.samplers.lms`, so ``ipndm_v`` is ``lms`` with iPNDM's options) and keeps order
``max_order`` on any grid; they reduce to the constant ones on a uniform grid. Its order-2 weights equal the
published closed form; the published order-3 and order-4 closed forms are not these integrals (order 4's do not
sum to 1 on a non-uniform grid, so that version does not converge there, and on a uniform grid they are
(57, −65, 43, −11)/24, a third-order rule, not AB4), so unisde uses the integrals.

One model evaluation per step. The derivatives d_k use only σ̃ > 0; a step to σ̃ = 0 is an ordinary step (the
Adams–Bashforth extrapolation, as diffusers' IPNDM/PNDM take it) unless ``denoise_to_zero`` makes it return x̂0
(ComfyUI's ``t_next == 0`` branch). The loop keeps the derivatives as a local history, so entered mid-grid
(img2img) it warms up again from order 1. Samples live in the model's own space, x = s x̃; the step is written
x_{k+1} = a x_k + b D_k + s_{k+1} h Σ_{j≥1} b_{p,j} d_{k−j} with d = ε̂ = (x − s D)/σ, so no x/s is formed.

``view`` (:func:`unisde.core.kernels.view_coefficients`): ``"flow"`` runs the same steps in y = x/(s + σ) against
τ = σ/(s + σ) (s becomes s + σ above and d the velocity (x − (s + σ) D)/σ), exact at s = 0; ``"auto"`` (default)
takes it where the schedule reaches zero SNR at t = 1, where the FlowMatch grids are uniform in τ (so the
constant-step weights are exact there) and σ̃ would start at the cap 4096.
"""

from __future__ import annotations

from unisde._tensor import scaled
from unisde.core.kernels import lincomb
from unisde.samplers.base import Option, Sampler, view_option
from unisde.samplers.lms import adams_bashforth_weights

# Adams–Bashforth weights on d_k, d_{k−1}, … for constant steps (Liu et al. 2022, eq. 12 [PNDM])
AB_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _max_order(value):
    return None if value in (1, 2, 3, 4) else "must be 1, 2, 3 or 4"


class IPNDMSampler(Sampler):
    name = "ipndm"
    description = "iPNDM: constant-step Adams–Bashforth (order ≤ 4, lower-order warm-up) on the PF-ODE in σ̃"
    default_grid = "karras"
    options = {
        "max_order": Option(4, (int,), "highest Adams–Bashforth order 1 … 4", _max_order),
        "denoise_to_zero": Option(False, (bool,), "a step to σ̃ = 0 returns x̂0 (ComfyUI) instead of the multistep step"),
        "view": view_option(),
    }

    def step_weights(self, ve: list[float], k: int, order: int) -> tuple[float, ...]:
        """b_{p,j} of step k at order p (the step size h multiplies them)."""
        return AB_WEIGHTS[order - 1]

    def weight_rows(self, grid) -> tuple:
        """The weights of each step of a full run on ``grid`` (d_k last), as the rows of the ``fitted`` sampler
        (:mod:`unisde.samplers.fitted`), which with this sampler's view then takes the same steps."""
        _, ve = self.view_coefficients(grid)
        ve = self.floats(ve)
        order = self.opts["max_order"]
        return tuple(tuple(reversed(self.step_weights(ve, k, min(k + 1, order)))) for k in range(grid.numel() - 1))

    def prepare(self, grid):
        """Per step k and every order p ≤ min(k + 1, ``max_order``): x_{k+1} = a x_k + b D_k + Σ_{j≥1} w_j d_{k−j}, the
        update x̃_{k+1} = x̃_k + h Σ_j b_{p,j} d_{k−j} in model space with d_k's x̃-part folded into a, b (well
        conditioned where s_k ≪ 1), and d = (x − c D)/σ at each evaluation; c and ℓ are the view's scale and level
        (s and σ̃ in the VE view, where d = ε̂; :meth:`Sampler.view_coefficients`), and c ℓ = σ in every view."""
        self.grid = self.floats(grid)
        s, ve = self.view_coefficients(grid)
        ve, s, sigma = self.floats(ve), self.floats(s), self.floats(s * ve)
        n = grid.numel() - 1
        if any(v <= 0 for v in ve[:-1]):
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid σ̃ = {ve[:-1]}"
            )
        self.eps_coefs = [(1.0 / sigma[k], -s[k] / sigma[k]) for k in range(n)]
        # the data coefficient of the view at each level, s (VE: c = s; flow: c − cℓ = s + σ − σ): the weight of
        # D − U in a CFG++ step run on U (unisde.samplers.cfg_pp)
        self.data_scales = [c - c * v if self.view == "flow" else c for c, v in zip(s, ve)]
        self.steps = []
        for k in range(n):
            tables = []
            for p in range(1, min(k + 1, self.opts["max_order"]) + 1):
                c = [(ve[k + 1] - ve[k]) * b for b in self.step_weights(ve, k, p)]
                tables.append(
                    (
                        s[k + 1] * (ve[k] + c[0]) / (s[k] * ve[k]),
                        -s[k + 1] * c[0] / ve[k],
                        [s[k + 1] * cj for cj in c[1:]],
                    )
                )
            if self.opts["denoise_to_zero"] and ve[k + 1] == 0.0:
                tables = [(0.0, s[k + 1], [])] * len(tables)  # ComfyUI: a step to σ̃ = 0 returns x̂0
            self.steps.append(tables)
        return grid[:-1]

    def loop(self, x, start=0):
        history = []  # d_k, d_{k−1}, … (newest first): this loop's Adams–Bashforth history
        for k in range(start, len(self.steps)):
            x, guided = yield x
            denoised = self.unconditional(guided)  # CFG++: the step (and the history of d) runs on U (else D itself)
            x, d = self.correct(k, x, denoised, history)
            history = [d, *history[: self.opts["max_order"] - 1]]
            a, b, weights = self.steps[k][min(len(history), len(self.steps[k])) - 1]
            x = scaled(denoised, b) if a == 0.0 else lincomb(x, a, denoised, b)  # x̃_{k+1} = x̃_k + h Σ_j b_{p,j} d_{k−j}
            for w, d in zip(weights, history[1:]):
                x = x.add_(d, alpha=w)
            x = self.add_guidance(x, guided, denoised, self.data_scales[k + 1])
        return x

    def correct(self, k, x, denoised, history):
        """The sample and derivative step k goes on from, given the evaluation at x (``denoised``) and the older
        derivatives (``history``, newest first): x itself and its d here; a corrector replaces them
        (:class:`unisde.samplers.fitted.FittedSampler`)."""
        return x, self._eps(k, x, denoised)

    def _eps(self, k, x, denoised):
        """d = (x − c D)/σ at evaluation k: the PF-ODE derivative (y − D)/ℓ, computed without x/c (ε̂ in the VE
        view, the velocity ε̂ − x̂0 in the flow view)."""
        return lincomb(x, self.eps_coefs[k][0], denoised, self.eps_coefs[k][1])


class IPNDMVSampler(IPNDMSampler):
    name = "ipndm_v"
    description = "iPNDM_v: variable-step Adams–Bashforth (order ≤ 4, ComfyUI's sample_ipndm_v) on the PF-ODE in σ̃"

    def step_weights(self, ve, k, order):
        h = ve[k + 1] - ve[k]
        return tuple(w / h for w in adams_bashforth_weights([ve[k - j] for j in range(order)], ve[k], ve[k + 1]))
