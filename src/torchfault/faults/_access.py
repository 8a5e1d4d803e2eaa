# SPDX-License-Identifier: MIT
"""Reading and writing a module's parameters and buffers, including packed quantized weights.

Quantized modules (``torch.ao.nn.quantized.Linear``, ``Conv2d``...) keep their weight and bias
packed; ``module.weight()`` unpacks them and ``module.set_weight_bias(w, b)`` packs them again.
These helpers hide the difference so faults treat every stored tensor alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["stored_tensors", "get_stored", "set_packed", "is_packed"]


def is_packed(module: nn.Module, target: str) -> bool:
    """Whether ``target`` of ``module`` is a packed quantized weight or bias."""
    return (
        target in ("weight", "bias")
        and hasattr(module, "set_weight_bias")
        and callable(getattr(module, target, None))
        and not isinstance(getattr(module, target, None), torch.Tensor)
    )


def stored_tensors(module: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """``{name: (kind, tensor)}`` for the module's own parameters, buffers and packed weights.

    ``kind`` is ``"parameter"`` or ``"buffer"``. Packed quantized weights count as parameters.
    """
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for name, p in module.named_parameters(recurse=False):
        if p is not None:
            out[name] = ("parameter", p)
    for name, b in module.named_buffers(recurse=False):
        if b is not None:
            out[name] = ("buffer", b)
    for name in ("weight", "bias"):
        if name not in out and is_packed(module, name):
            try:
                t = getattr(module, name)()
            except Exception:  # noqa: BLE001 - some modules raise when unpacking
                t = None
            if isinstance(t, torch.Tensor):
                out[name] = ("parameter", t)
    return out


def get_stored(module: nn.Module, target: str) -> torch.Tensor | None:
    """The tensor stored as ``target`` in ``module`` (``None`` if there is none)."""
    if is_packed(module, target):
        t = getattr(module, target)()
        return t if isinstance(t, torch.Tensor) else None
    t = getattr(module, target, None)
    return t if isinstance(t, torch.Tensor) else None


def set_packed(module: nn.Module, target: str, tensor: torch.Tensor) -> None:
    """Write a packed quantized weight or bias back into its module."""
    w, b = module.weight(), module.bias()
    if target == "weight":
        w = tensor
    else:
        b = tensor
    module.set_weight_bias(w, b)
