# SPDX-License-Identifier: MIT
"""Faults on packed quantized weights: the injected words against a NumPy oracle, and the module
given back exactly (the very packed object when nothing else wrote it, the same words otherwise),
whatever the order in which weight and bias groups are restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.ao.nn.quantized as nnq
import torch.nn as nn

from torchfault import Fault, inject
from torchfault.faults import packed_object, stored_tensors, unpack


def _qlinear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nnq.Linear(6, 4)
    w = torch.quantize_per_tensor(torch.randn(4, 6), 0.05, 0, torch.qint8)
    m.set_weight_bias(w, torch.randn(4))
    return nn.Sequential(m).eval()


def _words(m: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    w, b = m[0]._weight_bias()
    return w.int_repr().numpy().copy(), b.numpy().copy()


def test_weight_fault_flips_the_stored_int8_word_and_puts_the_object_back() -> None:
    m = _qlinear()
    before_obj = packed_object(m[0])
    w0, b0 = _words(m)
    x = torch.quantize_per_tensor(torch.randn(3, 6), 0.1, 64, torch.quint8)
    f = Fault("0", "weight", index=(2, 5), bits=(6,))
    with inject(m, f):
        w1, b1 = _words(m)
        m(x)
    expect = w0.copy()
    expect[2, 5] = np.int8(np.uint8(expect[2, 5].view(np.uint8)) ^ np.uint8(1 << 6)).item()
    np.testing.assert_array_equal(w1, expect)  # one word changed, by the flip
    np.testing.assert_array_equal(b1, b0)
    assert packed_object(m[0]) is before_obj  # the same object, not a re-packed copy
    w2, b2 = _words(m)
    np.testing.assert_array_equal(w2, w0)
    np.testing.assert_array_equal(b2, b0)


@pytest.mark.parametrize("persistence", ["transient", "permanent"])
def test_weight_and_bias_faults_of_one_module_restore_in_any_order(persistence: str) -> None:
    # transient groups are restored after the pass in write order, permanent ones on exit in
    # reverse order: both must give every word back
    m = _qlinear(1)
    w0, b0 = _words(m)
    x = torch.quantize_per_tensor(torch.randn(2, 6), 0.1, 64, torch.quint8)
    faults = [
        Fault("0", "weight", index=(1, 1), bits=(7,), persistence=persistence),
        Fault("0", "bias", index=(3,), bits=(30,), persistence=persistence),
    ]
    with inject(m, faults):
        w1, b1 = _words(m)
        assert (w1 != w0).sum() == 1 and (b1.view(np.uint32) != b0.view(np.uint32)).sum() == 1
        m(x)
        if persistence == "transient":  # restored after the pass
            w2, b2 = _words(m)
            np.testing.assert_array_equal(w2, w0)
            np.testing.assert_array_equal(b2.view(np.uint32), b0.view(np.uint32))
    w3, b3 = _words(m)
    np.testing.assert_array_equal(w3, w0)
    np.testing.assert_array_equal(b3.view(np.uint32), b0.view(np.uint32))


def test_unpack_hands_out_copies_and_sees_a_new_packing() -> None:
    m = _qlinear(2)[0]
    w, b = unpack(m)
    b.add_(100.0)  # a caller changing its copy changes nothing stored
    w2, b2 = unpack(m)
    assert not torch.equal(b, b2)
    ref_w, ref_b = m.weight(), m.bias()  # torch's own unpacking, uncached
    assert torch.equal(w2.int_repr(), ref_w.int_repr()) and torch.equal(b2, ref_b)
    new_b = torch.zeros(4)
    m.set_weight_bias(ref_w, new_b)  # a new packed object: unpacked again, not the old result
    assert torch.equal(unpack(m)[1], new_b)
    assert torch.equal(stored_tensors(m)["bias"][1], new_b)


def test_quantized_conv_weight_fault_restores_its_packed_object() -> None:
    torch.manual_seed(3)
    c = nnq.Conv2d(2, 3, 3)
    w = torch.quantize_per_channel(
        torch.randn(3, 2, 3, 3),
        torch.tensor([0.02, 0.03, 0.04], dtype=torch.double),
        torch.zeros(3, dtype=torch.int64),
        0,
        torch.qint8,
    )
    c.set_weight_bias(w, torch.randn(3))
    m = nn.Sequential(c).eval()
    obj = packed_object(c)
    w0 = c.weight().int_repr().clone()
    x = torch.quantize_per_tensor(torch.randn(1, 2, 5, 5), 0.1, 64, torch.quint8)
    golden = m(x).dequantize()
    with inject(m, Fault("0", "weight", index=(1, 0, 2, 2), bits=(6,))):
        changed = (c.weight().int_repr() != w0).nonzero().tolist()
        faulty = m(x).dequantize()
    assert changed == [[1, 0, 2, 2]]
    assert not torch.equal(golden, faulty)
    assert packed_object(c) is obj
    assert torch.equal(m(x).dequantize(), golden)
