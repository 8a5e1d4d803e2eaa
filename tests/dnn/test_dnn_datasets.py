# SPDX-License-Identifier: MIT
"""Datasets: digits splits, normalisation, synthetic data, wrappers, torchvision errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

import torchfault.dnn as dnn
from torchfault.errors import TorchFaultError


def _rows(ds) -> set[bytes]:
    return {x.numpy().tobytes() + bytes([y]) for x, y in ds}


def test_digits_splits_fixed_disjoint_and_complete() -> None:
    parts = {s: dnn.create_dataset("digits", split=s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1257, 180, 360]
    assert len(parts["test"]) >= 300
    full = dnn.create_dataset("digits", split="all")
    assert len(full) == 1797
    # same split every time, from the seed
    again = dnn.create_dataset("digits", split="test")
    assert torch.equal(again.inputs, parts["test"].inputs)
    assert torch.equal(again.targets, parts["test"].targets)
    other = dnn.create_dataset("digits", split="test", split_seed=1)
    assert not torch.equal(other.targets, parts["test"].targets)
    # disjoint, and together all the images (compared as multisets of (image, label) pairs)
    sizes = sum(len(p) for p in parts.values())
    assert sizes == len(full)
    union = set().union(*(_rows(p) for p in parts.values()))
    assert union == _rows(full)
    # stratified: every class appears in the test split 35 or 36 times
    counts = torch.bincount(parts["test"].targets, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37


def test_digits_normalisation_matches_sklearn() -> None:
    raw = load_digits()
    full = dnn.create_dataset("digits", split="all")
    expected = (raw.images[:, None] / 16.0 - dnn._datasets.DIGITS_MEAN) / dnn._datasets.DIGITS_STD
    np.testing.assert_allclose(full.inputs.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert full.targets.tolist() == raw.target.tolist()
    assert abs(float(full.inputs.mean())) < 1e-4 and abs(float(full.inputs.std()) - 1) < 1e-3
    plain = dnn.create_dataset("digits", split="all", normalize=False)
    assert float(plain.inputs.min()) == 0.0 and float(plain.inputs.max()) == 1.0


def test_items_are_tensor_int_pairs() -> None:
    for name in ("digits", "synthetic"):
        x, y = dnn.create_dataset(name)[0]
        assert isinstance(x, torch.Tensor) and isinstance(y, int)
        assert tuple(x.shape) == dnn.dataset_info(name)["input_shape"]


def test_synthetic() -> None:
    ds = dnn.create_dataset("synthetic", size=50, input_shape=(3, 5), num_classes=4, seed=7)
    assert len(ds) == 50 and ds.input_shape == (3, 5)
    assert set(ds.targets.tolist()) <= {0, 1, 2, 3}
    same = dnn.create_dataset("synthetic", size=50, input_shape=(3, 5), num_classes=4, seed=7)
    assert torch.equal(ds.inputs, same.inputs)
    train = dnn.create_dataset("synthetic", split="train", size=50, input_shape=(3, 5), seed=7)
    assert not torch.equal(train.inputs, ds.inputs)
    with pytest.raises(TorchFaultError, match="size and num_classes"):
        dnn.create_dataset("synthetic", size=0)


def test_wrap_dataset() -> None:
    ds = dnn.wrap_dataset(TensorDataset(torch.ones(6, 2, 3), torch.arange(6)), num_classes=6)
    x, y = ds[5]
    assert y == 5 and isinstance(y, int) and ds.input_shape == (2, 3) and len(ds) == 6
    with pytest.raises(TorchFaultError, match="map-style"):
        dnn.wrap_dataset(iter([]))


def test_errors() -> None:
    with pytest.raises(TorchFaultError, match="Did you mean 'digits'"):
        dnn.create_dataset("digitz")
    with pytest.raises(TorchFaultError, match="unknown split 'tset'.*Did you mean 'test'"):
        dnn.create_dataset("digits", split="tset")
    with pytest.raises(TorchFaultError, match="bad option"):
        dnn.create_dataset("digits", sizee=3)


def test_torchvision_dataset_never_downloads(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(TorchFaultError) as err:
        dnn.create_dataset("mnist", root=str(missing))
    msg = str(err.value)
    # either torchvision is missing, or the directory is, and the error says where it looked
    assert "torchvision" in msg or str(missing) in msg
    assert not missing.exists()


def test_list_datasets() -> None:
    names = dnn.list_datasets()
    assert {"digits", "synthetic", "mnist", "cifar10"} <= set(names)
    assert dnn.is_dataset("digits") and not dnn.is_dataset("imagenet")
    assert dnn.dataset_info("cifar100")["num_classes"] == 100


class _FakeVisionSet(torch.utils.data.Dataset):
    """Stands in for a torchvision dataset class: train has 50 items, test 20; records calls."""

    calls: list[dict] = []
    classes = [str(i) for i in range(10)]

    def __init__(self, root, train=True, transform=None, download=False) -> None:
        type(self).calls.append({"root": root, "train": train, "download": download})
        self.train = train
        self.transform = transform
        self.n = 50 if train else 20

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        # the item says where it came from: train items are 0..49, test items 1000..1019
        value = float(i if self.train else 1000 + i)
        x = self.transform(value) if self.transform else value
        return x, i % 10


@pytest.fixture
def fake_torchvision(monkeypatch):
    import sys
    import types

    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = type("MNIST", (_FakeVisionSet,), {"calls": []})
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor = lambda: lambda v: torch.full((1, 28, 28), v)
    transforms.Normalize = lambda mean, std: lambda t: t
    transforms.Compose = lambda fs: lambda v: fs[1](fs[0](v))
    tv.datasets, tv.transforms = datasets, transforms
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    monkeypatch.delenv("TORCHFAULT_DATA", raising=False)
    return datasets.MNIST


def test_torchvision_wrapper_missing_folder(fake_torchvision, tmp_path, monkeypatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(TorchFaultError, match="no data directory") as err:
        dnn.create_dataset("mnist", root=str(missing))
    assert str(missing) in str(err.value) and "root was given" in str(err.value)
    monkeypatch.setenv("TORCHFAULT_DATA", str(tmp_path / "env"))
    with pytest.raises(TorchFaultError, match="TORCHFAULT_DATA") as err:
        dnn.create_dataset("mnist", split="train")
    assert str(tmp_path / "env") in str(err.value)
    assert fake_torchvision.calls == [] and not missing.exists()


def test_torchvision_wrapper_splits(fake_torchvision, tmp_path) -> None:
    def values(ds) -> list[int]:
        return [int(ds[i][0][0, 0, 0]) for i in range(len(ds))]

    parts = {
        s: dnn.create_dataset("mnist", split=s, root=str(tmp_path))
        for s in ("train", "val", "test", "all")
    }
    assert {s: len(d) for s, d in parts.items()} == {"train": 45, "val": 5, "test": 20, "all": 70}
    assert sorted(values(parts["train"]) + values(parts["val"])) == list(range(50))
    assert values(parts["test"]) == [1000 + i for i in range(20)]
    # all: the training set followed by the test set
    assert values(parts["all"]) == list(range(50)) + [1000 + i for i in range(20)]
    x, y = parts["all"][60]
    assert tuple(x.shape) == (1, 28, 28) and y == 0 and parts["all"].num_classes == 10
    seeded = dnn.create_dataset("mnist", split="val", root=str(tmp_path), split_seed=0)
    assert values(seeded) == values(parts["val"])
    calls = fake_torchvision.calls
    assert calls and all(c["root"] == str(tmp_path) and c["download"] is False for c in calls)
