# SPDX-License-Identifier: MIT
"""The store under concurrent writers, hostile files and damage: one writer (a lock naming the
running campaign), foreign files identified read-only (every byte kept), damaged pages and
garbled rows reported with the file's name, ``check`` and ``repair``."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from torchfault.analysis import summarize_store
from torchfault.errors import TorchFaultError
from torchfault.faults._fault import Fault
from torchfault.store import (
    FaultRecord,
    ResultStore,
    RunRecord,
    StoreBusyError,
    StoreDamagedError,
    check_store,
    inspect_file,
    open_store,
    repair_store,
)

CAMPAIGN = {"model": "toy", "seed": 1}
N_FAULTS, N_INPUTS = 400, 10


def _store(path: Path, **kw) -> ResultStore:
    return ResultStore(path, campaign=CAMPAIGN, fingerprint="fp", **kw)


def _fill(path: Path) -> None:
    with _store(path, chunk_size=500) as s:
        s.add_faults(
            FaultRecord(k, (Fault("fc", "weight", (k % 7, k % 5), (k % 32,)),))
            for k in range(N_FAULTS)
        )
        s.add_runs(
            RunRecord(k, i, ("masked", "sdc")[(k + i) % 2], 1, 1, 0.5, 0.001)
            for k in range(N_FAULTS)
            for i in range(N_INPUTS)
        )


# ---------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_naming_the_running_campaign(tmp_path):
    path = tmp_path / "c.sqlite"
    with _store(path, writer="first") as first:
        first.add_runs([RunRecord(0, 0, "masked")])
        with pytest.raises(StoreBusyError) as err:
            _store(path)
        msg = str(err.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
        assert "'first'" in msg and str(path) in msg and "store.wait" in msg
        # overwrite never pulls the file from under the running writer
        with pytest.raises(StoreBusyError):
            _store(path, mode="w")
        first.add_runs([RunRecord(0, 1, "sdc")])
    with open_store(path) as s:
        assert [(r.fault_id, r.input_id) for r in s.runs()] == [(0, 0), (0, 1)]
    assert not Path(str(path) + ".lock").exists()  # released and removed on close
    with _store(path) as again:  # and the next writer gets it
        assert again.done_runs() == {(0, 0), (0, 1)}


def test_a_writer_waits_when_asked(tmp_path):
    path = tmp_path / "c.sqlite"
    first = _store(path)
    t0 = time.monotonic()
    with pytest.raises(StoreBusyError, match="waited 0.3 s"):
        _store(path, wait=0.3)
    assert time.monotonic() - t0 >= 0.3
    threading.Timer(0.4, first.close).start()
    with _store(path, wait=10) as second:  # gets the store once the first closes
        assert second.done_runs() == set()
    with pytest.raises(TorchFaultError, match="store.wait"):
        _store(path, wait=-1)


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "c.sqlite"
    code = textwrap.dedent(
        f"""
        import sys, time
        from torchfault.store import ResultStore
        s = ResultStore({str(path)!r}, campaign={CAMPAIGN!r}, fingerprint="fp")
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusyError, match=f"pid {proc.pid}"):
            _store(path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with _store(path) as s:  # the kernel released the dead writer's lock
        assert s.done_runs() == set()


# ---------------------------------------------------------------- foreign files


def _foreign_sqlite(path: Path) -> bytes:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes(text) VALUES ('keep me')")
    con.commit()
    con.close()
    return path.read_bytes()


@pytest.mark.parametrize("mode", ["a", "w", "r"])
@pytest.mark.parametrize("kind", ["foreign_sqlite", "not_sqlite"])
def test_a_foreign_file_is_refused_with_every_byte_kept(tmp_path, mode, kind):
    path = tmp_path / "other.db"
    if kind == "foreign_sqlite":
        before = _foreign_sqlite(path)
        want = "another application's SQLite database.*notes"
    else:
        before = b"PK\x03\x04 not a database at all" * 100
        path.write_bytes(before)
        want = "holds something else"
    assert inspect_file(path).kind == kind
    with pytest.raises(TorchFaultError, match=want) as err:
        _store(path, mode=mode) if mode != "r" else open_store(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before  # the header (journal mode bytes 18-19) included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal, -shm, .lock


# ---------------------------------------------------------------- damage


def _damage_a_page(path: Path, from_end: int = 3) -> None:
    """Overwrite one page near the end of the file (where the runs table's leaves are)."""
    size = path.stat().st_size
    con = sqlite3.connect(path)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    n = size // page
    with path.open("r+b") as fh:
        fh.seek((n - from_end) * page)
        fh.write(b"\xff" * page)


def test_a_damaged_page_is_a_clear_error_everywhere(tmp_path):
    path = tmp_path / "c.sqlite"
    _fill(path)
    _damage_a_page(path)
    with pytest.raises(StoreDamagedError, match="damaged") as err:  # resume: before any write
        _store(path)
    assert str(path) in str(err.value) and "torchfault store repair" in str(err.value)
    with open_store(path) as s, pytest.raises(StoreDamagedError, match="store check"):
        summarize_store(s)
    with open_store(path) as s, pytest.raises(StoreDamagedError, match=str(path)):
        s.runs()
    report = check_store(path)
    assert not report.ok and report.problems
    assert "DAMAGED" in report.text()


def test_a_garbled_fault_names_the_file_and_row(tmp_path):
    path = tmp_path / "c.sqlite"
    _fill(path)
    con = sqlite3.connect(path)
    with con:  # one byte of fault 17's JSON changed
        con.execute("UPDATE faults SET faults = '#' || substr(faults, 2) WHERE fault_id = 17")
    con.close()
    with open_store(path) as s:
        with pytest.raises(StoreDamagedError, match="fault_id=17") as err:
            s.faults()
        assert str(path) in str(err.value)
        assert len(s.faults(range(10))) == 10  # the other rows still read
    report = check_store(path)
    assert any("fault_id=17" in p for p in report.problems)


def test_repair_salvages_the_readable_runs(tmp_path):
    path = tmp_path / "c.sqlite"
    _fill(path)
    with open_store(path) as s:
        want = {(r.fault_id, r.input_id): r for r in s.runs()}
    _damage_a_page(path)
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    with con:
        pass
    con.close()
    before = path.read_bytes()
    out = tmp_path / "fixed.sqlite"
    rep = repair_store(path, out)
    assert path.read_bytes() == before  # read-only on the damaged file
    assert 0 < rep.kept["runs"] < len(want) and rep.dropped
    assert check_store(out).ok
    with open_store(out) as s:
        got = s.runs()
        assert s.meta()["fingerprint"] == "fp" and s.meta()["config"] == CAMPAIGN
        assert len(s.faults()) == rep.kept["faults"]
    assert all(want[(r.fault_id, r.input_id)] == r for r in got)  # every salvaged run is true
    with _store(out) as s:  # resumable by the same campaign
        assert len(s.done_runs()) == len(got)
    with pytest.raises(TorchFaultError, match="exists"):
        repair_store(path, out)


# ---------------------------------------------------------------- campaigns


def _campaign_cfg(tmp_path: Path, **store: object) -> dict:
    return {
        "name": "lock",
        "seed": 2,
        "model": {"name": "mlp", "dataset": "digits"},
        "data": {"dataset": "digits", "num_inputs": 8},
        "sampler": {"name": "uniform", "n": 8},
        "out_dir": str(tmp_path),
        "progress": False,
        "report": False,
        "store": {"export": [], **store},
    }


def test_a_second_campaign_on_a_running_store_is_refused_or_waits(tmp_path):
    from torchfault import Campaign

    path = tmp_path / "campaign.sqlite"
    holder = ResultStore(
        path, campaign=Campaign(_campaign_cfg(tmp_path)).config.identity(), fingerprint="x"
    )
    try:
        before = path.read_bytes()
        for overwrite in (False, True):
            with pytest.raises(StoreBusyError, match=f"pid {os.getpid()}"):
                Campaign(_campaign_cfg(tmp_path, overwrite=overwrite)).run()
        assert path.read_bytes() == before  # nothing written, nothing deleted
        with pytest.raises(StoreBusyError, match="waited 0.2 s"):
            Campaign(_campaign_cfg(tmp_path, wait=0.2)).run()
    finally:
        holder.close()
    with pytest.raises(TorchFaultError, match="store.wait"):
        Campaign(_campaign_cfg(tmp_path, wait=-1.0))


def test_a_campaign_on_a_damaged_store_names_the_file(tmp_path):
    from torchfault import Campaign

    Campaign(_campaign_cfg(tmp_path)).run()
    path = tmp_path / "campaign.sqlite"
    con = sqlite3.connect(path)
    with con:  # one byte of fault 3's JSON changed
        con.execute("UPDATE faults SET faults = '#' || substr(faults, 2) WHERE fault_id = 3")
        con.execute("DELETE FROM runs WHERE fault_id = 3")  # so the resume redraws it
    con.close()
    with pytest.raises(StoreDamagedError, match="fault_id=3") as err:
        Campaign(_campaign_cfg(tmp_path)).run()
    assert str(path) in str(err.value)


def test_a_campaign_on_a_store_with_a_damaged_page_names_the_file(tmp_path):
    from torchfault import Campaign

    cfg = _campaign_cfg(tmp_path)
    cfg["sampler"]["n"], cfg["data"]["num_inputs"] = 400, 16  # a few pages of runs
    Campaign(cfg).run()
    path = tmp_path / "campaign.sqlite"
    _damage_a_page(path)
    before = path.read_bytes()
    with pytest.raises(StoreDamagedError, match="store repair") as err:
        Campaign(cfg).run()
    assert str(path) in str(err.value)
    assert path.read_bytes() == before  # refused before any write
