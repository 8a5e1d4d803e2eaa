# SPDX-License-Identifier: MIT
"""docs/from-pytorchfi.md runs as written: its pytorchfi script and its torchfault script give
bit-identical outputs, and the later blocks run on the torchfault script's objects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "from-pytorchfi.md"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)


def test_the_side_by_side_scripts_differ_only_in_the_import_line():
    theirs, ours = blocks()[:2]
    diff = [(a, b) for a, b in zip(theirs.splitlines(), ours.splitlines()) if a != b]
    assert diff == [
        (
            "from pytorchfi import core, neuron_error_models, weight_error_models",
            "from torchfault.compat.pytorchfi import core, neuron_error_models, weight_error_models",
        )
    ]
    assert len(theirs.splitlines()) == len(ours.splitlines())


def test_the_page_runs_and_both_scripts_give_the_same_outputs(capsys):
    pytest.importorskip("pytorchfi")
    code = blocks()
    assert len(code) >= 5
    theirs: dict = {}
    exec(compile(code[0], "from-pytorchfi.md[0]", "exec"), theirs)
    ours: dict = {}
    for i, block in enumerate(code[1:], 1):
        exec(compile(block, f"from-pytorchfi.md[{i}]", "exec"), ours)
    assert len(theirs["outputs"]) == len(ours["outputs"]) == 4
    for a, b in zip(theirs["outputs"], ours["outputs"]):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    golden = ours["outputs"][0]
    assert all(not torch.equal(o, golden) for o in ours["outputs"][1:])  # every fault shows
    assert ours["result"].outcome_counts()
    assert "weight" in capsys.readouterr().out
