r"""Noise-free accuracy: a sampler's error measured exactly, with no sampling noise in the number.

Gaussian targets: the exact output law
--------------------------------------
The exact denoiser of Gaussian data N(μ, Σ) is affine in x at every time, and every sampler step is a linear
combination of the current sample, earlier samples, denoised estimates and fresh noise. A sampler run on the
exact model is therefore an affine map of its inputs — the standard normal start z ∈ R^d and the noise draws
w_1 … w_m ∈ R^d it makes along the way (rows of a batch do not interact):

    x_out = b + A_z z + Σ_j A_j w_j,      z, w_j ~ N(0, I) independent,

so its output law is exactly N(b, C) with C = A_z A_zᵀ + Σ_j A_j A_jᵀ. :func:`affine_law` reads b and the
columns of A off one batched run in float64 (where the map is affine to rounding): row 0 has z = 0 and every
draw 0 (→ b), row i has z = e_i (→ b + column i of A_z), and for every draw that matters one row per unit vector
of that draw (→ the columns of A_j), fed through a :class:`NoiseFeeder` that replaces the sampler's noise
draws (unisde samplers: the ``noise_sampler`` hook of :func:`unisde.sample`; diffusers schedulers: their
module's ``randn_tensor``, swapped for the duration of the run; a Brownian tree's increments, DPMSolverSDE's and
unisde's ``dpmpp_sde``: a Brownian path built from the draws with its exact law, :class:`PrescribedBrownian`).
The draws are counted first (a one-row run), draws the output does not depend on (EulerDiscrete draws noise it
never adds when ``s_churn = 0``) are found by one probe row each and get no columns, and one more row with a random
start and random draws checks the whole construction: its output must equal b + A (z, w) to rounding
(``residual``). A sampler that fails the check is not affine (a batch-dependent step size, clipping, float32
arithmetic inside) and is measured by the sampling metric instead.

The distances to the data law are then closed forms (Dowson & Landau 1982; Givens & Shortt 1984, Prop. 7):

    W₂²(N(b, C), N(μ, Σ)) = ‖b − μ‖² + tr(C + Σ − 2 (Σ^{1/2} C Σ^{1/2})^{1/2})
    KL(N(b, C) ‖ N(μ, Σ)) = ½ [tr(Σ⁻¹C) + (μ − b)ᵀ Σ⁻¹ (μ − b) − d + ln det Σ − ln det C].

The trace form cancels catastrophically when C ≈ Σ (a W₂ of 1e-7 sits below the rounding of tr Σ ≈ 16 in
float64), so :func:`gaussian_w2` evaluates the same quantity as a sum of squares: with T the optimal map
(T Σ T = C, T = Σ^{-1/2} R Σ^{-1/2}, R = (Σ^{1/2} C Σ^{1/2})^{1/2}), the covariance term equals
‖(T − I) Σ^{1/2}‖_F² = ‖Σ^{-1/2}(R − Σ)‖_F², and R comes from the singular values of Σ^{1/2} A (never from C).

Any target: trajectory error against the converged probability-flow ODE
------------------------------------------------------------------------
For non-Gaussian data the output law has no closed form, but a deterministic sampler is a discretisation of
the probability-flow ODE, and its error is measurable sample by sample: the reference is the same ODE solved
from the same start — the sample the sampler hands to its first model call, at that call's time — by an
adaptive float64 Dormand–Prince solver ([DoPri], :func:`unisde.ode.solve_ivp`) at a tight tolerance, shown converged by
solving again at a 100× tighter one. The error is the RMS over a fixed batch of starts of ‖x_out − x_ref‖
(the whole vector, in data units — the same units as W₂, which it bounds: the pair (x_out, x_ref) is a coupling).

The reference is solved in one view for every schedule (so a table, EDM, a rectified flow or a
zero-terminal-SNR start at t = 1 all reduce to one ODE): with y = x / √(s² + σ²) and τ = atan2(σ, s),

    y = cos τ · x0 + sin τ · ε,      dy/dτ = E[−sin τ · x0 + cos τ · ε | y] = (cos τ · y − D(y; τ)) / sin τ,

where D(y; τ) = E[x0 | y] is the exact denoiser at VE noise level σ̃ = tan τ (the velocity of the conditional
path averaged over the posterior is the probability-flow velocity; Liu et al. 2023 [RF], Lipman et al. 2023
[FM]). The right-hand side tends to 0 as τ → 0 for data with a density (a Gaussian component of variance λ gives
τ/(λ + τ²)·(y − μ)), and it is taken as 0 there. For Gaussian data this ODE has the closed-form solution
(:func:`gaussian_flow`): in Σ's eigenbasis each coordinate of y − cos τ · μ scales with √(λ cos²τ + sin²τ), so
an exact PF-ODE solve from a start law N(0, S Sᵀ) at τ₀ ends at N(μ − cos τ₀ G μ, G S Sᵀ G) with
G = U diag(√(λ / (λ cos²τ₀ + sin²τ₀))) Uᵀ. Its W₂ to the data law is the *prior floor* of a contestant: what
an exact solver starting where (and from what) the contestant starts would score — the price of starting at a
t < 1 or from N(0, (s² + σ²) I) instead of the true p_t. The contestant's W₂ to this exact-solve law
(``w2_solver``) is its discretisation error alone: on diffusers' DDPM table (σ̃_max ≈ 157) the prior floor of a
64-D Gaussian is ~0.015, so at NFE ≳ 50 the W₂ to the data law mostly measures the start, and a solver can land
below the floor by cancelling errors against it.

The same reference serves a trained checkpoint: :func:`model_denoiser` turns any raw model (its
parameterisation and schedule) into D(y; τ), so the reference is that model's own PF-ODE and the trajectory
error is the sampler's alone; :class:`NetworkODE` solves the same ODE in the network's own time t (the benchmark's
checkpoint targets), and :class:`FrechetReference` measures their samples against real data. Stochastic samplers on
non-Gaussian targets have no per-sample reference; they keep the sampling metric (sliced W₂ against exact samples,
with its noise floor; the Fréchet distance to real data on a trained checkpoint), reported as such.
"""

