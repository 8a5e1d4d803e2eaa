# SPDX-License-Identifier: MIT
"""Engines execute injection runs: each run is one fault (or one set of faults) on one input.

An engine is built once per process with the model, the inputs and their golden outputs, and
then runs batches of :class:`RunTask`. The ``reference`` engine is the plain one: for each task it
injects the task's faults with :func:`torchfault.inject` and re-executes the whole network on the
task's inputs. Every faster engine must give the same outcomes as it.

The default engine (:data:`DEFAULT_ENGINE`, of :func:`~torchfault.campaign.run_campaign` and of a
campaign config's ``engine.name``) is ``fast``: it gives the reference engine's records on
everything it covers and hands the rest to the reference engine itself, counting those runs by
reason; ``reference`` stays one word away.

Traces. An engine told what to trace (:attr:`Engine.trace`: the traced layers in execution order
and an optional range profile) returns, from :meth:`Engine.run_chunk`, the chunk's records
together with each run's layer-by-layer deviation trace (:class:`Chunk`, a list of records with
a ``traces`` attribute, so the traces travel back with the records through every executor, by
pickle where workers are processes or Ray actors). The base engine computes them by
:func:`torchfault.analysis.trace_runs` (a golden and a faulty pass with hooks per fault); the fast
engine from the rest of the network it runs anyway (:mod:`torchfault.campaign._fast._tracing`),
the same values bit for bit, falling back to ``trace_runs`` for the runs it cannot trace so.
Why a list subclass and not a field of :class:`~torchfault.store.RunRecord`: the record is the
stored row (its equality and ``as_tuple`` are the store's), and callers that read a chunk as a
list of records (executors, protection, tests' stand-in engines) keep working unchanged.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._outcome import Criterion, evaluate
from torchfault.campaign._structure import Batched, split_rows
from torchfault.faults import Fault, fault_model_capabilities
from torchfault.injectors import Injection, inject
from torchfault.registry import Registry
from torchfault.store import RunRecord

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "Chunk",
    "Engine",
    "HandedOverEngine",
    "MeasuredRun",
    "make_engine",
    "reference_reason",
    "run_chunk",
    "ReferenceEngine",
    "RunTask",
    "detected_task",
    "register_engine",
    "list_engines",
    "is_engine",
    "create_engine",
]

ENGINES: Registry[type] = Registry("engine")
#: the engine a campaign runs on when none is named: the fast engine, which gives the reference
#: engine's records and hands what it does not cover to the reference engine (counted)
DEFAULT_ENGINE = "fast"
log = logging.getLogger("torchfault.campaign")


@dataclass(frozen=True)
class RunTask:
    """The runs of one fault: its faults on each of its inputs (one run per input)."""

    fault_id: int
    faults: tuple[Fault, ...]
    input_ids: tuple[int, ...]


#: Fewest rows of any forward pass an engine makes. CPU kernels pick their blocking by batch
#: size, and batches of one or two rows round differently in the last bits from larger ones; with
#: every pass at least this tall (short batches padded with copies of their first row), a row's
#: fault-free output is the same bits in every batch, so ``masked`` (bit-identical to golden) means
#: the same thing for every engine and every batch composition.
MIN_ROWS = 16


def _pad_index(n: int, min_rows: int) -> torch.Tensor:
    """Row numbers ``0 .. n-1`` padded with copies of row 0 to ``min_rows``."""
    return torch.cat([torch.arange(n), torch.zeros(min_rows - n, dtype=torch.int64)])


def _forward(
    model: nn.Module, x: torch.Tensor | Batched, min_rows: int = MIN_ROWS
) -> torch.Tensor | list[Any]:
    """The model on ``x`` (padded to ``min_rows`` rows): a tensor input with a tensor output
    gives the output's first ``n`` rows; anything else one output per input (a list)."""
    n = len(x) if isinstance(x, Batched) else x.shape[0]
    if n < min_rows:
        # indexing keeps the inputs' memory layout (channels-last stays channels-last, as in
        # unpadded passes); torch.cat with an expanded row would make the batch contiguous
        x = x[_pad_index(n, min_rows)]
    if isinstance(x, Batched):
        out = x.call(model)
        if isinstance(out, torch.Tensor) and x.dim == 0:
            return out[:n]
        return split_rows(out, n, x.dim)
    out = model(x)
    if isinstance(out, torch.Tensor):
        return out[:n]
    return split_rows(out, n, 0)


