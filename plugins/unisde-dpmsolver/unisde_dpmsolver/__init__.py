r"""``dpmsolver++``: DPM-Solver++ multistep, orders 1–3 (Lu et al. 2022b [DPMSolver++], arXiv:2211.01095,
Algorithm 2 and its third-order multistep variant), its SDE variant, and the noise-prediction DPM-Solver
(Lu et al. 2022a [DPMSolver]) in multistep form, as a unisde plugin.

Written against the schedule's s(t), σ(t) and the denoised estimate D only, so it runs on every schedule and
parameterisation. With the half log-SNR λ'(t) = log(s/σ) (= λ/2 of unisde's log-SNR), the probability-flow ODE
(Song et al. 2021, eq. 13 [SDE]) has the exact solution (variation of constants in x/σ; Lu et al. 2022b, §4
[DPMSolver++])

    x_{t'} = (σ_{t'}/σ_t) x_t + σ_{t'} ∫_{λ'_t}^{λ'_{t'}} e^{λ'} D(x_λ', λ') dλ',

and DPM-Solver++ integrates D exactly as a polynomial in λ' through the last ``solver_order`` evaluations.
With h_i = λ'_{i+1} − λ'_i and r_i = h_{i−1}/h_i:

    first order (DDIM):  x_{i+1} = (σ_{i+1}/σ_i) x_i + s_{i+1} (1 − e^{−h_i}) D_i,
    2M:                  the same with D_i replaced by (1 + 1/(2 r_i)) D_i − 1/(2 r_i) D_{i−1}  (``midpoint``,
                         Algorithm 2), or by D_i + b(h_i)/(1 − e^{−h_i}) (D_i − D_{i−1})/r_i with
                         b(h) = 1 + (e^{−h} − 1)/h  (``solver_type="heun"``, diffusers' other 2M form),
    3M:                  a quadratic through D_i, D_{i−1}, D_{i−2} (weights in ``DPMSolverPlusPlus._weights``);
                         by default with diffusers' half-weight second difference (see there), exactly with
                         ``exact_quadratic=True``.

The first order is :func:`unisde.core.kernels.exponential_integrator_coefficients` (UniPC's base step too). The
loop keeps the last evaluations as a local history, so each step runs at min(table order, evaluations so far):
1, then 2, then ``solver_order`` — from the start of the grid and again from wherever an img2img pipeline enters
it. A step to σ = 0 (the clean-data end point; h = ∞) is first order and returns x = s_end D.
``lower_order_final``, when the grid has fewer than 15 steps, makes the last step first order and the
second-to-last at most second order, and ``euler_at_final`` makes the last step first order: the rules of
diffusers' DPMSolverMultistepScheduler. ``solver_order``, ``solver_type``, ``algorithm_type``,
``lower_order_final`` and ``euler_at_final`` share their names with diffusers' config keys, so
``UnifiedScheduler.from_config`` of a DPMSolverMultistepScheduler config keeps them. One model evaluation per
step (``order`` = 1 in diffusers' sense of calls per step).

``algorithm_type="sde-dpmsolver++"`` is the stochastic variant (SDE-DPM-Solver++, diffusers'
``sde-dpmsolver++``): the reverse SDE (η = 1) solved exactly in its linear part. In the VE view y = x/s,
σ̃ = e^{−λ'}, its drift pulls y towards D at rate 2 per unit λ', so

    x_{t'} = (σ_{t'}/σ_t) e^{−h} x_t + s_{t'} ∫_{λ'_t}^{λ'_{t'}} 2 e^{−2(λ'_{t'} − λ')} D dλ' + σ_{t'} √(1 − e^{−2h}) z,

which is the deterministic formula with σ replaced by σ²/s (so h doubled): the same D weights evaluated at 2h
(the step ratios r are unchanged), the x weight (σ_{t'}/σ_t) e^{−h} and fresh noise. Order 1 is DDPM's
posterior step; 2M (midpoint or heun) is diffusers' ``algorithm_type="sde-dpmsolver++"``; 3M uses the same
quadratic weights at 2h (diffusers' SDE 3M weighs the second difference differently).

``algorithm_type="dpmsolver"`` is DPM-Solver proper, in noise prediction ε̂ = (x − s D)/σ (Lu et al. 2022a,
§3.1 [DPMSolver]: x_{t'} = (s_{t'}/s_t) x_t − s_{t'} ∫ e^{−λ'} ε̂ dλ'), multistep as diffusers writes
it: every formula above with s and σ exchanged and h → −h, e.g. first order x_{i+1} = (s_{i+1}/s_i) x_i −
σ_{i+1} (e^{h_i} − 1) ε̂_i (the same step as DDIM; the higher orders differ from DPM-Solver++'s at O(h³)).
``sde-dpmsolver`` is diffusers' SDE form of it: x weight s_{t'}/s_t, twice the ε̂ weights and noise
σ_{t'} √(e^{2h} − 1) z, orders 1 and 2 only (diffusers has no third order for it). diffusers allows both only
with ``final_sigmas_type="sigma_min"`` (the last step ends at σ > 0); here a final step to σ = 0 is the limit
x = s_end D for ``dpmsolver`` and an error for ``sde-dpmsolver`` (whose limit would add fresh noise to the
result).

With ``noise="brownian_tree"`` the SDE forms draw their fresh noise as normalised increments of one Brownian path
over σ̃ (:mod:`unisde.samplers.brownian`), seeded by the step generator's initial seed: the noise of diffusers'
CosineDPMSolverMultistepScheduler (Stable Audio), whose config converts to this sampler with it.

``dpmpp_2m_sde`` and ``dpmpp_3m_sde`` (:class:`KDiffusionDPMPPSDE`, :class:`KDiffusionDPMPP3MSDE`) are k-diffusion's
``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde`` under their k-diffusion names: the data-prediction SDE form with a
stochasticity η ≥ 0 (η = 1 is ``sde-dpmsolver++``), every step at the full order its history allows.

Being a plugin, it is registered through the ``unisde`` entry-point group exactly as the built-in samplers are.
"""

