r"""Pictures that explain a schedule and its reverse processes (matplotlib, Agg backend: no display needed).

* :func:`plot_schedules` — s(t), σ(t), f(t), g(t) and the log-SNR λ(t) of several schedules side by side
  (the VP-linear / VP-cosine / VE comparison of the note [Unify]; f and g² as in Lu et al. 2022, §2.1 [DPMSolver]).
* :func:`simulate_trajectories` / :func:`plot_trajectories` / :func:`animate_trajectories` — for a 1-D Gaussian
  mixture with its exact denoiser (:mod:`unisde.analytic`), many reverse-SDE paths
  (η = 1, Song et al. 2021, eq. 6 [SDE],
  Euler–Maruyama) from one start x(1), their quantile bands and mean, and the probability-flow ODE path
  (η = 0, eq. 13 there) from the same start, t from 1 to ≈ 0 — the SDE-vs-ODE illustration of [Unify], computed with
  the package's own :class:`~unisde.sde.ReverseSDE` and :func:`~unisde.ode.solve_ivp`.

Every function returns the arrays it drew, so tests (and users) can check the picture's content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from unisde._tensor import DTYPE
from unisde.core.schedule import NoiseSchedule

QUANTITIES = ("s", "sigma", "f", "g", "log_snr")
_LABELS = {
    "s": "signal scale s(t)",
    "sigma": "noise std σ(t)",
    "f": "drift f(t) = d log s/dt",
    "g": "diffusion g(t)",
    "log_snr": "log-SNR λ(t) = log(s²/σ²)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never needs (or opens) a display
    import matplotlib.pyplot as plt

    return plt


def schedule_curves(schedule: NoiseSchedule, points: int = 401) -> dict[str, np.ndarray]:
    """{"t", "s", "sigma", "f", "g", "log_snr"} on ``points`` evenly spaced t ∈ [0, 1] (float64 NumPy arrays)."""
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    t = torch.linspace(0.0, 1.0, points, dtype=DTYPE)
    values = {
        "t": t,
        "s": schedule.s(t),
        "sigma": schedule.sigma(t),
        "f": schedule.f(t),
        "g": schedule.g(t),
        "log_snr": schedule.log_snr(t),
    }
    return {k: v.numpy() for k, v in values.items()}


def plot_schedules(
    schedules: Mapping[str, NoiseSchedule], path: str, points: int = 401
) -> dict[str, dict[str, np.ndarray]]:
    """Draw s, σ, f, g and λ against t for every schedule (one line each, one panel per quantity) into ``path``.

    Axes: σ and g on log scales (VE/EDM span 4–5 decades), f on a symmetric-log scale (0 for VE/EDM, −β/2 for
    VP, diverging at the end of cosine schedules), s and λ linear. Returns {name: schedule_curves(...)}.
    """
    if not schedules:
        raise ValueError("plot_schedules needs at least one schedule, e.g. {'vp-linear': NoiseSchedule.vp_linear()}")
    for name, sched in schedules.items():
        if not isinstance(sched, NoiseSchedule):
            raise ValueError(f"schedules[{name!r}] is a {type(sched).__name__}, not a NoiseSchedule")
    curves = {name: schedule_curves(sched, points) for name, sched in schedules.items()}
    plt = _pyplot()
    fig, grid = plt.subplots(2, 3, figsize=(12.0, 6.6), constrained_layout=True)
    axes, legend_ax = grid.ravel()[:5], grid.ravel()[5]
    for ax, q in zip(axes, QUANTITIES):
        for name, c in curves.items():
            y = c[q]
            if q in ("sigma", "g"):
                y = np.where(y > 0, y, np.nan)  # σ(0) = 0 and g = 0 have no place on a log axis
            ax.plot(c["t"], y, label=name, lw=1.6)
        if q in ("sigma", "g"):
            ax.set_yscale("log")
        elif q == "f":
            ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(_LABELS[q], fontsize=10)
        ax.set_xlabel("t (0 = data, 1 = prior)")
        ax.grid(alpha=0.3, which="both", lw=0.5)
    legend_ax.axis("off")
    legend_ax.legend(*axes[0].get_legend_handles_labels(), loc="center", title="schedule")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return curves


# ---------------------------------------------------------------------------------------------- trajectories
DEFAULT_MIXTURE = {"weights": (0.4, 0.6), "means": (-1.2, 1.0), "stds": (0.3, 0.35)}


@dataclass
class TrajectoryData:
    """What :func:`plot_trajectories` draws (NumPy float64 arrays; time index 0 is t = 1).

    t: (T + 1,) times from 1 down to ``t_end``. sde_paths: (T + 1, N) reverse-SDE paths from ``start``.
    sde_mean: (T + 1,) their mean. bands: {level: (T + 1,)} quantiles of the SDE paths at each time.
    ode_path: (T + 1,) PF-ODE path from ``start``. quantile_levels: (Q,) levels u; ode_quantile_paths:
    (T + 1, Q) PF-ODE paths started at the u-quantiles of the exact p_1; target_quantiles: (Q,) the exact
    u-quantiles of p_{t_end} (where those paths must end: in 1-D the PF-ODE map is monotone, so it carries
    quantiles to quantiles). posterior_mean: E[x_{t_end} | x_1 = start] (where the SDE mean must end).
    """

    t: np.ndarray
    sde_paths: np.ndarray
    sde_mean: np.ndarray
    bands: dict
    ode_path: np.ndarray
    quantile_levels: np.ndarray
    ode_quantile_paths: np.ndarray
    target_quantiles: np.ndarray
    posterior_mean: float
    start: float
    schedule_name: str
    ode_nfe: int


def mixture_1d(
    weights: Sequence[float] = DEFAULT_MIXTURE["weights"],
    means: Sequence[float] = DEFAULT_MIXTURE["means"],
    stds: Sequence[float] = DEFAULT_MIXTURE["stds"],
):
    """A 1-D :class:`unisde.analytic.GaussianMixture` Σ_k w_k N(μ_k, s_k²)."""
    from unisde.analytic import GaussianMixture

    if not len(weights) == len(means) == len(stds):
        raise ValueError(f"weights, means and stds need equal lengths, got {len(weights)}, {len(means)}, {len(stds)}")
    return GaussianMixture(list(weights), [[float(m)] for m in means], [float(s) ** 2 for s in stds])


def mixture_quantiles(mixture, levels, t: float, schedule: NoiseSchedule, num_points: int = 40001) -> torch.Tensor:
    """Exact u-quantiles of the 1-D marginal p_t of ``mixture`` (``mixture.marginal_log_prob``), by inverting its
    CDF integrated with the trapezoid rule on ``num_points`` points spanning ±12 standard deviations
    (quantile error ≈ 1e-6 for the default mixture)."""
    levels = torch.as_tensor(levels, dtype=DTYPE)
    tt = torch.tensor(float(t), dtype=DTYPE)
    s, sigma = float(schedule.s(tt)), float(schedule.sigma(tt))
    centre = s * float(mixture.mean[0])
    std = math.sqrt(s * s * float(mixture.cov[0, 0]) + sigma * sigma)
    xs = torch.linspace(centre - 12 * std, centre + 12 * std, num_points, dtype=DTYPE)
    density = torch.exp(mixture.marginal_log_prob(xs[:, None], float(t), schedule))
    cdf = torch.cat(
        [torch.zeros(1, dtype=DTYPE), torch.cumsum(0.5 * (density[1:] + density[:-1]) * (xs[1:] - xs[:-1]), 0)]
    )
    cdf = cdf / cdf[-1]
    i = torch.searchsorted(cdf, levels).clamp(1, num_points - 1)
    w = (levels - cdf[i - 1]) / (cdf[i] - cdf[i - 1])
    return xs[i - 1] + w * (xs[i] - xs[i - 1])


def simulate_trajectories(
    mixture=None,
    schedule: NoiseSchedule | None = None,
    *,
    num_paths: int = 2000,
    num_steps: int = 500,
    start: float = 0.0,
    t_end: float = 1e-3,
    levels: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    seed: int = 0,
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> TrajectoryData:
    """Reverse-SDE (η = 1, Euler–Maruyama on ``num_steps`` uniform steps) and PF-ODE (η = 0, Dormand–Prince)
    paths of a 1-D Gaussian mixture with its exact score, from x(1) = ``start`` down to t = ``t_end`` > 0
    (at t = 0 the score of the data is evaluated at σ = 0, where it is undefined for the denoiser).
    """
    from unisde.core.sde import ForwardSDE
    from unisde.ode import solve_ivp

    mixture = mixture_1d() if mixture is None else mixture
    schedule = NoiseSchedule.vp_linear() if schedule is None else schedule
    if mixture.dim != 1:
        raise ValueError(f"trajectories are drawn for 1-D data; the mixture has dimension {mixture.dim}")
    if not (isinstance(num_paths, int) and num_paths >= 2 and isinstance(num_steps, int) and num_steps >= 2):
        raise ValueError(f"num_paths and num_steps must be integers >= 2, got {num_paths} and {num_steps}")
    if not 0.0 < t_end < 1.0:
        raise ValueError(f"t_end must lie in (0, 1), got {t_end}")
    levels_t = torch.as_tensor(levels, dtype=DTYPE)
    if ((levels_t <= 0) | (levels_t >= 1)).any():
        raise ValueError(f"quantile levels must lie in (0, 1), got {list(levels)}")

    def score(x, t):
        return mixture.score(x, t, schedule)

    forward = ForwardSDE(schedule)
    sde, ode = forward.reverse(score, eta=1.0), forward.probability_flow(score)
    grid = torch.linspace(1.0, t_end, num_steps + 1, dtype=DTYPE)
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((num_paths, 1), float(start), dtype=DTYPE)
    paths = [x[:, 0].clone()]
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        noise = torch.randn(x.shape, generator=gen, dtype=DTYPE)
        x = sde.euler_maruyama_step(x, t, t_next, noise)
        paths.append(x[:, 0].clone())
    sde_paths = torch.stack(paths).numpy()

    # PF-ODE from the common start and from the exact p_1 quantiles, solved together (one batch).
    q_levels = torch.linspace(0.05, 0.95, 9, dtype=DTYPE)
    starts = torch.cat([torch.tensor([float(start)], dtype=DTYPE), mixture_quantiles(mixture, q_levels, 1.0, schedule)])
    # Reported at ≤ 101 times (each forces a step to land there) and interpolated onto the SDE grid for drawing;
    # the end point is the solver's own.
    stride = max(1, math.ceil(num_steps / 100))
    idx = sorted(set(range(0, num_steps + 1, stride)) | {num_steps})
    sol = solve_ivp(lambda t, y: ode.drift(y, t), 1.0, t_end, starts[:, None], rtol=rtol, atol=atol, t_eval=grid[idx])
    coarse_t, coarse_y = sol.t.numpy()[::-1], sol.y[:, :, 0].numpy()[::-1]
    ode_paths = np.stack([np.interp(grid.numpy(), coarse_t, coarse_y[:, j]) for j in range(coarse_y.shape[1])], axis=1)

    bands = {float(u): np.quantile(sde_paths, float(u), axis=1) for u in levels_t}
    posterior = float(mixture.denoise(torch.tensor([[float(start)]], dtype=DTYPE), 1.0, schedule)) * float(
        schedule.s(torch.tensor(t_end, dtype=DTYPE))
    )
    return TrajectoryData(
        t=grid.numpy(),
        sde_paths=sde_paths,
        sde_mean=sde_paths.mean(1),
        bands=bands,
        ode_path=ode_paths[:, 0],
        quantile_levels=q_levels.numpy(),
        ode_quantile_paths=ode_paths[:, 1:],
        target_quantiles=mixture_quantiles(mixture, q_levels, t_end, schedule).numpy(),
        posterior_mean=posterior,
        start=float(start),
        schedule_name=schedule.name,
        ode_nfe=sol.nfe,
    )


def _draw_trajectories(ax, data: TrajectoryData, upto: int | None = None):
    """Bands, mean, ODE paths up to time index ``upto`` (all when None) on ``ax``; returns the artists."""
    n = len(data.t) if upto is None else upto + 1
    t = data.t[:n]
    levels = sorted(data.bands)
    pairs = [(levels[i], levels[-1 - i]) for i in range(len(levels) // 2)]
    shades = ("#9ecae1", "#4292c6", "#2171b5")
    for (lo, hi), colour in zip(pairs, shades):
        ax.fill_between(
            t,
            data.bands[lo][:n],
            data.bands[hi][:n],
            color=colour,
            alpha=0.45,
            lw=0,
            label=f"SDE {100 * lo:.0f}–{100 * hi:.0f}% band",
        )
    for j in range(data.ode_quantile_paths.shape[1]):
        ax.plot(
            t,
            data.ode_quantile_paths[:n, j],
            color="0.55",
            lw=0.7,
            label="PF-ODE from p₁ quantiles" if j == 0 else None,
        )
    ax.plot(t, data.sde_mean[:n], "k--", lw=1.4, label="SDE mean")
    ax.plot(t, data.ode_path[:n], color="#d62728", lw=2.4, label="PF-ODE (same start)")
    ax.set_xlim(1.0, 0.0)
    ax.set_xlabel("t (runs from 1 = prior to 0 = data)")
    ax.set_ylabel("x")


def plot_trajectories(
    data: TrajectoryData, path: str, mixture=None, schedule: NoiseSchedule | None = None
) -> TrajectoryData:
    """The SDE-vs-ODE figure of [Unify]:
    SDE quantile bands, SDE mean and PF-ODE paths against t (left), and the data density
    with a histogram of the SDE end points (right). ``mixture``/``schedule`` (default: those of
    :func:`simulate_trajectories`) give the density curve."""
    plt = _pyplot()
    mixture = mixture_1d() if mixture is None else mixture
    schedule = NoiseSchedule.vp_linear() if schedule is None else schedule
    fig, (ax, side) = plt.subplots(
        1, 2, figsize=(9.5, 4.2), sharey=True, gridspec_kw={"width_ratios": [4, 1]}, constrained_layout=True
    )
    _draw_trajectories(ax, data)
    ax.set_title(
        f"reverse SDE (η=1) vs PF-ODE (η=0) from x(1) = {data.start:g}, schedule {data.schedule_name}", fontsize=10
    )
    ax.legend(fontsize=7, loc="upper left")
    lo, hi = ax.get_ylim()
    ys = torch.linspace(lo, hi, 400, dtype=DTYPE)
    density = torch.exp(mixture.marginal_log_prob(ys[:, None], float(data.t[-1]), schedule)).numpy()
    side.hist(
        data.sde_paths[-1],
        bins=60,
        density=True,
        orientation="horizontal",
        color="#4292c6",
        alpha=0.5,
        label="SDE end points",
    )
    side.plot(density, ys.numpy(), "k", lw=1.2, label="p_data")
    side.set_xlabel("density")
    side.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return data


def animate_trajectories(data: TrajectoryData, path: str, frames: int = 30, fps: int = 10) -> int:
    """An animated GIF (PillowWriter) revealing :func:`plot_trajectories`' left panel as t runs from 1 to 0.
    Returns the number of frames written."""
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    plt = _pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter

    fig, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    y_all = np.concatenate(
        [data.bands[min(data.bands)], data.bands[max(data.bands)], data.ode_path, data.ode_quantile_paths.ravel()]
    )
    pad = 0.05 * (y_all.max() - y_all.min())
    stops = np.linspace(1, len(data.t) - 1, frames).round().astype(int)

    def draw(i):
        ax.clear()
        _draw_trajectories(ax, data, upto=int(stops[i]))
        ax.set_ylim(y_all.min() - pad, y_all.max() + pad)
        ax.set_title(f"t = {data.t[stops[i]]:.3f}", fontsize=10)
        if i == 0:
            ax.legend(fontsize=6, loc="upper left")
        return []

    anim = FuncAnimation(fig, draw, frames=frames, blit=False)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=70)
    plt.close(fig)
    return frames
