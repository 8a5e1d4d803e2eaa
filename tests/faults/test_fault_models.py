# SPDX-License-Identifier: MIT
"""Every registered fault model on parameters and activations, against struct/numpy oracles.

The tests parametrize over ``list_fault_models()``, so a newly registered model is tested on
both kinds of tensor ("only the named element changes") without new test code; the built-in
models are also checked value by value against an independent oracle (``struct`` words, numpy
views), in float32, float16, bfloat16, int8 and qint8.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject
from torchfault.faults import FAULT_MODELS, list_fault_models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

#: parameters the built-in models need; others run with none
PARAMS = {"value": {"value": 1.5}, "random_value": {"low": -4.0, "high": -2.0}}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]
WIDTH = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16, torch.int8: 8, torch.qint8: 8}


# ----------------------------------------------------------------------------- oracle
def word_of(value: float | int, dtype: torch.dtype) -> int:
    """The stored word (unsigned) of a value, computed with struct / plain integers."""
    if dtype == torch.float32:
        return struct.unpack("<I", struct.pack("<f", value))[0]
    if dtype == torch.float16:
        return struct.unpack("<H", struct.pack("<e", value))[0]
    if dtype == torch.bfloat16:  # every bfloat16 is a float32 with 16 zero low bits
        return struct.unpack("<I", struct.pack("<f", value))[0] >> 16
    return int(value) & 0xFF  # int8 and the integer of a qint8


def words_of(t: torch.Tensor) -> np.ndarray:
    """Unsigned words of every element, through numpy views (not torchfault)."""
    if t.is_quantized:
        return t.int_repr().numpy().view(np.uint8).astype(np.int64).reshape(-1)
    if t.dtype == torch.bfloat16:
        f32 = t.to(torch.float32).contiguous().numpy().view(np.uint32)
        return (f32 >> 16).astype(np.int64).reshape(-1)
    view = {torch.float32: np.uint32, torch.float16: np.uint16, torch.int8: np.uint8}[t.dtype]
    return t.detach().contiguous().numpy().view(view).astype(np.int64).reshape(-1)


def expected_word(model: str, word: int, bits: tuple[int, ...], dtype: torch.dtype) -> int | None:
    """The word a built-in model leaves, or None when only 'it changed somewhere' is known."""
    mask = sum(1 << b for b in bits)
    if model == "bit_flip":
        return word ^ mask
    if model == "stuck_at_0":
        return word & ~mask
    if model == "stuck_at_1":
        return word | mask
    if model == "zero":
        return 0
    if model == "value":
        return word_of(1.5, dtype) if dtype != torch.int8 else 2  # ints round half to even
    return None


def check_only_element_changed(before, after, flat, model, bits, dtype):
    wb, wa = words_of(before), words_of(after)
    others = np.ones(wb.size, dtype=bool)
    others[flat] = False
    np.testing.assert_array_equal(wa[others], wb[others])
    want = expected_word(model, int(wb[flat]), bits, dtype)
    if want is not None:
        assert int(wa[flat]) == want, (model, dtype, hex(int(wb[flat])), hex(int(wa[flat])))
    if model == "random_value" and dtype.is_floating_point:
        assert -4.0 <= float(after.reshape(-1)[flat]) < -2.0


# ----------------------------------------------------------------------------- models
class Holder(nn.Module):
    """A parameter (or, for integers, a buffer) of the dtype under test, and an activation."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        if dtype.is_floating_point:
            self.weight = nn.Parameter((torch.randn(4, 5, generator=g) * 3).to(dtype))
        else:
            self.register_buffer(
                "weight", torch.randint(-128, 128, (4, 5), generator=g, dtype=dtype)
            )
        self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a fresh activation of the tested dtype: x * 1 is exact for every dtype here
        return self.act(x * 1)


def example(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    if dtype.is_floating_point:
        return (torch.randn(3, 4, 5, generator=g) * 3).to(dtype)
    return torch.randint(-128, 128, (3, 4, 5), generator=g, dtype=dtype)


def bits_for(model: str, dtype: torch.dtype) -> tuple[int, ...]:
    top = WIDTH[dtype] - 1
    if FAULT_MODELS.info(model).capabilities.get("needs_bits"):
        return (0, top - 1) if model == "bit_flip" else (top - 2,)
    return ()


def fault_for(model: str, dtype: torch.dtype, target: str, **kw) -> Fault:
    return Fault(
        "act" if target == "output" else "",
        target,
        index=(2, 3),
        bits=bits_for(model, dtype),
        model=model,
        params=PARAMS.get(model, {}),
        **kw,
    )


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list_fault_models())
def test_every_fault_model_on_a_parameter(name, dtype):
    model = Holder(dtype)
    before = model.weight.detach().clone()
    with inject(model, fault_for(name, dtype, "weight"), seed=0):
        after = model.weight.detach().clone()
    check_only_element_changed(before, after, 2 * 5 + 3, name, bits_for(name, dtype), dtype)
    assert torch.equal(model.weight.view(-1), before.view(-1))  # restored


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list_fault_models())
def test_every_fault_model_on_an_activation(name, dtype):
    model, x = Holder(dtype), example(dtype)
    seen = []
    with inject(model, fault_for(name, dtype, "output", sample=1), seed=0):
        h = model.act.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
        try:
            model(x)
        finally:
            h.remove()
    flat = 1 * 20 + 2 * 5 + 3
    check_only_element_changed(x, seen[0], flat, name, bits_for(name, dtype), dtype)


