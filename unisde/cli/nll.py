"""``unisde nll PIPELINE_DIR``: bits per dimension of a saved diffusers pipeline through its PF-ODE.

The pipeline folder holds ``unet/`` (a diffusers ``UNet2DModel``) and ``scheduler/scheduler_config.json``
(a UnifiedScheduler config, or any diffusers scheduler config it accepts), which define the schedule and the
parameterisation (``prediction_type``). The data are quantised images scaled to [−1, 1]; each is dequantised
uniformly within its bin and the discrete-data offset is added (docs/likelihood.md), so the number is an upper
bound on the model's discrete negative log-likelihood in bits per dimension.
"""

from __future__ import annotations

import json
import os

help = "bits/dim of a pipeline's model on a dataset via the probability-flow ODE (exact likelihood)"

def add_arguments(parser):
    parser.add_argument("pipeline_dir", metavar="PIPELINE_DIR", help="folder with unet/ and scheduler/scheduler_config.json")
    parser.add_argument("--dataset", default="digits",
                        help="'digits' (scikit-learn's bundled 8×8 digits, 17 levels 0…16 scaled by x/8 − 1; default), a "
                             ".npy/.npz file of integer images 0…255 shaped (N, H, W), (N, H, W, C) or (N, C, H, W), or any "
                             "source `unisde train` reads: an image folder, a save_to_disk folder, parquet/arrow files "
                             "(comma-separated) or a Hub dataset id, holding 8-bit images (resized and centre-cropped to "
                             "the model's resolution)")
    parser.add_argument("--image_column", default=None, help="image column of a datasets source (default: the Image column)")
    parser.add_argument("--split", default="train", help="split of a datasets source (default train)")
    parser.add_argument("--num_samples", type=int, default=128, help="number of data points evaluated (default 128)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--trace", default="auto", choices=("auto", "exact", "hutchinson"),
                        help="divergence: exact (D backward passes) or Hutchinson–Skilling (auto: exact for D <= 64)")
    parser.add_argument("--probe", default="rademacher", choices=("rademacher", "gaussian"))
    parser.add_argument("--t_min", type=float, default=1e-5, help="start time of the ODE, in (0, 1)")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--prior", default="sampler", choices=("sampler", "data"),
                        help="sampler: N(0, s(1)²+σ(1)²), the density the samplers start from (default); data: "
                             "N(s(1)·m, s(1)²·v + σ(1)²) with the dataset's per-pixel mean m and variance v")
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of samples, the dequantisation and the probes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def load_pipeline_model(path: str, device="cpu"):
    """(unet, schedule, parameterization) of a saved pipeline folder; ValueError naming what is missing."""
    from diffusers import UNet2DModel

    from unisde.diffusers.scheduler import UnifiedScheduler

    cfg_path = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isdir(os.path.join(path, "unet")) or not os.path.exists(cfg_path):
        raise ValueError(f"{path!r} is not a pipeline folder: expected unet/ and scheduler/scheduler_config.json inside it")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    # UnifiedScheduler reads every diffusers scheduler config (schedule + prediction_type) the same way samplers do.
    scheduler = UnifiedScheduler.from_config(cfg)
    unet = UNet2DModel.from_pretrained(path, subfolder="unet").to(device).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    return unet, scheduler.noise_schedule, scheduler.parameterization


