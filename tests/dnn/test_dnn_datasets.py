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
