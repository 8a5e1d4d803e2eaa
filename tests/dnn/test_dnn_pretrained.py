# SPDX-License-Identifier: MIT
"""Shipped weights and Torch Hub: offline, small, at least 95 % accurate on digits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchfault.dnn as dnn

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_shipped_weights_small_and_accurate(name: str, digits_test) -> None:
    path = dnn.pretrained_path(name, "digits")
    assert path.stat().st_size < 1_000_000
    assert path.read_bytes().startswith(b"\xfd7zXZ\x00")  # lzma (xz)
    payload = dnn.load_checkpoint(path)
    assert payload["model"] == name and payload["dataset"] == "digits"
    model = dnn.create_model(name, dataset="digits", pretrained=True)
    assert not model.training
    result = dnn.evaluate(model, digits_test)
    assert result["n"] == 360
    assert result["acc"] >= 0.95
    # the accuracy recorded at export time is the one we measure now
    assert result["acc"] == pytest.approx(payload["metrics"]["test_acc"], abs=1e-6)


@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_shipped_weights_were_trained_by_the_example_config(name: str) -> None:
    """The config stored in each shipped weights file is the one its example YAML gives."""
    from torchfault.config import from_dict, load_yaml
    from torchfault.dnn._training import _recipe

    data = load_yaml(REPO / "examples" / f"train_{name}_digits.yaml")
    shipped = dnn.pretrained_path(name, "digits")
    assert (REPO / data["export"]).resolve() == shipped.resolve()
    expected = _recipe(from_dict(dnn.TrainConfig, data))  # what an export embeds, key order too
    stored = dnn.load_checkpoint(shipped)["config"]
    assert list(stored) == list(expected)
    # the stored (format 1, flat keys) config still loads, to the example's config
    with pytest.warns(DeprecationWarning) as warned:
        again = from_dict(dnn.TrainConfig, stored)
    assert any("write data.dataset" in str(w.message) for w in warned)
    example = from_dict(dnn.TrainConfig, data)
    assert (again.model, again.data) == (example.model, example.data)
    for cfg in (expected, stored):
        for key in ("out_dir", "export", "name"):  # where the run went: not stored
            cfg.pop(key, None)
        cfg["trainer"].pop("enable_progress_bar")  # display only
    assert stored == expected
    # and, spelled out, the fields the YAML file sets
    flat = {"model": data["model"]["name"], "pretrained": data["model"]["pretrained"]}
    flat["dataset"] = data["data"]["dataset"]  # the model/data sections, as format 1 says them
    for key, value in {**data, **flat}.items():
        if key in ("out_dir", "export", "data"):
            continue
        if isinstance(value, dict):
            assert {k: stored[key][k] for k in value} == value, key
        else:
            assert stored[key] == value, key


@pytest.mark.parametrize("entry", ["lenet_digits", "mlp_digits"])
def test_hub_entry_points_offline(entry: str, digits_test, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached beforehand
    model = torch.hub.load(str(REPO), entry, source="local", pretrained=True)
    assert dnn.evaluate(model, digits_test)["acc"] >= 0.95
    fresh = torch.hub.load(str(REPO), entry, source="local", pretrained=False)
    assert not torch.equal(next(fresh.parameters()), next(model.parameters()))


def test_hubconf_dependencies() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.dependencies == ["torch"]


def test_core_works_without_lightning() -> None:
    """torchfault.dnn, the zoo, digits and checkpoints must not import Lightning."""
    code = (
        "import sys\n"
        "import torchfault.dnn as dnn\n"
        "m = dnn.create_model('lenet', dataset='digits', pretrained=True)\n"
        "ds = dnn.create_dataset('digits', split='test')\n"
        "dnn.load_checkpoint(dnn.pretrained_path('mlp', 'digits'))\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hubconf_without_installed_torchfault(tmp_path) -> None:
    """hubconf.py puts the checkout's src/ on sys.path when torchfault is not importable."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torchfault' and not any('src' in p for p in sys.path[:1]):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        f"m = torch.hub.load({str(REPO)!r}, 'lenet_digits', source='local')\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LeNet" in out.stdout


@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_export_of_the_example_config_is_the_shipped_file_byte_for_byte(name, tmp_path) -> None:
    """What ``train`` exports for the example YAML (in the model:/data: vocabulary), given the
    shipped weights and metrics, is the shipped file byte for byte: the embedded config kept its
    format (training itself is bit-reproducible: test_seeded_runs_are_bit_identical)."""
    from torchfault.config import from_dict, load_yaml
    from torchfault.dnn._training import _export

    shipped = dnn.pretrained_path(name, "digits")
    payload = dnn.load_checkpoint(shipped)
    if payload["torch_version"] != str(torch.__version__):
        pytest.skip(f"shipped with torch {payload['torch_version']}, this is {torch.__version__}")
    cfg = from_dict(dnn.TrainConfig, load_yaml(REPO / "examples" / f"train_{name}_digits.yaml"))
    # display only (see above): the shipped runs had no terminal
    cfg.trainer.enable_progress_bar = payload["config"]["trainer"]["enable_progress_bar"]
    out = tmp_path / "w.pt.xz"
    _export(dnn.create_model(name, pretrained=True), cfg, payload["metrics"], out)
    assert out.read_bytes() == shipped.read_bytes()
