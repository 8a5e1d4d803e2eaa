# SPDX-License-Identifier: MIT
"""``data.dataset: cifar10`` from a local folder, offline, in a campaign.

PyPI's torchvision cannot be installed beside this project's torch 2.13.0 CPU wheel, so a stand-in
``torchvision`` module reads CIFAR-10's real on-disk format (``cifar-10-batches-py``: pickled dicts
of ``b"data"`` uint8 rows of 3x32x32 and ``b"labels"``) as torchvision does, and refuses to
download. The test writes such a folder, runs a campaign on it through the command line and
checks the inputs against the pixels written, normalised with CIFAR-10's published statistics.
"""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from torchfault.cli import main
from torchfault.store import ResultStore

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 per-channel statistics, as published
STD = (0.2470, 0.2435, 0.2616)


def _write_cifar(root, n_test: int = 12, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = rng.integers(0, 256, size=(n_test, 3 * 32 * 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n_test)]
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": data, b"labels": labels}, fh)
    for k in range(1, 6):
        with open(folder / f"data_batch_{k}", "wb") as fh:
            pickle.dump({b"data": data[:2], b"labels": labels[:2]}, fh)
    names = [f"class{i}".encode() for i in range(10)]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names}, fh)
    return data, labels


class _CIFAR10(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's reading, without its download or integrity check."""

    calls: list[dict] = []

    def __init__(self, root, train=True, transform=None, download=False) -> None:
        type(self).calls.append({"root": root, "train": train, "download": download})
        if download:
            raise AssertionError("torchfault asked for a download")
        from pathlib import Path

        folder = Path(root) / "cifar-10-batches-py"
        files = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
        if not all((folder / f).is_file() for f in files):
            raise RuntimeError("Dataset not found or corrupted. You can use download=True")
        rows, self.targets = [], []
        for f in files:
            with open(folder / f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            rows.append(entry[b"data"] if b"data" in entry else entry["data"])
            self.targets += list(entry.get(b"labels", entry.get("labels", [])))
        self.data = np.vstack(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC
        self.classes = [f"class{i}" for i in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        img = self.data[i]
        return (self.transform(img) if self.transform else img), self.targets[i]


@pytest.fixture
def torchvision_standin(monkeypatch):
    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = type("CIFAR10", (_CIFAR10,), {"calls": []})
    transforms = types.ModuleType("torchvision.transforms")

    def to_tensor():
        return lambda img: (
            torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255
        )

    def normalize(mean, std):
        m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        return lambda t: (t - m) / s

    transforms.ToTensor, transforms.Normalize = to_tensor, normalize
    transforms.Compose = lambda fs: lambda v: fs[1](fs[0](v))
    tv.datasets, tv.transforms = datasets, transforms
    for name, mod in (("", tv), (".datasets", datasets), (".transforms", transforms)):
        monkeypatch.setitem(sys.modules, "torchvision" + name, mod)
    monkeypatch.delenv("TORCHFAULT_DATA", raising=False)
    return datasets.CIFAR10


def test_cifar10_campaign_from_a_local_folder(torchvision_standin, tmp_path, monkeypatch):
    data, labels = _write_cifar(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = [
        "campaign",
        "--name",
        "cifar",
        "--model.name",
        "resnet8",
        "--model.dataset",
        "cifar10",
        "--model.pretrained",
        "false",
        "--data.dataset",
        "cifar10",
        "--data.num_inputs",
        "6",
        "--sampler.n",
        "5",
        "--progress",
        "false",
        "--report",
        "false",
    ]
    # TORCHFAULT_DATA names the folder (data.kwargs.root does too; both tested)
    monkeypatch.setenv("TORCHFAULT_DATA", str(tmp_path / "data"))
    assert main(args) == 0
    assert (
        main([*args, "--name", "cifar_root", "--data.kwargs", f"{{root: {tmp_path / 'data'}}}"])
        == 0
    )
    calls = torchvision_standin.calls
    assert calls and all(c["download"] is False and c["train"] is False for c in calls)
    assert {c["root"] for c in calls} == {str(tmp_path / "data")}
    for name in ("cifar", "cifar_root"):
        with ResultStore(tmp_path / "runs" / name / "campaign.sqlite", mode="r") as store:
            golden = store.golden()
            assert len(store.runs()) == 5
        assert [golden[i].label for i in range(6)] == labels[:6]
    # the inputs are the written pixels, scaled to [0, 1] and normalised per channel
    from torchfault.campaign import CampaignConfig

    monkeypatch.setenv("TORCHFAULT_DATA", str(tmp_path / "data"))
    cfg = CampaignConfig(name="x")
    cfg.data.dataset, cfg.data.num_inputs = "cifar10", 6
    cfg.model.name, cfg.model.dataset, cfg.model.pretrained = "resnet8", "cifar10", False
    from torchfault.campaign._campaign import build_inputs

    inputs, ys = build_inputs(cfg)
    pixels = data[:6].reshape(6, 3, 32, 32).astype(np.float64) / 255
    expected = (pixels - np.array(MEAN).reshape(1, 3, 1, 1)) / np.array(STD).reshape(1, 3, 1, 1)
    assert np.allclose(inputs.numpy(), expected, atol=1e-5)
    assert ys.tolist() == labels[:6]


def test_missing_cifar_folder_names_it(torchvision_standin, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [
        "campaign",
        "--model.name",
        "resnet8",
        "--model.dataset",
        "cifar10",
        "--model.pretrained",
        "false",
        "--data.dataset",
        "cifar10",
        "--data.kwargs",
        f"{{root: {tmp_path / 'empty'}}}",
        "--out_dir",
        str(tmp_path / "r"),
        "--progress",
        "false",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "download=True" in err
    assert not (tmp_path / "r" / "campaign.sqlite").exists()
