# SPDX-License-Identifier: MIT
"""Vectorised bit operations on tensors seen in a number format.

Every function here addresses elements by flat indices in logical row-major order (what
``x.flatten()[index]`` would address, whatever the strides) and works on integer word views of
the storage: no per-element Python loops, no strings of bits.

How a tensor is seen in a format:

* its own dtype (float or int): the words *are* the storage (``x.view(word_dtype)``);
* a quantized tensor: the words are ``x.int_repr()``, scale and zero point are kept;
* a floating tensor seen through another float format (a float32 tensor seen as bfloat16) or as
  fixed point: the **addressed** elements are encoded into the format, changed there and decoded
  back to the tensor's dtype; the other elements keep their exact values. (Whole-tensor
  :func:`to_words` / :func:`from_words` convert every element.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import cast

import torch

from torchfault.errors import TorchFaultError, suggest
from torchfault.numerics._formats import (
    NumberFormat,
    check_compatible,
    format_of,
    get_format,
    wrap_int,
)

__all__ = [
    "OPS",
    "to_words",
    "from_words",
    "apply_bits",
    "apply_bits_",
    "set_values",
    "random_words",
    "read_elements",
    "wrap_words",
]

#: Bit operations understood by :func:`apply_bits`.
OPS = ("xor", "and", "or", "set", "stuck_at_0", "stuck_at_1")

FormatSpec = str | torch.dtype | NumberFormat | None


# ----------------------------------------------------------------------------- helpers


def _resolve(x: torch.Tensor, fmt: FormatSpec) -> tuple[NumberFormat, NumberFormat]:
    own = format_of(x)
    fmt = get_format(fmt, x)
    check_compatible(fmt, x)
    return own, fmt


def wrap_words(t: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """Integer tensor -> words of ``fmt`` (reduced modulo 2**width, sign-extended if signed).

    Either spelling of a word is accepted: ``2**31`` and ``-2**31`` are the same float32 word.

    Example:
        >>> wrap_words(torch.tensor([2**31, -1, 3]), get_format("float32"))
        tensor([-2147483648,          -1,           3], dtype=torch.int32)
    """
    t = t.to(torch.int64)
    if fmt.width < 64:
        t = t & ((1 << fmt.width) - 1)
        if fmt.word_signed:
            sign = 1 << (fmt.width - 1)
            t = (t ^ sign) - sign
    return t.to(fmt.word_dtype)


def _make_quantized(int_repr: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    int_repr = int_repr.contiguous()
    scheme = like.qscheme()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*deprecated")
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            return torch._make_per_tensor_quantized_tensor(
                int_repr, like.q_scale(), like.q_zero_point()
            )
        if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
            return torch._make_per_channel_quantized_tensor(
                int_repr,
                like.q_per_channel_scales(),
                like.q_per_channel_zero_points(),
                like.q_per_channel_axis(),
            )
    raise TorchFaultError(
        f"Quantized tensors with qscheme {scheme} are not supported; supported: per-tensor and "
        "per-channel affine/symmetric."
    )


def _own_words(x: torch.Tensor, own: NumberFormat) -> torch.Tensor:
    """Words of ``x`` in its own format: a view for plain dtypes, ``int_repr()`` for quantized."""
    if own.kind == "quantized":
        return x.int_repr()
    return x.detach().view(own.word_dtype)


def _flat_own_copy(x: torch.Tensor, own: NumberFormat) -> torch.Tensor:
    """A fresh contiguous 1-D copy of ``x``'s own words (row-major)."""
    words = _own_words(x, own)
    if own.kind == "quantized":
        return words.contiguous().reshape(-1)
    out = torch.empty(words.shape, dtype=words.dtype, device=words.device)
    out.copy_(words)
    return out.view(-1)


