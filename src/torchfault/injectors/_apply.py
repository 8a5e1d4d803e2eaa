# SPDX-License-Identifier: MIT
"""The one way a fault gets into a tensor: validation of its index, format and bits, and the
application of its fault model to the words at flat indices.

Every injector uses it: :func:`~torchfault.inject` (parameters, buffers and activation hooks),
:func:`~torchfault.inject_ber` (bit flips at a rate) and the campaigns' ``fast`` engine (faulty
rows of a batch). An injection changes the faulted words and nothing else: the result has the
tensor's dtype, shape, quantizer and memory layout (:func:`~torchfault.numerics.apply_bits`
keeps them), and an in-place write happens only where the caller says the tensor is its own.

- :func:`flat_index`, :func:`check_format`, :func:`check_bits`: the checks, with messages that
  name the fault (:func:`describe`).
- :func:`apply_masks`: a bitwise fault model (``xor``, ``stuck_at_0``, ``stuck_at_1``) with one
  mask per flat index; merged repeated indices, and a direct scatter into the words where the
  tensor is seen in its own plain dtype (:mod:`._words`).
- :func:`apply_model`: any registered fault model at flat indices.
- :func:`apply_fault`: a :class:`~torchfault.Fault` list on one tensor (public: hardware fault
  models and plugins apply faults through it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from torchfault import numerics
from torchfault.errors import TorchFaultError
from torchfault.faults import FAULT_MODELS, Fault, fault_model_capabilities
from torchfault.injectors._words import fault_words, merge_masks, plain_words

__all__ = [
    "apply_fault",
    "apply_masks",
    "apply_model",
    "bitwise_op",
    "check_bits",
    "check_format",
    "describe",
    "flat_index",
]


_NUMPY_WORD = {
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
}


def describe(f: Fault) -> str:
    """How errors name a fault: ``fault on module:target[element]``."""
    el = f"[{f.element}]" if f.element is not None else ""
    return f"fault on {f.module or '<model>'}:{f.target}{el}"


def flat_index(index: Sequence[int], shape: Sequence[int], what: str = "fault") -> int:
    """The row-major flat position of ``index`` in a tensor of ``shape`` (negative entries count
    from the end); a wrong rank or an entry out of range is a TorchFaultError naming ``what``.

    Example:
        >>> flat_index((1, -1), (2, 3))
        5
        >>> flat_index((2, 0), (2, 3), "fault on fc:weight")
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: fault on fc:weight: index (2, 0) is out of range in dimension 0 for shape (2, 3).
    """
    if len(index) != len(shape):
        raise TorchFaultError(
            f"{what}: index {tuple(index)} has rank {len(index)} but the tensor has shape "
            f"{tuple(shape)} (rank {len(shape)})."
        )
    flat = 0
    for i, (v, n) in enumerate(zip(index, shape)):
        if not -n <= v < n:
            raise TorchFaultError(
                f"{what}: index {tuple(index)} is out of range in dimension {i} for shape {tuple(shape)}."
            )
        flat = flat * n + (v % n)
    return flat


def check_bits(f: Fault, fmt: numerics.NumberFormat) -> int:
    """The fault's bit mask in ``fmt``; a bit outside the format names the fault and the width."""
    try:
        return numerics.bit_mask(f.bits, fmt)
    except TorchFaultError as exc:
        raise TorchFaultError(f"{describe(f)}: {exc}") from None


def check_format(f: Fault, t: torch.Tensor) -> numerics.NumberFormat:
    """The format the fault sees ``t`` in (checked against the tensor and the fault's bits)."""
    try:
        fmt = numerics.get_format(f.format, t)
        numerics.check_compatible(fmt, t)
    except TorchFaultError as exc:
        raise TorchFaultError(f"{describe(f)}: {exc}") from None
    if f.bits:
        check_bits(f, fmt)
    return fmt


def bitwise_op(model: str) -> str | None:
    """The bitwise operation of fault model ``model`` (``xor``, ``stuck_at_0``, ``stuck_at_1``),
    or ``None`` for a model that is not one bitwise operation with its mask.

    Example:
        >>> bitwise_op("bit_flip"), bitwise_op("zero")
        ('xor', None)
    """
    return fault_model_capabilities(model).bit_op


