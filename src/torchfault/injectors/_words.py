# SPDX-License-Identifier: MIT
"""The injectors' fast path: bitwise faults written straight into an activation's words.

:func:`torchfault.numerics.apply_bits` is the general tool (any format, any strides, checks and
merging of repeated indices on every call). An activation fault fires at every forward pass with
the same indices and masks, so the injectors check and merge once (:func:`merge_masks`) and then,
at each pass, only gather and scatter the words (:func:`fault_words`): in place when the output is
a fresh tensor that nothing else holds, on one copy otherwise. Tensors that are not seen in
their own plain dtype (quantized tensors, other float formats, fixed point, non-contiguous
tensors) go through :func:`~torchfault.numerics.apply_bits`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from torchfault import numerics

__all__ = [
    "merge_masks",
    "fault_words",
    "may_write",
    "plain_words",
    "storage_ptrs",
    "to_word_dtype",
]

#: the op a merged segment of each bitwise model applies, and how its masks merge
_MERGE_OP = {"xor": "xor", "stuck_at_0": "or", "stuck_at_1": "or"}


def plain_words(t: torch.Tensor, fmt: numerics.NumberFormat) -> bool:
    """Whether ``t`` can be faulted through a flat view of its words in ``fmt``."""
    return (
        fmt.kind in ("float", "int")
        and fmt.value_dtype == t.dtype
        and not t.is_quantized
        and t.is_contiguous()
    )


def merge_masks(
    index: torch.Tensor, masks: torch.Tensor, op: str, fmt: numerics.NumberFormat
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge repeated flat indices: ``(unique sorted indices, masks in fmt.word_dtype)``.

    Applying the merged masks once equals applying the given ones one after another (two flips
    of one bit cancel; stuck-at masks of one element unite).

    Example:
        >>> from torchfault.numerics import get_format
        >>> idx, m = merge_masks(torch.tensor([3, 1, 3]), torch.tensor([1, 2, 5]), "xor",
        ...                      get_format("float32"))
        >>> idx.tolist(), m.tolist()
        ([1, 3], [2, 4])
    """
    index = index.reshape(-1).to(torch.int64)
    uniq = torch.unique(index)
    if uniq.numel() == index.numel():
        order = torch.argsort(index)
        return index[order], to_word_dtype(masks.reshape(-1), fmt)[order]
    acc = torch.zeros(int(uniq.max()) + 1, dtype=fmt.word_dtype)
    acc = numerics.apply_bits(acc, index, masks, _MERGE_OP[op])
    return uniq, acc[uniq]


def to_word_dtype(masks: torch.Tensor, fmt: numerics.NumberFormat) -> torch.Tensor:
    """Integer masks (signed or unsigned spelling) as words of ``fmt.word_dtype``."""
    m = masks.to(torch.int64)
    if fmt.width < 64:
        m = m & ((1 << fmt.width) - 1)
        if fmt.word_signed:
            sign = 1 << (fmt.width - 1)
            m = (m ^ sign) - sign
    return m.to(fmt.word_dtype)


def storage_ptrs(tensors: Iterable[Any]) -> set[int]:
    """Storage addresses of the tensors (non-tensors are skipped)."""
    out = set()
    for t in tensors:
        if isinstance(t, torch.Tensor) and not t.is_quantized and t.layout == torch.strided:
            out.add(t.untyped_storage().data_ptr())
    return out


def may_write(t: torch.Tensor, module: nn.Module, inputs: Any) -> bool:
    """Whether ``module``'s output ``t`` may be faulted in place: a fresh tensor no one else holds.

    Not when autograd may have saved it, when it is an inference tensor outside inference mode,
    or when it shares storage with the module's inputs, parameters or buffers (``nn.Identity``,
    ``nn.Flatten``, ``nn.ReLU(inplace=True)`` return views of their input).
    """
    if t.requires_grad and torch.is_grad_enabled():
        return False
    if t.is_inference() and not torch.is_inference_mode_enabled():
        return False
    from torchfault.faults import iter_tensors

    ptr = t.untyped_storage().data_ptr()
    if ptr in storage_ptrs(x for _, x in iter_tensors(inputs)):
        return False
    return ptr not in storage_ptrs(module.parameters()) and ptr not in storage_ptrs(
        module.buffers()
    )


def fault_words(
    t: torch.Tensor, index: torch.Tensor, masks: torch.Tensor, op: str, *, inplace: bool = False
) -> torch.Tensor:
    """Apply merged masks (from :func:`merge_masks`) to the words of ``t`` at flat ``index``.

    ``t`` must satisfy :func:`plain_words`. With ``inplace`` (see :func:`may_write`) ``t`` itself
    is written; otherwise a copy, which keeps ``t``'s autograd history (the fault acts as an
    identity for gradients).

    Example:
        >>> x = torch.tensor([1.0, 2.0])
        >>> fault_words(x, torch.tensor([1]), torch.tensor([-2**31], dtype=torch.int32), "xor")
        tensor([ 1., -2.])
        >>> x
        tensor([1., 2.])
    """
    if not inplace:
        t = t.clone(memory_format=torch.contiguous_format)
    words = t.detach().view(masks.dtype).view(-1)
    if index.numel():
        if op == "xor":
            words[index] = words[index] ^ masks
        elif op == "stuck_at_1":
            words[index] = words[index] | masks
        else:  # stuck_at_0
            words[index] = words[index] & ~masks
    return t
