r"""Exact log-likelihood of any diffusion model through its probability-flow ODE.

The PF-ODE  dx/dt = v(x, t) = f(t) x − ½ g²(t) ∇log p_t(x)
(Song et al. 2021, eq. 13 [SDE]) transports the marginal p_t of
the forward process (Kingma et al. 2021, eq. 1 [VDM]) for every t, so by the instantaneous change of variables
(Chen et al. 2018, Thm. 1 [NODE]; Song et al. 2021, App. D.2 [SDE])

    d/dt log p_t(x(t)) = −∇·v(x(t), t)      along any solution x(t),

and integrating from t_min to t_max (= 1, or the capped end of a zero-terminal-SNR table):

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + ∫_{t_min}^{t_max} ∇·v(x(t), t) dt.                    (★)

``log_likelihood`` solves the augmented ODE for (x, ∫∇·v) with the adaptive Dormand–Prince solver of
:mod:`unisde.ode`, with the score taken from any model in any registered parameterisation,
∇log p_t = (s x̂0 − x)/σ² (Karras et al. 2022, eq. 3 [EDM];
:func:`unisde.parameterizations.score_from_denoised`), and the
drift from :meth:`unisde.sde.ForwardSDE.probability_flow`. The divergence is either exact (autograd over each
dimension, for small dimension) or the Hutchinson–Skilling estimate εᵀ(∂v/∂x)ε with one probe ε fixed for
the whole solve (which keeps the ODE deterministic, so the adaptive solver stays valid and the estimate of
log p is unbiased for the exact ODE solution).

Conventions (docs/likelihood.md has the full discussion):

* **t_min.** The ODE starts at t_min > 0 with x(t_min) = x, so the answer is log p_{t_min}(x): the density of
  the data blurred by the forward process up to t_min (x_{t_min} = s x0 + σ ε), which tends to log p_0(x) as
  t_min → 0. VE and EDM schedules have σ(0) = σ_min > 0, so even t → 0 gives the data convolved with
  N(0, σ_min²): for those, the quantity is the density of that smoothed data, which is what their samplers
  produce. t = 0 itself is excluded because the score of a data distribution with atoms is singular there.
* **Flow models and t = 1.** Where the schedule has closed-form s′ and σ′ (the rectified flow s = 1 − t,
  σ = t) the drift is taken in velocity form, v = s′ x̂0 + σ′ (x − s x̂0)/σ (:func:`velocity_drift`; = the
  flow network's output u = (x − x̂0)/t on the rectified flow), which stays exact where s(1) = 0, and the ODE
  runs to t_max = 1, where the prior is exactly N(0, I) (σ(1) = 1, s(1) = 0): the default prior is then the
  true marginal p_1, not an approximation of it. Other zero-terminal-SNR schedules (tables) stop at their cap
  ``schedule.t_end``, where f and g² are still finite.
* **Prior.** The density of x(t_max) is taken as the Gaussian N(s m, s² σ_d² + σ²) per dimension (s, σ at
  t_max). The defaults m = 0, σ_d = 1 give exactly ``schedule.prior_logp`` — the distribution the samplers
  draw their first sample from — so the number is then the exact log-density of the model's own
  deterministic sampler. The true marginal is p_{t_max} = law of s x0 + σ ε ≈ N(s m*, s² v* + σ²) (exact for
  Gaussian data; m*, v* the data's mean and variance). Per dimension the two differ pointwise by a term
  first order in s, s (m − m*)(x − s m)/V (V = s² σ_d² + σ²; zero on average over the data, whose average
  discrepancy is the KL, second order: s²(m − m*)²/2V + O(δ²), δ = s²(v* − σ_d²)/V), and a variance term
  ½ δ (x²/V − 1). Sizes per unit of mean mismatch: s/√V ≈ 0.0066 for diffusers' default VP table
  (s(1)² = ᾱ_N ≈ 4.3e-5), 0.02 for VE with σ_max = 50, 0.0125 for EDM with σ_max = 80 — so a single
  2-dimensional sample can be off by ~0.01 bits/dim, while in D dimensions the pointwise terms average
  out like 1/√D and the data-averaged bias stays ≲ s²/V. Passing the data's per-dimension ``data_mean`` and
  ``data_std`` gives the moment-matched Gaussian, accurate to second order; ``prior=`` takes any log-density.
* **Discrete data.** Data quantised to ``num_bins`` equally spaced levels on ``data_range`` (8-bit images in
  [−1, 1]: x = k/127.5 − 1) have spacing Δ = (hi − lo)/(num_bins − 1). With ``dequantize="uniform"`` each
  value is spread uniformly over its bin, x + (u − ½)Δ, and the discrete log-probability obeys
  log P(k) ≥ E_u log p(x + (u − ½)Δ) + D log Δ (Jensen), so the reported
  bits/dim = (nll + D·log(1/Δ)) / (D ln 2), i.e. (nll + D log 127.5)/(D ln 2) for 8-bit data in [−1, 1]
  (score-SDE and DDPM's convention: the log-Jacobian of the scaling from the 0…255 integer scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from unisde._tensor import DTYPE, unknown_name_error
from unisde.core.schedule import NoiseSchedule
from unisde.core.sde import ForwardSDE
from unisde.ode import solve_ivp
from unisde.parameterizations import Parameterization, score_from_denoised

TRACE_METHODS = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
DEQUANTIZATIONS = (None, "uniform")
EXACT_TRACE_MAX_DIM = 64
"""``trace="auto"`` uses the exact divergence up to this many dimensions per sample, Hutchinson above."""

_EXACT_CHUNK = 64  # basis vectors per batched backward pass of the exact trace (bounds memory)


@dataclass
class LikelihoodResult:
    """Output of :func:`log_likelihood`, one entry per sample for the tensors (float64, CPU).

    nll: −log p_{t_min}(x) in nats per sample (continuous density of the possibly dequantised input, in the
        units of the input space).
    bpd: bits per dimension, (nll + discrete_offset) / (num_dims · ln 2).
    prior_logp: log-density of x(t_max) under the prior (nats); delta_logp: ∫ ∇·v dt (nats); their sum is −nll.
    discrete_offset: D · log(1/Δ) nats per sample for quantised data (0 for continuous data).
    x_end: the ODE's end state x(t_max), shaped like the input (float64): ``gaussian_prior_log_prob(x_end, …)`` or
        any other prior's log-density plus ``delta_logp`` gives the answer under another prior without re-solving.
    """

    nll: torch.Tensor
    bpd: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    x_end: torch.Tensor
    discrete_offset: float
    num_dims: int
    t_min: float
    t_max: float
    prior: str
    trace: str
    probe: str | None
    solver: str
    rtol: float
    atol: float
    nfe: int
    steps: int
    dequantize: str | None = None
    num_bins: int | None = None
    extras: dict = field(default_factory=dict)

    @property
    def log_prob(self) -> torch.Tensor:
        """log p_{t_min}(x) in nats per sample (= −nll)."""
        return -self.nll

    def mean_bpd(self) -> tuple[float, float]:
        """(mean bits/dim over the batch, its standard error; nan for a single sample)."""
        n = self.bpd.numel()
        se = float(self.bpd.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        return float(self.bpd.mean()), se


def discrete_offset_per_dim(num_bins: int, data_range=(-1.0, 1.0)) -> float:
    """log(1/Δ) nats per dimension for ``num_bins`` levels spanning ``data_range`` (log 127.5 for 8-bit in [−1, 1])."""
    lo, hi = _check_range(data_range)
    if not (isinstance(num_bins, int) and num_bins >= 2):
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
    return math.log((num_bins - 1) / (hi - lo))


def check_quantized(x: torch.Tensor, num_bins: int, data_range=(-1.0, 1.0)) -> None:
    """Raise a ValueError unless every value of x lies in ``data_range`` on the ``num_bins``-level grid."""
    lo, hi = _check_range(data_range)
    delta = (hi - lo) / (num_bins - 1)
    xd = x.detach().to(DTYPE)
    tol = 1e-6 * (hi - lo)
    bad = (xd < lo - tol) | (xd > hi + tol)
    if bad.any():
        value = xd[bad][0].item()
        raise ValueError(
            f"data value {value:.6g} lies outside data_range [{lo}, {hi}] expected by the {num_bins}-level "
            f"dequantization convention (scale the data to that range first, e.g. images/127.5 − 1)"
        )
    k = (xd - lo) / delta
    off = (k - k.round()).abs() > 1e-3
    if off.any():
        value = xd[off][0].item()
        raise ValueError(
            f"data value {value:.6g} is not on the {num_bins}-level grid of [{lo}, {hi}] (spacing {delta:.6g}); "
            f"pass num_bins matching the data, or dequantize=None for continuous data"
        )


def dequantize_uniform(
    x: torch.Tensor, num_bins: int, data_range=(-1.0, 1.0), generator: torch.Generator | None = None
) -> torch.Tensor:
    """x + (u − ½)Δ with u ~ U[0, 1)ᴰ: spread each quantised value uniformly over its bin of width Δ."""
    check_quantized(x, num_bins, data_range)
    lo, hi = _check_range(data_range)
    delta = (hi - lo) / (num_bins - 1)
    u = torch.rand(
        x.shape, generator=generator, dtype=x.dtype, device=generator.device if generator is not None else x.device
    )
    return x + (u.to(x.device) - 0.5) * delta


def _check_range(data_range):
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (low, high), got {data_range!r}") from None
    if not hi > lo:
        raise ValueError(f"data_range must have high > low, got {data_range!r}")
    return lo, hi


def _check_moment(value, name, sample_shape, positive):
    try:
        t = torch.as_tensor(value, dtype=DTYPE)
        torch.broadcast_shapes(t.shape, tuple(sample_shape))
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"{name} must be a number or a tensor broadcastable to the sample shape {tuple(sample_shape)}, got "
            f"{value!r}"
        ) from None
    if not torch.isfinite(t).all() or (positive and (t <= 0).any()):
        raise ValueError(f"{name} must be finite{' and positive' if positive else ''}, got {value!r}")


def gaussian_prior_log_prob(
    x_end: torch.Tensor, schedule: NoiseSchedule, t_max: float | None = None, data_mean=0.0, data_std=1.0
) -> torch.Tensor:
    """log N(x_end; s m, s² σ_d² + σ²) per sample in nats, (s, σ) at t_max (default :func:`default_t_max`).

    The prior term of (★) in the module doc; with m = 0, σ_d = 1, t_max = 1 it equals ``schedule.prior_logp``.
    ``x_end``: (B, ...) — e.g. ``LikelihoodResult.x_end`` to swap priors without re-solving the ODE.
    """
    t_max = default_t_max(schedule) if t_max is None else float(t_max)
    _check_moment(data_mean, "data_mean", x_end.shape[1:], positive=False)
    _check_moment(data_std, "data_std", x_end.shape[1:], positive=True)
    return _gaussian_prior_logp(
        x_end.reshape(x_end.shape[0], -1).to(DTYPE), schedule, t_max, data_mean, data_std, x_end.shape
    )[0]


def _gaussian_prior_logp(x_end, schedule, t_max, data_mean, data_std, shape):
    """log N(x_end; s m, s² σ_d² + σ²) at t_max, summed per sample (x_end flattened (B, D), float64)."""
    tm = torch.tensor(t_max, dtype=DTYPE)
    s, sigma = float(schedule.s(tm)), float(schedule.sigma(tm))
    ones = torch.ones(tuple(shape[1:]), dtype=DTYPE)
    mean = (s * torch.as_tensor(data_mean, dtype=DTYPE) * ones).flatten().to(x_end.device)
    var = ((s * torch.as_tensor(data_std, dtype=DTYPE)) ** 2 * ones + sigma**2).flatten().to(x_end.device)
    logp = -0.5 * torch.log(2 * math.pi * var).sum() - 0.5 * ((x_end - mean) ** 2 / var).sum(1)
    if torch.as_tensor(data_mean).numel() == 1 and torch.as_tensor(data_std).numel() == 1:
        desc = (
            f"N({s * float(data_mean):.4g}, {float(var[0]):.6g}) per dimension (s(t_max)={s:.4g}, "
            f"σ(t_max)={sigma:.4g}, data mean {float(data_mean):g}, std {float(data_std):g})"
        )
    else:
        desc = (
            f"N(s(t_max)·m, s(t_max)²·σ_d² + σ(t_max)²) with per-dimension data moments "
            f"(s(t_max)={s:.4g}, σ(t_max)={sigma:.4g})"
        )
    return logp, desc


def _resolve_parameterization(parameterization) -> Parameterization:
    if isinstance(parameterization, Parameterization):
        return parameterization
    if isinstance(parameterization, str):
        from unisde.plugins import get_parameterization

        return get_parameterization(parameterization)
    raise ValueError(
        f"parameterization must be a Parameterization or a registered name, got {type(parameterization).__name__}"
    )


def _raw_output(out):
    """A raw tensor from a model's return value (tensor, diffusers output with ``.sample``, or tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(
        f"model returned {type(out).__name__}; expected a tensor, a diffusers output with .sample, or a tuple"
    )


