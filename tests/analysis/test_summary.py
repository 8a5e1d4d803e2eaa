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


def _one_input() -> tuple[list[RunRecord], dict[int, tuple[Fault, ...]]]:
    """PLAN with one input per fault: run j is fault j (a copy of PLAN's fault), as before the
    fault became the sampling unit, so every figure is the run-count figure."""
    runs, faults = [], {}
    for r in _runs():
        fid = len(faults)
        faults[fid] = FAULTS[_PLAN_FAULT[r.input_id]]
        runs.append(RunRecord(fid, 0, r.outcome, seconds=0.01))
    return runs, faults


_PLAN_FAULT = {}  # input id of _runs() -> PLAN fault id


def _runs(seed: int = 0) -> list[RunRecord]:
    runs = []
    for (fid, outcome), count in PLAN.items():
        runs += [RunRecord(fid, i, outcome, 1, 2, 0.1, 0.01) for i in range(count)]
    random.Random(seed).shuffle(runs)
    out = []
    for j, r in enumerate(runs):
        _PLAN_FAULT[j] = r.fault_id
        out.append(RunRecord(r.fault_id, j, r.outcome, seconds=0.01))
    return out


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_overall_counts_and_wilson_by_hand():
    # one input per fault: the figures of counting runs, unchanged
    runs, faults = _one_input()
    s = summarize(runs, faults, sites=SITES, method="wilson")
    assert s.runs == s.faults == 180
    assert s.outcome_counts() == {"masked": 124, "benign": 12, "sdc": 37, "due": 7}
    sdc = s.overall.sdc
    assert (sdc.k, sdc.n) == (37, 180) and sdc.rate == pytest.approx(37 / 180)
    low, high = _wilson_by_hand(37, 180)
    assert sdc.low == pytest.approx(low, abs=1e-12) and sdc.high == pytest.approx(high, abs=1e-12)
    assert s.seconds == pytest.approx(1.8)


def test_breakdowns():
    runs, faults = _one_input()
    s = summarize(runs, faults, sites=SITES, method="wilson")
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
    # fault 3 flips bit 5 of one element and bits 5 and 6 of another: listed under bit 6
    assert bit == {2: 50, 6: 10, 30: 120}
    assert [r.key for r in s.by_bit] == [2, 6, 30]
    assert {r.key for r in s.by_target} == {"conv1:weight", "fc:output", "bn:running_var", MULTIPLE}
    assert "element" not in s.groups
    e = summarize(runs, faults, per_element=True)
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

    runs, faults = _one_input()
    s = summarize(runs, faults, confidence=0.99, method="clopper_pearson")
    assert (s.overall.due.low, s.overall.due.high) == pytest.approx(
        clopper_pearson_interval(7, 180, 0.99), abs=1e-12
    )
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
    runs, faults = _one_input()
    s = summarize(runs, faults, sites=SITES)
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


# ---------------------------------------------------------------- the fault as the sampling unit


