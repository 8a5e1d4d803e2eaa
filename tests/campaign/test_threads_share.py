# SPDX-License-Identifier: MIT
"""The ``threads`` executor's fast engines share one golden cache (issue 12, item 4): each thread
keeps its own copy of the model, but the golden values, the blocks verified and the row-check
verdict are the first engine's. The oracle for every record is the reference engine run
serially (full re-execution); the sharing itself is observed through the engines the map built
and the verification passes they made."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from torchfault.campaign import RunTask, create_executor, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine, FastOptions
from torchfault.campaign._fast._golden import GoldenValues
from torchfault.faults import Fault

N_INPUTS = 40
BATCH = 16  # the fast engine's block: 3 blocks of inputs


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _key(r):
    nan = lambda v: "nan" if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    return tuple(
        nan(v)
        for v in (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)
    )


def _tasks(model: nn.Module) -> list[RunTask]:
    faults = []
    for k in range(24):
        if k % 3 == 0:
            faults.append(Fault("3", "weight", index=(k % 8, k % 8, 1, 1), bits=(20 + k % 12,)))
        else:
            faults.append(Fault("0", "output", index=(k % 8, k % 7, k % 5), bits=(k,)))
    ids = tuple(range(N_INPUTS))
    return [RunTask(k, (f,), ids) for k, f in enumerate(faults)]


class _Setup:
    """Builds a fast engine and remembers it (the map deep-copies this for other threads)."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        golden: torch.Tensor,
        batch: int = BATCH,
        options: FastOptions | None = None,
    ) -> None:
        self.model, self.x, self.golden = model, x, golden
        self.batch, self.options = batch, options

    def __call__(self) -> FastEngine:
        engine = FastEngine(
            self.model, self.x, self.golden, batch_size=self.batch, options=self.options
        )
        _BUILT.append(engine)
        return engine


_BUILT: list[FastEngine] = []


