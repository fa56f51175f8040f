r"""Exact denoisers: the project's ground truth (tests and benchmarks measure samplers against them, no network in
the way).

For data x0 ~ p_data and the forward process x_t = s(t) x0 + σ(t) ε
(Karras et al. 2022, eq. 4 [EDM], whose σ is our VE-view σ̃ = σ/s), the optimal
denoiser D(x, t) = E[x0 | x_t = x] and the marginal p_t are known in closed form for three families:

* :class:`Gaussian` ``N(μ, Σ)``:  p_t = N(s μ, s² Σ + σ² I)  and
  D(x) = μ + s Σ (s² Σ + σ² I)⁻¹ (x − s μ)  (Gaussian conditioning).
* :class:`GaussianMixture` ``Σ_k w_k N(μ_k, Σ_k)``:  p_t = Σ_k w_k N(s μ_k, s² Σ_k + σ² I), and D is the
  responsibility-weighted average of the per-component posterior means above.
* :class:`Empirical` (a finite dataset y_1 … y_n, each with mass 1/n):  p_t = (1/n) Σ_i N(s y_i, σ² I) and
  D(x) = Σ_i softmax_i(−‖x̃ − y_i‖² / (2 σ̃²)) y_i  in the VE view x̃ = x/s, σ̃ = σ/s — the empirical optimal
  denoiser of Karras et al. 2022, App. B.3 [EDM].

The score follows from the denoiser, ∇log p_t(x) = (s D − x) / σ²
(Tweedie's formula; Karras et al. 2022, eq. 3 [EDM]), so ``score`` and the autograd gradient of
``marginal_log_prob`` are two independent routes to one quantity (the tests compare them).

Conventions
-----------
* Samples ``x`` have shape (B, *event_shape) and live in the model's own space (x = s x0 + σ ε); ``t`` is a
  float or a (B,) tensor in [0, 1]; any :class:`~unisde.NoiseSchedule` works. Everything is computed in
  float64 and cast once to ``x.dtype`` at the end; log densities are returned in float64 (as
  ``NoiseSchedule.prior_logp``), in nats, summed over the event dimensions.
* (s, σ) are the schedule's exact values, also at a zero-terminal-SNR or rectified-flow end s(1) = 0 (no
  cap at ``schedule.t_end``: nothing here divides by s where σ > 0), so at t = 1 the denoiser is exactly the
  data mean E[x0], the score −x/σ² and p_1 = N(0, σ(1)² I) — the exact prior a flow model's PF-ODE starts
  from (N(0, I) on the rectified flow). Denoiser, score and marginal density use the same values.
* At σ(t) = 0 (t = 0) the sample is noise-free, x = s x0, and the denoiser is exactly x / s for every data
  distribution; there the score is undefined and ``score`` raises.
* Mixture sums are streamed over components with a running log-sum-exp, so a large dataset never needs a
  (batch × n) matrix larger than a few million entries.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from unisde._tensor import DTYPE, as_float64
from unisde.core.schedule import NoiseSchedule, _expand_like

# AnalyticUNet is provided by the module __getattr__ (built on first use), hence the noqa
__all__ = ["Gaussian", "GaussianMixture", "Empirical", "AnalyticModel", "AnalyticUNet"]  # noqa: F822

_CHUNK_ELEMENTS = 1 << 22
"""Upper bound on the entries of one (batch × components) block in the streamed mixture sums (32 MiB)."""

_PSD_RTOL = 1e-10
"""Eigenvalues down to −_PSD_RTOL · max|λ| count as rounding of a PSD matrix and are clamped to 0."""


def _event_shape(event_shape, d: int, default: Sequence[int], what: str) -> tuple[int, ...]:
    shape = tuple(default) if event_shape is None else tuple(int(n) for n in event_shape)
    if any(n <= 0 for n in shape) or math.prod(shape) != d:
        raise ValueError(f"event_shape {shape} has {math.prod(shape)} elements but {what} has dimension {d}")
    return shape


def _eig_psd(cov: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition (λ ascending, U) of symmetric PSD matrices (..., d, d); ValueError otherwise."""
    scale = cov.abs().amax(dim=(-2, -1)).clamp(min=1.0)
    asym = (cov - cov.transpose(-1, -2)).abs().amax(dim=(-2, -1))
    bad = asym > 1e-10 * scale
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(f"{name}[{k}] is not symmetric: max |Σ − Σᵀ| = {asym[k].item():.3g}")
    lam, basis = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
    bad = lam[..., 0] < -_PSD_RTOL * scale
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(f"{name}[{k}] is not positive semi-definite: smallest eigenvalue {lam[k, 0].item():.6g}")
    return lam.clamp(min=0.0), basis