def make_denoiser_fn(
    model: Callable, schedule: NoiseSchedule, parameterization: Parameterization, sample_shape
) -> Callable:
    """x̂0(x, t) from a raw network ``model(model_input, timestep)`` through ``parameterization.to_denoised``.

    ``x`` is in model space, t a per-sample (B,) float64 tensor; raises ValueError if the model's output shape
    differs from its input's (e.g. a learned-variance UNet with twice the channels).
    """

    def denoise(x, t):
        t = torch.as_tensor(t, dtype=DTYPE)
        # All samples share one t during an ODE solve: compute coefficients once, broadcast over the batch.
        tc = t[0] if t.ndim == 1 and bool((t == t[0]).all()) else t
        inp = parameterization.model_input(x, tc, schedule)
        ts = parameterization.model_time(schedule, tc).to(device=x.device, dtype=x.dtype)
        ts = ts.expand(x.shape[0]) if ts.ndim == 0 else ts
        out = _raw_output(model(inp, ts))
        if out.shape != x.shape:
            raise ValueError(
                f"model output has shape {tuple(out.shape)} but its input has shape {tuple(x.shape)} "
                f"(expected sample shape {tuple(sample_shape)}); the likelihood needs one raw prediction per "
                f"input value (a learned-variance model must be split to its mean channels first)"
            )
        return parameterization.to_denoised(out.to(x.dtype), x, tc, schedule)

    return denoise


