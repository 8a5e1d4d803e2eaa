# SPDX-License-Identifier: MIT
"""One table of runs: a stored campaign's export and ``run_campaign``'s ``CampaignResult`` write
the same columns and, for the same faults on the same inputs, the same rows (but ``seconds``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from torchfault import Campaign, CampaignConfig, Fault, run_campaign
from torchfault.config import from_dict
from torchfault.store import RUN_COLUMNS, open_store

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path):
    return {
        "name": "table",
        "seed": 5,
        "model": {"name": f"{ROOT}/examples/my_model.py:build", "kwargs": {"seed": 0}},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 3},
        "targets": {"kinds": ["outputs", "weights", "biases"]},
        "sampler": {"name": "uniform", "n": 8},
        "inputs_per_fault": 3,
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "report": False,
        "executor": {"name": "serial"},
    }


def _csv(path):
    with Path(path).open(newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _without_seconds(header, rows):
    at = header.index("seconds")
    return [row[:at] + row[at + 1 :] for row in rows]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    camp = Campaign(from_dict(CampaignConfig, _config(tmp)))
    stored = camp.run()
    x = camp.inputs[list(camp.input_ids)]
    faults = [stored.faults[k] for k in sorted(stored.faults)]
    memory = run_campaign(camp.model, x, faults, engine="reference")
    return camp.config.store_path, stored, memory, tmp


def test_store_export_and_campaign_result_write_the_same_table(both):
    store_path, stored, memory, tmp = both
    assert len(memory) == len(stored) == 8 * 3
    with open_store(store_path) as store:
        exported = _csv(store.export_csv(tmp / "store.csv"))
    from_memory = _csv(memory.to_csv(tmp / "memory.csv"))
    from_stored = _csv(stored.to_csv(tmp / "stored.csv"))
    assert exported[0] == from_memory[0] == from_stored[0] == list(RUN_COLUMNS)
    assert "kind" in RUN_COLUMNS and "faults" in RUN_COLUMNS and "bits" not in RUN_COLUMNS
    want = _without_seconds(*exported)
    assert _without_seconds(*from_memory) == want
    assert _without_seconds(*from_stored) == want
    # the oracle for the fault columns: the faults themselves
    at = {c: i for i, c in enumerate(RUN_COLUMNS)}
    for row in exported[1]:
        fs = stored.faults[int(row[at["fault_id"]])]
        assert [Fault.from_dict(d) for d in json.loads(row[at["faults"]])] == list(fs)
        assert (row[at["module"]], row[at["target"]], int(row[at["bit"]])) == (
            fs[0].module,
            fs[0].target,
            fs[0].bits[0],
        )
    assert {row[at["kind"]] for row in exported[1]} <= {"activation", "parameter"}


def test_parquet_tables_are_the_same(both):
    pq = pytest.importorskip("pyarrow.parquet")
    store_path, _, memory, tmp = both
    with open_store(store_path) as store:
        exported = pq.read_table(store.export_parquet(tmp / "store.parquet"))
    from_memory = pq.read_table(memory.to_parquet(tmp / "memory.parquet"))
    assert exported.schema == from_memory.schema
    assert tuple(exported.column_names) == RUN_COLUMNS
    keep = [c for c in RUN_COLUMNS if c != "seconds"]
    assert exported.select(keep).to_pylist() == from_memory.select(keep).to_pylist()
    assert from_memory.to_pylist() == memory.rows()
