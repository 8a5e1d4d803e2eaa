# SPDX-License-Identifier: MIT
"""``Campaign``: the configurable, stored, resumable campaign behind ``torchfault campaign``.

1. Build the model and the inputs from the config; run the golden pass.
2. Find the fault space of the chosen targets; build the sampler (fault k = f(seed, k)).
3. Open the SQLite store: a new one records the campaign's identity (config and a fingerprint
   of model and inputs); an existing one must match it, and its finished runs are skipped.
4. Run the missing runs in chunks through the executor; the main process writes every result.
5. Summarize (rates with confidence intervals), export, report.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._config import CampaignConfig
from torchfault.campaign._engine import ENGINES, Engine, RunTask
from torchfault.campaign._executors import EXECUTORS
from torchfault.campaign._outcome import Criterion
from torchfault.campaign._run import CampaignResult, golden_run
from torchfault.errors import ConfigError, StoreMismatchError, TorchFaultError, suggest
from torchfault.faults import TargetSpec, fault_space

__all__ = ["Campaign", "build_model", "build_inputs", "fingerprint", "build_engine"]

log = logging.getLogger("torchfault.campaign")


def _load_factory(spec: str) -> Any:
    mod_name, _, fn_name = spec.rpartition(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise ConfigError(f"model.name: no such file {mod_name!r}.")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ConfigError(f"model.name: cannot import {mod_name!r}: {exc}") from None
    try:
        return getattr(module, fn_name)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"model.name: {mod_name!r} has no {fn_name!r}.{suggest(fn_name, names)}") from None


def build_model(cfg: CampaignConfig) -> nn.Module:
    """The model a campaign config names, in eval mode."""
    m = cfg.model
    if ":" in m.name:
        model = _load_factory(m.name)(**m.kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.name: {m.name!r} returned {type(model).__name__}, not an nn.Module.")
    else:
        from torchfault import dnn

        try:
            model = dnn.create_model(m.name, dataset=m.dataset, pretrained=m.pretrained and not m.checkpoint, **m.kwargs)
        except ValueError as exc:
            raise ConfigError(f"model.name: {exc}") from None
    if m.checkpoint:
        from torchfault.dnn import load_checkpoint

        state = load_checkpoint(m.checkpoint)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    return model.eval()


def build_inputs(cfg: CampaignConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inputs (stacked) and labels a campaign config names."""
    from torchfault import dnn

    d = cfg.data
    try:
        ds = dnn.create_dataset(d.dataset, split=d.split, **d.kwargs)
    except ValueError as exc:
        raise ConfigError(f"data.dataset: {exc}") from None
    n = len(ds) if d.num_inputs == 0 else min(d.num_inputs, len(ds))
    xs, ys = [], []
    for i in range(n):
        x, y = ds[i]
        xs.append(torch.as_tensor(x))
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def fingerprint(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """SHA-256 over the model's state (names, dtypes, shapes, bytes) and the inputs' bytes."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r}".encode())
            continue
        if t.is_quantized:
            t = t.int_repr()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(inputs.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    if labels is not None:
        h.update(labels.cpu().numpy().tobytes())
    return h.hexdigest()


def build_engine(
    engine: str,
    model: nn.Module,
    inputs: torch.Tensor,
    golden: torch.Tensor,
    criterion: Criterion,
    batch_size: int,
) -> Engine:
    """Build an engine (a picklable entry point for executor workers)."""
    try:
        cls = ENGINES.get(engine)
    except ValueError as exc:
        raise ConfigError(f"engine.name: {exc}") from None
    return cls(model, inputs, golden, criterion, batch_size)


@dataclass
class _Plan:
    tasks: list[RunTask]
    total_runs: int
    done_runs: int


class Campaign:
    """A stored, resumable campaign built from a :class:`CampaignConfig`.

    Example:
        >>> from torchfault import Campaign, CampaignConfig
        >>> cfg = CampaignConfig(name="doc")  # defaults: pretrained LeNet on digits, 1% margin
        >>> cfg.sampler.margin, cfg.model.name
        (0.01, 'lenet')
    """

    def __init__(self, config: CampaignConfig | dict[str, Any]) -> None:
        if isinstance(config, dict):
            from torchfault.config import from_dict

            config = from_dict(CampaignConfig, config)
        self.config = config
        self.model: nn.Module | None = None
        self.inputs: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.golden: torch.Tensor | None = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build model, inputs, golden outputs, fault space and sampler (idempotent)."""
        if self.model is not None:
            return
        cfg = self.config
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg)
        self.inputs, self.labels = build_inputs(cfg)
        self.golden = golden_run(self.model, self.inputs, cfg.engine.batch_size)
        top1 = self.golden.reshape(self.golden.shape[0], -1).argmax(dim=1)
        ids = list(range(self.inputs.shape[0]))
        if cfg.data.only_correct and self.labels is not None:
            ids = [i for i in ids if int(top1[i]) == int(self.labels[i])]
            if not ids:
                raise TorchFaultError("data.only_correct: the golden model classifies no input correctly.")
        self.input_ids = ids
        self.accuracy = float((top1 == self.labels).double().mean()) if self.labels is not None else None
        t = cfg.targets
        try:
            targets = TargetSpec(modules=list(t.modules) or None, kinds=tuple(t.kinds), format=t.format)
            self.sites = fault_space(self.model, self.inputs[:2], targets)
        except ValueError as exc:
            raise ConfigError(f"targets: {exc}") from None
        if not self.sites:
            raise ConfigError("targets: the chosen modules and kinds hold no tensor to fault.")
        self.sampler = self._make_sampler()
        self.fingerprint = fingerprint(self.model, self.inputs, self.labels)

    def _make_sampler(self) -> Any:
        from torchfault.samplers import create_sampler

        s = self.config.sampler
        kw: dict[str, Any] = {
            "sites": list(self.sites),
            "seed": self.config.seed,
            "fault_model": s.fault_model,
            "bits": s.bits,
            "persistence": s.persistence,
            "params": dict(s.params),
        }
        if s.name == "ber":
            kw["rate"] = s.rate
            kw["n"] = s.n or s.max_faults
        elif s.name == "exhaustive":
            pass  # every (element, bit) pair of the chosen sites
        elif s.adaptive:
            kw["n"] = s.max_faults
        elif s.n is not None:
            kw["n"] = s.n
        else:
            kw["margin"], kw["confidence"] = s.margin, s.confidence
        try:
            return create_sampler(s.name, **kw)
        except ValueError as exc:
            raise ConfigError(f"sampler: {exc}") from None

    def _inputs_for(self, k: int) -> tuple[int, ...]:
        ids = self.input_ids
        per = self.config.inputs_per_fault
        if per == 0 or per >= len(ids):
            return tuple(ids)
        return tuple(ids[(k * per + j) % len(ids)] for j in range(per))

    # ---------------------------------------------------------------- running
    def open_store(self) -> Any:
        from torchfault.store import ResultStore

        cfg = self.config
        path = Path(cfg.store_path)
        if cfg.store.overwrite and path.exists():
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
        try:
            return ResultStore(path, campaign=cfg.identity(), fingerprint=self.fingerprint, chunk_size=cfg.store.chunk_size)
        except StoreMismatchError:
            raise
        except (OSError, sqlite3.Error, TorchFaultError) as exc:
            raise ConfigError(f"store.path: cannot open the store {str(path)!r}: {exc}") from None

    def run(self) -> CampaignResult:
        """Run (or resume) the campaign; returns every stored run."""
        from torchfault.store import FaultRecord

        self.setup()
        cfg = self.config
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        assert self.model is not None and self.inputs is not None and self.golden is not None
        store = self.open_store()
        try:
            if not store.golden():
                store.set_golden(self._golden_rows())
            done = store.done_runs()
            n_faults = len(self.sampler)
            crit = Criterion(cfg.outcome.criterion, cfg.outcome.topk, cfg.outcome.tolerance)
            setup = functools.partial(
                build_engine, cfg.engine.name, self.model, self.inputs, self.golden, crit, cfg.engine.batch_size
            )
            try:
                executor = EXECUTORS.create(cfg.executor.name, workers=cfg.executor.workers, address=cfg.executor.address)
            except ValueError as exc:
                raise ConfigError(f"executor.name: {exc}") from None
            chunk = cfg.executor.chunk_faults
            known = store.done_fault_ids()
            progress = _Progress(cfg.progress, total=n_faults * len(self._inputs_for(0)), done=len(done))
            with executor, progress:
                k = 0
                while k < n_faults:
                    stop = min(k + chunk, n_faults)
                    if cfg.sampler.adaptive and self._adaptive_done(store):
                        log.info("adaptive stop: SDC interval half-width <= %s after %d faults", cfg.sampler.margin, k)
                        break
                    # one 'round' of chunks: adaptive campaigns check the rule between rounds
                    round_stop = stop if cfg.sampler.adaptive else n_faults
                    chunks = []
                    new_faults = []
                    for start in range(k, round_stop, chunk):
                        tasks = []
                        for fid in range(start, min(start + chunk, round_stop)):
                            ids = tuple(i for i in self._inputs_for(fid) if (fid, i) not in done)
                            if not ids:
                                continue
                            faults = self.sampler.draw(fid)
                            if fid not in known:
                                new_faults.append(FaultRecord(fid, faults))
                            tasks.append(RunTask(fid, faults, ids))
                        if tasks:
                            chunks.append(tasks)
                    if new_faults:
                        store.add_faults(new_faults)
                        store.flush()
                    for records in executor.map(setup, chunks):
                        store.add_runs(records)
                        progress.advance(len(records))
                    store.flush()
                    k = round_stop
            store.flush()
            result = CampaignResult(list(store.runs()), store.faults())
        finally:
            store.close()
        return result

    def _adaptive_done(self, store: Any) -> bool:
        from torchfault.analysis import should_stop

        counts = store.outcome_counts()
        total = sum(counts.values())
        if not total:
            return False
        s = self.config.sampler
        return bool(should_stop(counts.get("sdc", 0), total, s.margin, s.confidence))

    def _golden_rows(self) -> list[tuple[int, int, int | None, str]]:
        assert self.golden is not None
        flat = self.golden.reshape(self.golden.shape[0], -1)
        rows = []
        for i in range(flat.shape[0]):
            digest = hashlib.sha256(flat[i].contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
            label = int(self.labels[i]) if self.labels is not None else None
            rows.append((i, int(flat[i].argmax()), label, digest))
        return rows

    def summary(self, result: CampaignResult | None = None) -> Any:
        """The summary of the stored runs."""
        from torchfault.store import ResultStore

        with ResultStore(Path(self.config.store_path), mode="r") as store:
            return store.summary()

    def describe(self) -> dict[str, Any]:
        """What the campaign will do: sites, population, faults, runs."""
        self.setup()
        return {
            "model": self.config.model.name,
            "inputs": len(self.input_ids),
            "golden_accuracy": self.accuracy,
            "sites": len(self.sites),
            "population": self.sites.population,
            "faults": len(self.sampler),
            "runs": len(self.sampler) * len(self._inputs_for(0)),
            "store": self.config.store_path,
        }


class _Progress:
    """A rich progress bar with runs/s and ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done, self.new = enabled, total, done, 0
        self.t0 = time.perf_counter()
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]campaign"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} runs/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("runs", total=self.total, completed=self.done, rate="-")
        return self

    def advance(self, n: int) -> None:
        self.done += n
        self.new += n
        if self._bar is not None:
            rate = self.new / max(time.perf_counter() - self.t0, 1e-9)
            self._bar.update(self._task, advance=n, rate=f"{rate:,.0f}")

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