def make_score_fn(
    model: Callable, schedule: NoiseSchedule, parameterization: Parameterization, sample_shape
) -> Callable:
    """score(x, t) = (s x̂0 − x)/σ² from a raw network ``model(model_input, timestep)``
    (Karras et al. 2022, eq. 3 [EDM]), x̂0 from :func:`make_denoiser_fn`."""
    denoise = make_denoiser_fn(model, schedule, parameterization, sample_shape)

    def score(x, t):
        t = torch.as_tensor(t, dtype=DTYPE)
        tc = t[0] if t.ndim == 1 and bool((t == t[0]).all()) else t
        return score_from_denoised(denoise(x, t), x, tc, schedule)

    return score


def has_exact_velocity(schedule: NoiseSchedule) -> bool:
    """True when the schedule has closed-form s′ and σ′ (the rectified flow): then the PF-ODE drift is taken in
    velocity form (:func:`velocity_drift`), exact up to t = 1 even where s(1) = 0, and t_max defaults to 1."""
    return hasattr(schedule, "_ds") and hasattr(schedule, "_dsigma")


def default_t_max(schedule: NoiseSchedule) -> float:
    """1 where the drift is exact at t = 1 (:func:`has_exact_velocity`; σ(1) > 0 there), else ``schedule.t_end``
    (1, or the cap of a zero-terminal-SNR table whose f and g² diverge at t = 1)."""
    return 1.0 if has_exact_velocity(schedule) and float(schedule.sigma(1.0)) > 0 else float(schedule.t_end)


