r"""``dpmpp_2s_ancestral`` and ``dpmpp_sde``: k-diffusion's two-stage DPM-Solver++ samplers
(``sample_dpmpp_2s_ancestral`` and ``sample_dpmpp_sde``, Crowson [KDiffusion]; the latter is diffusers'
DPMSolverSDEScheduler), for any schedule.

Both are written in the VE view x̃ = x/s, σ̃ = σ/s, where the probability-flow ODE is dx̃/dσ̃ = (x̃ − D)/σ̃ (Karras
et al. 2022, eq. 4 [EDM]). In the half log-SNR τ = −log σ̃ it is linear, and holding D constant over a step from
σ̃_i to a target σ̃_T gives the first-order DPM-Solver++ step (Lu et al. 2022b, §4 [DPMSolver++])

    x̃_T = (σ̃_T/σ̃_i) x̃_i + (1 − σ̃_T/σ̃_i) D,

whose limit σ̃_T → 0 is x̃_T = D. Each sampler step from σ̃_i to σ̃_{i+1} takes two model calls: D_i at σ̃_i and D_m
at an intermediate level σ̃_m, and ends with an ancestral split (k-diffusion's ``get_ancestral_step``,
:func:`unisde.samplers.kdpm2.ancestral_step`): the deterministic part goes to σ̃_down and fresh noise of std
S_noise σ̃_up brings the sample back to σ̃_{i+1} (σ̃_down² + σ̃_up² = σ̃_{i+1}²; η = 1 is DDPM's posterior variance).

``dpmpp_2s_ancestral``: DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1 with r = ½ [DPMSolver++]) to σ̃_down, the
intermediate level the geometric mean σ̃_m = √(σ̃_i σ̃_down) (the middle of the step in τ), then noise:

    x̃_m = step(x̃_i, D_i; σ̃_i → σ̃_m),   x̃_{i+1} = step(x̃_i, D_m; σ̃_i → σ̃_down) + S_noise σ̃_up z.

A step whose σ̃_down is 0 (the last one, or η large enough that σ̃_up is capped at σ̃_{i+1}) is one call: x̃ = D_i
(+ noise where σ̃_{i+1} > 0). Noise z from the step's generator (``noise_like``).

``dpmpp_sde``: the same two stages with the intermediate level σ̃_m = σ̃_i^{1−r} σ̃_{i+1}^r (τ_m = τ_i + r h) and both
of them ancestral, each with its own split:

    x̃_m = step(x̃_i, D_i; σ̃_i → σ̃_down(σ̃_i, σ̃_m)) + S_noise σ̃_up(σ̃_i, σ̃_m) z₁,
    x̃_{i+1} = step(x̃_i, (1 − 1/(2r)) D_i + 1/(2r) D_m; σ̃_i → σ̃_down(σ̃_i, σ̃_{i+1})) + S_noise σ̃_up(σ̃_i, σ̃_{i+1}) z₂.

Its noise is Brownian (:mod:`unisde.samplers.brownian`): z₁ and z₂ are the normalised increments of *one* path W
over the intervals [σ̃_m, σ̃_i] and [σ̃_{i+1}, σ̃_i], so they are correlated as the overlap of the intervals says
(corr = √((σ̃_i − σ̃_m)/(σ̃_i − σ̃_{i+1}))), over [σ̃_min, σ̃_max] of the grid. The path is fixed by an integer seed:
the ``noise_sampler_seed`` option (diffusers' config key of that name), else the step generator's initial seed, else
a random one from the global RNG (as diffusers and k-diffusion draw it); a functional ``noise_sampler`` replaces
every draw. The path is queried at the float32 levels diffusers' DPMSolverSDEScheduler computes (σ̃ rounded to
float32, the intermediate τ_i + (τ_{i+1} − τ_i) r and each level's exp(−τ) in float32): torchsde resolves the path
to 1e-6 in σ̃, and an increment whose end point moves by one float32 ulp changes by ~√ulp, so only the same
arithmetic gives the same draws (on a grid with the same float32 levels: the ``diffusers_float32_sigmas`` grid).
A step to σ̃_{i+1} = 0 is one call, x̃ = D_i. With r = ½ and η = 1 this is diffusers' DPMSolverSDEScheduler, whose
configs convert to it.

Samples live in the model's own space x = s x̃ (s at the time of each level; the intermediate level's time t_m solves
σ̃(t_m) = σ̃_m), so each stage is :func:`unisde.core.kernels.exponential_integrator_coefficients` from (s_i, σ_i) to
(s_T, s_T σ̃_T), and the samplers run with every schedule and parameterisation. Model calls in order: t_0, t_{m,0},
t_1, t_{m,1}, …, t_{n−1} (one call on a one-stage step), as diffusers lists DPMSolverSDE's timesteps.
"""

from __future__ import annotations

import abc
import math

import torch

from unisde.core.kernels import exponential_integrator_coefficients, exponential_integrator_step
from unisde.samplers.base import Option, Sampler, non_negative, positive
from unisde.samplers.brownian import BrownianTreeNoise
from unisde.samplers.kdpm2 import ancestral_step


