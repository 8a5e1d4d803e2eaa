# SPDX-License-Identifier: MIT
"""The fast engine's golden values stay within the cache budget, and values the cache dropped
are computed again to the same bits."""

from __future__ import annotations

import random

import torch

from torchfault import Fault
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine, FastOptions
from torchfault.campaign._fast._golden import IN_CACHE, NOT_ROW_INDEXED, GoldenCache, GoldenValues
from torchfault.dnn import create_model
from torchfault.faults import fault_space


def _faults(model, x, n, seed):
    rng = random.Random(seed)
    sites = [s for s in fault_space(model, x[:2], kinds=("outputs", "weights")) if s.shape]
    return [
        Fault(s.module, s.target, tuple(rng.randrange(d) for d in s.shape), (rng.randrange(32),))
        for s in rng.choices(sites, k=n)
    ]


def _key(r):
    return (r.fault_id, r.input_id, r.outcome, r.faulty_top1, r.max_abs_diff)


def _cache_peak(monkeypatch) -> list[int]:
    """Record the cache's most bytes while it holds more than one item (one is kept whatever
    its size)."""
    most = [0]
    put = GoldenCache.put

    def watched(self, key, t):
        put(self, key, t)
        if len(self.items) > 1:
            most[0] = max(most[0], self.bytes)

    monkeypatch.setattr(GoldenCache, "put", watched)
    return most


def _golden_passes(monkeypatch) -> list[int]:
    """Count the passes over a block (golden passes and those that compute values again)."""
    passes = [0]
    forward = GoldenValues.forward

    def counted(self, *args, **kwargs):
        passes[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GoldenValues, "forward", counted)
    return passes


def test_golden_values_stay_within_the_budget_and_records_stay_exact(monkeypatch):
    torch.manual_seed(0)
    model = create_model("resnet8", dataset="digits").eval()
    x = model.example_inputs(40)
    golden = golden_run(model, x, 256)
    tasks = [RunTask(k, (f,), tuple(range(40))) for k, f in enumerate(_faults(model, x, 24, 3))]
    most = _cache_peak(monkeypatch)
    passes = _golden_passes(monkeypatch)
    budget = 64 * 1024  # a few values of a 20-row block: most are dropped and computed again
    fast = FastEngine(model, x, golden, batch_size=20, options=FastOptions(cache_bytes=budget))
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    assert [_key(r) for r in got] == [_key(r) for r in want]
    assert fast.stats["fast"] > 0
    assert 0 < most[0] <= budget
    assert passes[0] > 2 * 3  # dropped values were computed again (2 blocks, a few checks)


def test_block_values_hold_no_golden_tensor_and_refill_the_same_bits():
    torch.manual_seed(0)
    model = create_model("resnet8", dataset="digits").eval()
    x = model.example_inputs(16)
    fast = FastEngine(model, x, golden_run(model, x, 256), options=FastOptions(cache_bytes=1))
    prog = fast._program()
    values = fast._values
    assert prog is not None and values is not None
    need = {n for n in prog.nodes if n in prog.dynamic and n is not prog.placeholder}
    need = {n for n in need if n.op != "output"}
    block, verified = values.values(0, need)
    assert verified
    for n, v in dict.items(block):  # the block's inputs and markers only
        assert v is IN_CACHE or v is NOT_ROW_INDEXED or n is prog.placeholder
    assert len(fast.cache.items) == 1  # a budget of one byte keeps the last value only
    _, plain = values.forward(values.block_inputs(0)[0], need)  # no cache: every value kept
    for n, want in plain.items():
        if want is NOT_ROW_INDEXED:
            continue
        got = block[n]
        assert got.dtype == want.dtype and got.shape == want.shape, n.name
        assert torch.equal(
            got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)
        ), n.name


def test_windows_are_sized_by_the_probe_without_a_pass_of_their_own(monkeypatch):
    """The tracing probe measures every value's bytes per row as the golden pass does, so
    windows (which keep more golden values, within the budget) need no measuring pass: a
    windowed campaign makes as many golden passes as one without windows."""
    torch.manual_seed(0)
    model = create_model("resnet8", dataset="cifar10").eval()
    x = model.example_inputs(40)
    golden = golden_run(model, x, 256)
    fast = FastEngine(model, x, golden)
    prog = fast._program()
    assert prog is not None and fast._values is not None and prog.row_bytes
    fast._values.forward(fast._values.block_inputs(0)[0], set())
    dynamic = {n: b for n, b in fast._values.row_bytes.items() if n in prog.dynamic}
    assert dynamic and all(prog.row_bytes[n] == b for n, b in dynamic.items())
    sites = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][:3]
    faults = [Fault(s, "output", (0, 1, 2), (b,)) for s in sites for b in (3, 30)]
    tasks = [RunTask(k, (f,), tuple(range(40))) for k, f in enumerate(faults)]
    passes: list[int] = []
    forward = GoldenValues.forward

    def counted(self, *args, **kwargs):
        passes.append(args[0].shape[0])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GoldenValues, "forward", counted)
    counts = {}
    for window in (True, False):
        passes.clear()
        engine = FastEngine(model, x, golden, options=FastOptions(window=window))
        got = engine.run(tasks)
        assert (engine.stats["window_rows"] > 0) == window
        counts[window] = list(passes)
    assert counts[True] == counts[False]
    want = ReferenceEngine(model, x, golden).run(tasks)
    assert [_key(r) for r in got] == [_key(r) for r in want]


