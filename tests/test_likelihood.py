"""PF-ODE likelihood against closed-form answers: Gaussian and mixture densities, the Hutchinson estimator's
unbiasedness, the discrete-data convention against exact bin probabilities, the ODE solver, bad input and the
``unisde nll`` command on a saved pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from unisde import NoiseSchedule, get_parameterization
from unisde.analytic import Gaussian, GaussianMixture
from unisde.likelihood import discrete_offset_per_dim, gaussian_prior_log_prob, log_likelihood
from unisde.ode import ODESolverError, solve_ivp

LN2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _single_thread():
    """Small tensors on a shared 2-core machine: intra-op threads only contend (a tiny conv2d ran 400× slower
    with 2 threads than with 1 under load), so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SCHEDULES = {
    # (schedule factory, parameterisation the model is trained in)
    "vp-table": (lambda: NoiseSchedule.from_diffusers_config({}), "epsilon"),
    "ve": (NoiseSchedule.ve, "score"),
    "edm": (NoiseSchedule.edm, "edm"),
}


def rotated_gaussian(d: int, seed: int = 0) -> Gaussian:
    """N(μ, Σ) with a random rotation and eigenvalues from 0.05 to 1 (a non-diagonal Jacobian)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.exp(torch.linspace(math.log(0.05), 0.0, d, dtype=torch.float64))
    return Gaussian(0.3 * torch.randn(d, generator=g, dtype=torch.float64), (q * lam) @ q.T)


def bits_error(result, reference):
    return ((result.log_prob - reference).abs() / (result.num_dims * LN2)).max().item()


@pytest.mark.parametrize("d", [2, 64])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_gaussian_exact_trace_matches_closed_form(name, d):
    make, param_name = SCHEDULES[name]
    schedule, dist = make(), rotated_gaussian(d)
    param = get_parameterization(param_name)
    x = dist.sample(3, torch.Generator().manual_seed(1), dtype=torch.float64)
    t_min = 1e-5
    res = log_likelihood(dist.as_model(param, schedule), x, schedule, param, t_min=t_min, trace="exact")
    assert res.trace == "exact" and res.nfe > 0 and res.t_min == t_min and res.t_max == 1.0
    # The default prior is exactly the samplers' one, schedule.prior_logp, at the ODE's end point.
    torch.testing.assert_close(res.prior_logp, schedule.prior_logp(res.x_end), rtol=1e-12, atol=1e-9)
    reference = dist.marginal_log_prob(x, t_min, schedule)  # log p_{t_min}(x), the quantity the ODE computes
    # With the exact marginal p_1 = N(s(1) μ, s(1)² Σ + σ(1)² I) as prior, (★) is exact up to the solver.
    exact = res.delta_logp + dist.marginal_log_prob(res.x_end, 1.0, schedule)
    err = ((exact - reference).abs() / (d * LN2)).max().item()
    assert err < 0.01, f"{name}, d={d}: {err:.2e} bits/dim"
    # The moment-matched Gaussian prior (the data's per-dimension mean and std) is as good to this tolerance.
    matched = res.delta_logp + gaussian_prior_log_prob(res.x_end, schedule, 1.0, dist.mean, dist.cov.diagonal().sqrt())
    assert ((matched - reference).abs() / (d * LN2)).max().item() < 0.01


@pytest.mark.parametrize("param_name", ["v_prediction", "sample", "score", "edm", "epsilon"])
def test_every_parameterization_gives_the_same_likelihood(param_name):
    schedule, dist = NoiseSchedule.vp_linear(), rotated_gaussian(3, seed=2)
    x = dist.sample(4, torch.Generator().manual_seed(3), dtype=torch.float64)
    res = log_likelihood(
        dist.as_model(param_name, schedule),
        x,
        schedule,
        param_name,
        trace="exact",
        prior=lambda x1: dist.marginal_log_prob(x1, 1.0, schedule),
    )
    assert bits_error(res, dist.marginal_log_prob(x, 1e-5, schedule)) < 0.01


def test_zero_terminal_snr_integrates_to_the_capped_end():
    schedule = NoiseSchedule.from_diffusers_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True}
    )
    dist = rotated_gaussian(2, seed=4)
    x = dist.sample(4, torch.Generator().manual_seed(5), dtype=torch.float64)
    res = log_likelihood(
        dist.as_model("v_prediction", schedule),
        x,
        schedule,
        "v_prediction",
        trace="exact",
        prior=lambda x1: dist.marginal_log_prob(x1, schedule.t_end, schedule),
    )
    assert res.t_max == schedule.t_end < 1.0
    assert bits_error(res, dist.marginal_log_prob(x, 1e-5, schedule)) < 0.01


def test_diffusers_unet_output_and_float32():
    """A diffusers model (returns UNet2DOutput) on (1, 4, 4) images in float32, exact trace over 16 dims."""
    schedule = NoiseSchedule.vp_linear()
    base = rotated_gaussian(16, seed=6)
    dist = Gaussian(base.mean, base.cov, event_shape=(1, 4, 4))
    unet = dist.as_unet("epsilon", schedule, sample_size=4, in_channels=1)
    x = dist.sample(4, torch.Generator().manual_seed(7), dtype=torch.float32)
    res = log_likelihood(
        unet, x, schedule, "epsilon", trace="auto", prior=lambda x1: dist.marginal_log_prob(x1, 1.0, schedule)
    )
    assert res.trace == "exact" and res.num_dims == 16
    assert bits_error(res, dist.marginal_log_prob(x.double(), 1e-5, schedule)) < 0.01


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe):
    """One x repeated n times, each row with its own probe: the mean estimate is within 4 standard errors
    of the exact-trace answer (a 4σ two-sided bound fails with probability 6e-5 for an unbiased estimator)."""
    schedule, dist = NoiseSchedule.vp_linear(), rotated_gaussian(8, seed=8)
    model = dist.as_model("epsilon", schedule)
    x = dist.sample(1, torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = log_likelihood(model, x, schedule, "epsilon", trace="exact", rtol=1e-4, atol=1e-4)
    n = 200
    est = log_likelihood(
        model,
        x.expand(n, -1).clone(),
        schedule,
        "epsilon",
        trace="hutchinson",
        probe=probe,
        generator=torch.Generator().manual_seed(10),
        rtol=1e-4,
        atol=1e-4,
    )
    assert est.trace == "hutchinson" and est.probe == probe
    mean, se = est.log_prob.mean().item(), est.log_prob.std().item() / math.sqrt(n)
    assert se > 1e-3, "the probes must actually vary the estimate (non-diagonal Jacobian)"
    assert abs(mean - exact.log_prob.item()) < 4 * se, (mean, exact.log_prob.item(), se)
    # and the estimate is informative: a single probe's spread is about a bit per dimension or less
    assert est.bpd.std().item() < 1.0


@pytest.mark.parametrize("schedule_name", ["vp-linear", "edm"])
def test_gaussian_mixture_matches_true_data_density(schedule_name):
    schedule = NoiseSchedule.from_name(schedule_name)
    dist = GaussianMixture(
        [0.3, 0.5, 0.2],
        [[-1.0, 0.5], [0.8, 0.2], [0.1, -1.0]],
        [[[0.05, 0.02], [0.02, 0.08]], [[0.1, -0.03], [-0.03, 0.04]], [[0.06, 0.0], [0.0, 0.06]]],
    )
    x = dist.sample(6, torch.Generator().manual_seed(11), dtype=torch.float64)
    res = log_likelihood(
        dist.as_model("epsilon", schedule),
        x,
        schedule,
        "epsilon",
        t_min=1e-5,
        trace="exact",
        data_mean=dist.mean,
        data_std=dist.cov.diagonal().sqrt(),
    )
    err = bits_error(res, dist.log_prob(x))  # the true data density p_0, not p_{t_min}
    assert err < 0.05, f"{schedule_name}: {err:.3e} bits/dim"


def test_discrete_offset_against_exact_bin_probabilities():
    """8-bit data in [−1, 1]: with uniform dequantisation the bits/dim estimate (nll + D log 127.5)/(D ln 2)
    averages to −log2 P(bin)/D, P computed exactly for an axis-aligned Gaussian (Jensen gap ≪ tolerance)."""
    assert discrete_offset_per_dim(256) == pytest.approx(math.log(127.5))
    schedule = NoiseSchedule.vp_linear()
    mean, std = torch.tensor([0.1, -0.2], dtype=torch.float64), torch.tensor([0.3, 0.2], dtype=torch.float64)
    dist = Gaussian(mean, std**2)
    k = torch.tensor([[150.0, 90.0]], dtype=torch.float64)
    x = k / 127.5 - 1.0
    n = 48
    res = log_likelihood(
        dist.as_model("epsilon", schedule),
        x.expand(n, -1).clone(),
        schedule,
        "epsilon",
        trace="exact",
        dequantize="uniform",
        generator=torch.Generator().manual_seed(12),
        data_mean=mean,
        data_std=std,
    )
    assert res.num_bins == 256 and res.discrete_offset == pytest.approx(2 * math.log(127.5))
    normal = torch.distributions.Normal(mean, std)
    half = 0.5 / 127.5
    p_bin = (normal.cdf(x + half) - normal.cdf(x - half)).prod()
    target = -math.log2(p_bin.item()) / 2
    assert abs(res.bpd.mean().item() - target) < 0.01, (res.bpd.mean().item(), target)
    # Without dequantisation the offset is the same and the number is the continuous density at the bin centre.
    plain = log_likelihood(dist.as_model("epsilon", schedule), x, schedule, "epsilon", trace="exact", num_bins=256)
    assert plain.bpd.item() == pytest.approx((plain.nll.item() + 2 * math.log(127.5)) / (2 * LN2))


def _model_and_data():
    schedule, dist = NoiseSchedule.vp_linear(), rotated_gaussian(2)
    return (
        schedule,
        dist,
        dist.as_model("epsilon", schedule),
        dist.sample(3, torch.Generator().manual_seed(0), dtype=torch.float64),
    )


@pytest.mark.parametrize("t_min", [0.0, 1.0, -0.1, 1.5])
def test_bad_t_min(t_min):
    schedule, _, model, x = _model_and_data()
    with pytest.raises(ValueError, match=r"t_min must lie in the open interval \(0, 1\)"):
        log_likelihood(model, x, schedule, "epsilon", t_min=t_min)
    assert model.nfe == 0  # rejected before any work


def test_bad_dequantization_input():
    schedule, _, model, _ = _model_and_data()
    outside = torch.tensor([[0.0, 1.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="1.5 lies outside data_range"):
        log_likelihood(model, outside, schedule, "epsilon", dequantize="uniform")
    off_grid = torch.tensor([[0.0, 0.123456]], dtype=torch.float64)
    with pytest.raises(ValueError, match="not on the 256-level grid"):
        log_likelihood(model, off_grid, schedule, "epsilon", dequantize="uniform")
    with pytest.raises(ValueError, match="valid choices"):
        log_likelihood(model, torch.zeros(1, 2, dtype=torch.float64), schedule, "epsilon", dequantize="gaussian")
    assert model.nfe == 0


def test_bad_options():
    schedule, _, model, x = _model_and_data()
    with pytest.raises(ValueError, match="valid choices: auto, exact, hutchinson"):
        log_likelihood(model, x, schedule, "epsilon", trace="hutchinsn")
    with pytest.raises(ValueError, match="valid choices: gaussian, rademacher"):
        log_likelihood(model, x, schedule, "epsilon", probe="uniform")
    with pytest.raises(ValueError, match="data_std must be finite and positive"):
        log_likelihood(model, x, schedule, "epsilon", data_std=0.0)
    with pytest.raises(ValueError, match="rtol"):
        log_likelihood(model, x, schedule, "epsilon", rtol=0.0)
    assert model.nfe == 0


def test_model_output_shape_mismatch():
    schedule, _, _, x = _model_and_data()

    def learned_variance_model(inp, ts):  # twice the channels, as a learned-variance UNet returns
        return torch.cat([inp, inp], dim=1)

    with pytest.raises(ValueError, match=r"model output has shape \(3, 4\) but its input has shape \(3, 2\)"):
        log_likelihood(learned_variance_model, x, schedule, "epsilon")


def test_solver_failure_names_the_time_reached():
    schedule, _, model, x = _model_and_data()
    with pytest.raises(
        ODESolverError, match=r"stopped at t = [0-9.e-]+ before reaching t = 1 after 3 accepted steps"
    ) as info:
        log_likelihood(model, x, schedule, "epsilon", max_steps=3)
    assert 1e-5 < info.value.t < 1.0 and info.value.steps == 3


def test_ode_solver_accuracy_and_order():
    """dy/dt = −(1 + t) y: the global error falls with the tolerance at the rate of a 5th-order method
    (NFE ∝ tol^(−1/5): a 100× tighter tolerance costs ≈ 100^(1/5) ≈ 2.5× the evaluations), t_eval is hit
    exactly, and integrating backwards works."""
    y0 = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    exact = y0 * math.exp(-(2.0 + 2.0))
    errors, nfes = [], []
    for tol in (1e-5, 1e-7, 1e-9):
        sol = solve_ivp(lambda t, y: -(1 + t) * y, 0.0, 2.0, y0, rtol=tol, atol=tol)
        errors.append((sol.y[-1] - exact).abs().max().item())
        nfes.append(sol.nfe)
        assert errors[-1] < 20 * tol
    assert errors[0] > errors[1] > errors[2]
    assert 1.5 < nfes[2] / nfes[1] < 4.0
    sol = solve_ivp(
        lambda t, y: math.cos(t) * torch.ones_like(y), 1.0, 0.0, y0, t_eval=[1.0, 0.5, 0.0], rtol=1e-8, atol=1e-8
    )
    assert sol.t.tolist() == [1.0, 0.5, 0.0]
    torch.testing.assert_close(sol.y[:, 0, 0], 1.0 + torch.sin(sol.t) - math.sin(1.0), rtol=0, atol=1e-7)


def _save_tiny_pipeline(path):
    from diffusers import UNet2DModel

    from unisde.diffusers.scheduler import UnifiedScheduler

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    # Scale the output down so the random network's ε̂ is small and the ODE is smooth (a fast test).
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.01)
        unet.conv_out.bias.zero_()
    unet.save_pretrained(str(path / "unet"))
    UnifiedScheduler(prediction_type="epsilon").save_pretrained(str(path / "scheduler"))


def test_nll_command_on_a_saved_pipeline(tmp_path, capsys):
    from unisde.cli import main
    from unisde.diffusers.scheduler import UnifiedScheduler

    _save_tiny_pipeline(tmp_path)
    rc = main(
        [
            "nll",
            str(tmp_path),
            "--num_samples",
            "4",
            "--batch_size",
            "4",
            "--trace",
            "hutchinson",
            "--rtol",
            "1e-3",
            "--atol",
            "1e-3",
            "--t_min",
            "1e-3",
            "--no_progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(row for row in out.splitlines() if row.startswith("bits/dim:"))
    value, se = float(line.split()[1]), float(line.split()[3])
    # With ε̂ ≈ 0 the score vanishes and the PF-ODE is dx/dt = f x: x(1) = x s(1)/s(t_min) ≈ 0 and ∫∇·v = D log s(1)
    # (s(t_min) ≈ 1), so bits/dim ≈ ½ log2(2π) − log2 s(1) + log2 8 (17-level digits in [−1, 1], Δ = 1/8).
    s1 = UnifiedScheduler(prediction_type="epsilon").noise_schedule.s(1.0).item()
    expected = 0.5 * math.log2(2 * math.pi) - math.log2(s1) + 3.0
    assert math.isfinite(value) and se > 0
    assert abs(value - expected) < 0.1, (value, expected)
    assert "NFE per batch" in out


def test_nll_command_bad_input(tmp_path, capsys):
    from unisde.cli import main

    assert main(["nll", str(tmp_path), "--no_progress"]) == 2
    assert "not a pipeline folder" in capsys.readouterr().err
    _save_tiny_pipeline(tmp_path)
    assert main(["nll", str(tmp_path), "--dataset", "missing.npy", "--no_progress"]) == 2
    assert "unknown dataset 'missing.npy'" in capsys.readouterr().err


def _digit_pngs(folder, n=6):
    """The first ``n`` digits as 8-bit PNG files (0…16 → 0…240, so every pixel is an exact 8-bit level)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    images = (load_digits().images[:n] * 15).astype(np.uint8)
    for i, img in enumerate(images):
        Image.fromarray(img, mode="L").save(folder / f"{i}.png")
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]


