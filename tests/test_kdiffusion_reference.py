"""unisde's samplers against k-diffusion's own functions (the installed package's ``k_diffusion/sampling.py``, loaded
by the ``k_sampling`` fixture), in float64 on an exact Gaussian denoiser, with the same σ grid and the same noise:

- k-diffusion works in the VE view x̃ = x/s against σ̃ = σ/s; unisde in the model's own space x = s x̃ on any
  schedule. Both runs start from the same x̃_0 (unisde's from s(t_0) x̃_0) and must end at the same sample.
- Stochastic samplers share their draws: k-diffusion's ``noise_sampler(σ, σ_next)`` and unisde's functional
  ``noise_sampler(like)`` hand out the same list of tensors (for EDM's churn, which k-diffusion draws with
  ``torch.randn_like``, see the churn test).
"""

from __future__ import annotations

import pytest
import torch

from unisde import NoiseSchedule
from unisde.analytic import Gaussian
from unisde.grids import grid_from_sigmas
from unisde.plugins import get_sampler, list_samplers
from unisde.sampling import run_loop

F64 = torch.float64
MU, V0 = 0.3, 0.6
SCHEDULES = {"edm": NoiseSchedule.edm, "vp-table": lambda: NoiseSchedule.from_diffusers_config({})}


def ve_model(x, sigma):
    """The exact denoiser of N(μ, v0 I) in k-diffusion's view: D(x̃; σ̃) = μ + v0/(v0 + σ̃²)(x̃ − μ) (k-diffusion
    passes σ̃ once per sample)."""
    sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
    return MU + V0 / (V0 + sigma**2) * (x - MU)


def karras(sched, n, rho=7.0):
    """A Karras grid of n levels inside the schedule's σ̃ range, then 0 (k-diffusion's ``get_sigmas_karras``
    layout, computed here so the test does not depend on the function under test)."""
    hi, lo = float(sched.ve_sigma(1.0)) * 0.9, float(sched.ve_sigma(1e-3)) * 1.5
    ramp = torch.linspace(0, 1, n, dtype=F64)
    levels = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([levels, torch.zeros(1, dtype=F64)])


def run_unisde(name, sched, sigmas, x_ve, options=None, noise_sampler=None):
    """The unisde sampler on the grid of these σ̃'s from s(t_0) x̃_0, in the model's space, exact denoiser."""
    dist = Gaussian(torch.full((x_ve.shape[1],), MU, dtype=F64), torch.tensor(V0, dtype=F64))
    smp = get_sampler(name)(sched, **(options or {}))
    grid = grid_from_sigmas(sched, sigmas)
    times = smp.prepare(grid)
    smp.noise_sampler = noise_sampler
    t_list = [torch.tensor(float(t), dtype=F64) for t in times]
    return run_loop(smp, x_ve * float(sched.s(grid[0])), lambda x, k: dist.denoise(x, t_list[k], sched))


def start(sigmas, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, dtype=F64, generator=gen) * float(sigmas[0]), gen


