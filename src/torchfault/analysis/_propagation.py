# SPDX-License-Identifier: MIT
"""Layer-by-layer deviation traces: how a fault's deviation from golden grows or dies by depth.

:func:`trace_runs` runs each fault (set) once with :func:`torchfault.inject` over its inputs,
with forward hooks on every traced layer, and compares each layer's output with the same layer's
fault-free output (one golden pass per fault's inputs, same batch composition, so an unchanged
value is the same bits). Per run and layer it records the largest absolute deviation, the
largest relative deviation (``|faulty - golden| / max(|golden|, tiny)``), and how many elements
changed (bitwise: NaN against a number counts as changed, its deviation as ``inf``). Per run it
derives the first layer where the deviation vanished again after having appeared (``masked
at``) and, with a :class:`~torchfault.injectors.RangeProfile`, the first layer whose output left
its golden range (``out of range at``).

Layers are taken in the order their forward hooks fire in the golden pass (the execution order);
a layer called more than once is traced at its last call. :func:`trace_runs` is the definition
(and the tests' oracle): the reference engine computes a campaign's traces with it; the fast
engine computes them from the rest of the network it already runs, with the same per-layer
definition (:func:`layer_deviations`, :meth:`Trace.of_layers`), and the same values bit for bit
(see :mod:`torchfault.campaign`). :func:`propagation_by_depth` aggregates them per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchfault.faults import Fault, fault_kind
from torchfault.injectors import RangeProfile, inject, select_layers

__all__ = [
    "LayerDeviation",
    "Trace",
    "layer_deviations",
    "layer_order",
    "propagation_by_depth",
    "propagation_by_group",
    "read_traces",
    "trace_rows",
    "trace_runs",
]


@dataclass(frozen=True)
class LayerDeviation:
    """The deviation of one layer's output from golden in one run.

    Attributes:
        layer: the module's name.
        max_abs: largest absolute deviation (``inf`` when a value became non-finite).
        max_rel: largest relative deviation.
        changed: elements whose bits differ from golden.
        out_of_range: whether the output left its golden range (``None`` without a profile).
    """

    layer: str
    max_abs: float
    max_rel: float
    changed: int
    out_of_range: bool | None = None


@dataclass(frozen=True)
class Trace:
    """One run's deviation at every traced layer (execution order).

    Attributes:
        fault_id, input_id: the run.
        layers: one :class:`LayerDeviation` per traced layer.
        masked_at: the first layer where the deviation was zero again after being non-zero.
        out_of_range_at: the first layer whose output left its golden range.
    """

    fault_id: int
    input_id: int
    layers: tuple[LayerDeviation, ...]
    masked_at: str | None
    out_of_range_at: str | None

    @classmethod
    def of_layers(cls, fault_id: int, input_id: int, layers: Sequence[LayerDeviation]) -> Trace:
        """The trace of a run whose layers deviated as ``layers`` (execution order), with its
        ``masked_at`` and ``out_of_range_at`` derived from them.

        Example:
            >>> t = Trace.of_layers(0, 1, [LayerDeviation("a", 1.0, 1.0, 1), LayerDeviation("b", 0.0, 0.0, 0)])
            >>> t.masked_at, t.out_of_range_at
            ('b', None)
        """
        masked_at = oor_at = None
        seen = False
        for d in layers:
            if d.changed:
                seen = True
            elif seen and masked_at is None:
                masked_at = d.layer
            if d.out_of_range and oor_at is None:
                oor_at = d.layer
        return cls(int(fault_id), int(input_id), tuple(layers), masked_at, oor_at)


def _capture(
    model: nn.Module,
    names: list[str],
    store: dict[str, torch.Tensor],
    calls: dict[str, int] | None = None,
) -> list[Any]:
    """Hooks that keep each layer's last tensor output in ``store`` (and, with ``calls``, how
    many calls the layer had made when it was kept)."""
    mods = dict(model.named_modules())
    handles = []
    made: dict[str, int] = {}
    for n in names:

        def hook(m: nn.Module, a: Any, out: Any, n: str = n) -> None:
            made[n] = made.get(n, 0) + 1
            if isinstance(out, torch.Tensor):
                store.pop(n, None)
                store[n] = out.detach().clone()  # keeps execution order (last call)
                if calls is not None:
                    calls[n] = made[n]

        handles.append(mods[n].register_forward_hook(hook))
    return handles


def layer_deviations(
    golden: torch.Tensor, faulty: torch.Tensor, bounds: Any = None
) -> list[tuple[float, float, int, bool | None]]:
    """Per row of one layer's output: ``(max_abs, max_rel, changed, out_of_range)`` of
    ``faulty`` against ``golden`` (rows first, same shape), as :class:`LayerDeviation` holds them;
    ``bounds`` (a :class:`~torchfault.injectors.LayerRange`, its ``min`` and ``max``) gives
    ``out_of_range`` (``None`` without).

    Example:
        >>> g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> layer_deviations(g, torch.tensor([[1.0, 2.0], [3.0, -4.0]]))
        [(0.0, 0.0, 0, None), (8.0, 2.0, 1, None)]
    """
    a, rel, c = _deviation(golden, faulty)
    if bounds is None:
        return [(float(x), float(y), int(z), None) for x, y, z in zip(a, rel, c)]
    f = faulty.reshape(faulty.shape[0], -1)
    inside = (f >= bounds.min) & (f <= bounds.max)
    out = (~inside.all(1)).tolist()
    return [(float(x), float(y), int(z), bool(o)) for x, y, z, o in zip(a, rel, c, out)]


#: dtypes that convert to float64 exactly and one-to-one (NaNs aside): equality in them is
#: equality in float64
_EXACT_IN_DOUBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TINY = torch.finfo(torch.float32).tiny


def _deviation(g: torch.Tensor, f: torch.Tensor) -> tuple[list[float], list[float], list[int]]:
    """Per row: the largest ``|f - g|`` (in float64; NaN as ``inf``), the largest
    ``|f - g| / max(|g|, tiny)`` and how many elements differ (NaN equals NaN), over the
    elements that differ (0 where none do).

    The definition is the plain one of tests/analysis/test_propagation.py
    (``test_deviation_equals_its_plain_definition``): everything in float64 over whole rows, the
    elements that are the same zeroed. Computed the same values with fewer passes: equality in
    the tensor's own dtype where float64 would not change it; with few elements changed, the
    deviations of those elements only (a maximum does not depend on the order it is taken in).
    """
    n = g.shape[0]
    g2, f2 = g.reshape(n, -1), f.reshape(n, -1)
    if g2.dtype != f2.dtype or g2.dtype not in _EXACT_IN_DOUBLE:
        g2, f2 = g2.double(), f2.double()
    same = g2 == f2
    same |= torch.isnan(g2) & torch.isnan(f2)
    differ = ~same
    changed = differ.sum(1)
    if 4 * int(changed.sum()) < differ.numel():  # few changed: only those
        rows, cols = differ.nonzero(as_tuple=True)
        gv, fv = g2[rows, cols].double(), f2[rows, cols].double()
        diff = torch.nan_to_num((fv - gv).abs_(), nan=math.inf)
        rel = diff / gv.abs_().clamp_min_(_TINY)
        zero = torch.zeros(n, dtype=torch.float64)
        top = zero.scatter_reduce(0, rows, diff, "amax")
        top_rel = zero.scatter_reduce(0, rows, rel, "amax")
        top_rel[rows[rel.isnan()]] = math.nan  # amax over a row holding a NaN is NaN
        return top.tolist(), top_rel.tolist(), changed.tolist()
    gd, fd = g2.double(), f2.double()
    diff = torch.sub(fd, gd, out=fd if fd is not f2 else None).abs_()  # never f's own memory
    diff.nan_to_num_(nan=math.inf).masked_fill_(same, 0.0)
    rel = gd.abs_() if gd is not g2 else gd.abs()
    torch.div(diff, rel.clamp_min_(_TINY), out=rel).masked_fill_(same, 0.0)
    return diff.amax(1).tolist(), rel.amax(1).tolist(), changed.tolist()


@torch.no_grad()
def trace_runs(
    model: nn.Module,
    inputs: torch.Tensor,
    runs: Sequence[tuple[int, Sequence[Fault] | Fault, Sequence[int]]],
    layers: str | Sequence[str] | None = None,
    *,
    profile: RangeProfile | None = None,
    min_rows: int = 16,
) -> list[Trace]:
    """Deviation traces of runs (see the module docstring).

    Args:
        model: the model (eval mode is the caller's choice; its state is restored by inject).
        inputs: all inputs (rows first).
        runs: ``(fault_id, faults, input_ids)`` per fault.
        layers: module names or ``re:`` patterns; default: every leaf module.
        profile: golden ranges, for ``out_of_range`` and ``out_of_range_at``.
        min_rows: passes are padded to this many rows with copies of the first (as the
            campaign engines pad theirs, so values are the bits of the campaign's own passes).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
        >>> f = Fault("0", "output", (1,), (31,))  # a sign flip, which the ReLU may swallow
        >>> (t,) = trace_runs(m, torch.ones(1, 3), [(0, [f], [0])])
        >>> [d.layer for d in t.layers], t.layers[0].changed
        (['0', '1', '2'], 1)
    """
    names = select_layers(model, layers)
    out: list[Trace] = []
    for fault_id, faults, ids in runs:
        faults = [faults] if isinstance(faults, Fault) else list(faults)
        ids = [int(i) for i in ids]
        idx = torch.tensor(ids, dtype=torch.int64)
        if len(ids) < min_rows:
            idx = torch.cat([idx, idx[:1].repeat(min_rows - len(ids))])
        x = inputs[idx]
        golden: dict[str, torch.Tensor] = {}
        faulty: dict[str, torch.Tensor] = {}
        g_calls: dict[str, int] = {}
        f_calls: dict[str, int] = {}
        hs = _capture(model, names, golden, g_calls)
        try:
            model(x)
        finally:
            for h in hs:
                h.remove()
        with inject(model, faults):
            hs = _capture(model, names, faulty, f_calls)
            try:
                model(x)
            except Exception:  # noqa: BLE001 - a crash under the fault: trace what ran
                pass
            finally:
                for h in hs:
                    h.remove()
        # layers whose traced call ran under the fault (a crash may stop a layer called twice
        # after its first call: that output is not the one golden holds)
        order = [n for n in golden if n in faulty and f_calls[n] == g_calls[n]]
        bounds = profile.layers if profile is not None else {}
        devs = {n: layer_deviations(golden[n], faulty[n], bounds.get(n)) for n in order}
        for row, iid in enumerate(ids):
            ld = [LayerDeviation(n, *devs[n][row]) for n in order]
            out.append(Trace.of_layers(fault_id, iid, ld))
    return out


def propagation_by_depth(traces: Sequence[Trace]) -> list[dict[str, Any]]:
    """Per traced layer (execution order): runs, runs deviating there, median and largest
    absolute deviation of those, runs masked there, runs out of range there.

    Example:
        >>> t = Trace(0, 0, (LayerDeviation("a", 2.0, 1.0, 1), LayerDeviation("b", 0.0, 0.0, 0)), "b", None)
        >>> [(r["layer"], r["deviating"], r["masked_here"]) for r in propagation_by_depth([t])]
        [('a', 1, 0), ('b', 0, 1)]
    """
    order: list[str] = []
    for t in traces:
        for d in t.layers:
            if d.layer not in order:
                order.append(d.layer)
    rows = []
    for n in order:
        ds = [d for t in traces for d in t.layers if d.layer == n]
        dev = sorted(d.max_abs for d in ds if d.changed)
        rows.append(
            {
                "layer": n,
                "runs": len(ds),
                "deviating": len(dev),
                "median_abs": dev[len(dev) // 2] if dev else 0.0,
                "max_abs": dev[-1] if dev else 0.0,
                "masked_here": sum(t.masked_at == n for t in traces),
                "out_of_range_here": sum(t.out_of_range_at == n for t in traces),
            }
        )
    return rows


def propagation_by_group(
    traces: Sequence[Trace],
    faults: Any,
    kinds: Any = None,
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """:func:`propagation_by_depth` per (fault kind, bit) group: the kind of tensor the run's
    fault hits (:func:`torchfault.faults.fault_kind`, ``kinds`` as there) and its most
    significant flipped bit (``"(whole)"`` for a fault without bits); runs of several faults
    form the group ``("(multiple)", "(multiple)")``. Groups in order of kind, then bit (high
    first).

    Example:
        >>> t = Trace(0, 0, (LayerDeviation("a", 2.0, 1.0, 1),), None, None)
        >>> g = propagation_by_group([t], {0: (Fault("a", "weight", (0,), (30,)),)})
        >>> list(g), g[("parameter", "30")][0]["deviating"]
        ([('parameter', '30')], 1)
    """
    parts: dict[tuple[str, str], list[Trace]] = {}
    for t in traces:
        fs = tuple(faults.get(t.fault_id, ()))
        if len(fs) == 1:
            f = fs[0]
            key = (fault_kind(f, kinds), str(max(f.bits)) if f.bits else "(whole)")
        else:
            key = ("(multiple)", "(multiple)")
        parts.setdefault(key, []).append(t)

    def order(k: tuple[str, str]) -> tuple[str, int, str]:
        return (k[0], -int(k[1]) if k[1].isdigit() else 1, k[1])

    return {k: propagation_by_depth(parts[k]) for k in sorted(parts, key=order)}


@torch.no_grad()
def layer_order(
    model: nn.Module, inputs: torch.Tensor, layers: str | Sequence[str] | None = None
) -> list[str]:
    """The traced layers in execution order (one fault-free pass over ``inputs``; layers whose
    output is not a tensor, or that are not called, are left out)."""
    names = select_layers(model, layers)
    seen: dict[str, torch.Tensor] = {}
    hs = _capture(model, names, seen)
    try:
        model(inputs)
    finally:
        for h in hs:
            h.remove()
    return list(seen)


def trace_rows(traces: Sequence[Trace], layers: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows of the store's ``traces`` table (:mod:`torchfault.store`): a marker per run and one
    row per layer that deviated or left its range; ``layers`` is the stored layer order."""
    depth = {n: i for i, n in enumerate(layers)}
    rows: list[tuple[Any, ...]] = []
    for t in traces:
        rows.append((t.fault_id, t.input_id, -1, None, None, 0, None))
        for d in t.layers:
            if d.changed or d.out_of_range:
                o = None if d.out_of_range is None else int(d.out_of_range)
                rows.append(
                    (t.fault_id, t.input_id, depth[d.layer], d.max_abs, d.max_rel, d.changed, o)
                )
    return rows


def read_traces(store: Any) -> list[Trace]:
    """The traces a campaign stored (``trace.enabled``), rebuilt whole: layers without a row
    were bit-identical to golden (and in range); ``[]`` for a store without traces."""
    from torchfault.store import read_trace_rows

    layers, rows = read_trace_rows(store)
    if not layers:
        return []
    runs: dict[tuple[int, int], dict[int, tuple[Any, ...]]] = {}
    ranged: set[tuple[int, int]] = set()
    for f, i, depth, a, rel, c, o in rows:
        runs.setdefault((int(f), int(i)), {})
        if depth >= 0:
            runs[(int(f), int(i))][int(depth)] = (a, rel, c, o)
            if o is not None:
                ranged.add((int(f), int(i)))
    has_profile = bool(ranged) or any(r[6] is not None for r in rows if r[2] >= 0)
    out = []
    for key, by_depth in runs.items():
        lds = []
        for k, n in enumerate(layers):
            a, rel, c, o = by_depth.get(k, (0.0, 0.0, 0, 0 if has_profile else None))
            a = math.inf if a is None and c else (0.0 if a is None else float(a))
            rel = math.inf if rel is None and c else (0.0 if rel is None else float(rel))
            lds.append(LayerDeviation(n, a, rel, int(c), None if o is None else bool(o)))
        out.append(Trace.of_layers(key[0], key[1], lds))
    return out
