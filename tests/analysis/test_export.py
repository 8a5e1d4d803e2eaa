# SPDX-License-Identifier: MIT
"""Summary tables exported to CSV and Parquet: the files re-read give the Summary's numbers."""

from __future__ import annotations

import csv
import sys

import pytest

from torchfault.analysis import export_summaries, summarize, summarize_store
from torchfault.analysis._summary import MULTIPLE, ROW_COLUMNS
from torchfault.cli import main
from torchfault.errors import TorchFaultError
from torchfault.faults._fault import Fault, FaultSite
from torchfault.store import FaultRecord, ResultStore, RunRecord

SITES = [
    FaultSite("conv1", "weight", "parameter", (4, 1, 3, 3), "float32", 32),
    FaultSite("fc", "output", "activation", (10,), "float32", 32),
]
FAULTS = {
    0: (Fault("conv1", "weight", (0, 0, 1, 1), (30,)),),
    1: (Fault("fc", "output", (3,), (2,)),),
    2: (Fault("fc", "output", (5,), (30,)),),
    3: (Fault("conv1", "weight", (1, 0, 0, 0), (5,)), Fault("fc", "output", (0,), (5, 6))),
}
# (fault_id, outcome) -> runs
PLAN = {
    (0, "sdc"): 12,
    (0, "masked"): 28,
    (1, "masked"): 30,
    (1, "benign"): 5,
    (2, "due"): 4,
    (2, "sdc"): 6,
    (3, "benign"): 3,
    (3, "masked"): 2,
}
GROUP_FILES = ["overall", "layer", "target", "kind", "bit"]


def _runs() -> list[RunRecord]:
    runs, i = [], 0
    for (fid, outcome), count in PLAN.items():
        for _ in range(count):
            runs.append(RunRecord(fid, i, outcome, 1, 1, 0.0, 0.01))
            i += 1
    return runs


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "run" / "campaign.sqlite"
    with ResultStore(path, campaign={"seed": 1}, fingerprint="beef") as s:
        s.set_sites(SITES)
        s.add_faults([FaultRecord(k, fs) for k, fs in FAULTS.items()])
        s.add_runs(_runs())
    return path


def _expected(summary, group):
    """(key as text, outcome) -> (count, runs, rate, low, high) of one group of a Summary."""
    rows = (summary.overall,) if group == "overall" else summary.groups[group]
    return {
        (str(row.key), o): (r.k, r.n, r.rate, r.low, r.high)
        for row in rows
        for o, r in row.rates.items()
    }


def _read_csv(path):
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == list(ROW_COLUMNS)
    return {
        (r["key"], r["outcome"]): (
            int(r["count"]),
            int(r["runs"]),
            float(r["rate"]),
            float(r["low"]),
            float(r["high"]),
        )
        for r in rows
    }, rows


def _read_parquet(path):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(path)
    assert table.column_names == list(ROW_COLUMNS)
    rows = table.to_pylist()
    return {
        (r["key"], r["outcome"]): (r["count"], r["runs"], r["rate"], r["low"], r["high"])
        for r in rows
    }, rows


def test_summary_to_parquet_equals_summary(tmp_path):
    pytest.importorskip("pyarrow")
    s = summarize(_runs(), FAULTS, sites=SITES, method="clopper_pearson", confidence=0.99)
    path = s.to_parquet(tmp_path / "deep" / "summary.parquet")
    assert path.read_bytes()[:4] == b"PAR1"
    got, rows = _read_parquet(path)
    assert len(rows) == len(s.to_rows()) == 4 * (1 + 3 + 3 + 3 + 3)
    assert {r["group"] for r in rows} == {"overall", *s.groups}
    assert {(r["confidence"], r["method"]) for r in rows} == {(0.99, "clopper_pearson")}
    for group in ("overall", *s.groups):
        part = {k: v for k, v in got.items() if k in _expected(s, group)}
        assert part == _expected(s, group)
    # one group only, and the bit keys as text
    _, bits = _read_parquet(s.to_parquet(tmp_path / "bits.parquet", groups=("bit",)))
    assert {r["key"] for r in bits} == {"2", "6", "30"}  # fault 3 (bits 5 and 5, 6) under 6
    with pytest.raises(TorchFaultError, match="summary group"):
        s.to_csv(tmp_path / "x.csv", groups=("layers",))