def velocity_drift(denoise: Callable, schedule: NoiseSchedule) -> Callable:
    """The PF-ODE drift in velocity form, v = s′ x̂0 + σ′ ε̂ with ε̂ = (x − s x̂0)/σ — algebraically
    f x − ½ g² ∇log p_t (substitute f = s′/s, g² = 2σσ′ − 2fσ², ∇log p_t = (s x̂0 − x)/σ²; Lipman et al. 2023
    [FM]: the marginal velocity is E[s′ x0 + σ′ ε | x_t]), but with s, σ, s′, σ′ exact, so it stays finite at
    s(1) = 0: on the rectified flow v = (x − x̂0)/t, which is the flow model's own output u, and at t = 1
    v = x − E[x0]. Needs σ(t) > 0 (t > 0)."""
    from unisde.parameterizations.builtin import schedule_derivatives

    def drift(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.tensor(float(t), dtype=DTYPE)
        s, sigma = float(schedule.s(tt)), float(schedule.sigma(tt))
        ds, dsigma = (float(v) for v in schedule_derivatives(schedule, tt))
        x0_hat = denoise(x, tt.expand(x.shape[0]))
        return ds * x0_hat + (dsigma / sigma) * (x - s * x0_hat)

    return drift


def log_likelihood(
    model: Callable,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    parameterization,
    *,
    t_min: float = 1e-5,
    t_max: float | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "auto",
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    dequantize: str | None = None,
    num_bins: int | None = None,
    data_range=(-1.0, 1.0),
    data_mean=0.0,
    data_std=1.0,
    prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_steps: int = 10_000,
) -> LikelihoodResult:
    r"""log p_{t_min}(x) of a diffusion model by integrating its PF-ODE with the divergence, (★) in the module doc.

    Parameters
    ----------
    model: raw network, ``model(model_input, timestep) -> output`` (tensor, or a diffusers output with
        ``.sample``), fed ``parameterization.model_input`` and ``parameterization.model_time``.
    x: data, shape (B, ...) in model space (images: [−1, 1]); its dtype is the model's compute dtype.
    schedule, parameterization: the model's :class:`NoiseSchedule` and parameterisation (instance or name).
    t_min: start time in (0, 1) (module doc); t_max: end time (default :func:`default_t_max`: 1 — also on the
        rectified flow, whose prior at t = 1 is exactly N(0, I) — or the cap ``schedule.t_end`` of a
        zero-terminal-SNR table).
    rtol, atol: tolerances of the Dormand–Prince 5(4) solver on (x, ∫∇·v), in float64.
    trace: "exact" (D backward passes, batched), "hutchinson" (one probe per sample fixed per solve, one
        backward pass) or "auto" (exact up to ``EXACT_TRACE_MAX_DIM`` dimensions). probe: "rademacher" or
        "gaussian"; ``generator`` seeds probes and dequantization noise.
    dequantize: None or "uniform"; num_bins: number of quantisation levels on ``data_range`` (default 256
        with dequantization). With ``num_bins`` set, x must lie on that grid and bits/dim include the discrete
        offset D·log(1/Δ) (module doc).
    data_mean, data_std: m and σ_d (numbers, or tensors broadcastable to one sample's shape) of the Gaussian
        prior N(s(t_max) m, s(t_max)² σ_d² + σ(t_max)²) — the defaults 0 and 1 give the samplers' prior
        ``schedule.prior_logp``; the data's per-dimension moments give the moment-matched marginal.
        ``prior``: a callable log-density of x(t_max) (shape (B, ...) → (B,) nats) used instead.
    max_steps: solver step budget; exceeding it raises :class:`unisde.ode.ODESolverError` with the time reached.
    """
    # ---------------------------------------------------------------- validate everything before any work
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a tensor of shape (batch, ...) with at least one sample, got "
            f"{getattr(x, 'shape', type(x).__name__)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor (scaled data), got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values")
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    param = _resolve_parameterization(parameterization)
    t_min = float(t_min)
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must lie in the open interval (0, 1), got {t_min} (0 = data, 1 = prior)")
    t_max = default_t_max(schedule) if t_max is None else float(t_max)
    if not t_min < t_max <= 1.0:
        raise ValueError(f"t_max must lie in (t_min, 1] = ({t_min}, 1], got {t_max}")
    if trace not in TRACE_METHODS:
        raise unknown_name_error("trace method", trace, TRACE_METHODS)
    if probe not in PROBES:
        raise unknown_name_error("probe distribution", probe, PROBES)
    if dequantize not in DEQUANTIZATIONS:
        raise ValueError(f"unknown dequantize {dequantize!r}; valid choices: None, 'uniform'")
    if dequantize == "uniform" and num_bins is None:
        num_bins = 256
    offset_per_dim = 0.0 if num_bins is None else discrete_offset_per_dim(num_bins, data_range)
    if prior is None:
        _check_moment(data_mean, "data_mean", x.shape[1:], positive=False)
        _check_moment(data_std, "data_std", x.shape[1:], positive=True)

    if num_bins is not None:
        check_quantized(x, num_bins, data_range)
    if dequantize == "uniform":
        x = dequantize_uniform(x, num_bins, data_range, generator)

    shape, dtype, device = x.shape, x.dtype, x.device
    batch, dims = shape[0], x[0].numel()
    method = ("exact" if dims <= EXACT_TRACE_MAX_DIM else "hutchinson") if trace == "auto" else trace
    if has_exact_velocity(schedule):
        drift = velocity_drift(make_denoiser_fn(model, schedule, param, shape[1:]), schedule)
    else:
        drift = ForwardSDE(schedule).probability_flow(make_score_fn(model, schedule, param, shape[1:])).drift

    eps = None
    if method == "hutchinson":
        gen_device = generator.device if generator is not None else device
        if probe == "rademacher":
            eps = (
                torch.randint(0, 2, (batch, dims), generator=generator, device=gen_device).to(
                    device=device, dtype=dtype
                )
                * 2
                - 1
            )
        else:
            eps = torch.randn((batch, dims), generator=generator, device=gen_device, dtype=dtype).to(device)

    def rhs(t: float, state: torch.Tensor) -> torch.Tensor:
        """d/dt of (x, ∫∇·v): state (B, D + 1) float64 → (v, ∇·v)."""
        with torch.enable_grad():
            xr = state[:, :dims].reshape(shape).to(dtype).detach().requires_grad_(True)
            v = drift(xr, t).reshape(batch, dims)
            if method == "hutchinson":
                (vjp,) = torch.autograd.grad(v, xr, grad_outputs=eps.reshape(batch, dims))
                div = (vjp.reshape(batch, dims) * eps).sum(1)
            else:
                div = _exact_divergence(v, xr, batch, dims)
        return torch.cat([v.detach().to(DTYPE), div.detach().to(DTYPE)[:, None]], dim=1)

    state0 = torch.cat(
        [x.detach().reshape(batch, dims).to(DTYPE), torch.zeros(batch, 1, dtype=DTYPE, device=device)], dim=1
    )
    sol = solve_ivp(rhs, t_min, t_max, state0, rtol=rtol, atol=atol, max_steps=max_steps)
    end = sol.y[-1]
    x_end, delta_logp = end[:, :dims], end[:, dims]

    if prior is not None:
        prior_logp = torch.as_tensor(prior(x_end.reshape(shape).to(dtype)), dtype=DTYPE).reshape(batch)
        prior_desc = getattr(prior, "__name__", "user-supplied prior")
    else:
        prior_logp, prior_desc = _gaussian_prior_logp(x_end, schedule, t_max, data_mean, data_std, shape)

    nll = -(prior_logp + delta_logp).cpu()
    discrete_offset = dims * offset_per_dim
    bpd = (nll + discrete_offset) / (dims * math.log(2.0))
    return LikelihoodResult(
        nll=nll,
        bpd=bpd,
        prior_logp=prior_logp.cpu(),
        delta_logp=delta_logp.cpu(),
        x_end=x_end.reshape(shape).cpu(),
        discrete_offset=discrete_offset,
        num_dims=dims,
        t_min=t_min,
        t_max=t_max,
        prior=prior_desc,
        trace=method,
        probe=probe if method == "hutchinson" else None,
        solver=sol.solver,
        rtol=rtol,
        atol=atol,
        nfe=sol.nfe,
        steps=sol.steps,
        dequantize=dequantize,
        num_bins=num_bins,
    )


