# SPDX-License-Identifier: MIT
"""The results store: schema, resume, mismatch refusal, chunked commits, SIGKILL safety, export."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from torchfault.analysis import summarize_store
from torchfault.errors import StoreMismatchError, TorchFaultError
from torchfault.faults._fault import Fault, FaultSite
from torchfault.store import FaultRecord, GoldenRecord, ResultStore, RunRecord, open_store

CAMPAIGN = {"model": "lenet_digits", "seed": 3, "sampler": {"name": "uniform", "n": 10}}
SITES = [
    FaultSite("conv1", "weight", "parameter", (2, 1, 3, 3), "float32", 32, module_type="Conv2d"),
    FaultSite("relu", "output", "activation", (2, 4, 4), "float32", 32, calls=2),
    FaultSite("bn", "running_mean", "buffer", (2,), "float32", 32),
]


def _faults(n: int = 10) -> list[FaultRecord]:
    out = []
    for i in range(n):
        site = SITES[i % 3]
        out.append(FaultRecord(i, (site.fault((0,) * len(site.shape), (i % 32,)),)))
    return out


def _run(fid: int, iid: int) -> RunRecord:
    outcome = ("masked", "benign", "sdc", "due")[(fid + iid) % 4]
    return RunRecord(
        fid,
        iid,
        outcome,
        7,
        7 if outcome != "sdc" else 1,
        0.5 * fid,
        0.001,
        "boom" if outcome == "due" else None,
    )


def _store(path: Path, **kw) -> ResultStore:
    return ResultStore(path, campaign=CAMPAIGN, fingerprint="fp1", **kw)


def test_schema_and_pragmas(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    with _store(path) as s:
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"meta", "sites", "faults", "runs", "golden"}
        cols = [r[1] for r in s.conn.execute("PRAGMA table_info(runs)")]
        assert cols == [
            "fault_id",
            "input_id",
            "outcome",
            "golden_top1",
            "faulty_top1",
            "max_abs_diff",
            "seconds",
            "error",
        ]
        meta = s.meta()
        assert meta["config"] == CAMPAIGN and meta["seed"] == 3 and meta["fingerprint"] == "fp1"
        assert meta["torchfault_version"] and meta["created"] and meta["schema_version"] == "1"
        with pytest.raises(sqlite3.IntegrityError):
            s.conn.execute("INSERT INTO runs(fault_id, input_id, outcome) VALUES (1, 1, 'weird')")


def test_round_trip_and_resume(tmp_path):
    path = tmp_path / "c.sqlite"
    with _store(path, chunk_size=7) as s:
        s.set_sites(SITES)
        s.add_faults(_faults())
        s.set_golden(
            [
                GoldenRecord(0, 7, 7, "d0"),
                (1, 7, 7, "d1"),
                {"input_id": 2, "top1": 7, "label": 7, "digest": "d2"},
            ]
        )
        s.add_runs([_run(f, i) for f in range(5) for i in range(3)])
        s.set_meta("planned", {"runs": 30})
    with _store(path) as s:  # same campaign: resumes
        assert s.sites() == SITES
        assert s.faults() == {r.fault_id: r.faults for r in _faults()}
        assert s.golden()[2] == GoldenRecord(2, 7, 7, "d2")
        assert s.done_runs() == {(f, i) for f in range(5) for i in range(3)}
        assert s.done_fault_ids() == set(range(5))
        assert s.meta()["planned"] == {"runs": 30}
        # replays are harmless; the rest is added
        s.add_runs([_run(f, i) for f in range(10) for i in range(3)])
        s.set_sites(SITES)
        s.set_golden([GoldenRecord(i, 7, 7, f"d{i}") for i in range(3)])
        assert s.runs() == [_run(f, i) for f in range(10) for i in range(3)]
        expected = Counter(_run(f, i).outcome for f in range(10) for i in range(3))
        assert s.outcome_counts() == {o: expected[o] for o in ("masked", "benign", "sdc", "due")}
    ro = open_store(path)
    assert ro.count_runs() == 30
    with pytest.raises(TorchFaultError, match="read-only"):
        ro.set_meta("x", 1)
    ro.close()


def test_faults_table_columns(tmp_path):
    with _store(tmp_path / "c.sqlite") as s:
        s.set_sites(SITES)
        multi = FaultRecord(
            99,
            (
                Fault("relu", "output", (0, 1, 1), (3, 5)),
                Fault("conv1", "weight", (0, 0, 0, 0), (1,)),
            ),
        )
        s.add_faults([*_faults(3), multi, FaultRecord(100, ())])
        rows = {
            r[0]: r[1:]
            for r in s.conn.execute(
                "SELECT fault_id, module, target, kind, bit, n_faults FROM faults"
            )
        }
    assert rows[0] == ("conv1", "weight", "parameter", 0, 1)
    assert rows[1] == ("relu", "output", "activation", 1, 1)
    assert rows[2] == ("bn", "running_mean", "buffer", 2, 1)
    assert rows[99] == ("relu", "output", "activation", 3, 2)
    assert rows[100] == (None, None, None, None, 0)


def test_mismatch_refused(tmp_path):
    path = tmp_path / "c.sqlite"
    with _store(path) as s:
        s.add_runs([_run(0, 0)])
    other = {**CAMPAIGN, "sampler": {"name": "uniform", "n": 20}}
    with pytest.raises(
        StoreMismatchError, match=r"sampler\.n \(stored 10, given 20\).*new store path.*overwrite"
    ):
        ResultStore(path, campaign=other, fingerprint="fp1")
    with pytest.raises(StoreMismatchError, match="fingerprint stored 'fp1', given 'fp2'"):
        ResultStore(path, campaign=CAMPAIGN, fingerprint="fp2")
    with _store(path) as s:  # untouched
        assert s.count_runs() == 1
        with pytest.raises(StoreMismatchError, match="other fault sites"):
            s.set_sites(SITES)
            s.set_sites(SITES[:2])
        with pytest.raises(StoreMismatchError, match="golden result of input 0 differs"):
            s.set_golden([GoldenRecord(0, 1)])
            s.set_golden([GoldenRecord(0, 2)])
    # overwrite starts afresh
    with ResultStore(path, campaign=other, fingerprint="fp2", mode="w") as s:
        assert s.count_runs() == 0 and s.meta()["fingerprint"] == "fp2"


def test_bad_paths(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TorchFaultError, match=str(blocker / "c.sqlite")):
        _store(blocker / "c.sqlite")
    with pytest.raises(TorchFaultError, match="is a folder"):
        _store(tmp_path)
    with pytest.raises(TorchFaultError, match="cannot open it as an SQLite database"):
        _store(blocker)
    with pytest.raises(TorchFaultError, match="cannot open"):
        _store(blocker, mode="w")  # never deletes a foreign file
    assert blocker.read_text() == "x"
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(TorchFaultError, match="not a torchfault results store"):
        _store(foreign)
    with pytest.raises(TorchFaultError, match="no such file"):
        open_store(tmp_path / "missing.sqlite")
    with pytest.raises(TorchFaultError, match="fingerprint"):
        ResultStore(tmp_path / "x.sqlite", campaign=CAMPAIGN, fingerprint="")
    with pytest.raises(TorchFaultError, match="mode"):
        ResultStore(tmp_path / "x.sqlite", campaign=CAMPAIGN, fingerprint="f", mode="x")
    with pytest.raises(TorchFaultError, match="outcome"):
        RunRecord(0, 0, "crash")


def test_chunked_commits(tmp_path):
    path = tmp_path / "c.sqlite"
    s = _store(path, chunk_size=10)
    s.add_runs([_run(f, 0) for f in range(25)])
    # another connection sees only the committed chunks
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM runs").fetchone()[0] == 20
    s.flush()
    assert other.execute("SELECT count(*) FROM runs").fetchone()[0] == 25
    s.add_runs([_run(100, 0)])
    s.close()
    assert other.execute("SELECT count(*) FROM runs").fetchone()[0] == 26
    other.close()


def test_non_finite_values(tmp_path):
    with _store(tmp_path / "c.sqlite") as s:
        s.add_runs(
            [
                RunRecord(0, 0, "due", 1, None, math.inf, 0.1, "nan"),
                RunRecord(1, 0, "due", 1, 2, math.nan),
            ]
        )
        runs = s.runs()
    assert runs[0].max_abs_diff == math.inf and runs[0].faulty_top1 is None
    assert runs[1].max_abs_diff is None  # NaN is stored as NULL


def test_export_csv_and_parquet(tmp_path):
    with _store(tmp_path / "c.sqlite") as s:
        s.set_sites(SITES)
        s.add_faults(_faults(4))
        runs = [_run(f, i) for f in range(4) for i in range(2)]
        s.add_runs(runs)
        csv_path = s.export_csv(tmp_path / "out" / "runs.csv")
        pq_path = s.export_parquet(tmp_path / "runs.parquet")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 8
    assert (
        rows[0]["module"] == "conv1"
        and rows[0]["kind"] == "parameter"
        and rows[0]["outcome"] == runs[0].outcome
    )
    assert json.loads(rows[2]["faults"])[0]["module"] == "relu"
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(pq_path)
    assert table.num_rows == 8
    assert table.column("outcome").to_pylist() == [r.outcome for r in runs]
    assert table.column("max_abs_diff").to_pylist() == [r.max_abs_diff for r in runs]


def test_parquet_missing_names_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with (
        _store(tmp_path / "c.sqlite") as s,
        pytest.raises(TorchFaultError, match=r"torchfault\[parquet\]"),
    ):
        s.export_parquet(tmp_path / "x.parquet")


def test_summary_from_store(tmp_path):
    with _store(tmp_path / "c.sqlite") as s:
        s.set_sites(SITES)
        s.add_faults(_faults(6))
        s.add_runs([_run(f, i) for f in range(6) for i in range(4)])
        summary = summarize_store(s)
    assert summary.runs == 24
    assert summary.outcome_counts() == {"masked": 6, "benign": 6, "sdc": 6, "due": 6}
    assert [r.key for r in summary.by_layer] == ["conv1", "relu", "bn"]
    assert [r.key for r in summary.by_kind] == ["activation", "parameter", "buffer"]


_WRITER = textwrap.dedent(
    """
    import sys
    from torchfault.store import ResultStore, RunRecord
    path, chunk = sys.argv[1], int(sys.argv[2])
    s = ResultStore(path, campaign={"seed": 1}, fingerprint="f", chunk_size=chunk)
    print("ready", flush=True)
    fid = 0
    while True:
        batch = []
        for _ in range(37):
            batch.append(RunRecord(fid, 0, "sdc", fid % 10, (fid + 1) % 10, float(fid), 0.5, "e" * (fid % 50)))
            fid += 1
        s.add_runs(batch)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.1, 0.6])
