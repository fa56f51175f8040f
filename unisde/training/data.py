"""Image data through 🤗 datasets: a Hub dataset, a local imagefolder, parquet/arrow files, a dataset saved with
``save_to_disk``, or the embedded default — scikit-learn's 8×8 handwritten digits (no network needed).

Every source becomes a ``datasets.Dataset`` with an image column; :func:`make_transform` turns its rows into
``pixel_values`` tensors of shape (C, R, R) in [−1, 1].
"""

from __future__ import annotations

import functools
import io
import os
from typing import Iterator, Sequence

import numpy as np
import torch

DIGITS = "digits"
"""Name of the embedded default dataset (``--dataset_name digits``)."""

DIGITS_LEVELS = 16
"""scikit-learn's digits take the integer values 0 … 16."""

IMAGE_COLUMN_GUESSES = ("image", "img", "images", "pixel_values", "picture")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def digits_array() -> np.ndarray:
    """The 1797 digits as float32 (N, 8, 8) scaled from 0 … 16 to [−1, 1] (x / 8 − 1)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    return images * (2.0 / DIGITS_LEVELS) - 1.0


@functools.lru_cache(maxsize=1)
def digits_dataset():
    """The digits as a ``datasets.Dataset`` with columns ``image`` (8×8 float32 array in [−1, 1], stored as a
    2-d array so no quantisation to 8-bit happens) and ``label``. Built once per process (cached); use
    ``with_transform`` rather than ``set_transform`` on it."""
    import datasets
    from sklearn.datasets import load_digits

    raw = load_digits()
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=(8, 8), dtype="float32"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    return datasets.Dataset.from_dict({"image": list(digits_array()), "label": raw.target.tolist()}, features=features)


def real_digits(resolution: int = 8) -> torch.Tensor:
    """All digits exactly as training sees them: (1797, 1, R, R) float32 in [−1, 1] (bilinear resize if R ≠ 8)."""
    x = torch.from_numpy(digits_array())[:, None]
    return _resize(x, resolution) if resolution != 8 else x


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    train_files: Sequence[str] | None = None,
    split: str = "train",
    cache_dir: str | None = None,
):
    """Load the training split from exactly one source (``digits`` when none is given).

    ``dataset_name``: a Hub dataset id or a local dataset script/folder accepted by ``datasets.load_dataset``
    (``"digits"`` selects the embedded digits). ``train_data_dir``: a folder of images (``imagefolder``,
    class sub-folders allowed) or a dataset saved with ``Dataset.save_to_disk``. ``train_files``: parquet,
    arrow, csv or json files (one format).
    """
    import datasets

    given = [
        name
        for name, v in (
            ("--dataset_name", dataset_name),
            ("--train_data_dir", train_data_dir),
            ("--train_files", train_files),
        )
        if v
    ]
    if len(given) > 1:
        raise ValueError(f"give one data source, got {' and '.join(given)}")
    if not given or dataset_name == DIGITS:
        return digits_dataset()
    if train_data_dir:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"--train_data_dir {train_data_dir!r} is not a directory")
        if os.path.exists(os.path.join(train_data_dir, "dataset_info.json")) or os.path.exists(
            os.path.join(train_data_dir, "state.json")
        ):
            ds = datasets.load_from_disk(train_data_dir)
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return datasets.load_dataset("imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir)
    if train_files:
        files = [str(f) for f in train_files]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise ValueError(f"--train_files: no such file(s): {', '.join(missing)}")
        exts = {os.path.splitext(f)[1].lower() for f in files}
        if len(exts) != 1 or next(iter(exts)) not in _FILE_BUILDERS:
            raise ValueError(
                f"--train_files must share one of the extensions {sorted(_FILE_BUILDERS)}; got {sorted(exts)}"
            )
        return datasets.load_dataset(
            _FILE_BUILDERS[exts.pop()], data_files={split: files}, split=split, cache_dir=cache_dir
        )
    try:
        return datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)
    except FileNotFoundError as exc:  # datasets' DatasetNotFoundError too: a user error, not a traceback
        raise ValueError(
            f"--dataset_name {dataset_name!r}: no such dataset ({exc}); give a Hub dataset id, a local dataset "
            f"folder or script, --train_data_dir for a folder of images, or --train_files"
        ) from exc


def find_image_column(dataset, image_column: str | None = None) -> str:
    """The name of the image column: ``image_column`` if given, else the first ``Image``-typed column, else a
    conventional name (image, img, …). ValueError naming the columns found otherwise."""
    import datasets

    columns = list(dataset.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(
                f"--image_column {image_column!r} is not a column of the dataset; columns found: {columns}"
            )
        return image_column
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in IMAGE_COLUMN_GUESSES:
        if name in columns:
            return name
    raise ValueError(
        "the dataset has no image column (looked for an Image feature or one of "
        f"{list(IMAGE_COLUMN_GUESSES)}); "
        f"columns found: {columns}. Name it with --image_column."
    )


def _to_array(value) -> np.ndarray:
    """One image as a float32 (C, H, W) array in [−1, 1] (PIL images and uint8 arrays are 0 … 255)."""
    from PIL import Image

    if isinstance(value, dict) and value.get("bytes") is not None:
        value = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        value = Image.open(value["path"])
    if isinstance(value, Image.Image):
        if value.mode not in ("L", "RGB", "RGBA"):
            value = value.convert("RGBA" if "A" in value.getbands() else "RGB")
        arr = np.asarray(value, dtype=np.float32) / 127.5 - 1.0
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    arr = np.asarray(value)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 127.5 - 1.0
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        return arr.transpose(2, 0, 1)  # H, W, C → C, H, W
    if arr.ndim != 3:
        raise ValueError(f"an image must be 2-d (H, W) or 3-d (C, H, W / H, W, C); got shape {arr.shape}")
    return arr


def image_channels(dataset, image_column: str) -> int:
    """Number of channels of the first image of ``dataset`` (1 for L / 2-d arrays, 3 for RGB, 4 for RGBA)."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    return int(_to_array(dataset[0][image_column]).shape[0])


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    c = x.shape[0]
    if c == channels:
        return x
    if channels == 1:  # ITU-R 601 luma, PIL's "L" conversion
        w = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
        return (x[:3] * w).sum(0, keepdim=True)
    if c == 1:
        return x.expand(channels, *x.shape[1:]).clone()
    if c == 4 and channels == 3:
        return x[:3]
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of (…, H, W) so that the shorter side is ``resolution`` (antialiased when shrinking)."""
    h, w = x.shape[-2:]
    if min(h, w) == resolution:
        return x
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    batched = x if x.ndim == 4 else x[None]
    out = torch.nn.functional.interpolate(batched, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    return out if x.ndim == 4 else out[0]


def preprocess_image(
    value,
    resolution: int,
    channels: int,
    center_crop: bool = True,
    random_flip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One image → float32 tensor (channels, resolution, resolution) in [−1, 1]: convert channels, resize the
    shorter side to ``resolution``, crop (centre or random), optionally flip horizontally."""
    x = torch.from_numpy(np.ascontiguousarray(_to_array(value)))
    x = _convert_channels(x, channels)
    x = _resize(x, resolution)
    h, w = x.shape[-2:]
    if center_crop or (h == resolution and w == resolution):
        top, left = (h - resolution) // 2, (w - resolution) // 2
    else:
        top = int(torch.randint(0, h - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - resolution + 1, (1,), generator=generator))
    x = x[:, top : top + resolution, left : left + resolution]
    if random_flip and bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    return x.clamp(-1.0, 1.0).contiguous()


