"""CIFAR-10 from the python batches (``cifar-10-python.tar.gz`` unpacked).

The batches are pickles: only local files the user points at are read, and the unpickler accepts
nothing but the numpy arrays they contain, so a tampered file cannot run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from . import register_dataset
from .base import DatasetSpec, TensorImages, find_dir

# The statistics HRank and CHIP trained with, so their CIFAR checkpoints see the inputs they expect.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 store array bytes through it


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 3 x 32 x 32, int64 labels) from one batch file."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 file {path} is missing: pass --data-dir (or set PRUNEKIT_DATA) to the unpacked "
                        "cifar-10-batches-py directory")
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # any unpickling or shape failure means the same thing to the user
        raise DataError(f"CIFAR-10 file {path} is corrupt ({type(e).__name__}: {e}); re-extract it") from None
    if len(images) != len(labels) or labels.min(initial=0) < 0 or labels.max(initial=0) >= 10:
        raise DataError(f"CIFAR-10 file {path} is corrupt ({len(images)} images, {len(labels)} labels); re-extract it")
    return images, labels


def load(root: str | None, split: str, augment: bool) -> TensorImages:
    if split not in FILES:
        raise ConfigError(f"CIFAR-10 has splits 'train' and 'test', not {split!r}")
    directory = find_dir("cifar10", root, FILES[split][0], "cifar-10-batches-py")
    images, labels = zip(*(read_batch(directory / name) for name in FILES[split]))
    return TensorImages(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                        10, MEAN, STD, pad=4 if augment else 0, flip=augment)


register_dataset("cifar10")(DatasetSpec(load, in_channels=3, num_classes=10, image_size=32, mean=MEAN, std=STD))
