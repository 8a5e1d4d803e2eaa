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
  pair only for row ``k``, and only that row is read), from the module's first call unless the
  fault names ``call``.

:func:`injected_pass` is the one reading both use: any number of faults under one
:func:`inject`, one forward pass run by the caller (inputs of any structure), the pass's error
kept instead of raised (the values read before it stay). Campaigns read many runs' values in one
pass with it (one fault per row, ``sample=row``; :mod:`torchfault.campaign`).

Values are returned as Python floats of the stored tensor's words (quantized tensors: their
integers); ``None`` where a fault left no value (a row it did not hit, a packed or sparse
tensor, a module not called).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchfault.faults import Fault, get_element, get_stored
from torchfault.injectors._inject import inject

__all__ = ["InjectedPass", "injected_pass", "injected_values"]

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


@dataclass(frozen=True)
class InjectedPass:
    """What :func:`injected_pass` read.

    Attributes:
        pairs: one dict per fault (in the order given), ``row -> (before, after)``: a parameter
            or buffer fault has the one key ``-1`` (the same pair on every row); an activation
            fault the rows of the tensor it was read from (only row ``sample`` when the fault
            names one; none when its module did not run).
        batch_sizes: the first-dimension sizes of the activation tensors read.
        error: the exception the forward pass raised (values read before it are kept), or
            ``None``.
    """

    pairs: tuple[dict[int, Pair], ...]
    batch_sizes: frozenset[int]
    error: Exception | None = None


@torch.no_grad()
def injected_pass(
    model: nn.Module,
    faults: Sequence[Fault] | Fault,
    run: Callable[[], Any] | None = None,
    *,
    seed: int | None = None,
) -> InjectedPass:
    """``(before, after)`` of each fault's element, read under one :func:`inject` of ``faults``.

    Args:
        model: the model (its parameters are restored on return, as by :func:`inject`).
        faults: faults acting together (one run's, or many runs' on distinct rows or elements).
        run: runs the forward pass (``lambda: model(x)``); needed when a fault hits an
            activation, called once, inside the injection.
        seed: the seed of random fault models, as given to :func:`inject`.

    Raises:
        ValueError: an activation fault and no ``run``.
        TorchFaultError: a fault :func:`inject` refuses (before anything runs).

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> x = torch.ones(3, 2)
        >>> o = Fault("0", "output", (1,), (31,), sample=2)       # row 2 only
        >>> p = injected_pass(m, [o], lambda: m(x))
        >>> list(p.pairs[0]), p.pairs[0][2][0] == -p.pairs[0][2][1], p.batch_sizes
        ([2], True, frozenset({3}))
    """
    faults = [faults] if isinstance(faults, Fault) else list(faults)
    acts = [k for k, f in enumerate(faults) if f.is_activation]
    if acts and run is None:
        raise ValueError(
            "injected_values: inputs are needed for activation faults "
            f"({faults[acts[0]].module}:{faults[acts[0]].target})."
        )
    modules = dict(model.named_modules())
    before_p = {
        k: _value(get_stored(modules[f.module], f.target), f.index) if f.module in modules else None
        for k, f in enumerate(faults)
        if not f.is_activation
    }
    # activation values are read when the hook runs (a later in-place op may change the tensor)
    seen: dict[tuple[int, str], dict[int, float | None]] = {}
    sizes: set[int] = set()
    calls: dict[tuple[str, str, str], int] = {}
    handles: list[Any] = []

    def read(f: Fault, obj: Any) -> dict[int, float | None]:
        if f.target == "input" and f.element is None:
            obj = obj[0] if isinstance(obj, tuple) and obj else obj
        try:
            t = get_element(obj, f.element) if f.element is not None else obj
        except ValueError:
            return {}
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return {}
        rows = t.shape[0]
        sizes.add(rows)
        if f.sample is not None:
            return {f.sample: _value(t[f.sample], f.index)} if f.sample < rows else {}
        return {r: _value(t[r], f.index) for r in range(rows)}

    by_site: dict[tuple[str, str], list[int]] = {}
    for k in acts:
        by_site.setdefault((faults[k].module, faults[k].target), []).append(k)

    def recorder(key: tuple[str, str, str]) -> Any:
        mine = by_site[key[:2]]

        def record(obj: Any) -> None:
            c = calls.get(key, 0)
            calls[key] = c + 1
            for k in mine:
                if (faults[k].call if faults[k].call is not None else 0) == c:
                    seen[(k, key[2])] = read(faults[k], obj)

        if key[1] == "input":
            return lambda mod, args: record(args)
        return lambda mod, args, out: record(out)

    def attach(when: str) -> None:
        for site in by_site:
            key, mod = (*site, when), modules.get(site[0])
            if mod is None:  # an unknown module: inject names it
                continue
            if key[1] == "input":
                handles.append(mod.register_forward_pre_hook(recorder(key)))
            else:
                handles.append(mod.register_forward_hook(recorder(key)))

    after_p: dict[int, float | None] = {}
    error: Exception | None = None
    try:
        attach("before")
        with inject(model, faults, seed=seed):
            attach("after")
            after_p = {
                k: _value(get_stored(modules[faults[k].module], faults[k].target), faults[k].index)
                for k in before_p
            }
            if acts:
                assert run is not None  # checked above
                try:
                    run()
                except Exception as exc:  # noqa: BLE001 - kept for the caller, values read so far
                    error = exc
    finally:
        for h in handles:
            h.remove()

    pairs: list[dict[int, Pair]] = []
    for k, f in enumerate(faults):
        if not f.is_activation:
            pairs.append({-1: (before_p[k], after_p.get(k))})
            continue
        b, a = seen.get((k, "before"), {}), seen.get((k, "after"), {})
        pairs.append({r: (b.get(r), a.get(r)) for r in sorted(b.keys() | a.keys())})
    return InjectedPass(tuple(pairs), frozenset(sizes), error)


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

    Raises:
        ValueError: an activation fault and no inputs.
        Exception: whatever the forward pass raised.

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
    x = inputs
    got = injected_pass(model, faults, None if x is None else lambda: model(x), seed=seed)
    if got.error is not None:
        raise got.error
    rows = 1 if inputs is None else int(inputs.shape[0])
    return [
        tuple(
            p.get(r, (None, None)) if f.is_activation else p[-1] for f, p in zip(faults, got.pairs)
        )
        for r in range(rows)
    ]