def make_transform(
    image_column: str, resolution: int, channels: int, center_crop: bool = True, random_flip: bool = False
):
    """A ``Dataset.with_transform`` function producing ``{"pixel_values": [tensor (C, R, R)], …}`` (random crops
    and flips, if asked for, from the global RNG; training uses :class:`ImageDataset`, which does not)."""

    def transform(examples):
        return {
            "pixel_values": [
                preprocess_image(v, resolution, channels, center_crop, random_flip) for v in examples[image_column]
            ]
        }

    return transform


class ImageDataset(torch.utils.data.Dataset):
    """Training view of a ``datasets.Dataset``: item i → ``{"pixel_values": (C, R, R) tensor in [−1, 1]}``.

    Random crops and flips draw from a generator seeded by (seed, epoch, i), never from the global RNG, so the
    augmentation of every example is reproducible and a resumed run's noise stream is not shifted by data
    loading (which prefetches ahead of the training step). ``accelerate``'s prepared DataLoader calls
    :meth:`set_epoch`.
    """

    def __init__(
        self,
        dataset,
        image_column: str,
        resolution: int,
        channels: int,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
    ):
        # numpy formatting hands over arrays (decoded images, 2-d arrays) instead of nested Python lists
        self.dataset, self.image_column = dataset.with_format("numpy", columns=[image_column]), image_column
        self.resolution, self.channels = int(resolution), int(channels)
        self.center_crop, self.random_flip, self.seed, self.epoch = center_crop, random_flip, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _one(self, index: int, value) -> dict:
        gen = None
        if self.random_flip or not self.center_crop:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + int(index))
        return {
            "pixel_values": preprocess_image(
                value, self.resolution, self.channels, self.center_crop, self.random_flip, gen
            )
        }

    def __getitem__(self, index: int) -> dict:
        return self._one(index, self.dataset[int(index)][self.image_column])

    def __getitems__(self, indices) -> list:
        values = self.dataset[list(map(int, indices))][self.image_column]  # one batched Arrow read
        return [self._one(i, v) for i, v in zip(indices, values)]


def collate(examples) -> dict:
    pixels = torch.stack([e["pixel_values"] for e in examples])
    return {"pixel_values": pixels.to(memory_format=torch.contiguous_format)}


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation of range(n) fixed by (seed, epoch): the data order of any epoch is reproducible
    without saved RNG state, so a resumed run sees exactly the batches the interrupted run would have seen.
    ``accelerate`` calls :meth:`set_epoch` through its prepared DataLoader and shards the batches across ranks."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


__all__ = [
    "DIGITS",
    "digits_dataset",
    "digits_array",
    "real_digits",
    "load_image_dataset",
    "find_image_column",
    "image_channels",
    "preprocess_image",
    "make_transform",
    "ImageDataset",
    "collate",
    "EpochSampler",
]