def test_marker_checks_never_compute_a_dropped_value_again(monkeypatch):
    """Whether a site's value is row-indexed is read from the block's marker: with a cache too
    small to keep anything, no check for :data:`NOT_ROW_INDEXED` starts a pass of its own
    (before, they read the value itself, and a dropped value costs a pass over the block)."""
    import inspect

    torch.manual_seed(0)
    model = create_model("resnet8", dataset="digits").eval()
    x = model.example_inputs(40)
    golden = golden_run(model, x, 256)
    faults = [f for f in _faults(model, x, 60, 5) if f.target == "weight"][:12]
    assert faults
    tasks = [RunTask(k, (f,), tuple(range(40))) for k, f in enumerate(faults)]
    callers: list[str] = []
    refill = GoldenValues.refill

    def watched(self, out, node):
        callers.extend("".join(f.code_context or ()) for f in inspect.stack()[1:4])
        return refill(self, out, node)

    monkeypatch.setattr(GoldenValues, "refill", watched)
    fast = FastEngine(model, x, golden, options=FastOptions(cache_bytes=1))
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    assert [(r.outcome, r.faulty_top1) for r in got] == [(r.outcome, r.faulty_top1) for r in want]
    assert fast.stats["fast"] == len(got)
    assert callers  # values were dropped and computed again for the batches
    assert not [line for line in callers if "NOT_ROW_INDEXED" in line]


def _resnet8_traced():
    """resnet8 (digits) over 64 example inputs: the model, inputs, golden outputs and the fast
    engine's traced graph (its ``row_bytes`` size the budgets below)."""
    torch.manual_seed(0)
    model = create_model("resnet8", dataset="digits").eval()
    x = model.example_inputs(64)
    golden = golden_run(model, x, 256)
    prog = FastEngine(model, x, golden, batch_size=64)._program()
    assert prog is not None
    return model, x, golden, prog


def _run_64(model, x, golden, budget, seed):
    """40 faults on all 64 inputs, batches of 64, cache ``budget``: the fast engine and its
    records, which must equal the reference engine's."""
    tasks = [RunTask(k, (f,), tuple(range(64))) for k, f in enumerate(_faults(model, x, 40, seed))]
    fast = FastEngine(model, x, golden, batch_size=64, options=FastOptions(cache_bytes=budget))
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden, batch_size=64).run(tasks)
    assert [_key(r) for r in got] == [_key(r) for r in want]
    return fast, got


def test_blocks_are_cut_so_that_a_block_of_golden_values_fits_half_the_budget(monkeypatch):
    """With a budget that holds all golden values of 16 inputs twice over, a campaign over 64
    inputs in batches of 64 runs in blocks of 16: each block's values are computed by one pass
    and none is dropped and computed again; the records are the reference engine's. (In blocks
    of 64 the values of a block do not fit and are computed again pass after pass.)"""
    model, x, golden, prog = _resnet8_traced()
    budget = 2 * 16 * sum(prog.row_bytes.values())
    passes = _golden_passes(monkeypatch)
    fast, got = _run_64(model, x, golden, budget, seed=5)
    assert fast.stats["fast"] == len(got)
    assert passes[0] == 4  # one pass per block, none to compute a dropped value again
    assert fast.block == 16
    assert fast.cache.bytes <= budget
    # a budget that holds a whole batch keeps blocks of batch_size inputs
    roomy = FastEngine(model, x, golden, batch_size=64, options=FastOptions(cache_bytes=8 * budget))
    roomy._program()
    assert roomy.block == 64


def test_the_cache_leaves_a_reserve_of_the_budget_for_the_batches(monkeypatch):
    """Golden values never take more than the budget less two values of ``batch_size`` rows
    of the largest value per row (at most half the budget): the batches' working memory comes
    on top of the cache."""
    model, x, golden, prog = _resnet8_traced()
    per_row, largest = sum(prog.row_bytes.values()), max(prog.row_bytes.values())
    budget = 64 * per_row
    reserve = min(budget // 2, 2 * 64 * largest)
    assert 0 < reserve < budget
    most = _cache_peak(monkeypatch)
    fast, got = _run_64(model, x, golden, budget, seed=6)
    assert fast.cache.budget == budget - reserve
    assert 0 < most[0] <= budget - reserve
