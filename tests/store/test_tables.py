# SPDX-License-Identifier: MIT
"""Every Parquet writer reaches pyarrow the one way: without it, each says the same thing (what
needs it and the ``parquet`` extra) before it writes anything."""

from __future__ import annotations

import sys

import pytest

from torchfault import Fault
from torchfault.analysis import export_summaries, summarize, summarize_store
from torchfault.campaign import CampaignResult
from torchfault.errors import TorchFaultError
from torchfault.store import PARQUET_EXTRA, FaultRecord, ResultStore, RunRecord, require_pyarrow

FAULT = Fault("fc", "weight", (0, 1), (30,))


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "c.sqlite", campaign={"seed": 0}, fingerprint="f") as s:
        s.add_faults([FaultRecord(0, (FAULT,))])
        s.add_runs([RunRecord(0, 0, "sdc", 1, 7), RunRecord(0, 1, "masked", 2, 2)])
    return tmp_path / "c.sqlite"


@pytest.fixture
def no_pyarrow(monkeypatch):
    # a None entry in sys.modules makes `import pyarrow` raise ImportError, as when not installed
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)


def _message(what: str) -> str:
    return (
        f"{what} needs pyarrow, which is not installed; install the 'parquet' extra: "
        "pip install 'torchfault[parquet]'."
    )


def test_every_parquet_writer_says_the_same_without_pyarrow(store, tmp_path, no_pyarrow):
    runs = [RunRecord(0, 0, "sdc", 1, 7)]
    result = CampaignResult(runs, {0: (FAULT,)})
    summary = summarize([{"fault_id": 0, "outcome": "sdc"}], {0: (FAULT,)})
    out = tmp_path / "out"
    writers = {
        "export_parquet": lambda: ResultStore(store, mode="r").export_parquet(out / "a.parquet"),
        "CampaignResult.to_parquet": lambda: result.to_parquet(out / "b.parquet"),
        "Summary.to_parquet": lambda: summary.to_parquet(out / "c.parquet"),
        "export_summaries(formats=['parquet'])": lambda: export_summaries(
            summary, out, formats=["parquet"]
        ),
    }
    for what, write in writers.items():
        with pytest.raises(TorchFaultError) as err:
            write()
        assert str(err.value) == _message(what)
    assert not out.exists()  # refused before anything was written
    with pytest.raises(TorchFaultError, match="^mine needs pyarrow"):
        require_pyarrow("mine")
    assert PARQUET_EXTRA in _message("x")


def test_with_pyarrow_the_writers_write(store, tmp_path):
    pytest.importorskip("pyarrow")
    pa, pq = require_pyarrow("test")
    with ResultStore(store, mode="r") as s:
        path = s.export_parquet(tmp_path / "runs.parquet")
        summary = summarize_store(s)
    assert pq.read_table(path).column("outcome").to_pylist() == ["sdc", "masked"]
    assert summary.runs == 2
