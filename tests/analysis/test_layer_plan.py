# SPDX-License-Identifier: MIT
"""layers_to_protect against a brute-force search written here: every subset of the layers,
each run's predicted SDC computed by hand from the fits (the first protected layer where the
run deviates and left its range, deviation capped at the range's width), the smallest subset
below target; and the clamp model's rules (output layers, spread deviations, a fault on the
protected layer's own output, the first acting clamp) on runs priced by hand."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from torchfault import Fault
from torchfault.analysis import (
    LayerDeviation,
    LayerFit,
    SDCModel,
    Trace,
    fit_sdc_model,
    layers_to_protect,
    predicted_sdc,
)
from torchfault.analysis._sdc_model import _held_out
from torchfault.errors import TorchFaultError

LAYERS = ["l0", "l1", "l2", "l3"]
RANGES = {"l0": (0.0, 1.0), "l1": (-2.0, 2.0), "l2": (0.0, 0.5), "l3": (-3.0, 3.0)}


def _case(n=900, seed=1):
    """A synthetic case: each run has a culprit layer, l1 or l3, where its deviation is large
    and out of range; elsewhere it is small (out of range one time in ten). The SDC probability
    grows with the culprit's deviation."""
    rng = random.Random(seed)
    traces, outcomes, faults = [], {}, {}
    for k in range(n):
        bit = rng.choice([30, 26])
        culprit = rng.choice(["l1", "l3"])
        lds = []
        for name in LAYERS:
            if name == culprit:
                dev, oor = 10 ** rng.uniform(0, 5), True
            else:
                dev, oor = 10 ** rng.uniform(-3, -1), rng.random() < 0.1
            lds.append(LayerDeviation(name, dev, 1.0, 1, oor))
        big = next(d.max_abs for d in lds if d.layer == culprit)
        p = 1 / (1 + math.exp(-(math.log10(big) - 2) * 2))
        outcomes[(k, 0)] = "sdc" if rng.random() < p else ("due" if k % 37 == 0 else "masked")
        faults[k] = (Fault("l0", "weight", (0,), (bit,)),)
        traces.append(Trace(k, 0, tuple(lds), None, None))
    return traces, outcomes, faults


def _by_hand(traces, outcomes, faults, model, chosen, runs):
    total = 0.0
    for t in runs:
        y = float(outcomes[(t.fault_id, t.input_id)] == "sdc")
        bit = faults[t.fault_id][0].bits[0]
        p = y
        for d in t.layers:  # first acting clamp (every deviation here has one element)
            if d.layer in chosen and d.out_of_range:
                fit = model.fits.get((d.layer, bit))
                if fit is not None:
                    lo, hi = RANGES[d.layer]
                    p = fit.predict(min(d.max_abs, hi - lo))
                break
        total += p
    return total / len(runs)


def test_exhaustive_equals_brute_force_and_greedy_is_priced_right():
    traces, outcomes, faults = _case()
    model = fit_sdc_model(traces, outcomes, faults, validation=0.25, seed=3)
    train = [t for t in traces if not _held_out(t.fault_id, 3, 0.25)]
    rates = {
        combo: _by_hand(traces, outcomes, faults, model, set(combo), train)
        for size in range(5)
        for combo in itertools.combinations(LAYERS, size)
    }
    # targets just above the best set of each size: the answers have sizes 0, 1, 2, ...
    targets = sorted(
        {min(r for c, r in rates.items() if len(c) == s) + 1e-9 for s in range(5)}, reverse=True
    )
    sizes = [_check(traces, outcomes, faults, model, rates, t) for t in targets]
    assert max(sizes) >= 2 and sizes == sorted(sizes)


