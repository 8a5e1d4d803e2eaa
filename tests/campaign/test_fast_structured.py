# SPDX-License-Identifier: MIT
"""The fast engine on models whose output is a structure (a dict, a tuple of tensors) and with
criteria that are not top1/topk/tolerance (a part of the output, metrics). The oracle is the
reference engine: every record equal, field by field (metrics included), and the runs on the
fast path."""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn as nn

from torchfault import Fault, run_campaign
from torchfault.campaign import RunTask, golden_run, make_criterion
from torchfault.campaign._engine import ReferenceEngine, make_engine
from torchfault.campaign._fast import FastEngine
from torchfault.campaign._fast._notices import REASONS
from torchfault.faults import fault_space

N = 16


class DictNet(nn.Module):
    """Returns ``{"logits": ..., "feat": ..., "extra": None}`` (a value that is not a tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.proj = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return {"logits": self.fc(h), "feat": torch.sigmoid(self.proj(h)), "extra": None}


class TupleNet(nn.Module):
    """Returns ``(logits, (hidden map, a second head))``: nested tuples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.aux = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.flatten(1)), (h, self.aux(h.flatten(1)))


def faults_for(model, x, n, seed):
    rng = random.Random(seed)
    sites = [
        s for s in fault_space(model, x[:2], kinds=("outputs", "weights", "biases")) if s.shape
    ]
    out = []
    for _ in range(n):
        s = rng.choice(sites)
        index = tuple(rng.randrange(d) for d in s.shape)
        out.append(Fault(s.module, s.target, index, (rng.choice((3, 22, 29, 30, 31)),)))
    return out


def same(a, b):
    strip = lambda rs: [dataclasses.replace(r, seconds=None) for r in rs]  # noqa: E731
    return strip(a) == strip(b)


def test_dict_output_with_a_criterion_on_one_part():
    torch.manual_seed(0)
    model = DictNet().eval()
    x = torch.randn(N + 3, 3, 6, 6)
    faults = faults_for(model, x, 30, 1)
    crit = make_criterion("top1", output="logits")
    golden = golden_run(model, x)
    assert isinstance(golden, list)
    engine = make_engine("fast", model, x, golden, crit, 256)
    assert isinstance(engine, FastEngine)  # not handed over as a whole
    ids = tuple(range(N + 3))
    tasks = [RunTask(k, (f,), ids) for k, f in enumerate(faults)]
    tasks += [RunTask(100 + k, (f,), (k % (N + 3),)) for k, f in enumerate(faults)]
    got = engine.run(tasks)
    want = ReferenceEngine(model, x, golden, crit).run(tasks)
    assert same(got, want)
    # the sigmoid's rows of 3 floats in the last 25 values of a 19-row buffer (a scalar tail)
    # go to the reference engine; the rest is fast
    assert engine.stats["fast"] >= len(got) // 2
    assert set(engine.handed_over) <= {REASONS["position"]}
    assert {r.outcome for r in got} >= {"masked", "sdc"}
    # end to end, and a change in a part the criterion does not read is not an SDC
    fast = run_campaign(model, x, faults, criterion="top1", output="logits", engine="fast")
    ref = run_campaign(model, x, faults, criterion="top1", output="logits")
    assert same(fast.runs, ref.runs)


def test_nested_tuple_output_with_metrics():
    torch.manual_seed(1)
    model = TupleNet().eval()
    x = torch.randn(N, 3, 6, 6)
    faults = faults_for(model, x, 30, 2)
    crit = make_criterion("regression", threshold=0.05, output=0)
    fast = run_campaign(model, x, faults, criterion=crit, engine="fast")
    ref = run_campaign(model, x, faults, criterion=crit)
    assert same(fast.runs, ref.runs)
    assert any(getattr(r, "metrics", None) for r in fast.runs)  # metrics recorded, and equal
    assert not fast.handed_over


def test_tensor_output_with_a_metrics_criterion():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(N, 6)
    faults = faults_for(model, x, 24, 3)
    crit = make_criterion("regression", threshold=0.01)
    golden = golden_run(model, x)
    engine = FastEngine(model, x, golden, crit)
    tasks = [RunTask(k, (f,), tuple(range(N))) for k, f in enumerate(faults)]
    got = engine.run(tasks)
    assert same(got, ReferenceEngine(model, x, golden, crit).run(tasks))
    assert engine.stats["fast"] == len(got)