class _Analytic:
    """A finite mixture of Gaussians Σ_k w_k N(μ_k, Σ_k) stored in float64 on the CPU.

    Covariances are kept in one of two forms: ``"iso"`` (Σ_k = v_k I, v_k ≥ 0; a point mass when v_k = 0)
    whose mixture sums are matrix products over blocks of components, or ``"eig"`` (Σ_k = U_k diag(λ_k) U_kᵀ,
    U_k = I when ``basis`` is None) handled one component at a time in its eigenbasis.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        event_shape: tuple[int, ...],
        *,
        var: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
        basis: torch.Tensor | None = None,
    ):
        self._weights = weights
        self._log_weights = torch.log(weights)
        self._means = means
        self._kind = "iso" if var is not None else "eig"
        self._var, self._lam, self._basis = var, lam, basis
        self.event_shape = tuple(event_shape)
        self._center = (weights[:, None] * means).sum(0)
        self._device_cache: dict = {}

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension d = prod(event_shape) of one sample."""
        return self._means.shape[1]

    @property
    def num_components(self) -> int:
        return self._means.shape[0]

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights (K,), float64, summing to 1."""
        return self._weights.clone()

    @property
    def means(self) -> torch.Tensor:
        """Component means (K, d), float64."""
        return self._means.clone()

    @property
    def mean(self) -> torch.Tensor:
        """Overall mean E[x0] = Σ_k w_k μ_k, shape (d,), float64."""
        return self._center.clone()

    def _component_cov_sum(self) -> torch.Tensor:
        """Σ_k w_k Σ_k as a (d, d) matrix."""
        d, w = self.dim, self._weights
        if self._kind == "iso":
            return torch.eye(d, dtype=DTYPE) * (w * self._var).sum()
        if self._basis is None:
            return torch.diag((w[:, None] * self._lam).sum(0))
        return torch.einsum("k,kij,kj,klj->il", w, self._basis, self._lam, self._basis)

    @property
    def cov(self) -> torch.Tensor:
        """Overall covariance Cov[x0] = Σ_k w_k Σ_k + Σ_k w_k (μ_k − μ)(μ_k − μ)ᵀ, shape (d, d), float64."""
        centred = self._means - self._center
        return self._component_cov_sum() + (centred.T * self._weights) @ centred

    # ------------------------------------------------------------------ input handling
    def _on(self, device) -> dict:
        key = str(device)
        if key not in self._device_cache:

            def move(v):
                return None if v is None else v.to(device)

            cached = {
                "w": move(self._log_weights),
                "mu": move(self._means),
                "c": move(self._center),
                "var": move(self._var),
                "lam": move(self._lam),
                "U": move(self._basis),
            }
            if self._kind == "iso":
                mc = cached["mu"] - cached["c"]
                cached["mc"], cached["mc2"] = mc, (mc * mc).sum(1)
            self._device_cache[key] = cached
        return self._device_cache[key]

    def _flat(self, x, name: str = "x") -> torch.Tensor:
        """x of shape (B, *event_shape) → float64 (B, d), keeping the autograd graph."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"{name} must be a torch.Tensor of shape (B, {', '.join(map(str, self.event_shape))}), got "
                f"{type(x).__name__}"
            )
        if x.ndim != 1 + len(self.event_shape) or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, self.event_shape))}) "
                f"for this distribution's event_shape {self.event_shape}"
            )
        return x.reshape(x.shape[0], self.dim).to(DTYPE)

    @staticmethod
    def _per_sample(coef: torch.Tensor, batch: int, device) -> torch.Tensor:
        if coef.ndim == 0 or coef.shape == (1,):
            return coef.reshape(()).expand(batch).to(device)
        if coef.shape != (batch,):
            raise ValueError(
                f"t has shape {tuple(coef.shape)}; expected a scalar or shape ({batch},) for a batch of {batch}"
            )
        return coef.to(device)

    def _coefficients(self, t, schedule: NoiseSchedule, batch: int, device):
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a unisde.NoiseSchedule, got {type(schedule).__name__}")
        s, sigma = schedule.s(t), schedule.sigma(t)  # exact, also where s(1) = 0 (module doc)
        return self._per_sample(s, batch, device), self._per_sample(sigma, batch, device)

    # ------------------------------------------------------------------ the one computation
    def _posterior(self, xf: torch.Tensor, s: torch.Tensor, sigma: torch.Tensor, want_mean: bool = True):
        """log p(x) and E[x0 | x] for x = s x0 + σ ε, all float64: xf (B, d), s and σ (B,).

        Streams over components with a running maximum M, S = Σ_k e^{l_k − M} and the e^{l_k − M}-weighted
        sum of per-component posterior means, so the result is log-sum-exp stable for any number of
        components. Needs s² λ + σ² > 0 for every direction (callers guarantee it).
        """
        p = self._on(xf.device)
        batch, d = xf.shape
        if (
            batch > 1
            and not (s.requires_grad or sigma.requires_grad)
            and bool((s == s[0]).all() & (sigma == sigma[0]).all())
        ):
            # one time for the whole batch (every sampler's call): the per-direction variances are one row,
            # broadcast — the same values, elementwise, as the per-sample rows, for a fraction of the work
            s, sigma = s[:1], sigma[:1]
        s2, var_noise = s * s, sigma * sigma
        run_max = torch.full((batch,), -math.inf, dtype=DTYPE, device=xf.device)
        run_sum = torch.zeros(batch, dtype=DTYPE, device=xf.device)
        run_mean = torch.zeros(batch, d, dtype=DTYPE, device=xf.device) if want_mean else None

        def accumulate(logits, means_fn):
            nonlocal run_max, run_sum, run_mean
            new_max = torch.maximum(run_max, logits.max(1).values)
            rescale = torch.exp(run_max - new_max)
            prob = torch.exp(logits - new_max[:, None])
            run_sum = run_sum * rescale + prob.sum(1)
            if want_mean:
                run_mean = run_mean * rescale[:, None] + means_fn(prob)
            run_max = new_max

        if self._kind == "iso":
            # ‖x − s μ_k‖² expanded as a matrix product; both sides are centred on the data mean first so the
            # expansion does not cancel large norms.
            xc = xf - s[:, None] * p["c"]
            x2 = (xc * xc).sum(1)
            k_total = p["mu"].shape[0]
            chunk = max(1, min(k_total, _CHUNK_ELEMENTS // max(batch, 1)))
            for lo in range(0, k_total, chunk):
                hi = min(k_total, lo + chunk)
                cross = xc @ p["mc"][lo:hi].T
                dist2 = (x2[:, None] - 2 * s[:, None] * cross + s2[:, None] * p["mc2"][None, lo:hi]).clamp(min=0.0)
                v = s2[:, None] * p["var"][None, lo:hi] + var_noise[:, None]
                logits = p["w"][None, lo:hi] - 0.5 * d * torch.log(2 * math.pi * v) - 0.5 * dist2 / v
                # Component posterior mean: μ_k + (s v_k / v)(x − s μ_k) = (σ² / v) μ_k + (s v_k / v) x.
                accumulate(
                    logits,
                    lambda prob: (
                        (prob * var_noise[:, None] / v) @ p["mu"][lo:hi]
                        + (prob * s[:, None] * p["var"][None, lo:hi] / v).sum(1, keepdim=True) * xf
                    ),
                )
        else:
            for k in range(p["mu"].shape[0]):
                mu, lam, basis = p["mu"][k], p["lam"][k], None if p["U"] is None else p["U"][k]
                diff = xf - s[:, None] * mu
                z = diff if basis is None else diff @ basis
                v = s2[:, None] * lam[None] + var_noise[:, None]
                logits = p["w"][k] - 0.5 * (torch.log(2 * math.pi * v) + z * z / v).sum(1)
                gain = s[:, None] * lam[None] / v * z  # s Λ (s² Λ + σ²)⁻¹ Uᵀ(x − s μ) in the eigenbasis

                def component_mean(prob, gain=gain, mu=mu, basis=basis):
                    shift = gain if basis is None else gain @ basis.T
                    return prob * (mu[None] + shift)

                accumulate(logits[:, None], component_mean)
        log_p = run_max + torch.log(run_sum)
        return log_p, (run_mean / run_sum[:, None] if want_mean else None)

    @property
    def _min_variance(self) -> float:
        return float((self._var if self._kind == "iso" else self._lam).min())

    # ------------------------------------------------------------------ public API
    def _denoise64(self, xf: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        s, sigma = self._coefficients(t, schedule, xf.shape[0], xf.device)
        clean = sigma == 0
        # At σ = 0 the answer is x / s for any data; σ (and s in the unused quotient, which is 0 at s(1) = 0) is
        # replaced there only to keep the other branch finite — also its gradient, or autograd gives 0 · ∞ = NaN.
        _, x0 = self._posterior(xf, s, torch.where(clean, torch.ones_like(sigma), sigma))
        return torch.where(clean[:, None], xf / torch.where(clean, s, torch.ones_like(s))[:, None], x0)

    def denoise(self, x: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        """The exact denoiser E[x0 | x_t = x] at time t (Karras et al. 2022, App. B.3 [EDM] for :class:`Empirical`).

        ``x``: (B, *event_shape) in the model's own space (x = s x0 + σ ε); ``t``: float or (B,) in [0, 1].
        Returns x̂0 with x's shape and dtype (computed in float64; differentiable in x).
        """
        xf = self._flat(x)
        return self._denoise64(xf, t, schedule).reshape(x.shape).to(x.dtype)

    def score(self, x: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        """∇_x log p_t(x) = (s D(x) − x) / σ² (Karras et al. 2022, eq. 3 [EDM]), x's shape and dtype. Needs σ(t) > 0."""
        xf = self._flat(x)
        s, sigma = self._coefficients(t, schedule, xf.shape[0], xf.device)
        if (sigma == 0).any():
            raise ValueError("score is undefined where σ(t) = 0 (t = 0: noise-free data); evaluate it at t > 0")
        x0 = self._denoise64(xf, t, schedule)
        return ((s[:, None] * x0 - xf) / (sigma * sigma)[:, None]).reshape(x.shape).to(x.dtype)

    def marginal_log_prob(self, x: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        """log p_t(x) of x_t = s x0 + σ ε in the model's own space: Σ_k w_k N(x; s μ_k, s² Σ_k + σ² I).

        Returns (B,) float64 nats, differentiable in x. At σ(t) = 0 it is the data density of x/s divided
        by s^d, which exists only when every component covariance is non-singular (else ValueError).
        """
        xf = self._flat(x)
        s, sigma = self._coefficients(t, schedule, xf.shape[0], xf.device)
        if (sigma == 0).any() and self._min_variance <= 0:
            raise ValueError(
                f"{type(self).__name__} has a singular covariance (smallest variance {self._min_variance:.3g}), "
                "so p_t has no density at σ(t) = 0 (t = 0); evaluate it at t > 0"
            )
        return self._posterior(xf, s, sigma, want_mean=False)[0]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Data log density log p_data(x) for x of shape (B, *event_shape); (B,) float64 nats."""
        xf = self._flat(x)
        if self._min_variance <= 0:
            raise ValueError(
                f"{type(self).__name__} has a singular covariance (smallest variance {self._min_variance:.3g}) "
                "and no data density; use marginal_log_prob at t > 0"
            )
        one = torch.ones(xf.shape[0], dtype=DTYPE, device=xf.device)
        return self._posterior(xf, one, torch.zeros_like(one), want_mean=False)[0]

    def _draw_components(self, n: int, generator) -> torch.Tensor:
        return torch.multinomial(self._weights, n, replacement=True, generator=generator)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, device=None
    ) -> torch.Tensor:
        """n independent draws x0 ~ p_data, shape (n, *event_shape), drawn in float64 on the generator's
        device (CPU by default) and returned as ``dtype`` on ``device``."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        idx = self._draw_components(n, generator).cpu()
        z = torch.randn(n, self.dim, generator=generator, dtype=DTYPE, device=gen_device).cpu()
        out = self._means[idx].clone()
        if self._kind == "iso":
            out += self._var[idx].sqrt()[:, None] * z
        elif self._basis is None:
            out += self._lam[idx].sqrt() * z
        else:
            for k in idx.unique().tolist():
                rows = idx == k
                out[rows] += (z[rows] * self._lam[k].sqrt()) @ self._basis[k].T
        return out.reshape(n, *self.event_shape).to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ model adapters
    def as_model(self, parameterization, schedule: NoiseSchedule) -> "AnalyticModel":
        """A perfect model: callable ``model(model_input, timestep)`` → raw output in ``parameterization``
        (a name or a Parameterization instance) for a model trained under ``schedule``. Counts calls in
        ``model.nfe``."""
        return AnalyticModel(self, parameterization, schedule)

    def as_unet(self, parameterization, schedule: NoiseSchedule, sample_size, in_channels: int) -> "AnalyticUNet":  # noqa: F821 (built lazily, see __getattr__)
        """A diffusers ``ModelMixin`` wrapping :meth:`as_model`, usable as the ``unet`` of DDPMPipeline /
        DDIMPipeline for images of shape (in_channels, H, W) with ``sample_size`` = H = W or (H, W)."""
        unet = _unet_class()(sample_size=sample_size, in_channels=in_channels)
        if math.prod(unet.event_shape) != self.dim:
            raise ValueError(
                f"as_unet: images of shape {unet.event_shape} have {math.prod(unet.event_shape)} elements "
                f"but the distribution has dimension {self.dim}"
            )
        unet.analytic_model = self.as_model(parameterization, schedule)
        return unet

    def __repr__(self):
        return f"{type(self).__name__}(components={self.num_components}, event_shape={self.event_shape})"


# ====================================================================== public distributions
def _covariances(covs, k: int, d: int, name: str):
    """Parse covariances given as a scalar or (K,) isotropic variances, (K, d) diagonals or (K, d, d) matrices
    into keyword arguments of :class:`_Analytic`."""
    covs = as_float64(covs, name)
    if covs.ndim == 0:
        covs = covs.expand(k)
    if covs.ndim == 1:
        if covs.shape[0] != k:
            raise ValueError(f"{name} has shape {tuple(covs.shape)}; isotropic variances need shape ({k},)")
        if (covs < 0).any():
            i = int((covs < 0).nonzero()[0])
            raise ValueError(f"{name}[{i}] = {covs[i].item()} is a negative variance")
        return {"var": covs.clone()}
    if covs.ndim == 2:
        if covs.shape != (k, d):
            raise ValueError(f"{name} has shape {tuple(covs.shape)}; diagonal variances need shape ({k}, {d})")
        if (covs < 0).any():
            i, j = (covs < 0).nonzero()[0].tolist()
            raise ValueError(f"{name}[{i}, {j}] = {covs[i, j].item()} is a negative variance")
        return {"lam": covs.clone()}
    if covs.ndim == 3:
        if covs.shape != (k, d, d):
            raise ValueError(f"{name} has shape {tuple(covs.shape)}; full covariances need shape ({k}, {d}, {d})")
        off_diagonal = covs - torch.diag_embed(torch.diagonal(covs, dim1=-2, dim2=-1))
        if not off_diagonal.any():  # diagonal matrices: skip the eigenbasis entirely
            return _covariances(torch.diagonal(covs, dim1=-2, dim2=-1), k, d, name)
        lam, basis = _eig_psd(covs, name)
        return {"lam": lam, "basis": basis}
    raise ValueError(f"{name} has shape {tuple(covs.shape)}; expected (K,), (K, d) or (K, d, d)")


class GaussianMixture(_Analytic):
    """Data distribution Σ_k w_k N(μ_k, Σ_k) with exact denoiser, score and marginals under any schedule.

    ``weights``: (K,) non-negative, not all zero; normalised to sum to 1 (so [1, 1, 2] means [¼, ¼, ½]).
    ``means``: (K, d) or (K, *event_shape). ``covs``: (K,) isotropic variances (Σ_k = v_k I), a scalar shared
    by all, (K, d) diagonal variances, or (K, d, d) symmetric PSD matrices. ``event_shape`` (default
    ``means.shape[1:]``) is the shape of one sample, with prod(event_shape) = d.
    """

    def __init__(self, weights, means, covs, event_shape: Sequence[int] | None = None):
        weights = as_float64(weights, "weights")
        means = as_float64(means, "means")
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(weights.shape)}")
        if (weights < 0).any():
            i = int((weights < 0).nonzero()[0])
            raise ValueError(f"weights must be >= 0; weights[{i}] = {weights[i].item()}")
        total = weights.sum()
        if total <= 0:
            raise ValueError(f"weights must not all be zero, got {weights.tolist()}")
        k = weights.numel()
        if means.ndim < 2 or means.shape[0] != k:
            raise ValueError(
                f"means has shape {tuple(means.shape)}; expected ({k}, d) or ({k}, *event_shape) for {k} weights"
            )
        shape = _event_shape(event_shape, means[0].numel(), means.shape[1:], "means")
        means = means.reshape(k, -1)
        super().__init__(weights / total, means, shape, **_covariances(covs, k, means.shape[1], "covs"))


class Gaussian(_Analytic):
    """Data distribution N(μ, Σ) with exact denoiser D(x) = μ + s Σ (s² Σ + σ² I)⁻¹ (x − s μ).

    ``mean``: (d,) or event-shaped; ``cov``: a scalar variance (Σ = v I), (d,) diagonal variances, or a (d, d)
    symmetric PSD matrix. ``event_shape`` (default ``mean.shape``) is the shape of one sample.
    """

    def __init__(self, mean, cov, event_shape: Sequence[int] | None = None):
        mean = as_float64(mean, "mean")
        if mean.ndim == 0:
            raise ValueError("mean must have at least one dimension, e.g. shape (d,)")
        shape = _event_shape(event_shape, mean.numel(), mean.shape, "mean")
        mean = mean.reshape(1, -1)
        cov = as_float64(cov, "cov")
        if cov.ndim > 2:
            raise ValueError(
                f"cov has shape {tuple(cov.shape)}; expected a scalar, ({mean.shape[1]},) or ({mean.shape[1]}, "
                f"{mean.shape[1]})"
            )
        super().__init__(torch.ones(1, dtype=DTYPE), mean, shape, **_covariances(cov[None], 1, mean.shape[1], "cov"))


class Empirical(_Analytic):
    """The empirical distribution (1/n) Σ_i δ(x0 − y_i) of a finite dataset (Karras et al. 2022, App. B.3 [EDM]).

    ``data``: (n, *event_shape). Its denoiser is the ideal one of Karras et al. 2022, App. B.3 [EDM],
    a softmax over −‖x̃ − y_i‖² / (2σ̃²); its
    marginal p_t is the isotropic mixture (1/n) Σ_i N(s y_i, σ² I). It has no data density (``log_prob``
    raises). ``event_shape`` may re-view the trailing dimensions (same number of elements).
    """

    def __init__(self, data, event_shape: Sequence[int] | None = None):
        data = as_float64(data, "data")
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError(f"data must have shape (n, *event_shape) with n >= 1, got {tuple(data.shape)}")
        n = data.shape[0]
        shape = _event_shape(event_shape, data[0].numel(), data.shape[1:], "data")
        super().__init__(
            torch.full((n,), 1.0 / n, dtype=DTYPE), data.reshape(n, -1), shape, var=torch.zeros(n, dtype=DTYPE)
        )

    def _draw_components(self, n: int, generator) -> torch.Tensor:
        device = generator.device if generator is not None else None
        return torch.randint(self.num_components, (n,), generator=generator, device=device)

    def log_prob(self, x):
        """Not defined: a finite dataset is a sum of point masses. Raises ValueError."""
        raise ValueError(
            "Empirical data is a sum of point masses and has no density; use marginal_log_prob(x, t, schedule) at t > 0"
        )

    def __repr__(self):
        return f"Empirical(n={self.num_components}, event_shape={self.event_shape})"


# ====================================================================== perfect models
class AnalyticModel:
    """A perfect network: ``model(model_input, timestep)`` returns the raw output a model of the given
    parameterisation would produce if it had learnt the exact denoiser.

    It inverts exactly what a scheduler feeds: t = parameterization.t_from_model_time(schedule, timestep)
    (a scalar or per-sample timestep, integer indices included), x = model_input / c_in(t),
    x̂0 = D(x, t), output = parameterization.from_denoised(x̂0, x, t, schedule) — in float64, cast to the
    input's dtype. ``nfe`` counts calls (reset it by assigning 0).
    """

    def __init__(self, distribution: _Analytic, parameterization, schedule: NoiseSchedule):
        from unisde.plugins import get_parameterization

        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a unisde.NoiseSchedule, got {type(schedule).__name__}")
        self.distribution = distribution
        self.parameterization = get_parameterization(parameterization)
        self.schedule = schedule
        self.nfe = 0

    def times(self, timestep, batch: int) -> torch.Tensor:
        """The float64 time t (shape (batch,)) at which the model is fed ``timestep``."""
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.detach().cpu()
        t = self.parameterization.t_from_model_time(self.schedule, timestep)
        return _Analytic._per_sample(torch.as_tensor(t, dtype=DTYPE), batch, torch.device("cpu"))

    def __call__(self, model_input: torch.Tensor, timestep, *args, **kwargs) -> torch.Tensor:
        dist = self.distribution
        xf_in = dist._flat(model_input, "model_input")
        t = self.times(timestep, xf_in.shape[0])
        self.nfe += 1
        param, sched = self.parameterization, self.schedule
        x = xf_in / _expand_like(param.input_scale(sched, t), xf_in)
        x0 = dist._denoise64(x, t, sched)
        out = param.from_denoised(x0, x, t, sched)
        return out.reshape(model_input.shape).to(model_input.dtype)

    def __repr__(self):
        return f"AnalyticModel({self.distribution!r}, {self.parameterization!r}, nfe={self.nfe})"


def _unet_class():
    """AnalyticUNet is defined lazily so importing unisde.analytic does not import diffusers' model stack."""
    global _AnalyticUNet
    if _AnalyticUNet is not None:
        return _AnalyticUNet
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.models.unets.unet_2d import UNet2DOutput

    class AnalyticUNet(ModelMixin, ConfigMixin):
        """A parameter-free diffusers model whose forward is an :class:`AnalyticModel` (a perfect denoiser),
        so DDPMPipeline / DDIMPipeline and any diffusers scheduler can run on exact ground truth.

        Config: ``sample_size`` (int or (H, W)), ``in_channels``, ``out_channels`` (= in_channels). The
        single zero-size dummy parameter gives ``.device`` / ``.dtype``; ``nfe`` counts forward calls.
        """

        @register_to_config
        def __init__(self, sample_size=32, in_channels: int = 3, out_channels: int | None = None):
            super().__init__()
            if out_channels is not None and out_channels != in_channels:
                raise ValueError(
                    f"a denoiser maps images to images: out_channels ({out_channels}) must equal in_channels "
                    f"({in_channels})"
                )
            size = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
            if int(in_channels) <= 0 or len(size) != 2 or min(size) <= 0:
                raise ValueError(
                    f"need in_channels > 0 and sample_size an int or (H, W) > 0, got {in_channels}, {sample_size}"
                )
            self.event_shape = (int(in_channels), int(size[0]), int(size[1]))
            self.dummy = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
            self.analytic_model = None

        @property
        def nfe(self) -> int:
            return 0 if self.analytic_model is None else self.analytic_model.nfe

        @nfe.setter
        def nfe(self, value: int):
            self.analytic_model.nfe = value

        def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True, **kwargs):
            if self.analytic_model is None:
                raise ValueError("AnalyticUNet has no denoiser attached; build it with distribution.as_unet(...)")
            if tuple(sample.shape[1:]) != self.event_shape:
                raise ValueError(
                    f"sample has shape {tuple(sample.shape)}; expected (B, {', '.join(map(str, self.event_shape))})"
                )
            dist_shape = self.analytic_model.distribution.event_shape
            out = self.analytic_model(sample.reshape(sample.shape[0], *dist_shape), timestep).reshape(sample.shape)
            return UNet2DOutput(sample=out) if return_dict else (out,)

    _AnalyticUNet = AnalyticUNet
    return AnalyticUNet


_AnalyticUNet = None


def __getattr__(name):
    # PEP 562: `from unisde.analytic import AnalyticUNet` builds the diffusers class on first use only.
    if name == "AnalyticUNet":
        return _unet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