def take_golden(golden: torch.Tensor | Sequence[Any], ids: Sequence[int]) -> Any:
    """The golden outputs of inputs ``ids``: rows of a tensor, or items of a per-input list."""
    if isinstance(golden, torch.Tensor):
        return golden[list(ids)]
    return [golden[int(i)] for i in ids]


class Chunk(list[RunRecord]):
    """The run records of one chunk of tasks (a list) and, when the engine traced them, one
    :class:`~torchfault.analysis.Trace` per run in :attr:`traces` (``None``: not traced)."""

    def __init__(self, records: Sequence[RunRecord] = (), traces: list[Any] | None = None):
        super().__init__(records)
        self.traces = traces


def run_chunk(engine: Any, tasks: Sequence[RunTask]) -> list[RunRecord]:
    """What an executor calls: ``engine.run_chunk(tasks)`` (records and traces, a
    :class:`Chunk`), or ``engine.run(tasks)`` for an engine-like object without it."""
    run = getattr(engine, "run_chunk", None)
    return run(tasks) if run is not None else engine.run(tasks)


@dataclass(frozen=True, slots=True)
class MeasuredRun(RunRecord):
    """A :class:`~torchfault.store.RunRecord` with the metrics its criterion returned
    (``(name, value)`` pairs; ``None`` for a NaN)."""

    metrics: tuple[tuple[str, float | None], ...] = ()


