"""``unisde schedule NAME_OR_CONFIG``: a schedule's continuous-time SDE coefficients at a few times.

NAME_OR_CONFIG is resolved by :func:`unisde.core.schedule.resolve_schedule_argument`, as ``unisde train
--schedule`` is: a schedule name (vp-linear, vp-cosine, sub-vp, ve, edm, ddpm-linear, ddpm-cosine, scaled-linear,
or one a plugin registered), inline JSON (``'{"name": "ve", "sigma_max": 80}'`` or a diffusers scheduler config),
or an existing file — a ``NoiseSchedule.to_config()`` JSON, a diffusers ``scheduler_config.json`` or a pipeline
directory holding ``scheduler/scheduler_config.json``. The table lists t, s(t), σ(t), f(t), g(t) and the log-SNR λ(t)
(Lu et al. 2022, §2.1 [DPMSolver]) at ``--points`` evenly spaced times from 0 to 1.
"""

from __future__ import annotations

import argparse
import os

help = "print a schedule's s, σ, f, g and log-SNR at a few times (name, inline JSON, config file or pipeline dir)"

COLUMNS = ("t", "s", "sigma", "f", "g", "log_snr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "schedule",
        metavar="NAME_OR_CONFIG",
        help="schedule name, inline JSON, a schedule or scheduler_config.json file, or a pipeline directory",
    )
    parser.add_argument(
        "--points",
        type=int,
        default=11,
        metavar="N",
        help="number of evenly spaced times in [0, 1] (default 11: t = 0, 0.1, …, 1)",
    )
    parser.add_argument("--plot", metavar="OUT.png", help="also draw s, σ, f, g and λ against t into this image")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME_OR_CONFIG",
        help="another schedule drawn side by side in --plot (repeatable)",
    )


def load_schedule(spec: str):
    """The NoiseSchedule a command-line argument names (:func:`unisde.core.schedule.resolve_schedule_argument`:
    a name, inline JSON, or an existing file or pipeline directory); a ValueError naming it otherwise."""
    from unisde.core.schedule import resolve_schedule_argument

    return resolve_schedule_argument(spec)


def check_output_path(path: str, option: str) -> None:
    """ValueError unless ``path`` (the value of ``option``, e.g. ``--plot``) can be created: its folder exists
    and is a folder, and ``path`` itself is not a folder. Checked before any work, so a typo costs nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a folder; give a file name")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path!r}: folder {folder!r} is not writable")


def schedule_table(schedule, points: int) -> list[tuple[float, ...]]:
    """Rows (t, s, σ, f, g, λ) at ``points`` evenly spaced t in [0, 1] (float64; see unisde.schedule for the
    conventions at t = 0 and, under zero terminal SNR, at t = 1)."""
    import torch

    if points < 2:
        raise ValueError(f"--points must be at least 2 (t = 0 and t = 1), got {points}")
    t = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    cols = (t, schedule.s(t), schedule.sigma(t), schedule.f(t), schedule.g(t), schedule.log_snr(t))
    return [tuple(float(c[i]) for c in cols) for i in range(points)]


def format_table(rows) -> str:
    header = "  ".join(f"{name:>12}" for name in COLUMNS)
    lines = [header] + ["  ".join(f"{v + 0.0:>12.6g}" for v in row) for row in rows]  # + 0.0: no "-0"
    return "\n".join(lines)


def run(args) -> int:
    if getattr(args, "compare", None) and not getattr(args, "plot", None):
        raise ValueError("--compare only applies to --plot OUT.png")
    if args.plot:
        check_output_path(args.plot, "--plot")
    schedule = load_schedule(args.schedule)
    compared = {spec: load_schedule(spec) for spec in getattr(args, "compare", None) or []}
    rows = schedule_table(schedule, args.points)  # validates --points before any output
    print(f"# {schedule!r}")
    print("# t ∈ [0, 1] (0 = data, 1 = prior); x_t = s x0 + σ ε; dx = f x dt + g dw; log_snr = log(s²/σ²)")
    if schedule.is_discrete:
        print(f"# training index i ↔ t = (i + 1)/{schedule.num_train_timesteps}")
    if schedule.t_end < 1.0:
        print(f"# zero terminal SNR: f, g and log_snr at t = 1 are their values at t_end = {schedule.t_end:.6g}")
    print(format_table(rows))
    if args.plot:
        from unisde.plots import plot_schedules

        try:
            plot_schedules({args.schedule: schedule, **compared}, args.plot)
        except OSError as exc:
            raise ValueError(f"--plot {args.plot!r}: cannot write the image: {exc.strerror or exc}") from None
        print(f"# wrote {args.plot}")
    return 0