@pytest.fixture
def case():
    model = _model()
    x = torch.randn(N_INPUTS, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    golden = golden_run(model, x)
    tasks = _tasks(model)
    want = ReferenceEngine(model, x, golden, batch_size=BATCH).run(tasks)
    return model, x, golden, tasks, want


def _count_verifications(monkeypatch) -> list[int]:
    """Record the block of every verification pass (a golden pass over a block not verified)."""
    passes: list[int] = []
    original = GoldenValues.values

    def values(self, block, need):
        out, verified = original(self, block, need)
        if verified:
            passes.append(block)
        return out, verified

    monkeypatch.setattr(GoldenValues, "values", values)
    return passes


def _run_threads(setup: _Setup, tasks: list[RunTask]) -> dict:
    """The tasks through the ``threads`` executor (2 workers, chunks of 3 tasks), records by
    (fault, input); the engines it built are in ``_BUILT``."""
    _BUILT.clear()
    chunks = [tasks[k : k + 3] for k in range(0, len(tasks), 3)]
    with create_executor("threads", workers=2) as ex:
        return {(r.fault_id, r.input_id): r for rs in ex.map(setup, chunks) for r in rs}


def test_threads_share_one_golden_cache_and_verify_each_block_once(case, monkeypatch):
    model, x, golden, tasks, want = case
    passes = _count_verifications(monkeypatch)
    got = _run_threads(_Setup(model, x, golden), tasks)
    assert len(_BUILT) == 2
    first, second = _BUILT
    assert second.model is not first.model  # each thread its own model
    assert second.cache is first.cache  # one golden cache
    assert sorted(passes) == [0, 1, 2]  # each block verified once, by whichever engine came first
    assert first.stats["fast"] > 0 and second.stats["fast"] > 0
    assert first.stats["reference"] == second.stats["reference"] == 0
    ordered = [got[(r.fault_id, r.input_id)] for r in want]
    assert [_key(r) for r in ordered] == [_key(r) for r in want]


def test_engines_that_do_not_share_verify_blocks_each(case, monkeypatch):
    """The counterpart: two engines on copies that do not share each verify the blocks they use
    (so the count above is the sharing's doing), and give the same records."""
    model, x, golden, tasks, want = case
    passes = _count_verifications(monkeypatch)
    a = FastEngine(model, x, golden, batch_size=BATCH)
    b = FastEngine(copy.deepcopy(model), x.clone(), golden.clone(), batch_size=BATCH)
    got = a.run(tasks[:12]) + b.run(tasks[12:])
    assert sorted(passes) == [0, 0, 1, 1, 2, 2]
    assert [_key(r) for r in got] == [_key(r) for r in want]


def test_share_golden_refuses_another_model_or_inputs(case):
    """Sharing golden values between engines whose golden values differ would give wrong records:
    other weights, other inputs, other options, or an engine that already ran are refused."""
    model, x, golden, tasks, want = case
    a = FastEngine(model, x, golden, batch_size=BATCH)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[3].weight[0, 0, 0, 0] += 1e-3
    refused = [
        FastEngine(other, x, golden_run(other, x), batch_size=BATCH),
        FastEngine(model, x + 1.0, golden_run(model, x + 1.0), batch_size=BATCH),
        FastEngine(model, x, golden, batch_size=BATCH * 2),
    ]
    for engine in refused:
        assert not engine.share_golden(a)
        assert engine.cache is not a.cache
    a.run(tasks[:2])
    ran = FastEngine(copy.deepcopy(model), x, golden, batch_size=BATCH)
    ran.run(tasks[:1])
    assert not ran.share_golden(a)  # already traced: its own cache stays
    # an engine over a copy shares, and its records are still the reference engine's
    b = FastEngine(copy.deepcopy(model), x.clone(), golden.clone(), batch_size=BATCH)
    assert b.share_golden(a) and b.cache is a.cache
    got = b.run(tasks)
    assert [_key(r) for r in got] == [_key(r) for r in want]
    # the refused engine with other weights gives its own model's records (not a's golden values)
    other_want = ReferenceEngine(other, x, refused[0].golden, batch_size=BATCH).run(tasks)
    assert [_key(r) for r in refused[0].run(tasks)] == [_key(r) for r in other_want]


class _Contiguous(nn.Sequential):
    """The same modules, state and outputs as the sequential model, one more traced node."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return super().forward(t.contiguous())


def test_a_graph_traced_otherwise_does_not_share(case):
    """An engine whose model has the same state but traces into another graph than the sharer's
    takes a private cache when it traces (golden values are cached by node name)."""
    model, x, golden, tasks, want = case
    a = FastEngine(model, x, golden, batch_size=BATCH)
    a.run(tasks[:2])
    twin = _Contiguous(*copy.deepcopy(model)).eval()
    b = FastEngine(twin, x, golden_run(twin, x), batch_size=BATCH)
    assert b.share_golden(a)  # same state, inputs and golden outputs: shares until it traces
    got = b.run(tasks)
    assert b.cache is not a.cache and b._shared is not a._shared
    assert b.stats["fast"] > 0
    assert [_key(r) for r in got] == [_key(r) for r in want]


def test_threads_share_when_the_first_engine_cut_its_blocks_to_the_budget(case, monkeypatch):
    """The first engine runs its first chunk before the second is built; with a budget that
    holds one 16-input block's golden values twice over, it has cut its blocks of ``batch_size``
    = 32 inputs to 16 by then. The second engine still shares with it (both cut alike), so the
    3 blocks of 16 are each verified once; records are the serial reference engine's."""
    model, x, golden, tasks, want = case
    prog = FastEngine(model, x, golden, batch_size=32)._program()
    assert prog is not None
    options = FastOptions(cache_bytes=2 * 16 * sum(prog.row_bytes.values()))
    passes = _count_verifications(monkeypatch)
    got = _run_threads(_Setup(model, x, golden, 32, options), tasks)
    first, second = _BUILT
    assert first.block == second.block == 16
    assert second.cache is first.cache
    assert sorted(passes) == [0, 1, 2]
    ordered = [got[(r.fault_id, r.input_id)] for r in want]
    assert [_key(r) for r in ordered] == [_key(r) for r in want]
