# SPDX-License-Identifier: MIT
"""Which layers must I protect to get below x % SDC? A search on the fitted P(SDC | deviation).

:func:`layers_to_protect` answers it from stored traces without re-running. The protection
modelled is ``ranger`` (:mod:`torchfault.injectors`): a protected layer's output is clamped to
its golden range ``[low, high]``. For a set ``S`` of protected layers the predicted SDC
probability of one run is decided at the **first** layer ``L`` of ``S`` (execution order) where
the clamp acts on the fault, i.e. where the run's output deviates from golden (``changed > 0``)
and left its range, and ``L`` is not the layer whose own output the fault hits (the protection's
hook runs before the injection's there, so it never sees that fault). There:

- if ``L``'s output holds more changed elements than the first layer where the run deviated
  (the fault's footprint), the corruption has spread: clamping each of those elements to its
  range's edge leaves a layer of edge values, not a small deviation, and nothing in unprotected
  traces says what that does; the run keeps its observed outcome (no credit);
- otherwise, with a fit for ``(L, bit)`` (:func:`fit_sdc_model`): the fitted
  ``P(SDC | min(deviation at L, width of L))``. Clamping projects onto an interval that holds
  the golden value, so the deviation after the clamp is at most the width and at most the
  deviation before it, whether or not it exceeded the width;
- without a fit: the observed outcome.

A run the clamps of ``S`` never act on keeps its observed outcome (1 for an SDC, 0 otherwise;
DUE runs count as not SDC). The predicted SDC rate is the mean over the runs. The first acting
clamp decides because it changes everything downstream of it, which the traces no longer
describe.

**Output layers are not candidates.** A layer whose output is the model's output (or is copied
to it unchanged) cannot be priced by a capped deviation: a wrong class whose logit is clamped to
the range's top is still the top class (on the pretrained LeNet-5, ranger on ``fc3`` removed no
SDC). ``output_layers`` names them; by default they are inferred from the traces: the last
traced layer and every layer whose deviation equals it (``max_abs``, ``max_rel``, ``changed``)
in every run. Pass them explicitly when the traced layers do not end at the model's output, or
when there are so few runs that such an equality can be chance.

**Known bias.** The fit learns from unprotected runs, where a deviation below the width is
almost never an SDC; a clamped value instead sits at its range's edge in the direction of the
fault, which no unprotected run shows, so the prediction is optimistic. On the pretrained
LeNet-5 it was 0.02-0.03 points of SDC low on the training runs and 0.2 points low on the
held-out runs (docs/protection.md); on a small MLP with random weights, ten times too low
(1.35 % predicted, 13.3 % measured). Confirm a plan with :func:`torchfault.campaign.confirm_plan`,
which re-runs the held-out faults without and with ranger on the chosen layers.

**Search.** ``search="greedy"`` (default) starts from no layer and adds, one at a time, the layer
that lowers the predicted rate most (ties: execution order) until the rate is below ``target``
or no layer lowers it; it is not guaranteed minimal. ``search="exhaustive"`` tries every set by
size (at most :data:`MAX_EXHAUSTIVE` candidate layers) and returns the smallest set below the
target (ties: the lowest predicted rate, then execution order): minimal for this model.

**Validation.** Faults are split by the seeded hash of :func:`fit_sdc_model` (``validation``,
``seed``): the fits and the choice use the training faults' runs only. On the held-out runs the
plan reports the predicted rate with the chosen layers protected (``val_predicted``, the figure
a re-run checks) and the fit's error where it can be checked without a re-run: at each
held-out run's deciding layer, the fitted probability at the run's actual (unclamped) deviation
against its observed outcome (``val_error`` = |mean predicted - observed SDC rate| over those
runs, and their Brier score). That checks the fit, not the clamp.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchfault.analysis._propagation import Trace
from torchfault.analysis._sdc_model import SDCModel, _held_out, fit_sdc_model
from torchfault.errors import TorchFaultError

__all__ = [
    "MAX_EXHAUSTIVE",
    "ProtectionPlan",
    "layers_to_protect",
    "predicted_sdc",
]

#: Most candidate layers an exhaustive search takes (2**16 sets).
MAX_EXHAUSTIVE = 16


@dataclass(frozen=True)
class ProtectionPlan:
    """The answer of :func:`layers_to_protect`.

    Attributes:
        layers: the layers to protect (execution order).
        target: the SDC rate asked for.
        reached: whether the predicted rate is below ``target``.
        before, predicted: SDC rate of the training runs as observed, and predicted with
            ``layers`` protected.
        val_runs: held-out runs.
        val_before, val_predicted: the same on the held-out runs.
        val_checked: held-out runs the fit's error is measured on (decided by the fit at a
            chosen layer).
        val_error: |mean fitted P(SDC) at their actual deviation - their SDC rate| (``nan``
            without such runs).
        val_brier: Brier score of those predictions.
        steps: ``(layer added, predicted rate after)`` of a greedy search.
        search: ``greedy`` or ``exhaustive``.
        output_layers: the layers left out of the candidates as the model's output.
        validation, seed: the held-out split (:meth:`held_out` tells a fault's side).
        train_runs: training runs.
    """

    layers: tuple[str, ...]
    target: float
    reached: bool
    before: float
    predicted: float
    val_runs: int
    val_before: float
    val_predicted: float
    val_checked: int
    val_error: float
    val_brier: float
    steps: tuple[tuple[str, float], ...] = field(default=())
    search: str = "greedy"
    output_layers: tuple[str, ...] = ()
    validation: float = 0.2
    seed: int = 0
    train_runs: int = 0

    def held_out(self, fault_id: int) -> bool:
        """Whether fault ``fault_id`` is in the held-out part of this plan's split."""
        return _held_out(int(fault_id), self.seed, self.validation)


def _widths(profile: Any) -> dict[str, float]:
    if hasattr(profile, "bounds") and hasattr(profile, "layers"):
        pairs = {n: profile.bounds(n) for n in profile.layers}
    elif isinstance(profile, Mapping):
        pairs = dict(profile)
    else:
        raise TorchFaultError(
            f"profile: expected a RangeProfile or {{layer: (low, high)}}, got "
            f"{type(profile).__name__}.",
            field="profile",
        )
    out = {}
    for n, (lo, hi) in pairs.items():
        w = float(hi) - float(lo)
        if math.isfinite(w) and w >= 0:
            out[str(n)] = w
    return out


def _order(traces: Sequence[Trace]) -> list[str]:
    order: list[str] = []
    for t in traces:
        for d in t.layers:
            if d.layer not in order:
                order.append(d.layer)
    return order


def _output_layers(traces: Sequence[Trace]) -> tuple[str, ...]:
    """The layers the traces show as the model's output: the last traced layer and every layer
    whose deviation (``max_abs``, ``max_rel``, ``changed``) equals it in every run (execution
    order). With few runs an equality can be chance: then pass ``output_layers``.

    Example:
        >>> from torchfault.analysis import LayerDeviation
        >>> t = Trace(0, 0, (LayerDeviation("fc", 2.0, 1.0, 1), LayerDeviation("drop", 2.0, 1.0, 1),
        ...       LayerDeviation("id", 2.0, 1.0, 1)), None, None)
        >>> _output_layers([t, Trace(1, 0, (LayerDeviation("fc", 1.0, 1.0, 1),
        ...       LayerDeviation("drop", 0.0, 0.0, 0), LayerDeviation("id", 0.0, 0.0, 0)), None, None)])
        ('drop', 'id')
    """
    order = _order(traces)
    if not order:
        return ()
    last = order[-1]
    same = set(order)
    for t in traces:
        devs = {d.layer: (d.max_abs, d.max_rel, d.changed) for d in t.layers}
        if last not in devs:
            continue
        same = {n for n in same if devs.get(n, devs[last]) == devs[last]}
    return tuple(n for n in order if n in same)


# one run: (fault id, bit or -1, observed SDC 0/1, per layer (name, deviation, changed,
# out of range) in execution order, footprint, layers whose own output the fault hits)
_Row = tuple[int, int, float, tuple[tuple[str, float, int, bool], ...], int, frozenset[str]]


def _run_rows(
    traces: Sequence[Trace],
    outcomes: Mapping[tuple[int, int], str],
    faults: Mapping[int, Sequence[Any]],
) -> list[_Row]:
    rows = []
    for t in traces:
        y = outcomes.get((t.fault_id, t.input_id))
        if y is None:
            continue
        fs = faults.get(t.fault_id, ())
        bit = int(fs[0].bits[0]) if len(fs) == 1 and fs[0].bits else -1
        own = frozenset(f.module for f in fs if getattr(f, "target", None) == "output")
        devs = tuple((d.layer, d.max_abs, d.changed, bool(d.out_of_range)) for d in t.layers)
        footprint = next((d.changed for d in t.layers if d.changed), 0)
        rows.append((t.fault_id, bit, float(y == "sdc"), devs, footprint, own))
    return rows


def _one(
    row: _Row,
    chosen: Sequence[str] | set[str],
    model: SDCModel,
    widths: Mapping[str, float],
    cap: bool = True,
) -> tuple[float, bool]:
    """(predicted P(SDC) of one run with ``chosen`` protected, whether the fit decided it)."""
    _, bit, y, devs, footprint, own = row
    for layer, dev, changed, oor in devs:
        if layer not in chosen or not oor or not changed or layer in own:
            continue
        if changed > footprint:
            return y, False
        fit = model.fits.get((layer, bit))
        if fit is None:
            return y, False
        return fit.predict(min(dev, widths[layer]) if cap else dev), True
    return y, False


def predicted_sdc(
    traces: Sequence[Trace],
    outcomes: Mapping[tuple[int, int], str],
    faults: Mapping[int, Sequence[Any]],
    layers: Sequence[str],
    model: SDCModel,
    profile: Any,
    *,
    output_layers: Sequence[str] | None = None,
) -> float:
    """The predicted SDC rate of ``traces``' runs with ``layers`` protected (the module
    docstring's model). A clamp on an output layer (``output_layers``, default inferred from
    the traces) is predicted to change nothing.

    Example:
        >>> from torchfault import Fault
        >>> from torchfault.analysis import LayerDeviation, LayerFit
        >>> t = Trace(0, 0, (LayerDeviation("a", 1e6, 1.0, 1, True),
        ...       LayerDeviation("out", 3e6, 1.0, 2, True)), None, "a")
        >>> m = SDCModel({("a", 30): LayerFit("a", 30, -6.0, 1.0, 10, 0, 0.5, 0.0, 0.0)})
        >>> fs = {0: (Fault("a", "weight", (0,), (30,)),)}
        >>> round(predicted_sdc([t], {(0, 0): "sdc"}, fs, ["a"], m, {"a": (0.0, 1.0)}), 4)
        0.0025
    """
    widths = _widths(profile)
    outs = set(_output_layers(traces) if output_layers is None else output_layers)
    rows = _run_rows(traces, outcomes, faults)
    if not rows:
        return math.nan
    chosen = {n for n in layers if n not in outs}
    return sum(_one(r, chosen, model, widths)[0] for r in rows) / len(rows)


def layers_to_protect(
    traces: Sequence[Trace],
    outcomes: Mapping[tuple[int, int], str],
    faults: Mapping[int, Sequence[Any]],
    target: float,
    profile: Any,
    *,
    search: str = "greedy",
    validation: float = 0.2,
    seed: int = 0,
    model: SDCModel | None = None,
    min_runs: int = 10,
    output_layers: Sequence[str] | None = None,
) -> ProtectionPlan:
    """The smallest set of layers whose protection (ranger) brings the predicted SDC rate below
    ``target`` (see the module docstring for the model, the search and the validation).

    Args:
        traces: deviation traces with out-of-range flags (traced with a range profile).
        outcomes: ``(fault_id, input_id) -> outcome`` of the same runs.
        faults: fault id -> its faults.
        target: the SDC rate to get below, in [0, 1] (e.g. 0.01 for 1 %).
        profile: the :class:`~torchfault.injectors.RangeProfile` the traces were made with (the
            ranges ranger would clamp to), or ``{layer: (low, high)}``.
        search: ``greedy`` or ``exhaustive``.
        validation, seed: the held-out split (as :func:`fit_sdc_model`'s).
        model: a fit made on the same split; default: ``fit_sdc_model`` on these traces.
        min_runs: of the fit.
        output_layers: layers that are the model's output, never candidates; default:
            inferred from the traces (module docstring); ``()`` makes every layer a candidate.

    Example:
        >>> from torchfault import Fault
        >>> from torchfault.analysis import LayerDeviation
        >>> tr = [Trace(k, 0, (LayerDeviation("a", 10.0 ** (k % 7), 1.0, 1, k % 7 > 3),
        ...       LayerDeviation("b", 3.0 ** (k % 7), 1.0, 1, k % 7 > 3)), None, None) for k in range(300)]
        >>> out = {(k, 0): "sdc" if k % 7 > 3 else "masked" for k in range(300)}
        >>> fs = {k: (Fault("a", "weight", (0,), (30,)),) for k in range(300)}
        >>> p = layers_to_protect(tr, out, fs, 0.05, {"a": (0.0, 1.0), "b": (0.0, 1.0)})
        >>> p.layers, p.output_layers, p.reached, p.before > 0.4, p.predicted < 0.05
        (('a',), ('b',), True, True, True)
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1:
        raise TorchFaultError(
            f"target: must be an SDC rate in [0, 1] (0.01 is 1 %), got {target!r}.",
            field="target",
        )
    if search not in ("greedy", "exhaustive"):
        raise TorchFaultError(
            f"search: {search!r} is not valid; choose greedy or exhaustive.", field="search"
        )
    if not (0 <= validation < 1):
        raise TorchFaultError(
            f"validation: must be in [0, 1), got {validation!r}.", field="validation"
        )
    if isinstance(output_layers, str):
        raise TorchFaultError(
            f"output_layers: give a sequence of layer names, got the string {output_layers!r}.",
            field="output_layers",
        )
    widths = _widths(profile)
    if not any(d.out_of_range is not None for t in traces for d in t.layers):
        raise TorchFaultError(
            "traces: none has out-of-range flags; trace with a range profile "
            "(trace: {profile: ...}).",
            field="traces",
        )
    if model is None:
        model = fit_sdc_model(
            traces, outcomes, faults, validation=validation, seed=seed, min_runs=min_runs
        )
    order = _order(traces)
    outs = tuple(_output_layers(traces) if output_layers is None else output_layers)
    fitted = {layer for layer, _ in model.fits}
    candidates = [n for n in order if n in widths and n in fitted and n not in outs]
    rows = _run_rows(traces, outcomes, faults)
    train = [r for r in rows if not _held_out(r[0], seed, validation)]
    held = [r for r in rows if _held_out(r[0], seed, validation)]

    def rate(rs: Sequence[_Row], chosen: Sequence[str]) -> float:
        if not rs:
            return math.nan
        return sum(_one(r, chosen, model, widths)[0] for r in rs) / len(rs)

    def sort(s: Sequence[str]) -> list[str]:
        return sorted(s, key=order.index)

    before = rate(train, [])
    chosen: list[str] = []
    steps: list[tuple[str, float]] = []
    now = before
    if search == "greedy":
        while not now < target:
            best = None
            for n in candidates:
                if n in chosen:
                    continue
                r = rate(train, sort([*chosen, n]))
                if best is None or r < best[1]:
                    best = (n, r)
            if best is None or not best[1] < now:
                break
            chosen = sort([*chosen, best[0]])
            now = best[1]
            steps.append(best)
    else:
        if len(candidates) > MAX_EXHAUSTIVE:
            raise TorchFaultError(
                f"search: exhaustive takes at most {MAX_EXHAUSTIVE} candidate layers, these "
                f"traces have {len(candidates)}; use greedy.",
                field="search",
            )
        best_set: tuple[list[str], float] = ([], before)
        for size in range(len(candidates) + 1):
            found = None
            for combo in itertools.combinations(candidates, size):
                r = rate(train, list(combo))
                if r < target and (found is None or r < found[1]):
                    found = (list(combo), r)
                if r < best_set[1]:
                    best_set = (list(combo), r)
            if found is not None:
                best_set = found
                break
        chosen, now = best_set
    checked: list[tuple[float, float]] = []
    for row in held:
        prob, decided = _one(row, chosen, model, widths, cap=False)
        if decided:
            checked.append((prob, row[2]))
    if checked:
        mean_p = sum(p for p, _ in checked) / len(checked)
        mean_y = sum(y for _, y in checked) / len(checked)
        error = abs(mean_p - mean_y)
        brier = sum((p - y) ** 2 for p, y in checked) / len(checked)
    else:
        error = brier = math.nan
    return ProtectionPlan(
        layers=tuple(chosen),
        target=float(target),
        reached=bool(now < target),
        before=before,
        predicted=now,
        val_runs=len(held),
        val_before=rate(held, []),
        val_predicted=rate(held, chosen),
        val_checked=len(checked),
        val_error=error,
        val_brier=brier,
        steps=tuple(steps),
        search=search,
        output_layers=outs,
        validation=float(validation),
        seed=int(seed),
        train_runs=len(train),
    )
