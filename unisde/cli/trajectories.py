"""``unisde trajectories --plot out.png [--gif out.gif]``: reverse-SDE vs PF-ODE paths of a 1-D Gaussian
mixture under its exact denoiser
(the SDE-vs-ODE illustration of the note [Unify]), drawn from the package's own SDE objects."""

from __future__ import annotations

help = "picture (PNG) and animation (GIF) of reverse-SDE vs PF-ODE paths for a 1-D Gaussian mixture"


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(parser):
    parser.add_argument("--plot", metavar="OUT.png", help="write the figure here")
    parser.add_argument("--gif", metavar="OUT.gif", help="write an animation (t from 1 to 0) here")
    parser.add_argument(
        "--schedule",
        default="vp-linear",
        help="schedule name, inline JSON, or a schedule / scheduler config file (default vp-linear)",
    )
    parser.add_argument("--weights", default="0.4,0.6", help="mixture weights, comma-separated (default 0.4,0.6)")
    parser.add_argument("--means", default="-1.2,1.0", help="component means (default -1.2,1.0)")
    parser.add_argument("--stds", default="0.3,0.35", help="component standard deviations (default 0.3,0.35)")
    parser.add_argument("--start", type=float, default=0.0, help="common starting point x(1) of all paths (default 0)")
    parser.add_argument("--num_paths", type=int, default=2000, help="reverse-SDE paths (default 2000)")
    parser.add_argument("--steps", type=int, default=500, help="Euler–Maruyama steps from t=1 to t≈0 (default 500)")
    parser.add_argument("--frames", type=int, default=30, help="GIF frames (default 30)")
    parser.add_argument("--seed", type=int, default=0)


def run(args):
    from unisde.cli.schedule import check_output_path, load_schedule
    from unisde.plots import animate_trajectories, mixture_1d, plot_trajectories, simulate_trajectories

    if not args.plot and not args.gif:
        raise ValueError("nothing to do: give --plot OUT.png and/or --gif OUT.gif")
    if args.gif and not args.gif.lower().endswith(".gif"):
        raise ValueError(f"--gif must name a .gif file, got {args.gif!r}")
    if args.frames < 2:
        raise ValueError(f"--frames must be at least 2, got {args.frames}")
    for option, path in (("--plot", args.plot), ("--gif", args.gif)):
        if path:
            check_output_path(path, option)
    mixture = mixture_1d(_floats(args.weights), _floats(args.means), _floats(args.stds))
    schedule = load_schedule(args.schedule)
    data = simulate_trajectories(
        mixture, schedule, num_paths=args.num_paths, num_steps=args.steps, start=args.start, seed=args.seed
    )
    if args.plot:
        plot_trajectories(data, args.plot, mixture, schedule)
        print(f"wrote {args.plot}")
    if args.gif:
        animate_trajectories(data, args.gif, frames=args.frames)
        print(f"wrote {args.gif}")
    print(
        f"{args.num_paths} SDE paths ({args.steps} Euler–Maruyama steps), PF-ODE {data.ode_nfe} evaluations; "
        f"SDE mean at t={data.t[-1]:g}: {data.sde_mean[-1]:.4f} (exact E[x | x(1)]: {data.posterior_mean:.4f}); "
        f"PF-ODE end point {data.ode_path[-1]:.4f}"
    )
    return 0