def test_sigkill_leaves_whole_chunks(tmp_path, delay):
    path = tmp_path / "killed.sqlite"
    chunk = 250
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(chunk)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT * FROM runs ORDER BY fault_id").fetchall()
    conn.close()
    if delay >= 0.5:
        assert rows, "the writer was killed before its first commit; the test proved nothing"
    assert len(rows) % chunk == 0  # only whole committed chunks
    assert [r[0] for r in rows] == list(range(len(rows)))
    for fid, iid, outcome, g, f, diff, sec, err in rows:
        assert (iid, outcome, g, f, diff, sec, err) == (
            0,
            "sdc",
            fid % 10,
            (fid + 1) % 10,
            float(fid),
            0.5,
            "e" * (fid % 50),
        )
    # and it resumes
    with ResultStore(path, campaign={"seed": 1}, fingerprint="f") as s:
        assert len(s.done_runs()) == len(rows)
        s.add_runs([RunRecord(10**6, 0, "masked")])
    with open_store(path) as s:
        assert s.count_runs() == len(rows) + 1


def test_faults_by_id(tmp_path):
    """``faults(ids)`` reads just those (in chunks past SQLite's parameter limit)."""
    records = _faults(1200)
    with _store(tmp_path / "c.sqlite") as s:
        s.set_sites(SITES)
        s.add_faults(records)
        every = s.faults()
        some = s.faults([3, 7, 7, 1199, 5000])
        many = s.faults(range(0, 1200, 2))
    assert every == {r.fault_id: r.faults for r in records}
    assert some == {3: records[3].faults, 7: records[7].faults, 1199: records[1199].faults}
    assert many == {k: every[k] for k in range(0, 1200, 2)}
