"""Any ``root/train/<class>/*.jpg`` tree (ImageNet layout), read with torchvision's ImageFolder."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from . import register_dataset
from .base import DatasetSpec, find_dir

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = {"train": ("train",), "val": ("val",), "test": ("val", "test")}  # ImageNet ships "val" as its test set


def _split_dir(root: str | None, split: str) -> Path:
    if split not in SPLITS:
        raise ConfigError(f"imagefolder has splits {', '.join(SPLITS)}, not {split!r}")
    base = find_dir("imagefolder", root, "train")
    for name in SPLITS[split]:
        if (base / name).is_dir():
            return base / name
    raise DataError(f"imagefolder directory {base / SPLITS[split][-1]} is missing: pass --data-dir DIR with "
                    f"DIR/{'/'.join(SPLITS[split])}/<class>/<image> inside")


def _transforms():
    try:
        from torchvision import transforms as T
    except ImportError:
        raise DataError("the imagefolder dataset needs torchvision: pip install torchvision") from None
    return T


def load(root: str | None, split: str, augment: bool) -> Dataset:
    directory = _split_dir(root, split)
    T = _transforms()
    from torchvision.datasets import ImageFolder
    crop = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if augment else [T.Resize(256), T.CenterCrop(224)]
    try:
        data = ImageFolder(str(directory), transform=T.Compose([*crop, T.ToTensor(), T.Normalize(MEAN, STD)]))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot read images under {directory}: {e}") from None
    data.num_classes, data.in_channels = len(data.classes), 3
    return data


def count_classes(root: str | None) -> int:
    """Class folders in the training split, without listing every image."""
    return sum(d.is_dir() for d in _split_dir(root, "train").iterdir())


register_dataset("imagefolder")(DatasetSpec(load, in_channels=3, num_classes=count_classes, image_size=224,
                                            mean=MEAN, std=STD))
