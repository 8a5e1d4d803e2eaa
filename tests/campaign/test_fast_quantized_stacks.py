# SPDX-License-Identifier: MIT
"""Weight and bias faults of static quantized linear and convolution layers, one output
channel each.

A fault in the packed int8 weight (or the float bias) of ``torch.ao.nn.quantized.Linear`` or
``Conv2d`` (and their fused ReLU forms) changes one output channel. The fast engine computes the
channels of all faults of a batch in one product (a packed weight of the faulty channels, with
their channels' scales), checked by a golden canary. The oracle is the reference engine, which
repacks the whole faulty weight and runs the full model per fault: every record must be equal
(outcome, top-1, largest difference), with per-channel and per-tensor weights, tasks over subsets
of the inputs, and when the canary fails.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from torchfault import Fault
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine
from torchfault.campaign._fast import _faults as fast_faults

from .test_fast import eager_int8

#: the globals of the fault module the engine calls into (patched by name below): found from
#: the engine's own function, since collecting ``src``'s doctests may import a second copy of
#: the module under the package's attribute
ENGINE_FAULTS = FastEngine._run_batch.__globals__["parameter_faults"].__globals__


def key(r):
    nan = lambda v: "nan" if isinstance(v, float) and v != v else v  # noqa: E731
    return (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, nan(r.max_abs_diff))


def quantized(per_channel: bool, relu: bool = False, seed: int = 0):
    """QuantStub -> Linear(24, 12) [-> ReLU] -> Linear(12, 6) -> DeQuantStub, eager mode,
    calibrated on the inputs; per-channel (x86 default) or per-tensor int8 weights."""
    from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules

    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(24, 12)]
    layers += [nn.ReLU()] if relu else []
    layers += [nn.Linear(12, 6)]
    model = nn.Sequential(QuantStub(), *layers, DeQuantStub()).eval()
    if relu:
        model = fuse_modules(model, [["1", "2"]])
    x = torch.randn(21, 24)
    return eager_int8(model, x, per_channel), x


def tasks_for(model, x, seed: int):
    """Single-bit flips on random weights (bits 0..7) and biases (bits 0..31) of both layers;
    each fault on all inputs, on a shuffled subset, and on one input."""
    rng = random.Random(seed)
    last = "3" if isinstance(model[2], nn.Identity) else "2"
    faults = []
    for _ in range(30):
        name = rng.choice(("1", last))
        layer = model[int(name)]
        out_f, in_f = layer.weight().shape
        if rng.random() < 0.75:
            f = Fault(
                name, "weight", (rng.randrange(out_f), rng.randrange(in_f)), (rng.randrange(8),)
            )
        else:
            f = Fault(
                name, "bias", (rng.randrange(out_f),), (rng.choice((20, 23, 26, 29, 30, 31)),)
            )
        faults.append(f)
    n = x.shape[0]
    ids = list(range(n))
    sub = ids[:]
    rng.shuffle(sub)
    tasks = [RunTask(k, (f,), tuple(ids)) for k, f in enumerate(faults)]
    tasks += [RunTask(100 + k, (f,), tuple(sub[: 2 + k % n])) for k, f in enumerate(faults)]
    tasks += [RunTask(200 + k, (f,), (rng.randrange(n),)) for k, f in enumerate(faults)]
    return tasks


def run_both(model, x, tasks, batch_size=256):
    golden = golden_run(model, x, 256)
    fast = FastEngine(model, x, golden, batch_size=batch_size)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden, batch_size=batch_size).run(tasks)
    return got, want, fast


def packed_sites(fast):
    return {
        f"{s.node.name}:{s.target}": s.conv_trick for s in fast._sites.values() if s and s.packed
    }


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("batch_size", [256, 7])
def test_stacked_quantized_linear_equals_reference(per_channel, batch_size):
    model, x = quantized(per_channel)
    assert type(model[1]) is fast_faults.QuantizedLinear
    tasks = tasks_for(model, x, seed=int(per_channel) + batch_size)
    got, want, fast = run_both(model, x, tasks, batch_size)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["fast"] == len(got) and fast.stats["reference"] == 0
    assert {r.outcome for r in want} - {"masked"}  # the faults do something
    sites = packed_sites(fast)
    assert sites and set(sites.values()) == {True}, sites  # every packed site stacked


def test_a_failing_canary_falls_back_to_the_layer_under_inject(monkeypatch):
    """When the stacked product's canary does not reproduce golden, the site's faults are run one
    by one under inject (the repacked whole layer), with the same records."""
    model, x = quantized(True, seed=3)
    tasks = tasks_for(model, x, seed=11)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        return None

    monkeypatch.setitem(ENGINE_FAULTS, "_stacked_quantized", failing)
    got, want, fast = run_both(model, x, tasks)
    assert calls
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["fast"] == len(got)
    assert set(packed_sites(fast).values()) == {False}


def test_the_canary_compares_with_golden(monkeypatch):
    """The canary is compared with the layer's golden output: with that output changed in one
    word of a stacked channel, the stacked product is refused and the records still equal the
    reference engine's (run on the true golden values)."""
    model, x = quantized(True, seed=4)
    golden = golden_run(model, x, 256)
    layer = model[1]
    faults = [Fault("1", "weight", (o, 3), (6,)) for o in (0, 5, 7)]
    tasks = [RunTask(k, (f,), tuple(range(x.shape[0]))) for k, f in enumerate(faults)]
    real = ENGINE_FAULTS["_stacked_quantized"]
    seen = []

    def tampered(site, rows, items, xq, gold):
        out = gold[site.node]  # the layer's golden output (the only value the product reads)
        ints = out.int_repr().clone()
        ints[rows[0], items[0][1]] ^= 1
        g = {
            site.node: torch._make_per_tensor_quantized_tensor(
                ints, out.q_scale(), out.q_zero_point()
            )
        }
        y = real(site, rows, items, xq, g)
        seen.append(y is None)
        return y

    monkeypatch.setitem(ENGINE_FAULTS, "_stacked_quantized", tampered)
    fast = FastEngine(model, x, golden)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    assert seen and all(seen)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["fast"] == len(got) and not fast.handed_over
    assert type(layer) is fast_faults.QuantizedLinear


