# SPDX-License-Identifier: MIT
"""A campaign records in its store whether it is running, stopped unfinished or complete, and
reports made of the store say so (end to end: a real campaign, interrupted, then resumed)."""

from __future__ import annotations

import pytest

from torchfault.analysis import make_report, store_state
from torchfault.campaign import Campaign, CampaignConfig
from torchfault.store import ResultStore, open_store


def _state(path):
    with open_store(path) as store:
        return store_state(store.meta(), store.count_runs())


def test_running_then_stopped_then_complete(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    cfg = CampaignConfig(name="s", out_dir=str(tmp_path / "run"), progress=False)
    cfg.sampler.n, cfg.data.num_inputs, cfg.executor.chunk_faults = 30, 10, 5
    path = tmp_path / "run" / "campaign.sqlite"
    seen = []
    original = ResultStore.add_runs

    def add_runs(self, records):
        original(self, records)
        self.flush()
        seen.append(_state(path))  # what a report made now, from another connection, sees
        if len(seen) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultStore, "add_runs", add_runs)
    with pytest.raises(KeyboardInterrupt):
        Campaign(cfg).run()
    assert [s.status for s in seen] == ["running", "running"]
    assert seen[0].planned == 30 and seen[0].runs == 5 and seen[1].runs == 10
    stopped = _state(path)
    assert (stopped.status, stopped.runs, stopped.planned) == ("stopped", 10, 30)
    make_report(path, tmp_path / "partial")
    md = (tmp_path / "partial" / "report.md").read_text()
    assert "stopped before it finished: 10 of 30 planned runs stored" in md

    monkeypatch.setattr(ResultStore, "add_runs", original)
    Campaign(cfg).run()  # resumes and finishes
    done = _state(path)
    assert (done.status, done.runs, done.message()) == ("complete", 30, "")
    make_report(path, tmp_path / "full")
    assert "stopped before" not in (tmp_path / "full" / "report.md").read_text()