from __future__ import annotations

import math
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from unisde.core.schedule import NoiseSchedule

DTYPE = torch.float64

# ---------------------------------------------------------------------------------------------- Gaussian laws


def _sym(m: torch.Tensor) -> torch.Tensor:
    return 0.5 * (m + m.T)


def psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (float64; eigenvalues below 0 from rounding clamped)."""
    lam, basis = torch.linalg.eigh(_sym(cov.to(DTYPE)))
    return (basis * lam.clamp(min=0).sqrt()) @ basis.T


def gaussian_w2(
    mean: torch.Tensor,
    cov: torch.Tensor,
    data_mean: torch.Tensor,
    data_cov: torch.Tensor,
    factor: torch.Tensor | None = None,
) -> float:
    """Exact W₂(N(mean, cov), N(data_mean, data_cov)) in the data's units (the whole vector, not per coordinate).

    ``factor``: optionally A with cov = A Aᵀ (d × D), which is used instead of ``cov`` for the square root
    (more accurate). With a non-singular ``data_cov`` the covariance term is evaluated as the sum of squares
    ‖Σ^{-1/2}(R − Σ)‖_F² (module doc), which stays accurate when the two laws are close; a singular data
    covariance falls back to the trace form.
    """
    mean, data_mean, data_cov = mean.to(DTYPE).flatten(), data_mean.to(DTYPE).flatten(), _sym(data_cov.to(DTYPE))
    lam, basis = torch.linalg.eigh(data_cov)
    root = (basis * lam.clamp(min=0).sqrt()) @ basis.T
    if factor is not None:
        u, sv, _ = torch.linalg.svd(root @ factor.to(DTYPE), full_matrices=False)
        r = (u * sv) @ u.T
        cov = factor.to(DTYPE) @ factor.to(DTYPE).T
    else:
        r = psd_sqrt(root @ _sym(cov.to(DTYPE)) @ root)
    mean_term = float(((mean - data_mean) ** 2).sum())
    if float(lam.min()) > 1e-12 * max(1.0, float(lam.max())):
        inv_root = (basis / lam.sqrt()) @ basis.T
        cov_term = float(((inv_root @ (r - data_cov)) ** 2).sum())
    else:
        cov_term = max(0.0, float(torch.trace(_sym(cov.to(DTYPE))) + torch.trace(data_cov) - 2 * torch.trace(r)))
    return math.sqrt(mean_term + cov_term)


def gaussian_kl(mean: torch.Tensor, cov: torch.Tensor, data_mean: torch.Tensor, data_cov: torch.Tensor) -> float:
    """KL(N(mean, cov) ‖ N(data_mean, data_cov)) in nats; ``inf`` when ``cov`` is singular (a law on a subspace)."""
    d = mean.numel()
    cov, data_cov = _sym(cov.to(DTYPE)), _sym(data_cov.to(DTYPE))
    lam_c = torch.linalg.eigvalsh(cov)
    if float(lam_c.min()) <= 1e-14 * max(1.0, float(lam_c.max())):
        return math.inf
    chol = torch.linalg.cholesky(data_cov)
    diff = (data_mean.to(DTYPE) - mean.to(DTYPE)).flatten()
    whitened = torch.linalg.solve_triangular(chol, torch.linalg.cholesky(cov), upper=False)
    maha = torch.linalg.solve_triangular(chol, diff[:, None], upper=False)
    logdet_ratio = 2 * float(torch.log(torch.diagonal(chol)).sum()) - float(torch.log(lam_c).sum())
    return 0.5 * (float((whitened**2).sum()) + float((maha**2).sum()) - d + logdet_ratio)


def gaussian_flow(data_mean: torch.Tensor, data_cov: torch.Tensor, tau0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact probability-flow map of Gaussian data N(μ, Σ) from angle τ₀ to clean data (module doc):
    x0 = offset + G y₀ for y₀ = x / √(s² + σ²) at τ₀ = atan2(σ, s). Returns (offset (d,), G (d, d)), float64."""
    lam, basis = torch.linalg.eigh(_sym(data_cov.to(DTYPE)))
    c, s = math.cos(tau0), math.sin(tau0)
    gain = torch.sqrt(lam.clamp(min=0) / (lam.clamp(min=0) * c * c + s * s))
    g = (basis * gain) @ basis.T
    mu = data_mean.to(DTYPE).flatten()
    return mu - c * (g @ mu), g


