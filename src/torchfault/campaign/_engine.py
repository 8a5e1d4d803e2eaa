# SPDX-License-Identifier: MIT
"""Engines execute injection runs: each run is one fault (or one set of faults) on one input.

An engine is built once per process with the model, the inputs and their golden outputs, and
then runs batches of :class:`RunTask`. The ``reference`` engine is the plain one: for each task it
injects the task's faults with :func:`torchfault.inject` and re-executes the whole network on the
task's inputs. Every faster engine must give the same outcomes as it.
"""

from __future__ import annotations

import abc
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._outcome import OUTCOMES, Criterion, classify
from torchfault.faults import FAULT_MODELS, Fault
from torchfault.injectors import inject
from torchfault.registry import Registry
from torchfault.store import RunRecord

__all__ = [
    "ENGINES",
    "Engine",
    "ReferenceEngine",
    "RunTask",
    "register_engine",
    "list_engines",
    "is_engine",
    "create_engine",
]

ENGINES: Registry[type] = Registry("engine")


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


def _forward(model: nn.Module, x: torch.Tensor, min_rows: int = MIN_ROWS) -> torch.Tensor:
    n = x.shape[0]
    if n < min_rows:
        # indexing keeps the inputs' memory layout (channels-last stays channels-last, as in
        # unpadded passes); torch.cat with an expanded row would make the batch contiguous
        x = x[_pad_index(n, min_rows)]
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor of scores, got {type(out).__name__}")
    return out[:n]


class Engine(abc.ABC):
    """Base of the engines.

    Args:
        model: the model, in eval mode.
        inputs: all campaign inputs, a tensor whose rows are the inputs.
        golden: the golden outputs, one row per input.
        criterion: what counts as an SDC.
        batch_size: the most rows one forward pass takes.
    """

    name = "base"

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        golden: torch.Tensor,
        criterion: Criterion | None = None,
        batch_size: int = 256,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.golden = golden
        self.criterion = criterion or Criterion()
        self.batch_size = int(batch_size)

    @abc.abstractmethod
    def run(self, tasks: Sequence[RunTask]) -> list[RunRecord]:
        """Execute the tasks; one record per (fault, input), in any order."""

    def _records(
        self,
        task: RunTask,
        input_ids: Sequence[int],
        out: torch.Tensor,
        seconds: float,
        golden: torch.Tensor | None = None,
    ) -> list[RunRecord]:
        if golden is None:
            golden = self.golden[list(input_ids)]
        codes, g_top, f_top, diff = classify(golden, out, self.criterion)
        per = seconds / max(len(input_ids), 1)
        return [
            RunRecord(task.fault_id, int(i), OUTCOMES[int(c)], int(g), int(f), float(d), per)
            for i, c, g, f, d in zip(
                input_ids, codes.tolist(), g_top.tolist(), f_top.tolist(), diff.tolist()
            )
        ]

    def _due(
        self, task: RunTask, input_ids: Sequence[int], exc: BaseException, seconds: float
    ) -> list[RunRecord]:
        g_top = self.golden[list(input_ids)].reshape(len(input_ids), -1).argmax(dim=1).tolist()
        err = f"{type(exc).__name__}: {exc}"[:500]
        per = seconds / max(len(input_ids), 1)
        return [
            RunRecord(task.fault_id, int(i), "due", int(g), None, None, per, err)
            for i, g in zip(input_ids, g_top)
        ]


def _random_faults(task: RunTask) -> bool:
    """Whether a fault of ``task`` has a fault model that draws random numbers."""
    for f in task.faults:
        try:
            if FAULT_MODELS.info(f.model).capabilities.get("random"):
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


def register_engine(name: str, **kw: Any) -> Any:
    """Decorator registering an :class:`Engine` subclass."""
    return ENGINES.register(name, **kw)


def list_engines(filter: str | None = None) -> list[str]:
    """Registered engine names."""
    return ENGINES.list(filter)


def is_engine(name: str) -> bool:
    """Whether ``name`` is a registered engine."""
    return ENGINES.is_registered(name)


def create_engine(name: str, **kwargs: Any) -> Engine:
    """Build the engine ``name``."""
    return ENGINES.create(name, **kwargs)
