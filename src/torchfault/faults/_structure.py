# SPDX-License-Identifier: MIT
"""Finding tensors inside module outputs and inputs that are tuples, lists or dicts.

An *element* names one tensor inside such a structure: ``None`` is the structure itself when it is
a tensor (or its first tensor otherwise), an ``int`` a top-level position, and a ``str`` a dotted
path of positions and keys (``"1.0"`` is ``h_n`` in ``nn.LSTM``'s ``(output, (h_n, c_n))``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from torchfault.errors import TorchFaultError

__all__ = ["iter_tensors", "element_path", "get_element", "replace_element"]


def iter_tensors(
    obj: Any, _path: tuple[Any, ...] = ()
) -> list[tuple[int | str | None, torch.Tensor]]:
    """Every tensor in ``obj`` with its element name, in order.

    Example:
        >>> import torch
        >>> [e for e, _ in iter_tensors((torch.ones(1), (torch.ones(1), torch.ones(1))))]
        [0, '1.0', '1.1']
    """
    out: list[tuple[int | str | None, torch.Tensor]] = []
    if isinstance(obj, torch.Tensor):
        out.append((_name(_path), obj))
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            out.extend(iter_tensors(v, (*_path, i)))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            out.extend(iter_tensors(v, (*_path, str(k))))
    return out


def _name(path: tuple[Any, ...]) -> int | str | None:
    if not path:
        return None
    if len(path) == 1 and isinstance(path[0], int):
        return path[0]
    return ".".join(str(p) for p in path)


def element_path(element: int | str | None) -> tuple[str | int, ...]:
    """The steps of an element name."""
    if element is None:
        return ()
    if isinstance(element, int):
        return (element,)
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in str(element).split("."))


def _step(obj: Any, step: str | int) -> Any:
    if isinstance(obj, Mapping):
        return obj[step if step in obj else str(step)]
    if isinstance(obj, (tuple, list)) and isinstance(step, int):
        return obj[step]
    raise KeyError(step)


def get_element(obj: Any, element: int | str | None) -> torch.Tensor:
    """The tensor named by ``element`` in ``obj`` (see the module docstring).

    Raises:
        TorchFaultError: ``obj`` holds no tensor there; the message lists the elements it holds.

    Example:
        >>> import torch
        >>> get_element((torch.zeros(1), {"h": torch.ones(1)}), "1.h")
        tensor([1.])
        >>> get_element((torch.zeros(1), {"h": torch.ones(1)}), "1.c")
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: Element '1.c' is not in the module's output/input; its tensors are [0, '1.h'].
    """
    if element is None:
        found = iter_tensors(obj)
        if not found:
            raise TorchFaultError("The module's output/input holds no tensor to fault.")
        return found[0][1]
    node = obj
    try:
        for step in element_path(element):
            node = _step(node, step)
    except (KeyError, IndexError):
        node = None
    if not isinstance(node, torch.Tensor):
        raise TorchFaultError(
            f"Element {element!r} is not in the module's output/input; its tensors are "
            f"{[e for e, _ in iter_tensors(obj)]}."
        )
    return node


def replace_element(obj: Any, element: int | str | None, new: torch.Tensor) -> Any:
    """A copy of the structure ``obj`` with the tensor at ``element`` replaced by ``new``."""
    if element is None:
        if isinstance(obj, torch.Tensor):
            return new
        first = iter_tensors(obj)[0][0]
        return replace_element(obj, first, new)
    return _replace(obj, element_path(element), new)


def _replace(obj: Any, path: tuple[Any, ...], new: torch.Tensor) -> Any:
    if not path:
        return new
    step, rest = path[0], path[1:]
    if isinstance(obj, Mapping):
        key = step if step in obj else str(step)
        out: Any = dict(obj) if type(obj) is dict else obj.__class__(obj)  # type: ignore[call-arg]
        out[key] = _replace(obj[key], rest, new)
        return out
    if isinstance(obj, list):
        out_l = list(obj)
        out_l[step] = _replace(obj[step], rest, new)
        return out_l
    if isinstance(obj, tuple):
        items = list(obj)
        items[step] = _replace(obj[step], rest, new)
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items)
        return tuple(items)
    raise TorchFaultError(f"Cannot replace element {path!r} in a {type(obj).__name__}.")
