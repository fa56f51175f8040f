"""Denoising score-matching objectives: weights against their formulas, the exact denoiser as minimiser,
live parity with diffusers' DDPM training quantities, noise-level distributions, the standalone train step."""

import math

import pytest
import torch

import unisde
from unisde.training import (
    LOSS_WEIGHTINGS,
    DenoisingScoreMatching,
    make_objective,
    make_train_step,
    output_loss_weight,
    sample_time,
    x0_loss_weight,
)
from unisde.training.config import resolve_schedule

SCHEDULES = ["vp-linear", "edm", "ddpm-linear", "cosine", "ve"]
PARAMS = ["epsilon", "sample", "v_prediction", "score", "edm"]


def _coeffs(schedule, t):
    """s, σ, σ̃, g² straight from the schedule's primitives (not through any parameterisation)."""
    s, sigma = schedule.s(t), schedule.sigma(t)
    return s, sigma, sigma / s, schedule.g2(t)


@pytest.mark.parametrize("name", SCHEDULES)
def test_x0_weights_match_their_formulas(name):
    schedule = resolve_schedule(name)
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    s, sigma, sig_ve, g2 = _coeffs(schedule, t)
    sd = 0.7
    expected = {
        "epsilon": s**2 / sigma**2,  # ‖ε̂−ε‖² = s²/σ² ‖x̂0−x0‖²
        "score": sigma**2 * s**2 / sigma**4,  # λ_score = σ², ŝ−s* = s(x̂0−x0)/σ²
        "x0": torch.ones_like(t),
        "v": (s**2 + sigma**2) / sigma**2,  # 1 + SNR
        "edm": (sig_ve**2 + sd**2) / (sig_ve * sd) ** 2,  # seed 001 eq. 217
        "likelihood": g2 * s**2 / sigma**4,  # Song et al. 2021: g² on the score loss
    }
    param = unisde.get_parameterization("epsilon")
    for weighting, ref in expected.items():
        got = x0_loss_weight(weighting, schedule, param, t, sigma_data=sd)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=0, msg=f"{name}/{weighting}")


@pytest.mark.parametrize("name", ["vp-linear", "edm", "ddpm-linear"])
def test_output_weights_reduce_to_plain_mse_for_the_matching_parameterisation(name):
    schedule = resolve_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    _, sigma, _, _ = _coeffs(schedule, t)
    for param, weighting in [("epsilon", "epsilon"), ("v_prediction", "v"), ("sample", "x0"), ("edm", "edm")]:
        p = unisde.get_parameterization(param)
        w = output_loss_weight(weighting, schedule, p, t)
        torch.testing.assert_close(w, torch.ones_like(t), rtol=1e-9, atol=0, msg=f"{param}/{weighting}")
    # score prediction under the σ²-weighted score loss: w = σ² (Song et al.'s λ(t) = σ²)
    w = output_loss_weight("score", schedule, unisde.get_parameterization("score"), t)
    torch.testing.assert_close(w, sigma**2, rtol=1e-9, atol=0)
    for p in PARAMS:
        w = output_loss_weight("default", schedule, unisde.get_parameterization(p), t)
        assert torch.equal(w, torch.ones_like(t))


def _gaussian_denoiser(schedule, t, mu, c):
    """Exact E[x0 | x_t] for x0 ~ N(mu, c² I): mu + s c²/(s²c² + σ²) (x_t − s mu)."""
    s, sigma = schedule.s(t), schedule.sigma(t)
    gain = (s * c * c / (s * s * c * c + sigma * sigma)).reshape(-1, 1, 1, 1)
    s = s.reshape(-1, 1, 1, 1)
    return lambda x_t: mu + gain * (x_t - s * mu)


def _directional_gradient(objective, x0, t, noise, denoiser_shift=0.0):
    """Per-sample d/dδ of the loss at δ = 0 for the model whose denoised estimate is x̂0 + δ k(x_t), x̂0 the exact
    Gaussian denoiser (shifted by ``denoiser_shift``): the loss is quadratic in δ, so the central difference of
    the per-sample losses at δ = ±1 is exact."""
    schedule, param = objective.schedule, objective.parameterization
    x_t = schedule.add_noise(x0, noise, t)
    x0_hat = _gaussian_denoiser(schedule, t, 0.3, 0.8)(x_t) + denoiser_shift
    k = torch.tanh(x_t) + 0.5

    def model(delta):
        out = param.from_denoised(x0_hat + delta * k, x_t, t, schedule)
        return lambda model_input, timestep: out

    plus = objective.loss(model(1.0), x0, t=t, noise=noise, reduction="none")
    minus = objective.loss(model(-1.0), x0, t=t, noise=noise, reduction="none")
    return (plus - minus) / 2


