# SPDX-License-Identifier: MIT
"""``set_values`` and the ``value`` fault model take Python floats as doubles: a float64 tensor
gets the double itself (before, the number went through float32, torch's default dtype, and 0.1
came out as 0.10000000149011612), a float32 tensor the double rounded once. Oracle: struct."""

from __future__ import annotations

import struct

import pytest
import torch

from torchfault import Fault, inject
from torchfault.numerics import set_values

VALUES = [0.1, -1 / 3, 1e-310, 2.0**-1074, 1e300, 123456789.123456789]


@pytest.mark.parametrize("value", VALUES)
def test_a_python_float_is_stored_exactly_in_float64(value):
    out = set_values(torch.zeros(3, dtype=torch.float64), [1], value)
    (word,) = struct.unpack("<q", struct.pack("<d", value))
    assert out.view(torch.int64)[1].item() == word


@pytest.mark.parametrize("value", [0.1, -1 / 3, 1e-40, 3.0e38, 16777217.0])
def test_a_python_float_is_rounded_once_into_float32(value):
    out = set_values(torch.zeros(2), [0], value)
    (word,) = struct.unpack("<i", struct.pack("<f", value))  # struct rounds to nearest, once
    assert out.view(torch.int32)[0].item() == word


def test_the_value_fault_model_writes_the_double_into_a_float64_weight():
    model = torch.nn.Linear(3, 2).double()
    x = torch.ones(1, 3, dtype=torch.float64)
    with (
        torch.no_grad(),
        inject(model, Fault("", "weight", (1, 2), model="value", params={"value": 0.1})),
    ):
        assert model.weight[1, 2].item() == 0.1
        faulty = model(x)
    assert model.weight[1, 2].item() != 0.1
    assert faulty[0, 1].item() != model(x)[0, 1].item()
