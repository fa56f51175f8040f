"""NoiseSchedule: seed 000's table (eq. 24), closed forms, the eq. 25 round trip, the tabulated extension's
properties, endpoint behaviour, index ↔ t, live parity with diffusers, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unisde import NoiseSchedule
from unisde.core.schedule import LOG_SNR_MAX, ZERO_SNR_LOG_SNR

F64 = torch.float64


def _gauss_legendre_per_interval(fn, left: torch.Tensor, width: float, order: int = 8) -> torch.Tensor:
    """∫_{left_k}^{left_k + width} fn for every k (Gauss–Legendre; exact for the piecewise cubics inside)."""
    x, w = (torch.as_tensor(a, dtype=F64) for a in np.polynomial.legendre.leggauss(order))
    nodes = left[:, None] + (x[None, :] + 1) * (width / 2)
    return (fn(nodes.flatten()).reshape(nodes.shape) * w * (width / 2)).sum(1)


def _central(fn, t: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    return (fn(t + h) - fn(t - h)) / (2 * h)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-300)).max())


# ---------------------------------------------------------------------------------------------- seed 000's table
def test_ddpm_linear_table_g2_dt_matches_betas():
    """DDPM row of seed 000's table: ∫ g² over [t_{i−1}, t_i] = −log(1 − β_i) and g²(t_i) Δt = β_i + O(β²)."""
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler()  # the default linear table, 1000 steps
    sched = NoiseSchedule.from_diffusers_config(ddpm.config)
    n = ddpm.config.num_train_timesteps
    betas = ddpm.betas.to(F64)
    t_i = torch.arange(1, n + 1, dtype=F64) / n
    integral = _gauss_legendre_per_interval(sched.g2, t_i - 1 / n, 1 / n)
    # Exactly (to quadrature accuracy) the table's own log ᾱ ratios, since g² = −d log ᾱ/dt for a VP table ...
    log_abar = torch.cat([torch.zeros(1, dtype=F64), torch.log(ddpm.alphas_cumprod.to(F64))])
    assert _rel(integral, log_abar[:-1] - log_abar[1:]) < 1e-9
    # ... which equal −log(1 − β_i) up to the float32 rounding of diffusers' cumprod (measured 1.2e-7).
    assert float((integral + torch.log1p(-betas)).abs().max()) < 5e-7
    # g²(t_i)·Δt vs β_i: the difference is O(β_i²) (log(1−β) vs β) plus O(β_{i+1} − β_i) (g² varies over the
    # interval) plus float32 table noise; measured at most 0.96 of this bound.
    dbeta = torch.cat([betas[1:] - betas[:-1], betas[-1:] - betas[-2:-1]]).abs()
    assert bool(((sched.g2(t_i) / n - betas).abs() <= betas**2 + dbeta + 2e-7).all())
    # VP: f = −g²/2 everywhere, not just at the knots.
    t = torch.linspace(0, 1, 4001, dtype=F64)
    assert float((sched.f(t) + 0.5 * sched.g2(t)).abs().max()) <= 1e-12 * float(sched.g2(t).max())


@pytest.mark.parametrize("name", ["ve", "ncsn-table"])
def test_ncsn_f_zero_g2_is_dsigma2_dt(name, make_schedule):
    """NCSN/VE row: f = 0 and g² = dσ²/dt (central differences at points off the table knots)."""
    sched = make_schedule(name)
    t = torch.linspace(0.0013, 0.9987, 777, dtype=F64)
    assert float(sched.f(t).abs().max()) == 0.0
    fd = _central(lambda u: sched.sigma(u) ** 2, t)
    assert _rel(sched.g2(t), fd) < 1e-6


