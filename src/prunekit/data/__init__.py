"""Datasets by name, read from local files only: nothing is ever downloaded.

Where the files are: the ``root`` argument (CLI ``--data-dir``), else $PRUNEKIT_DATA, else the
dataset's default directory (Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError
from ..registry import Registry

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

from . import cifar, fmnist, imagefolder, synthetic  # noqa: E402,F401  (registration)


def load_dataset(name: str, root: str | None = None, split: str = "train", augment: bool = False) -> Dataset:
    """Items are (float image C x H x W, normalized; int64 label)."""
    return DATASETS.get(name).load(root, split, augment)


def dataset_info(name: str, root: str | None = None) -> dict:
    """in_channels, num_classes, image_size, mean, std; ``root`` is read only when the files decide num_classes."""
    spec = DATASETS.get(name)
    classes = spec.num_classes(root) if callable(spec.num_classes) else spec.num_classes
    return {"in_channels": spec.in_channels, "num_classes": classes, "image_size": spec.image_size,
            "mean": spec.mean, "std": spec.std}


def list_datasets() -> list[str]:
    return DATASETS.names()


def holdout_split(dataset: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Subset, Subset]:
    """(rest, held out): a fixed part of the training set to score candidate widths on, never the test set.

    Depends only on ``len(dataset)``, ``fraction`` and ``seed``, so the same split of a copy loaded without
    augmentation gives the held-out images their evaluation transform.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(dataset)
    k = round(fraction * n)
    if not 0 < k < n:
        raise ConfigError(f"holdout fraction {fraction} of {n} items leaves one side empty; use a larger dataset")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[k:].sort().values.tolist()), Subset(dataset, order[:k].sort().values.tolist())


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """The shuffle order (and the workers' augmentation seeds) follow ``seed``."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)


__all__ = ["DATASETS", "dataset_info", "holdout_split", "list_datasets", "load_dataset", "make_loader",
           "register_dataset"]