def shared_draws(gen, count):
    """Two iterators over the same ``count`` draws: k-diffusion's noise_sampler(σ, σ') and unisde's (like)."""
    draws = [torch.randn(3, 4, dtype=F64, generator=gen) for _ in range(count)]
    a, b = iter(draws), iter(draws)
    return (lambda sigma, sigma_next: next(a)), (lambda like: next(b))


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize(
    "name, k_name", [("euler", "sample_euler"), ("heun", "sample_heun"), ("dpm_2", "sample_dpm_2")]
)
def test_deterministic_samplers_are_kdiffusions(k_sampling, name, k_name, kind, n):
    sched = SCHEDULES[kind]()
    sigmas = karras(sched, n)
    x, _ = start(sigmas, n)
    ref = getattr(k_sampling, k_name)(ve_model, x.clone(), sigmas, disable=True)
    ours = run_unisde(name, sched, sigmas, x, {"view": "ve"})
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("name, k_name", [("euler", "sample_euler"), ("heun", "sample_heun")])
def test_churn_is_kdiffusions(k_sampling, monkeypatch, name, k_name, kind):
    """EDM's churn (S_churn, S_tmin, S_tmax, S_noise) with the same draws. k-diffusion draws ``torch.randn_like`` at
    every step and uses it where the step churns; unisde draws only for those steps, so it is handed the draws of
    the churning steps, in order. The window excludes the first level (unisde folds a churn there into the
    starting level, edm sampler doc) and its edges lie between levels (the σ̃ round trip through t)."""
    sched = SCHEDULES[kind]()
    sigmas = karras(sched, 8)
    x, gen = start(sigmas, 3)
    churn = dict(s_churn=2.0, s_tmin=float(sigmas[5] + sigmas[6]) / 2, s_tmax=float(sigmas[0] + sigmas[1]) / 2)
    churn["s_noise"] = 1.003
    draws = [torch.randn(3, 4, dtype=F64, generator=gen) for _ in range(len(sigmas) - 1)]
    handed = iter(draws)
    monkeypatch.setattr(torch, "randn_like", lambda like, *args, **kwargs: next(handed))
    ref = getattr(k_sampling, k_name)(ve_model, x.clone(), sigmas, disable=True, **churn)
    monkeypatch.undo()
    churning = [d for d, sigma in zip(draws, sigmas[:-1]) if churn["s_tmin"] <= sigma <= churn["s_tmax"]]
    assert 0 < len(churning) < len(draws) - 1
    ours = run_unisde(
        name, sched, sigmas, x, {"view": "ve", **churn}, noise_sampler=lambda like, it=iter(churning): next(it)
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.2)])
@pytest.mark.parametrize(
    "name, k_name",
    [("euler_ancestral", "sample_euler_ancestral"), ("dpm_2_ancestral", "sample_dpm_2_ancestral")],
)
def test_ancestral_samplers_are_kdiffusions(k_sampling, name, k_name, kind, eta, s_noise):
    sched = SCHEDULES[kind]()
    sigmas = karras(sched, 9)
    x, gen = start(sigmas, 5)
    k_noise, our_noise = shared_draws(gen, len(sigmas))  # one spare: unisde may draw a zero-scaled last one
    ref = getattr(k_sampling, k_name)(
        ve_model, x.clone(), sigmas, disable=True, eta=eta, s_noise=s_noise, noise_sampler=k_noise
    )
    options = {"eta": eta, "s_noise": s_noise}
    if name == "dpm_2_ancestral":
        options["view"] = "ve"
    ours = run_unisde(name, sched, sigmas, x, options, noise_sampler=our_noise)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_is_kdiffusions(k_sampling, kind, order):
    """k-diffusion integrates the Lagrange basis with scipy's quad at epsrel = 1e-4, unisde exactly; the runs agree to
    that quadrature's accuracy."""
    sched = SCHEDULES[kind]()
    sigmas = karras(sched, 10)
    x, _ = start(sigmas, 9)
    ref = k_sampling.sample_lms(ve_model, x.clone(), sigmas, disable=True, order=order)
    ours = run_unisde("lms", sched, sigmas, x, {"lms_order": order, "view": "ve"})
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6 * float(sigmas[0]))


@pytest.mark.skipif(
    "dpmsolver++" not in list_samplers(), reason="the unisde-dpmsolver plugin is installed by make test"
)
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("n", [3, 10])
def test_dpmpp_2m_is_kdiffusions(k_sampling, kind, n):
    sched = SCHEDULES[kind]()
    sigmas = karras(sched, n)
    x, _ = start(sigmas, n + 1)
    ref = k_sampling.sample_dpmpp_2m(ve_model, x.clone(), sigmas, disable=True)
    ours = run_unisde("dpmpp_2m", sched, sigmas, x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_menu_names_fix_their_options():
    """A preset's fixed option is not an option of it (the usual unknown-option error); a changed default is."""
    sched = NoiseSchedule.edm()
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['solver'\] for sampler 'euler'"):
        get_sampler("euler")(sched, solver="heun")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['variant'\] for sampler 'uni_pc'"):
        get_sampler("uni_pc")(sched, variant="bh2")
    assert get_sampler("euler")(sched).opts["solver"] == "euler"
    assert get_sampler("euler_ancestral")(sched).opts["eta"] == 1.0
    assert get_sampler("euler_ancestral")(sched, eta=0.5).opts["eta"] == 0.5
    assert get_sampler("uni_pc")(sched).opts["variant"] == "bh1"
    assert get_sampler("uni_pc_bh2")(sched).opts["variant"] == "bh2"
    exp_heun = {"eta": 0.0, "s_noise": 0.0, "r": 1.0, "variant": "phi_2"}
    assert get_sampler("exp_heun_2_x0")(sched).opts == get_sampler("seeds_2")(sched, **exp_heun).opts
    assert get_sampler("exp_heun_2_x0_sde")(sched).opts == get_sampler("seeds_2")(sched, r=1.0, variant="phi_2").opts
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['r'\] for sampler 'exp_heun_2_x0_sde'"):
        get_sampler("exp_heun_2_x0_sde")(sched, r=0.5)


@pytest.mark.parametrize(
    "alias, name",
    [("dpmpp_sde_gpu", "dpmpp_sde"), ("dpmpp_2m_sde_gpu", "dpmpp_2m_sde"), ("dpmpp_3m_sde_gpu", "dpmpp_3m_sde")],
)
def test_comfyui_gpu_names_are_aliases(alias, name):
    if name not in list_samplers():
        pytest.skip(f"{name} comes with the unisde-dpmsolver plugin (make install-test installs it)")
    assert get_sampler(alias) is get_sampler(name)


def test_res_multistep_ancestral_is_res_multistep_with_noise():
    sched = NoiseSchedule.edm()
    assert get_sampler("res_multistep_ancestral")(sched).opts["eta"] == 1.0
    assert get_sampler("res_multistep_ancestral")(sched, eta=0.0).opts == get_sampler("res_multistep")(sched).opts
