"""Exact denoisers (unisde.analytic) against references computed independently here: Gaussian conditioning
written out with a linear solve, quadrature over x0 for mixtures, a direct softmax for datasets (seed 001
eq. 197), autograd of the marginal density for the score (eq. 198), Monte-Carlo bounds for sampling, and real
diffusers pipelines for the model adapters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import unisde
import unisde.analytic as analytic
from unisde import NoiseSchedule
from unisde.analytic import Empirical, Gaussian, GaussianMixture

F64 = torch.float64


def _schedules():
    return {
        "vp-table": NoiseSchedule.from_diffusers_config({}),
        "ve": NoiseSchedule.ve(),
        "edm": NoiseSchedule.edm(),
        "cosine": NoiseSchedule.vp_cosine(),
    }


SCHEDULES = _schedules()
SCHEDULE_IDS = ("vp-table", "ve", "edm")  # the three the Tweedie and round-trip checks run on


def _random_cov(d: int, gen: torch.Generator, floor: float = 0.05) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=F64)
    return a @ a.T / d + floor * torch.eye(d, dtype=F64)


def _st(schedule, t):
    """(s, σ) straight from the schedule, (B, 1) for broadcasting."""
    t = torch.as_tensor(t, dtype=F64)
    return schedule.s(t).reshape(-1, 1), schedule.sigma(t).reshape(-1, 1)


def _noisy(x0: torch.Tensor, schedule, t, gen) -> torch.Tensor:
    s, sigma = _st(schedule, t)
    flat = x0.reshape(x0.shape[0], -1)
    return (s * flat + sigma * torch.randn(flat.shape, generator=gen, dtype=F64)).reshape(x0.shape)


# ---------------------------------------------------------------------------------------------- Gaussian
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_gaussian_denoise_is_gaussian_conditioning(name):
    schedule = SCHEDULES[name]
    gen = torch.Generator().manual_seed(0)
    d, shape = 6, (1, 2, 3)
    mu, cov = torch.randn(d, generator=gen, dtype=F64), _random_cov(d, gen)
    dist = Gaussian(mu, cov, event_shape=shape)
    t = torch.tensor([0.02, 0.2, 0.5, 0.9], dtype=F64)
    x = _noisy(dist.sample(4, gen, dtype=F64), schedule, t, gen)
    s, sigma = _st(schedule, t)
    # E[x0|x] = μ + Cov(x0, x) Var(x)⁻¹ (x − s μ) with Cov(x0, x) = s Σ, Var(x) = s² Σ + σ² I.
    ref = torch.stack(
        [
            mu
            + s[i]
            * cov
            @ torch.linalg.solve(s[i] ** 2 * cov + sigma[i] ** 2 * torch.eye(d, dtype=F64), x[i].flatten() - s[i] * mu)
            for i in range(4)
        ]
    )
    got = dist.denoise(x, t, schedule)
    assert got.shape == x.shape and got.dtype == F64
    torch.testing.assert_close(got.reshape(4, d), ref, rtol=1e-10, atol=1e-10)
    # A scalar t gives the same as a constant per-sample t.
    torch.testing.assert_close(
        dist.denoise(x, 0.3, schedule), dist.denoise(x, torch.full((4,), 0.3, dtype=F64), schedule), rtol=0, atol=0
    )


def test_gaussian_isotropic_and_diagonal_covariances_agree_with_full():
    schedule = SCHEDULES["vp-table"]
    gen = torch.Generator().manual_seed(1)
    mu, diag = torch.randn(5, generator=gen, dtype=F64), torch.rand(5, generator=gen, dtype=F64) + 0.1
    x, t = torch.randn(3, 5, generator=gen, dtype=F64), torch.tensor([0.1, 0.4, 0.8])
    for cov, full in ((0.7, 0.7 * torch.eye(5, dtype=F64)), (diag, torch.diag(diag))):
        a, b = Gaussian(mu, cov), Gaussian(mu, full)
        torch.testing.assert_close(a.denoise(x, t, schedule), b.denoise(x, t, schedule), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            a.marginal_log_prob(x, t, schedule), b.marginal_log_prob(x, t, schedule), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(a.cov, full, rtol=0, atol=1e-15)


def test_gaussian_mmse_monte_carlo():
    """E‖x0 − D(x_t)‖² equals tr Cov[x0 | x_t] = tr(Σ − s² Σ (s² Σ + σ² I)⁻¹ Σ), and E[x0 − D] = 0 (5 s.e.)."""
    schedule = SCHEDULES["vp-table"]
    gen = torch.Generator().manual_seed(2)
    d, n, t = 8, 20000, 0.3
    mu, cov = torch.randn(d, generator=gen, dtype=F64), _random_cov(d, gen)
    dist = Gaussian(mu, cov)
    x0 = dist.sample(n, gen, dtype=F64)
    err = x0 - dist.denoise(_noisy(x0, schedule, t, gen), t, schedule)
    s, sigma = float(schedule.s(t)), float(schedule.sigma(t))
    post = cov - s**2 * cov @ torch.linalg.solve(s**2 * cov + sigma**2 * torch.eye(d, dtype=F64), cov)
    sq = err.pow(2).sum(1)
    assert abs(sq.mean() - torch.trace(post)) < 5 * sq.std() / math.sqrt(n)
    assert (err.mean(0).abs() < 5 * err.std(0) / math.sqrt(n)).all()


def test_log_prob_matches_torch_distributions():
    gen = torch.Generator().manual_seed(3)
    mu, cov = torch.randn(4, generator=gen, dtype=F64), _random_cov(4, gen)
    x = torch.randn(7, 4, generator=gen, dtype=F64)
    ref = torch.distributions.MultivariateNormal(mu, cov).log_prob(x)
    g = Gaussian(mu, cov)
    torch.testing.assert_close(g.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    # log p_t at a time with σ = 0 and s = 1 is the data density itself.
    torch.testing.assert_close(g.marginal_log_prob(x, 0.0, SCHEDULES["vp-table"]), ref, rtol=1e-12, atol=1e-12)
    means = torch.randn(3, 4, generator=gen, dtype=F64)
    covs = torch.stack([_random_cov(4, gen) for _ in range(3)])
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    mix_ref = torch.logsumexp(
        torch.stack(
            [w[k].log() + torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(x) for k in range(3)]
        ),
        0,
    )
    torch.testing.assert_close(GaussianMixture(w, means, covs).log_prob(x), mix_ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- mixture
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_mixture_denoise_and_marginal_by_1d_quadrature(name):
    schedule = SCHEDULES[name]
    w, mu, var = [0.3, 0.5, 0.2], [-2.0, 0.5, 3.0], [0.25, 1.0, 0.04]
    dist = GaussianMixture(w, torch.tensor(mu)[:, None], torch.tensor(var))
    grid = torch.linspace(-14, 14, 40001, dtype=F64)
    prior = sum(
        wk * torch.exp(-((grid - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v) for wk, m, v in zip(w, mu, var)
    )
    for t in (0.1, 0.35, 0.7):
        s, sigma = float(schedule.s(t)), float(schedule.sigma(t))
        x = s * torch.tensor([-2.5, -0.3, 0.4, 2.9, 5.0], dtype=F64)
        like = torch.exp(-((x[:, None] - s * grid) ** 2) / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2)
        joint = prior * like
        z = torch.trapezoid(joint, grid, dim=1)
        ref_mean = torch.trapezoid(joint * grid, grid, dim=1) / z
        torch.testing.assert_close(dist.denoise(x[:, None], t, schedule)[:, 0], ref_mean, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(dist.marginal_log_prob(x[:, None], t, schedule), z.log(), rtol=1e-8, atol=1e-8)


def test_mixture_full_covariance_by_2d_quadrature():
    schedule = SCHEDULES["vp-table"]
    w = torch.tensor([0.6, 0.4], dtype=F64)
    means = torch.tensor([[-1.0, 0.5], [1.5, -1.0]], dtype=F64)
    covs = torch.tensor([[[0.8, 0.5], [0.5, 0.6]], [[0.3, -0.2], [-0.2, 0.9]]], dtype=F64)
    dist = GaussianMixture(w, means, covs)
    axis = torch.linspace(-8, 8, 801, dtype=F64)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    prior = sum(w[k] * torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(pts).exp() for k in range(2))
    t = 0.3
    s, sigma = float(schedule.s(t)), float(schedule.sigma(t))
    x = torch.tensor([[0.0, 0.0], [1.0, -0.8], [-1.2, 1.1]], dtype=F64)
    like = torch.exp(-((x[:, None, :] - s * pts[None]) ** 2).sum(-1) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    joint = (prior * like).reshape(3, 801, 801)

    def integrate(f):
        return torch.trapezoid(torch.trapezoid(f, axis, dim=-1), axis, dim=-1)

    z = integrate(joint)
    ref = torch.stack([integrate(joint * gx), integrate(joint * gy)], 1) / z[:, None]
    torch.testing.assert_close(dist.denoise(x, t, schedule), ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(dist.marginal_log_prob(x, t, schedule), z.log(), rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------------------------------------- empirical
@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_empirical_is_the_softmax_of_eq_197(chunk, monkeypatch):
    monkeypatch.setattr(analytic, "_CHUNK_ELEMENTS", chunk)  # 7: one data point per block, many blocks
    gen = torch.Generator().manual_seed(4)
    data = torch.randn(40, 1, 3, 3, generator=gen, dtype=F64) + 3.0
    dist = Empirical(data)
    y = data.flatten(1)
    for name in ("vp-table", "edm"):
        schedule = SCHEDULES[name]
        t = torch.tensor([0.05, 0.3, 0.6], dtype=F64)
        x = _noisy(data[[3, 17, 30]], schedule, t, gen)
        s, sigma = _st(schedule, t)
        xt = x.flatten(1) / s  # VE view x̃ = x/s, σ̃ = σ/s
        logits = -((xt[:, None, :] - y[None]) ** 2).sum(-1) / (2 * (sigma / s) ** 2)
        ref = torch.softmax(logits, 1) @ y
        torch.testing.assert_close(dist.denoise(x, t, schedule).flatten(1), ref, rtol=1e-10, atol=1e-10)
        # p_t = (1/n) Σ N(x; s y_i, σ² I), summed directly.
        d = y.shape[1]
        comp = -((x.flatten(1)[:, None] - s[:, :, None] * y[None]) ** 2).sum(-1) / (2 * sigma**2) - 0.5 * d * torch.log(
            2 * math.pi * sigma**2
        )
        ref_lp = torch.logsumexp(comp, 1) - math.log(len(y))
        torch.testing.assert_close(dist.marginal_log_prob(x, t, schedule), ref_lp, rtol=1e-10, atol=1e-10)


def test_noise_free_time_and_zero_terminal_snr():
    data = torch.randn(10, 4, dtype=F64)
    table = SCHEDULES["vp-table"]
    emp, gauss = Empirical(data), Gaussian(torch.zeros(4), 0.5)
    x = torch.randn(3, 4, dtype=F64)
    # σ(0) = 0: x = s x0 exactly, so every denoiser is x/s (s(0) = 1).
    for dist in (emp, gauss):
        torch.testing.assert_close(dist.denoise(x, 0.0, table), x, rtol=0, atol=0)
        with pytest.raises(ValueError, match="σ"):
            dist.score(x, torch.tensor([0.0, 0.5, 0.5]), table)
    with pytest.raises(ValueError, match="singular"):
        emp.marginal_log_prob(x, 0.0, table)
    with pytest.raises(ValueError, match="no density"):
        emp.log_prob(x)
    # Zero terminal SNR: s(1) = 0, the data is forgotten: D(x, 1) is the data mean (to s(t_end) ≈ 2⁻¹²).
    zero = NoiseSchedule.from_diffusers_config({"rescale_betas_zero_snr": True})
    for dist in (emp, gauss):
        out = dist.denoise(3 * x, 1.0, zero)
        assert torch.isfinite(out).all() and torch.isfinite(dist.score(3 * x, 1.0, zero)).all()
        assert (out - dist.mean).abs().max() < 0.02


# ---------------------------------------------------------------------------------------------- Tweedie
def _distributions():
    gen = torch.Generator().manual_seed(5)
    d, shape = 4, (1, 2, 2)
    return {
        "gaussian": Gaussian(torch.randn(d, generator=gen, dtype=F64), _random_cov(d, gen), event_shape=shape),
        "mixture-full": GaussianMixture(
            [0.5, 0.3, 0.2],
            torch.randn(3, *shape, generator=gen, dtype=F64),
            torch.stack([_random_cov(d, gen) for _ in range(3)]),
        ),
        "mixture-iso": GaussianMixture(
            [1.0, 3.0], torch.randn(2, *shape, generator=gen, dtype=F64), torch.tensor([0.1, 0.4])
        ),
        "empirical": Empirical(torch.randn(25, *shape, generator=gen, dtype=F64)),
    }


DISTRIBUTIONS = _distributions()


@pytest.mark.parametrize("sched", SCHEDULE_IDS)
@pytest.mark.parametrize("kind", list(DISTRIBUTIONS))
def test_score_is_gradient_of_marginal_log_prob(kind, sched):
    """Tweedie / seed 001 eq. 198: (s D − x)/σ² equals ∇ log p_t computed by autograd of the closed form."""
    dist, schedule = DISTRIBUTIONS[kind], SCHEDULES[sched]
    gen = torch.Generator().manual_seed(6)
    t = torch.tensor([0.05, 0.25, 0.5, 0.8], dtype=F64)
    x = _noisy(dist.sample(4, gen, dtype=F64), schedule, t, gen).requires_grad_(True)
    (grad,) = torch.autograd.grad(dist.marginal_log_prob(x, t, schedule).sum(), x)
    score = dist.score(x.detach(), t, schedule)
    torch.testing.assert_close(score, grad, rtol=1e-8, atol=1e-8 * grad.abs().max().item())


# ---------------------------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("sched", SCHEDULE_IDS + ("vp-linear",))
@pytest.mark.parametrize("pname", unisde.list_parameterizations())
def test_as_model_round_trip(pname, sched):
    schedule = SCHEDULES.get(sched) or NoiseSchedule.vp_linear()
    param = unisde.get_parameterization(pname)
    dist = DISTRIBUTIONS["mixture-full"]
    model = dist.as_model(pname, schedule)
    gen = torch.Generator().manual_seed(7)
    t = torch.tensor([0.03, 0.3, 0.6, 0.95], dtype=F64)
    x = _noisy(dist.sample(4, gen, dtype=F64), schedule, t, gen)
    out = model(param.model_input(x, t, schedule), param.model_time(schedule, t))
    torch.testing.assert_close(
        param.to_denoised(out, x, t, schedule), dist.denoise(x, t, schedule), rtol=1e-10, atol=1e-10
    )
    # A scalar timestep shared by the batch.
    out = model(param.model_input(x, 0.4, schedule), param.model_time(schedule, torch.tensor(0.4, dtype=F64)))
    torch.testing.assert_close(
        param.to_denoised(out, x, 0.4, schedule), dist.denoise(x, 0.4, schedule), rtol=1e-10, atol=1e-10
    )
    assert model.nfe == 2


def test_as_model_integer_training_indices_and_dtype():
    """A diffusers scheduler feeds int64 training indices i: the model answers for t_i = (i + 1)/N."""
    schedule, dist = SCHEDULES["vp-table"], DISTRIBUTIONS["gaussian"]
    model = dist.as_model("epsilon", schedule)
    x = torch.randn(2, 1, 2, 2, dtype=F64)
    idx = torch.tensor([9, 499])
    eps = model(x, idx)
    t = (idx + 1).to(F64) / 1000
    s, sigma = _st(schedule, t)
    ref = (x.flatten(1) - s * dist.denoise(x, t, schedule).flatten(1)) / sigma  # ε̂ = (x − s x̂0)/σ, eq. 95
    torch.testing.assert_close(eps.flatten(1), ref, rtol=1e-10, atol=1e-10)
    out32 = model(x.float(), idx)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, eps.float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        model(x, torch.tensor([1, 2, 3]))


def test_as_unet_drives_real_diffusers_pipelines():
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    from unisde.analytic import AnalyticUNet

    data_mean, data_std = 0.2, 0.1  # in [-1, 1] pixel units; the pipelines output image/2 + 0.5
    dist = Gaussian(torch.full((64,), data_mean), data_std**2, event_shape=(1, 8, 8))

    scheduler = DDPMScheduler(num_train_timesteps=1000)  # unisde-free: plain diffusers
    unet = dist.as_unet("epsilon", NoiseSchedule.from_diffusers_config(scheduler.config), sample_size=8, in_channels=1)
    assert isinstance(unet, AnalyticUNet) and unet.config.out_channels is None and unet.dtype == torch.float32
    images = DDPMPipeline(unet=unet, scheduler=scheduler)(
        batch_size=4, num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (4, 8, 8, 1) and np.isfinite(images).all()
    assert unet.nfe == 5
    # Ancestral steps with the exact x̂0 preserve the mean of a Gaussian; 256 pixels of std 0.05 → s.e. 0.003.
    assert abs(images.mean() - (0.5 + data_mean / 2)) < 0.02

    # v-prediction through diffusers' DDIM (η = 0) against DDIM written out here with the closed-form Gaussian
    # posterior mean μ + v/(v + σ̃²)(x̃ − μ) on the scheduler's own ᾱ table: identical images (float32).
    scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    unet = dist.as_unet(
        "v_prediction", NoiseSchedule.from_diffusers_config(scheduler.config), sample_size=8, in_channels=1
    )
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    images = pipe(
        batch_size=8, num_inference_steps=20, output_type="np", generator=torch.Generator().manual_seed(1)
    ).images
    scheduler = pipe.scheduler  # the pipeline re-creates its scheduler; read the time grid it actually used
    x = torch.randn((8, 1, 8, 8), generator=torch.Generator().manual_seed(1)).to(F64)
    abar, steps = scheduler.alphas_cumprod.to(F64), scheduler.timesteps.tolist()
    for i, step in enumerate(steps):
        a = abar[step]
        a_prev = abar[steps[i + 1]] if i + 1 < len(steps) else torch.as_tensor(scheduler.final_alpha_cumprod, dtype=F64)
        var_ve = (1 - a) / a
        x0 = data_mean + data_std**2 / (data_std**2 + var_ve) * (x / a.sqrt() - data_mean)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    ref = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, ref, rtol=0, atol=2e-5)
    assert unet.nfe == 20
    with pytest.raises(ValueError, match="elements"):
        dist.as_unet("epsilon", NoiseSchedule.from_diffusers_config(scheduler.config), sample_size=4, in_channels=1)


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kind", ["gaussian", "mixture-full", "mixture-iso", "empirical"])
def test_sample_moments(kind):
    dist = DISTRIBUTIONS[kind]
    n = 40000
    x = dist.sample(n, torch.Generator().manual_seed(8), dtype=F64).flatten(1)
    assert dist.sample(3).dtype == torch.float32 and dist.sample(3).shape == (3, *dist.event_shape)
    mean, cov = dist.mean, dist.cov
    centred = x - mean
    # Each moment estimate is an average of n i.i.d. terms: bound by 5 of its own standard errors.
    assert ((x.mean(0) - mean).abs() < 5 * centred.std(0) / math.sqrt(n)).all()
    prods = centred[:, :, None] * centred[:, None, :]
    assert ((prods.mean(0) - cov).abs() < 5 * prods.std(0) / math.sqrt(n) + 1e-12).all()


def test_sample_is_reproducible_with_a_generator():
    dist = DISTRIBUTIONS["mixture-full"]
    a = dist.sample(5, torch.Generator().manual_seed(9))
    b = dist.sample(5, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_empirical_moments_are_the_data_moments():
    data = torch.randn(30, 3, dtype=F64)
    dist = Empirical(data)
    torch.testing.assert_close(dist.mean, data.mean(0))
    torch.testing.assert_close(dist.cov, torch.cov(data.T, correction=0))


# ---------------------------------------------------------------------------------------------- bad input
def test_unnormalised_weights_are_normalised():
    means, x = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.7]])
    a = GaussianMixture([2.0, 2.0], means, [0.5, 0.5])
    b = GaussianMixture([0.5, 0.5], means, [0.5, 0.5])
    torch.testing.assert_close(a.weights, b.weights)
    torch.testing.assert_close(a.denoise(x, 0.3, SCHEDULES["ve"]), b.denoise(x, 0.3, SCHEDULES["ve"]), rtol=0, atol=0)


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: Gaussian(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]])),
            r"cov\[0\] is not positive semi-definite.*-1",
        ),
        (lambda: Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]])), r"cov\[0\] is not symmetric"),
        (lambda: Gaussian(torch.zeros(2), -1.0), r"cov\[0\] = -1.0 is a negative variance"),
        (lambda: Gaussian(torch.zeros(3), torch.eye(2)), r"cov has shape \(1, 2, 2\).*\(1, 3, 3\)"),
        (
            lambda: Gaussian(torch.zeros(4), 1.0, event_shape=(1, 3, 3)),
            r"event_shape \(1, 3, 3\) has 9 elements.*dimension 4",
        ),
        (lambda: Gaussian([0.0, float("nan")], 1.0), r"mean contains a non-finite value"),
        (lambda: GaussianMixture([0.5, -0.5, 1.0], torch.zeros(3, 2), 1.0), r"weights\[1\] = -0.5"),
        (lambda: GaussianMixture([0.0, 0.0], torch.zeros(2, 2), 1.0), r"weights must not all be zero"),
        (lambda: GaussianMixture([0.5, 0.5], torch.zeros(3, 2), 1.0), r"means has shape \(3, 2\).*for 2 weights"),
        (lambda: GaussianMixture([0.5, 0.5], torch.zeros(2, 2), torch.ones(3)), r"covs has shape \(3,\)"),
        (lambda: GaussianMixture([0.5, 0.5], torch.zeros(2, 2), torch.ones(2, 3)), r"covs has shape \(2, 3\)"),
        (lambda: Empirical(torch.zeros(0, 3)), r"data must have shape .* got \(0, 3\)"),
        (lambda: Empirical(torch.zeros(5)), r"data must have shape .* got \(5,\)"),
    ],
)
def test_bad_construction_is_rejected(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_call_arguments_are_rejected():
    dist, schedule = DISTRIBUTIONS["gaussian"], SCHEDULES["ve"]
    x = torch.zeros(3, 1, 2, 2)
    with pytest.raises(ValueError, match=r"x has shape \(3, 4\); expected \(B, 1, 2, 2\)"):
        dist.denoise(torch.zeros(3, 4), 0.5, schedule)
    with pytest.raises(ValueError, match=r"t has shape \(2,\); expected a scalar or shape \(3,\)"):
        dist.denoise(x, torch.tensor([0.1, 0.2]), schedule)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\].*1.5"):
        dist.denoise(x, 1.5, schedule)
    with pytest.raises(ValueError, match="NoiseSchedule"):
        dist.denoise(x, 0.5, "ve")
    with pytest.raises(ValueError, match="n must be a positive int"):
        dist.sample(0)
    with pytest.raises(ValueError, match="unknown parameterization"):
        dist.as_model("epsilonn", schedule)


@pytest.mark.parametrize("target", ["mixture-8x8", "mixture-2d"])
def test_a_batch_at_one_time_takes_the_same_posterior_as_per_sample_times(target):
    """Where the whole batch shares its time (every sampler call) the posterior broadcasts one row of per-direction
    variances; the values are elementwise those of the per-sample rows, so the result is bitwise the same as the
    per-sample path (which a batch whose s or σ requires grad still takes), for full-covariance and isotropic
    mixtures; a batch of different times agrees row by row with single-time calls."""
    from unisde.bench.targets import make_target

    dist = make_target(target)
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(64, dist.dim, generator=gen, dtype=torch.float64)
    s, sigma = torch.full((64,), 0.3, dtype=torch.float64), torch.full((64,), 0.95, dtype=torch.float64)
    shared = dist._posterior(x, s, sigma)
    per_sample = dist._posterior(x, s.clone().requires_grad_(True), sigma)
    assert torch.equal(shared[0], per_sample[0].detach()) and torch.equal(shared[1], per_sample[1].detach())
    mixed_s = torch.linspace(0.2, 0.9, 64, dtype=torch.float64)
    mixed = dist._posterior(x, mixed_s, sigma)
    for i in (0, 31, 63):
        one = dist._posterior(x[i : i + 1], mixed_s[i : i + 1], sigma[i : i + 1])
        torch.testing.assert_close(mixed[1][i], one[1][0], rtol=1e-12, atol=1e-12)