def test_a_fused_linear_relu_is_stacked_with_its_own_operator():
    """``LinearReLU`` (a quantized linear layer with its ReLU fused in, as FX quantization makes
    it) runs ``quantized.linear_relu``; its columns are stacked with that operator, with the same
    records as the reference engine."""
    model, x = quantized(True, relu=True, seed=5)
    assert type(model[1]) is torch.ao.nn.intrinsic.quantized.LinearReLU
    tasks = tasks_for(model, x, seed=12)
    got, want, fast = run_both(model, x, tasks)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["fast"] == len(got)
    assert {r.outcome for r in want} - {"masked"}
    sites = packed_sites(fast)
    assert sites.get("_1:weight") is True and sites.get("_3:weight") is True, sites


def quantized_cnn(per_channel: bool, seed: int = 0):
    """QuantStub -> Conv2d(3, 8, 3, pad 1) + ReLU (fused: ConvReLU2d) -> Conv2d(8, 8, 3,
    stride 2, groups 2) -> Conv2d(8, 6, 1) -> Flatten -> Linear -> DeQuantStub, eager mode."""
    from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules

    torch.manual_seed(seed)
    model = nn.Sequential(
        QuantStub(),
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=2),
        nn.Conv2d(8, 6, 1),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
        DeQuantStub(),
    ).eval()
    model = fuse_modules(model, [["1", "2"]])
    x = torch.randn(19, 3, 8, 8)
    return eager_int8(model, x, per_channel), x


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_stacked_quantized_convolutions_equal_reference(per_channel):
    """Faults on the weights and biases of a fused ConvReLU2d, a grouped Conv2d (not stacked: a
    channel reads only its group), a 1x1 Conv2d and the linear head: records equal the reference
    engine's; the ungrouped convolutions and the head are stacked."""
    model, x = quantized_cnn(per_channel, seed=int(per_channel))
    rng = random.Random(int(per_channel) + 20)
    faults = []
    for _ in range(40):
        name = rng.choice(("1", "3", "4", "6"))
        shape = model[int(name)].weight().shape
        if rng.random() < 0.75:
            index = tuple(rng.randrange(d) for d in shape)
            faults.append(Fault(name, "weight", index, (rng.randrange(8),)))
        else:
            bits = (rng.choice((20, 23, 26, 29, 30, 31)),)
            faults.append(Fault(name, "bias", (rng.randrange(shape[0]),), bits))
    n = x.shape[0]
    tasks = [RunTask(k, (f,), tuple(range(n))) for k, f in enumerate(faults)]
    tasks += [RunTask(100 + k, (f,), (k % n, (3 * k + 1) % n)) for k, f in enumerate(faults)]
    got, want, fast = run_both(model, x, tasks)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["fast"] == len(got) and fast.stats["reference"] == 0
    assert {r.outcome for r in want} - {"masked"}
    sites = packed_sites(fast)
    stacked = {k for k, v in sites.items() if v}
    assert {k.split(":")[0] for k in stacked} == {"_1", "_4", "_6"}, sites
    assert all(v is None for k, v in sites.items() if k.startswith("_3:")), sites