@pytest.mark.parametrize(
    "schedule_name,param",
    [("vp-linear", p) for p in PARAMS] + [("ddpm-linear", "epsilon"), ("edm", "edm"), ("cosine", "v_prediction")],
)
def test_exact_denoiser_minimises_every_weighting(schedule_name, param):
    """E[dL/dδ] = 0 at the exact denoiser (within 5 standard errors of the Monte-Carlo mean), for every
    weighting; a denoiser off by 0.5 is detected (> 5 standard errors) so the test can fail."""
    schedule = resolve_schedule(schedule_name)
    gen = torch.Generator().manual_seed(1234)
    n = 2000
    for weighting in LOSS_WEIGHTINGS:
        dist = "uniform_index" if schedule.is_discrete else "uniform_t"
        obj = DenoisingScoreMatching(schedule, unisde.get_parameterization(param), weighting, dist, t_min=0.02)
        t = obj.sample_time(n, gen).clamp(0.02, 0.98)  # keep the heavy-tailed weights' variance finite
        x0 = 0.3 + 0.8 * torch.randn(n, 1, 2, 2, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, 1, 2, 2, generator=gen, dtype=torch.float64)
        g = _directional_gradient(obj, x0, t, noise)
        se = g.std() / math.sqrt(n)
        assert abs(g.mean()) < 5 * se, f"{schedule_name}/{param}/{weighting}: mean {g.mean():.3g}, se {se:.3g}"
        bad = _directional_gradient(obj, x0, t, noise, denoiser_shift=0.5)
        assert abs(bad.mean()) > 5 * bad.std() / math.sqrt(n), f"{schedule_name}/{param}/{weighting}: test cannot fail"


