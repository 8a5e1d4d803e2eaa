# SPDX-License-Identifier: MIT
"""Injected values of a campaign's runs: each faulted element before and after the fault.

:func:`injected_rows` turns runs into rows of the store's ``injected`` table
(:mod:`torchfault.store`) with :func:`torchfault.injectors.injected_pass`, which reads the
values from :func:`~torchfault.injectors.inject` itself, so they are exactly what it wrote. Most
runs are read many at a time:

- parameter and buffer faults need no forward pass (one row per fault, ``input_id = -1``).
  Faults with a bitwise fault model (the ones :func:`inject` merges into one vectorised write per
  tensor) of many faults are read under one :func:`inject`, grouped so that no two faults of
  different runs share an element (a tied weight is one tensor): a bitwise write touches its own
  element only, so each fault's pair is the one it has alone;
- activation faults with a bitwise fault model that hit every row (``sample=None``, the
  campaigns' faults): the runs of a chunk are rows of one forward pass, each run's faults moved
  to its own row (``sample=row``), ``batch_size`` rows a pass, padded to ``MIN_ROWS`` rows as the
  engines pad theirs. Rows of a pass are independent (the engines rely on it too: a row's
  fault-free bits are the same in every batch of at least ``MIN_ROWS`` rows), so the values are
  those of each run alone. Where a tensor read is not one row per input (a model that moves the
  batch off the first dimension, inputs batched along another one) or the pass raises, the runs
  of that pass are read again one at a time.

The rest is read one fault at a time, as before: random fault models with the seed the
reference engine gives each run (:func:`run_seed`), one input at a time (a forward pass only
when a fault hits an activation); other fault models, faults naming a ``sample`` and sets mixing
activation and parameter faults, in one pass over the fault's inputs. A run whose pass raises
(a crash under the fault, a ``due``) keeps the values read before the error. The values do not
depend on the engine: every engine writes the same faults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._engine import MIN_ROWS, RunTask, _pad_index, _random_faults, run_seed
from torchfault.campaign._structure import Batched
from torchfault.faults import Fault
from torchfault.injectors import bitwise_op, injected_pass

__all__ = ["injected_rows"]

Row = tuple[int, int, int, float | None, float | None]
Inputs = torch.Tensor | Batched


def _rows(inputs: Inputs, ids: list[int]) -> Inputs:
    """Inputs ``ids`` padded to :data:`MIN_ROWS` rows as the engines pad every pass (so an
    activation's fault-free value is the same bits as in the campaign's own passes)."""
    idx = torch.tensor(ids, dtype=torch.int64)
    if len(ids) < MIN_ROWS:
        idx = idx[_pad_index(len(ids), MIN_ROWS)]
    return inputs[idx]


def _forward(model: nn.Module, x: Inputs) -> Callable[[], Any]:
    return (lambda: x.call(model)) if isinstance(x, Batched) else (lambda: model(x))


def _bitwise(task: RunTask) -> bool:
    try:
        return all(bitwise_op(f.model) is not None for f in task.faults)
    except ValueError:  # an unknown model: inject reports it
        return False


def injected_rows(
    model: nn.Module, inputs: Inputs, tasks: Sequence[RunTask], batch_size: int = 256
) -> list[Row]:
    """Rows ``(fault_id, input_id, k, before, after)`` for every run of ``tasks``, sorted.

    Args:
        model: the model, in eval mode.
        inputs: every input of the campaign (a tensor, rows first, or :class:`Batched`).
        tasks: the runs.
        batch_size: the most rows of one forward pass.

    Example:
        >>> from torchfault import Fault
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> t = RunTask(0, (Fault("0", "output", (1,), (31,)),), (0, 1))
        >>> rows = injected_rows(m, torch.ones(2, 2), [t])
        >>> [(r[1], r[3] == -r[4]) for r in rows]
        [(0, True), (1, True)]
    """
    rows: list[Row] = []
    params: list[RunTask] = []
    acts: list[tuple[RunTask, int]] = []
    rowwise = not isinstance(inputs, Batched) or inputs.dim == 0
    for task in tasks:
        kinds = {f.is_activation for f in task.faults}
        if _random_faults(task):  # values drawn per run: every pair per input
            for i in task.input_ids:
                rows.extend(_alone(model, inputs, task, i, seed=run_seed(task, i)))
        elif not _bitwise(task):
            rows.extend(_one_task(model, inputs, task))
        elif kinds == {False}:
            params.append(task)
        elif kinds == {True} and rowwise and all(f.sample is None for f in task.faults):
            acts.extend((task, i) for i in task.input_ids)
        else:
            rows.extend(_one_task(model, inputs, task))
    rows.extend(_parameter_rows(model, inputs, params))
    for start in range(0, len(acts), batch_size):
        rows.extend(_activation_rows(model, inputs, acts[start : start + batch_size]))
    rows.sort(key=lambda r: r[:3])
    return rows


def _alone(
    model: nn.Module, inputs: Inputs, task: RunTask, i: int, seed: int | None = None
) -> list[Row]:
    """One run on its own (input ``i``, padded with copies of it; row 0 read)."""
    needs_pass = any(f.is_activation for f in task.faults)
    run = _forward(model, _rows(inputs, [i])) if needs_pass else None
    got = injected_pass(model, task.faults, run, seed=seed)
    return [
        (task.fault_id, i, k, *p.get(-1 if not f.is_activation else 0, (None, None)))
        for k, (f, p) in enumerate(zip(task.faults, got.pairs))
    ]


def _one_task(model: nn.Module, inputs: Inputs, task: RunTask) -> list[Row]:
    """The runs of one fault in one pass over its inputs (none for parameter faults only)."""
    ids = list(task.input_ids)
    needs_pass = any(f.is_activation for f in task.faults)
    run = _forward(model, _rows(inputs, ids)) if needs_pass else None
    got = injected_pass(model, task.faults, run)
    rows: list[Row] = []
    for k, (f, p) in enumerate(zip(task.faults, got.pairs)):
        if f.is_activation:
            rows.extend((task.fault_id, i, k, *p.get(n, (None, None))) for n, i in enumerate(ids))
        else:  # a parameter or buffer fault: the same pair on every input
            rows.append((task.fault_id, -1, k, *p[-1]))
    return rows


def _element(
    modules: dict[str, nn.Module], f: Fault, cache: dict[tuple[str, str], torch.Tensor | None]
) -> tuple[int, int] | None:
    """Where a parameter or buffer fault writes: ``(storage, offset)`` of its element, or
    ``None`` when it cannot be told (then the fault's run is read alone)."""
    key = (f.module, f.target)
    if key not in cache:
        mod = modules.get(f.module)
        own: dict[str, torch.Tensor] = {}
        if mod is not None:
            own.update(mod.named_parameters(recurse=False))
            own.update(mod.named_buffers(recurse=False))
        t = own.get(f.target)
        ok = isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_quantized
        cache[key] = t if ok else None
    t = cache[key]
    if t is None or len(f.index) != t.dim():
        return None
    if any(not 0 <= i < n for i, n in zip(f.index, t.shape)):
        return None
    offset = int(t.storage_offset()) + sum(i * s for i, s in zip(f.index, t.stride()))
    return (t.untyped_storage().data_ptr(), offset)


def _parameter_rows(model: nn.Module, inputs: Inputs, tasks: list[RunTask]) -> list[Row]:
    """Parameter and buffer faults with bitwise fault models, many under one inject."""
    modules = dict(model.named_modules())
    cache: dict[tuple[str, str], torch.Tensor | None] = {}
    groups: list[tuple[list[RunTask], set[tuple[int, int] | None]]] = []
    rows: list[Row] = []
    for task in tasks:
        where = [_element(modules, f, cache) for f in task.faults]
        if any(w is None for w in where):
            rows.extend(_one_task(model, inputs, task))
            continue
        mine = set(where)
        for group, taken in groups:
            if taken.isdisjoint(mine):
                group.append(task)
                taken |= mine
                break
        else:
            groups.append(([task], mine))
    for group, _ in groups:
        try:
            got = injected_pass(model, [f for t in group for f in t.faults])
        except Exception:  # noqa: BLE001 - a fault inject refuses: each alone names it
            for task in group:
                rows.extend(_one_task(model, inputs, task))
            continue
        pairs = iter(got.pairs)
        for task in group:
            rows.extend((task.fault_id, -1, k, *next(pairs)[-1]) for k in range(len(task.faults)))
    return rows


def _activation_rows(
    model: nn.Module, inputs: Inputs, runs: list[tuple[RunTask, int]]
) -> list[Row]:
    """Runs of activation faults (bitwise, every row) as the rows of one forward pass."""
    ids = [i for _, i in runs]
    faults = [f.replace(sample=r) for r, (task, _) in enumerate(runs) for f in task.faults]
    try:
        got = injected_pass(model, faults, _forward(model, _rows(inputs, ids)))
    except Exception:  # noqa: BLE001 - a fault inject refuses: each alone names it
        got = None
    if got is None or got.error is not None or got.batch_sizes - {max(len(ids), MIN_ROWS)}:
        return [row for task, i in runs for row in _alone(model, inputs, task, i)]
    pairs = iter(got.pairs)
    return [
        (task.fault_id, i, k, *next(pairs).get(r, (None, None)))
        for r, (task, i) in enumerate(runs)
        for k in range(len(task.faults))
    ]
