r"""``pc``: the predictor–corrector sampler of score-SDE (Song et al. 2021, Algorithms 2–3), for any schedule.

At each evaluation time t_i of the grid the sampler first runs ``correct_steps`` Langevin corrector steps, then
one predictor step towards t_{i+1}; every one of them is a model evaluation at t_i (so ``timesteps`` repeats
each time ``correct_steps + 1`` times and ``order = correct_steps + 1``). The score always comes from the
denoised estimate, ∇log p_t(x) = (s D − x)/σ² (Tweedie's formula; Karras et al. 2022, eq. 3).

Corrector (score-SDE ``LangevinCorrector``, Song et al. 2021, Algorithms 2–3), in the model's own space:

    ε = 2 (snr · ‖z‖ / ‖∇log p‖)²,    x ← x + ε ∇log p + √(2ε) z,

with the norms taken per sample over all but the batch dimension and averaged over the batch, as score-SDE and
diffusers do. The batch average matters: a per-sample step ε_b ∝ 1/‖∇log p(x_b)‖² depends on the sample's own
state, which biases the chain's stationary law (measured on a 16-d Gaussian: +28 % variance, against +3 % with
the batch average), so no per-sample variant is offered. The rule is invariant under x → c x, so the step is
the same in the VE view. Being an unadjusted Langevin step, it leaves a stationary variance bias of about
snr² (ε ≈ 2 snr² v for a Gaussian of variance v gives v/(1 − snr²)).
(score-SDE additionally scales VP correctors by α_i = 1 − β_i, a 1 + O(1/N) factor; diffusers and we do not.)

Predictors:

* ``reverse_diffusion`` (score-SDE ``ReverseDiffusionPredictor``): one step of the reverse of the forward
  Markov chain (Song et al. 2021, App. E), taken in the VE view x̃ = x/s, where that chain is SMLD's
  x̃_i = x̃_{i−1} + √(σ̃_i² − σ̃_{i−1}²) z with no drift (Song et al. 2021, eq. 8):
  x̃' = x̃ + (σ̃_a² − σ̃_b²) ∇_x̃ log p + √(σ̃_a² − σ̃_b²) z, then x' = s(t_{i+1}) x̃'. The chain's levels
  (σ̃_a, σ̃_b) follow ``discretization``:
  ``"score_sde"`` — score-SDE's ``VESDE.discretize`` (and diffusers' ScoreSdeVeScheduler): the N = number of
  grid evaluation times levels τ_j = j/(N − 1) of the unit interval, the step from t_i uses
  j = ⌊t_i (N − 1)⌋ (computed from float32 t_i, as they do), σ̃_a = σ̃(τ_j), σ̃_b = σ̃(τ_{j−1}) and σ̃_b = 0 for
  j = 0. On the score-SDE grid t_i = linspace(1, ε, N) this is the grid itself shifted by at most ε.
  ``"grid"`` — the grid's own levels, σ̃_a = σ̃(t_i), σ̃_b = σ̃(t_{i+1}).
  ``"auto"`` (the default) — ``"score_sde"`` where its levels lie within a tenth of a step of the grid's own
  evaluation times (score-SDE's grid linspace(1, ε, N) with a small ε, as converted from ScoreSdeVeScheduler), else
  ``"grid"``. On any other grid the score-SDE levels belong to other times than the sample's: on a Karras or
  λ-uniform grid (zero terminal SNR, 10 steps) the output std was 890 / 741 for a target of 0.5, and the
  ``trailing`` grid (linspace(1, 1/N, N), whose last level ⌊·⌋ maps to τ = 0) gave 47.
* ``euler_maruyama``: Euler–Maruyama on the reverse SDE dx = [f x − g² ∇log p] dt + g dw̄ (Song et al. 2021,
  eq. 6) from t_i to t_{i+1}, in the model's own space with the schedule's f and g² at t_i (the η = 1 step of
  :mod:`unisde.samplers.sde`, from :func:`unisde.core.kernels.reverse_sde_increments`).

Zero terminal SNR (rectified flow, zero-SNR tables): a step from t_i ≥ t_end, where s = 0, has no chain increment
(σ̃_a = ∞) and no finite f, g²; with the capped values (σ̃_a = 4096) the reverse-diffusion step adds noise of std
≈ 4096 s(t_{i+1}) (400× the marginal's at 10 steps: output std 2.7 for data std 0.2). Such a step takes the forward
process's exact Gaussian transition given x0 = D instead, the posterior q(x_{t'} | x_t, x0 = D) (Ho et al. 2020,
eqs. 6–7 [DDPM]; :func:`unisde.core.kernels.posterior_coefficients`), with either predictor: from s = 0 it is
x' = s(t') D + σ(t') z. Every other step, and every step of a VE or VP schedule (the ScoreSdeVe twin), is unchanged.

The last predictor step returns its mean (no noise), as score-SDE's ``noise_removal`` and diffusers'
ScoreSdeVePipeline (which outputs ``prev_sample_mean``) do. With the ScoreSdeVe config converted by
:class:`unisde.UnifiedScheduler` (VE schedule, score parameterisation, ``uniform_t`` grid from 1 to
``sampling_eps``) this reproduces ScoreSdeVeScheduler + ScoreSdeVePipeline draw for draw.

``snr`` and ``correct_steps`` share their names with ScoreSdeVe config keys, so through UnifiedScheduler they
come from its config (diffusers' defaults 0.15 and 1) unless given in ``sampler_options``; the option default
0.16 (score-SDE's VE setting for CIFAR-10) applies when the sampler is used directly.
"""

