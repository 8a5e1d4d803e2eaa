# SPDX-License-Identifier: MIT
"""Reports: a synthetic store with known counts -> PNGs, summary.json and report.md with the numbers."""

from __future__ import annotations

import json
import sys

import pytest

from torchfault.analysis import make_report, wilson_interval
from torchfault.analysis._summary import _pct
from torchfault.cli import main
from torchfault.errors import TorchFaultError
from torchfault.faults._fault import FaultSite
from torchfault.store import FaultRecord, ResultStore, RunRecord

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
SITES = [
    FaultSite("conv1", "weight", "parameter", (4, 1, 3, 3), "float32", 32),
    FaultSite("fc", "output", "activation", (10,), "float32", 32),
]
# fault k: site k % 2, bit 30 for even k else 3; known outcome counts per fault
COUNTS = {
    0: {"sdc": 12, "masked": 28},
    1: {"masked": 30, "benign": 5},
    2: {"due": 4, "sdc": 6},
    3: {"masked": 15},
}


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "runs" / "campaign.sqlite"
    with ResultStore(path, campaign={"seed": 5, "sampler": {"n": 4}}, fingerprint="f00d") as s:
        s.set_sites(SITES)
        faults = []
        for k in COUNTS:
            site = SITES[k % 2]
            faults.append(
                FaultRecord(k, (site.fault((0,) * len(site.shape), (30 if k % 2 == 0 else 3,)),))
            )
        s.add_faults(faults)
        i = 0
        for k, counts in COUNTS.items():
            for outcome, c in counts.items():
                for _ in range(c):
                    s.add_runs([RunRecord(k, i, outcome, 1, 1, 0.0, 0.01)])
                    i += 1
    return path


def test_report_files_and_numbers(store_path, tmp_path):
    files = make_report(store_path, tmp_path / "out")
    names = [p.name for p in files]
    assert names == [
        "rate_per_layer.png",
        "rate_per_bit.png",
        "outcome_mix.png",
        "summary.json",
        "report.md",
    ]
    for p in files[:3]:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 2000
    summary = json.loads(files[3].read_text())
    # 100 runs: sdc 18, due 4, masked 73, benign 5; but 4 faults, the sampling units
    assert summary["overall"]["counts"] == {"masked": 73, "benign": 5, "sdc": 18, "due": 4}
    # SDC fractions of the 4 faults (40, 35, 10 and 15 runs): the rate is their mean; the
    # interval is Clopper-Pearson over the two-stage variance (population: 46 x 32 faults of
    # the uniform sampler; 100 inputs), computed here by hand
    y, m = [12 / 40, 0.0, 6 / 10, 0.0], [40, 35, 10, 15]
    p = sum(y) / 4
    f = 4 / (46 * 32)
    s2 = max(sum((v - p) ** 2 for v in y) / 3, p * (1 - p) * 4 / 3)  # >= one trial per fault
    within = sum((1 - mi / 100) * v * (1 - v) / (mi - 1) for v, mi in zip(y, m))
    n_eff = p * (1 - p) / ((1 - f) * s2 / 4 + f * within / 16) * 4 / 3
    beta = pytest.importorskip("scipy.stats").beta
    low = float(beta.ppf(0.025, p * n_eff, n_eff - p * n_eff + 1))
    high = float(beta.ppf(0.975, p * n_eff + 1, n_eff - p * n_eff))
    sdc = summary["overall"]["rates"]["sdc"]
    assert (sdc["rate"], sdc["faults"]) == (pytest.approx(0.225), 4)
    assert (sdc["low"], sdc["high"]) == (
        pytest.approx(low, abs=1e-9),
        pytest.approx(high, abs=1e-9),
    )
    assert high - low > 2 * (wilson_interval(18, 100)[1] - wilson_interval(18, 100)[0])
    layers = {r["key"]: r for r in summary["by_layer"]}
    assert layers["conv1"]["counts"]["sdc"] == 18 and layers["conv1"]["n"] == 50
    assert layers["fc"]["counts"] == {"masked": 45, "benign": 5, "sdc": 0, "due": 0}
    bits = {r["key"]: r["n"] for r in summary["by_bit"]}
    assert bits == {3: 50, 30: 50}
    md = files[4].read_text()
    assert f"**SDC rate 22.50% [{_pct(low)}, {_pct(high)}]**" in md
    # conv1: faults 0 and 2, fractions 0.3 and 0.6 -> 45 %
    assert "| sdc | 18 | 22.50% |" in md and "| conv1 | 2 | 50 | 45.00%" in md
    for name in names[:3]:
        assert f"]({name})" in md
    assert "f00d" in md and '"seed": 5' in md


def test_report_default_dir_and_clopper_pearson(store_path):
    files = make_report(store_path, method="clopper_pearson", confidence=0.99)
    assert all(p.parent == store_path.parent for p in files)
    assert "99% Clopper-Pearson" in files[-1].read_text()


def test_report_without_matplotlib(store_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(TorchFaultError, match=r"torchfault\[plot\]"):
        make_report(store_path)


def test_report_missing_store(tmp_path):
    with pytest.raises(TorchFaultError, match="no such file"):
        make_report(tmp_path / "nope.sqlite")


def test_cli_report(store_path, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(["report", str(store_path), "--out_dir", str(out), "--export", "[csv, parquet]"]) == 0
    )
    text = capsys.readouterr().out
    assert "Outcomes of 100 runs" in text and "report.md" in text
    assert (out / "report.md").is_file() and (out / "runs.csv").read_text().count("\n") == 101
    assert (out / "runs.parquet").read_bytes()[:4] == b"PAR1"
    assert main(["report", str(tmp_path / "missing.sqlite")]) == 2
    assert "store: no such file" in capsys.readouterr().err
    assert main(["report", str(store_path), "--confidence", "1.5"]) == 2
    assert "confidence" in capsys.readouterr().err
    assert main(["report", str(store_path), "--method", "exact"]) == 2
    assert main(["report", "--print_config"]) == 0