def test_closed_forms_match_analytic_f_g2():
    """vp_linear, ve, edm, vp_cosine, sub_vp against f, g² written from the papers, 1e-6 relative."""
    t = torch.linspace(0, 1, 1001, dtype=F64)
    # Score-SDE VP (Song et al. 2021, eq. 11; seed 001 eqs. 107/136): β(t) = β_min + t(β_max − β_min).
    bmin, bmax = 0.1, 20.0
    beta = bmin + t * (bmax - bmin)
    vp = NoiseSchedule.vp_linear(bmin, bmax)
    assert _rel(vp.f(t), -0.5 * beta) < 1e-6 and _rel(vp.g2(t), beta) < 1e-6
    # sub-VP (Song et al. 2021, eq. 12): g² = β(t)(1 − exp(−2∫β)); checked where g² > 0.
    sub = NoiseSchedule.sub_vp(bmin, bmax)
    big_b = bmin * t + 0.5 * (bmax - bmin) * t**2
    assert _rel(sub.f(t), -0.5 * beta) < 1e-6
    assert _rel(sub.g2(t[1:]), (beta * (1 - torch.exp(-2 * big_b)))[1:]) < 1e-6
    # VE (Song et al. 2021, eq. 9; seed 001 eqs. 106/135): σ = σ_min(σ_max/σ_min)^t, g² = dσ²/dt.
    smin, smax = 0.01, 50.0
    ve = NoiseSchedule.ve(smin, smax)
    sig = smin * (smax / smin) ** t
    assert float(ve.f(t).abs().max()) == 0.0
    assert _rel(ve.g2(t), 2 * sig**2 * math.log(smax / smin)) < 1e-6
    # EDM (Karras et al. 2022, eq. 5 time-continuous): σ(t) = (a + t(b − a))^ρ, s = 1, g² = 2σσ'.
    emin, emax, rho = 0.002, 80.0, 7.0
    a, b = emin ** (1 / rho), emax ** (1 / rho)
    base = a + t * (b - a)
    edm = NoiseSchedule.edm(emin, emax, rho)
    assert float(edm.f(t).abs().max()) == 0.0
    assert _rel(edm.g2(t), 2 * rho * (b - a) * base ** (2 * rho - 1)) < 1e-6
    # Cosine (Nichol & Dhariwal 2021, eq. 17): ᾱ = cos²(φ)/cos²(φ₀), φ = (t + s)/(1 + s)·π/2;
    # f = ½ d log ᾱ/dt = −π/(2(1 + s)) tan φ and g² = −d log ᾱ/dt = −2f. Diverges at t = 1, so t ≤ 0.999.
    off = 0.008
    tc = t[t <= 0.999]
    phi = (tc + off) / (1 + off) * math.pi / 2
    cos = NoiseSchedule.vp_cosine(off)
    assert _rel(cos.f(tc), -math.pi / (2 * (1 + off)) * torch.tan(phi)) < 1e-6
    assert _rel(cos.g2(tc), math.pi / (1 + off) * torch.tan(phi)) < 1e-6
    assert _rel(cos.s(tc), torch.cos(phi) / math.cos(off / (1 + off) * math.pi / 2)) < 1e-12


def test_f_g2_consistent_with_s_sigma(schedule):
    """Eq. 24 for every schedule (tables included): f = d log s/dt, g² = dσ²/dt − 2fσ² (central differences)."""
    t = torch.linspace(0.0137, 0.97, 301, dtype=F64)  # off every table knot; below any zero-SNR cap
    f_fd = _central(lambda u: torch.log(schedule.s(u)), t)
    g2_fd = _central(lambda u: schedule.sigma(u) ** 2, t) - 2 * schedule.f(t) * schedule.sigma(t) ** 2
    scale_f = float(schedule.g2(t).abs().max())  # f may vanish (VE): compare on g²'s scale
    assert float((schedule.f(t) - f_fd).abs().max()) < 1e-6 * scale_f + 1e-9
    assert _rel(schedule.g2(t), g2_fd) < 1e-5


# ---------------------------------------------------------------------------------------------- eq. 25 round trip
def test_from_sde_round_trip(schedule):
    """(s, σ) → (f, g²) → from_sde(f, g², σ(0)) → (s, σ) within 1e-4 relative on t ∈ [0, 0.99]."""
    back = NoiseSchedule.from_sde(schedule.f, schedule.g2, sigma0=float(schedule.sigma(0.0)))
    t = torch.cat([torch.linspace(0, 0.99, 199, dtype=F64), torch.logspace(-3, -1, 9, dtype=F64)])
    assert _rel(back.s(t), schedule.s(t)) < 1e-4
    sig = schedule.sigma(t)
    nz = sig > 0
    assert _rel(back.sigma(t)[nz], sig[nz]) < 1e-4
    assert bool((back.sigma(t)[~nz] == 0).all())


