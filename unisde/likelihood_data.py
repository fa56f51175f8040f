"""What likelihood evaluation reads: a saved diffusers pipeline's model, schedule and parameterisation
(:func:`load_pipeline_model`), and quantised image data scaled to [−1, 1] with its number of levels
(:func:`load_quantized_dataset`) — the inputs of :func:`unisde.likelihood.dataset_bits_per_dim`.

Used by ``unisde nll`` and the demo; the data sources are those ``unisde train`` reads, plus the bundled digits and
integer .npy/.npz arrays.
"""

from __future__ import annotations

import json
import os


def load_pipeline_model(path: str, device="cpu"):
    """(unet, schedule, parameterization) of a saved pipeline folder; ValueError naming what is missing."""
    from diffusers import UNet2DModel

    from unisde.diffusers.scheduler import UnifiedScheduler

    cfg_path = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isdir(os.path.join(path, "unet")) or not os.path.exists(cfg_path):
        raise ValueError(
            f"{path!r} is not a pipeline folder: expected unet/ and scheduler/scheduler_config.json inside it"
        )
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
        raise ValueError(
            f"{name}: expected integer pixel values in 0…255, got dtype {arr.dtype} range [{arr.min()}, {arr.max()}]"
        )
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
        raise ValueError(
            f"unknown dataset {name!r}: it is not 'digits', a .npy/.npz file, a folder, data files or a "
            f"loadable datasets id ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def load_quantized_dataset(
    name: str, shape: tuple | None = None, image_column: str | None = None, split: str = "train"
):
    """(images (N, C, H, W) float32 in [−1, 1], num_bins) of 8-bit (or digits') data.

    ``name``: ``digits``, an integer .npy/.npz file (used as is), or any source ``unisde train`` reads — a
    folder of images (imagefolder) or a ``save_to_disk`` dataset, parquet/arrow/csv/json files (comma-separated),
    or a Hub dataset id. Images from a ``datasets`` source must be 8-bit (PIL images or uint8 arrays); they are
    converted to the model's ``shape`` (C, R, R) the way training does (channels, shorter side resized to R,
    centre crop) and re-quantised to 8 bits (integer arrays must hold 0…255), so the bits/dim are those of the 8-bit
    images the model sees.
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
        raise ValueError(
            f"dataset {name!r}: column {column!r} holds {first.dtype} images; the bits/dim convention needs "
            "8-bit images (PIL images or integer arrays 0…255) — save float data as integers 0…255"
        )
    bad = next((i for i, v in enumerate(values) if np.asarray(v).min() < 0 or np.asarray(v).max() > 255), None)
    if bad is not None:
        raise ValueError(
            f"dataset {name!r}: image {bad} of column {column!r} has values outside 0…255 "
            f"([{np.asarray(values[bad]).min()}, {np.asarray(values[bad]).max()}])"
        )
    values = [np.asarray(v).astype(np.uint8) for v in values]
    first = values[0]
    if shape is None:
        shape = D._to_array(first).shape  # the first image's own channels and (shorter) side
    channels, resolution = int(shape[0]), int(min(shape[1:]))
    images = torch.stack([D.preprocess_image(v, resolution, channels, center_crop=True) for v in values])
    # resizing and channel conversion leave the 8-bit grid: round back to it (what saving the images as PNG does)
    images = torch.round((images + 1.0) * 127.5).clamp_(0, 255) / 127.5 - 1.0
    return images, 256