def _stage(s_from: float, sigma_from: float, s_to: float, ve_to: float) -> tuple[float, float]:
    """(x weight, D weight) of the first-order DPM-Solver++ step from (s, σ) = (s_from, σ_from) to the VE level
    ``ve_to`` at scale ``s_to``: x_T = (σ_T/σ_from) x + s_to (1 − e^{−h}) D with σ_T = s_to σ̃_T (exactly s_to D at
    σ̃_T = 0)."""
    if ve_to == 0.0:
        return 0.0, s_to
    s = torch.tensor([s_from, s_to], dtype=torch.float64)
    sigma = torch.tensor([sigma_from, s_to * ve_to], dtype=torch.float64)
    _, ratio, weight = exponential_integrator_coefficients(s, sigma)
    return float(ratio[0]), float(weight[0])


class _TwoStageDPMPP(Sampler):
    """The shared loop: per step, D_i at σ̃_i, optionally an intermediate stage x_m (then D_m), the final combination
    x_{i+1} = c_x x_i + c_D D_i + c_m D_m, and noise after either stage."""

    default_grid = "karras"
    order = 2  # model calls per step (one on a one-stage step), as diffusers' DPMSolverSDE `order`

    @property
    def stochastic(self):
        return self.opts["eta"] > 0

    @abc.abstractmethod
    def levels(self, ve_i: float, ve_next: float):
        """(σ̃_m or None for a one-stage step, stage 1's (σ̃_down, σ̃_up), stage 2's (σ̃_down, σ̃_up), weight of D_m)."""

    def prepare(self, grid):
        """Per step i, in model space: the intermediate time t_m, stage 1's weights (a, b) and noise scale
        s_m S_noise σ̃_up (x_m = a x_i + b D_i + noise), stage 2's (c_x, c_D, c_m) and noise scale; one-stage steps
        have c_m = 0. Returns the evaluation times t_0, t_{m,0}, t_1, … (see the module docstring)."""
        self.grid = self.floats(grid)
        s, sigma = self.grid_coefficients(grid)
        self.ve = sigma / s
        ve, s_f, sig_f = self.floats(self.ve), self.floats(s), self.floats(sigma)
        n = len(ve) - 1
        if any(v <= 0 for v in ve[:-1]):
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid σ̃ = {ve[:-1]}"
            )
        plans = [self.levels(ve[i], ve[i + 1]) for i in range(n)]
        mids = [plan[0] if plan[0] is not None else 1.0 for plan in plans]
        t_mid = self.schedule.t_from_sigma(torch.tensor(mids, dtype=torch.float64))
        s_mid = self.floats(self.scales_and_sigmas(t_mid)[0])
        self.scales = s_f  # s along the grid (the CFG++ guidance weight s_{i+1})
        s_noise = self.opts["s_noise"]
        times, self.step_starts, self.steps = [], {}, []
        for i, (ve_mid, (down1, up1), (down2, up2), mix) in enumerate(plans):
            self.step_starts[len(times)] = i
            times.append(self.grid[i])
            cx, cd = _stage(s_f[i], sig_f[i], s_f[i + 1], down2)
            if ve_mid is None:
                first, final = None, (cx, cd, 0.0)
            else:
                times.append(float(t_mid[i]))
                a, b = _stage(s_f[i], sig_f[i], s_mid[i], down1)
                first, final = (a, b, s_mid[i] * s_noise * up1), (cx, cd * (1.0 - mix), cd * mix)
            self.steps.append((first, final, s_f[i + 1] * s_noise * up2))
        return torch.tensor(times, dtype=torch.float64)

    def draw(self, sample: torch.Tensor, step: int, stage: int) -> torch.Tensor:
        """Standard normal noise for stage 0 (the intermediate level) or 1 (the step's end) of ``step``."""
        return self.noise_like(sample)

    def start_loop(self):
        """Called when a loop starts (a fresh noise source per loop)."""

    def loop(self, x, start=0):
        self.start_loop()
        for i in range(self.entry_step(start), len(self.steps)):
            first, (c_x, c_d, c_m), noise = self.steps[i]
            x, guided = yield x  # D_i at σ̃_i
            denoised = self.unconditional(guided)  # CFG++: both stages run on U (else D itself)
            if first is None:  # one stage: x̃ = step(x̃_i, D_i; σ̃_i → σ̃_down)
                x_next = exponential_integrator_step(x, c_x, denoised, c_d)
            else:
                a, b, noise_mid = first
                x_mid = exponential_integrator_step(x, a, denoised, b)
                if noise_mid > 0:
                    x_mid.add_(self.draw(x, i, 0), alpha=noise_mid)
                _, denoised_mid = yield x_mid  # D_m at the intermediate level σ̃_m
                denoised_mid = self.unconditional(denoised_mid)
                x_next = exponential_integrator_step(x, c_x, denoised_mid, c_m)
                if c_d != 0.0:
                    x_next.add_(denoised, alpha=c_d)
            if noise > 0:  # ancestral: back up from σ̃_down to σ̃_{i+1}
                x_next.add_(self.draw(x, i, 1), alpha=noise)
            x = self.add_guidance(x_next, guided, denoised, self.scales[i + 1])  # CFG++: + s_{i+1} (D_i − U_i)
        return x