def _check(traces, outcomes, faults, model, rates, target):
    assert {layer for layer, _ in model.fits} == set(LAYERS)
    held = [t for t in traces if _held_out(t.fault_id, 3, 0.25)]
    below = [c for c in rates if rates[c] < target]
    assert below, "the case is built so that every target here can be reached"
    size = min(len(c) for c in below)
    want = min((c for c in below if len(c) == size), key=lambda c: (rates[c], c))
    ex = layers_to_protect(
        traces,
        outcomes,
        faults,
        target,
        RANGES,
        search="exhaustive",
        validation=0.25,
        seed=3,
        output_layers=(),  # every layer a candidate: l3 is last but not the model's output
    )
    assert ex.layers == want and ex.reached
    assert ex.predicted == pytest.approx(rates[want], abs=1e-12)
    assert ex.before == pytest.approx(rates[()], abs=1e-12)
    gr = layers_to_protect(
        traces, outcomes, faults, target, RANGES, validation=0.25, seed=3, output_layers=()
    )
    assert gr.reached and len(gr.layers) >= size
    assert gr.predicted == pytest.approx(rates[gr.layers], abs=1e-12)
    # each greedy step took the best single addition at that point
    chosen: set[str] = set()
    for layer, rate in gr.steps:
        options = {n: rates[tuple(sorted(chosen | {n}, key=LAYERS.index))] for n in LAYERS}
        assert rate == pytest.approx(min(options[n] for n in LAYERS if n not in chosen))
        chosen.add(layer)
    # held-out: the predicted rate by hand, and the model's error on the chosen layers
    assert ex.val_runs == len(held)
    assert ex.val_predicted == pytest.approx(
        _by_hand(traces, outcomes, faults, model, set(ex.layers), held), abs=1e-12
    )
    pairs = []
    for t in held:
        bit = faults[t.fault_id][0].bits[0]
        for d in t.layers:
            if d.layer in ex.layers and d.out_of_range:
                if (d.layer, bit) in model.fits:
                    y = float(outcomes[(t.fault_id, 0)] == "sdc")
                    pairs.append((model.fits[(d.layer, bit)].predict(d.max_abs), y))
                break
    assert ex.val_checked == len(pairs) and (pairs or not ex.layers)
    if pairs:
        mean_p = sum(p for p, _ in pairs) / len(pairs)
        mean_y = sum(y for _, y in pairs) / len(pairs)
        assert ex.val_error == pytest.approx(abs(mean_p - mean_y), abs=1e-12)
        assert ex.val_brier == pytest.approx(
            sum((p - y) ** 2 for p, y in pairs) / len(pairs), abs=1e-12
        )
    else:
        assert math.isnan(ex.val_error)
    assert predicted_sdc(
        held, outcomes, faults, ex.layers, model, RANGES, output_layers=()
    ) == pytest.approx(ex.val_predicted, abs=1e-12)
    return len(ex.layers)


def test_unreachable_target_and_bad_input():
    traces, outcomes, faults = _case(300)
    p = layers_to_protect(traces, outcomes, faults, 0.0, RANGES)
    assert not p.reached and p.predicted > 0
    for kw, field in (
        ({"target": 1.5}, "target"),
        ({"target": 0.1, "search": "best"}, "search"),
        ({"target": 0.1, "validation": 1.0}, "validation"),
    ):
        with pytest.raises(TorchFaultError) as e:
            layers_to_protect(traces, outcomes, faults, profile=RANGES, **kw)
        assert e.value.field == field
    plain = [
        Trace(t.fault_id, 0, tuple(LayerDeviation(d.layer, d.max_abs, 1.0, 1) for d in t.layers),
              None, None)
        for t in traces
    ]  # fmt: skip
    with pytest.raises(TorchFaultError, match="range profile") as e:
        layers_to_protect(plain, outcomes, faults, 0.1, RANGES)
    assert e.value.field == "traces"


def _sig(z):
    return 1 / (1 + math.exp(-z))


# P(SDC | d) = sigmoid(a + log10(d)) at layers a, b and the output o (bit 30)
FITS = {
    ("a", 30): LayerFit("a", 30, -6.0, 1.0, 10, 0, 0.5, 0.0, 0.0),
    ("b", 30): LayerFit("b", 30, -2.0, 1.0, 10, 0, 0.5, 0.0, 0.0),
    ("o", 30): LayerFit("o", 30, -4.0, 1.0, 10, 0, 0.5, 0.0, 0.0),
}
WIDE = {"a": (0.0, 1.0), "b": (-5.0, 5.0), "o": (-50.0, 50.0)}


def _run(devs, target="weight", module="a", outcome="sdc", fault_id=0):
    """One run: devs = [(layer, max_abs, changed, out_of_range)] over a, b, o."""
    t = Trace(
        fault_id, 0, tuple(LayerDeviation(n, d, 1.0, c, r) for n, d, c, r in devs), None, None
    )
    return [t], {(fault_id, 0): outcome}, {fault_id: (Fault(module, target, (0,), (30,)),)}


