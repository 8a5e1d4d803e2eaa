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

import numpy as np
import torch
import torch.nn as nn

from torchfault import numerics

__all__ = [
    "merge_masks",
    "fault_words",
    "may_write",
    "plain_words",
    "storage_ptrs",
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
        return index[order], numerics.wrap_words(masks.reshape(-1), fmt)[order]
    acc = torch.zeros(int(uniq.max()) + 1, dtype=fmt.word_dtype)
    acc = numerics.apply_bits(acc, index, masks, _MERGE_OP[op])
    return uniq, acc[uniq]


def storage_ptrs(tensors: Iterable[Any]) -> set[int]:
    """Storage addresses of the tensors (non-tensors are skipped)."""
    out = set()
    for t in tensors:
        if isinstance(t, torch.Tensor) and not t.is_quantized and t.layout == torch.strided:
            out.add(t.untyped_storage().data_ptr())
    return out


def _shares(ptr: int, obj: Any) -> bool:
    """Whether any tensor in ``obj`` (a tensor, or a tuple, list or dict of them) has storage ``ptr``."""
    if isinstance(obj, torch.Tensor):
        return (
            not obj.is_quantized
            and obj.layout == torch.strided
            and obj.untyped_storage().data_ptr() == ptr
        )
    if isinstance(obj, (tuple, list)):
        return any(_shares(ptr, v) for v in obj)
    if isinstance(obj, dict):
        return any(_shares(ptr, v) for v in obj.values())
    return False


def may_write(
    t: torch.Tensor, module: nn.Module, inputs: Any, cache: dict[nn.Module, set[int]] | None = None
) -> bool:
    """Whether ``module``'s output ``t`` may be faulted in place: a fresh tensor no one else holds.

    Not when autograd may have saved it, when it is an inference tensor outside inference mode,
    or when it shares storage with the module's inputs, parameters or buffers (``nn.Identity``,
    ``nn.Flatten``, ``nn.ReLU(inplace=True)`` return views of their input). ``cache`` keeps the
    storages of each module's parameters and buffers for the injector's lifetime (faults on
    parameters write into their storage, they never replace it).
    """
    if t.requires_grad and torch.is_grad_enabled():
        return False
    if t.is_inference() and not torch.is_inference_mode_enabled():
        return False
    ptr = t.untyped_storage().data_ptr()
    if _shares(ptr, inputs):
        return False
    own = cache.get(module) if cache is not None else None
    if own is None:
        own = storage_ptrs([*module.parameters(), *module.buffers()])
        if cache is not None:
            cache[module] = own
    return ptr not in own


def fault_words(
    t: torch.Tensor,
    index: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    op: str,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Apply merged masks (from :func:`merge_masks`) to the words of ``t`` at flat ``index``.

    ``t`` must satisfy :func:`plain_words`; ``index`` must not repeat. With ``inplace`` (see
    :func:`may_write`) ``t`` itself is written; otherwise a copy, which keeps ``t``'s autograd
    history (the fault acts as an identity for gradients). ``index`` and ``masks`` may be numpy
    arrays when ``t`` is on the CPU.

    Example:
        >>> x = torch.tensor([1.0, 2.0])
        >>> fault_words(x, torch.tensor([1]), torch.tensor([-2**31], dtype=torch.int32), "xor")
        tensor([ 1., -2.])
        >>> x
        tensor([1., 2.])
    """
    if not inplace:
        t = t.clone(memory_format=torch.contiguous_format)
    if len(index) == 0:
        return t
    word_dtype = masks.dtype if isinstance(masks, torch.Tensor) else _TORCH_OF[masks.dtype]
    words = t.detach().view(word_dtype).view(-1)
    if words.device.type == "cpu":  # numpy indexing costs a third of torch's for a few thousand
        w = words.numpy()
        i = index.numpy() if isinstance(index, torch.Tensor) else index
        m = masks.numpy() if isinstance(masks, torch.Tensor) else masks
        if op == "xor":
            w[i] ^= m
        elif op == "stuck_at_1":
            w[i] |= m
        else:  # stuck_at_0
            w[i] &= ~m
        return t
    index = torch.as_tensor(index, device=words.device)
    masks = torch.as_tensor(masks, device=words.device)
    old = words.index_select(0, index)
    if op == "xor":
        new = old ^ masks
    elif op == "stuck_at_1":
        new = old | masks
    else:  # stuck_at_0
        new = old & ~masks
    words.index_copy_(0, index, new)
    return t


_TORCH_OF = {
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
}
