# SPDX-License-Identifier: MIT
"""Lightning training: accuracy in a few epochs, bit-identical seeded runs, cross-validation,
compressed checkpoints, and the train / test jobs of the command line."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
import yaml

import torchfault.dnn as dnn
from torchfault.cli import main
from torchfault.errors import TorchFaultError

REPO = Path(__file__).resolve().parents[2]


def test_training_reaches_accuracy_in_few_epochs(fast_train_config, tmp_path) -> None:
    cfg = fast_train_config(tmp_path, model="mlp", epochs=4)
    deterministic = torch.are_deterministic_algorithms_enabled()
    result = dnn.train(cfg)
    # Trainer(deterministic=True) must not leave the process-wide setting changed
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert result.metrics["test_acc"] >= 0.93
    assert "best_val_acc" in result.metrics and "test_loss" in result.metrics
    assert not result.model.training
    # independent check of the reported test accuracy, outside Lightning
    ours = dnn.evaluate(result.model, dnn.create_dataset("digits", split="test"))
    assert ours["acc"] == pytest.approx(result.metrics["test_acc"], abs=1e-6)
    # logs: CSV metrics with one validation row per epoch, and saved hyperparameters
    run = Path(result.run_dir)
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    val_rows = [r for r in rows if r.get("val_acc")]
    assert len(val_rows) == 4
    hp = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hp["model_name"] == "mlp" and hp["lr"] == 1e-2
    # the checkpoint is lzma-compressed by the callback, and holds the hyperparameters
    best = Path(result.best_checkpoint)
    assert best.read_bytes().startswith(b"\xfd7zXZ\x00")
    ckpt = dnn.load_checkpoint(best)
    assert ckpt["hyper_parameters"]["model_name"] == "mlp"
    m = dnn.create_model("mlp", weights=best)
    x = m.example_inputs()
    assert torch.equal(m(x), result.model(x))


def test_seeded_runs_are_bit_identical(fast_train_config, tmp_path) -> None:
    def run(seed: int, sub: str) -> dict[str, torch.Tensor]:
        cfg = fast_train_config(tmp_path / sub, model="lenet", epochs=2, seed=seed, test=False)
        cfg.early_stopping.enabled = False
        return dnn.train(cfg).model.state_dict()

    a, b, c = run(3, "a"), run(3, "b"), run(4, "c")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_export_and_reload(fast_train_config, tmp_path) -> None:
    out = tmp_path / "w" / "mlp.pt.xz"
    cfg = fast_train_config(tmp_path, model="mlp", epochs=1, export=str(out))
    cfg.trainer.limit_train_batches = 5
    result = dnn.train(cfg)
    assert result.exported is not None and out.is_file()
    payload = dnn.load_checkpoint(out)
    assert payload["config"]["model"] == "mlp" and payload["metrics"] == result.metrics
    model = dnn.create_model("mlp", weights=out)
    x = model.example_inputs()
    assert torch.equal(model(x), result.model(x))


@pytest.mark.slow
def test_cross_validation_returns_k_results(fast_train_config, tmp_path) -> None:
    cfg = fast_train_config(tmp_path, model="mlp", epochs=1, cv=3)
    res = dnn.cross_validate(cfg)
    assert len(res.folds) == 3
    assert [int(f["fold"]) for f in res.folds] == [0, 1, 2]
    accs = [f["test_acc"] for f in res.folds]
    assert res.mean["test_acc"] == pytest.approx(sum(accs) / 3)
    mu = sum(accs) / 3
    sd = (sum((a - mu) ** 2 for a in accs) / 2) ** 0.5
    assert res.std["test_acc"] == pytest.approx(sd)
    assert all(a > 0.8 for a in accs)
    assert "test_acc" in str(res)


def test_train_job_with_yaml_and_overrides(fast_train_config, tmp_path, capsys) -> None:
    args = [
        "train",
        "--config",
        str(REPO / "examples" / "train_mlp_digits.yaml"),
        "--trainer.max_epochs",
        "2",
        "--out_dir",
        str(tmp_path),
        "--export",
        "null",
        "--trainer.limit_train_batches",
        "10",
        "--print_config",
    ]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 2 and printed["model"]["name"] == "mlp"
    assert printed["export"] is None
    assert main(args[:-1]) == 0
    out = capsys.readouterr().out
    assert "test_acc" in out
    assert (tmp_path / "mlp_digits" / "version_0" / "metrics.csv").is_file()


def test_train_job_cv_flag(fast_train_config, tmp_path, capsys) -> None:
    args = [
        "train",
        "mlp",
        "--cv",
        "2",
        "--trainer.max_epochs",
        "1",
        "--out_dir",
        str(tmp_path),
        "--trainer.limit_train_batches",
        "5",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert main([*args, "--export", str(tmp_path / "w.pt.xz")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "2-fold cross-validation" in out and "mean" in out and "std" in out
    # K folds give K models: --export is not written, and the user is told so
    assert "export=" in captured.err and "not written with --cv 2" in captured.err
    assert not (tmp_path / "w.pt.xz").exists()


def test_bad_config_values_name_the_field(capsys) -> None:
    assert main(["train", "--model.name", "lenett"]) == 2
    assert "Did you mean 'lenet'" in capsys.readouterr().err
    assert main(["train", "--trainer.max_epochs", "0"]) == 2
    assert "trainer.max_epochs" in capsys.readouterr().err
    assert main(["train", "--cv", "1"]) == 2
    assert "cv" in capsys.readouterr().err
    assert main(["train", "--optimizer.name", "adamm"]) == 2
    assert "optimizer.name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # these used to fail only mid-run (a traceback), or not at all
        ("--early_stopping.monitor=val_accc", "early_stopping.monitor.*Did you mean 'val_acc'"),
        ("--checkpoint.monitor=bogus", "checkpoint.monitor: 'bogus' is not a logged metric"),
        ("--trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be >= 0"),
        ("--optimizer.gamma=-0.5", "optimizer.gamma must be positive"),
        ("--trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1"),
        ("--trainer.accelerator=foo", "trainer.accelerator: .*'foo'"),
        ("--trainer.precision=bogus", "trainer.precision: .*'bogus'"),
        ("--data.kwargs={split_seed: x}", "split_seed must be a whole number"),
    ],
)
def test_bad_trainer_settings_name_the_field(override, expected, tmp_path, capsys) -> None:
    import re

    assert main(["train", "mlp", override, "--out_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_test_job_bad_accelerator_names_the_field(tmp_path, capsys) -> None:
    assert main(["test", "lenet", "--accelerator", "foo", "--out_dir", str(tmp_path)]) == 2
    assert "accelerator: " in capsys.readouterr().err


def test_train_and_test_on_synthetic_of_any_shape(tmp_path, capsys) -> None:
    """data.kwargs that set synthetic's input shape and class count configure the model
    of every job (it used to be built for 1x8x8 and 10 classes, and crash)."""
    opts = "{input_shape: [3, 16, 16], num_classes: 3, size: 48}"
    out = tmp_path / "w.pt.xz"
    args = ["--data.dataset", "synthetic", "--data.kwargs", opts]
    train = ["train", "lenet", *args, "--trainer.max_epochs", "1", "--out_dir", str(tmp_path)]
    assert main([*train, "--trainer.enable_progress_bar", "false", "--export", str(out)]) == 0
    assert "test_acc" in capsys.readouterr().out
    model = dnn.create_model(
        "lenet",
        dataset="synthetic",
        weights=out,
        dataset_options={"input_shape": (3, 16, 16), "num_classes": 3},
    )
    assert model.fc3.out_features == 3
    assert (
        main(["test", "lenet", *args, "--model.checkpoint", str(out), "--out_dir", str(tmp_path)])
        == 0
    )
    assert "test_acc" in capsys.readouterr().out
    summary = tmp_path / "s.json"
    assert main(["summary", "lenet", *args, "--batch", "2", "--json", str(summary)]) == 0
    data = yaml.safe_load(summary.read_text())
    assert data["input_shape"] == [2, 3, 16, 16] and data["rows"][-1]["output_shape"] == [2, 3]


def test_test_job_shipped_weights(fast_train_config, tmp_path, capsys) -> None:
    assert main(["test", "lenet", "--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test_acc" in out
    metrics = dnn.test(dnn.TestConfig(model=dnn.JobModelSpec("mlp"), out_dir=str(tmp_path)))
    assert metrics["test_acc"] >= 0.95


def test_compress_checkpoints_callback_lightning_reads_back(tmp_path) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0, workers=True, verbose=False)
    module = dnn.ClassifierModule(model_name="mlp", dataset="digits", lr=1e-2)
    dm = dnn.ClassificationDataModule("digits", batch_size=64)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max", save_top_k=2)
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        callbacks=[ckpt, dnn.CompressCheckpoints("gzip")],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=5,
    )
    trainer.fit(module, datamodule=dm)
    files = sorted(tmp_path.glob("*.ckpt"))
    assert 1 <= len(files) <= 2  # top-k bookkeeping still works on compressed files
    assert all(f.read_bytes().startswith(b"\x1f\x8b") for f in files)
    out = trainer.test(module, datamodule=dm, ckpt_path="best", verbose=False)
    assert out[0]["test_acc"] > 0.5
    assert dnn.load_checkpoint(ckpt.best_model_path)["hyper_parameters"]["lr"] == 1e-2
    # Lightning's own load_from_checkpoint reads the compressed file (weights_only) and
    # rebuilds the model from the saved hyperparameters
    loaded = dnn.ClassifierModule.load_from_checkpoint(ckpt.best_model_path)
    assert type(loaded.model).__name__ == "MLP" and loaded.hparams.lr == 1e-2
    sd = dnn.load_checkpoint(ckpt.best_model_path)["state_dict"]
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # a binary file object of a compressed checkpoint too
    with open(ckpt.best_model_path, "rb") as fh:
        from_file = dnn.ClassifierModule.load_from_checkpoint(fh)
    assert all(torch.equal(v, sd[k]) for k, v in from_file.state_dict().items())
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(files[0].read_bytes()[:100])
    with pytest.raises(TorchFaultError, match="truncated or corrupted"):
        dnn.ClassifierModule.load_from_checkpoint(broken)


def test_hyperparameters_are_plain_values(tmp_path) -> None:
    """Options holding a Path are saved as strings: the checkpoint reads back with
    weights_only=True (a pathlib object would be refused, after training)."""
    from pathlib import Path

    module = dnn.ClassifierModule(
        model=dnn.create_model("mlp"),
        dataset="digits",
        dataset_options={"root": Path("/tmp"), "more": [Path("/a")]},
        model_options={},
    )
    assert module.hparams.dataset_options == {"root": "/tmp", "more": ["/a"]}
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.pt")
    assert torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]["dataset_options"]


def test_gradient_clip_zero_means_no_clipping() -> None:
    from torchfault.dnn._training import TrainerConfig

    assert TrainerConfig(gradient_clip_val=0).gradient_clip_val == 0
    with pytest.raises(ValueError, match="gradient_clip_val must be >= 0"):
        TrainerConfig(gradient_clip_val=-0.5)


def test_early_stopping_with_wrapped_model_and_datasets(tmp_path) -> None:
    """wrap_model + wrap_dataset through the Lightning fit of ``train``, EarlyStopping on."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from torchfault.dnn._training import _fit

    sets = {}
    for split in ("train", "val", "test"):
        d = dnn.create_dataset("digits", split=split)
        sets[split] = dnn.wrap_dataset(TensorDataset(d.inputs, d.targets), num_classes=10)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model = dnn.wrap_model(net, input_shape=(1, 8, 8), num_classes=10)
    cfg = dnn.TrainConfig(model=dnn.TrainModelSpec("mlp"), out_dir=str(tmp_path), batch_size=64)
    cfg.trainer.max_epochs = 6
    cfg.trainer.enable_progress_bar = False
    cfg.optimizer.lr = 1e-2
    # val_acc can never rise by 1.0: epoch 1 sets the best, epoch 2 runs out of patience
    cfg.early_stopping.patience = 1
    cfg.early_stopping.min_delta = 1.0
    dm = dnn.ClassificationDataModule(
        None, batch_size=64, train_set=sets["train"], val_set=sets["val"], test_set=sets["test"]
    )
    trained, metrics, run_dir, best = _fit(cfg, model, dm, "wrapped")
    assert trained is model and not model.training and best
    with open(Path(run_dir) / "metrics.csv") as fh:
        epochs = {r["epoch"] for r in csv.DictReader(fh) if r.get("val_acc")}
    assert len(epochs) == 2 < cfg.trainer.max_epochs
    assert metrics["test_acc"] > 0.6