def _digits_or_array(name: str):
    """(images, num_bins) for ``digits`` or an integer .npy/.npz file; None for any other name."""
    import numpy as np
    import torch

    if name == "digits":
        from unisde.training.data import DIGITS_LEVELS, real_digits

        return real_digits(8), DIGITS_LEVELS + 1
    if not (os.path.isfile(name) and name.endswith((".npy", ".npz"))):
        return None
    arr = np.load(name)
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr = arr[arr.files[0]]
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"{name}: expected integer pixel values in 0…255, got dtype {arr.dtype} range [{arr.min()}, {arr.max()}]")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.ndim != 4:
        raise ValueError(f"{name}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), got {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0), 256


def _open_datasets_source(name: str, split: str):
    """A ``datasets.Dataset`` from a folder (imagefolder or save_to_disk), data files, or a Hub id."""
    from unisde.training import data as D

    files = [f for f in name.split(",") if f]
    try:
        if os.path.isdir(name):
            return D.load_image_dataset(train_data_dir=name, split=split)
        if files and all(os.path.isfile(f) for f in files):
            return D.load_image_dataset(train_files=files, split=split)
        if name.startswith((".", "/", "~")) or os.path.splitext(name)[1] or name.count("/") > 1:
            raise FileNotFoundError(f"no such file or folder: {name}")  # a path, not a Hub id (owner/name)
        return D.load_image_dataset(dataset_name=name, split=split)
    except ValueError:
        raise
    except Exception as exc:  # datasets raises many types (network, missing files, unknown split)
        raise ValueError(f"unknown dataset {name!r}: it is not 'digits', a .npy/.npz file, a folder, data files or a "
                         f"loadable datasets id ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def load_quantized_dataset(name: str, shape: tuple | None = None, image_column: str | None = None, split: str = "train"):
    """(images (N, C, H, W) float32 in [−1, 1], num_bins) of 8-bit (or digits') data.

    ``name``: ``digits``, an integer .npy/.npz file (used as is), or any source ``unisde train`` reads — a
    folder of images (imagefolder) or a ``save_to_disk`` dataset, parquet/arrow/csv/json files (comma-separated),
    or a Hub dataset id. Images from a ``datasets`` source must be 8-bit (PIL images or uint8 arrays); they are
    converted to the model's ``shape`` (C, R, R) the way training does (channels, shorter side resized to R,
    centre crop) and re-quantised to 8 bits (integer arrays must hold 0…255), so the bits/dim are those of the 8-bit images the model sees.
    """
    import numpy as np
    import torch

    found = _digits_or_array(name)
    if found is not None:
        return found
    from unisde.training import data as D

    dataset = _open_datasets_source(name, split)
    column = D.find_image_column(dataset, image_column)
    if len(dataset) == 0:
        raise ValueError(f"dataset {name!r} (split {split!r}) is empty")
    values = list(dataset.with_format("numpy", columns=[column])[column])
    first = np.asarray(values[0])
    if not np.issubdtype(first.dtype, np.integer):
        raise ValueError(f"dataset {name!r}: column {column!r} holds {first.dtype} images; the bits/dim convention needs "
                         "8-bit images (PIL images or integer arrays 0…255) — save float data as integers 0…255")
    bad = next((i for i, v in enumerate(values) if np.asarray(v).min() < 0 or np.asarray(v).max() > 255), None)
    if bad is not None:
        raise ValueError(f"dataset {name!r}: image {bad} of column {column!r} has values outside 0…255 "
                         f"([{np.asarray(values[bad]).min()}, {np.asarray(values[bad]).max()}])")
    values = [np.asarray(v).astype(np.uint8) for v in values]
    first = values[0]
    if shape is None:
        shape = D._to_array(first).shape  # the first image's own channels and (shorter) side
    channels, resolution = int(shape[0]), int(min(shape[1:]))
    images = torch.stack([D.preprocess_image(v, resolution, channels, center_crop=True) for v in values])
    # resizing and channel conversion leave the 8-bit grid: round back to it (what saving the images as PNG does)
    images = torch.round((images + 1.0) * 127.5).clamp_(0, 255) / 127.5 - 1.0
    return images, 256


def run(args):

    from unisde.ode import ODESolverError

    if args.num_samples <= 0 or args.batch_size <= 0:
        raise ValueError(f"--num_samples and --batch_size must be positive, got {args.num_samples} and {args.batch_size}")
    if not 0.0 < args.t_min < 1.0:
        raise ValueError(f"--t_min must lie in (0, 1), got {args.t_min}")
    unet, schedule, param = load_pipeline_model(args.pipeline_dir, args.device)
    shape = (unet.config.in_channels, *((unet.config.sample_size,) * 2 if isinstance(unet.config.sample_size, int) else unet.config.sample_size))
    data, num_bins = load_quantized_dataset(args.dataset, shape, args.image_column, args.split)
    if tuple(data.shape[1:]) != tuple(shape):
        raise ValueError(f"dataset images have shape {tuple(data.shape[1:])} but the UNet expects {tuple(shape)}")

    from unisde.likelihood import dataset_bits_per_dim

    try:
        mean, se, nfes, result = dataset_bits_per_dim(
            unet, data, schedule, param, num_bins=num_bins, num_samples=args.num_samples, batch_size=args.batch_size,
            seed=args.seed, t_min=args.t_min, rtol=args.rtol, atol=args.atol, trace=args.trace, probe=args.probe,
            prior_from_data=args.prior == "data", device=args.device, progress=not args.no_progress)
    except ODESolverError as exc:
        print(f"unisde nll: the ODE solver failed: {exc}")
        return 1
    n = min(args.num_samples, data.shape[0])
    print(f"bits/dim: {mean:.4f} ± {se:.4f} (standard error over {n} samples)")
    print(f"NFE per batch: mean {sum(nfes) / len(nfes):.1f}, total {sum(nfes)} "
          f"(solver {result.solver}, rtol={args.rtol:g}, atol={args.atol:g}, trace={result.trace})")
    print(f"conventions: t_min={args.t_min:g}, uniform dequantisation over {num_bins} levels in [-1, 1] "
          f"(offset log({num_bins - 1}/2) nats/dim), prior {result.prior}")
    return 0