# ---------------------------------------------------------------------------------------------- property tests
def _abar_of(betas):
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


beta_tables = st.one_of(
    st.lists(st.floats(1e-5, 0.5, exclude_min=True, exclude_max=True), min_size=2, max_size=200),
    st.lists(st.floats(1e-5, 0.5, exclude_min=True, exclude_max=True), min_size=2, max_size=200).map(sorted),
)


@settings(max_examples=40, deadline=None)
@given(beta_tables)
def test_tabulated_extension_properties(betas):
    """Random valid β tables (monotone or not): the extension passes through every entry at t_i = (i+1)/N,
    the raw (unclamped) g² is ≥ 0, λ is non-increasing and f is finite on a fine grid of (0, 1)."""
    sched = NoiseSchedule.from_betas(betas)
    n = len(betas)
    abar = torch.as_tensor(_abar_of(betas))
    t_i = sched.t_from_index(torch.arange(n))
    assert torch.equal(t_i, torch.arange(1, n + 1, dtype=F64) / n)
    # The table is stored as ρ = 1 − ᾱ, so ᾱ and σ are exact to 1e-12 absolute; s = √ᾱ is then exact to
    # 1e-12 wherever ᾱ ≥ 1e-8 (below that √ of an absolute 1e-16 rounding of ρ exceeds 1e-12).
    assert float((sched.s(t_i) ** 2 - abar).abs().max()) < 1e-12
    assert float((sched.sigma(t_i) - torch.sqrt(1 - abar)).abs().max()) < 1e-12
    big = abar >= 1e-8
    assert float((sched.s(t_i)[big] - torch.sqrt(abar[big])).abs().max()) < 1e-12
    t = torch.linspace(0, 1, 4 * n + 2001, dtype=F64)[1:-1]
    raw_g2 = sched._g2(sched._capped(t))  # before the public clamp at 0, so a negative value would show
    assert float(raw_g2.min()) >= -1e-12 * float(raw_g2.abs().max())
    assert bool(torch.isfinite(sched.f(t)).all()) and bool(torch.isfinite(sched.g2(t)).all())
    lam = sched.log_snr(t)
    assert bool((lam[1:] <= lam[:-1] + 1e-9).all())


@settings(max_examples=25, deadline=None)
@given(beta_tables)
def test_tabulated_extension_is_c1(betas):
    """One-sided difference quotients of s and σ agree at every interior knot.

    With J(h) = q₊(h) − q₋(h) (forward minus backward quotient), a C¹ function with smooth pieces has
    J(h) = (f''₊ + f''₋) h/2 + (f'''₊ − f'''₋) h²/6 + O(h³), and a kink of size κ adds κ. The Richardson
    combination K = 2 J(h/2) − J(h) removes the h term: K = κ − (f'''₊ − f'''₋) h²/12 + O(h³). Two error terms
    remain, and the bound allows each:
    * the h² term, relative to the slope: at most (h / ℓ)²/12 for ℓ the length over which the piece's slope
      changes; h = 1e-5/N is 1e-5 of a table interval, so a kink of 1e-3 of the slope stays detectable and the
      h² term of these tables (measured ≤ 2.4e-6 of the slope, for β jumping from 1e-5 to 0.4) fits under it;
    * float64 rounding: K combines eight values of fn with weights 1/h (J(h)) and 4/h (2 J(h/2)), so an
      evaluation error δ per value gives at most (4·4 + 4)·δ/h = 20 δ/h. s and σ are evaluated to δ ≤ 4 ulp of
      max |fn| on the stencil (the cubic's few rounded terms, the square root and the rounding of t ± h), hence
      the allowance 20·4·ε·max|fn|/h with ε = 2⁻⁵³ (measured: ≤ 8 ε·max|fn|/h beyond the slope term).
    The second term is what the previous absolute 1e-8 floor stood in for. Before the tables kept 1 − ρ
    (= ᾱ) without cancellation, s = √(1 − ρ) near ᾱ ~ 1e-7 carried an error ε/(2s) ≫ 4 ulp of s, and its
    difference quotients over h ~ 1e-7 made K ~ 1e-5 with no kink present (exact arithmetic gives ~1e-12).
    """
    sched = NoiseSchedule.from_betas(betas)
    n = len(betas)
    knots = torch.arange(1, n, dtype=F64) / n

    def jump(fn, h):
        return (fn(knots + h) - fn(knots)) / h - (fn(knots) - fn(knots - h)) / h

    h = 1e-5 / n
    eps = 2.0**-53
    for fn in (sched.s, sched.sigma):
        kink = 2 * jump(fn, h / 2) - jump(fn, h)
        slope = ((fn(knots + h) - fn(knots - h)) / (2 * h)).abs()
        size = torch.stack([fn(knots + d).abs() for d in (-h, -h / 2, 0.0, h / 2, h)]).amax(0)
        rounding = 20 * 4 * eps * size / h
        assert bool((kink.abs() <= 1e-3 * slope + rounding).all()), (fn.__name__, kink, slope, rounding)