ETA = Option(
    1.0,
    (float,),
    "ancestral η ≥ 0 (1: DDPM's posterior variance; 0: no noise); a pipeline's eta is not read",
    non_negative,
)
S_NOISE = Option(1.0, (float,), "noise inflation S_noise > 0 (k-diffusion's s_noise)", positive)


class DPMPP2SAncestralSampler(_TwoStageDPMPP):
    name = "dpmpp_2s_ancestral"
    description = (
        "DPM-Solver++(2S) ancestral (k-diffusion sample_dpmpp_2s_ancestral): 2S step to σ̃_down with the midpoint "
        "at √(σ̃_i σ̃_down), then noise σ̃_up"
    )
    options = {"eta": ETA, "s_noise": S_NOISE}

    def levels(self, ve_i, ve_next):
        down, up = ancestral_step(ve_i, ve_next, self.opts["eta"])
        if down == 0.0:  # Euler to σ̃ = 0: x̃ = D_i (then noise σ̃_up = σ̃_{i+1}, 0 on the last step)
            return None, (0.0, 0.0), (0.0, up), 0.0
        return math.sqrt(ve_i * down), (math.sqrt(ve_i * down), 0.0), (down, up), 1.0


def _r(value):
    return None if 0 < value <= 1 else "must lie in (0, 1]"


def _seed(value):
    return None if value is None or 0 <= value < 2**63 else "must be None or an integer in [0, 2**63)"


class DPMPPSDESampler(_TwoStageDPMPP):
    name = "dpmpp_sde"
    aliases = ("dpmsolver_sde", "dpmpp_sde_gpu")  # ComfyUI's _gpu: the same tree drawn on the GPU
    description = (
        "DPM-Solver++ SDE (k-diffusion sample_dpmpp_sde, diffusers DPMSolverSDE): two ancestral DPM-Solver++ "
        "stages per step with Brownian-tree noise"
    )
    options = {
        "eta": ETA,
        "s_noise": S_NOISE,
        "r": Option(0.5, (float,), "the intermediate level σ̃_i^{1−r} σ̃_{i+1}^r, 0 < r ≤ 1 (k-diffusion's r)", _r),
        "noise_sampler_seed": Option(
            None,
            (int, type(None)),
            "seed of the Brownian path (diffusers' noise_sampler_seed); None: the step generator's initial "
            "seed, or a random one without a generator",
            _seed,
        ),
    }

    def levels(self, ve_i, ve_next):
        if ve_next == 0.0:  # Euler to σ̃ = 0: x̃ = D_i
            return None, (0.0, 0.0), (0.0, 0.0), 0.0
        r, eta = self.opts["r"], self.opts["eta"]
        ve_mid = math.exp((1.0 - r) * math.log(ve_i) + r * math.log(ve_next))
        return ve_mid, ancestral_step(ve_i, ve_mid, eta), ancestral_step(ve_i, ve_next, eta), 1.0 / (2.0 * r)

    def prepare(self, grid):
        """As the base, plus the Brownian path's interval (the grid's positive σ̃, in float32) and each stage's
        query levels, computed in float32 as diffusers' DPMSolverSDEScheduler computes them (module docstring)."""
        times = super().prepare(grid)
        ve32 = self.ve.to(torch.float32)
        positive = ve32[ve32 > 0]
        self.brownian_range = (float(positive.min()), float(positive.max()))
        tau = ve32.log().neg()  # −log σ̃ (+∞ at σ̃ = 0), float32 as diffusers' t_fn
        r = torch.tensor(self.opts["r"], dtype=torch.float32)
        self.queries = []
        for i in range(len(self.steps)):
            if ve32[i + 1] == 0.0:
                self.queries.append(None)
                continue
            tau_mid = tau[i] + (tau[i + 1] - tau[i]) * r
            start, mid, end = (float(v.neg().exp()) for v in (tau[i], tau_mid, tau[i + 1]))
            if not start > mid > end:
                raise ValueError(
                    f"sampler 'dpmpp_sde': the noise levels σ̃ = {float(ve32[i])!r} and {float(ve32[i + 1])!r} of "
                    f"steps {i} and {i + 1} are too close to draw Brownian noise between them in float32; use fewer "
                    "steps"
                )
            self.queries.append(((start, mid), (start, end)))
        return times

    def start_loop(self):
        lo, hi = self.brownian_range  # equal on a one-step grid to σ̃ = 0, which draws nothing
        self.brownian = BrownianTreeNoise(lo, hi, seed=self.opts["noise_sampler_seed"]) if lo < hi else None

    def draw(self, sample, step, stage):
        if self.noise_sampler is not None:  # the functional API's noise_sampler replaces every draw
            return self.noise_like(sample)
        return self.brownian(sample, *self.queries[step][stage], self.generator)