@pytest.mark.parametrize("source", ["path", "store", "summary"])
def test_export_summaries_files_and_numbers(store_path, tmp_path, source):
    pytest.importorskip("pyarrow")
    from torchfault.store import open_store

    with open_store(store_path) as store:
        want = summarize_store(store, 0.9, "wilson")
        if source == "path":
            files = export_summaries(
                str(store_path), tmp_path / "out", ("csv", "parquet"), "wilson", confidence=0.9
            )
        elif source == "store":
            files = export_summaries(
                store, tmp_path / "out", ["csv", "parquet"], "wilson", confidence=0.9
            )
        else:
            files = export_summaries(want, tmp_path / "out", "csv,parquet")
    names = [f"summary_{g}.{fmt}" for fmt in ("csv", "parquet") for g in GROUP_FILES]
    assert [p.name for p in files] == names
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in files)
    assert want.overall.counts == {"masked": 60, "benign": 8, "sdc": 18, "due": 4}
    for group in GROUP_FILES:
        from_csv, rows = _read_csv(tmp_path / "out" / f"summary_{group}.csv")
        from_pq, _ = _read_parquet(tmp_path / "out" / f"summary_{group}.parquet")
        assert {r["group"] for r in rows} == {group}
        assert from_csv == from_pq == _expected(want, group)
        assert {float(r["confidence"]) for r in rows} == {0.9}
    layer, _ = _read_csv(tmp_path / "out" / "summary_layer.csv")
    assert layer[("conv1", "sdc")][:2] == (12, 40) and layer[(MULTIPLE, "benign")][:2] == (3, 5)
    bit, _ = _read_csv(tmp_path / "out" / "summary_bit.csv")
    assert bit[("30", "sdc")][:2] == (18, 50) and bit[("2", "masked")][:2] == (30, 35)
    kind, _ = _read_csv(tmp_path / "out" / "summary_kind.csv")
    assert kind[("activation", "due")][:2] == (4, 45)


def test_export_summaries_per_element_and_methods(store_path, tmp_path):
    files = export_summaries(store_path, tmp_path, method="clopper_pearson", per_element=True)
    assert [p.name for p in files] == [f"summary_{g}.csv" for g in (*GROUP_FILES, "element")]
    _, rows = _read_csv(tmp_path / "summary_overall.csv")
    assert {r["method"] for r in rows} == {"clopper_pearson"}


def test_export_summaries_errors(store_path, tmp_path, monkeypatch):
    with pytest.raises(TorchFaultError, match="csv, parquet"):
        export_summaries(store_path, tmp_path, ("xlsx",))
    with pytest.raises(TorchFaultError, match="no such store"):
        export_summaries(tmp_path / "missing.sqlite", tmp_path)
    with pytest.raises(TorchFaultError, match="Summary"):
        export_summaries(42, tmp_path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(TorchFaultError, match=r"torchfault\[parquet\]"):
        export_summaries(store_path, tmp_path / "pq", ("csv", "parquet"))
    assert not (tmp_path / "pq").exists()  # nothing written
    with pytest.raises(TorchFaultError, match=r"torchfault\[parquet\]"):
        summarize(_runs(), FAULTS).to_parquet(tmp_path / "s.parquet")


def test_cli_report_exports_summaries(store_path, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pyarrow")
    out = tmp_path / "cli"
    args = ["report", str(store_path), "--out_dir", str(out), "--export", "csv,parquet"]
    assert main(args) == 0
    assert "summary_layer.parquet" in capsys.readouterr().out.replace("\n", "")
    for fmt in ("csv", "parquet"):
        assert (out / f"runs.{fmt}").is_file()
        for group in GROUP_FILES:
            assert (out / f"summary_{group}.{fmt}").is_file()
    from_csv, _ = _read_csv(out / "summary_overall.csv")
    assert from_csv == _expected(summarize(_runs(), FAULTS, sites=SITES), "overall")
    # one format, and report's own confidence level
    out2 = tmp_path / "cli2"
    args = ["report", str(store_path), "--out_dir", str(out2), "--export", "csv"]
    assert main([*args, "--confidence", "0.99"]) == 0
    assert sorted(p.name for p in out2.glob("summary_*")) == sorted(
        f"summary_{g}.csv" for g in GROUP_FILES
    )
    _, rows = _read_csv(out2 / "summary_bit.csv")
    assert {r["confidence"] for r in rows} == {"0.99"}
    assert main(["report", str(store_path), "--export", "csv,xlsx"]) == 2
    assert "export: 'xlsx' is not valid" in capsys.readouterr().err