def _rebuild(flat: torch.Tensor, x: torch.Tensor, own: NumberFormat) -> torch.Tensor:
    """A new tensor like ``x`` holding the row-major words ``flat``, in ``x``'s memory layout.

    The layout is kept (channels-last stays channels-last, any dense strides stay) because
    kernels choose their algorithms, and so their rounding, by strides: a fault must change the
    faulted words and nothing else. Strides with gaps or overlaps give a contiguous tensor.
    """
    words = flat.view(x.shape)
    if own.kind == "quantized":
        out = _make_quantized(words, x)
        for fmt in (torch.channels_last, torch.channels_last_3d):
            dims = 4 if fmt is torch.channels_last else 5
            if x.dim() == dims and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
                return out.contiguous(memory_format=fmt)
        return out
    if x.is_contiguous():
        return words.view(x.dtype)
    kept = torch.empty_like(x, memory_format=torch.preserve_format)
    if kept.stride() != x.stride():
        return words.view(x.dtype)  # not dense: row-major
    kept.view(words.dtype).copy_(words)  # integer words: a bit-exact copy
    return kept


def _gather_own(x: torch.Tensor, own: NumberFormat, index: torch.Tensor) -> torch.Tensor:
    """Own words of ``x`` at flat ``index`` without copying the whole tensor where possible."""
    words = _own_words(x, own)
    if words.dim() == 0:
        return words.reshape(1)[index]
    if words.is_contiguous():
        return words.view(-1)[index]
    return words[torch.unravel_index(index, words.shape)]


