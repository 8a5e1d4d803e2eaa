# SPDX-License-Identifier: MIT
"""Quantized tensors (per tensor and per channel), fixed point, and error messages."""

from __future__ import annotations

import warnings

import pytest
import torch

from torchfault.errors import TorchFaultError
from torchfault.numerics import (
    apply_bits,
    apply_bits_,
    bit_mask,
    check_compatible,
    fixed_format,
    format_of,
    from_words,
    get_format,
    list_formats,
    read_elements,
    set_values,
    to_words,
)

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per:UserWarning")


def _per_tensor(dtype):
    g = torch.Generator().manual_seed(0)
    zero = {torch.qint8: -3, torch.quint8: 128, torch.qint32: 17}[dtype]
    return torch.quantize_per_tensor(torch.randn(4, 5, generator=g), 0.05, zero, dtype)


def _per_channel(dtype, axis):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, generator=g)
    n = x.shape[axis]
    scales = torch.linspace(0.01, 0.2, n, dtype=torch.float64)
    zeros = torch.arange(n, dtype=torch.int64) + (100 if dtype == torch.quint8 else -2)
    return torch.quantize_per_channel(x, scales, zeros, axis, dtype)


def _quantizer(q):
    if q.qscheme() == torch.per_tensor_affine:
        return ("tensor", q.q_scale(), q.q_zero_point())
    return (
        "channel",
        q.q_per_channel_scales().tolist(),
        q.q_per_channel_zero_points().tolist(),
        q.q_per_channel_axis(),
    )


with warnings.catch_warnings():  # torch deprecates quantized tensor creation
    warnings.simplefilter("ignore", UserWarning)
    QUANTIZED = [_per_tensor(d) for d in (torch.qint8, torch.quint8, torch.qint32)] + [
        _per_channel(torch.qint8, 0),
        _per_channel(torch.quint8, 1),
        _per_channel(torch.qint8, 2),
        _per_channel(torch.qint32, 1),
    ]


@pytest.mark.parametrize("q", QUANTIZED, ids=lambda q: f"{q.dtype}-{q.qscheme()}")
def test_quantized_faults_land_in_int_repr(q):
    fmt = format_of(q)
    index = torch.tensor([0, 7, q.numel() - 1])
    masks = torch.tensor([bit_mask([b], fmt) for b in (0, fmt.width - 1, 3)])
    out = apply_bits(q, index, masks)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert _quantizer(out) == _quantizer(q)
    diff = (out.int_repr().to(torch.int64) ^ q.int_repr().to(torch.int64)).flatten()
    expected = torch.zeros_like(diff)
    expected[index] = masks
    if fmt.width < 64:
        diff = diff & ((1 << fmt.width) - 1)
        expected = expected & ((1 << fmt.width) - 1)
    assert torch.equal(diff, expected)
    # dequantized values change only at the addressed elements
    changed = (out.dequantize() != q.dequantize()).flatten().nonzero().flatten()
    assert changed.tolist() == sorted(index.tolist())
    assert torch.equal(to_words(q), q.int_repr())
    assert torch.equal(read_elements(q, index), q.int_repr().flatten()[index])
    back = from_words(to_words(out) ^ to_words(q), q)  # rebuild with q's quantizer
    assert _quantizer(back) == _quantizer(q)


@pytest.mark.parametrize("q", QUANTIZED, ids=lambda q: f"{q.dtype}-{q.qscheme()}")
def test_quantized_set_values_matches_torch_quantize(q):
    deq = q.dequantize()
    index = torch.tensor([1, 4, 9, q.numel() - 1])
    values = torch.tensor([0.37, -1.21, 1e3, -1e3])  # beyond 8-bit ranges, exact in float32
    out = set_values(q, index, values)
    assert _quantizer(out) == _quantizer(q)
    reference = deq.clone().flatten()
    reference[index] = values
    reference = reference.view(q.shape)
    if q.qscheme() == torch.per_tensor_affine:
        oracle = torch.quantize_per_tensor(reference, q.q_scale(), q.q_zero_point(), q.dtype)
    else:
        oracle = torch.quantize_per_channel(
            reference,
            q.q_per_channel_scales(),
            q.q_per_channel_zero_points(),
            q.q_per_channel_axis(),
            q.dtype,
        )
    assert torch.equal(out.int_repr(), oracle.int_repr())


def test_quantized_refuses_in_place_and_other_formats():
    q = QUANTIZED[0]
    with pytest.raises(TorchFaultError, match="apply_bits"):
        apply_bits_(q, [0], 1)
    with pytest.raises(TorchFaultError, match="own format 'qint8'"):
        apply_bits(q, [0], 1, fmt="int8")
    with pytest.raises(TorchFaultError, match="cannot see"):
        check_compatible("qint8", torch.zeros(2))


# ------------------------------------------------------------------ fixed point


@pytest.mark.parametrize("spec", ["Q3.12", "Q7.8", "Q0.15", "Q15.16", "Q4.0", "Q20.43"])
def test_fixed_round_trip_on_grid_is_exact(spec):
    fmt = get_format(spec)
    lo, hi = fmt.word_range()
    if fmt.width <= 53:  # float64 holds every word exactly
        words = [lo, lo + 1, -1, 0, 1, 12345 % hi, hi - 1, hi]
    else:  # only words with at most 53 significant bits, plus saturation at the top
        words = [lo, -1, 0, 1, 12345, -(2**52) + 1, hi]
    words = torch.tensor(words, dtype=torch.int64)
    x = from_words(words, torch.empty(words.numel(), dtype=torch.float64), fmt)
    if fmt.width <= 53:
        assert x.tolist() == [w * 2.0**-fmt.frac_bits for w in words.tolist()]
    assert torch.equal(to_words(x, fmt).to(torch.int64), words)


