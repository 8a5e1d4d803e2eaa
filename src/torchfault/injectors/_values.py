# SPDX-License-Identifier: MIT
"""The values a fault replaced: each faulted element before and after the fault.

:func:`injected_values` reads them from :func:`~torchfault.injectors.inject` itself, so they are
exactly what the injection wrote (every fault model, format and seed):

- parameter and buffer faults: the element is read before :func:`inject` is entered and inside
  it (the fault is then written in place); no forward pass is needed, and the pair is the same
  for every input;
- activation faults (``output`` / ``input``): forward hooks (pre-hooks for inputs) registered
  before and after the injection's own hooks see the tensor before and after the fault, in one
  forward pass over the given inputs; the pair is per input row (a fault with ``sample=k`` has a
  pair only for row ``k``), from the module's first call unless the fault names ``call``.

Values are returned as Python floats of the stored tensor's words (quantized tensors: their
integers); ``None`` where a fault left no value (a row it did not hit, a packed or sparse
tensor, a module not called).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from torchfault.faults import Fault, get_element, get_stored
from torchfault.injectors._inject import inject

__all__ = ["injected_values"]

Pair = tuple[float | None, float | None]


def _value(t: Any, index: Sequence[int]) -> float | None:
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        return None
    if t.is_quantized:
        t = t.int_repr()
    try:
        return float(t[tuple(index)])
    except (IndexError, RuntimeError):
        return None


def _activation(f: Fault) -> bool:
    return f.target in ("output", "input")


@torch.no_grad()
def injected_values(
    model: nn.Module,
    faults: Sequence[Fault] | Fault,
    inputs: torch.Tensor | None = None,
    *,
    seed: int | None = None,
) -> list[tuple[Pair, ...]]:
    """``(before, after)`` of each fault's element, per input row.

    Args:
        model: the model (its parameters are restored on return, as by :func:`inject`).
        faults: the faults of one run (acting together).
        inputs: the inputs (rows first); needed when a fault hits an activation. Without them
            the result has one row (parameter faults only).
        seed: the seed of random fault models, as given to :func:`inject`.

    Returns:
        One tuple per input row, holding one ``(before, after)`` per fault.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.fill_(1.0)
        ...     _ = m[0].bias.fill_(0.0)
        >>> w = Fault("0", "weight", (0, 1), (30,))     # exponent MSB: 1.0 -> inf
        >>> o = Fault("0", "output", (1,), (31,))       # sign bit
        >>> injected_values(m, [w, o], torch.ones(1, 2))
        [((1.0, inf), (2.0, -2.0))]
    """
    faults = [faults] if isinstance(faults, Fault) else list(faults)
    acts = [k for k, f in enumerate(faults) if _activation(f)]
    if acts and inputs is None:
        raise ValueError(
            "injected_values: inputs are needed for activation faults "
            f"({faults[acts[0]].module}:{faults[acts[0]].target})."
        )
    rows = 1 if inputs is None else int(inputs.shape[0])
    modules = dict(model.named_modules())
    before_p = {
        k: _value(get_stored(modules[f.module], f.target), f.index) if f.module in modules else None
        for k, f in enumerate(faults)
        if not _activation(f)
    }
    # activation values are read when the hook runs (a later in-place op may change the tensor)
    seen: dict[tuple[int, str], list[float | None]] = {}
    calls: dict[tuple[str, str, str], int] = {}
    handles: list[Any] = []

    def read(f: Fault, obj: Any) -> list[float | None] | None:
        if f.target == "input" and f.element is None:
            obj = obj[0] if isinstance(obj, tuple) and obj else obj
        try:
            t = get_element(obj, f.element) if f.element is not None else obj
        except ValueError:
            return None
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return None
        return [_value(t[r], f.index) for r in range(t.shape[0])]

    def recorder(key: tuple[str, str, str]) -> Any:
        mine = [k for k in acts if (faults[k].module, faults[k].target) == key[:2]]

        def record(obj: Any) -> None:
            c = calls.get(key, 0)
            calls[key] = c + 1
            for k in mine:
                if (faults[k].call if faults[k].call is not None else 0) == c:
                    seen[(k, key[2])] = read(faults[k], obj) or []

        if key[1] == "input":
            return lambda mod, args: record(args)
        return lambda mod, args, out: record(out)

    def attach(when: str) -> None:
        for key in dict.fromkeys((faults[k].module, faults[k].target, when) for k in acts):
            mod = modules[key[0]]
            if key[1] == "input":
                handles.append(mod.register_forward_pre_hook(recorder(key)))
            else:
                handles.append(mod.register_forward_hook(recorder(key)))

    after_p: dict[int, float | None] = {}
    try:
        attach("before")
        with inject(model, faults, seed=seed):
            attach("after")
            after_p = {
                k: _value(get_stored(modules[faults[k].module], faults[k].target), faults[k].index)
                for k in before_p
            }
            if acts:
                model(inputs)
    finally:
        for h in handles:
            h.remove()

    def act_value(k: int, when: str, row: int) -> float | None:
        f = faults[k]
        vals = seen.get((k, when), [])
        if row >= len(vals) or (f.sample is not None and f.sample != row):
            return None
        return vals[row]

    out: list[tuple[Pair, ...]] = []
    for r in range(rows):
        pairs: list[Pair] = []
        for k, f in enumerate(faults):
            if _activation(f):
                pairs.append((act_value(k, "before", r), act_value(k, "after", r)))
            else:
                pairs.append((before_p[k], after_p.get(k)))
        out.append(tuple(pairs))
    return out
