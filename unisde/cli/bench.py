"""``unisde bench``: sampler accuracy per NFE against exact ground truth, scheduler overhead, pipeline and
training speed, unisde vs diffusers in one process; writes BENCHMARKS.md (+ its plot) and optionally JSON."""

help = "benchmark samplers (accuracy per NFE on exact models) and speed against diffusers; writes BENCHMARKS.md"
description = __doc__


def _csv(text, cast=str):
    return tuple(cast(v.strip()) for v in str(text).split(",") if v.strip())


def add_arguments(parser):
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced run (every registered sampler on default grids: "
        "Gaussian 64-D at NFE 10, 20 and 2-D mixture at NFE 10; reduced speed sections)",
    )
    parser.add_argument(
        "--preset",
        choices=("quick", "medium", "full"),
        default=None,
        help="full (default: every target at NFE 4, 5, 6, 8, 10, 20, 50 with grid variants), medium "
        "(64-D targets: NFE 5, 10, 20, 50, default grids, 500 samples for the sampling metric; 2-D: "
        "5000 samples) or quick (= --quick)",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the machine-readable results here")
    parser.add_argument(
        "--output", metavar="PATH", default="BENCHMARKS.md", help="the Markdown report (default: BENCHMARKS.md)"
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        default=None,
        help="the accuracy figure (default: docs/bench_accuracy.png next to --output)",
    )
    parser.add_argument("--nfe", default=None, help="comma-separated NFE budgets (overrides the preset)")
    parser.add_argument(
        "--targets",
        default=None,
        help="comma-separated targets: mixture-2d, mixture-8x8, gaussian-8x8 (exact models) and the bundled "
        "trained checkpoints digits-vp, digits-flow",
    )
    parser.add_argument("--samples", type=int, default=None, help="samples per distance (overrides the preset)")
    parser.add_argument(
        "--sections", default=None, help="comma-separated subset of accuracy, overhead, pipeline, training"
    )
    parser.add_argument(
        "--no-grid-variants", action="store_true", help="run every contestant on its default time grid only"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for the accuracy section's cells (default: 2 for full and medium, or 1 on one core; 1 for "
        "quick); each runs single-threaded and the results are the same",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the speed sections run: cpu (default: every section) or cuda / cuda:N — then absolute step() "
        "times of every twin at SD-latent size and the DDPMPipeline ratio at SD-latent size (sections overhead and "
        "pipeline; a clear error where no CUDA GPU is present)",
    )
    parser.add_argument(
        "--no-optimized-grids",
        action="store_true",
        help="race no optimised-grid contestants (their fits take part of the accuracy section's time)",
    )


def run(args):
    import json
    import os
    import sys

    from unisde.bench import BenchConfig, plot_accuracy, render_markdown, run_benchmarks
    from unisde.bench.speed import check_device, device_settings
    from unisde.grids.optimize import write_texts_atomic

    overrides = {}
    if check_device(args.device).type != "cpu":
        overrides.update(device_settings(args.device))
    if args.nfe:
        try:
            overrides["nfe"] = _csv(args.nfe, int)
            overrides["nfe_64d"] = None  # the same budgets on every target
        except ValueError:
            raise ValueError(f"--nfe must be comma-separated integers, got {args.nfe!r}") from None
    if args.targets:
        overrides["targets"] = _csv(args.targets)
    if args.samples is not None:
        overrides["n_samples"] = overrides["n_samples_2d"] = args.samples
    if args.sections:
        overrides["sections"] = _csv(args.sections)
    if args.no_grid_variants:
        overrides["grid_variants"] = False
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.no_optimized_grids:
        overrides["fit"] = None
    preset = "quick" if args.quick else (args.preset or "full")
    if args.quick and args.preset not in (None, "quick"):
        raise ValueError(f"--quick contradicts --preset {args.preset}")
    maker = {"quick": BenchConfig.quick_preset, "medium": BenchConfig.medium, "full": BenchConfig.full}[preset]
    cfg = maker(**overrides)
    cfg.validate()  # bad input fails before any work

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = run_benchmarks(cfg, log)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    plot_path = args.plot or os.path.join(out_dir, "docs", "bench_accuracy.png")
    written = plot_accuracy(results, plot_path)
    rel = os.path.relpath(written, out_dir).replace(os.sep, "/") if written else None
    command = "unisde bench" + ("" if preset == "full" else f" --preset {preset}")
    if cfg.device != "cpu":
        command += f" --device {cfg.device}"
    files = {args.output: render_markdown(results, rel, command)}
    if args.json:
        files[args.json] = json.dumps(results, indent=1, allow_nan=True)
    write_texts_atomic(files)  # never a half-written report
    print(
        f"wrote {args.output}"
        + (f", {written}" if written else "")
        + (f", {args.json}" if args.json else "")
        + f" in {results['seconds']:.1f} s"
    )
    return 0
