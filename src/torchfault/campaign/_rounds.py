# SPDX-License-Identifier: MIT
"""A campaign's run loop: the missing runs of faults ``[first, end)`` drawn, their faults and
injected values stored first, then run through the executor chunk by chunk, each chunk's traces,
metrics and runs written by the main process as they come back, in that order.

Crash safety of traces: a chunk's traces come back with its records (the engine computes them
while it runs the chunk, :meth:`~torchfault.campaign._engine.Engine.run_chunk`) and are committed
(their own transaction) before the chunk's runs are handed to the store, so a stored run always
has its trace; a run killed before it was stored is run, and traced, again on resume (its trace
rows are replaced). An executor or engine that does not bring traces back gets them computed
here, by :func:`~torchfault.analysis.trace_runs`, before its runs are stored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchfault.campaign._config import CampaignConfig
from torchfault.campaign._engine import RunTask
from torchfault.campaign._handover import EngineTap
from torchfault.campaign._metrics import write_metrics
from torchfault.campaign._prepare import Prepared
from torchfault.campaign._progress import _Progress
from torchfault.faults import Fault
from torchfault.store import RunRecord

__all__ = ["Rounds"]


class Rounds:
    """Runs rounds of faults of one campaign into its open store.

    Args:
        cfg: the campaign's config.
        prepared: what the campaign prepared (model, inputs, sampler, trace settings).
        store: the open store (written by this process only).
        executor: the executor (entered by the caller).
        setup: builds an engine (a picklable entry point for workers) and keeps those built
            here for their hand-over counts.
        inputs_for: the inputs fault ``k`` runs on.
        done: ``(fault_id, input_id)`` already stored (skipped).
        known: fault ids already stored (not stored again).
        progress: the progress bar.
        acc: per-fault outcome counts fed with every new fault and run (adaptive stop, Neyman
            allocation), or ``None``.
    """

    def __init__(
        self,
        cfg: CampaignConfig,
        prepared: Prepared,
        store: Any,
        executor: Any,
        setup: EngineTap,
        inputs_for: Callable[[int], tuple[int, ...]],
        done: set[tuple[int, int]],
        known: set[int],
        progress: _Progress,
        acc: Any,
    ) -> None:
        self.cfg, self.prepared, self.store = cfg, prepared, store
        self.executor, self.setup, self.inputs_for = executor, setup, inputs_for
        self.done, self.known, self.progress, self.acc = done, known, progress, acc

    def run(self, first: int, end: int) -> None:
        """Run the missing runs of faults ``first <= k < end``."""
        chunks = self._draw(first, end)
        self._store_before_runs(chunks)
        faults = {t.fault_id: t.faults for tasks in chunks for t in tasks}
        for records in self.executor.map(self.setup, chunks):
            if self.prepared.trace is not None:  # first: a stored run has its trace
                self._store_traces(records, faults)
            write_metrics(self.store, records)  # first: a stored run has its metrics
            self.store.add_runs(records)
            if self.acc is not None:
                self.acc.update(records)
            self.progress.advance(len(records))
        self.setup.drain()  # the round's engines are done: their counts, not them, are kept
        self.store.flush()

    def _draw(self, first: int, end: int) -> list[list[RunTask]]:
        """The round's tasks in chunks of ``executor.chunk_faults`` faults; faults not yet in the
        store are written to it."""
        from torchfault.store import FaultRecord

        chunk = self.cfg.executor.chunk_faults
        chunks, new_faults = [], []
        for start in range(first, end, chunk):
            tasks = []
            for fid in range(start, min(start + chunk, end)):
                ids = tuple(i for i in self.inputs_for(fid) if (fid, i) not in self.done)
                if not ids:
                    continue
                faults = self.prepared.sampler.draw(fid)
                if self.acc is not None:
                    self.acc.add_faults({fid: faults})
                if fid not in self.known:
                    new_faults.append(FaultRecord(fid, faults))
                tasks.append(RunTask(fid, faults, ids))
            if tasks:
                chunks.append(tasks)
        if new_faults:
            self.store.add_faults(new_faults)
            self.store.flush()
        return chunks

    def _store_before_runs(self, chunks: Sequence[list[RunTask]]) -> None:
        """Injected values of the round's runs (first: a stored run has them)."""
        p = self.prepared
        if self.cfg.injected_values:
            from torchfault.campaign._injected import injected_rows
            from torchfault.store import write_injected

            size = self.cfg.engine.batch_size
            for tasks in chunks:
                write_injected(self.store, injected_rows(p.model, p.inputs, tasks, size))

    def _store_traces(self, records: list[RunRecord], faults: dict[int, tuple[Fault, ...]]) -> None:
        """Write the traces of a chunk's ``records``: those the engine brought back with them,
        or (an engine or executor that did not) computed here by ``trace_runs`` (``faults``:
        each fault id's faults)."""
        from torchfault.analysis import trace_rows, trace_runs
        from torchfault.store import write_traces

        assert self.prepared.trace is not None
        order, prof = self.prepared.trace
        traces = getattr(records, "traces", None)
        if traces is None:
            ids: dict[int, list[int]] = {}
            for r in records:
                ids.setdefault(r.fault_id, []).append(r.input_id)
            spec = [(k, faults[k], v) for k, v in ids.items()]
            model, inputs = self.prepared.model, self.prepared.inputs
            traces = trace_runs(model, inputs, spec, order, profile=prof)  # type: ignore[arg-type]
        write_traces(self.store, order, trace_rows(traces, order))
