# SPDX-License-Identifier: MIT
"""The propagation and vulnerability sections of report.html and report.md: on a small stored
campaign with traces, every number shown equals the analysis functions' output
(propagation_by_depth, propagation_by_group, vulnerability_maps) and the per-layer deviating
counts equal a count of the store's raw traces table (an independent oracle)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from torchfault.analysis import (
    make_html_report,
    make_report,
    propagation_by_depth,
    propagation_by_group,
    read_traces,
    vulnerability_maps,
)
from torchfault.analysis._sections import TOP_CELLS, _slug
from torchfault.analysis._summary import _pct
from torchfault.errors import TorchFaultError
from torchfault.store import open_store

from .test_html import _Page


def _campaign(root: Path, trace: bool) -> Path:
    """A small stored campaign (pretrained LeNet-5, 40 faults on bits 30/26/22 x 4 inputs),
    written from run_campaign's result as a campaign writes it: sites, faults, runs and, with
    ``trace``, the traces against a golden range profile."""
    import torch

    from torchfault import create_sampler, fault_space, run_campaign
    from torchfault.analysis import trace_rows
    from torchfault.dnn import create_model
    from torchfault.injectors import profile_ranges
    from torchfault.store import FaultRecord, ResultStore, write_traces

    model = create_model("lenet", dataset="digits", pretrained=True).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sites = fault_space(model, x)
    sampler = create_sampler("uniform", sites=sites, n=40, seed=7, bits=[30, 26, 22])
    faults = [sampler.draw(k) for k in range(len(sampler))]
    prof = profile_ranges(model, x) if trace else None
    res = run_campaign(model, x, faults, trace=prof if trace else None)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "campaign.sqlite"
    with ResultStore(path, campaign={"seed": 7}, fingerprint="f") as s:
        s.set_sites(sites)
        s.add_faults([FaultRecord(k, tuple(f)) for k, f in enumerate(faults)])
        s.add_runs(res.runs)
        if trace:
            layers = [d.layer for d in res.traces[0].layers]
            write_traces(s, layers, trace_rows(res.traces, layers))
    return path


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    return _campaign(tmp_path_factory.mktemp("traced"), True)


def _dev(x: float) -> str:
    return f"{x:.3g}"


def _depth_rows(rows, group=None):
    return [
        ([group] if group is not None else [])
        + [
            str(d),
            r["layer"],
            f"{r['runs']:,}",
            f"{r['deviating']:,}",
            _pct(r["deviating"] / r["runs"]) if r["runs"] else "n/a",
            _dev(r["median_abs"]),
            _dev(r["max_abs"]),
            f"{r['masked_here']:,}",
            f"{r['out_of_range_here']:,}",
        ]
        for d, r in enumerate(rows)
    ]


def _expected(store_path):
    with open_store(store_path) as s:
        traces = read_traces(s)
        kinds = {(x.module, x.target): x.kind for x in s.sites()}
        shapes = {(x.module, x.target): x.shape for x in s.sites()}
        groups = propagation_by_group(traces, s.faults(), kinds)
        maps = vulnerability_maps(s, by="channel", shapes=shapes)
    return traces, propagation_by_depth(traces), groups, maps


def test_sections_show_the_analysis_numbers(traced, tmp_path):
    pytest.importorskip("matplotlib")
    traces, rows, groups, maps = _expected(traced)
    assert len(traces) == 160 and maps
    # independent oracle: runs deviating at each depth counted from the raw stored rows
    con = sqlite3.connect(traced)
    raw = dict(
        con.execute(
            "SELECT depth, count(*) FROM traces WHERE depth >= 0 AND changed > 0 GROUP BY depth"
        ).fetchall()
    )
    con.close()
    assert [r["deviating"] for r in rows] == [raw.get(d, 0) for d in range(len(rows))]
    assert sum(len(g) and g[0]["runs"] for g in groups.values()) == len(traces)

    files = make_report(traced, tmp_path, html=True, vulnerability="channel")
    names = {p.name for p in files}
    assert "report.html" in names and "report.md" in names
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.tables["table-propagation"] == _depth_rows(rows)
    want_groups = [
        row for key, g in groups.items() for row in _depth_rows(g, f"{key[0]}, bit {key[1]}")
    ]
    assert page.tables["table-propagation-groups"] == want_groups
    text = (tmp_path / "report.html").read_text()
    masks = sorted(((r["layer"], r["masked_here"]) for r in rows if r["masked_here"]),
                   key=lambda t: -t[1])  # fmt: skip
    assert masks, "a campaign of 160 runs on LeNet has runs masked by a ReLU or pool"
    assert "Layers that mask: " + ", ".join(f"{n} ({k:,} runs)" for n, k in masks) in text
    assert 'id="plot-propagation"' in text and 'href="#propagation"' in text
    for (module, target), vm in maps.items():
        got = page.tables[f"table-vulnerability-{_slug(module, target)}"]
        want = [
            [
                f"{module}.{target}",
                " ".join(map(str, c.index)),
                f"{c.runs:,}",
                f"{c.faults:,}",
                f"{c.hits:,}",
                _pct(c.rate),
                f"[{_pct(c.low)}, {_pct(c.high)}]",
            ]
            for c in vm.top(TOP_CELLS)
        ]
        assert got == want and got
        assert f'id="heatmap-{_slug(module, target)}"' in text
        assert (tmp_path / f"heatmap_{_slug(module, target)}.png").stat().st_size > 1000
    # report.md: the same rows as Markdown
    md = (tmp_path / "report.md").read_text()
    assert "## Propagation" in md and "## Vulnerability" in md
    for r in _depth_rows(rows):
        assert "| " + " | ".join(r) + " |" in md
    for key, g in groups.items():
        for r in _depth_rows(g, f"{key[0]}, bit {key[1]}"):
            assert "| " + " | ".join(r) + " |" in md
    for vm in maps.values():
        for c in vm.top(TOP_CELLS):
            line = (
                f"| {' '.join(map(str, c.index))} | {c.runs:,} | {c.faults:,} | {c.hits:,} | "
                f"{_pct(c.rate)} | [{_pct(c.low)}, {_pct(c.high)}] |"
            )
            assert line in md
    assert (tmp_path / "propagation.png").stat().st_size > 1000


def test_no_traces_no_propagation_and_vulnerability_only_when_asked(tmp_path):
    pytest.importorskip("matplotlib")
    plain = _campaign(tmp_path / "plain", False)
    text = make_html_report(plain, tmp_path / "r.html").read_text()
    assert 'id="propagation"' not in text and 'id="vulnerability"' not in text
    make_report(plain, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Propagation" not in md and "## Vulnerability" not in md
    assert not list((tmp_path / "out").glob("heatmap_*.png"))
    with pytest.raises(TorchFaultError, match="vulnerability: 'row'") as e:
        make_report(plain, tmp_path / "bad", html=True, vulnerability="row")
    assert e.value.field == "vulnerability" and not (tmp_path / "bad").exists()
    with pytest.raises(TorchFaultError, match="vulnerability"):
        make_html_report(plain, tmp_path / "bad.html", vulnerability="row")
    assert not (tmp_path / "bad.html").exists()
