# SPDX-License-Identifier: MIT
"""The model summary table: readable in 80 columns, whole when piped (no "layer1…", "2,359,…")."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from torchfault.cli import main
from torchfault.dnn import create_model, summarize_model


@pytest.fixture(scope="module")
def resnet20():
    return summarize_model(create_model("resnet20", dataset="cifar10"))


def _render(table, width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    with console.capture() as cap:
        console.print(table)
    return cap.get().splitlines()


def test_80_columns_keep_every_name_whole(resnet20):
    lines = _render(resnet20.table(width=80), 80)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text
    for row in resnet20.rows:  # every layer name on one line, uncut
        assert any(f"│ {row.name} " in line for line in lines), row.name
    # MACs of a 3x3 conv 16->16 on 32x32, counted by hand: 16*16*9*32*32 = 2,359,296
    line = next(line for line in lines if "│ layer1.0.conv1 " in line)
    assert 16 * 16 * 9 * 32 * 32 == 2_359_296 and "2.36M" in line and "1x16x32x32" in line


def test_full_table_when_it_fits_or_no_width(resnet20):
    full = _render(resnet20.table(), 100_000)
    text = "\n".join(full)
    assert "2,359,296" in text and "4,718,592" in text and "…" not in text
    assert _render(resnet20.table(width=1000), 1000) == full
    tiny = summarize_model(create_model("lenet"))  # narrow enough for 80 columns as it is
    assert "FLOPs" in "\n".join(_render(tiny.table(width=120), 120))


def test_cli_piped_prints_whole_rows(monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["summary", "resnet20", "--data.dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    line = next(line for line in out.splitlines() if "│ layer1.0.conv1 " in line)
    assert "2,359,296" in line and "4,718,592" in line and "(1, 16, 32, 32)" in line


def test_cli_in_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["summary", "resnet20", "--data.dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert "│ layer3.2.shortcut " in out or "│ layer3.2.conv2 " in out
