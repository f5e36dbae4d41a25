"""What every dataset shares: its static description, where its files are, and an in-memory image set."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

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


def generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


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

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` as one batch on ``device``, augmented there with ``generator``.

        The training loop's fast path: the uint8 images move to ``device`` once and each batch is a
        gather plus a few tensor ops, so small models on a GPU are not starved by a Python loader.
        """
        images, labels = self._on(torch.device(device))
        idx = indices.to(images.device)
        x = images[idx].float().div_(255)
        n, c, h, w = x.shape
        if self.pad:
            shift = torch.randint(0, 2 * self.pad + 1, (2, n, 1), generator=generator, device=generator_device(generator))
            rows = (shift[0] + torch.arange(h, device=shift.device)).to(x.device)[:, None, :, None]
            cols = (shift[1] + torch.arange(w, device=shift.device)).to(x.device)[:, None, None, :]
            x = F.pad(x, (self.pad,) * 4)[torch.arange(n, device=x.device)[:, None, None, None],
                                          torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            mirror = (torch.rand(n, generator=generator, device=generator_device(generator)) < 0.5).to(x.device)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean) / std, labels[idx]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels on ``device``, copied there once."""
        cache = self.__dict__.setdefault("_resident", {})
        if device.type == "cpu":
            return self.images, self.labels
        if device not in cache:
            cache.clear()
            cache[device] = (self.images.to(device), self.labels.to(device))
        return cache[device]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255)
        if self.pad:
            h, w = x.shape[1:]
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = F.pad(x, (self.pad,) * 4)[:, dy:dy + h, dx:dx + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]


def in_memory(data: Dataset) -> tuple[TensorImages, torch.Tensor | None] | None:
    """(image set, index map or None) when ``data`` is a TensorImages or a Subset of one, else None."""
    if isinstance(data, TensorImages):
        return data, None
    if isinstance(data, Subset):
        inner = in_memory(data.dataset)
        if inner is not None:
            base, mapping = inner
            idx = torch.as_tensor(data.indices)
            return base, idx if mapping is None else mapping[idx]
    return None


def batches_in_order(data: Dataset, batch_size: int, device: torch.device):
    """Batches in index order (evaluation); in-memory sets skip the per-item loader."""
    resident = in_memory(data)
    if resident is None:
        from torch.utils.data import DataLoader
        for x, y in DataLoader(data, batch_size=batch_size):
            yield x.to(device), y.to(device)
        return
    images, mapping = resident
    for b in torch.arange(len(data)).split(batch_size):
        yield images.batch(b if mapping is None else mapping[b], None, device)