# ---------------------------------------------------------------------------------------------- endpoints
def test_no_nan_or_inf_at_endpoints(schedule):
    """t = 0 and t = 1: every public method returns finite values, zero-SNR and cosine included."""
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for method in ("s", "sigma", "f", "g2", "g", "log_snr", "ve_sigma", "timestep"):
        out = getattr(schedule, method)(t)
        assert bool(torch.isfinite(out).all()), (method, out)
    mean, std = schedule.marginal(torch.ones(2, 3), t)
    assert bool(torch.isfinite(mean).all() and torch.isfinite(std).all())
    assert math.isfinite(schedule.prior_std)
    assert bool(torch.isfinite(schedule.t_from_timestep(schedule.timestep(t))).all())


@pytest.mark.parametrize("name", ["zero-snr", "vp-cosine"])
def test_zero_terminal_snr_behaviour_at_t1(name, make_schedule):
    """Documented in unisde.schedule: s(1) = 0, σ(1) = 1 returned as is; f, g², λ and σ̃ are those at t_end,
    the time where SNR = 2⁻²⁴ (λ = ZERO_SNR_LOG_SNR, σ̃ = 4096)."""
    sched = make_schedule(name)
    one = torch.tensor([1.0], dtype=F64)
    t_end = torch.tensor([sched.t_end], dtype=F64)
    assert 0.99 < sched.t_end < 1.0
    assert float(sched.s(one)) < 1e-15 and float(sched.sigma(one)) == pytest.approx(1.0, abs=1e-15)
    assert float(sched.log_snr(t_end)) == pytest.approx(ZERO_SNR_LOG_SNR, abs=1e-7)
    for method in ("f", "g2", "log_snr", "ve_sigma"):
        assert torch.equal(getattr(sched, method)(one), getattr(sched, method)(t_end)), method
    assert float(sched.ve_sigma(one)) == pytest.approx(4096.0, rel=1e-6)


def test_log_snr_at_t0_is_capped_where_sigma_is_zero(make_schedule):
    sched = make_schedule("ddpm-linear")
    assert float(sched.sigma(0.0)) == 0.0 and float(sched.log_snr(0.0)) == LOG_SNR_MAX


def test_inverses(schedule):
    """t_from_log_snr ∘ log_snr and t_from_sigma ∘ ve_sigma are the identity below the cap."""
    t = torch.linspace(0.02, min(0.98, schedule.t_end), 97, dtype=F64)
    assert float((schedule.t_from_log_snr(schedule.log_snr(t)) - t).abs().max()) < 1e-9
    assert float((schedule.t_from_sigma(schedule.ve_sigma(t)) - t).abs().max()) < 1e-9


