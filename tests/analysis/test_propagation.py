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

from torchfault import Fault, create_sampler, fault_space, inject
from torchfault.analysis import layer_deviations, propagation_by_depth, trace_runs
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


def _plain_deviation(g, f):
    """The definition, plainly: everything in float64 over whole rows, same elements zeroed."""
    n = g.shape[0]
    g2, f2 = g.reshape(n, -1).double(), f.reshape(n, -1).double()
    same = (g2 == f2) | (torch.isnan(g2) & torch.isnan(f2))
    diff = (f2 - g2).abs()
    diff = torch.where(same, torch.zeros_like(diff), torch.nan_to_num(diff, nan=math.inf))
    rel = diff / g2.abs().clamp_min(torch.finfo(torch.float32).tiny)
    rel = torch.where(same, torch.zeros_like(rel), rel)
    return [
        (float(a), float(r), int(c), None)
        for a, r, c in zip(diff.amax(1).tolist(), rel.amax(1).tolist(), (~same).sum(1).tolist())
    ]


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8],
)
def test_deviation_equals_its_plain_definition(dtype):
    """layer_deviations computes equality in the tensor's own dtype and, with few elements
    changed, only those elements' deviations: the same values as the plain definition, for
    signed zeros, infinities, NaNs (golden or faulty), subnormals and huge values, integers that
    float64 cannot tell apart, sparse and dense changes; its inputs are left as they were."""
    gen = torch.Generator().manual_seed(int(str(dtype).__hash__() % 1000))
    special = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 1e-45, 1e-40, 3e38, -3e38, 2.5]
    )
    for trial in range(400):
        n, k = 1 + trial % 5, 1 + (trial * 7) % 40
        if dtype.is_floating_point:
            g = special[torch.randint(len(special), (n, k), generator=gen)].to(dtype)
            f = special[torch.randint(len(special), (n, k), generator=gen)].to(dtype)
        else:
            big = 2**62 if dtype is torch.int64 else 100
            g = torch.randint(0, big, (n, k), generator=gen, dtype=torch.int64).to(dtype)
            f = g + torch.randint(0, 3, (n, k), generator=gen, dtype=torch.int64).to(dtype)
        keep = torch.rand(n, k, generator=gen) < (0.9 if trial % 2 else 0.3)  # sparse, dense
        f = torch.where(keep, g, f)
        g0, f0 = g.clone(), f.clone()
        assert repr(layer_deviations(g, f)) == repr(_plain_deviation(g, f)), (g, f)
        for t, t0 in ((g, g0), (f, f0)):  # bit for bit (NaNs included)
            assert torch.equal(t.view(torch.uint8), t0.view(torch.uint8))


class _Twice(torch.nn.Module):
    """``act`` called twice, on 8 then 3 features."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.act(self.b(self.act(self.a(x))))


def test_a_crash_before_a_layers_last_call_leaves_that_layer_out():
    """A fault whose index does not fit the second call of a module called twice raises there:
    the faulty pass kept the first call's output, which is not the (last) call golden holds, so
    that layer is left out of the trace, like the layers after the crash (it used to be compared
    with golden's, and trace_runs failed on the shapes: a traced campaign stopped there)."""
    torch.manual_seed(0)
    model = _Twice().eval()
    x = torch.randn(3, 4)
    bad = Fault("act", "output", (5,), (30,), call=1)
    (t,) = trace_runs(model, x, [(0, [bad], [1])])
    assert [d.layer for d in t.layers] == ["a", "b"]
    good = Fault("act", "output", (1,), (30,), call=1)
    (t,) = trace_runs(model, x, [(0, [good], [1])])
    assert [d.layer for d in t.layers] == ["a", "b", "act"] and t.layers[2].changed == 1