# ---------------------------------------------------------------------------------------------- reference ODE


class _TrigSchedule(NoiseSchedule):
    """s = cos(πt/2), σ = sin(πt/2): the view of the reference solve (t = 2τ/π), internal to the benchmark."""

    name = "trig"

    def __init__(self):
        super().__init__()

    def _s(self, t):
        return torch.cos(t * (math.pi / 2))

    def _sigma(self, t):
        return torch.sin(t * (math.pi / 2))

    def _f(self, t):
        return -(math.pi / 2) * torch.tan(t.clamp(max=1 - 1e-9) * (math.pi / 2))

    def _g2(self, t):
        return -2 * self._f(t)


_TRIG = None


def _trig() -> _TrigSchedule:
    global _TRIG
    if _TRIG is None:
        _TRIG = _TrigSchedule()
    return _TRIG


def analytic_denoiser(distribution):
    """The trig-view denoiser D(y; τ) = E[x0 | cos τ · x0 + sin τ · ε = y] of an analytic distribution
    (:mod:`unisde.analytic`): ``denoise(y (B, d), tau) -> x̂0 (B, d)``."""
    trig, shape = _trig(), distribution.event_shape

    def denoise(y, tau):
        return distribution.denoise(y.reshape(y.shape[0], *shape), 2 * tau / math.pi, trig).reshape(y.shape)

    return denoise


def t_of_angle(schedule, tau: float) -> torch.Tensor:
    """The time t (0-d, float64) of ``schedule`` at the reference's angle τ = atan2(σ(t), s(t)), i.e. VE noise level
    σ̃(t) = tan τ: ``schedule.t_from_sigma`` within the schedule's σ̃ range; beyond σ̃(t_end) on a schedule with
    s(1) = 0 (``t_end`` < 1, where σ̃ is capped: the rectified flow's 4096), bisection of atan2(σ, s) on [t_end, 1]
    (60 halvings), so that τ → π/2 reaches t = 1 rather than stopping at the cap."""
    t_end = float(getattr(schedule, "t_end", 1.0))
    if t_end < 1.0:
        end = torch.tensor(t_end, dtype=DTYPE)
        if tau > math.atan2(float(schedule.sigma(end)), float(schedule.s(end))):
            lo, hi = t_end, 1.0
            for _ in range(60):
                mid = torch.tensor(0.5 * (lo + hi), dtype=DTYPE)
                if math.atan2(float(schedule.sigma(mid)), float(schedule.s(mid))) < tau:
                    lo = float(mid)
                else:
                    hi = float(mid)
            return torch.tensor(0.5 * (lo + hi), dtype=DTYPE)
    return schedule.t_from_sigma(torch.tensor(math.tan(tau), dtype=DTYPE)).reshape(())


def model_denoiser(model, parameterization, schedule, event_shape):
    """The trig-view denoiser of any model (a trained checkpoint: ``model(model_input, timestep) -> raw output``
    under ``parameterization`` and ``schedule``): at angle τ it is evaluated at the time t with VE noise level
    σ̃(t) = tan τ, on x = y · √(s² + σ²), and its output converted to x̂0 — so :func:`pf_ode_reference` solves that
    model's own probability-flow ODE (the time of τ: :func:`t_of_angle`)."""
    from unisde.plugins import get_parameterization

    param = get_parameterization(parameterization)

    def denoise(y, tau):
        t = t_of_angle(schedule, tau)
        scale = math.hypot(float(schedule.s(t)), float(schedule.sigma(t)))
        a, b = (float(v) for v in param.coefficients(schedule, t))
        x = y.reshape(y.shape[0], *event_shape) * scale
        out = model(x * float(param.input_scale(schedule, t)), param.model_time(schedule, t))
        out = getattr(out, "sample", out)
        return (a * x + b * out.to(DTYPE)).reshape(y.shape)

    return denoise