@pytest.mark.parametrize("name", ["ddpm-linear", "ddpm-cosine", "zero-snr", "ncsn-table", "vp-linear"])
def test_blocked_bisection_is_one_halving_at_a_time_bit_for_bit(make_schedule, name):
    """The base class's t_from_log_snr walks its 64 halvings in blocks of up to 8 (all midpoints of a block in one
    log_snr call): the result equals the plain bisection's exactly, for a scalar, small and large batches (k = 1),
    out-of-range λ and a λ hit exactly at a knot."""
    from unisde.core.schedule import NoiseSchedule

    sched = make_schedule(name)

    def one_at_a_time(lam):
        lo, hi = torch.zeros_like(lam), torch.full_like(lam, sched.t_end)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = sched.log_snr(mid) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    g = torch.Generator().manual_seed(3)
    knot = float(sched.log_snr(torch.tensor(0.5, dtype=F64)))
    for shape in ((), (1,), (7,), (50,), (700,)):
        lam = torch.rand(shape, generator=g, dtype=F64) * 40 - 20
        if lam.numel() >= 3:
            lam.view(-1)[:3] = torch.tensor([100.0, -100.0, knot], dtype=F64)
        assert torch.equal(NoiseSchedule._t_from_log_snr(sched, lam), one_at_a_time(lam)), shape


# ---------------------------------------------------------------------------------------------- diffusers parity
@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear"},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid"},
        {"beta_schedule": "laplace", "num_train_timesteps": 200},
        {"beta_schedule": "linear", "rescale_betas_zero_snr": True},
        {"trained_betas": [0.01, 0.02, 0.05, 0.1, 0.3]},
    ],
)
def test_index_convention_matches_diffusers_add_noise(config):
    """Training index i ↔ t_i = (i + 1)/N: add_noise at t_i equals DDPMScheduler.add_noise at timestep i, and
    the model timestep at t_i is i."""
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(**config)
    sched = NoiseSchedule.from_diffusers_config(ddpm.config)
    n = ddpm.config.num_train_timesteps if config.get("trained_betas") is None else len(config["trained_betas"])
    idx = torch.tensor([0, 1, n // 2, n - 2, n - 1])
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    t = sched.t_from_index(idx)
    ours = sched.add_noise(x0, noise, t)
    theirs = ddpm.add_noise(x0, noise, idx)
    assert float((ours - theirs).abs().max()) < 1e-6
    assert torch.equal(sched.timestep(t), idx.to(F64))
    assert torch.allclose(sched.t_from_timestep(idx), t, rtol=0, atol=1e-15)


def test_sigma_configs_of_edm_and_score_sde_ve():
    """EDMEulerScheduler and ScoreSdeVeScheduler configs give their σ range with the right timestep feed."""
    from diffusers import EDMEulerScheduler, ScoreSdeVeScheduler

    edm = NoiseSchedule.from_diffusers_config(EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0).config)
    ve = NoiseSchedule.from_diffusers_config(ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=348.0).config)
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    assert torch.allclose(edm.sigma(ends), torch.tensor([0.002, 80.0], dtype=F64), rtol=1e-12)
    assert torch.allclose(ve.sigma(ends), torch.tensor([0.01, 348.0], dtype=F64), rtol=1e-12)
    assert edm.timestep_convention == "edm" and ve.timestep_convention == "sigma"
    # EDM's c_noise = ¼ ln σ (diffusers EDMEulerScheduler.precondition_noise).
    t = torch.tensor([0.3], dtype=F64)
    assert float(edm.timestep(t)) == pytest.approx(0.25 * math.log(float(edm.sigma(t))), rel=1e-12)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: NoiseSchedule.from_sigmas([0.1, 0.5, 0.4, 1.0]), r"sigmas.*\[1\] = 0\.5.*\[2\] = 0\.4"),
        (
            lambda: NoiseSchedule.from_alphas_cumprod([0.9, 0.8, 0.85, 0.1]),
            r"alphas_cumprod\[1\] = 0\.8.*\[2\] = 0\.85",
        ),
        (lambda: NoiseSchedule.from_betas([0.1, 1.5, 0.2]), r"betas\[1\] = 1\.5"),
        (lambda: NoiseSchedule.from_betas([0.1, 0.0, 0.2]), r"betas\[1\] = 0\.0"),
        (lambda: NoiseSchedule.from_betas([0.1, -0.2]), r"betas\[1\] = -0\.2"),
        (lambda: NoiseSchedule.from_betas([0.1, float("nan")]), r"betas.*non-finite.*nan.*\(1,\)"),
        (lambda: NoiseSchedule.from_sigmas([0.1, float("inf")]), r"sigmas.*non-finite.*inf.*\(1,\)"),
        (lambda: NoiseSchedule.from_betas([]), r"betas must be a non-empty"),
        (lambda: NoiseSchedule.from_alphas_cumprod([]), r"alphas_cumprod must be a non-empty"),
        (
            lambda: NoiseSchedule.from_diffusers_config({"beta_schedule": "cosine"}),
            r"unknown beta_schedule 'cosine'.*laplace.*squaredcos_cap_v2.*Did you mean",
        ),
        (lambda: NoiseSchedule.from_name("vp-linaer"), r"unknown schedule 'vp-linaer'.*edm.*Did you mean 'vp-linear'"),
        (lambda: NoiseSchedule.vp_linear().sigma(torch.tensor([0.5, 1.2])), r"t must lie in \[0, 1\].*1\.2.*\(1,\)"),
        (lambda: NoiseSchedule.ve().g2(-0.1), r"t must lie in \[0, 1\].*-0\.1"),
        (lambda: NoiseSchedule.edm().s(float("nan")), r"t contains a non-finite value \(nan\)"),
    ],
)
def test_bad_input_names_the_problem(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


# ---------------------------------------------------------------------------------------------- CLI
def _parse_table(out: str) -> np.ndarray:
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].split() == ["t", "s", "sigma", "f", "g", "log_snr"]
    return np.array([[float(v) for v in ln.split()] for ln in lines[1:]])


