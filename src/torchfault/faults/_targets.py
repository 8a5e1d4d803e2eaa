# SPDX-License-Identifier: MIT
"""Selecting modules and tensor kinds: by exact name, ``re:`` regex, module type or a function."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch.nn as nn

from torchfault.errors import TorchFaultError, suggest
from torchfault.faults._access import is_packed

__all__ = ["ModuleSelector", "select_modules", "normalize_kinds", "tensor_kind", "DEFAULT_KINDS"]

ModuleSelector = str | type | Callable[[nn.Module, str], bool]

#: What ``fault_space`` targets when no kinds are given.
DEFAULT_KINDS = ("outputs", "weights", "biases")
_KIND_ALIASES = {
    "output": "outputs",
    "outputs": "outputs",
    "activations": "outputs",
    "input": "inputs",
    "inputs": "inputs",
    "weight": "weights",
    "weights": "weights",
    "bias": "biases",
    "biases": "biases",
    "buffer": "buffers",
    "buffers": "buffers",
    "parameters": "parameters",
    "params": "parameters",
    "mask": "masks",
    "masks": "masks",
}


def normalize_kinds(kinds: str | Iterable[str] | None) -> tuple[str, ...]:
    """Canonical tensor kinds (``outputs``, ``inputs``, ``weights``, ``biases``, ``buffers``,
    ``parameters``, ``masks``).

    Example:
        >>> normalize_kinds(["weight", "outputs"])
        ('weights', 'outputs')
    """
    if kinds is None:
        return DEFAULT_KINDS
    if isinstance(kinds, str):
        kinds = [kinds]
    out = []
    for k in kinds:
        canon = _KIND_ALIASES.get(str(k).lower())
        if canon is None:
            valid = sorted(set(_KIND_ALIASES.values()))
            raise TorchFaultError(
                f"Unknown target kind {k!r}; valid kinds: {', '.join(valid)}.{suggest(str(k), valid)}",
                field="kinds",
            )
        if canon not in out:
            out.append(canon)
    return tuple(out)


def _matches(sel: ModuleSelector, name: str, module: nn.Module) -> bool:
    if isinstance(sel, str):
        if sel.startswith("re:"):
            return re.fullmatch(sel[3:], name) is not None
        if sel.startswith("type:"):
            return type(module).__name__ == sel[5:]
        return name == sel
    if isinstance(sel, type):
        return isinstance(module, sel)
    if callable(sel):
        return bool(sel(module, name))
    raise TorchFaultError(
        f"A module selector must be a name, 're:<regex>', 'type:<ClassName>', an nn.Module type or a "
        f"function (module, name) -> bool; got {sel!r}.",
        field="modules",
    )


def tensor_kind(name: str, kind: str) -> tuple[str, ...]:
    """The target kinds a module's parameter or buffer ``name`` belongs to.

    Buffers are ``buffers``, and pruning masks (buffers named ``*_mask``, as
    ``torch.nn.utils.prune`` makes them) also ``masks``; every parameter is in ``parameters``,
    and also in ``weights`` when its name is ``weight`` or starts or ends with it
    (``weight_ih_l0`` of ``nn.LSTM``, ``in_proj_weight`` of ``nn.MultiheadAttention``), in
    ``biases`` likewise for ``bias``.

    Example:
        >>> tensor_kind("weight_hh_l0", "parameter"), tensor_kind("running_mean", "buffer")
        (('parameters', 'weights'), ('buffers',))
        >>> tensor_kind("weight_mask", "buffer")
        ('buffers', 'masks')
    """
    if kind == "buffer":
        return ("buffers", "masks") if name.endswith("_mask") else ("buffers",)
    name = name.split(".", 1)[0]  # a sparse tensor's component ("weight.values") is the tensor's
    out = ["parameters"]
    for word, group in (("weight", "weights"), ("bias", "biases")):
        if name == word or name.startswith(word + "_") or name.endswith("_" + word):
            out.append(group)
    return tuple(out)


def _is_leaf(module: nn.Module) -> bool:
    """A module without children, or one that holds tensors of its own (``nn.MultiheadAttention``
    with its ``in_proj_weight``, a quantized ``Linear`` with its packed weight)."""
    if not any(True for _ in module.children()):
        return True
    if any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    ):
        return True
    return is_packed(module, "weight")


def select_modules(
    model: nn.Module,
    modules: ModuleSelector | Sequence[ModuleSelector] | None = None,
    *,
    leaf_only: bool = True,
) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs of ``model`` that any selector matches, in model order.

    With no selector every module is chosen; with ``leaf_only``, only the modules without
    children and those holding parameters or buffers of their own (``nn.MultiheadAttention``,
    quantized ``Linear`` and ``Conv`` with their packed weights). An exact name
    that matches nothing is an error with the closest valid name; so is a selector that matches
    nothing.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> [n for n, _ in select_modules(m, nn.Linear)]
        ['0', '2']
        >>> [n for n, _ in select_modules(m, "re:[01]")]
        ['0', '1']
    """
    named = list(model.named_modules())
    if modules is None:
        return [(n, m) for n, m in named if not leaf_only or _is_leaf(m)]
    sels: Sequence[Any] = modules if isinstance(modules, (list, tuple)) else [modules]
    names = [n for n, _ in named]
    for sel in sels:
        if isinstance(sel, str) and not sel.startswith(("re:", "type:")) and sel not in names:
            raise TorchFaultError(
                f"Unknown module {sel!r}; the model's modules are: {', '.join(repr(n) for n in names[:30])}"
                f"{' ...' if len(names) > 30 else ''}.{suggest(sel, names)}",
                field="modules",
            )
    chosen = [(n, m) for n, m in named if any(_matches(s, n, m) for s in sels)]
    if not chosen:
        raise TorchFaultError(f"No module of the model matches {list(sels)!r}.", field="modules")
    return chosen