class NetworkODE:
    r"""The probability-flow ODE of a trained network (``model(model_input, timestep) -> raw output`` under
    ``parameterization`` and ``schedule``, samples of ``event_shape``) in the reference's variable y = x/√(s² + σ²),
    solved in the network's own time t rather than in τ: with τ(t) = atan2(σ, s),

        dy/dt = τ′(t) · (cos τ · y − D(y; τ)) / sin τ,   τ′ = (σ′s − σs′)/(s² + σ²),

    the same ODE as :func:`pf_ode_reference`'s (the change of variable τ = τ(t)), with the network evaluated at its
    own t (no inversion t(τ) per evaluation: on a table that bisection cost a third of a step) and in the variable
    its time embedding is periodic in. ``solve(tau0, y0, rtol)``: clean samples (B, d) from y₀ at angle τ₀ (its time
    :func:`t_of_angle`), :func:`unisde.ode.solve_ivp` from t₀ to 0 at ``rtol`` = ``atol``, float64."""

    def __init__(self, model, parameterization, schedule, event_shape):
        from unisde.plugins import get_parameterization

        self.model, self.param = model, get_parameterization(parameterization)
        self.schedule, self.event_shape = schedule, tuple(event_shape)

    def velocity(self, t: float, y: torch.Tensor) -> torch.Tensor:
        from unisde.parameterizations.builtin import schedule_derivatives

        sched, param = self.schedule, self.param
        tt = torch.tensor(t, dtype=DTYPE)
        s, sigma = float(sched.s(tt)), float(sched.sigma(tt))
        if sigma <= 0.0:
            return torch.zeros_like(y)
        ds, dsigma = (float(v) for v in schedule_derivatives(sched, tt))
        norm2 = s * s + sigma * sigma
        r = math.sqrt(norm2)
        a, b = (float(v) for v in param.coefficients(sched, tt))
        x = y.reshape(y.shape[0], *self.event_shape) * r
        out = self.model(x * float(param.input_scale(sched, tt)), param.model_time(sched, tt))
        out = getattr(out, "sample", out)
        x0 = (a * x + b * out.to(DTYPE)).reshape(y.shape)
        return (dsigma * s - sigma * ds) / norm2 * (s / r * y - x0) / (sigma / r)

    def solve(self, tau0: float, y0: torch.Tensor, rtol: float) -> torch.Tensor:
        from unisde.ode import solve_ivp

        t0 = float(t_of_angle(self.schedule, tau0))
        sol = solve_ivp(self.velocity, t0, 0.0, y0.to(DTYPE), rtol=rtol, atol=rtol, max_steps=200_000)
        return sol.y[-1]