class Engine(abc.ABC):
    """Base of the engines.

    Args:
        model: the model, in eval mode.
        inputs: all campaign inputs, a tensor whose rows are the inputs.
        golden: the golden outputs, one row per input.
        criterion: what counts as an SDC.
        batch_size: the most rows one forward pass takes.
        trace: what :meth:`run_chunk` traces: ``(layers in execution order, range profile or
            None)`` (``None``: nothing).
    """

    name = "base"

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        golden: torch.Tensor | list[Any],
        criterion: Criterion | None = None,
        batch_size: int = 256,
        trace: tuple[list[str], Any] | None = None,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.golden: Any = golden  # rows of a tensor, or one output per input
        self.criterion = criterion or Criterion()
        self.batch_size = int(batch_size)
        self.trace = trace
        self._golden_top1: dict[int, int | None] = {}

    @abc.abstractmethod
    def run(self, tasks: Sequence[RunTask]) -> list[RunRecord]:
        """Execute the tasks; one record per (fault, input), in any order."""

    def run_chunk(self, tasks: Sequence[RunTask]) -> Chunk:
        """:meth:`run` the tasks; with :attr:`trace`, their runs' traces too (one per run)."""
        records = self.run(tasks)
        return Chunk(records, None if self.trace is None else self.traces(tasks))

    def traces(self, tasks: Sequence[RunTask]) -> list[Any]:
        """The traces of the tasks' runs (:attr:`trace` must be set), by
        :func:`torchfault.analysis.trace_runs`: task by task, inputs in each task's order."""
        from torchfault.analysis import trace_runs

        assert self.trace is not None, "Engine.traces needs Engine.trace"
        layers, profile = self.trace
        spec = [(t.fault_id, t.faults, t.input_ids) for t in tasks]
        if not spec:
            return []
        return trace_runs(self.model, self.inputs, spec, layers, profile=profile)

    def _records(
        self,
        task: RunTask,
        input_ids: Sequence[int],
        out: torch.Tensor | list[Any],
        seconds: float,
        golden: torch.Tensor | None = None,
    ) -> list[RunRecord]:
        if golden is None:
            golden = take_golden(self.golden, input_ids)
        ev = evaluate(golden, out, self.criterion, f" on fault {task.fault_id}")
        per = seconds / max(len(input_ids), 1)
        records: list[RunRecord] = []
        for k, i in enumerate(input_ids):
            fields = (
                task.fault_id,
                int(i),
                ev.outcomes[k],
                ev.golden_top1[k],
                ev.faulty_top1[k],
                ev.max_abs_diff[k],
                per,
            )
            m = ev.metrics[k]
            if m is None:
                records.append(RunRecord(*fields))
            else:
                records.append(MeasuredRun(*fields, None, tuple(sorted(m.items()))))
        return records

    def golden_top1(self, input_ids: Sequence[int]) -> list[int | None]:
        """The criterion's golden class of each input (``None`` where it has none)."""
        missing = [int(i) for i in input_ids if int(i) not in self._golden_top1]
        if missing:
            g = take_golden(self.golden, missing)
            tops = evaluate(g, g, self.criterion).golden_top1
            self._golden_top1.update(zip(missing, tops))
        return [self._golden_top1[int(i)] for i in input_ids]

    def _detected(self, task: RunTask) -> list[RunRecord]:
        """``detected`` records of a task whose faults a detector flagged before the model read
        them (:func:`detected_task`): nothing runs, every engine gives the same records."""
        ids = list(task.input_ids)
        return [
            RunRecord(task.fault_id, int(i), "detected", g, None, None, 0.0)
            for i, g in zip(ids, self.golden_top1(ids))
        ]

    def _due(
        self, task: RunTask, input_ids: Sequence[int], exc: BaseException, seconds: float
    ) -> list[RunRecord]:
        g_top = self.golden_top1(input_ids)
        err = f"{type(exc).__name__}: {exc}"[:500]
        per = seconds / max(len(input_ids), 1)
        return [
            RunRecord(task.fault_id, int(i), "due", g, None, None, per, err)
            for i, g in zip(input_ids, g_top)
        ]


def _random_faults(task: RunTask) -> bool:
    """Whether a fault of ``task`` has a fault model that draws random numbers."""
    for f in task.faults:
        try:
            if fault_model_capabilities(f.model).random:
                return True
        except ValueError:  # an unknown model: inject reports it
            pass
    return False


def detected_task(task: RunTask) -> bool:
    """Whether a fault of ``task`` has a fault model with the ``detected`` capability (bits a
    memory's ECC decoder flagged as uncorrectable, ``ecc_detected``): the run's outcome is
    ``detected`` and the model does not run."""
    for f in task.faults:
        try:
            if fault_model_capabilities(f.model).detected:
                return True
        except ValueError:  # an unknown model: inject reports it
            pass
    return False