def test_nll_dataset_sources_read_8bit_images_exactly(tmp_path):
    """Folder of PNGs, a save_to_disk folder and a parquet file all give the same 8-bit tensor, pixel for pixel;
    images larger than the model are resized, centre-cropped and put back on the 8-bit grid."""
    import datasets
    import numpy as np
    from PIL import Image

    from unisde.likelihood_data import load_quantized_dataset

    expected = _digit_pngs(tmp_path / "pngs")
    from_folder, bins = load_quantized_dataset(str(tmp_path / "pngs"), (1, 8, 8))
    assert bins == 256 and from_folder.shape == (6, 1, 8, 8)
    # imagefolder lists files in its own order: compare as sets of images
    key = lambda x: sorted(map(tuple, x.flatten(1).tolist()))  # noqa: E731
    assert key(from_folder) == key(expected)

    ds = datasets.Dataset.from_dict(
        {"picture": [Image.open(tmp_path / "pngs" / f"{i}.png") for i in range(6)]},
        features=datasets.Features({"picture": datasets.Image()}),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "digits.parquet"))
    for source in (tmp_path / "saved", tmp_path / "digits.parquet"):
        images, _ = load_quantized_dataset(str(source), (1, 8, 8))
        assert torch.equal(images, expected), source

    big = datasets.Dataset.from_dict({"image": [np.full((16, 20, 3), 200, np.uint8)] * 2})
    big.to_parquet(str(tmp_path / "big.parquet"))
    images, _ = load_quantized_dataset(str(tmp_path / "big.parquet"), (1, 8, 8), image_column="image")
    assert images.shape == (2, 1, 8, 8)
    levels = (images + 1) * 127.5
    assert torch.equal(levels, levels.round()) and torch.allclose(levels, torch.full_like(levels, 200.0))


