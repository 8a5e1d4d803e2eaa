# SPDX-License-Identifier: MIT
"""``torchfault store check|repair`` and the report of a damaged store: exit codes, messages
naming the file, and the checked file left byte-identical."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from torchfault.cli import main
from torchfault.faults._fault import Fault
from torchfault.store import FaultRecord, ResultStore, RunRecord, open_store


def _fill(path: Path, n: int = 300) -> None:
    with ResultStore(path, campaign={"seed": 4}, fingerprint="fp", chunk_size=500) as s:
        s.add_faults(
            FaultRecord(k, (Fault("fc", "weight", (k % 9,), (k % 32,)),)) for k in range(n)
        )
        s.add_runs(RunRecord(k, i, "masked", 1, 1, 0.0, 0.0) for k in range(n) for i in range(10))


def _damage(path: Path) -> None:
    page = 4096
    n = path.stat().st_size // page
    with path.open("r+b") as fh:
        fh.seek((n - 3) * page)
        fh.write(b"\xff" * page)


def test_check_a_sound_store(tmp_path, capsys):
    path = tmp_path / "c.sqlite"
    _fill(path)
    before = path.read_bytes()
    assert main(["store", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sound" in out and "3,000 runs" in out
    assert path.read_bytes() == before


def test_check_and_repair_a_damaged_store_then_report(tmp_path, capsys):
    path = tmp_path / "c.sqlite"
    _fill(path)
    _damage(path)
    before = path.read_bytes()
    assert main(["store", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and str(path) in out and "store repair" in out
    # the report of a damaged store: a clear error naming the file, exit 2, no traceback
    assert main(["report", str(path), "--out_dir", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "damaged" in err and "Traceback" not in err
    out_path = tmp_path / "fixed.sqlite"
    assert main(["store", "repair", str(path), "--out", str(out_path)]) == 0
    assert "salvaged" in capsys.readouterr().out
    assert path.read_bytes() == before
    assert main(["store", "check", str(out_path)]) == 0
    with open_store(out_path) as s:
        assert 0 < s.count_runs() < 3000


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["store", "fix", "x.sqlite"], "action: 'fix' is not valid"),
        (["store", "repair", "x.sqlite"], "out: repair writes a new store"),
        (["store", "check"], "path: give the store file"),
        (["store"], "action: give check or repair"),
    ],
)
def test_bad_store_commands(args, want, capsys):
    assert main(args) == 2
    assert want in capsys.readouterr().err


def test_check_a_foreign_file_keeps_its_bytes(tmp_path, capsys):
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    before = path.read_bytes()
    assert main(["store", "check", str(path)]) == 1
    assert "another application's SQLite database" in capsys.readouterr().out
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