def run_seed(task: RunTask, input_id: int) -> int:
    """The seed of the generator of random fault models for one run: a stable hash of the
    task's faults, its fault id and the input (the same in every process and session)."""
    text = json.dumps([task.fault_id, input_id, [f.to_dict() for f in task.faults]], sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@ENGINES.register(
    "reference", description="Plain full re-execution with inject(): one forward pass per fault."
)
class ReferenceEngine(Engine):
    """Injects each task's faults and re-runs the whole network over its inputs."""

    name = "reference"

    @torch.no_grad()
    def run(self, tasks: Sequence[RunTask]) -> list[RunRecord]:
        records: list[RunRecord] = []
        for task in tasks:
            if detected_task(task):
                Injection(self.model, task.faults)  # a bad fault is an error, as below
                records.extend(self._detected(task))
                continue
            ids = list(task.input_ids)
            random = _random_faults(task)
            # random fault models: each input on its own, with a generator seeded from the fault
            # and the input, so its values do not depend on the other inputs of the batch (and a
            # resumed or re-chunked campaign draws them again exactly)
            size = 1 if random else self.batch_size
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                seed = run_seed(task, chunk[0]) if random else None
                t0 = time.perf_counter()
                # a bad fault raises here, before the model runs: that is an error, not an outcome
                with inject(self.model, task.faults, seed=seed):
                    try:
                        out = _forward(self.model, self.inputs[chunk])
                    except Exception as exc:  # noqa: BLE001 - a crash under a fault is a DUE
                        records.extend(self._due(task, chunk, exc, time.perf_counter() - t0))
                        continue
                seconds = time.perf_counter() - t0
                records.extend(self._records(task, chunk, out, seconds))
        return records


def reference_reason(
    inputs: Any, golden: Any, criterion: Criterion, engine: type | None = None
) -> str | None:
    """Why a campaign must run on the reference engine whatever engine was asked (``None``: it
    need not). Only the reference engine runs inputs of any structure and devices other than
    the CPU; outputs that are not one tensor and criteria that record metrics or read a part of
    the output too, unless ``engine`` (the class asked for) says it runs them
    (``structured_outputs``, the fast engine) or runs anything (``any_structure``)."""
    if engine is ReferenceEngine or getattr(engine, "any_structure", False):
        return None
    structured = bool(getattr(engine, "structured_outputs", False))
    if not isinstance(inputs, torch.Tensor):
        return f"inputs of another structure ({inputs!r})"
    if not structured and not isinstance(golden, torch.Tensor):
        return "outputs that are not one tensor"
    if not structured and not criterion.fast:
        what = (
            "reads a part of the output"
            if criterion.output not in (None, "")
            else "is not top1/topk/tolerance"
        )
        return f"criterion {criterion.label!r} {what}"
    if inputs.device.type != "cpu":
        return f"device {inputs.device} (its exactness checks are made for CPU kernels)"
    return None


_HANDED_OVER_WARNED: set[tuple[str, str]] = set()


class HandedOverEngine(ReferenceEngine):
    """The reference engine standing in for an engine that cannot run a campaign's structure.

    Attributes:
        requested: the engine that was asked for.
        reason: why it handed the campaign over.
        stats: ``{"reference": runs, "handed_over": runs}``, like the fast engine's counters.
    """

    def __init__(self, requested: str, reason: str, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.requested = requested
        self.reason = reason
        self.stats: dict[str, int] = {"reference": 0, "handed_over": 0}
        key = (requested, reason)
        if key not in _HANDED_OVER_WARNED:
            _HANDED_OVER_WARNED.add(key)
            log.warning(
                "engine %r: %s; running these runs with the reference engine (same records).",
                requested,
                reason,
            )

    def run(self, tasks: Sequence[RunTask]) -> list[RunRecord]:
        records = super().run(tasks)
        self.stats["reference"] += len(records)
        self.stats["handed_over"] += len(records)
        return records


def make_engine(
    name: str,
    model: nn.Module,
    inputs: torch.Tensor | Batched,
    golden: Any,
    criterion: Criterion,
    batch_size: int,
    trace: tuple[list[str], Any] | None = None,
    **options: Any,
) -> Engine:
    """Build engine ``name`` (``trace``: what it traces, :attr:`Engine.trace`; ``options``: more
    keyword arguments of its class, such as the fast engine's ``options``); an engine that
    runs only single-tensor CPU classifiers (the fast engine) hands a campaign it cannot run to
    the reference engine (:class:`HandedOverEngine`, which counts the runs and says why once)."""
    cls = ENGINES.get(name)
    reason = reference_reason(inputs, golden, criterion, cls)
    if reason is not None:
        engine: Engine = HandedOverEngine(
            name, reason, model, inputs, golden, criterion, batch_size
        )
    else:
        engine = cls(model, inputs, golden, criterion, batch_size, **options)
    engine.trace = trace
    return engine


# register_engine (a decorator for Engine subclasses), list_engines, is_engine, create_engine
register_engine, list_engines, is_engine, create_engine, _ = ENGINES.functions()