def test_nll_command_on_an_image_folder(tmp_path, capsys):
    from unisde.cli import main

    _save_tiny_pipeline(tmp_path / "pipe")
    _digit_pngs(tmp_path / "pngs", n=4)
    rc = main(
        [
            "nll",
            str(tmp_path / "pipe"),
            "--dataset",
            str(tmp_path / "pngs"),
            "--num_samples",
            "4",
            "--batch_size",
            "4",
            "--trace",
            "hutchinson",
            "--rtol",
            "1e-3",
            "--atol",
            "1e-3",
            "--t_min",
            "1e-3",
            "--no_progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "over 256 levels" in out and math.isfinite(
        float(next(row for row in out.splitlines() if row.startswith("bits/dim:")).split()[1])
    )


def test_nll_dataset_bad_sources(tmp_path):
    import datasets
    import numpy as np

    from unisde.likelihood_data import load_quantized_dataset

    with pytest.raises(ValueError, match="unknown dataset './nowhere'"):
        load_quantized_dataset("./nowhere", (1, 8, 8))
    datasets.Dataset.from_dict({"image": [np.zeros((8, 8), np.float32)]}).to_parquet(str(tmp_path / "float.parquet"))
    with pytest.raises(ValueError, match="float32 images.*8-bit"):
        load_quantized_dataset(str(tmp_path / "float.parquet"), (1, 8, 8))
    datasets.Dataset.from_dict({"label": [1, 2]}).to_parquet(str(tmp_path / "nolabel.parquet"))
    with pytest.raises(ValueError, match=r"no image column.*\['label'\]"):
        load_quantized_dataset(str(tmp_path / "nolabel.parquet"), (1, 8, 8))