def _exact_divergence(v: torch.Tensor, xr: torch.Tensor, batch: int, dims: int) -> torch.Tensor:
    """Σ_i ∂v_i/∂x_i per sample: one backward pass per basis vector e_i (batched with vmap where possible).

    Samples are independent, so backpropagating e_i for every sample at once gives each sample's i-th
    Jacobian row; chunks of basis vectors go through ``is_grads_batched`` (vmap), with a plain loop as fallback
    for models whose operations vmap does not support.
    """
    div = torch.zeros(batch, dtype=v.dtype, device=v.device)
    eye = torch.eye(dims, dtype=v.dtype, device=v.device)
    for start in range(0, dims, _EXACT_CHUNK):
        idx = torch.arange(start, min(dims, start + _EXACT_CHUNK), device=v.device)
        basis = eye[idx][:, None, :].expand(idx.numel(), batch, dims)
        try:
            (rows,) = torch.autograd.grad(v, xr, grad_outputs=basis, is_grads_batched=True, retain_graph=True)
            rows = rows.reshape(idx.numel(), batch, dims)
            div = div + rows[torch.arange(idx.numel()), :, idx].sum(0)
        except RuntimeError:
            for j, i in enumerate(idx.tolist()):
                (row,) = torch.autograd.grad(v, xr, grad_outputs=basis[j], retain_graph=True)
                div = div + row.reshape(batch, dims)[:, i]
    return div


