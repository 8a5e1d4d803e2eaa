# SPDX-License-Identifier: MIT
"""The one fault-application path (``torchfault.injectors.apply_fault`` and its parts), against
outside oracles: numpy's integer views of the words, ``numpy.ravel_multi_index``, and what
``inject`` writes into a model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject
from torchfault.errors import TorchFaultError
from torchfault.injectors import apply_fault, apply_masks, bitwise_op, flat_index
from torchfault.numerics import get_format, wrap_words


def numpy_flip(x: torch.Tensor, flat: list[int], bit: int) -> torch.Tensor:
    out = x.detach().contiguous().clone().numpy().reshape(-1)
    words = out.view(np.int32)
    for i in flat:
        words[i] ^= np.int32(np.uint32(1 << bit).view(np.int32))
    return torch.from_numpy(out.reshape(x.shape))


def test_flat_index_against_numpy():
    rng = random.Random(0)
    for _ in range(200):
        shape = tuple(rng.randint(1, 5) for _ in range(rng.randint(1, 4)))
        index = tuple(rng.randrange(-d, d) for d in shape)
        want = np.ravel_multi_index(tuple(i % d for i, d in zip(index, shape)), shape)
        assert flat_index(index, shape) == want
    with pytest.raises(TorchFaultError, match="rank 1 but the tensor has shape"):
        flat_index((1,), (2, 3), "fault on a:weight")
    with pytest.raises(TorchFaultError, match="fault on a:weight: index .* dimension 1"):
        flat_index((1, 3), (2, 3), "fault on a:weight")


def test_wrap_words_against_numpy():
    values = torch.tensor([0, 1, -1, 2**31, 2**31 - 1, -(2**31), 2**32 + 5, 255, 256])
    for name, np_dtype in (("float32", np.int32), ("float16", np.int16), ("bfloat16", np.int16)):
        got = wrap_words(values, get_format(name)).numpy()
        assert got.tolist() == values.numpy().astype(np_dtype).tolist(), name


@pytest.mark.parametrize("seed", range(6))
def test_apply_fault_equals_what_inject_writes(seed):
    """A parameter fault: the faulty tensor inject writes into the model while active; an
    activation fault: the module output inject hands on; a bit flip: numpy's flip."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    fm = rng.choice(["bit_flip", "stuck_at_0", "stuck_at_1", "zero", "value"])
    bits = () if fm in ("zero", "value") else (rng.randrange(32),)
    params = {"value": 7.5} if fm == "value" else {}
    w = Fault("0", "weight", (rng.randrange(4), rng.randrange(5)), bits, fm, params=params)
    want = apply_fault(model[0].weight, w)
    with inject(model, w):
        got = model[0].weight.detach().clone()
    assert torch.equal(want.view(torch.int32), got.view(torch.int32))
    x = torch.randn(3, 5)
    sample = rng.choice([None, 1])
    a = Fault("0", "output", (rng.randrange(4),), bits, fm, sample=sample, params=params)
    seen = []
    with inject(model, a):
        h = model[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
        try:
            model(x)
        finally:
            h.remove()
    want = apply_fault(model[0](x), a, batched=True)
    assert torch.equal(want.view(torch.int32), seen[0].view(torch.int32))
    if fm == "bit_flip":
        rows = range(3) if sample is None else [sample]
        flat = [r * 4 + a.index[0] for r in rows]
        oracle = numpy_flip(model[0](x).detach(), flat, bits[0])
        assert torch.equal(want.view(torch.int32), oracle.view(torch.int32))


def test_apply_fault_leaves_its_tensor_and_checks_the_fault():
    t = torch.randn(2, 3)
    before = t.clone()
    out = apply_fault(t, [Fault("m", "weight", (1, 2), (31,)), Fault("m", "weight", (1, 2), (31,))])
    assert torch.equal(t, before) and torch.equal(out, before) and out is not t
    with pytest.raises(TorchFaultError, match="fault on m:weight: index"):
        apply_fault(t, Fault("m", "weight", (2, 0), (3,)))
    with pytest.raises(TorchFaultError, match="fault on m:weight"):
        apply_fault(t, Fault("m", "weight", (1, 0), (40,)))
    with pytest.raises(TorchFaultError, match="sample 5 is out of range"):
        apply_fault(t, Fault("m", "output", (0,), (3,), sample=5), batched=True)


def test_apply_masks_merges_and_keeps_layout():
    fmt = get_format("float32")
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    flat = torch.tensor([5, 5, 17])
    masks = torch.tensor([1 << 30, 1 << 30, 1 << 3])
    out = apply_masks(x, flat, masks, bitwise_op("bit_flip"), fmt)
    assert out.stride() == x.stride()
    assert torch.equal(out.view(torch.int32), numpy_flip(x, [17], 3).view(torch.int32))
    plain = torch.randn(40)
    got = apply_masks(plain, np.array([1, 7]), np.array([1 << 31, 1 << 2]), "xor", fmt, merged=True)
    want = numpy_flip(numpy_flip(plain, [1], 31), [7], 2)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
