# SPDX-License-Identifier: MIT
"""Number formats: a table of how each stored word is laid out, plus lookup helpers.

A :class:`NumberFormat` says how a tensor element is stored as an integer word: its width, its
bit fields (sign, exponent, mantissa for floats; sign and magnitude for integers) and the integer
dtype the word is viewed as. Bit 0 is the least significant bit of the word.

Formats come in four kinds:

* ``"float"``: IEEE-like floats with a torch dtype (float64 ... float8). A floating tensor may be
  seen through any float format: the addressed elements are cast to it, faulted and cast back.
* ``"int"``: plain integer tensors; a format of this kind only sees tensors of its own dtype.
* ``"quantized"``: torch quantized tensors (qint8, quint8, qint32); faults land in the stored
  integer, the scale and zero point are kept.
* ``"fixed"``: two's-complement fixed point ``Q(m.n)`` (``m`` integer bits excluding the sign,
  ``n`` fraction bits, width ``1 + m + n``) emulated over any floating tensor, with
  round-to-nearest-even and saturation on quantization.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from torchfault.errors import TorchFaultError, suggest

__all__ = [
    "NumberFormat",
    "list_formats",
    "get_format",
    "format_of",
    "check_compatible",
    "bit_mask",
    "fixed_format",
    "wrap_int",
    "KINDS",
]

#: The kinds of number formats.
KINDS = ("float", "int", "quantized", "fixed")

_INT_DTYPES = {
    torch.int8: (8, True),
    torch.uint8: (8, False),
    torch.int16: (16, True),
    torch.int32: (32, True),
    torch.int64: (64, True),
}


def _dtype_bits(dtype: torch.dtype) -> int:
    return _INT_DTYPES[dtype][0]


@dataclass(frozen=True)
class NumberFormat:
    """How one tensor element is stored as an integer word.

    Attributes:
        name: Canonical name, e.g. ``"float32"``, ``"bfloat16"``, ``"qint8"``, ``"fixed_q3.12"``.
        kind: ``"float"``, ``"int"``, ``"quantized"`` or ``"fixed"``.
        width: Bits per stored word.
        signed: Whether the format has a sign (bit ``width - 1``).
        exponent_bits: Floats: exponent field width.
        mantissa_bits: Floats: mantissa (fraction) field width.
        bias: Floats: exponent bias.
        int_bits: Fixed point: integer bits, excluding the sign.
        frac_bits: Fixed point: fraction bits.
        word_dtype: Integer dtype that holds one word. Words of signed dtypes are two's
            complement sign-extended from ``width`` bits.
        value_dtype: Dtype of the values (``None`` for fixed point, emulated over any float).

    Example:
        >>> fmt = get_format("bfloat16")
        >>> fmt.width, fmt.exponent_bits, fmt.mantissa_bits, fmt.word_dtype
        (16, 8, 7, torch.int16)
        >>> fmt.bit_names()[-2:]
        ['exponent', 'sign']
    """

    name: str
    kind: str
    width: int
    signed: bool
    exponent_bits: int = 0
    mantissa_bits: int = 0
    bias: int = 0
    int_bits: int = 0
    frac_bits: int = 0
    word_dtype: torch.dtype = torch.int64
    value_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TorchFaultError(
                f"NumberFormat kind {self.kind!r} is not one of {list(KINDS)}.{suggest(self.kind, KINDS)}"
            )
        if self.word_dtype not in _INT_DTYPES:
            raise TorchFaultError(
                f"NumberFormat {self.name!r}: word_dtype {self.word_dtype} is not an integer dtype "
                f"torchfault can operate on ({', '.join(str(d) for d in _INT_DTYPES)})."
            )
        if not 1 <= self.width <= _dtype_bits(self.word_dtype):
            raise TorchFaultError(
                f"NumberFormat {self.name!r}: width {self.width} must be between 1 and the "
                f"{_dtype_bits(self.word_dtype)} bits of its word dtype {self.word_dtype}."
            )
        if self.kind == "float":
            if self.width != 1 + self.exponent_bits + self.mantissa_bits:
                raise TorchFaultError(
                    f"NumberFormat {self.name!r}: width {self.width} != 1 + exponent_bits "
                    f"{self.exponent_bits} + mantissa_bits {self.mantissa_bits}."
                )
            if self.value_dtype is None:
                raise TorchFaultError(
                    f"NumberFormat {self.name!r}: float formats need a torch value_dtype."
                )
        if self.kind == "fixed" and self.width != 1 + self.int_bits + self.frac_bits:
            raise TorchFaultError(
                f"NumberFormat {self.name!r}: width {self.width} != 1 + int_bits {self.int_bits} "
                f"+ frac_bits {self.frac_bits}."
            )

    def bit_names(self) -> list[str]:
        """Name the field of every bit, least significant bit first.

        Floats give ``"mantissa"``, ``"exponent"`` and ``"sign"``; integer, quantized and fixed
        point formats give ``"magnitude"`` and, when signed, ``"sign"``.

        Example:
            >>> get_format("float16").bit_names().count("exponent")
            5
            >>> get_format("int8").bit_names()[-1]
            'sign'
        """
        if self.kind == "float":
            return (
                ["mantissa"] * self.mantissa_bits
                + ["exponent"] * self.exponent_bits
                + ["sign"] * (self.width - self.mantissa_bits - self.exponent_bits)
            )
        if self.signed:
            return ["magnitude"] * (self.width - 1) + ["sign"]
        return ["magnitude"] * self.width

    @property
    def word_bits(self) -> int:
        """Bits of :attr:`word_dtype` (``>= width``)."""
        return _dtype_bits(self.word_dtype)

    @property
    def word_signed(self) -> bool:
        """Whether :attr:`word_dtype` is a signed integer dtype."""
        return _INT_DTYPES[self.word_dtype][1]

    @property
    def is_native_dtype(self) -> bool:
        """Whether a tensor of :attr:`value_dtype` stores exactly this format's words."""
        return self.kind in ("float", "int", "quantized")

    def word_range(self) -> tuple[int, int]:
        """Smallest and largest word value, as stored in :attr:`word_dtype`.

        Example:
            >>> get_format("fixed_q3.4").word_range()
            (-128, 127)
        """
        if self.word_signed:
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1

    def __repr__(self) -> str:
        return f"NumberFormat({self.name!r})"


