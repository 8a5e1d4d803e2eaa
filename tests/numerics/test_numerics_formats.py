# SPDX-License-Identifier: MIT
"""Every format against an independent oracle (struct, numpy views, hand-decoded tables)."""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

from torchfault.numerics import (
    bit_mask,
    format_of,
    from_words,
    get_format,
    list_formats,
    to_words,
)

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per:UserWarning")

# values exactly representable in every float format under test
VALUES = [0.0, -0.0, 1.0, -1.0, 2.0, -0.5, 0.25, 1.5, 3.0, -12.0, float("inf"), float("-inf")]


def _f32_bits(v: float) -> int:
    return int(np.float32(v).view(np.uint32))


# float8: hand-decoded encodings (sign | exponent | mantissa), not computed by torch.
# (value, pattern) pairs, not a dict: 0.0 and -0.0 are equal keys.
E4M3FN = [
    (0.0, 0x00),
    (-0.0, 0x80),
    (1.0, 0x38),
    (-1.0, 0xB8),
    (2.0, 0x40),
    (-0.5, 0xB0),
    (0.25, 0x28),
    (1.5, 0x3C),
    (3.0, 0x44),
    (-12.0, 0xD4),
    (448.0, 0x7E),
    (2.0**-9, 0x01),
    (1.125, 0x39),
    (0.875, 0x36),
]
E5M2 = [
    (0.0, 0x00),
    (-0.0, 0x80),
    (1.0, 0x3C),
    (-1.0, 0xBC),
    (2.0, 0x40),
    (-0.5, 0xB8),
    (0.25, 0x34),
    (1.5, 0x3E),
    (3.0, 0x42),
    (-12.0, 0xCA),
    (57344.0, 0x7B),
    (2.0**-16, 0x01),
    (float("inf"), 0x7C),
    (float("-inf"), 0xFC),
]

FLOAT_ORACLES = {
    "float64": lambda v: int.from_bytes(struct.pack(">d", v), "big"),
    "float32": lambda v: int.from_bytes(struct.pack(">f", v), "big"),
    "float16": lambda v: int(np.float16(v).view(np.uint16)),
    "bfloat16": lambda v: _f32_bits(v) >> 16,  # exact for values on the bfloat16 grid
}


def _unsigned(words: torch.Tensor, width: int) -> list[int]:
    w = words.to(torch.int64)
    if width < 64:
        w = w & ((1 << width) - 1)
    return [v & ((1 << width) - 1) for v in w.tolist()]


def _signed(patterns: list[int], width: int) -> torch.Tensor:
    """Unsigned bit patterns as an int64 tensor (two's complement for 64-bit patterns)."""
    return torch.tensor([p - (1 << 64) if p >= 1 << 63 else p for p in patterns])


def _float_cases(name: str) -> tuple[list[float], list[int]]:
    if name in ("float8_e4m3fn", "float8_e5m2"):
        table = E4M3FN if name == "float8_e4m3fn" else E5M2
        return [v for v, _ in table], [p for _, p in table]
    oracle = FLOAT_ORACLES[name]
    return VALUES, [oracle(v) for v in VALUES]