def pf_ode_reference(target, tau0: float, y0: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Clean samples (B, d) from the probability-flow ODE started at y₀ = x / √(s² + σ²) (B, d), angle τ₀,
    solved in float64 by :func:`unisde.ode.solve_ivp` at ``rtol`` = ``atol``. ``target``: an analytic distribution,
    a trig-view denoiser ``denoise(y, tau) -> x̂0`` (:func:`model_denoiser` for a trained model), or an object with
    its own ``solve(tau0, y0, rtol)`` (:class:`NetworkODE`)."""
    from unisde.ode import solve_ivp

    if hasattr(target, "solve"):
        return target.solve(tau0, y0, rtol)

    denoise = analytic_denoiser(target) if hasattr(target, "event_shape") and hasattr(target, "denoise") else target

    def velocity(tau, y):
        sin = math.sin(tau)
        if sin <= 0.0:
            return torch.zeros_like(y)
        return (math.cos(tau) * y - denoise(y, tau)) / sin

    sol = solve_ivp(velocity, float(tau0), 0.0, y0.to(DTYPE), rtol=rtol, atol=rtol, max_steps=200_000)
    return sol.y[-1]


@dataclass
class Reference:
    """A converged reference solve: ``x`` (B, d) at ``rtol``; ``error``: RMS over the batch of ‖x − x'‖ with x'
    solved at the looser ``check_rtol`` (an upper bound on the error of ``x``: the solver converges)."""

    x: torch.Tensor
    error: float
    rtol: float
    check_rtol: float


class ReferenceCache:
    """Reference solutions of one target's PF-ODE (``target`` as for :func:`pf_ode_reference`), cached by start:
    contestants share a few start angles τ₀ and (up to rounding) the same y₀ = z. A start within ``start_rtol``
    (relative, max norm; default 1e-12) of a cached one at an angle within ``tau_rtol`` (relative; default 0: the
    same float) reuses its solution. ``solves`` counts the ODE solves (two per start), ``max_error`` is the largest
    ``Reference.error`` met (the convergence shown)."""

    def __init__(
        self, target, rtol: float = 1e-9, check_rtol: float = 1e-7, start_rtol: float = 1e-12, tau_rtol: float = 0.0
    ):
        self.target, self.rtol, self.check_rtol = target, rtol, check_rtol
        self.start_rtol, self.tau_rtol = start_rtol, tau_rtol
        self._cache: dict = {}
        self.solves = 0
        self.max_error = 0.0

    def get(self, tau0: float, y0: torch.Tensor) -> Reference:
        y0 = y0.to(DTYPE)
        tau0 = float(tau0)
        if self.tau_rtol > 0:  # an angle within tau_rtol of a cached one stands for it
            tau0 = next((t for t in self._cache if abs(t - tau0) <= self.tau_rtol * max(1.0, abs(t))), tau0)
        entries = self._cache.setdefault(tau0, [])
        for start, ref in entries:
            close = float((start - y0).abs().max()) <= self.start_rtol * max(1.0, float(start.abs().max()))
            if start.shape == y0.shape and close:
                return ref
        x = pf_ode_reference(self.target, tau0, y0, self.rtol)
        loose = pf_ode_reference(self.target, tau0, y0, self.check_rtol)
        self.solves += 2
        ref = Reference(x, float(((x - loose) ** 2).sum(1).mean().sqrt()), self.rtol, self.check_rtol)
        self.max_error = max(self.max_error, ref.error)
        entries.append((y0, ref))
        return ref


# ---------------------------------------------------------------------------------------------- Fréchet distance


class FrechetReference:
    r"""The Fréchet distance of sample sets to one fixed reference set Y (rows; float64), the distance of ``unisde
    demo`` (:func:`unisde.demo.frechet_distance`, the FID formula of Heusel et al. 2017 on raw features) between
    Gaussian fits N(μ_X, C_X), N(μ_Y, C_Y) with unbiased covariances:

        FD = ‖μ_X − μ_Y‖² + tr C_X + tr C_Y − 2 tr (C_Y^{1/2} C_X C_Y^{1/2})^{1/2}

    (squared data units; the last trace is tr (C_X C_Y)^{1/2}: C_X C_Y and C_Y^{1/2} C_X C_Y^{1/2} are similar).
    Y's moments and C_Y^{1/2} are computed once; each distance is one symmetric eigen-decomposition (the square root
    of the symmetric PSD product, eigenvalues below 0 from rounding clamped), where SciPy's ``sqrtm`` of the
    non-symmetric product costs ~5× more."""

    def __init__(self, y: torch.Tensor):
        y = y.to(DTYPE).reshape(y.shape[0], -1)
        self.mean, cov = y.mean(0), torch.cov(y.T)
        self.trace, self.root = float(torch.trace(cov)), psd_sqrt(cov)

    def distance(self, x: torch.Tensor) -> float:
        x = x.to(DTYPE).reshape(x.shape[0], -1)
        cov = torch.cov(x.T)
        lam = torch.linalg.eigvalsh(_sym(self.root @ cov @ self.root))
        cross = float(lam.clamp(min=0).sqrt().sum())
        return float(((x.mean(0) - self.mean) ** 2).sum()) + float(torch.trace(cov)) + self.trace - 2 * cross


# ---------------------------------------------------------------------------------------------- driving a run


class NoiseFeeder:
    """Stands in for every noise draw of one run: draw j returns ``draws[j]`` reshaped to the requested shape
    (zeros when no draw j was prescribed) and counts the draws in ``count``."""

    def __init__(self, draws: list | None = None):
        self.draws = draws or []
        self.count = 0

    def __call__(self, shape, dtype, device) -> torch.Tensor:
        j = self.count
        self.count += 1
        if j < len(self.draws) and self.draws[j] is not None:
            w = self.draws[j]
            if w.numel() != math.prod(shape):
                raise ValueError(f"noise draw {j} has shape {tuple(shape)}, not one row per sample of the batch")
            return w.reshape(shape).to(dtype=dtype, device=device)
        return torch.zeros(shape, dtype=dtype, device=device)


class _Draws(NoiseFeeder):
    """Standard normal draws from a generator seeded with ``seed`` (float64, then cast)."""

    def __init__(self, seed: int):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, shape, dtype, device) -> torch.Tensor:
        self.count += 1
        return torch.randn(tuple(shape), generator=self.generator, dtype=DTYPE).to(dtype=dtype, device=device)


class PrescribedBrownian:
    """Stands in for diffusers' ``BrownianTreeNoiseSampler`` (DPMSolverSDE's noise, and unisde's ``dpmpp_sde``,
    which queries the same class, :mod:`unisde.samplers.brownian`) in a run whose draws a :class:`NoiseFeeder`
    prescribes: one Brownian path W over the queried levels, built from the feeder's draws ξ (each a standard normal
    per row) with the exact joint law of Brownian motion — W = 0 at the interval's low end; a level beyond the
    known ones extends the path by √Δ ξ; a level between two known ones l < u < r is the Brownian bridge

        W(u) = W(l) + (u − l)/(r − l) · (W(r) − W(l)) + √((u − l)(r − u)/(r − l)) · ξ.

    A query returns the normalised increment (W(t₁) − W(t₀))/√|t₁ − t₀|, as the tree does: standard normal, and
    correlated with the others as overlapping intervals are (a two-stage step queries [σ̃_m, σ̃_i] and
    [σ̃_{i+1}, σ̃_i]). The run stays affine in the draws, so :func:`affine_law` reads off the exact output law of the
    sampler driven by exact Brownian motion — the law torchsde's tree samples (it resolves query points to 1e-6).
    Replacing each query by an independent draw (the ``noise_sampler`` hook) would measure another sampler."""

    def __init__(self, feeder: NoiseFeeder, x: torch.Tensor, sigma_min, sigma_max, seed=None, transform=None):
        self.feeder, self.transform = feeder, transform or (lambda v: v)
        self.shape, self.dtype, self.device = tuple(x.shape), x.dtype, x.device
        ends = [float(self.transform(torch.as_tensor(v))) for v in (sigma_min, sigma_max)]
        self.path = {min(ends): torch.zeros(self.shape, dtype=DTYPE)}  # W at each level fixed so far

    def _at(self, u: float) -> torch.Tensor:
        if u in self.path:
            return self.path[u]
        left = max((k for k in self.path if k < u), default=None)
        right = min((k for k in self.path if k > u), default=None)
        xi = self.feeder(self.shape, DTYPE, "cpu").to(DTYPE)
        if right is None:
            w = self.path[left] + math.sqrt(u - left) * xi
        elif left is None:  # below the interval's low end: the same path extended downwards
            w = self.path[right] - math.sqrt(right - u) * xi
        else:
            a, b = u - left, right - u
            w = self.path[left] + (a / (a + b)) * (self.path[right] - self.path[left]) + math.sqrt(a * b / (a + b)) * xi
        self.path[u] = w
        return w

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = (float(self.transform(torch.as_tensor(v))) for v in (sigma, sigma_next))
        z = (self._at(t1) - self._at(t0)) / math.sqrt(abs(t1 - t0))
        return z.to(dtype=self.dtype, device=self.device)


_BROWNIAN_MODULE = "diffusers.schedulers.scheduling_dpmsolver_sde"


def feeds_noise(scheduler) -> bool:
    """Whether :func:`run_scheduler` can replace every noise draw of ``scheduler``: unisde samplers through
    their ``noise_sampler`` hook (a Brownian-noise sampler through :class:`PrescribedBrownian`), diffusers
    schedulers through their module's ``randn_tensor`` and ``BrownianTreeNoiseSampler`` (a module without them draws
    no noise that way; any other draw shows up in :func:`affine_law`'s check row). A module that uses a Brownian
    tree other than through ``BrownianTreeNoiseSampler`` cannot be prescribed."""
    if isinstance(scheduler, Prepared):
        scheduler = scheduler.snapshot
    if hasattr(scheduler, "_sampler") or hasattr(scheduler, "sample_exact"):
        return True  # sample_exact: k-diffusion's deterministic functions draw no noise that reaches the output
    module = sys.modules.get(type(scheduler).__module__)
    if module is None:
        return False
    return hasattr(module, "BrownianTreeNoiseSampler") or not any("BrownianTree" in name for name in vars(module))


@contextmanager
def _patched(module, name: str, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def _brownian(feeder: NoiseFeeder):
    return lambda x, sigma_min, sigma_max, seed=None, transform=None: PrescribedBrownian(
        feeder, x, sigma_min, sigma_max, seed, transform
    )


@contextmanager
def _noise_source(scheduler, feeder: NoiseFeeder | None):
    if feeder is None:
        yield
        return
    if hasattr(scheduler, "_sampler"):  # UnifiedScheduler: the sampler's hook (set after set_timesteps)
        sampler = scheduler._sampler
        if hasattr(sampler, "brownian_range"):  # Brownian noise (dpmpp_sde): its path, not independent draws
            import importlib

            with _patched(importlib.import_module(_BROWNIAN_MODULE), "BrownianTreeNoiseSampler", _brownian(feeder)):
                yield
            return
        sampler.noise_sampler = lambda like: feeder(like.shape, like.dtype, like.device)
        try:
            yield
        finally:
            sampler.noise_sampler = None
        return
    module = sys.modules[type(scheduler).__module__]
    if not feeds_noise(scheduler):
        raise ValueError(f"{type(scheduler).__name__} draws noise that cannot be prescribed")

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return feeder(tuple(shape), dtype or DTYPE, device or "cpu")

    with ExitStack() as stack:
        if hasattr(module, "randn_tensor"):
            stack.enter_context(_patched(module, "randn_tensor", randn_tensor))
        if hasattr(module, "BrownianTreeNoiseSampler"):
            stack.enter_context(_patched(module, "BrownianTreeNoiseSampler", _brownian(feeder)))
        yield


class StartRecorder:
    """Wraps the bench's exact model: counts calls and records the first call's sample in the model's own
    space and its time, i.e. where (τ₀) and from what (y₀) the sampler starts."""

    def __init__(self, model):
        self.model = model
        self.first: tuple | None = None

    @property
    def nfe(self) -> int:
        return self.model.nfe

    def __call__(self, model_input, timestep, *args, **kwargs):
        if self.first is None:
            param, sched = self.model.parameterization, self.model.schedule
            if hasattr(self.model, "_time"):  # ExactModel caches the inversion per timestep value
                t, c_in = self.model._time(timestep)
            else:
                value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
                t = param.t_from_model_time(sched, torch.tensor(value, dtype=DTYPE)).reshape(())
                c_in = float(param.input_scale(sched, t))
            s, sigma = float(sched.s(t)), float(sched.sigma(t))
            x = model_input.to(DTYPE).reshape(model_input.shape[0], -1) / c_in
            self.first = (math.atan2(sigma, s), x / math.hypot(s, sigma))
        return self.model(model_input, timestep, *args, **kwargs)


_ACCEPTS_GENERATOR: dict = {}


def _accepts_generator(scheduler) -> bool:
    import inspect

    cls = type(scheduler)
    if cls not in _ACCEPTS_GENERATOR:
        params = inspect.signature(scheduler.step).parameters
        _ACCEPTS_GENERATOR[cls] = "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return _ACCEPTS_GENERATOR[cls]


class Prepared:
    """A scheduler right after ``set_timesteps(num_inference_steps)``, handed out as a fresh deep copy for every
    run: on a DDPM table a unisde grid with λ-uniform or Karras spacing inverts λ(t) by bisection, and a copy costs
    a few percent of that."""

    def __init__(self, scheduler, num_inference_steps: int, already_set: bool = False):
        if not already_set:
            scheduler.set_timesteps(num_inference_steps)
        import copy

        self._copy = copy.deepcopy
        self.snapshot = self._copy(scheduler)
        self.num_inference_steps = num_inference_steps

    def fresh(self):
        return self._copy(self.snapshot)


def run_scheduler(
    scheduler,
    model,
    z: torch.Tensor,
    num_inference_steps: int | None = None,
    feeder: NoiseFeeder | None = None,
    seed: int = 4321,
    brownian_seed: int | None = None,
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """The generic diffusers loop (x = z · init_noise_sigma; x = step(model(scale_model_input(x, t), t), t, x))
    with every noise draw taken from ``feeder`` when given (else the seeded generator). ``scheduler`` may be a
    :class:`Prepared` one (then ``num_inference_steps`` is its own); one with a ``sample_exact(model, z)`` method
    runs its own loop instead. ``brownian_seed`` (without ``feeder``): a Brownian-tree sampler's path is a
    :class:`PrescribedBrownian` of standard normal draws from a generator with this seed instead of torchsde's tree
    — the same law (``test_brownian_tree_exact_law_matches_the_tree``) for one sample-sized draw per new level,
    where the tree draws ~60 per query. Returns the final sample (B, d) in float64 and the start (τ₀, y₀ (B, d))
    of the first model call."""
    if isinstance(scheduler, Prepared):
        scheduler = scheduler.fresh()
    else:
        scheduler.set_timesteps(num_inference_steps)
    if hasattr(scheduler, "sample_exact"):
        # A sampler function that drives its own loop (k-diffusion's, unisde.bench.kdiffusion.KDiffusionPeer) on the
        # model's VE-view denoiser. The raced ones are deterministic: there is no draw for ``feeder`` to replace (a
        # draw of their own, e.g. torch.randn_like under churn, would differ per row and fail the affine check).
        x, tau0, y0 = scheduler.sample_exact(model, z)
        return x.to(DTYPE).reshape(x.shape[0], -1), tau0, y0
    recorder = StartRecorder(model)
    extra = {"generator": torch.Generator().manual_seed(seed)} if _accepts_generator(scheduler) else {}
    x = z * scheduler.init_noise_sigma
    with ExitStack() as stack:
        stack.enter_context(_noise_source(scheduler, feeder))
        if feeder is None and brownian_seed is not None and feeds_noise(scheduler):
            import importlib

            path = _brownian(_Draws(brownian_seed))
            module = importlib.import_module(_BROWNIAN_MODULE)  # unisde's dpmpp_sde queries this class too
            own = sys.modules[type(scheduler).__module__]  # or a module importing it
            for where in {module, own}:
                if hasattr(where, "BrownianTreeNoiseSampler"):
                    stack.enter_context(_patched(where, "BrownianTreeNoiseSampler", path))
        for t in scheduler.timesteps:
            out = recorder(scheduler.scale_model_input(x, t), t)
            x = scheduler.step(out, t, x, **extra).prev_sample
    tau0, y0 = recorder.first
    return x.to(DTYPE).reshape(x.shape[0], -1), tau0, y0


# ---------------------------------------------------------------------------------------------- the exact law


@dataclass
class AffineLaw:
    """The exact output law N(mean, factor factorᵀ) of a sampler on a Gaussian target (module doc).

    ``factor``: d × (d + d·k) — the start's columns, then k blocks of d for the k noise draws that enter the
    output (``draws`` counts every draw the run makes); y₀ = ``start_mean`` + ``start`` z is the first model
    call's sample (y = x / √(s² + σ²)) at angle ``tau0``; ``residual``: max |x − (b + A (z, w))| / max(1, max |x|)
    at a random (z, w), the check that the run is affine to rounding."""

    mean: torch.Tensor
    factor: torch.Tensor
    start: torch.Tensor
    start_mean: torch.Tensor
    tau0: float
    draws: int
    relevant_draws: int
    residual: float
    nfe: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def cov(self) -> torch.Tensor:
        return self.factor @ self.factor.T

    @property
    def deterministic(self) -> bool:
        return self.relevant_draws == 0


class _ProbeFeeder(NoiseFeeder):
    """Draw j: zeros except row ``probe_row + j`` (a random vector: does draw j reach the output?) and the check
    row (random); draws beyond ``probes`` only feed the check row (the caller reruns with more probe rows)."""

    def __init__(self, rows: int, d: int, probe_row: int, probes: int, check_row: int, generator: torch.Generator):
        super().__init__()
        self.rows, self.d, self.probe_row, self.probes = rows, d, probe_row, probes
        self.check_row, self.gen = check_row, generator
        self.check_draws: list[torch.Tensor] = []

    def __call__(self, shape, dtype, device):
        j = self.count
        self.count += 1
        if math.prod(shape) != self.rows * self.d:
            raise ValueError(f"noise draw {j} has shape {tuple(shape)}, not one row per sample of the batch")
        w = torch.zeros(self.rows, self.d, dtype=DTYPE)
        if j < self.probes:
            w[self.probe_row + j] = torch.randn(self.d, generator=self.gen, dtype=DTYPE)
        check = torch.randn(self.d, generator=self.gen, dtype=DTYPE)
        self.check_draws.append(check)
        w[self.check_row] = check
        return w.reshape(shape).to(dtype=dtype, device=device)


def affine_law(
    scheduler,
    model,
    event_shape,
    num_inference_steps: int | None = None,
    probes: int = 8,
    seed: int = 0,
    relevance_tol: float = 1e-12,
) -> AffineLaw:
    """The exact output law of ``scheduler`` run with ``num_inference_steps`` on the exact model of a Gaussian
    target (module doc; ``scheduler`` may be :class:`Prepared`), from batched float64 runs: (1) the zero start,
    the d unit starts, a check row (random start and draws) and one probe row per noise draw (``probes`` rows are
    reserved; a run that draws more is repeated with enough); (2) when some draws reach the output, one row per
    unit vector of each of them.
    ``nfe`` of the result is the model calls of one run."""
    d = math.prod(event_shape)
    while True:
        gen = torch.Generator().manual_seed(seed)
        rows = 1 + d + 1 + probes
        check_row, probe_row = 1 + d, 2 + d
        z = torch.zeros(rows, d, dtype=DTYPE)
        z[1 : 1 + d] = torch.eye(d, dtype=DTYPE)
        z_check = torch.randn(d, generator=gen, dtype=DTYPE)
        z[check_row] = z_check
        feeder = _ProbeFeeder(rows, d, probe_row, probes, check_row, gen)
        model.nfe = 0
        out, tau0, y0 = run_scheduler(scheduler, model, z.reshape(rows, *event_shape), num_inference_steps, feeder)
        nfe = model.nfe
        if feeder.count <= probes:
            break
        probes = feeder.count
    draws = feeder.count
    b = out[0]
    cols = [(out[1 : 1 + d] - b).T]
    start = (y0[1 : 1 + d] - y0[0]).T
    scale = max(1.0, float(out[: 1 + d].abs().max()))
    relevant = [j for j in range(draws) if float((out[probe_row + j] - b).abs().max()) > relevance_tol * scale]
    if relevant:
        k = len(relevant)
        eye = torch.eye(d, dtype=DTYPE)
        feed: list = [None] * draws
        for block, j in enumerate(relevant):
            w = torch.zeros(k * d, d, dtype=DTYPE)
            w[block * d : (block + 1) * d] = eye
            feed[j] = w
        out2, _, _ = run_scheduler(
            scheduler, model, torch.zeros(k * d, *event_shape, dtype=DTYPE), num_inference_steps, NoiseFeeder(feed)
        )
        cols += [(out2[block * d : (block + 1) * d] - b).T for block in range(k)]
    factor = torch.cat(cols, dim=1)
    predicted = b + cols[0] @ z_check
    for block, j in enumerate(relevant):
        predicted = predicted + cols[1 + block] @ feeder.check_draws[j]
    residual = float((out[check_row] - predicted).abs().max()) / max(1.0, float(out[check_row].abs().max()))
    start_residual = float((y0[check_row] - y0[0] - start @ z_check).abs().max()) / max(
        1.0, float(y0[check_row].abs().max())
    )
    return AffineLaw(b, factor, start, y0[0], tau0, draws, len(relevant), max(residual, start_residual), nfe)


def law_metrics(law: AffineLaw, data_mean: torch.Tensor, data_cov: torch.Tensor) -> dict:
    """W₂ and KL of an exact law to N(μ, Σ); its prior floor (the W₂ of an exact PF-ODE solve from the same start
    law); ``w2_solver``, its W₂ to that exact solve's law (the discretisation error alone, without the start's
    mismatch, which at high NFE dominates W₂ to the data and lets errors cancel against it); and, for a
    deterministic sampler, its exact trajectory RMS error against that solve from the same starts:
    √(‖b − b_ref‖² + ‖A_z − G S‖_F²)."""
    w2 = gaussian_w2(law.mean, None, data_mean, data_cov, factor=law.factor)
    kl = gaussian_kl(law.mean, law.cov, data_mean, data_cov)
    offset, g = gaussian_flow(data_mean, data_cov, law.tau0)
    ideal_mean, ideal_factor = offset + g @ law.start_mean, g @ law.start
    floor = gaussian_w2(ideal_mean, None, data_mean, data_cov, factor=ideal_factor)
    solver = gaussian_w2(law.mean, None, ideal_mean, ideal_factor @ ideal_factor.T, factor=law.factor)
    out = {"w2": w2, "kl": kl, "prior_floor": floor, "w2_solver": solver}
    if law.deterministic:
        d = law.start.shape[0]
        out["trajectory"] = math.sqrt(
            float(((law.mean - ideal_mean) ** 2).sum()) + float(((law.factor[:, :d] - ideal_factor) ** 2).sum())
        )
    return out


def trajectory_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """RMS over the batch of ‖x − x_ref‖ (whole vectors, data units)."""
    x = x.to(DTYPE).reshape(x.shape[0], -1)
    if not torch.isfinite(x).all():
        return math.inf
    return float(((x - reference.reshape(x.shape)) ** 2).sum(1).mean().sqrt())
