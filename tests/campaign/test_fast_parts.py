# SPDX-License-Identifier: MIT
"""Tall batches of transformer encoder layers run in parts (issue 12, speed): a
``batch_first`` ``nn.TransformerEncoderLayer`` after a fault site, and a layer with activation
faults injected inside it, are computed in calls of up to 32 (16) rows and joined. The oracle for
every record is the reference engine (full forward passes of each fault's inputs)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import torchfault.campaign._fast._faults as fast_faults
from torchfault import Fault
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine
from torchfault.campaign._fast._rows import PART_ROWS, in_parts

N_INPUTS = 20  # rows of one fault; a batch of several faults is taller than PART_ROWS


class Encoder(nn.Module):
    def __init__(self, batch_first: bool = True, mask: bool = False) -> None:
        super().__init__()
        self.mask = mask
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = self.embed(x)
        if self.mask:
            return self.head(self.encoder(h, mask=torch.zeros(6, 6)).mean(1))
        return self.head(self.encoder(h).mean(1))


def _faults(seed: int) -> list[Fault]:
    rng = random.Random(seed)
    faults = []
    for k in range(30):
        module = ("embed", "encoder.layers.0.linear1", "encoder.layers.0.dropout")[k % 3]
        width = 32 if module.endswith("linear1") else 16
        faults.append(Fault(module, "output", (rng.randrange(6), rng.randrange(width)), (30,)))
    faults += [
        Fault("embed", "weight", (rng.randrange(16), rng.randrange(8)), (rng.randrange(20, 31),))
        for _ in range(10)
    ]
    return faults


def _run(model: nn.Module, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(N_INPUTS, 6, 8)
    golden = golden_run(model, x, 256)
    ids = tuple(range(N_INPUTS))
    tasks = [RunTask(k, (f,), ids) for k, f in enumerate(_faults(seed))]
    fast = FastEngine(model, x, golden)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    return got, want, fast


def _key(r):
    return (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_layers_in_tall_batches_run_in_parts_with_the_reference_records(seed, monkeypatch):
    calls: list[int] = []
    injected = fast_faults.injected_output

    def counted(site, model, faults, values, golden, pos, structured=False):
        calls.append(int(pos.numel()))
        return injected(site, model, faults, values, golden, pos, structured)

    monkeypatch.setattr(fast_faults, "injected_output", counted)
    torch.manual_seed(seed)
    got, want, fast = _run(Encoder().eval(), seed)
    assert [_key(r) for r in got] == [_key(r) for r in want]
    assert fast.stats["fast"] == len(got)  # every run on the fast path
    assert fast.stats["in_parts"] > 0  # encoder layers after a site ran in parts
    assert calls and max(calls) <= PART_ROWS  # faults inside a layer: calls of a few rows
    # every fault's 20 rows in one call: 10 faults inside a layer, one call each
    assert len(calls) == 20


def test_an_encoder_called_with_a_mask_is_not_split():
    """An encoder called with a mask stays one traced node (not its layers): nothing is split,
    and the records are the reference engine's."""
    torch.manual_seed(3)
    got, want, fast = _run(Encoder(mask=True).eval(), 3)
    assert [_key(r) for r in got] == [_key(r) for r in want]
    assert fast.stats["in_parts"] == 0


def test_a_hooked_layer_is_not_split():
    """A hook on a layer's submodule (a user's detector) sees every call of the model's own:
    the layer is computed as the model computes it."""
    torch.manual_seed(4)
    model = Encoder().eval()
    seen: list[int] = []
    for layer in model.encoder.layers:
        layer.norm2.register_forward_hook(lambda m, a, o: seen.append(o.shape[0]))
    got, want, fast = _run(model, 4)
    assert [_key(r) for r in got] == [_key(r) for r in want]
    assert fast.stats["in_parts"] == 0
    assert max(seen) > PART_ROWS  # the fast engine's tall batches reached the hooked layer whole


@pytest.mark.parametrize("batch_first", [True, False])
def test_in_parts_joins_calls_of_32_rows_padded_to_16(batch_first):
    """70 rows: calls of rows 0-31, 32-63 and 64-69 (padded with copies of row 64 to 16 rows),
    joined; a layer whose batch is not its first dimension is left whole (``None``)."""
    torch.manual_seed(5)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first).eval()
    gm = fx.symbolic_trace(nn.Sequential(layer))
    node = next(n for n in gm.graph.nodes if n.op == "call_module")
    x = torch.randn(70, 6, 16)
    heights: list[int] = []

    def run(n, env, lookup):
        v = lookup(n.args[0])
        heights.append(v.shape[0])
        return layer(v)

    with torch.no_grad():
        out = in_parts(node, layer, lambda a: x, run, 16)
        if not batch_first:
            assert out is None and heights == []
            return
        assert heights == [32, 32, 16]
        tail = layer(torch.cat([x[64:], x[64:65].expand(10, -1, -1)]))[:6]
        want = torch.cat([layer(x[:32]), layer(x[32:64]), tail])
    assert out is not None and out.shape == x.shape
    assert torch.equal(out, want)


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.register_buffer("mask", torch.zeros(6, 6))

    def forward(self, x):
        return self.layer(x, src_mask=self.mask)


def test_in_parts_leaves_a_layer_called_with_a_mask_whole():
    model = _Masked().eval()
    gm = fx.symbolic_trace(model)
    node = next(n for n in gm.graph.nodes if n.op == "call_module")
    assert node.kwargs  # the mask is an argument of the call
    x = torch.randn(70, 6, 16)
    with torch.no_grad():
        got = in_parts(node, model.layer, lambda a: x, lambda n, env, lookup: model.layer(x), 16)
    assert got is None
