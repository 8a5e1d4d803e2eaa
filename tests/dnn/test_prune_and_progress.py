# SPDX-License-Identifier: MIT
"""Rough edges of the DNN jobs: pruned weights named by model and settings and never silently
overwritten; progress lines when standard error is not a terminal (train, prune steps,
fine-tuning)."""

from __future__ import annotations

import re

import pytest

from torchfault.cli import main
from torchfault.cli._dnn import PruneConfig
from torchfault.config import from_dict
from torchfault.dnn import JobModelSpec
from torchfault.errors import TorchFaultError


def test_out_names_differ_by_model_and_settings():
    names = {
        PruneConfig(model=JobModelSpec("lenet")).out_path(),
        PruneConfig(model=JobModelSpec("mlp")).out_path(),
        PruneConfig(model=JobModelSpec("lenet"), amount=0.75).out_path(),
        PruneConfig(model=JobModelSpec("lenet"), steps=3).out_path(),
        PruneConfig(model=JobModelSpec("lenet"), method="random_unstructured").out_path(),
        PruneConfig(model=JobModelSpec("lenet"), scope="global").out_path(),
    }
    assert len(names) == 6  # the old default gave one runs/prune/pruned.pt.xz for all
    assert (
        PruneConfig(model=JobModelSpec("lenet")).out_path()
        == "runs/prune/lenet-digits-l1_unstructured-0.5.pt.xz"
    )
    own = PruneConfig(model=JobModelSpec("examples/my_model.py:build", pretrained=False)).out_path()
    assert own == "runs/prune/my_model.build-digits-l1_unstructured-0.5.pt.xz"
    assert (
        PruneConfig(model=JobModelSpec("lenet"), out="w/{model}_{amount}.pt").out_path()
        == "w/lenet_0.5.pt"
    )
    assert PruneConfig(model=JobModelSpec("lenet"), out="").out_path() == ""
    with pytest.raises(TorchFaultError, match=r"out: .*unknown placeholder.*\{name\}"):
        from_dict(PruneConfig, {"out": "w/{nmae}.pt"})


def test_prune_never_overwrites_silently_and_shows_steps(tmp_path, capsys):
    out = str(tmp_path / "{name}.pt.xz")
    args = ["prune", "mlp", "--amount", "0.75", "--steps", "2", "--out", out]
    assert main(args) == 0
    err = capsys.readouterr().err
    # each step prunes 1 - (1 - 0.75) ** (1 / 2) = 50 % of what is left: 50 %, then 75 %
    assert re.search(r"prune step 1/2: sparsity 50\.\d\d%", err), err
    assert re.search(r"prune step 2/2: sparsity 75\.\d\d%", err), err
    path = tmp_path / "mlp-digits-l1_unstructured-0.75-2steps.pt.xz"
    before = path.read_bytes()
    assert main(["prune", "lenet", "--out", out]) == 0  # another model: another file
    assert (tmp_path / "lenet-digits-l1_unstructured-0.5.pt.xz").is_file()
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2  # the same name again: refused before pruning
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite true" in err and "prune step" not in err
    assert path.read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.slow
def test_progress_lines_when_piped(tmp_path, capsys):
    """capsys' standard error is no terminal: training and fine-tuning print a line per epoch."""
    pytest.importorskip("lightning")
    assert (
        main(
            [
                "prune",
                "mlp",
                "--steps",
                "2",
                "--finetune_epochs",
                "1",
                "--out",
                str(tmp_path / "p.pt.xz"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert re.search(r"step 1/2, fine-tune epoch 1/1: .*train_loss \d", err), err
    assert re.search(r"step 2/2, fine-tune epoch 1/1", err), err
    assert (
        main(
            [
                "train",
                "mlp",
                "--trainer.max_epochs",
                "2",
                "--out_dir",
                str(tmp_path / "t"),
                "--trainer.limit_train_batches",
                "3",
                "--trainer.limit_val_batches",
                "2",
                "--export",
                "",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert re.search(r"epoch 1/2: .*val_acc \d\.\d{4}", err), err
    assert re.search(r"epoch 2/2: ", err), err
