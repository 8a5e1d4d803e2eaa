# SPDX-License-Identifier: MIT
"""``Campaign``: the configurable, stored, resumable campaign behind ``torchfault campaign``.

1. :meth:`Campaign.setup` prepares model, inputs, golden pass, fault sites and sampler
   (:func:`~torchfault.campaign._prepare.prepare`; the golden pass is the one
   :func:`run_campaign` uses). Every setting that could fail is checked there, before any store
   is opened.
2. :meth:`Campaign.run` opens the SQLite store: a new one records the campaign's identity
   (config and a fingerprint of model and inputs); an existing one must match it, its golden
   outputs and fault sites too, and its finished runs are skipped.
3. The missing runs run in rounds (:class:`~torchfault.campaign._rounds.Rounds`) through the
   executor; the main process writes every result. An adaptive campaign runs in rounds of
   ``sampler.adaptive_step`` faults and checks its stopping rule only at round ends, over
   exactly the faults below the boundary, so where it stops is a function of the config alone
   (not of chunking, workers or interruptions).
4. Summarize (rates with confidence intervals), export, report.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from torchfault.campaign._build import (
    _load_factory,
    build_engine,
    build_inputs,
    build_model,
    fingerprint,
)
from torchfault.campaign._config import CampaignConfig
from torchfault.campaign._engine import RunTask
from torchfault.campaign._executors import EXECUTORS
from torchfault.campaign._handover import EngineTap, handed_over_line
from torchfault.campaign._metrics import read_metrics, with_metrics
from torchfault.campaign._outcome import Criterion
from torchfault.campaign._prepare import Prepared, _sampler_error, prepare
from torchfault.campaign._progress import _Progress
from torchfault.campaign._rounds import Rounds
from torchfault.campaign._run import CampaignResult
from torchfault.campaign._structure import Batched, leaves
from torchfault.errors import ConfigError, StoreMismatchError, TorchFaultError

__all__ = ["Campaign", "build_model", "build_inputs", "fingerprint", "build_engine"]

# the names callers import from here (tests, benchmarks): defined in the modules named above
_REEXPORTED = (_load_factory, _sampler_error, _Progress, read_metrics)

if TYPE_CHECKING:
    from torchfault.analysis import OutcomeAccumulator, Summary
    from torchfault.campaign._protection import ProtectionResult
    from torchfault.store import ResultStore

log = logging.getLogger("torchfault.campaign")


def _faults_json(faults: Any) -> str:
    """A fault tuple as canonical JSON (NaN written as NaN, so equal faults compare equal)."""
    return json.dumps([f.to_dict() for f in faults], sort_keys=True)


class Campaign:
    """A stored, resumable campaign built from a :class:`CampaignConfig`.

    Example:
        >>> from torchfault import Campaign, CampaignConfig
        >>> cfg = CampaignConfig(name="doc")  # defaults: pretrained LeNet on digits, 1% margin
        >>> cfg.sampler.margin, cfg.model.name
        (0.01, 'lenet')
    """

    #: What a refused store asks of the user (the store's own advice names its Python API).
    STORE_ADVICE = (
        "To keep both, give the campaign another store.path; to discard the stored results and start "
        "afresh, set store.overwrite: true (on the command line: --store.overwrite true)."
    )

    def __init__(self, config: CampaignConfig | dict[str, Any]) -> None:
        if isinstance(config, dict):
            from torchfault.config import from_dict

            config = from_dict(CampaignConfig, config)
        self.config = config
        #: what :meth:`setup` prepared (``None`` before); the attributes below are its parts
        self.prepared: Prepared | None = None
        self.model: nn.Module | None = None
        self.inputs: torch.Tensor | Batched | None = None
        self.labels: torch.Tensor | None = None
        self.criterion: Criterion | None = None
        self.golden: torch.Tensor | list[Any] | None = None
        self.golden_top1: list[int | None] = []
        self.input_ids: list[int] = []
        self.accuracy: float | None = None
        self.sites: Any = None
        self.sampler: Any = None
        self.fingerprint: str | None = None
        self.trace_setup: tuple[list[str], Any] | None = None
        self.protection: Any = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> Prepared:
        """Build model, inputs, golden outputs, fault space and sampler, once; returns them."""
        if self.prepared is not None:
            return self.prepared
        p = prepare(self.config)
        self.prepared = p
        self.model, self.inputs, self.labels, self.criterion = (
            p.model,
            p.inputs,
            p.labels,
            p.criterion,
        )
        self.golden, self.golden_top1 = p.golden.outputs, p.golden.top1()
        self.input_ids, self.accuracy = p.input_ids, p.accuracy
        self.sites, self.sampler, self.fingerprint = p.sites, p.sampler, p.fingerprint
        self.trace_setup, self.protection = p.trace, p.protection
        return p

    def _inputs_for(self, k: int) -> tuple[int, ...]:
        """The inputs fault ``k`` runs on (``inputs_per_fault`` of them, in turn, or all)."""
        ids = self.input_ids
        per = self.config.inputs_per_fault
        if per == 0 or per >= len(ids):
            return tuple(ids)
        return tuple(ids[(k * per + j) % len(ids)] for j in range(per))

    @property
    def runs_per_fault(self) -> int:
        """Inputs each fault runs on."""
        return len(self._inputs_for(0))

    # ---------------------------------------------------------------- running
    def open_store(self) -> ResultStore:
        """Open (or create) the campaign's store; ``store.overwrite`` replaces a torchfault store
        (never another file) with a fresh one. One campaign writes a store at a time (another
        one is refused naming it, or waited for: ``store.wait``)."""
        from torchfault.store import ResultStore, StoreBusyError, StoreDamagedError

        cfg = self.config
        path = Path(cfg.store_path)
        try:
            return ResultStore(
                path,
                campaign=cfg.identity(),
                fingerprint=self.fingerprint,
                mode="w" if cfg.store.overwrite else "a",
                chunk_size=cfg.store.chunk_size,
                advice=self.STORE_ADVICE,
                wait=cfg.store.wait,
                writer=cfg.name,
            )
        except (StoreMismatchError, StoreBusyError, StoreDamagedError):
            raise
        except (OSError, sqlite3.Error, TorchFaultError) as exc:
            raise ConfigError(f"store.path: cannot open the store {str(path)!r}: {exc}") from None

    def run(self) -> CampaignResult:
        """Run (or resume) the campaign; returns every stored run."""
        p = self.setup()
        cfg = self.config
        deterministic = torch.are_deterministic_algorithms_enabled()
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        store = self.open_store()
        state: dict[str, Any] | None = None
        try:
            executor = self._executor()
            done, known = self._resume(store)
            # Neyman allocation: the pilot faults run first, the rest are drawn after it
            pilot = 0 if getattr(self.sampler, "allocated", True) else self.sampler.pilot_faults
            adaptive = cfg.sampler.adaptive
            total = None if adaptive or pilot else len(self.sampler) * self.runs_per_fault
            # what a report of this store tells: being written (by this live process), or done
            state = {"pid": os.getpid(), "host": socket.gethostname(), "planned_runs": total}
            store.set_meta("state", {"status": "running", **state})
            progress = _Progress(cfg.progress, total=total, done=len(done))
            # per-fault outcome counts for the stopping rule and the allocation (design-based)
            acc = self._accumulator(store) if adaptive or pilot else None
            tap = self._engine_setup()
            rounds = Rounds(
                cfg,
                p,
                store,
                executor,
                tap,
                self._inputs_for,
                done,
                known,
                progress,
                acc,
            )
            with executor, progress:
                self._run_rounds(rounds, pilot)
            store.flush()
            store.set_meta("state", {"status": "complete", **state})
            result = self._result(store, tap.counts())
        except BaseException:
            if state is not None:  # interrupted or failed: reports say it stopped unfinished
                with contextlib.suppress(Exception):  # the original error matters more
                    store.set_meta("state", {"status": "stopped", **state})
            raise
        finally:
            store.close()
            torch.use_deterministic_algorithms(deterministic)
        if self.protection is not None:  # the store is complete and closed
            result.protection = self._protect(result)
        return result

    def _resume(self, store: ResultStore) -> tuple[set[tuple[int, int]], set[int]]:
        """Check a resumed store holds this very campaign (same golden outputs, fault sites and
        faults); returns the runs and the fault ids it already holds."""
        store.set_golden(self._golden_rows())
        store.set_sites(list(self.sites))
        done = store.done_runs()
        if done:
            log.info("resuming: %d runs already stored in %s", len(done), self.config.store_path)
        known = store.fault_ids()
        self._check_stored_faults(store, known, done)
        return done, known

    def _engine_setup(self) -> EngineTap:
        """The executor's engine builder (a picklable entry point for workers), keeping the
        engines built in this process for their hand-over counts."""
        e, p = self.config.engine, self.setup()
        return EngineTap(
            functools.partial(
                build_engine,
                e.name,
                p.model,
                p.inputs,
                p.golden.outputs,
                p.criterion,
                e.batch_size,
                e.fast,
                deterministic=e.deterministic,
                trace=p.trace,
            )
        )

    def _executor(self) -> Any:
        x = self.config.executor
        try:
            gpus = {"num_gpus": x.num_gpus} if x.name == "ray" else {}
            return EXECUTORS.create(x.name, workers=x.workers, address=x.address, **gpus)
        except ValueError as exc:
            raise ConfigError(f"executor.name: {exc}") from None

    def _run_rounds(self, rounds: Rounds, pilot: int) -> None:
        """Every round: the pilot (then the allocation), then rounds of ``adaptive_step`` faults
        with the stopping rule checked at each round's end over exactly the faults below it (an
        adaptive campaign), or one round of every fault."""
        adaptive = self.config.sampler.adaptive
        n_faults = len(self.sampler)
        step = self.config.sampler.adaptive_step if adaptive else max(n_faults, 1)
        begin = 0
        if pilot:
            rounds.run(0, pilot)
            self._allocate(rounds, pilot)
            n_faults, begin = len(self.sampler), pilot
            if not adaptive:
                step = max(n_faults - pilot, 1)
        for first in range(begin, n_faults, step):
            end = min(first + step, n_faults)
            rounds.run(first, end)
            if adaptive and end < n_faults and self._adaptive_done(rounds.acc, end):
                break

    def _allocate(self, rounds: Rounds, pilot: int) -> None:
        """Neyman allocation from the pilot round's per-stratum spread."""
        self.sampler.allocate(
            rounds.acc.stratum_sd(below=pilot),
            target_margin=self.config.sampler.margin if self.config.sampler.adaptive else None,
        )
        log.info("Neyman allocation after %d pilot faults: %s", pilot, self.sampler)
        self._check_stored_faults(rounds.store, rounds.known, rounds.done)

    def _result(self, store: ResultStore, handed_over: dict[str, int] | None) -> CampaignResult:
        """Every stored run (with its metrics, injected values and traces), the criterion's
        metrics and the runs handed to the reference engine (``handed_over``: by reason, in
        the runs of this call; ``None`` when engines ran in worker processes) logged."""
        result = CampaignResult(with_metrics(store, list(store.runs())), store.faults())
        result.handed_over = handed_over
        line = handed_over_line(self.config.engine.name, handed_over)
        if line is not None:
            log.info("%s", line)
        for name, per in result.metrics_summary().items():
            a = per["all"]
            log.info(
                "criterion metric %s over %d runs: mean %.6g, min %.6g, max %.6g",
                name,
                a["n"],
                a["mean"],
                a["min"],
                a["max"],
            )
        if self.config.injected_values:
            from torchfault.store import read_injected

            result.injected = read_injected(store)
        if self.trace_setup is not None:
            from torchfault.analysis import read_traces

            result.traces = read_traces(store)
        return result

    def _protect(self, result: CampaignResult) -> ProtectionResult:
        """Repeat every run of ``result`` under the protection; write ``protection.json``."""
        from torchfault.campaign._protection import protected_runs

        cfg, p = self.config, self.setup()
        by_fault: dict[int, list[int]] = {}
        for r in result.runs:
            by_fault.setdefault(r.fault_id, []).append(r.input_id)
        tasks = [
            RunTask(fid, tuple(result.faults[fid]), tuple(sorted(ids)))
            for fid, ids in sorted(by_fault.items())
        ]
        res = protected_runs(
            p.model,
            p.inputs,  # type: ignore[arg-type]
            p.golden.outputs,  # type: ignore[arg-type]
            p.criterion,
            tasks,
            result.runs,
            p.protection,
            cfg.engine.batch_size,
            p.labels,
        )
        summary = res.summary()
        doc = {
            "protection": cfg.protection.spec(),
            "summary": {  # NaN (no runs to divide by) as null: strict JSON
                k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()
            },
            "runs": [[r.fault_id, r.input_id, r.outcome, r.flagged, r.correct] for r in res.runs],
        }
        path = Path(cfg.run_dir) / "protection.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
        log.info(
            "protection %s: SDC %.4f -> %.4f, DUE %.4f -> %.4f, detection %.4f, false positives "
            "%.4f, overhead %+.0f%% (%s)",
            summary["protection"],
            summary["sdc_without"],
            summary["sdc_with"],
            summary["due_without"],
            summary["due_with"],
            summary["detection_rate"],
            summary["false_positive_rate"],
            100 * summary["overhead"],
            path,
        )
        return res

    def _accumulator(self, store: ResultStore) -> OutcomeAccumulator:
        """Per-fault outcome counts of the stored runs, with the sampler's design."""
        from torchfault.analysis import OutcomeAccumulator, SamplingDesign

        cfg = self.config
        acc = OutcomeAccumulator(
            store.faults(),
            confidence=cfg.sampler.confidence,
            method=cfg.interval,
            design=SamplingDesign.from_sampler(self.sampler, inputs=len(self.input_ids)),
        )
        acc.update(store.iter_runs())
        return acc

    def metrics_summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per metric its criterion returned, per outcome (and ``all``): count, mean, min and
        max over the stored runs (empty for criteria without metrics)."""
        from torchfault.campaign._run import summarize_metrics
        from torchfault.store import ResultStore

        with ResultStore(Path(self.config.store_path), mode="r") as store:
            return summarize_metrics(store.runs(), read_metrics(store))

    def _adaptive_done(self, acc: Any, below: int) -> bool:
        """The stopping rule at a round boundary, over the runs of faults ``< below`` only: the
        design-based SDC interval (faults as the sampling unit, strata weighted) is within the
        margin."""
        s = self.config.sampler
        est = acc.estimate("sdc", below=below)
        if not est.n:
            return False
        half = (est.high - est.low) / 2.0
        if half <= float(s.margin):  # type: ignore[arg-type]
            log.info(
                "adaptive stop after %d faults (%d runs): SDC rate %.4f, %s interval half-width %.4f <= margin %s",
                below,
                est.n,
                est.rate,
                self.config.interval,
                half,
                s.margin,
            )
            return True
        return False

    def _check_stored_faults(self, store: Any, known: set[int], done: set[tuple[int, int]]) -> None:
        """A resumed store must hold the faults this sampler draws: fault k is redrawn from
        (seed, k) for the runs still missing, so a sampler that changed (another torchfault
        version) would otherwise mix two samples. Checked on every fault with runs missing and
        on up to 32 others spread over the stored ones."""
        if not known:
            return
        stored_ids = sorted(known)
        check = set(stored_ids[:: max(1, len(stored_ids) // 32)])
        check.update(
            fid
            for fid in stored_ids
            if fid < len(self.sampler) and any((fid, i) not in done for i in self._inputs_for(fid))
        )
        stored = store.faults(check)
        for fid in sorted(check):
            if fid >= len(self.sampler):
                continue
            drawn = tuple(self.sampler.draw(fid))
            # compared as JSON: a NaN parameter (value: nan) is never == itself
            if _faults_json(stored.get(fid, ())) != _faults_json(drawn):
                raise StoreMismatchError(
                    f"store {str(self.config.store_path)!r}: fault {fid} is stored as "
                    f"{[f.to_dict() for f in stored.get(fid, ())]} but the sampler now draws "
                    f"{[f.to_dict() for f in drawn]} from seed {self.config.seed}: the sampler "
                    "changed (another torchfault version?). Resume with the version that "
                    "started the campaign, or start anew with --store.overwrite true."
                )

    def _golden_rows(self) -> list[tuple[int, int | None, int | None, str]]:
        assert self.golden is not None
        rows = []
        for i in range(len(self.golden)):
            h = hashlib.sha256()
            if isinstance(self.golden, torch.Tensor):
                h.update(self.golden[i].cpu().contiguous().view(torch.uint8).numpy().tobytes())
            else:
                for path, t in leaves(self.golden[i]):
                    h.update(path.encode())
                    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                    h.update(raw.numpy().tobytes())
            label = int(self.labels[i]) if self.labels is not None else None
            rows.append((i, self.golden_top1[i], label, h.hexdigest()[:16]))
        return rows

    def summary(self, result: CampaignResult | None = None) -> Summary:
        """The summary of the stored runs (layers in network order), with the config's
        confidence level (``sampler.confidence``) and interval method (``interval``)."""
        from torchfault.analysis import summarize_store
        from torchfault.store import ResultStore

        with ResultStore(Path(self.config.store_path), mode="r") as store:
            return summarize_store(store, self.config.sampler.confidence, self.config.interval)

    def describe(self) -> dict[str, Any]:
        """What the campaign will do: sites, population, faults, runs.

        For an adaptive campaign ``faults`` and ``runs`` are upper bounds (``adaptive`` is true).
        """
        self.setup()
        return {
            "model": self.config.model.name,
            "inputs": len(self.input_ids),
            "golden_accuracy": self.accuracy,
            "sites": len(self.sites),
            "population": self.sites.population,
            "faults": len(self.sampler),
            "runs": len(self.sampler) * self.runs_per_fault,
            "adaptive": self.config.sampler.adaptive,
            "store": self.config.store_path,
        }

    def plan_text(self) -> str:
        """One line: how many faults and runs (``up to`` for an adaptive campaign)."""
        info = self.describe()
        if not getattr(self.sampler, "allocated", True):
            budget = self.sampler.n_requested
            size = (
                f"up to {budget:,} faults" if budget else f"as many as margin {self.sampler.margin}"
            )
            return (
                f"a pilot round of {self.sampler.pilot_faults:,} faults, then Neyman allocation of "
                f"{size} ({self.runs_per_fault} run(s) per fault"
                + (
                    f"; adaptive: stops once the SDC interval half-width is <= "
                    f"{self.config.sampler.margin})"
                    if info["adaptive"]
                    else ")"
                )
            )
        if not info["adaptive"]:
            return f"{info['faults']:,} faults, {info['runs']:,} runs"
        s = self.config.sampler
        return (
            f"up to {info['faults']:,} faults (up to {info['runs']:,} runs; adaptive: stops once the SDC "
            f"interval half-width is <= {s.margin}, checked every {s.adaptive_step:,} faults)"
        )
