# SPDX-License-Identifier: MIT
"""Injected values of campaign runs: run_campaign on both engines and the stored campaign give
the values injected_values reads for each run alone; parameter faults are stored once per fault;
a store without the table (an older store, or the option off) reads empty, resumes, and passes
store check; the option is on by default in a stored campaign, off in run_campaign."""

from __future__ import annotations

import sqlite3

import torch

from torchfault import Campaign, create_sampler, fault_space, run_campaign
from torchfault.dnn import create_model
from torchfault.injectors import injected_values
from torchfault.store import check_store, open_store, read_injected


def _per_run_oracle(model, x, result):
    want = {}
    for r in result.runs:
        faults = result.faults[r.fault_id]
        # the input alone, in a pass of MIN_ROWS copies (the engines' smallest pass)
        want[(r.fault_id, r.input_id)] = injected_values(model, faults, x[[r.input_id] * 16])[0]
    return want


def test_run_campaign_values_equal_each_run_alone_on_both_engines():
    model = create_model("lenet", dataset="digits", pretrained=True).eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sampler = create_sampler("uniform", sites=fault_space(model, x), n=30, seed=1)
    faults = [sampler.draw(k) for k in range(len(sampler))]
    ref = run_campaign(model, x, faults, engine="reference", injected_values=True)
    fast = run_campaign(model, x, faults, engine="fast", injected_values=True)
    assert ref.injected == fast.injected
    assert ref.injected == _per_run_oracle(model, x, ref)
    assert len(ref.injected) == len(ref.runs) == 30 * 16
    assert all(len(p) == len(ref.faults[k[0]]) for k, p in ref.injected.items())
    assert run_campaign(model, x, faults[:2]).injected is None


def _cfg(tmp_path, injected):
    """A small stored campaign; ``injected=None`` leaves the option at its default (on)."""
    cfg = {
        "name": "inj",
        "out_dir": str(tmp_path / "run"),
        "sampler": {"name": "uniform", "n": 10},
        "data": {"num_inputs": 16},
        "inputs_per_fault": 2,
        "report": False,
        "progress": False,
        "injected_values": injected,
    }
    if injected is None:
        del cfg["injected_values"]
    return cfg


def test_stored_values_old_stores_and_resume(tmp_path):
    # an older store: written without the option (no table)
    Campaign(_cfg(tmp_path, False)).run()
    path = tmp_path / "run" / "campaign.sqlite"
    with open_store(path) as s:
        assert read_injected(s) == {}
    # the option resumes it (not part of the identity): every run is done, none gets values
    res = Campaign(_cfg(tmp_path, True)).run()
    assert res.injected == {} and len(res.runs) == 20
    # a fresh store gets every run's values by default, equal to each run alone
    cfg = _cfg(tmp_path, None)
    cfg["out_dir"] = str(tmp_path / "run2")
    camp = Campaign(cfg)
    res = camp.run()
    path = tmp_path / "run2" / "campaign.sqlite"
    new = {(r.fault_id, r.input_id) for r in res.runs}
    assert res.injected == _per_run_oracle(camp.model, camp.inputs, res)
    assert set(res.injected) == new and len(new) == 20
    with open_store(path) as s:
        assert read_injected(s) == res.injected
    # parameter faults: one row per fault (input_id -1), activation faults one per run
    con = sqlite3.connect(path)
    rows = con.execute("SELECT fault_id, input_id FROM injected").fetchall()
    con.close()
    for fid in {f for f, _ in rows}:
        kinds = {f.target for f in res.faults[fid]}
        ids = [i for f, i in rows if f == fid]
        assert (
            ids == [-1]
            if not kinds & {"output", "input"}
            else sorted(ids) == sorted(i for f, i in new if f == fid)
        )
    assert check_store(path).ok
