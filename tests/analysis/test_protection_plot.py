# SPDX-License-Identifier: MIT
"""plot_protection and the report's Protection plot: on a small protected campaign (its store and
the protection.json a campaign writes beside it), the bars drawn (read back from the figure's
artists) are the file's rates, and their interval bars are the intervals of counts made here
from the stored runs (without) and the file's runs (with, flagged): an independent oracle.
report.md gets the section and protection.png, report.html the inline plot; bad files are
refused naming the file."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from torchfault import create_sampler, fault_space, run_campaign
from torchfault.analysis import (
    interval,
    make_html_report,
    make_report,
    plot_protection,
    protection_rates,
)
from torchfault.errors import TorchFaultError
from torchfault.injectors import profile_ranges
from torchfault.store import FaultRecord, ResultStore, open_store

PNG = b"\x89PNG\r\n\x1a\n"


def _net() -> nn.Sequential:
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.ReLU(),
        nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    """A store of 60 faults x 20 inputs and, beside it, protection.json as Campaign._protect
    writes it (ranger profiled on 6 of the inputs, so that some fault-free inputs are flagged)."""
    model = _net()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 1, 6, 6, generator=g)
    sites = fault_space(model, x)
    sampler = create_sampler("uniform", sites=sites, n=60, seed=2, bits=[30, 29, 27, 23])
    faults = [sampler.draw(k) for k in range(len(sampler))]
    res = run_campaign(
        model, x, faults, protection={"name": "ranger", "profile": profile_ranges(model, x[:6])}
    )
    root = tmp_path_factory.mktemp("protected")
    with ResultStore(root / "campaign.sqlite", campaign={"seed": 2}, fingerprint="f") as s:
        s.set_sites(sites)
        s.add_faults([FaultRecord(k, tuple(f)) for k, f in enumerate(faults)])
        s.add_runs(res.runs)
    summary = res.protection.summary()
    doc = {
        "protection": {"name": "ranger", "profile": "r.json"},
        "summary": {k: None if isinstance(v, float) and math.isnan(v) else v
                    for k, v in summary.items()},
        "runs": [[r.fault_id, r.input_id, r.outcome, r.flagged, r.correct]
                 for r in res.protection.runs],
    }  # fmt: skip
    (root / "protection.json").write_text(json.dumps(doc, indent=1))
    return root / "campaign.sqlite"


def _counts(store_path: Path) -> dict[str, int]:
    """k of each rate, counted here: without from the store's runs, with from the file's."""
    doc = json.loads((store_path.parent / "protection.json").read_text())
    with open_store(store_path) as s:
        without = Counter(r.outcome for r in s.iter_runs())
    with_ = Counter(r[2] for r in doc["runs"])
    return {
        "n": len(doc["runs"]),
        "sdc_without": without["sdc"],
        "sdc_with": with_["sdc"],
        "due_without": without["due"],
        "due_with": with_["due"],
        "flagged": sum(bool(r[3]) for r in doc["runs"]),
    }


def _drawn(monkeypatch, fn):
    """Run ``fn`` and return the figures it saved (their artists read back)."""
    from matplotlib.figure import Figure

    figs = []
    original = Figure.savefig

    def recording(self, *args, **kwargs):
        figs.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    fn()
    return figs


def _bars(ax):
    """``(x, height, err_low, err_high)`` of every bar of ``ax`` (error bars where drawn)."""
    out = []
    for c in ax.containers:
        if not hasattr(c, "patches"):
            continue
        segs = c.errorbar.lines[2][0].get_segments() if c.errorbar is not None else None
        for i, p in enumerate(c.patches):
            x = p.get_x() + p.get_width() / 2
            lo = hi = None
            if segs is not None:
                (_, lo), (_, hi) = segs[i]
            out.append((round(x, 6), p.get_height(), lo, hi))
    return sorted(out)


@pytest.mark.parametrize("method", ["clopper_pearson", "wilson"])
def test_bars_are_the_files_rates_with_intervals_of_counts_made_here(
    campaign, tmp_path, monkeypatch, method
):
    pytest.importorskip("matplotlib")
    k = _counts(campaign)
    doc = json.loads((campaign.parent / "protection.json").read_text())
    s = doc["summary"]
    n = k["n"]
    assert n == s["runs"] == 1200
    assert k["sdc_without"] > k["sdc_with"] and k["flagged"] > 0 and k["due_without"] > 0
    # the file's rates are the counts made here over the runs
    for key in ("sdc_without", "sdc_with", "due_without", "due_with"):
        assert s[key] == k[key] / n
    assert s["detection_rate"] == k["flagged"] / n
    assert s["false_positive_rate"] > 0  # profiled on 6 of the 20 inputs

    out = tmp_path / "p.png"
    (fig,) = _drawn(
        monkeypatch, lambda: plot_protection(campaign.parent, out, method=method)
    )  # the run folder: protection.json in it
    assert out.read_bytes()[:8] == PNG
    left, right = fig.axes

    def ci(key):
        lo, hi = interval(k[key], n, 0.95, method)
        return pytest.approx(100 * lo, abs=1e-9), pytest.approx(100 * hi, abs=1e-9)

    drawn = _bars(left)
    # without: SDC then DUE left of their group's centre; with: right of it
    want = [("sdc_without", -1), ("sdc_with", 0), ("due_without", 1), ("due_with", 2)]
    assert len(drawn) == 4
    for (_, height, lo, hi), (key, _) in zip(drawn, want):
        assert height == pytest.approx(100 * s[key], abs=1e-12)
        assert (lo, hi) == ci(key)
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert labels == ["without", "with ranger"]
    (det, fp) = _bars(right)
    assert det[1] == pytest.approx(100 * k["flagged"] / n) and (det[2], det[3]) == ci("flagged")
    # false positives: over the 20 fault-free inputs, with the interval of their counts
    assert (s["false_positives"], s["fault_free_inputs"]) == (
        round(20 * s["false_positive_rate"]),
        20,
    )
    assert fp[1] == pytest.approx(100 * s["false_positive_rate"])
    lo, hi = interval(s["false_positives"], 20, 0.95, method)
    assert (fp[2], fp[3]) == (pytest.approx(100 * lo, abs=1e-9), pytest.approx(100 * hi, abs=1e-9))
    ticks = [t.get_text() for t in right.get_xticklabels()]
    assert ticks[1] == f"fault-free inputs\nflagged\n({s['false_positives']} of 20)"
    # the function's numbers are the same ones
    r = protection_rates(campaign.parent / "protection.json", method=method)
    assert (r.sdc[0].k, r.sdc[1].k, r.due[0].k, r.due[1].k, r.detection.k) == (
        k["sdc_without"], k["sdc_with"], k["due_without"], k["due_with"], k["flagged"]
    )  # fmt: skip
    assert (r.sdc[1].low, r.sdc[1].high) == pytest.approx(interval(k["sdc_with"], n, 0.95, method))


def test_report_md_and_html_show_the_plot(campaign, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    make_report(campaign, out, html=True)
    md = (out / "report.md").read_text()
    assert "## Protection" in md and "](protection.png)" in md
    assert (out / "protection.png").read_bytes()[:8] == PNG
    r = protection_rates(campaign.parent)  # the report's default interval: Clopper-Pearson
    assert f"| SDC rate | {r.sdc[0].format()} | {r.sdc[1].format()} |" in md
    assert f"| DUE rate | {r.due[0].format()} | {r.due[1].format()} |" in md
    assert f"- faulty runs flagged (detection rate): {r.detection.format()}" in md
    # the page: the plot inline, drawn with the page's interval method (Wilson by default)
    figs = _drawn(monkeypatch, lambda: make_html_report(campaign, tmp_path / "r.html"))
    text = (tmp_path / "r.html").read_text()
    assert 'id="plot-protection"' in text and 'href="#protection"' in text
    titles = [f._suptitle.get_text() for f in figs if f._suptitle is not None]
    assert titles == [
        "Protection ranger: 1,200 runs; 95% Wilson intervals over runs (false positives: over "
        "fault-free inputs)"
    ]
    fp = protection_rates(campaign.parent, method="wilson").false_positive_interval
    assert f"fault-free inputs flagged (false positives): {fp.format()} ({fp.k} of 20 inputs)" in (
        text
    )
    # report.md: Clopper-Pearson, the report's default
    fp = r.false_positive_interval
    assert fp.k == round(20 * fp.rate) > 0 and fp.n == 20
    assert (
        f"- fault-free inputs flagged (false positives): {fp.format()} ({fp.k} of 20 inputs)" in md
    )


def test_no_file_no_section_and_bad_files_are_named(campaign, tmp_path):
    pytest.importorskip("matplotlib")
    # a store without protection.json: no section, no plot
    plain = tmp_path / "plain" / "campaign.sqlite"
    plain.parent.mkdir()
    plain.write_bytes(campaign.read_bytes())
    make_report(plain, tmp_path / "out")
    assert "## Protection" not in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "protection.png").exists()
    with pytest.raises(TorchFaultError, match="no such file") as e:
        plot_protection(plain.parent, tmp_path / "x.png")
    assert e.value.field == "protection" and not (tmp_path / "x.png").exists()
    # a broken file: plot_protection names it; the report says so and goes on
    (plain.parent / "protection.json").write_text("{not json")
    with pytest.raises(TorchFaultError, match="protection.json' could not be read"):
        plot_protection(plain.parent / "protection.json", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    make_report(plain, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Protection" in md and "protection.json could not be read" in md
    assert not (tmp_path / "out" / "protection.png").exists()
    with pytest.raises(TorchFaultError, match="'sdc_with' must be a rate"):
        plot_protection({"runs": 10, "sdc_with": 1.5}, tmp_path / "x.png")
    with pytest.raises(TorchFaultError, match="'runs' must be a count"):
        plot_protection({"runs": -1}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval by its textbook formula (Wilson 1927), for the oracle."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize("k, n", [(0, 64), (0, 1), (1, 64), (3, 20), (20, 20), (7, 360)])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_false_positive_interval_against_scipy_and_the_wilson_formula(k, n, confidence):
    """The false-positive rate's interval is the binomial interval of k flagged of n fault-free
    inputs: SciPy's exact (Clopper-Pearson) interval, and the Wilson formula written out here."""
    stats = pytest.importorskip("scipy.stats")
    from statistics import NormalDist

    s = {"runs": 10, "false_positive_rate": k / n, "false_positives": k, "fault_free_inputs": n}
    cp = protection_rates(s, confidence=confidence).false_positive_interval
    want = stats.binomtest(k, n).proportion_ci(confidence, method="exact")
    assert (cp.k, cp.n, cp.rate) == (k, n, k / n)
    assert cp.low == pytest.approx(want.low, abs=1e-9)
    assert cp.high == pytest.approx(want.high, abs=1e-9)
    if k == 0:
        assert cp.low == 0.0 and cp.high == pytest.approx(1 - ((1 - confidence) / 2) ** (1 / n))
    w = protection_rates(s, confidence=confidence, method="wilson").false_positive_interval
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    assert (w.low, w.high) == pytest.approx(_wilson(k, n, z), abs=1e-12)
    assert (w.low, w.high) == pytest.approx(
        tuple(stats.binomtest(k, n).proportion_ci(confidence, method="wilson")), abs=1e-12
    )