def _check_table(table: np.ndarray, sched: NoiseSchedule, points: int) -> None:
    t = torch.linspace(0, 1, points, dtype=F64)
    expected = torch.stack([t, sched.s(t), sched.sigma(t), sched.f(t), sched.g(t), sched.log_snr(t)], 1).numpy()
    assert table.shape == (points, 6)
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-12)  # printed with 6 significant digits


def test_cli_schedule_by_name(capsys):
    from unisde.cli import main

    assert main(["schedule", "vp-linear"]) == 0
    _check_table(_parse_table(capsys.readouterr().out), NoiseSchedule.vp_linear(), 11)
    assert main(["schedule", "edm", "--points", "4"]) == 0
    _check_table(_parse_table(capsys.readouterr().out), NoiseSchedule.edm(), 4)


def test_cli_schedule_from_config_file_and_pipeline_dir(tmp_path, capsys):
    from diffusers import DDPMScheduler

    from unisde.cli import main

    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    ddpm.save_config(tmp_path / "pipe" / "scheduler")
    expected = NoiseSchedule.from_diffusers_config(ddpm.config)
    config_file = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    for arg in (str(config_file), str(tmp_path / "pipe")):
        assert main(["schedule", arg, "--points", "6"]) == 0
        out = capsys.readouterr().out
        assert "training index i ↔ t = (i + 1)/1000" in out and "zero terminal SNR" in out
        _check_table(_parse_table(out), expected, 6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["schedule", "vp-linaer"], "unknown schedule 'vp-linaer'; valid choices: .* Did you mean 'vp-linear'"),
        (["schedule", "missing.json"], "no such file 'missing.json'"),
        (["schedule", "ve", "--points", "1"], r"--points must be at least 2.*got 1"),
    ],
)
def test_cli_schedule_errors_exit_2(args, message, capsys):
    import re

    from unisde.cli import main

    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and re.search("unisde schedule: error: " + message, captured.err)


def test_cli_schedule_bad_json_and_empty_dir(tmp_path, capsys):
    from unisde.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["schedule", str(bad)]) == 2
    assert "is not a valid scheduler config" in capsys.readouterr().err
    assert main(["schedule", str(tmp_path)]) == 2
    assert "has neither scheduler_config.json nor scheduler/scheduler_config.json" in capsys.readouterr().err
