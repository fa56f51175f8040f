"""``unisde nll PIPELINE_DIR``: bits per dimension of a saved diffusers pipeline through its PF-ODE.

The pipeline folder holds ``unet/`` (a diffusers ``UNet2DModel``) and ``scheduler/scheduler_config.json``
(a UnifiedScheduler config, or any diffusers scheduler config it accepts), which define the schedule and the
parameterisation (``prediction_type``). The data are quantised images scaled to [−1, 1]; each is dequantised
uniformly within its bin and the discrete-data offset is added (docs/likelihood.md), so the number is an upper
bound on the model's discrete negative log-likelihood in bits per dimension.
"""

from __future__ import annotations

from unisde.likelihood_data import load_pipeline_model, load_quantized_dataset

help = "bits/dim of a pipeline's model on a dataset via the probability-flow ODE (exact likelihood)"


def add_arguments(parser):
    parser.add_argument(
        "pipeline_dir", metavar="PIPELINE_DIR", help="folder with unet/ and scheduler/scheduler_config.json"
    )
    parser.add_argument(
        "--dataset",
        default="digits",
        help="'digits' (scikit-learn's bundled 8×8 digits, 17 levels 0…16 scaled by x/8 − 1; default), a "
        ".npy/.npz file of integer images 0…255 shaped (N, H, W), (N, H, W, C) or (N, C, H, W), or any "
        "source `unisde train` reads: an image folder, a save_to_disk folder, parquet/arrow files "
        "(comma-separated) or a Hub dataset id, holding 8-bit images (resized and centre-cropped to "
        "the model's resolution)",
    )
    parser.add_argument(
        "--image_column", default=None, help="image column of a datasets source (default: the Image column)"
    )
    parser.add_argument("--split", default="train", help="split of a datasets source (default train)")
    parser.add_argument("--num_samples", type=int, default=128, help="number of data points evaluated (default 128)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--trace",
        default="auto",
        choices=("auto", "exact", "hutchinson"),
        help="divergence: exact (D backward passes) or Hutchinson–Skilling (auto: exact for D <= 64)",
    )
    parser.add_argument("--probe", default="rademacher", choices=("rademacher", "gaussian"))
    parser.add_argument("--t_min", type=float, default=1e-5, help="start time of the ODE, in (0, 1)")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument(
        "--prior",
        default="sampler",
        choices=("sampler", "data"),
        help="sampler: N(0, s(1)²+σ(1)²), the density the samplers start from (default); data: "
        "N(s(1)·m, s(1)²·v + σ(1)²) with the dataset's per-pixel mean m and variance v",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the choice of samples, the dequantisation and the probes"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def run(args):

    from unisde.ode import ODESolverError

    if args.num_samples <= 0 or args.batch_size <= 0:
        raise ValueError(
            f"--num_samples and --batch_size must be positive, got {args.num_samples} and {args.batch_size}"
        )
    if not 0.0 < args.t_min < 1.0:
        raise ValueError(f"--t_min must lie in (0, 1), got {args.t_min}")
    unet, schedule, param = load_pipeline_model(args.pipeline_dir, args.device)
    shape = (
        unet.config.in_channels,
        *((unet.config.sample_size,) * 2 if isinstance(unet.config.sample_size, int) else unet.config.sample_size),
    )
    data, num_bins = load_quantized_dataset(args.dataset, shape, args.image_column, args.split)
    if tuple(data.shape[1:]) != tuple(shape):
        raise ValueError(f"dataset images have shape {tuple(data.shape[1:])} but the UNet expects {tuple(shape)}")

    from unisde.likelihood import dataset_bits_per_dim

    try:
        mean, se, nfes, result = dataset_bits_per_dim(
            unet,
            data,
            schedule,
            param,
            num_bins=num_bins,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            t_min=args.t_min,
            rtol=args.rtol,
            atol=args.atol,
            trace=args.trace,
            probe=args.probe,
            prior_from_data=args.prior == "data",
            device=args.device,
            progress=not args.no_progress,
        )
    except ODESolverError as exc:
        print(f"unisde nll: the ODE solver failed: {exc}")
        return 1
    n = min(args.num_samples, data.shape[0])
    if n < 2:  # one value has no standard error (its formula gives nan)
        print(f"bits/dim: {mean:.4f} (one sample: no standard error; pass --num_samples 2 or more for one)")
    else:
        print(f"bits/dim: {mean:.4f} ± {se:.4f} (standard error over {n} samples)")
    print(
        f"NFE per batch: mean {sum(nfes) / len(nfes):.1f}, total {sum(nfes)} "
        f"(solver {result.solver}, rtol={args.rtol:g}, atol={args.atol:g}, trace={result.trace})"
    )
    print(
        f"conventions: t_min={args.t_min:g}, uniform dequantisation over {num_bins} levels in [-1, 1] "
        f"(offset log({num_bins - 1}/2) nats/dim), prior {result.prior}"
    )
    return 0