def _pred(run, layers, **kw):
    return predicted_sdc(*run, layers, SDCModel(dict(FITS)), WIDE, **kw)


def test_clamp_rules_priced_by_hand():
    # a huge deviation confined to one element at a and b, out of range at a, b and o
    run = _run([("a", 1e30, 1, True), ("b", 2e30, 1, True), ("o", 3e30, 1, True)])
    assert _pred(run, ["a"]) == pytest.approx(_sig(-6.0 + math.log10(1.0)))  # capped at width 1
    assert _pred(run, ["b"]) == pytest.approx(_sig(-2.0 + 1.0))  # width 10
    # the first acting clamp decides, not the deepest
    assert _pred(run, ["a", "b"]) == pytest.approx(_sig(-6.0))
    # o is the last layer: inferred as the output, a clamp there is priced as nothing
    assert _pred(run, ["o"]) == 1.0
    assert _pred(run, ["o"], output_layers=()) == pytest.approx(_sig(-4.0 + 2.0))
    # below the width the deviation is not raised to it
    small = _run([("a", 0.5, 1, True), ("b", 0.0, 0, False), ("o", 0.1, 1, False)])
    assert _pred(small, ["a"]) == pytest.approx(_sig(-6.0 + math.log10(0.5)))
    # spread: b holds more changed elements than the fault's footprint (a): no credit at b
    spread = _run([("a", 1e30, 1, False), ("b", 1e30, 7, True), ("o", 1e30, 3, True)])
    assert _pred(spread, ["b"]) == 1.0
    assert _pred(_run([("a", 0.0, 0, False), ("b", 1e30, 7, True), ("o", 9.0, 3, True)]),
                 ["b"]) == pytest.approx(_sig(-1.0))  # fmt: skip
    # a fault on b's own output is written after b's clamp: no credit at b, a later one counts
    own = _run([("a", 0.0, 0, False), ("b", 1e30, 1, True), ("o", 2e30, 1, True)], "output", "b")
    assert _pred(own, ["b"]) == 1.0
    assert _pred(own, ["b", "o"], output_layers=()) == pytest.approx(_sig(-2.0))
    # out of range without deviating (the golden value is outside the range): no credit there
    gold = _run([("a", 0.0, 0, True), ("b", 1e30, 1, True), ("o", 2e30, 1, True)], module="b")
    assert _pred(gold, ["a"]) == 1.0
    assert _pred(gold, ["a", "b"]) == pytest.approx(_sig(-1.0))
    # an observed masked run keeps 0 where no clamp acts
    assert _pred(_run([("a", 0.1, 1, False), ("b", 0.1, 1, False), ("o", 0.1, 1, False)],
                      outcome="masked"), ["a", "b"]) == 0.0  # fmt: skip


def test_output_layers_inferred_and_never_chosen():
    # layers a, fc, copy: copy repeats fc's deviation in every run (an identity after the
    # logits); only a clamp on fc or copy would help by the fits, and neither is a candidate
    rng = random.Random(0)
    traces, outcomes, faults = [], {}, {}
    for k in range(400):
        d = 10 ** rng.uniform(0, 30)
        sdc = d > 1e15
        lds = (
            LayerDeviation("a", 0.0, 0.0, 0, False),
            LayerDeviation("fc", d, 1.0, 1, sdc),
            LayerDeviation("copy", d, 1.0, 1, sdc),
        )
        traces.append(Trace(k, 0, lds, None, None))
        outcomes[(k, 0)] = "sdc" if sdc else "masked"
        faults[k] = (Fault("fc", "weight", (0,), (30,)),)
    ranges = {"a": (0.0, 1.0), "fc": (0.0, 1.0), "copy": (0.0, 1.0)}
    plan = layers_to_protect(traces, outcomes, faults, 0.01, ranges, min_runs=5)
    assert plan.output_layers == ("fc", "copy")
    assert plan.layers == () and not plan.reached
    assert plan.predicted == plan.before > 0.3
    free = layers_to_protect(traces, outcomes, faults, 0.01, ranges, min_runs=5, output_layers=())
    assert free.layers == ("fc",) and free.reached and free.output_layers == ()
    assert plan.held_out(3) == _held_out(3, plan.seed, plan.validation)
    with pytest.raises(TorchFaultError) as e:
        layers_to_protect(traces, outcomes, faults, 0.01, ranges, output_layers="fc")
    assert e.value.field == "output_layers"