def _encode(values: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """Floating values -> words of a float or fixed format (1-D or any shape)."""
    if fmt.kind == "float":
        return values.to(fmt.value_dtype).view(fmt.word_dtype)
    return _quantize_fixed(values, fmt)


def _decode(words: torch.Tensor, fmt: NumberFormat, dtype: torch.dtype) -> torch.Tensor:
    """Words of a float or fixed format -> values of ``dtype``."""
    if fmt.kind == "float":
        return words.to(fmt.word_dtype).view(cast(torch.dtype, fmt.value_dtype)).to(dtype)
    q = wrap_words(words, fmt).to(torch.int64)
    return (q.to(torch.float64) * (2.0**-fmt.frac_bits)).to(dtype)


def _saturating_int(values: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Round floats to nearest (half to even) and saturate to ``[lo, hi]``, exactly, as int64.

    NaN goes to 0. Works for bounds up to the int64 range, where ``hi`` is not a float64.
    """
    v = torch.round(values.to(torch.float64))
    v = torch.nan_to_num(v, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    # exact comparisons with integer bounds that float64 may not hold (2**63 - 1 rounds up)
    hi_f, lo_f = float(hi), float(lo)
    too_big = v >= hi_f if hi_f > hi else v > hi_f
    too_small = v <= lo_f if lo_f < lo else v < lo_f
    safe = torch.where(too_big | too_small, torch.zeros_like(v), v).to(torch.int64)
    out = torch.where(too_big, torch.full_like(safe, hi), safe)
    return torch.where(too_small, torch.full_like(safe, lo), out)


def _quantize_fixed(values: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    # float64 arithmetic: exact for words up to 53 bits; wider words keep 53 significant bits
    scaled = values.to(torch.float64) * (2.0**fmt.frac_bits)
    lo, hi = -(1 << (fmt.width - 1)), (1 << (fmt.width - 1)) - 1
    return _saturating_int(scaled, lo, hi).to(fmt.word_dtype)


def _as_index(index: torch.Tensor | Sequence[int] | int, numel: int) -> torch.Tensor:
    if not isinstance(index, torch.Tensor):
        index = torch.as_tensor(index)
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise TorchFaultError(f"index must hold integer flat indices, got dtype {index.dtype}.")
    index = index.reshape(-1).to(torch.int64)
    if index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= numel:
            bad = lo if lo < 0 else hi
            raise TorchFaultError(
                f"flat index {bad} is out of range for a tensor of {numel} elements "
                f"(valid: 0..{numel - 1})."
            )
    return index


def _as_mask(mask: torch.Tensor | int, n: int, fmt: NumberFormat) -> torch.Tensor:
    """Masks -> int64 words of ``fmt`` (sign-extended), one per index."""
    lo, hi = -(1 << (fmt.width - 1)), 1 << fmt.width  # accept signed or unsigned spelling
    if isinstance(mask, torch.Tensor):
        if mask.dtype == torch.bool or mask.is_floating_point() or mask.is_complex():
            raise TorchFaultError(f"mask must be an integer tensor, got dtype {mask.dtype}.")
        mask = mask.reshape(-1).to(torch.int64)
        if mask.numel() not in (1, n):
            raise TorchFaultError(
                f"mask has {mask.numel()} elements; expected 1 or one per index ({n})."
            )
        if (
            fmt.width < 64
            and mask.numel()
            and (bool((mask < lo).any()) or bool((mask >= hi).any()))
        ):
            raise TorchFaultError(
                f"mask values must fit the {fmt.width}-bit words of {fmt.name} ({lo}..{hi - 1})."
            )
        return wrap_words(mask, fmt).to(torch.int64).expand(n)
    if isinstance(mask, bool) or not isinstance(mask, int) and not hasattr(mask, "__index__"):
        raise TorchFaultError(f"mask must be an int or an integer tensor, got {mask!r}.")
    if not lo <= int(mask) < hi:
        raise TorchFaultError(
            f"mask {int(mask)} does not fit the {fmt.width}-bit words of {fmt.name} ({lo}..{hi - 1})."
        )
    return torch.full((n,), wrap_int(int(mask), fmt), dtype=torch.int64)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise TorchFaultError(
            f"Unknown bit operation {op!r}; valid: {list(OPS)}.{suggest(op, OPS)}"
        )


def _combine(
    index: torch.Tensor, mask: torch.Tensor, op: str, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge repeated indices so one scatter equals applying the entries one after another."""
    uniq, inverse = torch.unique(index, return_inverse=True)
    if uniq.numel() == index.numel():
        return index, mask
    if op == "set":  # the last write wins
        pos = torch.arange(index.numel(), dtype=torch.int64)
        last = torch.zeros(uniq.numel(), dtype=torch.int64).scatter_reduce(
            0, inverse, pos, "amax", include_self=False
        )
        return uniq, mask[last]
    shifts = torch.arange(width, dtype=torch.int64)
    bits = (mask.unsqueeze(1) >> shifts) & 1
    counts = torch.zeros(uniq.numel(), width, dtype=torch.int64).index_add_(0, inverse, bits)
    if op == "xor":
        res = counts & 1
    elif op == "and":
        group = torch.bincount(inverse, minlength=uniq.numel()).unsqueeze(1)
        res = (counts == group).to(torch.int64)
    else:  # or, stuck_at_0, stuck_at_1: the union of the bits
        res = (counts > 0).to(torch.int64)
    return uniq, (res << shifts).sum(dim=1)  # distinct bits: the sum is the OR (wraps at bit 63)


def _apply_op(words: torch.Tensor, mask: torch.Tensor, op: str) -> torch.Tensor:
    if op == "xor":
        return words ^ mask
    if op in ("and",):
        return words & mask
    if op in ("or", "stuck_at_1"):
        return words | mask
    if op == "stuck_at_0":
        return words & ~mask
    return mask.clone()  # set


def _prepare(
    x: torch.Tensor,
    index: torch.Tensor | Sequence[int] | int,
    mask: torch.Tensor | int,
    op: str,
    spec: FormatSpec,
) -> tuple[NumberFormat, NumberFormat, torch.Tensor, torch.Tensor]:
    own, fmt = _resolve(x, spec)
    _check_op(op)
    idx = _as_index(index, x.numel())
    m = _as_mask(mask, idx.numel(), fmt)
    idx, m = _combine(idx, m, op, fmt.width)
    return own, fmt, idx, m.to(fmt.word_dtype)


# ----------------------------------------------------------------------------- public API


def to_words(tensor: torch.Tensor, fmt: FormatSpec = None) -> torch.Tensor:
    """The stored words of ``tensor`` seen in ``fmt``: same shape, dtype ``fmt.word_dtype``.

    In the tensor's own dtype this is a **view** sharing storage (also for non-contiguous
    tensors). Quantized tensors give ``int_repr()`` (a copy); another float format or fixed point
    gives a copy of every element encoded in that format.

    Example:
        >>> to_words(torch.tensor([1.0, -2.0]))
        tensor([ 1065353216, -1073741824], dtype=torch.int32)
        >>> to_words(torch.tensor([1.0]), "bfloat16")
        tensor([16256], dtype=torch.int16)
        >>> to_words(torch.tensor([0.75, -1.0]), "Q3.4")
        tensor([ 12, -16], dtype=torch.int32)
    """
    own, fmt = _resolve(tensor, fmt)
    if fmt == own:
        return _own_words(tensor, own)
    return _encode(tensor.detach(), fmt)


def from_words(words: torch.Tensor, like: torch.Tensor, fmt: FormatSpec = None) -> torch.Tensor:
    """Inverse of :func:`to_words`: a new tensor with ``like``'s dtype, shape and quantizer.

    Words may be any integer dtype; they are reduced modulo ``2**fmt.width``. The result never
    shares storage with ``words`` or ``like``. Quantized tensors keep ``like``'s scale and zero
    point (per tensor) or scales, zero points and axis (per channel).

    Example:
        >>> x = torch.tensor([1.0, 2.0])
        >>> from_words(to_words(x) ^ (1 << 31), x)
        tensor([-1., -2.])
        >>> from_words(torch.tensor([12, -16]), x, "Q3.4")
        tensor([ 0.7500, -1.0000])
    """
    own, fmt = _resolve(like, fmt)
    if (
        not isinstance(words, torch.Tensor)
        or words.is_floating_point()
        or words.dtype == torch.bool
    ):
        raise TorchFaultError("from_words needs an integer tensor of words.")
    if words.numel() != like.numel():
        raise TorchFaultError(
            f"from_words got {words.numel()} words for a tensor of {like.numel()} elements "
            f"(shape {tuple(like.shape)})."
        )
    words = wrap_words(words.reshape(like.shape), fmt)
    if fmt == own:
        if own.kind == "quantized":
            return _make_quantized(words, like)
        return words.clone(memory_format=torch.contiguous_format).view(like.dtype)
    return _decode(words, fmt, like.dtype).contiguous()


def apply_bits(
    x: torch.Tensor,
    index: torch.Tensor | Sequence[int] | int,
    mask: torch.Tensor | int,
    op: str = "xor",
    fmt: FormatSpec = None,
) -> torch.Tensor:
    """Return a new tensor with a bit operation applied to the words at flat ``index``.

    Args:
        x: The tensor (left untouched). Quantized tensors keep their quantizer.
        index: Flat indices in logical row-major order (as ``x.flatten()[index]``).
        mask: An int for every index, or an integer tensor with one mask per index. Either the
            signed or the unsigned spelling of a word is accepted (``-2**31`` or ``2**31``).
        op: ``"xor"``, ``"and"``, ``"or"``, ``"set"`` (word := mask), ``"stuck_at_0"``
            (word &= ~mask) or ``"stuck_at_1"`` (word |= mask).
        fmt: The format to see ``x`` in; default: its own dtype. In another float format or
            fixed point, only the addressed elements pass through the format.

    Repeated indices give the same as applying the entries one after another.

    Example:
        >>> x = torch.tensor([1.0, 2.0, 3.0])
        >>> apply_bits(x, torch.tensor([0, 2]), 1 << 31)
        tensor([-1.,  2., -3.])
        >>> apply_bits(x, [1], 1 << 14, fmt="bfloat16")  # exponent MSB: 0x4000 -> 0x0000
        tensor([1., 0., 3.])
        >>> apply_bits(x, [1, 1], 1 << 22)  # the same flip twice cancels
        tensor([1., 2., 3.])
    """
    own, fmt, idx, m = _prepare(x, index, mask, op, fmt)
    out = _flat_own_copy(x, own)
    if idx.numel():
        if fmt == own:
            out[idx] = _apply_op(out[idx], m, op)
        else:
            values = out[idx].view(x.dtype)
            new = _decode(_apply_op(_encode(values, fmt), m, op), fmt, x.dtype)
            out[idx] = new.view(own.word_dtype)
    return _rebuild(out, x, own)


def apply_bits_(
    x: torch.Tensor,
    index: torch.Tensor | Sequence[int] | int,
    mask: torch.Tensor | int,
    op: str = "xor",
    fmt: FormatSpec = None,
) -> torch.Tensor:
    """In-place :func:`apply_bits` for a tensor seen in its own (float or int) dtype.

    Only the addressed elements of ``x``'s storage are written, whatever its strides. Works on
    parameters that require grad (the write bypasses autograd).

    Raises:
        TorchFaultError: for quantized tensors, other float formats and fixed point (use
            :func:`apply_bits`).

    Example:
        >>> x = torch.zeros(2, 3).t()
        >>> apply_bits_(x, [1], 1 << 30) is x  # flat index 1 is x[0, 1]
        True
        >>> x
        tensor([[0., 2.],
                [0., 0.],
                [0., 0.]])
    """
    own, fmt, idx, m = _prepare(x, index, mask, op, fmt)
    if own.kind == "quantized" or fmt != own:
        raise TorchFaultError(
            f"apply_bits_ works in place only on a tensor seen in its own dtype; {x.dtype} seen "
            f"as {fmt.name} needs apply_bits (out of place)."
        )
    if idx.numel():
        words = x.detach().view(own.word_dtype)
        if words.dim() == 0:
            words = words.reshape(1)
        if words.is_contiguous():
            flat = words.view(-1)
            flat[idx] = _apply_op(flat[idx], m, op)
        else:
            where = torch.unravel_index(idx, words.shape)
            words[where] = _apply_op(words[where], m, op)
    return x


def set_values(
    x: torch.Tensor,
    index: torch.Tensor | Sequence[int] | int,
    values: torch.Tensor | float | int,
    fmt: FormatSpec = None,
) -> torch.Tensor:
    """Return a new tensor with ``x.flatten()[index] = values``, as the storage can hold them.

    Quantized tensors quantize with ``x``'s quantizer (``round(v / scale) + zero_point``, clamped
    to the integer range); fixed point rounds to the Q grid and saturates; integer dtypes round
    to nearest and saturate (NaN becomes 0); floats seen through a narrower format are cast
    through it. Repeated indices: the last value wins.

    Example:
        >>> set_values(torch.zeros(3), [2], 0.1, fmt="bfloat16")
        tensor([0.0000, 0.0000, 0.1001])
        >>> set_values(torch.zeros(3, dtype=torch.int8), [0, 1], torch.tensor([300.0, -2.6]))
        tensor([127,  -3,   0], dtype=torch.int8)
    """
    own, fmt = _resolve(x, fmt)
    idx = _as_index(index, x.numel())
    vals = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if not isinstance(values, torch.Tensor) and vals.is_floating_point():
        vals = torch.as_tensor(values, dtype=torch.float64)  # Python floats are doubles
    if vals.dtype == torch.bool or vals.is_complex():
        raise TorchFaultError(f"values must be real numbers, got dtype {vals.dtype}.")
    vals = vals.reshape(-1)
    if vals.numel() not in (1, idx.numel()):
        raise TorchFaultError(
            f"values has {vals.numel()} elements; expected 1 or one per index ({idx.numel()})."
        )
    vals = vals.expand(idx.numel())
    uniq, inverse = torch.unique(idx, return_inverse=True)
    if uniq.numel() != idx.numel():  # the last write wins
        pos = torch.arange(idx.numel(), dtype=torch.int64)
        last = torch.zeros(uniq.numel(), dtype=torch.int64).scatter_reduce(
            0, inverse, pos, "amax", include_self=False
        )
        idx, vals = uniq, vals[last]
    out = _flat_own_copy(x, own)
    if idx.numel():
        if own.kind == "quantized":
            out[idx] = _quantize_values(x, idx, vals, own)
        elif own.kind == "int":
            lo, hi = own.word_range()
            if vals.is_floating_point():
                new = _saturating_int(vals, lo, hi)
            else:
                new = vals.to(torch.int64).clamp(lo, hi)
            out[idx] = new.to(own.word_dtype)
        elif fmt == own:
            out[idx] = vals.to(x.dtype).view(own.word_dtype)
        else:
            new = _decode(_encode(vals.to(torch.float64), fmt), fmt, x.dtype)
            out[idx] = new.view(own.word_dtype)
    return _rebuild(out, x, own)


def _quantize_values(
    x: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, own: NumberFormat
) -> torch.Tensor:
    if x.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scale = torch.tensor(float(x.q_scale()), dtype=torch.float64)
        zero = torch.tensor(int(x.q_zero_point()), dtype=torch.int64)
    elif x.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        axis = x.q_per_channel_axis()
        inner = 1
        for s in x.shape[axis + 1 :]:
            inner *= int(s)
        channel = (idx // inner) % int(x.shape[axis])
        scale = x.q_per_channel_scales().to(torch.float64)[channel]
        zero = x.q_per_channel_zero_points().to(torch.int64)[channel]
    else:
        raise TorchFaultError(f"Quantized tensors with qscheme {x.qscheme()} are not supported.")
    lo, hi = own.word_range()
    q = _saturating_int(vals.to(torch.float64) / scale, -(1 << 62), 1 << 62) + zero
    return q.clamp(lo, hi).to(own.word_dtype)


def random_words(
    n: int, fmt: str | torch.dtype | NumberFormat, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` uniformly random words of ``fmt`` (every bit pattern equally likely).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> w = random_words(1000, "float8_e4m3fn", generator=g)
        >>> w.dtype, bool(w.min() >= 0), bool(w.max() <= 255)
        (torch.uint8, True, True)
    """
    fmt = get_format(fmt)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TorchFaultError(f"random_words needs a count n >= 0, got {n!r}.")
    if fmt.width <= 32:
        raw = torch.randint(0, 1 << fmt.width, (n,), generator=generator, dtype=torch.int64)
    else:
        high = torch.randint(0, 1 << (fmt.width - 32), (n,), generator=generator, dtype=torch.int64)
        low = torch.randint(0, 1 << 32, (n,), generator=generator, dtype=torch.int64)
        raw = (high << 32) | low
    return wrap_words(raw, fmt)


def read_elements(
    x: torch.Tensor, index: torch.Tensor | Sequence[int] | int, fmt: FormatSpec = None
) -> torch.Tensor:
    """The words at flat ``index`` (a copy, dtype ``fmt.word_dtype``), e.g. to restore later.

    Writing them back with ``apply_bits_(x, index, words, op="set")`` (or ``apply_bits`` for
    quantized tensors) restores the elements bit for bit.

    Example:
        >>> x = torch.tensor([1.0, 2.0])
        >>> saved = read_elements(x, [1])
        >>> _ = apply_bits_(x, [1], 1 << 31)
        >>> apply_bits_(x, [1], saved, op="set")
        tensor([1., 2.])
    """
    own, fmt = _resolve(x, fmt)
    idx = _as_index(index, x.numel())
    words = _gather_own(x, own, idx)
    if fmt == own:
        return words.clone()
    return _encode(words.view(x.dtype), fmt)
