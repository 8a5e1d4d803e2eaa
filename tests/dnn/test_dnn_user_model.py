# SPDX-License-Identifier: MIT
"""Models and datasets of your own (``path/to/file.py:function``) in the DNN jobs, loaded as
``torchfault campaign`` loads them and wrapped with ``wrap_model`` / ``wrap_dataset``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import torchfault.dnn as dnn
from torchfault.cli import main
from torchfault.errors import TorchFaultError

REPO = Path(__file__).resolve().parents[2]
MY_MODEL = f"{REPO / 'examples' / 'my_model.py'}:build"
TINYNET_PARAMS = (1 * 8 * 9 + 8) + (8 * 16 * 9 + 16) + (16 * 4 * 4 * 10 + 10)

DATA_FILE = '''
from torch.utils.data import TensorDataset

import torchfault.dnn as dnn


def load(split="test", limit=0):
    """The digits as a plain TensorDataset (no num_classes: taken from the labels)."""
    ds = dnn.create_dataset("digits", split=split)
    n = limit or len(ds)
    return TensorDataset(ds.inputs[:n], ds.targets[:n])


def not_a_model():
    return 42
'''


@pytest.fixture
def data_spec(tmp_path) -> str:
    path = tmp_path / "mydata.py"
    path.write_text(DATA_FILE)
    return f"{path}:load"


def test_create_model_from_a_factory_file() -> None:
    model = dnn.create_model(MY_MODEL, dataset="digits", seed=3)
    assert isinstance(model, dnn.WrappedModel) and type(model.model).__name__ == "TinyNet"
    assert model.input_shape == (1, 8, 8) and model.num_classes == 10
    assert model.dataset == "digits" and not model.training  # the factory's eval mode is kept
    assert tuple(model(model.example_inputs(3)).shape) == (3, 10)
    again = dnn.create_model(MY_MODEL, dataset="digits", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    with pytest.raises(TorchFaultError, match="no shipped weights"):
        dnn.create_model(MY_MODEL, dataset="digits", pretrained=True)
    with pytest.raises(TorchFaultError, match="bad option"):
        dnn.create_model(MY_MODEL, dataset="digits", width=3)


def test_summary_job_user_model(tmp_path, capsys) -> None:
    out = tmp_path / "s.json"
    assert main(["summary", MY_MODEL, "--json", str(out)]) == 0
    assert "MACs" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["total_params"] == TINYNET_PARAMS and data["input_shape"] == [1, 1, 8, 8]
    assert all(r["name"].startswith("model.") for r in data["rows"])


def test_train_test_prune_jobs_user_model(tmp_path, capsys) -> None:
    exported = tmp_path / "my.pt.xz"
    args = ["--trainer.max_epochs", "2", "--export", str(exported), "--out_dir", str(tmp_path)]
    assert main(["train", MY_MODEL, *args, "--trainer.enable_progress_bar", "false"]) == 0
    assert "test_acc" in capsys.readouterr().out
    # the run directory is named after the file and function, not the path
    assert (tmp_path / "my_model.build_digits" / "version_0" / "metrics.csv").is_file()
    payload = dnn.load_checkpoint(exported)
    assert payload["model"] == MY_MODEL and payload["metrics"]["test_acc"] > 0.5
    model = dnn.create_model(MY_MODEL, weights=exported)
    assert dnn.evaluate(model, dnn.create_dataset("digits"))["acc"] == pytest.approx(
        payload["metrics"]["test_acc"], abs=1e-6
    )
    # a state dict of the bare module (what the user's own code saves) loads too
    bare = tmp_path / "bare.pt"
    dnn.save_checkpoint(model.model, bare, compression="none")
    x = model.example_inputs(4)
    assert torch.equal(dnn.create_model(MY_MODEL, weights=bare)(x), model(x))

    assert (
        main(["test", MY_MODEL, "--model.checkpoint", str(exported), "--out_dir", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert f"{payload['metrics']['test_acc']:.4f}" in out
    # prune starts from the shipped weights by default: a factory of your own has none and
    # brings its own weights, so that default does not apply to it
    pruned = tmp_path / "pruned.pt.xz"
    assert main(["prune", MY_MODEL, "--model.checkpoint", str(exported), "--out", str(pruned)]) == 0
    assert main(["prune", MY_MODEL, "--out", ""]) == 0
    capsys.readouterr()
    sparse = dnn.create_model(MY_MODEL, weights=pruned)
    zeros = sum(int((p == 0).sum()) for n, p in sparse.named_parameters() if n.endswith("weight"))
    assert zeros > 0


def test_user_dataset_factory(data_spec, tmp_path, capsys) -> None:
    train = dnn.create_dataset(data_spec, split="train")
    assert isinstance(train, dnn.WrappedDataset) and len(train) == 1257
    x, y = train[0]
    assert tuple(x.shape) == (1, 8, 8) and isinstance(y, int)
    assert len(dnn.create_dataset(data_spec, split="val", limit=7)) == 7
    info = dnn.dataset_info(data_spec)
    assert info["input_shape"] == (1, 8, 8) and info["num_classes"] == 10
    lenet = dnn.create_model("lenet", dataset=data_spec)
    assert lenet.input_shape == (1, 8, 8) and lenet.fc3.out_features == 10
    assert main(["summary", "lenet", "--data.dataset", data_spec]) == 0
    assert "19,754" in capsys.readouterr().out
    args = [
        "train",
        MY_MODEL,
        "--data.dataset",
        data_spec,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "5",
        "--out_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert main(args) == 0
    assert "test_acc" in capsys.readouterr().out
    assert (tmp_path / "my_model.build_mydata.load" / "version_0").is_dir()


def test_user_model_errors(data_spec, tmp_path, capsys) -> None:
    assert main(["summary", str(tmp_path / "absent.py:build")]) == 2
    assert "model: no such file" in capsys.readouterr().err
    assert main(["summary", MY_MODEL.replace(":build", ":biuld")]) == 2
    assert "Did you mean 'build'" in capsys.readouterr().err
    assert main(["train", "--model.name", "lenett"]) == 2
    assert "file.py:function" in capsys.readouterr().err
    with pytest.raises(TorchFaultError, match="returned int, not an nn.Module"):
        dnn.create_model(data_spec.replace(":load", ":not_a_model"))
    with pytest.raises(TorchFaultError, match="dataset: no such file"):
        dnn.create_dataset(str(tmp_path / "absent.py:load"))
