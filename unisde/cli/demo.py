"""``unisde demo``: the bundled digits checkpoint sampled with every registered sampler (the README's main job)."""

help = "sample the bundled digits checkpoint with every sampler; write grids, a schedule plot and a quality table"


def add_arguments(parser):
    from unisde.demo import BUNDLED_CHECKPOINT, DEFAULT_NUM_SAMPLES

    parser.add_argument("--checkpoint", default=BUNDLED_CHECKPOINT, help="pipeline folder (default: the bundled digits UNet)")
    parser.add_argument("--output_dir", default="demo_out", help="where grids, schedule.png and results.{md,json} go")
    parser.add_argument("--num_samples", type=int, default=DEFAULT_NUM_SAMPLES, help="images generated per sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", nargs="*", default=None, help="subset of samplers (default: all registered)")
    parser.add_argument("--no_likelihood", action="store_true", help="skip the PF-ODE bits/dim")
    parser.add_argument("--update_card", action="store_true",
                        help="write the table, bits/dim and a sample grid into the checkpoint's model card")


def run(args):
    import time

    from unisde.demo import format_table, run_demo

    start = time.perf_counter()
    print(f"unisde demo: {args.checkpoint} → {args.output_dir}/", flush=True)
    rows = run_demo(args.checkpoint, args.output_dir, args.num_samples, args.seed, args.samplers,
                    likelihood=not args.no_likelihood)
    print()
    print(format_table(rows, args.num_samples))
    if args.update_card:
        import json
        import os

        from unisde.demo import update_model_card

        with open(os.path.join(args.output_dir, "results.json")) as fh:
            bpd = json.load(fh).get("bits_per_dim")
        print(f"model card updated: {update_model_card(args.checkpoint, rows, bpd)}")
    print(f"done in {time.perf_counter() - start:.1f} s; grids in {args.output_dir}/samples_*.png")
    return 0