@pytest.mark.parametrize("spec", ["Q3.12", "Q7.8", "Q15.16", "Q1.6"])
def test_fixed_flip_changes_value_by_twos_complement_weight(spec):
    fmt = get_format(spec)
    n, w = fmt.frac_bits, fmt.width
    values = torch.tensor([0.0, 1.5, -1.5, -(2.0**fmt.int_bits), 2.0**-n], dtype=torch.float64)
    for k in range(w):
        out = apply_bits(values, torch.arange(values.numel()), bit_mask([k], fmt), fmt=fmt)
        words = to_words(values, fmt).to(torch.int64)
        bit_was_set = ((words >> k) & 1).bool()
        weight = -(2.0 ** (w - 1 - n)) if k == w - 1 else 2.0 ** (k - n)
        expected = torch.where(bit_was_set, values - weight, values + weight)
        assert torch.equal(out, expected), (k, out, expected)


def test_fixed_quantization_saturates_and_rounds():
    x = torch.tensor([100.0, -100.0, 0.03, 0.1, float("nan"), float("inf"), -0.03125])
    words = to_words(x, "Q3.4")
    assert words.tolist() == [127, -128, 0, 2, 0, 127, 0]  # -0.5 ulp rounds to even (0)
    assert from_words(words, x, "Q3.4").tolist() == [127 / 16, -8.0, 0.0, 0.125, 0.0, 127 / 16, 0.0]


def test_saturation_at_64_bits():
    assert to_words(torch.tensor([1e30, -1e30], dtype=torch.float64), "Q20.43").tolist() == [
        2**63 - 1,
        -(2**63),
    ]
    big = set_values(torch.zeros(2, dtype=torch.int64), [0, 1], torch.tensor([1e30, 2.0**63]))
    assert big.tolist() == [2**63 - 1, 2**63 - 1]


def test_fixed_only_addressed_elements_change():
    x = torch.tensor([0.1, 0.2, 0.3])  # not on the Q3.12 grid
    out = apply_bits(x, [1], bit_mask([15], "Q3.12"), fmt="Q3.12")
    assert out[0].item() == x[0].item() and out[2].item() == x[2].item()
    grid = round(0.2 * 4096) / 4096
    assert out[1].item() == pytest.approx(grid - 8.0)


def test_fixed_words_beyond_width_wrap():
    fmt = get_format("Q3.4")
    like = torch.zeros(2)
    assert from_words(torch.tensor([256 + 3, 128]), like, fmt).tolist() == [3 / 16, -8.0]


# ------------------------------------------------------------------ errors


def test_bit_out_of_range_names_width():
    with pytest.raises(
        TorchFaultError, match=r"bit 40 is out of range for float32 \(32 bits: 0\.\.31\)"
    ):
        bit_mask([40], "float32")
    with pytest.raises(TorchFaultError, match="16 bits"):
        bit_mask([16], "Q3.12")
    with pytest.raises(TorchFaultError, match="out of range"):
        bit_mask([-1], "int8")


def test_unknown_format_lists_valid_and_suggests():
    with pytest.raises(TorchFaultError) as err:
        get_format("flaot32")
    msg = str(err.value)
    assert "Did you mean 'float32'" in msg
    for name in list_formats():
        assert name in msg
    assert "fixed_q{m}.{n}" in msg
    with pytest.raises(TorchFaultError, match="No number format for dtype"):
        get_format(torch.complex64)
    with pytest.raises(TorchFaultError, match="at most 64"):
        get_format("Q40.40")


def test_incompatible_views_refused():
    with pytest.raises(TorchFaultError, match="Format 'int8' cannot see a torch.float32 tensor"):
        apply_bits(torch.zeros(2), [0], 1, fmt="int8")
    with pytest.raises(TorchFaultError, match="integer tensor"):
        to_words(torch.zeros(2, dtype=torch.int32), "float32")
    with pytest.raises(TorchFaultError, match="integer tensor"):
        to_words(torch.zeros(2, dtype=torch.int32), "Q3.12")
    with pytest.raises(TorchFaultError, match="bool"):
        format_of(torch.zeros(2, dtype=torch.bool))
    with pytest.raises(TorchFaultError, match="complex"):
        format_of(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(TorchFaultError, match="apply_bits"):
        apply_bits_(torch.zeros(2), [0], 1, fmt="float16")


def test_bad_arguments_refused():
    x = torch.zeros(4)
    with pytest.raises(TorchFaultError, match="out of range for a tensor of 4 elements"):
        apply_bits(x, [4], 1)
    with pytest.raises(TorchFaultError, match="Did you mean 'xor'"):
        apply_bits(x, [0], 1, op="xr")
    with pytest.raises(TorchFaultError, match="does not fit"):
        apply_bits(x, [0], 1 << 32)
    with pytest.raises(TorchFaultError, match="one per index"):
        apply_bits(x, [0, 1], torch.tensor([1, 2, 3]))
    with pytest.raises(TorchFaultError, match="integer"):
        apply_bits(x, torch.tensor([0.0]), 1)
    with pytest.raises(TorchFaultError, match="3 words for a tensor of 4"):
        from_words(torch.zeros(3, dtype=torch.int32), x)
    with pytest.raises(TorchFaultError, match="integers >= 0|integer >= 0"):
        fixed_format(-1, 3)