def _int_cases(fmt) -> tuple[list[int], list[int]]:
    np_dtype = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}[fmt.width]
    np_u = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}[fmt.width]
    lo, hi = fmt.word_range()
    values = sorted({lo, hi, 0, 1, lo + 1, hi - 1, (lo + hi) // 2, hi // 3})
    if fmt.signed:
        patterns = [int(np.array([v], dtype=np_dtype).view(np_u)[0]) for v in values]
    else:
        patterns = [int(np.array([v], dtype=np_u)[0]) for v in values]
    return values, patterns


@pytest.mark.parametrize("name", list_formats())
def test_words_match_oracle(name):
    fmt = get_format(name)
    assert fmt.name == name
    if fmt.kind == "float":
        values, patterns = _float_cases(name)
        x = torch.tensor(values, dtype=torch.float64).to(fmt.value_dtype)
        words = to_words(x)
        assert words.dtype == fmt.word_dtype
        assert _unsigned(words, fmt.width) == patterns
        back = from_words(_signed(patterns, fmt.width), x)
        assert torch.equal(to_words(back), words)
        np.testing.assert_array_equal(back.double().numpy(), np.array(values))
        # seen from a float64 tensor through a cast gives the same words
        assert _unsigned(to_words(x.double(), fmt), fmt.width) == patterns
    elif fmt.kind == "int":
        values, patterns = _int_cases(fmt)
        x = torch.tensor(values, dtype=torch.int64).to(fmt.value_dtype)
        assert _unsigned(to_words(x), fmt.width) == patterns
        assert torch.equal(from_words(_signed(patterns, fmt.width), x), x)
    elif fmt.kind == "quantized":
        lo, hi = fmt.word_range()
        scale, zero = 0.25, (lo + hi) // 2 + 1
        ints = [lo, hi, zero, zero + 3, zero - 7]
        x = torch.quantize_per_tensor(
            torch.tensor([(i - zero) * scale for i in ints], dtype=torch.float64).float(),
            scale,
            zero,
            fmt.value_dtype,
        )
        assert to_words(x).tolist() == ints
        assert to_words(x).dtype == fmt.word_dtype
        assert from_words(to_words(x), x).dequantize().tolist() == x.dequantize().tolist()
    else:  # fixed point: round(v * 2**n) in two's complement, computed with exact fractions
        n, w = fmt.frac_bits, fmt.width
        values = [0.0, 1.0, -1.0, 0.5 + 2.0**-n, -(2.0**fmt.int_bits), 2.0**fmt.int_bits - 2.0**-n]
        x = torch.tensor(values, dtype=torch.float64)
        expected = [int(Fraction(v) * 2**n) % (1 << w) for v in values]
        assert _unsigned(to_words(x, fmt), w) == expected
        assert from_words(to_words(x, fmt), x, fmt).tolist() == values


@pytest.mark.parametrize("name", list_formats())
def test_bit_layout(name):
    fmt = get_format(name)
    names = fmt.bit_names()
    assert len(names) == fmt.width
    if fmt.kind == "float":
        assert names.count("mantissa") == fmt.mantissa_bits
        assert names.count("exponent") == fmt.exponent_bits
        assert names[-1] == "sign" and names[0] == "mantissa"
        assert fmt.bias == 2 ** (fmt.exponent_bits - 1) - 1
        # flipping the sign bit negates 1.0; the lowest exponent bit doubles or halves it
        x = torch.ones(1, dtype=fmt.value_dtype)
        neg = from_words(to_words(x) ^ bit_mask([fmt.width - 1], fmt), x)
        assert neg.item() == -1.0
        half = from_words(to_words(x) ^ bit_mask([fmt.mantissa_bits], fmt), x)
        assert half.item() in (0.5, 2.0)
    else:
        assert names[-1] == ("sign" if fmt.signed else "magnitude")


@pytest.mark.parametrize(
    ("name", "np_dtype"),
    [("float16", np.float16), ("float32", np.float32), ("float64", np.float64)],
)
def test_float_fields_match_numpy_finfo(name, np_dtype):
    fmt = get_format(name)
    info = np.finfo(np_dtype)
    assert (fmt.mantissa_bits, fmt.exponent_bits, fmt.width) == (info.nmant, info.nexp, info.bits)


@pytest.mark.parametrize("name", list_formats())
def test_bit_mask_every_bit(name):
    fmt = get_format(name)
    lo, hi = fmt.word_range()
    for b in range(fmt.width):
        m = bit_mask([b], fmt)
        assert lo <= m <= hi
        assert m & ((1 << fmt.width) - 1) == 1 << b
        # the mask fits the word dtype exactly
        assert torch.tensor(m, dtype=fmt.word_dtype).item() == m
    assert bit_mask([], fmt) == 0


def test_bit_mask_sign_bits():
    assert bit_mask([31], "float32") == -(2**31)
    assert bit_mask([63], "int64") == -(2**63)
    assert bit_mask([63, 0], "float64") == -(2**63) + 1
    assert bit_mask([7], "uint8") == 128
    assert bit_mask([7], "float8_e4m3fn") == 128
    assert bit_mask([15], "Q3.12") == -(2**15)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (torch.float64, "float64"),
        (torch.float32, "float32"),
        (torch.float16, "float16"),
        (torch.bfloat16, "bfloat16"),
        (torch.float8_e4m3fn, "float8_e4m3fn"),
        (torch.float8_e5m2, "float8_e5m2"),
        (torch.int8, "int8"),
        (torch.uint8, "uint8"),
        (torch.int16, "int16"),
        (torch.int32, "int32"),
        (torch.int64, "int64"),
    ],
)
def test_format_of_and_dtype_lookup(dtype, name):
    assert format_of(torch.zeros(2, dtype=dtype)).name == name
    assert get_format(dtype).name == name
    assert get_format(None, torch.zeros(1, dtype=dtype)).name == name
    assert get_format(str(dtype)).name == name


def test_format_of_quantized():
    q = torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.quint8)
    assert format_of(q).name == "quint8"
    assert get_format(torch.qint32).name == "qint32"


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("float", "float32"),
        ("half", "float16"),
        ("bf16", "bfloat16"),
        ("fp8_e4m3", "float8_e4m3fn"),
        ("fp8_e5m2", "float8_e5m2"),
        ("double", "float64"),
        ("FP16", "float16"),
        ("q3.12", "fixed_q3.12"),
        ("Q7.8", "fixed_q7.8"),
        ("fixed_q0.31", "fixed_q0.31"),
        ("Q31.32", "fixed_q31.32"),
    ],
)
def test_aliases(alias, name):
    assert get_format(alias).name == name


def test_fixed_format_layout():
    fmt = get_format("Q7.8")
    assert (fmt.kind, fmt.width, fmt.int_bits, fmt.frac_bits) == ("fixed", 16, 7, 8)
    assert fmt.word_dtype == torch.int32 and fmt.value_dtype is None
    assert get_format("Q31.32").word_dtype == torch.int64
    assert get_format("q3.12") == get_format("fixed_q3.12")


def test_word_dtypes():
    expected = {
        "float64": torch.int64,
        "float32": torch.int32,
        "float16": torch.int16,
        "bfloat16": torch.int16,
        "float8_e4m3fn": torch.uint8,
        "float8_e5m2": torch.uint8,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "qint8": torch.int8,
        "quint8": torch.uint8,
        "qint32": torch.int32,
    }
    for name, dtype in expected.items():
        assert get_format(name).word_dtype == dtype, name


def test_float8_special_words():
    e4 = from_words(torch.tensor([0x7F, 0xFF, 0x7E]), torch.empty(3, dtype=torch.float8_e4m3fn))
    assert e4.float().isnan().tolist() == [True, True, False]  # e4m3fn: no inf, S.1111.111 is NaN
    e5 = from_words(torch.tensor([0x7D, 0x7E, 0x7F, 0x7C]), torch.empty(4, dtype=torch.float8_e5m2))
    assert e5.float().isnan().tolist() == [True, True, True, False]
