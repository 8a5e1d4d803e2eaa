# SPDX-License-Identifier: MIT
"""Statistics through a real campaign: the stratified sampler, the adaptive stop over faults,
bad statistical settings refused before anything is written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from torchfault import Campaign, CampaignConfig
from torchfault.analysis import OutcomeAccumulator, SamplingDesign, summarize_store
from torchfault.config import from_dict
from torchfault.errors import ConfigError, TorchFaultError
from torchfault.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, **over) -> dict:
    cfg = {
        "name": "stats",
        "seed": 3,
        "model": {"name": f"{ROOT}/examples/my_model.py:build", "kwargs": {"seed": 0}},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 8},
        "targets": {"kinds": ["weights"]},
        "sampler": {"name": "uniform", "n": 40},
        "inputs_per_fault": 2,
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "report": False,
        "executor": {"name": "serial", "chunk_faults": 64},
    }
    for key, value in over.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def _rows(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT fault_id, input_id, outcome FROM runs ORDER BY 1, 2").fetchall()
    finally:
        con.close()


ADAPTIVE = {
    "sampler.name": "stratified",
    "sampler.n": None,
    "sampler.margin": 0.04,
    "sampler.adaptive": True,
    "sampler.max_faults": 2000,
    "sampler.adaptive_step": 40,
}


def test_stratified_adaptive_campaign_stops_on_the_fault_interval(tmp_path):
    camp = Campaign(from_dict(CampaignConfig, config(tmp_path / "a", **ADAPTIVE)))
    result = camp.run()
    sampler = camp.sampler
    assert sampler.allocated and sampler.pilot_faults == 10 * len(sampler.strata())
    faults = len(result.faults)
    assert sampler.pilot_faults < faults < 2000 and len(result) == 2 * faults
    assert (faults - sampler.pilot_faults) % 40 == 0
    # the rule, recomputed from the store: met at the stop, not one round earlier
    with ResultStore(Path(camp.config.store_path), mode="r") as store:
        acc = OutcomeAccumulator(store.faults(), design=SamplingDesign.from_sampler(sampler, 8))
        acc.update(store.iter_runs())
        summary = summarize_store(store)
    stop = acc.estimate("sdc", below=faults)
    assert (stop.high - stop.low) / 2 <= 0.04
    if faults - 40 > sampler.pilot_faults:
        before = acc.estimate("sdc", below=faults - 40)
        assert (before.high - before.low) / 2 > 0.04
    # the stored summary is the stratified one, over faults
    assert "stratified sampler" in summary.design and summary.faults == faults
    assert summary.overall.sdc.rate == pytest.approx(stop.rate)
    # resumed from a store cut after the pilot: the same faults and rows (allocation redone)
    other = config(tmp_path / "b", **ADAPTIVE)
    cut = Campaign(from_dict(CampaignConfig, other))
    cut.run()
    con = sqlite3.connect(cut.config.store_path)
    con.execute("DELETE FROM runs WHERE fault_id >= ?", (sampler.pilot_faults + 5,))
    con.execute("DELETE FROM faults WHERE fault_id >= ?", (sampler.pilot_faults + 5,))
    con.commit()
    con.close()
    Campaign(from_dict(CampaignConfig, other)).run()
    assert _rows(Path(cut.config.store_path)) == _rows(Path(camp.config.store_path))


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"sampler.name": "stratified", "sampler.allocation": "neymann"}, "sampler.allocation"),
        ({"sampler.name": "stratified", "sampler.strata": "layers"}, "sampler.strata"),
        ({"sampler.name": "stratified", "sampler.pilot": 500}, "sampler.pilot"),
        ({"sampler.pilot": 5}, "sampler.pilot"),
        ({"interval": "wilsn"}, "interval"),
        (
            {
                "sampler.n": None,
                "sampler.adaptive": True,
                "sampler.margin": 0.001,
                "sampler.max_faults": 500,
            },
            "sampler.margin",
        ),
        (
            {"sampler.name": "stratified", "sampler.bit_groups": {"x": [40]}},
            "sampler.bit_groups",
        ),
    ],
)
def test_bad_statistical_settings_name_their_field(tmp_path, over, field):
    with pytest.raises((ConfigError, TorchFaultError, ValueError)) as info:
        Campaign(from_dict(CampaignConfig, config(tmp_path, **over))).run()
    assert str(info.value).startswith(f"{field}:") or getattr(info.value, "field", None) == field
    assert field in str(info.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.sqlite"))
