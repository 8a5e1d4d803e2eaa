# SPDX-License-Identifier: MIT
"""Injected values of a campaign's runs: each faulted element before and after the fault.

:func:`injected_rows` turns runs into rows of the store's ``injected`` table
(:mod:`torchfault.store`) with :func:`torchfault.injectors.injected_pass`, which reads the
values from :func:`~torchfault.injectors.inject` itself, so they are exactly what it wrote.

**Read many at a time.** Faults whose fault model writes its own element only, from that element
and the fault alone (*elementwise*): the bitwise models (``bit_flip``, ``stuck_at_0``,
``stuck_at_1``: one vectorised write per tensor in :func:`inject`) and ``zero`` and ``value``
(the built-in functions; a model registered over one of those names is read one fault at a
time). Several such faults under one :func:`inject` on distinct elements write what each writes
alone, and rows of a pass are independent (the engines rely on it too: a row's fault-free bits
are the same in every batch of at least ``MIN_ROWS`` rows, and passes are padded to ``MIN_ROWS``
rows as the engines pad theirs), so each run's pair is the one it has alone:

- parameter and buffer faults need no forward pass (one row per fault, ``input_id = -1``):
  faults of many runs under one :func:`inject`, grouped so that no two faults of different runs
  share an element (a tied weight is one tensor); a run's faults keep their order;
- one activation fault per run, hitting every row (``sample=None``, the campaigns' faults), when
  the faults of one site (module, target, element, call, persistence) on the same inputs fill a
  pass (``faults x inputs >= MIN_ROWS``): those on distinct elements go under one :func:`inject`
  and one pass over their inputs (``batch_size`` rows, at most :data:`SITE_FAULTS` faults), each
  on every row; at their hook no other fault has touched the tensor, so each reads the golden
  value and writes its own element;
- other activation runs hitting every row: the runs of a chunk are rows of one forward pass, each
  run's faults moved to its own row (``sample=row``), ``batch_size`` rows a pass. ``zero`` and
  ``value`` faults (and replayed random ones, below) are not merged into one write as the bitwise
  ones are: each is applied to a copy of the whole activation, so their passes hold at most
  :data:`MODEL_ROWS` runs.

Where a tensor read is not one row per input (a model that moves the batch off the first
dimension, inputs batched along another one) or a shared pass raises, its runs are read again
one at a time.

**Random fault models** draw each run's values from a generator seeded from the run
(:func:`run_seed`) in the engines' one-input pass (``MIN_ROWS`` copies of the input). A run of
one built-in ``random_value`` fault is *replayed*: its draws depend on nothing but the seed and
their number (one per element written: ``MIN_ROWS`` for an activation hitting every row, 1 for a
parameter), so the same generator, count and arithmetic give here the very value it writes into
the run's own row (row 0), and the run is read as deterministic faults that write those bits,
many at a time as above:

- with bounds (``low``, ``high``): ``low + (high - low) * u`` in float64, read as a ``value``
  fault of that number, which :func:`inject` writes through the same ``set_values`` as
  ``random_value`` does (activations and parameters);
- a random bit pattern (no bounds) on a tensor seen in its own plain format (a float or integer
  dtype): the word ``random_words`` draws for that format, read as ``stuck_at_0`` on every bit
  then ``stuck_at_1`` on the word's ones (the same bits as the ``set`` ``random_value`` does).
  A parameter's format is its tensor's; an activation's is read before the runs, in one
  fault-free pass of ``MIN_ROWS`` copies of an input, by hooks that find the tensor as
  :func:`injected_pass` does (module, target, element, call; a tensor that is not one row per
  input, quantized or not strided is not replayed).

Their rows are per run (``input_id`` the input), as before. Still read one input at a time:
random bit patterns on a tensor seen through another format than its own (the word would pass
through that format's encoding) or quantized, random models registered by users, faults naming
a ``sample``,
and runs of several faults with a random one (the draws are shared between them in
:func:`inject`'s order of application). (With torch's CPU generator the first of ``MIN_ROWS``
draws is the same number as a single draw; the replay draws ``MIN_ROWS`` all the same, as
:func:`inject` does, so that it does not rest on that.)

The rest is read one fault at a time, as before: other fault models, faults naming a ``sample``
and sets mixing activation and parameter faults, in one pass over the fault's inputs. A run
whose pass raises (a crash under the fault, a ``due``) keeps the values read before the error.
The values do not depend on the engine: every engine writes the same faults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from torchfault import numerics
from torchfault.campaign._engine import MIN_ROWS, RunTask, _pad_index, _random_faults, run_seed
from torchfault.campaign._structure import Batched
from torchfault.errors import TorchFaultError
from torchfault.faults import Fault, get_element, get_fault_model
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


#: the most ``zero``/``value`` runs (one per row) of one pass (see the module docstring)
MODEL_ROWS = 32

#: the most faults of one site in one pass (see the module docstring)
SITE_FAULTS = 256

#: the built-in elementwise fault models that are not bitwise (read many at a time)
_ELEMENTWISE = ("zero", "value")


class _Run(NamedTuple):
    """One run (or a parameter fault's runs) as read many at a time.

    ``task`` holds the faults read (a replayed random fault as the deterministic faults that
    write what it draws),
    ``input_id`` the input (``-1``: a deterministic parameter fault, one row for all its
    inputs), ``original`` and ``seed`` the run as the campaign has it, read alone if the shared
    reading cannot be used."""

    task: RunTask
    input_id: int
    original: RunTask
    seed: int | None = None


def _builtin(name: str) -> bool:
    """``name`` is registered with torchfault's own function (not a user's, over its name)."""
    try:
        return get_fault_model(name).__module__ == "torchfault.faults._models"
    except ValueError:  # an unknown model: inject reports it
        return False


def _elementwise(f: Fault) -> bool | None:
    """Whether ``f``'s fault model writes its own element only, from that element alone:
    ``True`` for a bitwise model, ``False`` for built-in ``zero``/``value`` (elementwise, but
    one write per fault), ``None`` otherwise."""
    try:
        if bitwise_op(f.model) is not None:
            return True
    except ValueError:  # an unknown model: inject reports it
        return None
    return False if f.model in _ELEMENTWISE and _builtin(f.model) else None


def _bounds(params: dict[str, Any]) -> tuple[float, float] | None:
    """``(low, high)`` of ``random_value`` as its function reads them (``None``: not valid,
    and :func:`inject` refuses the fault when it is read alone)."""
    if set(params) != {"low", "high"}:
        return None
    try:
        lo, hi = float(params["low"]), float(params["high"])
    except (TypeError, ValueError, OverflowError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo < hi else None


def _replayed(
    task: RunTask, i: int, stored: Callable[[Fault], torch.Tensor | None]
) -> RunTask | None:
    """Run ``(task, i)`` of one built-in ``random_value`` fault as deterministic faults that
    write what it draws (see the module docstring), or ``None`` where that is not exact.
    ``stored`` gives a parameter fault's tensor, or an empty tensor of an activation's dtype
    (``None``: not a plain strided tensor, one row per input)."""
    if len(task.faults) != 1:
        return None
    f = task.faults[0]
    if f.model != "random_value" or not _builtin(f.model) or f.sample is not None:
        return None
    # inject's generator for the run; in the engines' one-input pass its first draws are ours
    g = torch.Generator().manual_seed(run_seed(task, i))
    params = f.param_dict
    if params:  # uniform in [low, high): one float64 draw per element written
        bounds = _bounds(params)
        if bounds is None:
            return None
        u = torch.rand(MIN_ROWS if f.is_activation else 1, generator=g, dtype=torch.float64)
        v = bounds[0] + (bounds[1] - bounds[0]) * u
        value = {"value": float(v[0])}  # row 0: the run's own input
        return RunTask(task.fault_id, (f.replace(model="value", params=value),), (i,))
    # a random word of the format: for a tensor seen in its own plain format (an activation's
    # as a fault-free pass shows it), one word per element written, row 0's first
    t = stored(f)
    if t is None:
        return None
    try:
        fmt, own = numerics.get_format(f.format, t), numerics.format_of(t)
    except TorchFaultError:
        return None
    if fmt != own or own.kind not in ("float", "int"):
        return None
    n = MIN_ROWS if f.is_activation else 1
    word = int(numerics.random_words(n, fmt, g)[0]) & ((1 << fmt.width) - 1)
    ones = tuple(b for b in range(fmt.width) if word >> b & 1)
    # the word set as "every bit to 0, then its ones to 1": two bitwise writes, same bits
    faults = [f.replace(model="stuck_at_0", bits=tuple(range(fmt.width)), params={})]
    if ones:
        faults.append(f.replace(model="stuck_at_1", bits=ones, params={}))
    return RunTask(task.fault_id, tuple(faults), (i,))


def _pattern(f: Fault) -> bool:
    """A built-in ``random_value`` fault drawing a bit pattern on an activation, every row."""
    return (
        f.is_activation
        and f.sample is None
        and f.model == "random_value"
        and not f.params
        and _builtin(f.model)
    )


def _activation_dtypes(
    model: nn.Module, inputs: Inputs, faults: list[tuple[Fault, int]]
) -> dict[tuple[Any, ...], torch.Tensor | None]:
    """For each activation fault's tensor (``(module, target, element, call)``), an empty tensor
    of its dtype, read by hooks as :func:`injected_pass` reads values, in one fault-free pass of
    ``MIN_ROWS`` copies of the first fault's input; ``None`` for a tensor that is not plain
    (quantized, not strided) or not one row per input. No faults: no pass."""
    if not faults:
        return {}
    modules = dict(model.named_modules())
    by_site: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
    for f, _ in faults:
        by_site.setdefault((f.module, f.target), set()).add(
            (f.module, f.target, f.element, f.call or 0)
        )
    found: dict[tuple[Any, ...], torch.Tensor | None] = {}
    calls: dict[tuple[str, str], int] = {}

    def recorder(site: tuple[str, str]) -> Callable[[Any], None]:
        def record(obj: Any) -> None:
            c = calls.get(site, 0)
            calls[site] = c + 1
            for key in by_site[site]:
                if key[3] != c:
                    continue
                o = obj
                if site[1] == "input" and key[2] is None:
                    o = o[0] if isinstance(o, tuple) and o else o
                try:
                    t = get_element(o, key[2]) if key[2] is not None else o
                except ValueError:
                    t = None
                plain = (
                    isinstance(t, torch.Tensor)
                    and t.layout == torch.strided
                    and not t.is_quantized
                    and t.dim() > 0
                    and t.shape[0] == MIN_ROWS
                )
                found[key] = torch.empty(0, dtype=t.dtype) if plain else None  # type: ignore[union-attr]

        return record

    handles: list[Any] = []
    try:
        for site in by_site:
            mod = modules.get(site[0])
            if mod is None:
                continue
            r = recorder(site)
            if site[1] == "input":
                handles.append(mod.register_forward_pre_hook(lambda m, a, r=r: r(a)))
            else:
                handles.append(mod.register_forward_hook(lambda m, a, o, r=r: r(o)))
        with torch.no_grad():
            _forward(model, _rows(inputs, [faults[0][1]]))()
    except Exception:  # noqa: BLE001 - what was read stays; the rest is read alone
        pass
    finally:
        for h in handles:
            h.remove()
    return found


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
    params: list[_Run] = []
    acts: list[_Run] = []  # bitwise (random bit patterns replayed as bitwise writes)
    models: list[_Run] = []  # zero, value (random_value in [low, high) replayed as value)
    # one activation fault: by site and inputs
    sites: dict[tuple[Any, ...], list[RunTask]] = {}
    rowwise = not isinstance(inputs, Batched) or inputs.dim == 0
    modules = dict(model.named_modules())
    cache: dict[tuple[str, str], torch.Tensor | None] = {}

    probe = [
        (t.faults[0], t.input_ids[0])
        for t in tasks
        if t.input_ids and len(t.faults) == 1 and _pattern(t.faults[0])
    ]
    dtypes = _activation_dtypes(model, inputs, probe) if rowwise else {}

    def stored(f: Fault) -> torch.Tensor | None:
        if f.is_activation:
            return dtypes.get((f.module, f.target, f.element, f.call or 0))
        return _tensor(modules, f, cache)

    for task in tasks:
        kinds = {f.is_activation for f in task.faults}
        every_row = rowwise and all(f.sample is None for f in task.faults)
        if _random_faults(task):  # values drawn per run
            for i in task.input_ids:
                seed = run_seed(task, i)
                again = _replayed(task, i, stored) if kinds == {False} or every_row else None
                if again is None:
                    rows.extend(_alone(model, inputs, task, i, seed=seed))
                elif kinds == {False}:
                    params.append(_Run(again, i, task, seed))
                else:  # a word as bitwise writes, a number as a value
                    bitwise = all(_elementwise(f) for f in again.faults)
                    (acts if bitwise else models).append(_Run(again, i, task, seed))
            continue
        ways = {_elementwise(f) for f in task.faults}
        if None in ways:
            rows.extend(_one_task(model, inputs, task))
        elif kinds == {False}:
            params.append(_Run(task, -1, task))
        elif kinds == {True} and every_row and _one_site(task):
            f = task.faults[0]
            key = (f.module, f.target, f.element, f.call, f.persistence, task.input_ids)
            sites.setdefault(key, []).append(task)
        elif kinds == {True} and every_row:
            runs = [_Run(task, i, task) for i in task.input_ids]
            (acts if ways == {True} else models).extend(runs)
        else:
            rows.extend(_one_task(model, inputs, task))
    for group in sites.values():
        if len(group) * len(set(group[0].input_ids)) >= MIN_ROWS:  # fills a pass: by site
            rows.extend(_site_rows(model, inputs, group, batch_size))
            continue
        for task in group:  # a few runs: as rows of shared passes
            runs = [_Run(task, i, task) for i in task.input_ids]
            (acts if _elementwise(task.faults[0]) else models).extend(runs)
    rows.extend(_parameter_rows(model, inputs, params))
    for runs, size in ((acts, batch_size), (models, min(batch_size, MODEL_ROWS))):
        for start in range(0, len(runs), size):
            rows.extend(_activation_rows(model, inputs, runs[start : start + size]))
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


def _tensor(
    modules: dict[str, nn.Module], f: Fault, cache: dict[tuple[str, str], torch.Tensor | None]
) -> torch.Tensor | None:
    """The plain (strided, not quantized) parameter or buffer a fault names, else ``None``."""
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
    return cache[key]


def _element(
    modules: dict[str, nn.Module], f: Fault, cache: dict[tuple[str, str], torch.Tensor | None]
) -> tuple[int, int] | None:
    """Where a parameter or buffer fault writes: ``(storage, offset)`` of its element, or
    ``None`` when it cannot be told (then the fault's run is read alone)."""
    t = _tensor(modules, f, cache)
    if t is None or len(f.index) != t.dim():
        return None
    if any(not 0 <= i < n for i, n in zip(f.index, t.shape)):
        return None
    offset = int(t.storage_offset()) + sum(i * s for i, s in zip(f.index, t.stride()))
    return (t.untyped_storage().data_ptr(), offset)


def _one_site(task: RunTask) -> bool:
    """One activation fault whose index names its element plainly (no negative entries)."""
    return len(task.faults) == 1 and all(v >= 0 for v in task.faults[0].index)


def _site_rows(
    model: nn.Module, inputs: Inputs, tasks: list[RunTask], batch_size: int
) -> list[Row]:
    """Tasks of one elementwise activation fault each, at one site (module, target, element,
    call, persistence) and on the same inputs: faults on distinct elements share passes, each
    fault on every row (the tasks' inputs, ``batch_size`` a pass), at most :data:`SITE_FAULTS`
    faults a pass."""
    passes: list[tuple[list[RunTask], set[tuple[int, ...]]]] = []
    for task in tasks:
        index = task.faults[0].index
        for members, taken in passes:
            if index not in taken and len(members) < SITE_FAULTS:
                members.append(task)
                taken.add(index)
                break
        else:
            passes.append(([task], {index}))
    ids = sorted(set(tasks[0].input_ids))
    size = max(batch_size, MIN_ROWS)
    rows: list[Row] = []
    for members, _ in passes:
        for start in range(0, len(ids), size):
            rows.extend(_site_pass(model, inputs, members, ids[start : start + size]))
    return rows


def _site_pass(model: nn.Module, inputs: Inputs, tasks: list[RunTask], ids: list[int]) -> list[Row]:
    """One pass over inputs ``ids`` with the faults of ``tasks`` (one site, distinct elements):
    rows of the tasks' runs on those inputs."""
    row_of = {i: n for n, i in enumerate(ids)}
    got = _shared_pass(model, inputs, [t.faults[0] for t in tasks], ids)
    if got is None:
        return [
            row
            for task in tasks
            for i in task.input_ids
            if i in row_of
            for row in _alone(model, inputs, task, i)
        ]
    return [
        (task.fault_id, i, 0, *pairs.get(row_of[i], (None, None)))
        for task, pairs in zip(tasks, got.pairs)
        for i in task.input_ids
        if i in row_of
    ]


def _interleaved(runs: list[_Run]) -> list[tuple[int, int]]:
    """``(run, fault)`` numbers in the order one injection takes the runs' faults: each run's
    first faults, then their second ones...: a run's faults keep their order, and like writes
    of different runs sit side by side (one vectorised bitwise write)."""
    depth = max(len(r.task.faults) for r in runs)
    return [(n, k) for k in range(depth) for n, r in enumerate(runs) if k < len(r.task.faults)]


def _shared_pass(model: nn.Module, inputs: Inputs, faults: list[Fault], ids: list[int]) -> Any:
    """:func:`injected_pass` of ``faults`` over inputs ``ids`` in one forward pass, or ``None``
    when it cannot stand for the runs read alone: inject refused a fault (each alone names
    it), the pass raised, or the faulted tensor was not one row per input."""
    try:
        got = injected_pass(model, faults, _forward(model, _rows(inputs, ids)))
    except Exception:  # noqa: BLE001 - a fault inject refuses: each alone names it
        return None
    if got.error is not None or got.batch_sizes - {max(len(ids), MIN_ROWS)}:
        return None
    return got


def _read_alone(model: nn.Module, inputs: Inputs, run: _Run) -> list[Row]:
    """A run read on its own, as the campaign has it (the fallback of the shared readings)."""
    if run.input_id < 0:
        return _one_task(model, inputs, run.original)
    return _alone(model, inputs, run.original, run.input_id, seed=run.seed)


def _parameter_rows(model: nn.Module, inputs: Inputs, runs: list[_Run]) -> list[Row]:
    """Parameter and buffer faults with elementwise fault models, many under one inject."""
    modules = dict(model.named_modules())
    cache: dict[tuple[str, str], torch.Tensor | None] = {}
    groups: list[tuple[list[_Run], set[tuple[int, int] | None]]] = []
    rows: list[Row] = []
    for run in runs:
        where = [_element(modules, f, cache) for f in run.task.faults]
        if any(w is None for w in where):
            rows.extend(_read_alone(model, inputs, run))
            continue
        mine = set(where)
        for group, taken in groups:
            if taken.isdisjoint(mine):
                group.append(run)
                taken |= mine
                break
        else:
            groups.append(([run], mine))
    for group, _ in groups:
        order = _interleaved(group)
        try:
            got = injected_pass(model, [group[n].task.faults[k] for n, k in order])
        except Exception:  # noqa: BLE001 - a fault inject refuses: each alone names it
            for run in group:
                rows.extend(_read_alone(model, inputs, run))
            continue
        pair = {nk: p[-1] for nk, p in zip(order, got.pairs)}
        for n, run in enumerate(group):
            # a replayed random word is two writes to one element: one row, the run's fault
            rows.extend(
                (run.task.fault_id, run.input_id, k, *pair[(n, k)])
                for k in range(len(run.original.faults))
            )
    return rows


def _activation_rows(model: nn.Module, inputs: Inputs, runs: list[_Run]) -> list[Row]:
    """Runs of activation faults (elementwise, every row) as the rows of one forward pass."""
    ids = [r.input_id for r in runs]
    order = _interleaved(runs)
    faults = [runs[n].task.faults[k].replace(sample=n) for n, k in order]
    got = _shared_pass(model, inputs, faults, ids)
    if got is None:
        return [row for r in runs for row in _read_alone(model, inputs, r)]
    pair = {(n, k): p.get(n, (None, None)) for (n, k), p in zip(order, got.pairs)}
    return [
        (r.task.fault_id, r.input_id, k, *pair[(n, k)])
        for n, r in enumerate(runs)
        for k in range(len(r.original.faults))
    ]