def test_old_summary_without_counts_still_renders(campaign, tmp_path, monkeypatch):
    """A protection.json written before the summary held the counts: the false-positive rate is
    read and shown as it is, without an interval, in the plot, report.md and report.html."""
    pytest.importorskip("matplotlib")
    old = tmp_path / "old" / "campaign.sqlite"
    old.parent.mkdir()
    old.write_bytes(campaign.read_bytes())
    doc = json.loads((campaign.parent / "protection.json").read_text())
    fp = doc["summary"].pop("false_positives") / doc["summary"].pop("fault_free_inputs")
    assert fp == doc["summary"]["false_positive_rate"] > 0
    (old.parent / "protection.json").write_text(json.dumps(doc))
    r = protection_rates(old.parent)
    assert r.false_positive == fp and r.false_positive_interval is None
    (fig,) = _drawn(monkeypatch, lambda: plot_protection(old.parent, tmp_path / "p.png"))
    (_, bar) = _bars(fig.axes[1])
    assert bar[1] == pytest.approx(100 * fp) and bar[2] is None  # no interval drawn
    assert fig._suptitle.get_text().endswith("intervals over runs")
    make_report(old, tmp_path / "rep", html=True)
    md = (tmp_path / "rep" / "report.md").read_text()
    from torchfault.analysis._summary import _pct

    assert f"- fault-free inputs flagged (false positives): {_pct(fp)}\n" in md
    text = (tmp_path / "rep" / "report.html").read_text()
    assert f"fault-free inputs flagged (false positives): {_pct(fp)}</li>" in text


def test_bad_false_positive_counts_are_refused():
    pytest.importorskip("matplotlib")
    s = {"runs": 10, "false_positives": 5, "fault_free_inputs": 4}
    with pytest.raises(TorchFaultError, match="'false_positives' \\(5\\) exceeds"):
        protection_rates(s)
    with pytest.raises(TorchFaultError, match="'fault_free_inputs' must be a count"):
        protection_rates({"runs": 10, "false_positives": 0, "fault_free_inputs": -1})
    assert (
        protection_rates(
            {"runs": 10, "false_positives": 0, "fault_free_inputs": 0}
        ).false_positive_interval
        is None
    )
