# SPDX-License-Identifier: MIT
"""layers_to_protect against a brute-force search written here: every subset of the layers,
each run's predicted SDC computed by hand from the fits (the deepest protected layer where the
run left its range, deviation capped at the range's width), the smallest subset below target."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from torchfault import Fault
from torchfault.analysis import (
    LayerDeviation,
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
        for d in reversed(t.layers):  # deepest first
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
        traces, outcomes, faults, target, RANGES, search="exhaustive", validation=0.25, seed=3
    )
    assert ex.layers == want and ex.reached
    assert ex.predicted == pytest.approx(rates[want], abs=1e-12)
    assert ex.before == pytest.approx(rates[()], abs=1e-12)
    gr = layers_to_protect(traces, outcomes, faults, target, RANGES, validation=0.25, seed=3)
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
        for d in reversed(t.layers):
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
    assert predicted_sdc(held, outcomes, faults, ex.layers, model, RANGES) == pytest.approx(
        ex.val_predicted, abs=1e-12
    )
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
