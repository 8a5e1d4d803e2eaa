# SPDX-License-Identifier: MIT
"""Deviation traces against an independent per-layer re-run: for a sample of runs, each layer is
re-run alone (one hook on that layer only, a golden pass and a pass under inject) and its
deviation computed with NumPy; traces must equal it exactly. Also the first masking and first
out-of-range layers, and the per-depth aggregate, against counts by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchfault import create_sampler, fault_space, inject
from torchfault.analysis import propagation_by_depth, trace_runs
from torchfault.dnn import create_model
from torchfault.injectors import profile_ranges


@pytest.fixture(scope="module")
def setup():
    model = create_model("lenet", dataset="digits", pretrained=True).eval()
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    sampler = create_sampler(
        "uniform", sites=fault_space(model, x), n=25, seed=3, bits=[30, 27, 22]
    )
    runs = [(k, sampler.draw(k), [1, 4, 7]) for k in range(len(sampler))]
    prof = profile_ranges(model, x)
    return model, x, runs, prof


def _layer_alone(model, x, faults, name):
    """Layer ``name``'s output, golden and under ``faults`` (the hook added after inject's own,
    so a fault on this very output is seen)."""
    mod = dict(model.named_modules())[name]
    got = []

    def keep(m, a, o):
        got.append(o.detach().clone())

    with torch.no_grad():
        h = mod.register_forward_hook(keep)
        try:
            model(x)
        finally:
            h.remove()
        with inject(model, faults):
            h = mod.register_forward_hook(keep)
            try:
                model(x)
            finally:
                h.remove()
    return got[0].numpy(), got[1].numpy()


def _np_dev(g, f):
    g = g.astype(np.float64).reshape(-1)
    f = f.astype(np.float64).reshape(-1)
    same = (g == f) | (np.isnan(g) & np.isnan(f))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where(same, 0.0, np.nan_to_num(np.abs(f - g), nan=np.inf, posinf=np.inf))
        rel = np.where(same, 0.0, d / np.maximum(np.abs(g), np.finfo(np.float32).tiny))
    return float(d.max()), float(rel.max()), int((~same).sum())


def test_traces_equal_a_per_layer_rerun(setup):
    model, x, runs, prof = setup
    traces = trace_runs(model, x, runs, profile=prof)
    assert len(traces) == 25 * 3
    order = [n for n, m in model.named_modules() if n and not list(m.children())]
    sample = traces[::4]
    checked_masked = checked_oor = 0
    for t in sample:
        faults = runs[t.fault_id][1]
        # the run's own padded pass: inputs [1, 4, 7] padded with copies of input 1 to 16 rows
        ids = [1, 4, 7] + [1] * 13
        row = [1, 4, 7].index(t.input_id)
        assert [d.layer for d in t.layers] == order
        changed = []
        oor = []
        for d in t.layers:
            g, f = _layer_alone(model, x[ids], faults, d.layer)
            a, rel, c = _np_dev(g[row], f[row])
            assert (d.max_abs, d.max_rel, d.changed) == (a, rel, c), (t.fault_id, d.layer)
            changed.append(c)
            r = prof.layers[d.layer]
            with np.errstate(invalid="ignore"):
                out = bool(~((f[row] >= r.min) & (f[row] <= r.max)).all())
            assert d.out_of_range == out
            oor.append(out)
        first = next((i for i, c in enumerate(changed) if c), None)
        masked = (
            next((order[i] for i in range(first + 1, len(order)) if changed[i] == 0), None)
            if first is not None
            else None
        )
        assert t.masked_at == masked
        assert t.out_of_range_at == next((order[i] for i, o in enumerate(oor) if o), None)
        checked_masked += masked is not None
        checked_oor += t.out_of_range_at is not None
    assert checked_masked and checked_oor  # the sample holds both kinds of run


def test_propagation_by_depth_counts(setup):
    model, x, runs, prof = setup
    traces = trace_runs(model, x, runs[:8], profile=prof)
    rows = propagation_by_depth(traces)
    for r in rows:
        ds = [d for t in traces for d in t.layers if d.layer == r["layer"]]
        dev = [d.max_abs for d in ds if d.changed]
        assert r["runs"] == len(ds) and r["deviating"] == len(dev)
        assert r["max_abs"] == (max(dev) if dev else 0.0)
        assert r["masked_here"] == sum(t.masked_at == r["layer"] for t in traces)
    assert sum(r["masked_here"] for r in rows) == sum(t.masked_at is not None for t in traces)
    assert not math.isnan(rows[0]["median_abs"])


def test_run_campaign_trace_option_same_for_both_engines(setup, tmp_path):
    from torchfault import run_campaign
    from torchfault.errors import TorchFaultError

    model, x, runs, prof = setup
    faults = [r[1] for r in runs[:6]]
    path = prof.save(tmp_path / "p.json")
    ref = run_campaign(model, x[:16], faults, engine="reference", trace={"profile": str(path)})
    fast = run_campaign(model, x[:16], faults, engine="fast", trace=prof)
    assert ref.traces == fast.traces
    assert [(t.fault_id, t.input_id) for t in ref.traces] == [
        (r.fault_id, r.input_id) for r in ref.runs
    ]
    direct = trace_runs(model, x, [(k, f, range(16)) for k, f in enumerate(faults)], profile=prof)
    assert ref.traces == direct
    plain = run_campaign(model, x[:16], faults[:1], trace=True).traces
    assert all(d.out_of_range is None for t in plain for d in t.layers)
    with pytest.raises(TorchFaultError, match="trace.layer"):
        run_campaign(model, x[:16], faults[:1], trace={"layer": ["fc1"]})


def test_stored_traces_equal_run_campaign_and_old_stores_read_empty(tmp_path):
    import sqlite3

    from torchfault import Campaign
    from torchfault.analysis import read_traces
    from torchfault.store import open_store

    def cfg(out, **trace):
        return {
            "name": "tr",
            "out_dir": str(tmp_path / out),
            "sampler": {"name": "uniform", "n": 8},
            "data": {"num_inputs": 16},
            "inputs_per_fault": 2,
            "report": False,
            "progress": False,
            "trace": trace,
        }

    Campaign(cfg("old")).run()
    with open_store(tmp_path / "old" / "campaign.sqlite") as s:
        assert read_traces(s) == []
    camp = Campaign(cfg("old"))  # setup only: the profile below is of this campaign's model
    camp.setup()
    prof_path = profile_ranges(camp.model, camp.inputs).save(tmp_path / "p.json")
    camp = Campaign(cfg("new", enabled=True, profile=str(prof_path)))
    res = camp.run()
    want = trace_runs(
        camp.model,
        camp.inputs,
        [
            (k, res.faults[k], sorted(r.input_id for r in res.runs if r.fault_id == k))
            for k in sorted(res.faults)
        ],
        profile=profile_ranges(camp.model, camp.inputs),
    )
    got = sorted(res.traces, key=lambda t: (t.fault_id, t.input_id))
    assert got == sorted(want, key=lambda t: (t.fault_id, t.input_id))
    with open_store(tmp_path / "new" / "campaign.sqlite") as s:
        assert sorted(read_traces(s), key=lambda t: (t.fault_id, t.input_id)) == got
    con = sqlite3.connect(tmp_path / "new" / "campaign.sqlite")
    n_rows = con.execute("SELECT count(*) FROM traces").fetchone()[0]
    con.close()
    assert n_rows == len(got) + sum(1 for t in got for d in t.layers if d.changed or d.out_of_range)
