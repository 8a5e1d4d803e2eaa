# SPDX-License-Identifier: MIT
"""Repository hygiene: licence lines, no leftovers in the library."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = re.compile(r"(\.py|\.ya?ml|\.toml|\.sh|^Makefile|^run)$")


def tracked() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.splitlines() if (ROOT / p).is_file()]


def test_every_source_file_has_an_spdx_line():
    files = [p for p in tracked() if SOURCE.search(p.name)]
    assert len(files) > 50
    missing = [
        str(p.relative_to(ROOT))
        for p in files
        if "SPDX-License-Identifier: MIT" not in p.read_text()[:300]
    ]
    assert not missing, missing


def test_library_has_no_stubs_or_todo_markers():
    offenders = []
    for p in (ROOT / "src" / "torchfault").rglob("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"\bTODO\b|\bFIXME\b|\bXXX\b|raise NotImplementedError\b", line):
                offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders
