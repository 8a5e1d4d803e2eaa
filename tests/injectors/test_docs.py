# SPDX-License-Identifier: MIT
"""The Python blocks of docs/injection.md run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchfault.faults import FAULT_MODELS

DOC = Path(__file__).resolve().parents[2] / "docs" / "injection.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.skipif(not DOC.exists(), reason="docs/injection.md is not in this checkout")
def test_injection_guide_examples_run(capsys):
    code = blocks()
    assert len(code) >= 10
    namespace: dict = {"__name__": "injection_guide"}
    try:
        for i, block in enumerate(code):
            exec(compile(block, f"{DOC.name}[block {i}]", "exec"), namespace)
    finally:
        if FAULT_MODELS.is_registered("negate"):
            FAULT_MODELS.remove("negate")
    out = capsys.readouterr().out
    assert "unknown module 'cnv'. Did you mean 'conv'?" in out
    assert "bit 32 is out of range for float32 (32 bits: 0..31)" in out
    assert "out of range in dimension 0 for shape (4, 8, 8)" in out
    assert "'value' got unknown parameter(s) ['valeu']; it takes: value." in out
