"""Seeded random images whose class is a fixed per-class pattern plus noise: learnable in a few steps,
so tests and demos can train and evaluate without any files.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from . import register_dataset
from .base import DatasetSpec, TensorImages

MEAN, STD = (0.5,), (0.25,)
LENGTHS = {"train": 512, "test": 256}
SAMPLE_SEEDS = {"train": 1, "test": 2}


def synthetic(size: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, length: int = 512,
              seed: int = 0, sample_seed: int = 1) -> TensorImages:
    """Class patterns depend on ``seed`` only, samples on ``sample_seed``: splits share patterns, not images."""
    patterns = torch.randn(num_classes, *size, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(sample_seed)
    labels = torch.arange(length) % num_classes
    labels = labels[torch.randperm(length, generator=gen)]
    pixels = 0.5 + 0.2 * patterns[labels] + 0.15 * torch.randn(length, *size, generator=gen)
    images = pixels.clamp(0, 1).mul(255).round().to(torch.uint8)
    mean, std = MEAN * size[0], STD * size[0]
    return TensorImages(images, labels, num_classes, mean, std)


def load(root: str | None, split: str, augment: bool) -> TensorImages:
    """``root`` and ``augment`` are ignored: nothing is read, and the patterns are not flip-invariant."""
    if split not in LENGTHS:
        raise ConfigError(f"synthetic has splits 'train' and 'test', not {split!r}")
    return synthetic(length=LENGTHS[split], sample_seed=SAMPLE_SEEDS[split])


register_dataset("synthetic")(DatasetSpec(load, in_channels=1, num_classes=10, image_size=28, mean=MEAN, std=STD))
