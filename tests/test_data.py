"""Datasets from local files: Fashion-MNIST, CIFAR-10 batches, ImageFolder, synthetic; splits and loaders."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from prunekit import ConfigError, DataError
from prunekit.data import dataset_info, holdout_split, load_dataset, make_loader
from prunekit.data.fmnist import FILES
from tests.conftest import needs_fmnist


@needs_fmnist
def test_fmnist_loads_and_normalizes():
    train, test = load_dataset("fmnist", split="train"), load_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert (train.num_classes, train.in_channels) == (10, 1)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    batch = torch.stack([test[i][0] for i in range(2000)])
    assert abs(batch.mean()) < 0.05 and abs(batch.std() - 1) < 0.05
    assert batch.min() >= (0 - 0.2860) / 0.3530 - 1e-6 and batch.max() <= (1 - 0.2860) / 0.3530 + 1e-6
    assert sorted(test.labels.unique().tolist()) == list(range(10))


@needs_fmnist
def test_fmnist_augmentation_keeps_shape_and_varies():
    plain, aug = load_dataset("fmnist", split="test"), load_dataset("fmnist", split="test", augment=True)
    torch.manual_seed(0)
    views = torch.stack([aug[0][0] for _ in range(8)])
    assert views.shape == (8, 1, 28, 28)
    assert any(not torch.equal(v, plain[0][0]) for v in views)


def _write_idx(path, array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fmnist(directory, n=20):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, (images, labels) in FILES.items():
        _write_idx(directory / images, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(directory / labels, rng.integers(0, 10, n))


@pytest.mark.parametrize("nested", [False, True])
def test_fmnist_from_env_dir_or_its_subdir(tmp_path, monkeypatch, nested):
    _fake_fmnist(tmp_path / "fashion-mnist" if nested else tmp_path)
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    assert len(load_dataset("fmnist", split="test")) == 20


def test_explicit_root_beats_env(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path / "a", n=5)
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "missing"))
    assert len(load_dataset("fmnist", root=str(tmp_path / "a"))) == 5


def test_fmnist_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz") as err:
        load_dataset("fmnist", root=str(tmp_path))
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["not gzip", "truncated", "bad magic"])
def test_fmnist_corrupt_file_names_it(tmp_path, damage):
    _fake_fmnist(tmp_path)
    bad = tmp_path / FILES["train"][0]
    if damage == "not gzip":
        bad.write_bytes(b"this is not a gzip file")
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-100])
    else:
        _write_idx(bad, np.zeros((20, 28, 28)), magic_type=0x0D)
    with pytest.raises(DataError, match=f"{bad.name}.*corrupt"):
        load_dataset("fmnist", root=str(tmp_path))


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match="unknown dataset.*fmnist"):
        load_dataset("mnist99")
    with pytest.raises(ConfigError, match="'train' and 'test'"):
        load_dataset("synthetic", split="validation")


def _fake_cifar(directory, n=8, protocol=2):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_from_python_batches(tmp_path, protocol):
    _fake_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_dataset("cifar10", root=str(tmp_path), split="train", augment=True)
    test = load_dataset("cifar10", root=str(tmp_path / "cifar-10-batches-py"), split="test")
    assert (len(train), len(test)) == (40, 8)
    assert (train.num_classes, train.in_channels) == (10, 3)
    x, y = train[3]
    assert x.shape == (3, 32, 32) and y.dtype == torch.int64


def test_cifar10_refuses_code_in_pickles(tmp_path):
    _fake_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": print, b"labels": []}, f)  # a pickle that would import a callable
    with pytest.raises(DataError, match="test_batch.*corrupt"):
        load_dataset("cifar10", root=str(tmp_path), split="test")


def test_cifar10_needs_a_directory(monkeypatch):
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")


def test_imagefolder(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / split / cls / "a.png")
    data = load_dataset("imagefolder", root=str(tmp_path), split="test")
    assert (len(data), data.num_classes) == (3, 3)
    assert data[0][0].shape == (3, 224, 224)
    assert dataset_info("imagefolder", root=str(tmp_path))["num_classes"] == 3
    with pytest.raises(DataError, match="missing"):
        load_dataset("imagefolder", root=str(tmp_path / "nowhere"))


def test_dataset_info():
    assert dataset_info("fmnist") == {"in_channels": 1, "num_classes": 10, "image_size": 28,
                                      "mean": (0.2860,), "std": (0.3530,)}
    assert dataset_info("cifar10")["in_channels"] == 3


def test_synthetic_is_deterministic_and_learnable():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    test = load_dataset("synthetic", split="test")
    assert (len(a), len(test)) == (512, 256) and not torch.equal(a.images[:256], test.images)
    # the nearest class mean of the training set classifies the test set: there is a signal to learn
    x = torch.stack([a[i][0] for i in range(len(a))]).flatten(1)
    means = torch.stack([x[a.labels == c].mean(0) for c in range(10)])
    xt = torch.stack([test[i][0] for i in range(len(test))]).flatten(1)
    assert (torch.cdist(xt, means).argmin(1) == test.labels).float().mean() > 0.9


def test_holdout_split_is_deterministic_and_disjoint():
    data = load_dataset("synthetic")
    rest, held = holdout_split(data, 0.1, seed=3)
    again, held_again = holdout_split(data, 0.1, seed=3)
    assert rest.indices == again.indices and held.indices == held_again.indices
    assert len(held) == 51 and len(rest) == 461
    assert not set(rest.indices) & set(held.indices) and set(rest.indices) | set(held.indices) == set(range(512))
    assert holdout_split(data, 0.1, seed=4)[1].indices != held.indices
    with pytest.raises(ConfigError, match="between 0 and 1"):
        holdout_split(data, 1.5)


def test_make_loader_is_seeded():
    data = load_dataset("synthetic")
    first = [y for _, y in make_loader(data, 64, shuffle=True, seed=1)]
    second = [y for _, y in make_loader(data, 64, shuffle=True, seed=1)]
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    assert not torch.equal(first[0], next(iter(make_loader(data, 64, shuffle=True, seed=2)))[1])
    with pytest.raises(ConfigError):
        make_loader(data, 0, shuffle=False)
