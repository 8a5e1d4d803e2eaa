# SPDX-License-Identifier: MIT
"""Hypothesis properties at the inject level: a flip applied twice is the identity, stuck-at is
idempotent, and only the named elements and bits change (weights and activations, four dtypes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchfault import Fault, inject

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
DTYPES = {
    torch.float32: (torch.int32, 32),
    torch.float16: (torch.int16, 16),
    torch.bfloat16: (torch.int16, 16),
    torch.int8: (torch.int8, 8),
}
SHAPE = (3, 4)


class Holder(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        if dtype.is_floating_point:
            w = (torch.randn(SHAPE, generator=g) * 5).to(dtype)
        else:
            w = torch.randint(-128, 128, SHAPE, generator=g, dtype=dtype)
        self.register_buffer("w", w)
        self.act = nn.Identity()

    def forward(self, x):
        return self.act(x + 0)


def words(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().view(DTYPES[dtype][0]).to(torch.int64) & ((1 << DTYPES[dtype][1]) - 1)


def run(model, faults, x):
    with inject(model, faults):
        stored = model.w.clone()
        out = []
        h = model.act.register_forward_hook(lambda m, a, o: out.append(o.clone()))
        model(x)
        h.remove()
    return stored, out[0]


site = st.tuples(st.integers(0, SHAPE[0] - 1), st.integers(0, SHAPE[1] - 1))


@st.composite
def case(draw):
    dtype = draw(st.sampled_from(list(DTYPES)))
    width = DTYPES[dtype][1]
    bits = tuple(draw(st.sets(st.integers(0, width - 1), min_size=1, max_size=3)))
    return dtype, draw(site), bits, draw(st.sampled_from([None, 0, 1]))


def example(dtype):
    g = torch.Generator().manual_seed(1)
    if dtype.is_floating_point:
        return (torch.randn(2, *SHAPE, generator=g) * 5).to(dtype)
    return torch.randint(-128, 128, (2, *SHAPE), generator=g, dtype=dtype)


@SETTINGS
@given(case())
def test_a_flip_applied_twice_is_the_identity(c):
    dtype, index, bits, sample = c
    model, x = Holder(dtype), example(dtype)
    twice = [Fault("", "w", index=index, bits=bits)] * 2 + [
        Fault("act", index=index, bits=bits, sample=sample)
    ] * 2
    stored, out = run(model, twice, x)
    assert torch.equal(words(stored, dtype), words(model.w, dtype))
    assert torch.equal(words(out, dtype), words(x, dtype))


@SETTINGS
@given(case(), st.sampled_from(["stuck_at_0", "stuck_at_1"]))
def test_stuck_at_is_idempotent(c, model_name):
    dtype, index, bits, sample = c
    x = example(dtype)
    once = [
        Fault("", "w", index=index, bits=bits, model=model_name),
        Fault("act", index=index, bits=bits, model=model_name, sample=sample),
    ]
    twice = [f for f in once for _ in range(2)]
    a = run(Holder(dtype), once, x)
    b = run(Holder(dtype), twice, x)
    assert torch.equal(words(a[0], dtype), words(b[0], dtype))
    assert torch.equal(words(a[1], dtype), words(b[1], dtype))


@SETTINGS
@given(case())
def test_only_the_named_elements_and_bits_change(c):
    dtype, index, bits, sample = c
    model, x = Holder(dtype), example(dtype)
    before = words(model.w, dtype)
    stored, out = run(
        model,
        [
            Fault("", "w", index=index, bits=bits),
            Fault("act", index=index, bits=bits, sample=sample),
        ],
        x,
    )
    mask = sum(1 << b for b in bits)
    want = torch.zeros(SHAPE, dtype=torch.int64)
    want[index] = mask
    assert torch.equal(words(stored, dtype) ^ before, want)
    rows = torch.zeros(2, *SHAPE, dtype=torch.int64)
    if sample is None:
        rows[:, index[0], index[1]] = mask
    else:
        rows[sample, index[0], index[1]] = mask
    assert torch.equal(words(out, dtype) ^ words(x, dtype), rows)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_many_faults_on_one_tensor_equal_applying_them_one_by_one(dtype):
    """The merged, vectorised path (one scatter for every bitwise fault on a tensor) against
    injecting the faults one context at a time."""
    import random

    rng = random.Random(0)
    width = DTYPES[dtype][1]
    faults = [
        Fault("act", index=(rng.randrange(3), rng.randrange(4)), bits=(rng.randrange(width),), sample=rng.choice([None, 0, 1]),
              model=rng.choice(["bit_flip", "bit_flip", "stuck_at_0", "stuck_at_1"]))
        for _ in range(40)
    ]  # fmt: skip
    x = example(dtype)
    _, merged = run(Holder(dtype), faults, x)
    one_by_one = x
    for f in faults:
        _, one_by_one = run(Holder(dtype), [f], one_by_one)
    assert torch.equal(words(merged, dtype), words(one_by_one, dtype))