from __future__ import annotations

import math

import torch

from unisde.core.kernels import posterior_coefficients, reverse_sde_increments, zero_terminal_snr
from unisde.samplers.base import Option, Sampler, non_negative


def _count(value):
    return None if value >= 0 else "must be >= 0"


class PCSampler(Sampler):
    name = "pc"
    description = "score-SDE predictor-corrector: reverse-diffusion / Euler-Maruyama predictor + Langevin corrector"
    default_grid = "uniform_t"
    stochastic = True
    options = {
        "predictor": Option(
            "reverse_diffusion",
            (str,),
            "reverse_diffusion or euler_maruyama",
            choices=("reverse_diffusion", "euler_maruyama"),
        ),
        "snr": Option(0.16, (float,), "corrector signal-to-noise ratio r: ε = 2 (r ‖z‖/‖∇log p‖)²", non_negative),
        "correct_steps": Option(1, (int,), "Langevin corrector steps before each predictor step", _count),
        "discretization": Option(
            "auto",
            (str,),
            "predictor levels: score_sde (score-SDE/diffusers), grid, or auto "
            "(score_sde where it matches the grid, else grid)",
            choices=("auto", "score_sde", "grid"),
        ),
    }

    @property
    def order(self):
        return int(self.opts["correct_steps"]) + 1

    def prepare(self, grid):
        self.grid = self.floats(grid)
        n = grid.numel() - 1
        s, sigma = self.grid_coefficients(grid)
        if float(sigma[n - 1]) <= 0:
            raise ValueError(
                f"sampler 'pc' needs positive noise levels; the grid's last evaluation time t={self.grid[n - 1]:.6g} "
                "has σ = 0"
            )
        var = sigma**2
        # Predictor coefficients as x' = a x + b D + c z.
        if self.opts["predictor"] == "reverse_diffusion":
            ve = sigma / s
            # ⌊t (N − 1)⌋ from the float32 times, exactly as score-SDE / diffusers index their discrete σ's.
            t32 = torch.tensor(self.grid[:-1], dtype=torch.float32)
            j = (t32 * (n - 1)).long().clamp(0, n - 1).to(torch.float64)
            levels = torch.linspace(0.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
            tau_a = levels[j.long()]
            tau_b = levels[(j.long() - 1).clamp(min=0)]
            mode = self.opts["discretization"]
            if mode == "auto":
                times = grid[:-1].to(torch.float64)
                steps = times[:-1] - times[1:]
                aligned = n > 1 and bool(((tau_a - times).abs() <= 0.1 * steps.min()).all())
                mode = "score_sde" if aligned else "grid"
            if mode == "score_sde":
                ve_a = self.schedule.ve_sigma(tau_a)
                ve_b = torch.where(j > 0, self.schedule.ve_sigma(tau_b), torch.zeros_like(tau_b))
            else:
                ve_a, ve_b = ve[:-1], ve[1:]
            g2 = (ve_a**2 - ve_b**2).clamp(min=0)
            # x̃ = x/s_i; x̃' = x̃ + g2 (D − x̃)/σ̃_i² + √g2 z; x' = s_{i+1} x̃'.
            w = g2 / ve[:-1] ** 2
            a = s[1:] / s[:-1] * (1 - w)
            b = s[1:] * w
            c = s[1:] * g2.sqrt()
        else:
            # x' = x − [f x − g² (s D − x)/σ²] Δt + g √Δt z: the η = 1 Euler–Maruyama step
            f_dt, w, c = reverse_sde_increments(self.schedule, grid, sigma)
            a = 1 - f_dt - w
            b = w * s[:-1]
        if zero_terminal_snr(self.schedule):
            # A step from zero SNR (t_i ≥ t_end, s(t_i) = 0 up to the cap) has no chain increment or SDE coefficient
            # to use: σ̃_a = ∞ and f, g² diverge, and the capped values (σ̃_a = 4096) add noise of std ≈ 4096 s(t_{i+1})
            # (output std 2.7 for 0.2 on a rectified flow at 10 steps). It takes the forward process's exact Gaussian
            # transition given x0 = D instead (Ho et al. 2020, eqs. 6–7 [DDPM]), which from s = 0 is
            # x' = s(t_{i+1}) D + σ(t_{i+1}) z: at zero SNR x_t carries nothing about x0.
            se, sge = self.grid_coefficients(grid, exact=True)
            c_x0, c_x, _, post_var = posterior_coefficients(se[:-1], sge[:-1], se[1:], sge[1:])
            at_zero_snr = grid[:-1] >= self.schedule.t_end
            a, b, c = (
                torch.where(at_zero_snr, c_x, a),
                torch.where(at_zero_snr, c_x0, b),
                torch.where(at_zero_snr, post_var.sqrt(), c),
            )
        self.pred = list(zip(self.floats(a), self.floats(b), self.floats(c)))
        self.s_t, self.var_t = self.floats(s[:-1]), self.floats(var[:-1])
        per_level = int(self.opts["correct_steps"]) + 1
        self.step_starts = {i * per_level: i for i in range(n)}
        return torch.tensor([self.grid[i] for i in range(n) for _ in range(per_level)], dtype=torch.float64)

    @staticmethod
    def _norm(v: torch.Tensor) -> torch.Tensor:
        """Batch mean of the per-sample Euclidean norms (score-SDE's LangevinCorrector). An empty batch gives NaN,
        which multiplies nothing: the result of a batch of 0 is empty, as with every sampler."""
        return v.reshape(v.shape[0], math.prod(v.shape[1:])).norm(dim=-1).mean()

    def loop(self, x, start=0):
        snr, last = self.opts["snr"], len(self.pred) - 1
        for i in range(self.entry_step(start), len(self.pred)):
            for _ in range(int(self.opts["correct_steps"])):  # Langevin corrector at t_i
                x, denoised = yield x
                score = (denoised * self.s_t[i] - x) * (1.0 / self.var_t[i])
                z = self.noise_like(x)
                step_size = 2.0 * (snr * self._norm(z) / self._norm(score)) ** 2
                x = x + step_size * score + (2.0 * step_size).sqrt() * z
            x, denoised = yield x  # predictor t_i → t_{i+1}
            a, b, c = self.pred[i]
            mean = x * a + denoised * b
            # the last step returns its mean: score-SDE's noise removal / diffusers' prev_sample_mean
            x = mean if i == last else mean + self.noise_like(x) * c
        return x
