"""Pictures: files are valid PNG/GIF, and the drawn data are right (schedule curves equal the schedule's own
coefficients; PF-ODE paths carry p_1's quantiles onto p_0's; the SDE mean ends at E[x_0 | x_1])."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unisde import NoiseSchedule
from unisde.plots import (
    animate_trajectories,
    mixture_1d,
    mixture_quantiles,
    plot_schedules,
    plot_trajectories,
    simulate_trajectories,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors on a shared 2-core machine: intra-op threads only contend, so run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.format, im.size, getattr(im, "n_frames", 1)


def test_plot_schedules_writes_png_of_the_schedules_own_values(tmp_path):
    schedules = {name: NoiseSchedule.from_name(name) for name in ("vp-linear", "vp-cosine", "ve", "edm")}
    schedules["ddpm table"] = NoiseSchedule.from_diffusers_config({})
    out = tmp_path / "schedules.png"
    curves = plot_schedules(schedules, str(out), points=101)
    assert out.read_bytes()[:8] == PNG_MAGIC
    fmt, size, _ = _image(out)
    assert fmt == "PNG" and size[0] > 600 and size[1] > 300
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for name, sched in schedules.items():
        c = curves[name]
        np.testing.assert_allclose(c["t"], t.numpy())
        np.testing.assert_allclose(c["sigma"], sched.sigma(t).numpy())
        np.testing.assert_allclose(c["g"] ** 2, sched.g2(t).numpy(), rtol=1e-12, atol=1e-300)
        assert all(np.isfinite(c[q]).all() for q in ("s", "sigma", "f", "g", "log_snr"))
    with pytest.raises(ValueError, match="at least one schedule"):
        plot_schedules({}, str(tmp_path / "none.png"))
    with pytest.raises(ValueError, match="not a NoiseSchedule"):
        plot_schedules({"x": "vp-linear"}, str(tmp_path / "bad.png"))


def test_schedule_command_plot(tmp_path, capsys):
    from unisde.cli import main

    out = tmp_path / "s.png"
    assert (
        main(["schedule", "vp-linear", "--points", "3", "--plot", str(out), "--compare", "ve", "--compare", "edm"]) == 0
    )
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert main(["schedule", "vp-linear", "--compare", "ve"]) == 2
    assert "--compare only applies to --plot" in capsys.readouterr().err


def test_mixture_quantiles_match_the_cdf():
    mix, sched = mixture_1d(), NoiseSchedule.vp_linear()
    q = mixture_quantiles(mix, [0.1, 0.5, 0.9], 0.0, sched)
    w, mu, sd = torch.tensor([0.4, 0.6]), torch.tensor([-1.2, 1.0]), torch.tensor([0.3, 0.35])
    cdf = (w * torch.distributions.Normal(mu.double(), sd.double()).cdf(q[:, None])).sum(1)
    torch.testing.assert_close(cdf, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def trajectories():
    return simulate_trajectories(num_paths=600, num_steps=200, start=0.3, seed=1)


def test_trajectory_data_are_right(trajectories):
    d = trajectories
    assert d.t[0] == 1.0 and d.t[-1] == pytest.approx(1e-3) and d.sde_paths.shape == (201, 600)
    assert (d.sde_paths[0] == 0.3).all() and d.ode_path[0] == 0.3
    # In 1-D the PF-ODE map is monotone and pushes p_1 onto p_t: started at p_1's quantiles it must end at the
    # same quantiles of p_{t_end} (exact score, rtol 1e-6: agreement to ~1e-5).
    np.testing.assert_allclose(d.ode_quantile_paths[-1], d.target_quantiles, rtol=0, atol=1e-3)
    # The modes: the 5% and 95% quantile paths end near the two component means.
    assert abs(d.ode_quantile_paths[-1, 0] - (-1.2)) < 0.6 and abs(d.ode_quantile_paths[-1, -1] - 1.0) < 0.6
    # The reverse SDE from a fixed x(1) samples p(x_t | x_1): its mean ends at s(t_end) E[x_0 | x_1] (exact
    # denoiser). Bound: 4 Monte-Carlo standard errors plus 0.03 for the Euler–Maruyama bias at 200 steps.
    se = d.sde_paths[-1].std() / math.sqrt(d.sde_paths.shape[1])
    assert abs(d.sde_mean[-1] - d.posterior_mean) < 4 * se + 0.03, (d.sde_mean[-1], d.posterior_mean, se)
    # The SDE end points are bimodal like the data: mass near both modes.
    ends = d.sde_paths[-1]
    assert 0.25 < (ends < 0).mean() < 0.55
    # Bands are ordered and the ODE path is a single smooth curve (no jumps larger than the SDE's).
    levels = sorted(d.bands)
    for lo, hi in zip(levels[:-1], levels[1:]):
        assert (d.bands[lo] <= d.bands[hi] + 1e-12).all()
    assert np.abs(np.diff(d.ode_path)).max() < np.abs(np.diff(d.sde_paths, axis=0)).max()


def test_trajectory_png_and_gif(tmp_path, trajectories):
    png, gif = tmp_path / "traj.png", tmp_path / "traj.gif"
    plot_trajectories(trajectories, str(png))
    assert png.read_bytes()[:8] == PNG_MAGIC and _image(png)[0] == "PNG"
    assert animate_trajectories(trajectories, str(gif), frames=4, fps=4) == 4
    assert gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    fmt, _, frames = _image(gif)
    assert fmt == "GIF" and frames == 4


def test_trajectories_command_and_bad_input(tmp_path, capsys):
    from unisde.cli import main

    png = tmp_path / "t.png"
    assert main(["trajectories", "--plot", str(png), "--num_paths", "50", "--steps", "40", "--seed", "2"]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "PF-ODE end point" in capsys.readouterr().out
    assert main(["trajectories"]) == 2
    assert "give --plot" in capsys.readouterr().err
    assert main(["trajectories", "--plot", str(png), "--weights", "1,2", "--means", "0"]) == 2
    assert "equal lengths" in capsys.readouterr().err
    with pytest.raises(ValueError, match="1-D data"):
        from unisde.analytic import Gaussian

        simulate_trajectories(Gaussian([0.0, 0.0], 1.0))