def _cp(k: float, n: float, conf: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson with real k and n, straight from scipy (an outside oracle)."""
    beta = pytest.importorskip("scipy.stats").beta
    a = 1 - conf
    return (
        0.0 if k <= 0 else float(beta.ppf(a / 2, k, n - k + 1)),
        1.0 if k >= n else float(beta.ppf(1 - a / 2, k + 1, n - k)),
    )


def test_clustered_runs_use_per_fault_fractions():
    """PLAN has 100, 50, 20 and 10 runs per fault: the rate is the mean of the four per-fault
    fractions and the interval is over the 4 faults (each one trial), not over 180 runs."""
    s = summarize(_runs(), FAULTS, sites=SITES)
    sdc = s.overall.sdc
    y = [30 / 100, 1 / 50, 0 / 20, 6 / 10]
    p = sum(y) / 4
    # the spread of the fractions, but at least the Bernoulli spread of one trial per fault
    s2 = max(sum((v - p) ** 2 for v in y) / 3, p * (1 - p) * 4 / 3)
    n_eff = p * (1 - p) / (s2 / 4) * 4 / 3
    assert n_eff == pytest.approx(4)
    assert (sdc.k, sdc.n, sdc.faults) == (37, 180, 4)
    assert sdc.rate == pytest.approx(p, abs=1e-12)
    assert sdc.n_eff == pytest.approx(n_eff, rel=1e-9)
    assert (sdc.low, sdc.high) == pytest.approx(_cp(p * n_eff, n_eff), abs=1e-9)
    # far wider than the run-count interval that treated 180 correlated runs as independent
    naive = _cp(37, 180)
    assert sdc.high - sdc.low > 3 * (naive[1] - naive[0])
    # a group of one fault: its fraction, and an interval over one fault
    conv = {r.key: r for r in s.by_layer}["conv1"]
    assert conv.faults == 1 and conv.sdc.rate == pytest.approx(0.3)


def test_same_inputs_per_fault_give_the_run_rate():
    """Equal runs per fault: the rate is k / n of the runs (only the interval changes)."""
    faults = {i: (Fault("fc", "output", (i % 10,), (i % 32,)),) for i in range(50)}
    rng = random.Random(4)
    runs = [
        {"fault_id": i, "input_id": j, "outcome": "sdc" if rng.random() < (i % 5) / 5 else "masked"}
        for i in range(50)
        for j in range(8)
    ]
    s = summarize(runs, faults)
    k = sum(r["outcome"] == "sdc" for r in runs)
    assert s.overall.sdc.rate == pytest.approx(k / 400) and s.overall.sdc.k == k
    assert s.overall.sdc.faults == 50 and 50 <= s.overall.sdc.n_eff < 400


def test_finite_population_and_exact_rate():
    from torchfault.analysis import SamplingDesign

    faults = {i: (Fault("fc", "bias", (i // 32,), (i % 32,)),) for i in range(64)}
    outcome = {i: "sdc" if i % 32 in (30, 29) else "masked" for i in range(64)}
    runs = [
        {"fault_id": i, "input_id": j, "outcome": outcome[i]} for i in range(64) for j in range(3)
    ]
    # every fault of a population of 64 on every input: exact
    s = summarize(runs, faults, design=SamplingDesign({"all": 64}))
    assert s.overall.sdc.exact and (s.overall.sdc.low, s.overall.sdc.high) == (4 / 64, 4 / 64)
    assert "exact" in s.to_markdown()
    # half the population: narrower than without the correction, by about sqrt(1 - f)
    half = [r for r in runs if r["fault_id"] % 2 == 0 and r["input_id"] == 0]
    sub = {i: faults[i] for i in range(0, 64, 2)}
    fpc = summarize(half, sub, design=SamplingDesign({"all": 64}), method="wilson")
    inf = summarize(half, sub, method="wilson")
    assert fpc.overall.sdc.rate == inf.overall.sdc.rate == 2 / 32
    assert inf.overall.sdc.n_eff == pytest.approx(32)
    assert fpc.overall.sdc.n_eff == pytest.approx(32 / (1 - 32 / 64))
    # the inputs are a sample too: one input of three per fault is never exact
    some = [r for r in runs if r["input_id"] == r["fault_id"] % 3]
    part = summarize(some, faults, design=SamplingDesign({"all": 64}, inputs=3))
    assert not part.overall.sdc.exact and part.overall.sdc.high > part.overall.sdc.low


def test_design_errors():
    from torchfault.analysis import SamplingDesign

    with pytest.raises(TorchFaultError, match="population"):
        SamplingDesign({"a": 0})
    with pytest.raises(TorchFaultError, match="stratum_of"):
        SamplingDesign({"a": 3, "b": 4})
    d = SamplingDesign({"a": 3, "b": 4}, stratum_of=lambda fs: "c")
    with pytest.raises(TorchFaultError, match="stratum 'c'"):
        summarize([{"fault_id": 0, "outcome": "sdc"}], FAULTS, design=d)
    with pytest.raises(TorchFaultError, match="interval method 'exact'"):
        summarize([], FAULTS, method="exact")


def test_whole_element_faults_have_no_bit_row():
    from torchfault.analysis._summary import WHOLE

    faults = {
        0: (Fault("fc", "weight", (0, 0), (), model="zero"),),
        1: (Fault("fc", "weight", (0, 1), (), model="random_value"),),
        2: (Fault("fc", "weight", (0, 2), (30,)),),
    }
    runs = [{"fault_id": i, "outcome": "sdc" if i else "masked"} for i in range(3)]
    s = summarize(runs, faults)
    assert {r.key: r.faults for r in s.by_bit} == {30: 1, WHOLE: 2}
    assert [r.key for r in s.by_bit] == [30, WHOLE]
