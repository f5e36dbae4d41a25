"""Fashion-MNIST from its IDX files, e.g. Debian's ``dataset-fashion-mnist`` package."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from . import register_dataset
from .base import DatasetSpec, TensorImages, find_dir

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = (0.2860,), (0.3530,)
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IDX_UBYTE = 0x08  # IDX type code for unsigned bytes


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes, with its header checked so a truncated download cannot pass silently."""
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file {path} is missing: apt-get install -y dataset-fashion-mnist, "
                        "or point --data-dir/PRUNEKIT_DATA at a directory with the IDX .gz files")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"Fashion-MNIST file {path} is corrupt ({e}); reinstall or re-copy it") from None
    header = 4 * (1 + ndim)
    if len(raw) < header or raw[:4] != bytes([0, 0, IDX_UBYTE, ndim]):
        raise DataError(f"Fashion-MNIST file {path} is corrupt (not an IDX file of {ndim}-d bytes); reinstall or re-copy it")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"Fashion-MNIST file {path} is corrupt (size does not match its header {dims}); "
                        "reinstall or re-copy it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load(root: str | None, split: str, augment: bool) -> TensorImages:
    if split not in FILES:
        raise ConfigError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    image_file, label_file = FILES[split]
    directory = find_dir("fmnist", root, image_file, "fashion-mnist", DEFAULT_DIR)
    images = read_idx(directory / image_file, 3)
    labels = read_idx(directory / label_file, 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) >= 10:
        raise DataError(f"Fashion-MNIST files in {directory} do not match: {images.shape} images, "
                        f"{len(labels)} labels in 0..{labels.max(initial=0)}; reinstall or re-copy them")
    return TensorImages(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        10, MEAN, STD, pad=2 if augment else 0, flip=augment)


SPEC = DatasetSpec(load, in_channels=1, num_classes=10, image_size=28, mean=MEAN, std=STD)
register_dataset("fmnist")(SPEC)
register_dataset("fashion-mnist")(SPEC)