def apply_masks(
    t: torch.Tensor,
    flat: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    op: str,
    fmt: numerics.NumberFormat,
    *,
    merged: bool = False,
    inplace: bool = False,
) -> torch.Tensor:
    """``t`` with the bitwise ``op`` applied at flat indices ``flat`` with ``masks`` (one per
    index, in ``fmt``; repeated indices apply one after another).

    Where ``t`` is seen in its own plain dtype (:func:`~._words.plain_words`) the masks are
    merged (unless ``merged`` says the indices are already distinct and sorted, as
    :func:`~._words.merge_masks` makes them) and scattered into the words directly: into ``t``
    itself with ``inplace``, else into a copy. ``flat`` and ``masks`` may be numpy arrays.
    Otherwise :func:`~torchfault.numerics.apply_bits` makes a new tensor (any format, quantized
    tensors, any layout, kept).

    Example:
        >>> from torchfault.numerics import get_format
        >>> x = torch.tensor([1.0, 2.0])
        >>> m = torch.tensor([1 << 31, 1 << 31])
        >>> apply_masks(x, torch.tensor([1, 1]), m, "xor", get_format("float32"))  # cancels
        tensor([1., 2.])
    """
    if plain_words(t, fmt):
        if not merged:
            flat, masks = merge_masks(torch.as_tensor(flat), torch.as_tensor(masks), op, fmt)
        elif isinstance(masks, np.ndarray):
            masks = masks.astype(_NUMPY_WORD[fmt.word_dtype], copy=False)  # astype wraps
        elif masks.dtype != fmt.word_dtype:
            masks = numerics.wrap_words(masks, fmt)
        return fault_words(t, flat, masks, op, inplace=inplace)
    return numerics.apply_bits(t, torch.as_tensor(flat), torch.as_tensor(masks), op, fmt)


def apply_model(
    t: torch.Tensor,
    flat: torch.Tensor,
    f: Fault,
    fmt: numerics.NumberFormat,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``t`` (left untouched) with the fault model of ``f`` (its bits and parameters) applied at
    the flat indices ``flat``, seen in ``fmt``."""
    return FAULT_MODELS.get(f.model)(t, flat, f.bits, fmt, generator, **f.param_dict)


def apply_fault(
    tensor: torch.Tensor,
    faults: Fault | Sequence[Fault],
    *,
    batched: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``tensor`` with ``faults`` applied in order, as :func:`~torchfault.inject` writes them;
    ``tensor`` itself is left untouched.

    Args:
        tensor: a parameter, buffer or activation.
        faults: faults on this tensor; their ``module`` and ``target`` are not looked at.
        batched: ``tensor`` is an activation whose first dimension is the batch: indices exclude
            it, and a fault hits row ``sample`` (every row when ``None``).
        generator: for random fault models.

    Returns:
        A new tensor with ``tensor``'s dtype, shape, quantizer and memory layout.

    Raises:
        TorchFaultError: an index, bit, format or fault model that does not fit, naming the fault.

    Example:
        >>> from torchfault import Fault
        >>> w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> apply_fault(w, Fault("fc", "weight", index=(1, 0), bits=(31,)))
        tensor([[ 1.,  2.],
                [-3.,  4.]])
        >>> x = torch.ones(3, 2)
        >>> apply_fault(x, Fault("fc", "output", index=(1,), model="zero", sample=2), batched=True)
        tensor([[1., 1.],
                [1., 1.],
                [1., 0.]])
    """
    faults = [faults] if isinstance(faults, Fault) else list(faults)
    base = out = tensor.detach()
    for f in faults:
        fmt = check_format(f, out)
        if batched:
            if out.dim() == 0:
                raise TorchFaultError(f"{describe(f)}: activation faults need a batch dimension.")
            rows, per = out.shape[0], math.prod(out.shape[1:])
            inner = flat_index(f.index, out.shape[1:], describe(f))
            if f.sample is not None:
                if not 0 <= f.sample < rows:
                    raise TorchFaultError(
                        f"{describe(f)}: sample {f.sample} is out of range for a batch of {rows}."
                    )
                flat = torch.tensor([f.sample * per + inner], dtype=torch.int64)
            else:
                flat = torch.arange(rows, dtype=torch.int64) * per + inner
        else:
            flat = torch.tensor([flat_index(f.index, out.shape, describe(f))], dtype=torch.int64)
        op = bitwise_op(f.model)
        if op is not None:
            masks = torch.full((flat.numel(),), check_bits(f, fmt), dtype=torch.int64)
            out = apply_masks(out, flat, masks, op, fmt)
        else:
            out = apply_model(out, flat, f, fmt, generator)
    return out if out is not base else base.clone(memory_format=torch.preserve_format)