def _float(name: str, dtype: torch.dtype, e: int, m: int, word: torch.dtype) -> NumberFormat:
    return NumberFormat(
        name=name,
        kind="float",
        width=1 + e + m,
        signed=True,
        exponent_bits=e,
        mantissa_bits=m,
        bias=(1 << (e - 1)) - 1,
        word_dtype=word,
        value_dtype=dtype,
    )


def _int(name: str, dtype: torch.dtype, kind: str = "int", value: torch.dtype | None = None):
    bits, signed = _INT_DTYPES[dtype]
    return NumberFormat(
        name=name,
        kind=kind,
        width=bits,
        signed=signed,
        word_dtype=dtype,
        value_dtype=value or dtype,
    )


def fixed_format(int_bits: int, frac_bits: int) -> NumberFormat:
    """Build the two's-complement fixed-point format ``Q(int_bits.frac_bits)``.

    The word is ``1 + int_bits + frac_bits`` bits wide (at most 64) and stored in ``int32`` when
    that fits, else ``int64``.

    Example:
        >>> fmt = fixed_format(3, 12)
        >>> fmt.name, fmt.width, fmt.word_dtype
        ('fixed_q3.12', 16, torch.int32)
    """
    for what, v in (("int_bits", int_bits), ("frac_bits", frac_bits)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TorchFaultError(f"Fixed point {what} must be an integer >= 0, got {v!r}.")
    width = 1 + int_bits + frac_bits
    if width > 64:
        raise TorchFaultError(
            f"Fixed point Q{int_bits}.{frac_bits} needs {width} bits; at most 64 are supported "
            "(1 sign + integer + fraction bits)."
        )
    return NumberFormat(
        name=f"fixed_q{int_bits}.{frac_bits}",
        kind="fixed",
        width=width,
        signed=True,
        int_bits=int_bits,
        frac_bits=frac_bits,
        word_dtype=torch.int32 if width <= 32 else torch.int64,
        value_dtype=None,
    )


_FORMATS: dict[str, NumberFormat] = {
    f.name: f
    for f in (
        _float("float64", torch.float64, 11, 52, torch.int64),
        _float("float32", torch.float32, 8, 23, torch.int32),
        _float("float16", torch.float16, 5, 10, torch.int16),
        _float("bfloat16", torch.bfloat16, 8, 7, torch.int16),
        _float("float8_e4m3fn", torch.float8_e4m3fn, 4, 3, torch.uint8),
        _float("float8_e5m2", torch.float8_e5m2, 5, 2, torch.uint8),
        _int("int8", torch.int8),
        _int("uint8", torch.uint8),
        _int("int16", torch.int16),
        _int("int32", torch.int32),
        _int("int64", torch.int64),
        _int("qint8", torch.int8, "quantized", torch.qint8),
        _int("quint8", torch.uint8, "quantized", torch.quint8),
        _int("qint32", torch.int32, "quantized", torch.qint32),
        fixed_format(3, 12),
        fixed_format(15, 16),
    )
}

_BY_DTYPE: dict[torch.dtype, NumberFormat] = {
    f.value_dtype: f for f in _FORMATS.values() if f.value_dtype is not None
}

_ALIASES = {
    "float": "float32",
    "fp32": "float32",
    "f32": "float32",
    "single": "float32",
    "double": "float64",
    "fp64": "float64",
    "f64": "float64",
    "half": "float16",
    "fp16": "float16",
    "f16": "float16",
    "bf16": "bfloat16",
    "fp8_e4m3": "float8_e4m3fn",
    "fp8_e4m3fn": "float8_e4m3fn",
    "float8_e4m3": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn",
    "e4m3fn": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
    "e5m2": "float8_e5m2",
    "char": "int8",
    "byte": "uint8",
    "short": "int16",
    "int": "int32",
    "long": "int64",
}

_FIXED_RE = re.compile(r"^(?:fixed_)?q(\d+)\.(\d+)$")


def list_formats(kind: str | None = None) -> list[str]:
    """Names of the built-in formats, optionally of one kind.

    Fixed point accepts any ``fixed_q{m}.{n}`` (see :func:`get_format`); two common ones are
    listed.

    Example:
        >>> list_formats("quantized")
        ['qint8', 'quint8', 'qint32']
        >>> "float32" in list_formats()
        True
    """
    if kind is not None and kind not in KINDS:
        raise TorchFaultError(
            f"Unknown format kind {kind!r}; valid: {list(KINDS)}.{suggest(kind, KINDS)}"
        )
    return [n for n, f in _FORMATS.items() if kind is None or f.kind == kind]


def get_format(
    spec: str | torch.dtype | NumberFormat | None = None, tensor: torch.Tensor | None = None
) -> NumberFormat:
    """Resolve a format from a name, a dtype, a :class:`NumberFormat` or a tensor.

    Args:
        spec: A format name (``"float32"``), an alias (``"half"``, ``"bf16"``, ``"fp8_e4m3"``,
            ``"fp8_e5m2"``, ``"torch.float32"``), fixed point as ``"fixed_q{m}.{n}"``,
            ``"q{m}.{n}"`` or ``"Q{m}.{n}"``, a torch dtype, or a format. ``None`` takes the
            format of ``tensor``.
        tensor: The tensor whose own format is used when ``spec`` is ``None``.

    Raises:
        TorchFaultError: an unknown name (the message lists the valid ones), or neither
            ``spec`` nor ``tensor``.

    Example:
        >>> get_format("half").name
        'float16'
        >>> get_format("Q7.8").name, get_format("Q7.8").width
        ('fixed_q7.8', 16)
        >>> get_format(None, torch.zeros(2, dtype=torch.bfloat16)).name
        'bfloat16'
    """
    if isinstance(spec, NumberFormat):
        return spec
    if spec is None:
        if tensor is None:
            raise TorchFaultError("get_format needs a format spec or a tensor to take it from.")
        return format_of(tensor)
    if isinstance(spec, torch.dtype):
        fmt = _BY_DTYPE.get(spec)
        if fmt is None:
            raise TorchFaultError(
                f"No number format for dtype {spec}; supported dtypes: "
                f"{', '.join(str(d) for d in _BY_DTYPE)}."
            )
        return fmt
    if not isinstance(spec, str):
        raise TorchFaultError(
            f"A number format must be a name, a torch dtype or a NumberFormat, got {spec!r}."
        )
    key = spec.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch.") :]
    key = _ALIASES.get(key, key)
    if key in _FORMATS:
        return _FORMATS[key]
    match = _FIXED_RE.match(key)
    if match:
        return fixed_format(int(match.group(1)), int(match.group(2)))
    valid = list(_FORMATS) + list(_ALIASES)
    raise TorchFaultError(
        f"Unknown number format {spec!r}. Valid: {', '.join(_FORMATS)}, aliases "
        f"{', '.join(_ALIASES)}, or fixed point 'fixed_q{{m}}.{{n}}' / 'Q{{m}}.{{n}}'."
        + suggest(key, valid)
    )


def format_of(tensor: torch.Tensor) -> NumberFormat:
    """The format a tensor's own dtype stores (quantized tensors: qint8, quint8, qint32).

    Raises:
        TorchFaultError: for bool, complex and other dtypes without bit-level support.

    Example:
        >>> format_of(torch.zeros(3)).name
        'float32'
        >>> format_of(torch.zeros(3, dtype=torch.int16)).name
        'int16'
    """
    if not isinstance(tensor, torch.Tensor):
        raise TorchFaultError(f"Expected a torch.Tensor, got {type(tensor).__name__}.")
    fmt = _BY_DTYPE.get(tensor.dtype)
    if fmt is None:
        raise TorchFaultError(
            f"Tensors of dtype {tensor.dtype} have no supported number format; supported dtypes: "
            f"{', '.join(str(d) for d in _BY_DTYPE)}."
        )
    return fmt


def check_compatible(fmt: str | torch.dtype | NumberFormat, tensor: torch.Tensor) -> None:
    """Raise unless ``tensor`` can be seen in ``fmt``.

    A floating tensor may be seen as any float format (cast, fault, cast back) or as fixed
    point; an integer tensor only as its own integer format; a quantized tensor only as its own
    quantized format.

    Raises:
        TorchFaultError: naming the format, the tensor's dtype and what would be valid.

    Example:
        >>> check_compatible("float16", torch.zeros(2))
        >>> check_compatible("int8", torch.zeros(2))
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: Format 'int8' cannot see a torch.float32 tensor: ...
    """
    fmt = get_format(fmt)
    own = format_of(tensor)
    if own.kind == "quantized":
        if fmt != own:
            raise TorchFaultError(
                f"Format {fmt.name!r} cannot see a {tensor.dtype} tensor: a quantized tensor can "
                f"only be seen in its own format {own.name!r}."
            )
        return
    if own.kind == "int":
        if fmt != own:
            raise TorchFaultError(
                f"Format {fmt.name!r} cannot see a {tensor.dtype} tensor: an integer tensor can "
                f"only be seen in its own format {own.name!r}."
            )
        return
    # floating tensor
    if fmt.kind in ("float", "fixed"):
        return
    raise TorchFaultError(
        f"Format {fmt.name!r} cannot see a {tensor.dtype} tensor: a floating tensor can be seen "
        f"as a float format ({', '.join(list_formats('float'))}) or fixed point "
        "('fixed_q{m}.{n}'), not as a "
        f"{fmt.kind} format."
    )


def bit_mask(bits: Sequence[int], fmt: str | torch.dtype | NumberFormat) -> int:
    """The word with exactly ``bits`` set, as a Python int in the range of ``fmt.word_dtype``.

    Signed words are two's complement sign-extended from ``fmt.width`` bits, so the top bit of
    a signed word is negative (bit 63 of an int64 word is ``-2**63``).

    Raises:
        TorchFaultError: a bit outside ``0 .. fmt.width - 1`` (the message names the width).

    Example:
        >>> bit_mask([0, 2], "float32")
        5
        >>> bit_mask([31], "float32")
        -2147483648
        >>> bit_mask([7], "uint8")
        128
    """
    fmt = get_format(fmt)
    if isinstance(bits, int):
        bits = (bits,)
    mask = 0
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) and not hasattr(b, "__index__"):
            raise TorchFaultError(f"Bit positions must be integers, got {b!r}.")
        b = int(b)
        if not 0 <= b < fmt.width:
            raise TorchFaultError(
                f"bit {b} is out of range for {fmt.name} ({fmt.width} bits: 0..{fmt.width - 1})."
            )
        mask |= 1 << b
    return wrap_int(mask, fmt)


def wrap_int(value: int, fmt: NumberFormat) -> int:
    """Reduce an integer modulo ``2**fmt.width`` into the word range of ``fmt``.

    Example:
        >>> wrap_int(0xFFFF, get_format("int16"))
        -1
        >>> wrap_int(-1, get_format("uint8"))
        255
    """
    value = int(value) & ((1 << fmt.width) - 1)
    if fmt.word_signed and value >> (fmt.width - 1):
        value -= 1 << fmt.width
    return value
