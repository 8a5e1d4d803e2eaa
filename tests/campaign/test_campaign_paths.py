# SPDX-License-Identifier: MIT
"""Campaign paths through a config: margin-sized samples, only-correct inputs, every sampler,
the top-k and tolerance criteria on both engines; and the table of runs of a result."""

from __future__ import annotations

import csv
import json
import sqlite3
import sys

import pytest

import torchfault
from torchfault import Campaign, Fault, run_campaign
from torchfault.dnn import create_model
from torchfault.errors import TorchFaultError
from torchfault.store import RUN_COLUMNS


def config(tmp_path, name="paths", **over):
    """A small campaign on the pretrained zoo MLP and the digits test split."""
    cfg = {
        "name": name,
        "seed": 7,
        "model": {"name": "mlp", "dataset": "digits"},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 16},
        "targets": {"modules": ["fc3"], "kinds": ["outputs", "weights", "biases"]},
        "sampler": {"name": "uniform", "n": 20},
        "inputs_per_fault": 2,
        "out_dir": str(tmp_path / name),
        "progress": False,
        "report": False,
        "executor": {"name": "serial", "chunk_faults": 64},
    }
    for k, value in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def stored(camp):
    """(faults rows, runs rows) of a campaign's store."""
    con = sqlite3.connect(camp.config.store_path)
    try:
        faults = con.execute(
            "SELECT fault_id, n_faults, bit FROM faults ORDER BY fault_id"
        ).fetchall()
        runs = con.execute(
            "SELECT fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, error "
            "FROM runs ORDER BY fault_id, input_id"
        ).fetchall()
    finally:
        con.close()
    return faults, runs


def test_margin_sized_sample(tmp_path):
    camp = Campaign(config(tmp_path, **{"sampler.n": None, "sampler.margin": 0.05}))
    info = camp.describe()
    n = torchfault.sample_size(info["population"], 0.05, 0.95)
    assert info["population"] == 32 * (10 + 10 * 64 + 10)
    assert info["faults"] == len(camp.sampler) == n == 378  # 21,120 / 55.97, rounded up
    result = camp.run()
    assert len(result.faults) == n and len(result) == 2 * n
    faults, runs = stored(camp)
    assert [f[0] for f in faults] == list(range(n)) and len(runs) == 2 * n
    # another confidence, another size
    over = {"sampler.n": None, "sampler.margin": 0.05, "sampler.confidence": 0.99}
    other = Campaign(config(tmp_path, "c99", **over))
    assert other.describe()["faults"] == torchfault.sample_size(info["population"], 0.05, 0.99) > n


def test_only_correct_inputs(tmp_path):
    camp = Campaign(config(tmp_path, **{"data.only_correct": True, "inputs_per_fault": 0}))
    camp.setup()
    top1 = camp.golden.argmax(dim=1)
    correct = [i for i in range(16) if int(top1[i]) == int(camp.labels[i])]
    assert 0 < len(correct) < 16  # the golden model gets some of them wrong
    assert camp.input_ids == correct
    result = camp.run()
    assert len(result) == 20 * len(correct)
    assert {r.input_id for r in result.runs} == set(correct)
    assert all(r.golden_top1 == int(camp.labels[r.input_id]) for r in result.runs)
    # without the option, every input is used
    every = Campaign(config(tmp_path, "all", **{"inputs_per_fault": 0})).run()
    assert {r.input_id for r in every.runs} == set(range(16))


@pytest.mark.parametrize(
    ("sampler", "faults", "check"),
    [
        # 3 sites (fc3 output, weight, bias) x n = 3
        ({"name": "per_layer", "n": 3}, 9, "per_layer"),
        # 3 bit positions x n = 4
        ({"name": "per_bit", "n": 4, "bits": [0, 23, 30]}, 12, "per_bit"),
        # every bit 30 and 31 of the 10 biases
        ({"name": "exhaustive", "bits": [30, 31]}, 20, "exhaustive"),
        # 6 runs, each flipping Binomial(population, rate) bits of every site
        ({"name": "ber", "n": 6, "rate": 0.002}, 6, "ber"),
    ],
)
def test_samplers_through_a_config(tmp_path, sampler, faults, check):
    over = {"sampler": sampler}
    if check == "exhaustive":
        over["targets"] = {"modules": ["fc3"], "kinds": ["biases"]}
    camp = Campaign(config(tmp_path, check, **over))
    assert camp.describe()["faults"] == faults
    result = camp.run()
    stored_faults, runs = stored(camp)
    assert len(stored_faults) == len(result.faults) == faults
    assert len(runs) == len(result) == 2 * faults
    assert sum(result.outcome_counts().values()) == 2 * faults
    sets = [result.faults[k] for k in range(faults)]
    if check == "per_layer":
        per_site = {}
        for (f,) in sets:
            per_site[(f.module, f.target)] = per_site.get((f.module, f.target), 0) + 1
        assert per_site == {("fc3", "output"): 3, ("fc3", "weight"): 3, ("fc3", "bias"): 3}
    elif check == "per_bit":
        assert sorted(f.bits[0] for (f,) in sets) == [0] * 4 + [23] * 4 + [30] * 4
        assert sorted(b for _, _, b in stored_faults) == [0] * 4 + [23] * 4 + [30] * 4
    elif check == "exhaustive":
        pairs = {(f.index, f.bits) for (f,) in sets}
        assert pairs == {((j,), (b,)) for j in range(10) for b in (30, 31)}
    else:
        # population 32 * 660 bits, rate 0.002: about 42 flipped bits per run, in several sites
        assert all(n == len(result.faults[k]) for k, n, _ in stored_faults)
        assert sum(n for _, n, _ in stored_faults) > 6 * 10
        assert {f.target for fs in sets for f in fs} == {"output", "weight", "bias"}