def test_ddpm_training_quantities_match_diffusers():
    """uniform_index on the DDPM table draws diffusers' integer timesteps; x_t equals DDPMScheduler.add_noise,
    the ε target is the noise and the v target DDPMScheduler.get_velocity."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    schedule = resolve_schedule(dict(ref.config))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, 4, 4, generator=gen)
    noise = torch.randn(64, 3, 4, 4, generator=gen)
    t = sample_time("uniform_index", schedule, 64, torch.Generator().manual_seed(1))
    index = torch.round(t * 1000 - 1).long()
    torch.testing.assert_close(t, (index.double() + 1) / 1000, rtol=0, atol=1e-12)
    for param, target_ref in [("epsilon", noise), ("v_prediction", ref.get_velocity(x0, noise, index))]:
        obj = make_objective(schedule, param, "default", "uniform_index")
        model_input, timestep, target, weight = obj.prepare(x0, t, noise)
        torch.testing.assert_close(model_input, ref.add_noise(x0, noise, index), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(timestep, index.float(), rtol=0, atol=1e-4)
        torch.testing.assert_close(target, target_ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(weight, torch.ones_like(weight))


def test_epsilon_loss_is_diffusers_mse():
    """With ε-prediction and the default weighting the loss is F.mse_loss(model(x_t, i), ε) as in
    diffusers' train_unconditional.py."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000)
    obj = make_objective("ddpm-linear", "epsilon")
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(8, 1, 4, 4, generator=gen), torch.randn(8, 1, 4, 4, generator=gen)
    t = sample_time("uniform_index", obj.schedule, 8, gen)
    index = torch.round(t * 1000 - 1).long()
    model = lambda x, ts: torch.sin(x) * (1 + ts.reshape(-1, 1, 1, 1) / 1000)  # noqa: E731
    got = obj.loss(model, x0, t=t, noise=noise)
    want = torch.nn.functional.mse_loss(model(ref.add_noise(x0, noise, index), index.float()), noise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lognormal_noise_levels_have_the_edm_moments():
    schedule = resolve_schedule("edm")  # σ range [0.002, 80] covers N(−1.2, 1.2²) to ±4.2 std
    n = 20000
    t = sample_time("lognormal", schedule, n, torch.Generator().manual_seed(5), t_min=0.0)
    log_sigma = torch.log(schedule.ve_sigma(t))
    se = 1.2 / math.sqrt(n)
    assert abs(log_sigma.mean() + 1.2) < 5 * se
    assert abs(log_sigma.std() - 1.2) < 5 * 1.2 / math.sqrt(2 * n) + 1e-3  # t_from_sigma round trip error
    t2 = sample_time("lognormal", schedule, 1000, torch.Generator().manual_seed(5), p_mean=0.3, p_std=0.5, t_min=0.0)
    assert abs(torch.log(schedule.ve_sigma(t2)).mean() - 0.3) < 5 * 0.5 / math.sqrt(1000)


def test_uniform_index_and_uniform_t():
    schedule = resolve_schedule({"beta_schedule": "linear", "num_train_timesteps": 10})
    n = 20000
    t = sample_time("uniform_index", schedule, n, torch.Generator().manual_seed(2))
    index = t * 10 - 1
    torch.testing.assert_close(index, torch.round(index), rtol=0, atol=1e-9)
    counts = torch.bincount(torch.round(index).long(), minlength=10).double()
    expected = n / 10
    assert counts.numel() == 10
    assert ((counts - expected).abs() < 5 * math.sqrt(expected * 0.9)).all(), counts
    u = sample_time("uniform_t", resolve_schedule("vp-linear"), n, torch.Generator().manual_seed(2), t_min=0.1)
    assert u.min() >= 0.1 and u.max() <= 1.0
    assert abs(u.mean() - 0.55) < 5 * (0.9 / math.sqrt(12)) / math.sqrt(n)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown loss weighting 'l2'.*valid choices"):
        make_objective("vp-linear", "epsilon", "l2")
    with pytest.raises(ValueError, match="unknown noise distribution 'gauss'.*lognormal"):
        make_objective("vp-linear", "epsilon", "default", "gauss")
    with pytest.raises(ValueError, match="unknown schedule 'vp-lin'.*Did you mean"):
        make_objective("vp-lin", "epsilon")
    with pytest.raises(ValueError, match="unknown parameterization 'epsilonn'"):
        make_objective("vp-linear", "epsilonn")
    with pytest.raises(ValueError, match="reduction"):
        make_objective("vp-linear", "epsilon").loss(lambda x, t: x, torch.zeros(1, 1, 2, 2), reduction="sum")


def test_every_combination_gives_a_finite_loss():
    x0 = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for schedule in SCHEDULES:
        for param in PARAMS:
            for weighting in LOSS_WEIGHTINGS:
                for dist in ("uniform_t", "uniform_index", "lognormal"):
                    obj = make_objective(schedule, param, weighting, dist)
                    loss = obj.loss(lambda x, ts: torch.zeros_like(x), x0, torch.Generator().manual_seed(1))
                    assert torch.isfinite(loss), (schedule, param, weighting, dist)


class _TinyDenoiser(torch.nn.Module):
    """A two-layer conv net fed (x, timestep), enough to check that a step descends."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Conv2d(2, 16, 3, padding=1)
        self.out = torch.nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x, timestep):
        t = (timestep.float() / 1000).reshape(-1, 1, 1, 1).expand_as(x)
        return self.out(torch.nn.functional.silu(self.inp(torch.cat([x, t], 1))))


def test_make_train_step_learns():
    """The standalone step (used by the throughput benchmark) lowers the loss on fixed data."""
    torch.manual_seed(0)
    model = _TinyDenoiser()
    step = make_train_step(model, "vp-cosine", "v_prediction", "default", "uniform_t", learning_rate=1e-2)
    batch = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def eval_loss():
        with torch.no_grad():
            return float(step.objective.loss(model, batch, torch.Generator().manual_seed(99)))

    before = eval_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        loss = step(batch, gen)
        assert loss.ndim == 0 and torch.isfinite(loss)
    assert eval_loss() < 0.7 * before


def test_adamw_is_torchs_adamw_fused_on_the_cpu_with_the_same_update():
    from unisde.training.objectives import adamw

    torch.manual_seed(0)
    models = [torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)]
    models[1].load_state_dict(models[0].state_dict())
    hyper = dict(lr=1e-2, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ours = adamw(models[0].parameters(), **hyper)
    plain = torch.optim.AdamW(models[1].parameters(), **hyper)
    assert ours.defaults["fused"] is True and not plain.defaults.get("fused")
    x = torch.randn(16, 5)
    for _ in range(5):
        for model, opt in zip(models, (ours, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(models[0].weight, torch.nn.Linear(5, 3).weight)
    # parameter groups are taken as torch takes them
    groups = [{"params": [models[0].weight]}, {"params": [models[0].bias], "lr": 0.0}]
    assert [g["lr"] for g in adamw(groups, lr=1e-3).param_groups] == [1e-3, 0.0]
