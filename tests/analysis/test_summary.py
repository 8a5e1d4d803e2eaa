# SPDX-License-Identifier: MIT
"""Summaries: counts per group, intervals by the formulas, merging partial accumulators."""

from __future__ import annotations

import io
import json
import math
import pickle
import random

import pytest
from rich.console import Console

from torchfault.analysis import OutcomeAccumulator, summarize, wilson_interval
from torchfault.analysis._summary import MULTIPLE
from torchfault.errors import TorchFaultError
from torchfault.faults._fault import Fault, FaultSite
from torchfault.store import RunRecord

SITES = [
    FaultSite("conv1", "weight", "parameter", (4, 1, 3, 3), "float32", 32),
    FaultSite("fc", "output", "activation", (10,), "float32", 32),
    FaultSite("bn", "running_var", "buffer", (4,), "float32", 32),
]
# fault 0: conv1 weight bit 30; fault 1: fc output bit 2; fault 2: bn buffer bit 30;
# fault 3: two faults (BER-like) in two modules
FAULTS = {
    0: (Fault("conv1", "weight", (0, 0, 1, 1), (30,)),),
    1: (Fault("fc", "output", (3,), (2,)),),
    2: (Fault("bn", "running_var", (1,), (30,)),),
    3: (Fault("conv1", "weight", (1, 0, 0, 0), (5,)), Fault("fc", "output", (0,), (5, 6))),
}
# known counts: (fault_id, outcome) -> runs
PLAN = {
    (0, "sdc"): 30,
    (0, "masked"): 60,
    (0, "benign"): 8,
    (0, "due"): 2,
    (1, "sdc"): 1,
    (1, "masked"): 49,
    (2, "due"): 5,
    (2, "masked"): 15,
    (3, "benign"): 4,
    (3, "sdc"): 6,
}


def _runs(seed: int = 0) -> list[RunRecord]:
    runs = []
    for (fid, outcome), count in PLAN.items():
        runs += [RunRecord(fid, i, outcome, 1, 2, 0.1, 0.01) for i in range(count)]
    random.Random(seed).shuffle(runs)
    return [RunRecord(r.fault_id, j, r.outcome, seconds=0.01) for j, r in enumerate(runs)]


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_overall_counts_and_wilson_by_hand():
    s = summarize(_runs(), FAULTS, sites=SITES)
    assert s.runs == 180
    assert s.outcome_counts() == {"masked": 124, "benign": 12, "sdc": 37, "due": 7}
    sdc = s.overall.sdc
    assert (sdc.k, sdc.n) == (37, 180) and sdc.rate == pytest.approx(37 / 180)
    low, high = _wilson_by_hand(37, 180)
    assert sdc.low == pytest.approx(low, abs=1e-12) and sdc.high == pytest.approx(high, abs=1e-12)
    assert s.seconds == pytest.approx(1.8)


def test_breakdowns():
    s = summarize(_runs(), FAULTS, sites=SITES)
    layer = {r.key: r for r in s.by_layer}
    assert [r.key for r in s.by_layer] == [
        "conv1",
        "fc",
        "bn",
        MULTIPLE,
    ]  # site order, then (multiple)
    assert layer["conv1"].counts == {"masked": 60, "benign": 8, "sdc": 30, "due": 2}
    assert layer["fc"].n == 50 and layer["bn"].due.k == 5 and layer[MULTIPLE].n == 10
    assert layer["conv1"].sdc.low == pytest.approx(_wilson_by_hand(30, 100)[0], abs=1e-12)
    kind = {r.key: r.counts for r in s.by_kind}
    assert kind == {
        "parameter": {"masked": 60, "benign": 8, "sdc": 30, "due": 2},
        "activation": {"masked": 49, "benign": 0, "sdc": 1, "due": 0},
        "buffer": {"masked": 15, "benign": 0, "sdc": 0, "due": 5},
        MULTIPLE: {"masked": 0, "benign": 4, "sdc": 6, "due": 0},
    }
    bit = {r.key: r.n for r in s.by_bit}
    assert bit == {2: 50, 30: 120, MULTIPLE: 10}
    assert [r.key for r in s.by_bit] == [2, 30, MULTIPLE]
    assert {r.key for r in s.by_target} == {"conv1:weight", "fc:output", "bn:running_var", MULTIPLE}
    assert "element" not in s.groups
    e = summarize(_runs(), FAULTS, per_element=True)
    assert {r.key: r.n for r in e.by_element}["conv1:weight[0, 0, 1, 1]"] == 100
    # without sites, kinds are guessed from the target names
    assert {r.key for r in summarize(_runs(), FAULTS).by_kind} == {
        "parameter",
        "activation",
        "buffer",
        MULTIPLE,
    }


def test_clopper_pearson_method():
    from torchfault.analysis import clopper_pearson_interval

    s = summarize(_runs(), FAULTS, confidence=0.99, method="clopper_pearson")
    assert (s.overall.due.low, s.overall.due.high) == clopper_pearson_interval(7, 180, 0.99)
    assert s.confidence == 0.99 and s.method == "clopper_pearson"


def test_merge_equals_single_pass():
    runs = _runs(1)
    whole = OutcomeAccumulator(FAULTS, SITES)
    whole.update(runs)
    parts = [OutcomeAccumulator(FAULTS, SITES) for _ in range(3)]
    for i, part in enumerate(parts):
        part.update(runs[i::3])
    merged = OutcomeAccumulator(FAULTS, SITES)
    merged.merge(parts[0], pickle.loads(pickle.dumps(parts[1].state_dict())), parts[2])
    a, b = merged.compute(), whole.compute()
    assert a.seconds == pytest.approx(b.seconds)  # float sums in another order
    assert (a.overall, a.groups) == (b.overall, b.groups)
    assert merged.sdc_count() == (37, 180)
    merged.reset()
    assert merged.compute().runs == 0


def test_outputs_tables_markdown_json(tmp_path):
    s = summarize(_runs(), FAULTS, sites=SITES)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["overall"]["counts"]["sdc"] == 37 and d["by_layer"][0]["key"] == "conv1"
    buf = io.StringIO()
    s.print(Console(file=buf, width=160))
    text = buf.getvalue()
    assert "Outcomes of 180 runs" in text and "conv1" in text and "20.56%" in text
    assert len(s.tables()) == 5
    md = s.to_markdown()
    assert "| sdc | 37 | 20.56% |" in md and "### Per bit position" in md
    path = s.to_csv(tmp_path / "summary.csv")
    assert path.read_text().count("\n") == 1 + 4 * (1 + 4 + 4 + 4 + 3)


def test_errors():
    with pytest.raises(TorchFaultError, match="outcome"):
        summarize([{"fault_id": 0, "outcome": "boom"}], FAULTS)
    with pytest.raises(TorchFaultError, match="no such fault"):
        summarize([{"fault_id": 42, "outcome": "sdc"}], FAULTS)
    with pytest.raises(TorchFaultError, match="method"):
        summarize([], FAULTS, method="exact")
    empty = summarize([], FAULTS)
    assert empty.runs == 0 and (empty.overall.sdc.low, empty.overall.sdc.high) == (0.0, 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