def dataset_bits_per_dim(
    model,
    data: torch.Tensor,
    schedule: NoiseSchedule,
    parameterization,
    *,
    num_bins: int,
    num_samples: int,
    batch_size: int = 64,
    seed: int = 0,
    t_min: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "hutchinson",
    probe: str = "rademacher",
    prior_from_data: bool = False,
    device="cpu",
    progress: bool = False,
):
    """Bits/dim of ``num_samples`` random rows of quantised ``data`` (uniform dequantisation over ``num_bins``
    levels in [−1, 1]) under a model; returns (mean, standard error, per-batch NFE list, last LikelihoodResult)."""
    gen = torch.Generator().manual_seed(seed)
    n = min(int(num_samples), data.shape[0])
    subset = data[torch.randperm(data.shape[0], generator=gen)[:n]]
    prior = (
        {"data_mean": data.mean(0).double(), "data_std": data.std(0).double().clamp(min=1e-3)}
        if prior_from_data
        else {}
    )
    from tqdm.auto import tqdm

    bpds, nfes, result = [], [], None
    bar = tqdm(total=n, unit="img", desc="nll", disable=not progress)
    for start in range(0, n, batch_size):
        batch = subset[start : start + batch_size].to(device)
        result = log_likelihood(
            model,
            batch,
            schedule,
            parameterization,
            t_min=t_min,
            rtol=rtol,
            atol=atol,
            trace=trace,
            probe=probe,
            generator=gen,
            dequantize="uniform",
            num_bins=num_bins,
            **prior,
        )
        bpds.append(result.bpd)
        nfes.append(result.nfe)
        bar.update(batch.shape[0])
        bar.set_postfix(bpd=f"{float(torch.cat(bpds).mean()):.4f}", nfe=result.nfe)
    bar.close()
    bpd = torch.cat(bpds)
    se = float(bpd.std(unbiased=True)) / math.sqrt(bpd.numel()) if bpd.numel() > 1 else float("nan")
    return float(bpd.mean()), se, nfes, result
