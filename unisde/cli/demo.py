"""``unisde demo``: the bundled digits checkpoints sampled with every registered sampler (the README's main job)."""

help = (
    "sample the bundled digits checkpoints (DDPM and rectified flow) with every sampler; write grids, schedule "
    "plots and one quality table"
)


def add_arguments(parser):
    from unisde.demo import BUNDLED_CHECKPOINTS, DEFAULT_NUM_SAMPLES, DEFAULT_NUM_SAMPLES_SECOND

    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=list(BUNDLED_CHECKPOINTS),
        help="pipeline folder(s) (default: the bundled digits-unet and digits-flow)",
    )
    parser.add_argument(
        "--output_dir",
        default="demo_out",
        help="where <checkpoint>/ grids, schedule.png and results.{md,json} go, and the combined results.md",
    )
    parser.add_argument(
        "--num_samples",
        type=int,
        nargs="+",
        default=None,
        help=f"images per sampler: one number for all checkpoints or one per checkpoint (default: "
        f"{DEFAULT_NUM_SAMPLES} for the first, {DEFAULT_NUM_SAMPLES_SECOND} for the others, to keep "
        "the demo at about 2-3 minutes on 2 CPU cores)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", nargs="*", default=None, help="subset of samplers (default: all registered)")
    parser.add_argument("--no_likelihood", action="store_true", help="skip the PF-ODE bits/dim")
    parser.add_argument(
        "--update_card",
        action="store_true",
        help="write each checkpoint's table, bits/dim and a sample grid into its model card",
    )


def run(args):
    import os
    import time

    from unisde.demo import format_table, run_demos

    start = time.perf_counter()
    print(f"unisde demo: {', '.join(args.checkpoint)} → {args.output_dir}/", flush=True)
    rows, bpd = run_demos(
        args.checkpoint, args.output_dir, args.num_samples, args.seed, args.samplers, likelihood=not args.no_likelihood
    )
    print()
    print(format_table(rows))
    for name, value in bpd.items():
        if value:
            print(f"PF-ODE likelihood of real digits under {name}: {value}")
    if args.update_card:
        from unisde.demo import update_model_card

        for path in args.checkpoint:
            name = os.path.basename(os.path.normpath(path))
            print(f"model card updated: {update_model_card(path, rows, bpd.get(name))}")
    print(f"done in {time.perf_counter() - start:.1f} s; grids in {args.output_dir}/<checkpoint>/samples_*.png")
    return 0