@pytest.mark.parametrize(
    "outcome",
    [{"criterion": "topk", "topk": 3}, {"criterion": "tolerance", "tolerance": 0.5}],
    ids=["topk", "tolerance"],
)
def test_criteria_same_records_on_fast_and_reference(tmp_path, outcome):
    over = {
        "outcome": outcome,
        "targets": {"modules": ["fc2", "fc3"], "kinds": ["outputs", "weights"]},
        "sampler": {"name": "uniform", "n": 60, "bits": [22, 26, 28, 30]},
        "inputs_per_fault": 4,
    }
    fast = Campaign(config(tmp_path, "fast", **over, **{"engine.name": "fast"}))
    ref = Campaign(config(tmp_path, "reference", **over, **{"engine.name": "reference"}))
    a, b = fast.run(), ref.run()
    assert len(a) == len(b) == 240
    assert stored(fast) == stored(ref)
    assert [r.outcome for r in a.runs] == [r.outcome for r in b.runs]
    runs = b.runs
    assert {"sdc", "masked"} <= {r.outcome for r in runs}
    if outcome["criterion"] == "topk":
        # a changed top-1 class is not an SDC while the golden class stays in the top 3
        assert any(r.outcome == "benign" and r.faulty_top1 != r.golden_top1 for r in runs)
    else:
        # an SDC when a logit moves by more than 0.5, even with the same top-1 class
        assert any(r.outcome == "sdc" and r.faulty_top1 == r.golden_top1 for r in runs)
        assert all(r.outcome != "benign" or r.max_abs_diff <= 0.5 for r in runs)


# ---------------------------------------------------------------- the table of runs of a result


@pytest.fixture(scope="module")
def result():
    model = create_model("mlp", dataset="digits").eval()
    x = model.example_inputs(3)
    faults = [
        Fault("fc3", "weight", index=(1, 2), bits=(30,)),
        (Fault("fc1", "output", index=(4,), bits=(29, 30)), Fault("fc3", "bias", (0,), (3,))),
        Fault("fc2", "output", index=(500,), bits=(3,)),  # out of range: a DUE with its error
    ]
    return run_campaign(model, x, faults)


def test_result_rows(result):
    rows = result.rows()
    assert len(rows) == len(result) == 9
    assert [tuple(row) for row in rows] == [RUN_COLUMNS] * 9
    first = rows[0]
    r = result.runs[0]
    assert (first["fault_id"], first["input_id"], first["outcome"]) == (0, 0, r.outcome)
    assert first["max_abs_diff"] == r.max_abs_diff and first["golden_top1"] == r.golden_top1
    assert (first["module"], first["target"], first["kind"], first["bit"], first["n_faults"]) == (
        "fc3",
        "weight",
        "parameter",
        30,
        1,
    )
    assert (rows[3]["module"], rows[3]["kind"], rows[3]["bit"], rows[3]["n_faults"]) == (
        "fc1",
        "activation",
        29,
        2,
    )
    assert [Fault.from_dict(d) for d in json.loads(rows[3]["faults"])] == list(result.faults[1])
    assert rows[6]["outcome"] == "due" and "out of range" in rows[6]["error"]


def test_result_to_csv_and_parquet(result, tmp_path):
    rows = result.rows()
    path = result.to_csv(tmp_path / "out" / "runs.csv")
    with path.open(newline="") as fh:
        back = list(csv.DictReader(fh))
    assert tuple(back[0]) == RUN_COLUMNS and len(back) == len(rows)
    for got, want in zip(back, rows):
        assert int(got["fault_id"]) == want["fault_id"] and got["outcome"] == want["outcome"]
        if want["max_abs_diff"] is None:
            assert got["max_abs_diff"] == ""
        else:
            assert float(got["max_abs_diff"]) == want["max_abs_diff"]
        assert got["bit"] == str(want["bit"]) and got["faults"] == want["faults"]
        assert got["error"] == (want["error"] or "")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(result.to_parquet(tmp_path / "out" / "runs.parquet"))
    assert tuple(table.column_names) == RUN_COLUMNS
    assert table.to_pylist() == rows


def test_result_to_parquet_without_pyarrow(result, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(TorchFaultError, match=r"torchfault\[parquet\]"):
        result.to_parquet(tmp_path / "runs.parquet")