def test_train_and_test_without_lightning(monkeypatch, tmp_path, capsys) -> None:
    """Without the train extra, the jobs say what to install instead of a raw import error."""
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # makes ``import lightning`` fail
    hint = "pip install 'torchfault[train]'"
    assert main(["train", "mlp", "--out_dir", str(tmp_path)]) == 2
    assert hint in capsys.readouterr().err
    assert main(["test", "lenet", "--out_dir", str(tmp_path)]) == 2
    assert hint in capsys.readouterr().err
    assert main(["train", "mlp", "--cv", "2", "--out_dir", str(tmp_path)]) == 2
    assert hint in capsys.readouterr().err
    with pytest.raises(TorchFaultError, match="torchfault\\[train\\]"):
        dnn.fine_tune(dnn.create_model("mlp"))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.delitem(sys.modules, "torchfault.dnn._lightning", raising=False)
    monkeypatch.delitem(dnn.__dict__, "ClassifierModule", raising=False)
    with pytest.raises(
        TorchFaultError, match="ClassifierModule needs PyTorch Lightning.*torchfault\\[train\\]"
    ):
        dnn.ClassifierModule  # noqa: B018 - the lazy import is the test


def test_load_from_checkpoint_folds_pruning_masks(tmp_path) -> None:
    """A Lightning checkpoint written while pruning masks were in place (fine-tuning between
    pruning steps) loads into the unpruned model the hyperparameters rebuild."""
    import lightning
    from torch.nn.utils import prune

    from torchfault.dnn._checkpoint import permanent_state_dict

    torch.manual_seed(0)
    module = dnn.ClassifierModule(model_name="mlp", dataset="digits")
    linear = next(m for m in module.model.modules() if isinstance(m, torch.nn.Linear))
    prune.l1_unstructured(linear, "weight", amount=0.5)
    pruned = {k: v.clone() for k, v in permanent_state_dict(module).items()}
    ckpt = {
        "state_dict": module.state_dict(),  # holds weight_orig / weight_mask
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    path = tmp_path / "pruned.ckpt"
    dnn.save_checkpoint(ckpt, path, compression="lzma")
    loaded = dnn.ClassifierModule.load_from_checkpoint(path)
    got = loaded.state_dict()
    assert set(got) == set(pruned)
    assert all(torch.equal(got[k], pruned[k]) for k in pruned)
    assert int(sum((v == 0).sum() for k, v in got.items() if k.endswith("weight"))) > 0