@pytest.mark.parametrize("name", list_fault_models())
def test_every_fault_model_on_a_packed_qint8_weight(name, quantized_linear):
    model = quantized_linear(6, 4, seed=3)
    w0 = model.fc.weight()
    bits = bits_for(name, torch.qint8)
    fault = Fault("fc", "weight", index=(2, 3), bits=bits, model=name, params=PARAMS.get(name, {}))
    with inject(model, fault, seed=0):
        w1 = model.fc.weight()
    assert w1.dtype == torch.qint8
    wb, wa = words_of(w0), words_of(w1)
    others = np.ones(wb.size, dtype=bool)
    others[2 * 6 + 3] = False
    np.testing.assert_array_equal(wa[others], wb[others])
    if name in ("bit_flip", "stuck_at_0", "stuck_at_1", "zero"):
        want = expected_word(name, int(wb[15]), bits, torch.qint8)
        if name == "zero":  # zero is the integer of the zero point
            want = int(w0.q_per_channel_zero_points()[2]) & 0xFF
        assert int(wa[15]) == want
    # the quantizer is kept
    assert torch.equal(w1.q_per_channel_scales(), w0.q_per_channel_scales())
    assert torch.equal(w1.q_per_channel_zero_points(), w0.q_per_channel_zero_points())
    w2 = model.fc.weight()
    assert torch.equal(w2.int_repr(), w0.int_repr())
    assert torch.equal(w2.q_per_channel_scales(), w0.q_per_channel_scales())


@pytest.mark.parametrize("name", list_fault_models())
def test_every_fault_model_on_a_qint8_activation(name):
    class Q(nn.Module):
        def forward(self, x):
            return torch.quantize_per_tensor(x, 0.05, 3, torch.qint8)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = Q()

        def forward(self, x):
            return self.q(x)

    model, x = Net(), torch.randn(2, 7, generator=torch.Generator().manual_seed(4))
    golden = model(x)
    bits = bits_for(name, torch.qint8)
    fault = Fault("q", index=(4,), bits=bits, model=name, sample=1, params=PARAMS.get(name, {}))
    with inject(model, fault, seed=0):
        out = model(x)
    assert out.q_scale() == golden.q_scale() and out.q_zero_point() == golden.q_zero_point()
    wb, wa = words_of(golden), words_of(out)
    others = np.ones(wb.size, dtype=bool)
    others[7 + 4] = False
    np.testing.assert_array_equal(wa[others], wb[others])
    if name in ("bit_flip", "stuck_at_0", "stuck_at_1"):
        assert int(wa[11]) == expected_word(name, int(wb[11]), bits, torch.qint8)


def test_user_fault_model_registered_by_decorator_is_used_by_inject():
    from torchfault import register_fault_model

    @register_fault_model("negate_for_test", description="Negate the element.", overwrite=True)
    def negate(x, index, bits, fmt, generator):
        y = x.detach().flatten().clone()
        y[index] = -y[index]
        return y.view_as(x)

    try:
        model = Holder(torch.float32)
        before = model.weight.detach().clone()
        with inject(model, Fault("", "weight", index=(1, 1), model="negate_for_test")):
            assert model.weight[1, 1] == -before[1, 1]
            assert torch.equal(model.weight[0], before[0])
        assert torch.equal(model.weight, before)
    finally:
        FAULT_MODELS.remove("negate_for_test")


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name", list_fault_models())
def test_every_fault_model_rejects_an_unknown_parameter_before_anything_runs(name):
    from torchfault.errors import TorchFaultError

    model = Holder(torch.float32)
    before = model.weight.detach().clone()
    params = {**PARAMS.get(name, {}), "no_such_param": 1}
    fault = Fault("", "weight", index=(1, 1), bits=bits_for(name, torch.float32), model=name)
    with (
        pytest.raises(
            TorchFaultError, match=rf"'{name}' got unknown parameter\(s\) \['no_such_param'\]"
        ),
        inject(model, fault.replace(params=params)),
    ):
        pass
    assert torch.equal(model.weight, before)


def test_user_fault_model_parameters_are_checked_against_its_signature():
    from torchfault import register_fault_model
    from torchfault.errors import TorchFaultError

    @register_fault_model("scale_for_test", overwrite=True)
    def scale(x, index, bits, fmt, generator, *, factor, offset=0.0):
        """Scale the element."""
        y = x.detach().flatten().clone()
        y[index] = y[index] * factor + offset
        return y.view_as(x)

    @register_fault_model("anything_for_test", overwrite=True)
    def anything(x, index, bits, fmt, generator, **params):
        """Take any parameter."""
        return x.clone()

    try:
        model = Holder(torch.float32)
        before = model.weight.detach().clone()
        site = Fault("", "weight", index=(1, 1), model="scale_for_test")
        with (
            pytest.raises(TorchFaultError, match=r"needs parameter\(s\) \['factor'\]"),
            inject(model, site),
        ):
            pass
        with (
            pytest.raises(
                TorchFaultError, match=r"it takes: factor, offset. Did you mean 'factor'"
            ),
            inject(model, site.replace(params={"facter": 2.0})),
        ):
            pass
        assert torch.equal(model.weight, before)
        with inject(model, site.replace(params={"factor": 2.0, "offset": 1.0})):
            assert float(model.weight[1, 1]) == float(before[1, 1]) * 2.0 + 1.0
        with inject(model, site.replace(model="anything_for_test", params={"whatever": 3})):
            assert torch.equal(model.weight, before)
        assert torch.equal(model.weight, before)
    finally:
        FAULT_MODELS.remove("scale_for_test")
        FAULT_MODELS.remove("anything_for_test")