from __future__ import annotations

import math

import torch

import unisde
from unisde.core.kernels import (
    exponential_integrator_coefficients,
    exponential_integrator_corrections,
    exponential_integrator_step,
    lincomb,
)
from unisde.grids import default_time_range
from unisde.samplers import Option, Sampler
from unisde.samplers.base import non_negative, positive
from unisde.samplers.brownian import BrownianTreeNoise
from unisde.samplers.menu import preset

__version__ = "0.1.0"


ORDERS = (1, 2, 3)


ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")


def _solver_order(value):
    return None if value in ORDERS else f"must be one of {', '.join(map(str, ORDERS))}"


class DPMSolverPlusPlus(Sampler):
    name = "dpmsolver++"
    aliases = ("dpmsolver_2m", "dpm++2m", "dpmpp_2m")  # dpmpp_2m: k-diffusion / ComfyUI
    description = (
        "DPM-Solver++(1S/2M/3M), SDE-DPM-Solver++ and multistep DPM-Solver: exponential integrators in "
        "data or noise prediction (Lu et al. 2022)"
    )
    default_grid = "uniform_lambda"
    options = {
        "solver_order": Option(
            2,
            (int,),
            "multistep order 1 (DDIM), 2 (2M) or 3 (3M); a diffusers config's solver_order fills it",
            _solver_order,
        ),
        "solver_type": Option(
            "midpoint",
            (str,),
            "the second-order step's form: midpoint (Algorithm 2) or heun, as diffusers' solver_type",
            choices=SOLVER_TYPES,
        ),
        "exact_quadratic": Option(
            False,
            (bool,),
            "3M: weigh the second divided difference fully (true third "
            "order); default halves it as diffusers, k-diffusion and the DPM-Solver code do",
        ),
        "algorithm_type": Option(
            "dpmsolver++",
            (str,),
            "dpmsolver++ (PF-ODE, data prediction), sde-dpmsolver++ "
            "(reverse SDE, exact linear part), dpmsolver / sde-dpmsolver (the same in noise "
            "prediction); a diffusers config's algorithm_type fills it",
            choices=ALGORITHMS,
        ),
        "lower_order_final": Option(
            True,
            (bool,),
            "with fewer than 15 steps: first-order last step and at most "
            "second-order second-to-last step (diffusers' rule)",
        ),
        "euler_at_final": Option(False, (bool,), "first-order last step (diffusers' euler_at_final)"),
        "noise": Option(
            "gaussian",
            (str,),
            "the SDE forms' fresh noise: gaussian (drawn from the step's generator, as diffusers' "
            "DPMSolverMultistep) or brownian_tree (increments of one Brownian path over σ̃ seeded by the "
            "generator's initial seed, as diffusers' CosineDPMSolverMultistep, bit for bit)",
            choices=("gaussian", "brownian_tree"),
        ),
        "exact_zero_snr": Option(
            False,
            (bool,),
            "data-prediction forms on a zero-terminal-SNR schedule: step from s(1) = 0 itself (λ' = −∞, so the first "
            "step is x' = s' D (+ σ' z) and the next one runs at first order, r = ∞), as diffusers' "
            "CogVideoXDPMScheduler does; default: from the capped s(t_end) (diffusers' DPMSolverMultistep sets "
            "ᾱ_{N−1} = 2⁻²⁴ there)",
        ),
        "discard_draw": Option(
            False,
            (bool,),
            "SDE forms: before each step that runs above first order, draw one noise sample from the generator "
            "and discard it (diffusers' CogVideoXDPMScheduler computes the first-order step with one draw, then "
            "replaces it by the second-order step with a second draw)",
        ),
    }

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        opts = super().validate_options(options)
        if opts.get("exact_zero_snr") and not opts["algorithm_type"].endswith("++"):
            raise ValueError(
                f"sampler 'dpmsolver++': exact_zero_snr=True applies to the data-prediction forms only; "
                f"algorithm_type={opts['algorithm_type']!r} divides by s, which is 0 there"
            )
        if opts.get("discard_draw") and not opts["algorithm_type"].startswith("sde"):
            raise ValueError(
                f"sampler 'dpmsolver++': discard_draw=True applies to the SDE forms only, and "
                f"algorithm_type={opts['algorithm_type']!r} draws no noise"
            )
        if opts["algorithm_type"] == "sde-dpmsolver" and opts["solver_order"] == 3:
            raise ValueError(
                "sampler 'dpmsolver++': algorithm_type='sde-dpmsolver' has no third-order form (diffusers "
                "has none either); use solver_order=1 or 2, or algorithm_type='sde-dpmsolver++'"
            )
        if opts["noise"] != "gaussian" and not opts["algorithm_type"].startswith("sde"):
            raise ValueError(
                f"sampler 'dpmsolver++': noise={opts['noise']!r} applies to the SDE forms only, and "
                f"algorithm_type={opts['algorithm_type']!r} draws no noise; use algorithm_type='sde-dpmsolver++' "
                "or 'sde-dpmsolver'"
            )
        return opts

    @property
    def stochastic(self):
        return self.opts["algorithm_type"].startswith("sde")

    def sde_eta(self) -> float:
        """η of the data-prediction SDE form (see :class:`KDiffusionDPMPPSDE`): 1 for sde-dpmsolver++ (the reverse
        SDE), 0 (the probability-flow ODE) for every other algorithm_type."""
        return 1.0 if self.opts["algorithm_type"] == "sde-dpmsolver++" else 0.0

    def prepare(self, grid):
        """Per step k: the x weight, the weights of v_k, v_{k−1}, … (v = D, or ε̂ in noise prediction) for every
        order 1 … (table order) the step may run at, and the noise level; all Python floats from float64.

        Each form is the exponential integrator on a pair (u, w) of scale functions: x_{k+1} = (w_{k+1}/w_k) x_k +
        u_{k+1}(1 − e^{−H_k}) v_k + …, with H = Δ log(u/w): (s, σ) for dpmsolver++, (s, σ²/s) for sde-dpmsolver++
        (H = 2h), (σ, s) for dpmsolver and sde-dpmsolver (H = −h; the SDE doubles the v weights)."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid, exact=bool(self.opts.get("exact_zero_snr")))
        n = grid.numel() - 1
        o = self.opts
        algorithm = o["algorithm_type"]
        sde, noise_prediction = algorithm.startswith("sde"), not algorithm.endswith("++")
        s_f, sig_f = self.floats(s), self.floats(sigma)
        if algorithm == "sde-dpmsolver" and sig_f[-1] == 0.0:
            raise ValueError(
                "sampler 'dpmsolver++': algorithm_type='sde-dpmsolver' cannot step to σ = 0 (its last "
                "step would add fresh noise to the result; diffusers refuses it too): end the grid at "
                "σ > 0 (final_sigmas_type='sigma_min') or use algorithm_type='sde-dpmsolver++'"
            )
        eta = self.sde_eta()  # sde-dpmsolver++ with stochasticity η: w = σ (σ/s)^η, H = (1 + η) h
        sde_w = sigma**2 / s if eta == 1.0 else sigma * (sigma / s) ** eta
        u, w = {"dpmsolver++": (s, sigma), "sde-dpmsolver++": (s, sde_w)}.get(algorithm, (sigma, s))
        H, self.ratio, first = (self.floats(v) for v in exponential_integrator_coefficients(u, w))
        prefactor, scale = self.floats(u[1:]), 2.0 if algorithm == "sde-dpmsolver" else 1.0
        few = o["lower_order_final"] and n < 15
        self.eps_coefs = [(1.0 / sig_f[k], -s_f[k] / sig_f[k]) for k in range(n)] if noise_prediction else None
        # (σ_{k+1}/σ_k) s_k: the x weight's share of ε̂ moved to U by the CFG++ variant (DPMPP2MCFGPPSampler)
        self.renoise_scales = [self.ratio[k] * s_f[k] for k in range(n)]
        self.weights, self.noise_std = [], []
        self.brownian_range = None
        if o["noise"] == "brownian_tree":  # one path over the schedule's σ̃ range (and the grid's, if wider)
            ve = [sig_f[k] / s_f[k] for k in range(n + 1)]
            self.ve_steps = list(zip(ve[:-1], ve[1:]))
            lo, hi = (float(v) for v in self.schedule.ve_sigma(torch.tensor(default_time_range(self.schedule))))
            positive = [v for v in ve if v > 0]
            self.brownian_range = (min([lo, *positive]), max([hi, *positive]))
        run = 0  # consecutive finite steps before this one (the history the tables may use)
        for k in range(n):
            if sig_f[k + 1] == 0.0:  # e^{−h} = 0: x = s_end D (the limit of every first-order form; 0 · ∞ otherwise)
                if noise_prediction:  # in ε̂ = (x − s D)/σ: x' = (s'/s) x − (s' σ/s) ε̂
                    first[k] = -s_f[k + 1] * sig_f[k] / s_f[k]
                self.weights.append([(first[k],)])
                self.noise_std.append(0.0)
                run = 0
                continue
            order = min(o["solver_order"], run + 1)
            if k == n - 1 and (few or o["euler_at_final"]):
                order = 1
            elif few and k == n - 2:
                order = min(order, 2)
            self.weights.append(
                [
                    tuple(
                        scale * c
                        for c in self._weights(
                            p,
                            first[k],
                            prefactor[k],
                            H[k],
                            H[k - p + 1 : k],
                            o["exact_quadratic"],
                            o["solver_type"] == "heun",
                        )
                    )
                    for p in range(1, order + 1)
                ]
            )
            # σ_{k+1} √(1 − e^{−2ηh}) (sde-dpmsolver++, H = (1 + η) h) or σ_{k+1} √(e^{2h} − 1) (sde-dpmsolver, H = −h)
            variance = math.expm1(-2.0 * H[k]) if noise_prediction else -math.expm1(-H[k] * 2.0 * eta / (1.0 + eta))
            self.noise_std.append(0.0 if not sde else sig_f[k + 1] * o.get("s_noise", 1.0) * math.sqrt(variance))
            run += 1
        return grid[:-1]

    @staticmethod
    def _weights(
        order: int, first: float, prefactor: float, h: float, previous: list[float], exact: bool, heun: bool
    ) -> tuple[float, ...]:
        """Weights of v_k, v_{k−1}, … in x_{k+1} − (w_{k+1}/w_k) x_k for one step of size h in log(u/w) (the
        pair of :meth:`prepare`; for dpmsolver++ h in λ', v = D, ``prefactor`` = s_{k+1}), ``first`` =
        prefactor · (1 − e^{−h}) the first-order weight and ``previous`` = [h_{k−2}, h_{k−1}] the earlier steps.

        v is extrapolated as a polynomial in λ' through the last ``order`` evaluations (r0 = h_{k−1}/h,
        r1 = h_{k−2}/h; divided differences D1_0 = (v_k − v_{k−1})/r0, D1_1 = (v_{k−1} − v_{k−2})/r1) and
        e^{λ'} v integrated exactly over the step:
            prefactor · [(1 − e^{−h}) v_k + b(h) D′ − c(h) D″],
        with D′ = D1_0 + r0/(r0 + r1) (D1_0 − D1_1) ≈ h ∂v/∂λ' and D″ = 2 (D1_0 − D1_1)/(r0 + r1) ≈ h² ∂²v/∂λ'²
        for 3M. The reference 3M (DPM-Solver/DPM-Solver++ code, diffusers' DPMSolverMultistepScheduler,
        k-diffusion's dpmpp_3m) uses half that D″, so it integrates quadratics inexactly (local error O(h³):
        second order asymptotically, ≈ 3.4× per halving measured in tests/test_plugin_dpmsolver.py); the default
        reproduces it for parity with diffusers, ``exact_quadratic=True`` uses the full D″ (third order, ≈ 7.3×).
        2M ``heun`` is prefactor · [(1 − e^{−h}) v_k + b(h) D1_0] (the linear term integrated exactly); 2M
        ``midpoint`` is prefactor · (1 − e^{−h}) (v_k + D1_0/2) (Algorithm 2), which drops b(h) − (1 − e^{−h})/2
        = O(h²): still second order, and diffusers' default 2M.
        """
        if order == 1:
            return (first,)
        r0 = previous[-1] / h
        if order == 2:
            if heun:
                slope = prefactor * exponential_integrator_corrections(h)[0] / r0
                return (first + slope, -slope)
            return (first * (1.0 + 0.5 / r0), -first * 0.5 / r0)
        r1 = previous[-2] / h
        b, c = exponential_integrator_corrections(h)
        b, c = prefactor * b, prefactor * c * (2.0 if exact else 1.0)
        p, q = r0 / (r0 + r1), 1.0 / (r0 + r1)
        u = (b * (1.0 + p) - c * q) / r0  # weight of (v_k − v_{k−1})
        w = (c * q - b * p) / r1  # weight of (v_{k−1} − v_{k−2})
        return (first + u, w - u, -w)

    def loop(self, x, start=0):
        history = []  # v_k, v_{k−1}, … (newest first): D, or ε̂ in noise prediction, of this loop's evaluations
        # a fresh Brownian path per loop, seeded by the generator of its first draw (diffusers: per set_timesteps)
        brownian = BrownianTreeNoise(*self.brownian_range) if self.brownian_range else None
        for k in range(start, len(self.weights)):
            x, guided = yield x
            denoised = self.unconditional(guided)  # CFG++: the step and the history run on U (else D itself)
            if self.eps_coefs is None:
                value = denoised
            else:  # ε̂ = (x − s D)/σ
                value = lincomb(x, self.eps_coefs[k][0], denoised, self.eps_coefs[k][1])
            history = [value, *history[:2]]
            weights = self.weights[k][min(len(history), len(self.weights[k])) - 1]
            x_next = exponential_integrator_step(x, self.ratio[k], value, weights[0])  # first order (DDIM)
            for previous, weight in zip(history[1:], weights[1:]):  # the multistep corrections
                x_next.add_(previous, alpha=weight)
            # CFG++ (data prediction): D in the current slot, ε̂ from U: + (w_0 + (σ_{k+1}/σ_k) s_k)(D − U)
            x_next = self.add_guidance(x_next, guided, denoised, weights[0] + self.renoise_scales[k])
            if self.opts.get("discard_draw") and len(weights) > 1 and self.noise_sampler is None:
                self.noise_like(x)  # CogVideoXDPMScheduler's draw for the first-order step it then replaces
            if self.noise_std[k] > 0.0:
                if brownian is not None and self.noise_sampler is None:
                    noise = brownian(x, *self.ve_steps[k], self.generator)
                else:
                    noise = self.noise_like(x)
                x_next.add_(noise, alpha=self.noise_std[k])
            elif self.stochastic and brownian is None and self.noise_sampler is None:
                # diffusers' step() draws the SDE noise also on the last step into σ = 0, where it weighs 0: the
                # generator leaves the loop in the same state (a noise_sampler is called only where noise is added)
                self.noise_like(x)
            x = x_next
        return x


class KDiffusionDPMPPSDE(DPMSolverPlusPlus):
    r"""``dpmpp_2m_sde``: k-diffusion's ``sample_dpmpp_2m_sde`` (Crowson [KDiffusion]), DPM-Solver++(2M) on the SDE
    family with stochasticity η ≥ 0 (η = 0: the probability-flow ODE, i.e. k-diffusion's ``sample_dpmpp_2m``;
    η = 1: the reverse SDE, ``algorithm_type="sde-dpmsolver++"``).

    In the VE view x̃ = x/s, σ̃ = e^{−τ} the family is EDM's dx̃ = (1 + η)(D − x̃) dτ + √(2η) σ̃ dW (Karras et al. 2022,
    eq. 6 [EDM] with β = η σ̃'/σ̃; its drift pulls x̃ towards D at rate 1 + η). Holding D constant over a step of
    length h in τ, it is solved exactly by

        x̃_{i+1} = (σ̃_{i+1}/σ̃_i) e^{−ηh} x̃_i + (1 − e^{−(1+η)h}) D_i + S_noise σ̃_{i+1} √(1 − e^{−2ηh}) z,

    the deterministic DPM-Solver++ step on the scale pair (s, σ (σ/s)^η), whose log-ratio is (1 + η) λ': the
    multistep corrections are DPM-Solver++'s at H = (1 + η) h (midpoint or heun, ``solver_type``). Unlike the
    ``dpmsolver++`` defaults, every step runs at the highest order its history allows (no ``lower_order_final``), as
    k-diffusion does; a step to σ = 0 returns s_end D. Noise from the step's generator (``noise="gaussian"``) or, as
    k-diffusion by default, from one Brownian path (``noise="brownian_tree"``); the steps' intervals do not overlap,
    so both give independent N(0, I) draws. One model call per step."""

    name = "dpmpp_2m_sde"
    aliases = ("dpmpp_2m_sde_gpu",)  # ComfyUI's _gpu variant: the same law, noise drawn on the GPU
    description = "DPM-Solver++(2M) SDE with stochasticity eta (k-diffusion sample_dpmpp_2m_sde)"
    default_grid = "karras"
    options = {
        "eta": Option(
            1.0,
            (float,),
            "stochasticity η ≥ 0 (0: the PF-ODE; 1: the reverse SDE); a pipeline's eta is not read",
            non_negative,
        ),
        "s_noise": Option(1.0, (float,), "noise inflation S_noise > 0 (k-diffusion's s_noise)", positive),
        "solver_type": DPMSolverPlusPlus.options["solver_type"],
        "noise": DPMSolverPlusPlus.options["noise"],
    }
    # the DPMSolverPlusPlus options this sampler fixes (k-diffusion's loop has no switch for them)
    fixed = {
        "solver_order": 2,
        "algorithm_type": "sde-dpmsolver++",
        "exact_quadratic": False,
        "lower_order_final": False,
        "euler_at_final": False,
    }

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        return {**cls.fixed, **super(DPMSolverPlusPlus, cls).validate_options(options)}

    @property
    def stochastic(self):
        return self.opts["eta"] > 0

    def sde_eta(self) -> float:
        return float(self.opts["eta"])


class KDiffusionDPMPP3MSDE(KDiffusionDPMPPSDE):
    r"""``dpmpp_3m_sde``: k-diffusion's ``sample_dpmpp_3m_sde`` (Crowson [KDiffusion]): the SDE family of
    :class:`KDiffusionDPMPPSDE` with DPM-Solver++(3M)'s corrections at H = (1 + η) h, the second divided difference
    weighed by half (as k-diffusion, diffusers and the DPM-Solver code do; see :meth:`DPMSolverPlusPlus._weights`),
    the second step (one evaluation of history) in the ``heun`` form b(H) (D_i − D_{i−1})/r, and no lowered orders at
    the end. ``dpmsolver++`` with ``solver_order=3`` and its defaults differs from it by that second step (midpoint)
    and ``lower_order_final``."""

    name = "dpmpp_3m_sde"
    aliases = ("dpmpp_3m_sde_gpu",)
    description = "DPM-Solver++(3M) SDE with stochasticity eta (k-diffusion sample_dpmpp_3m_sde)"
    options = {k: v for k, v in KDiffusionDPMPPSDE.options.items() if k != "solver_type"}
    fixed = {**KDiffusionDPMPPSDE.fixed, "solver_order": 3, "solver_type": "heun"}


class DPMPP2MCFGPPSampler(DPMSolverPlusPlus):
    r"""``dpmpp_2m_cfg_pp``: ComfyUI's ``sample_dpmpp_2m_cfg_pp`` [ComfyUI], DPM-Solver++(2M) with CFG++ (Chung et al.
    2024 [CFGpp]; :mod:`unisde.samplers.cfg_pp`). With D the guided and U the unconditional x̂0 (``needs_uncond``: run
    it with ``unisde.sample`` and a denoiser returning (D, U)), in the VE view x̃ = x/s:

        x̃_{i+1} = D_i + e^{−h}(x̃_i − U_i) + (1 − e^{−h})/(2 r_i) (D_i − U_{i−1}),      r_i = h_{i−1}/h_i,

    the first step and a step to σ = 0 without the last term: the 2M step with D_i in the current slot and U in the
    history, its x term renoising with ε̂_U = (x − s U)/σ instead of ε̂_D, i.e. plus (σ_{i+1}/σ_i) s_i (D_i − U_i) (the
    loop adds (w_0 + (σ_{i+1}/σ_i) s_i)(D_i − U_i) to the step run on U, w_0 the weight of the current slot). With
    U = D it is ``dpmpp_2m``. In model space and λ' = log(s/σ) on every schedule, as this plugin's other forms
    (ComfyUI steps in −log σ of its own sigmas, which on flow models is log t)."""

    name = "dpmpp_2m_cfg_pp"
    aliases = ()
    needs_uncond = True
    default_grid = "karras"
    description = (
        "ComfyUI sample_dpmpp_2m_cfg_pp: DPM-Solver++(2M), guided x̂0 for the data term, unconditional x̂0 for ε̂ and "
        "the history"
    )
    options = {}
    # k-diffusion's / ComfyUI's 2M: midpoint form, every step at the order its history allows
    fixed = {
        "solver_order": 2,
        "solver_type": "midpoint",
        "exact_quadratic": False,
        "algorithm_type": "dpmsolver++",
        "lower_order_final": False,
        "euler_at_final": False,
        "noise": "gaussian",
        "exact_zero_snr": False,
        "discard_draw": False,
    }

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        return {**cls.fixed, **super(DPMSolverPlusPlus, cls).validate_options(options)}


KDiffusionDPMPP2MSDEHeun = preset(
    KDiffusionDPMPPSDE,
    "dpmpp_2m_sde_heun",
    "k-diffusion / ComfyUI dpmpp_2m_sde with solver_type='heun' (ComfyUI's dpmpp_2m_sde_heun)",
    fixed={"solver_type": "heun"},
    aliases=("dpmpp_2m_sde_heun_gpu",),
)


@unisde.hookimpl
def unisde_register_samplers(register):
    register(DPMSolverPlusPlus)
    register(KDiffusionDPMPPSDE)
    register(KDiffusionDPMPP3MSDE)
    register(KDiffusionDPMPP2MSDEHeun)
    register(DPMPP2MCFGPPSampler)
