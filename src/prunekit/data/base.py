"""What every dataset shares: its static description, where its files are, and an in-memory image set."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    """Shape and normalization are known without reading files, so the CLI can size a model from the name."""

    load: Callable[[str | None, str, bool], Dataset]  # (root, split, augment)
    in_channels: int
    num_classes: int | Callable[[str | None], int]  # a function when only the files know (imagefolder)
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def find_dir(name: str, root: str | None, marker: str, subdir: str | None = None,
             default: str | None = None) -> Path:
    """``root`` > $PRUNEKIT_DATA > ``default``; the files may be in that directory or in its ``subdir``."""
    chosen = root or os.environ.get("PRUNEKIT_DATA") or default
    if chosen is None:
        raise DataError(f"dataset {name!r} has no default location: pass --data-dir DIR or set PRUNEKIT_DATA")
    base = Path(chosen).expanduser()
    if subdir and not (base / marker).exists() and (base / subdir / marker).exists():
        return base / subdir
    return base


class TensorImages(Dataset):
    """A whole split as one uint8 NCHW tensor: no per-item decoding, and augmentation is a few tensor ops.

    Augmentation (random translation by zero-padding and cropping, random horizontal flip) draws from
    torch's global RNG, which DataLoader workers seed per worker; seed it for repeatable epochs.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...], pad: int = 0, flip: bool = False):
        self.images, self.labels = images, labels.long()
        self.num_classes, self.in_channels = num_classes, images.shape[1]
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.pad, self.flip = pad, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255)
        if self.pad:
            h, w = x.shape[1:]
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = F.pad(x, (self.pad,) * 4)[:, dy:dy + h, dx:dx + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]
