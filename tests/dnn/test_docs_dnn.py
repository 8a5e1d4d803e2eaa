# SPDX-License-Identifier: MIT
"""Every ``torchfault ...`` command line of docs/dnn.md's bash blocks runs as written, except
the listed ones that train for long (each of those is named with its reason)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from torchfault.cli import main

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "dnn.md"

SKIPPED = {
    "torchfault train --config examples/train_lenet_digits.yaml": "60 epochs",
    "torchfault train --config examples/train_mlp_digits.yaml": "60 epochs",
    "torchfault train mlp --cv 5": "5 folds of 30 epochs",
    "torchfault test lenet --model.checkpoint "
    "runs/train/lenet_digits/version_0/checkpoints/epoch=15-val_acc=0.9722.ckpt": (
        "needs the checkpoint of a full training run"
    ),
}


def _commands() -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)
    lines = [ln.strip() for block in blocks for ln in block.splitlines()]
    return [ln for ln in lines if ln.startswith("torchfault ")]


def _key(line: str) -> str:
    return shlex.join(shlex.split(line, comments=True))


def test_doc_command_lines_run(tmp_path, monkeypatch, capsys) -> None:
    commands = _commands()
    keys = {_key(c) for c in commands}
    stale = [k for k in SKIPPED if _key(k) not in keys]
    assert not stale, f"skipped commands no longer in {DOC.name}: {stale}"
    # a copy of examples/ for the commands that name files in it; everything else they write
    # (runs/, summary.json) goes to tmp_path
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in commands:
        if _key(line) in {_key(k) for k in SKIPPED}:
            continue
        argv = shlex.split(line, comments=True)
        status = main(argv[1:])
        out = capsys.readouterr()
        assert status == 0, f"{line}\n{out.err[-2000:]}"
        ran.append(line)
    assert len(ran) >= 12, ran
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "runs/my_model.pt.xz").is_file()
    assert not (REPO / "summary.json").exists()
