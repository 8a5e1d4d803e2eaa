# SPDX-License-Identifier: MIT
"""How pytorchfi numbers layers, and how its arguments are checked.

pytorchfi 0.6 walks ``model.children()`` depth first and hooks every *leaf* module that is an
instance of one of ``layer_types`` (once per matching type; ``"all"`` hooks every leaf). Neuron
layer ``i`` is the ``i``-th time such a hook fires in a forward pass, so a module called twice is
two layers; weight layer ``i`` is the ``i``-th module of ``model.modules()`` (leaves or not) that
is an instance of ``layer_types``. Both numberings are kept here exactly.

One change (pytorchfi fails on quantized models): a quantized module (``torch.ao.nn.quantized``,
``...intrinsic.quantized``, ``...quantized.dynamic``) counts as an instance of the float module
types it was converted from, so ``layer_types=[nn.Conv2d]`` finds the convolutions of a
quantized model too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchfault.errors import suggest

__all__ = ["PytorchfiArgumentError", "check_arguments", "is_layer_type", "traverse_leaves"]


class PytorchfiArgumentError(AssertionError, TypeError):
    """An argument pytorchfi does not take, or a missing or malformed one.

    pytorchfi raises ``AssertionError`` for bad injection arguments (and ignores names it does
    not know); Python raises ``TypeError`` for an unexpected keyword. This error is both, so code
    written against either keeps catching it, and its message names the argument, the value and
    what is valid.
    """


def check_arguments(where: str, kwargs: dict[str, Any], valid: Sequence[str]) -> None:
    """Refuse keyword arguments that ``where`` does not take, naming the closest valid one.

    Example:
        >>> check_arguments("declare_neuron_fi", {"layer": [0]}, ["layer_num", "batch"])
        Traceback (most recent call last):
        ...
        torchfault...PytorchfiArgumentError: declare_neuron_fi() got an unknown argument 'layer'...
    """
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        name = unknown[0]
        raise PytorchfiArgumentError(
            f"{where}() got an unknown argument {name!r} (= {kwargs[name]!r}); valid arguments: "
            f"{', '.join(valid)}.{suggest(name, valid)}"
        )


def _float_types(cls: type) -> Iterator[type]:
    """The float module types a quantized module class was converted from (``_FLOAT_MODULE``)."""
    if not cls.__module__.startswith("torch.ao.nn."):
        return
    for klass in cls.__mro__:
        fm = klass.__dict__.get("_FLOAT_MODULE")
        for t in fm if isinstance(fm, tuple) else (fm,):
            if isinstance(t, type):
                yield t


def matches(module: nn.Module, layer_type: Any) -> bool:
    """Whether ``module`` is a ``layer_type`` (a quantized module counts as its float type)."""
    if not isinstance(layer_type, type):
        return False
    if isinstance(module, layer_type):
        return True
    return any(issubclass(t, layer_type) for t in _float_types(type(module)))


def is_layer_type(module: nn.Module, layer_types: Iterable[Any]) -> bool:
    """Whether ``module`` is an instance of any of ``layer_types`` (weight layer numbering)."""
    return any(matches(module, t) for t in layer_types)


def traverse_leaves(
    model: nn.Module, layer_types: Sequence[Any], prefix: str = ""
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of pytorchfi's hooked leaves, in its order, once per hook it registers.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Linear(2, 2)))
        >>> [name for name, _ in traverse_leaves(m, [nn.Conv2d, nn.Linear])]
        ['0', '2.0']
    """
    out: list[tuple[str, nn.Module]] = []
    for name, layer in model.named_children():
        full = f"{prefix}{name}"
        if list(layer.children()) == []:
            if "all" in layer_types:
                out.append((full, layer))
            else:
                out.extend((full, layer) for t in layer_types if matches(layer, t))
        else:
            out.extend(traverse_leaves(layer, layer_types, f"{full}."))
    return out


def weight_layers(model: nn.Module, layer_types: Sequence[Any]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of pytorchfi's weight layers: ``model.modules()`` order.

    With ``"all"`` (where pytorchfi raises ``TypeError``), every leaf module.
    """
    if "all" in layer_types:
        return [(n, m) for n, m in model.named_modules() if n and list(m.children()) == []]
    return [(n, m) for n, m in model.named_modules() if is_layer_type(m, layer_types)]


def weight_of(module: nn.Module) -> torch.Tensor | None:
    """The module's weight tensor (unpacked for a quantized module), or ``None``."""
    w = getattr(module, "weight", None)
    if callable(w) and not isinstance(w, torch.Tensor):
        try:
            w = w()
        except Exception:  # noqa: BLE001 - a module whose weight cannot be unpacked has none
            return None
    return w if isinstance(w, torch.Tensor) else None


def model_device_dtype(model: nn.Module) -> tuple[bool, torch.dtype]:
    """``(is_cuda, dtype)`` of the model's first parameter (pytorchfi's choice), else of its first
    buffer or unpacked weight, else ``(False, torch.float32)`` (a quantized model has neither)."""
    for p in model.parameters():
        return p.is_cuda, p.dtype
    for m in model.modules():
        w = weight_of(m)
        if w is not None:
            return w.is_cuda, torch.float32 if w.is_quantized else w.dtype
    for b in model.buffers():
        return b.is_cuda, b.dtype if b.is_floating_point() else torch.float32
    return False, torch.float32
