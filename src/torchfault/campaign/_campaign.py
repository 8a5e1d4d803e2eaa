# SPDX-License-Identifier: MIT
"""``Campaign``: the configurable, stored, resumable campaign behind ``torchfault campaign``.

1. Build the model and the inputs from the config; run the golden pass.
2. Find the fault space of the chosen targets; build the sampler (fault k = f(seed, k)).
   Every setting that could fail is checked here, before any store is opened.
3. Open the SQLite store: a new one records the campaign's identity (config and a fingerprint
   of model and inputs); an existing one must match it, its golden outputs and fault sites too,
   and its finished runs are skipped.
4. Run the missing runs in chunks through the executor; the main process writes every result.
   An adaptive campaign runs in rounds of ``sampler.adaptive_step`` faults and checks its
   stopping rule only at round ends, over exactly the faults below the boundary, so where it
   stops is a function of the config alone (not of chunking, workers or interruptions).
5. Summarize (rates with confidence intervals), export, report.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._config import CampaignConfig, check_topk
from torchfault.campaign._device import resolve_device
from torchfault.campaign._engine import (
    ENGINES,
    Engine,
    HandedOverEngine,
    MeasuredRun,
    ReferenceEngine,
    RunTask,
    reference_reason,
    take_golden,
)
from torchfault.campaign._executors import EXECUTORS
from torchfault.campaign._fast import FastEngine, FastOptions
from torchfault.campaign._outcome import Criterion, check_fit, evaluate
from torchfault.campaign._run import CampaignResult, golden_run
from torchfault.campaign._structure import Batched, as_batched, leaves, positional_args
from torchfault.config import load_factory
from torchfault.errors import ConfigError, StoreMismatchError, TorchFaultError, suggest
from torchfault.faults import TargetSpec, fault_space

__all__ = ["Campaign", "build_model", "build_inputs", "fingerprint", "build_engine"]

log = logging.getLogger("torchfault.campaign")


def _load_factory(spec: str) -> Any:
    """``config.load_factory(spec, "model.name")`` (kept for callers of the old name)."""
    return load_factory(spec, "model.name")


def _faults_json(faults: Any) -> str:
    """A fault tuple as canonical JSON (NaN written as NaN, so equal faults compare equal)."""
    return json.dumps([f.to_dict() for f in faults], sort_keys=True)


def build_model(cfg: CampaignConfig) -> nn.Module:
    """The model a campaign config names, in eval mode: dnn's one builder
    (:func:`torchfault.dnn.build_model`; a model of your own as its factory returns it, so faults
    name its own modules), or a Hugging Face model class."""
    from torchfault.dnn import build_model as build

    m = cfg.model
    factory = None
    if ":" in m.name and m.hub is None:
        factory = load_factory(m.name, "model.name")
        if _is_hf_model_class(factory):
            try:
                model = _build_hf(factory, m)
            except TypeError as exc:
                raise ConfigError(
                    f"model.kwargs: calling {m.name!r} with {dict(m.kwargs)} failed: {exc}",
                    field="model.kwargs",
                ) from None
            if m.checkpoint and not Path(m.checkpoint).is_dir():
                from torchfault.dnn import load_model_weights

                model = load_model_weights(model, m.checkpoint, quantized=m.quantized)
            return model.eval()
    return build(m, cfg.data, wrap=False, factory=factory)


def _is_hf_model_class(obj: Any) -> bool:
    """A Hugging Face ``transformers`` model class (built from its config class)."""
    return (
        isinstance(obj, type)
        and getattr(obj, "config_class", None) is not None
        and hasattr(obj, "from_pretrained")
    )


def _build_hf(cls: Any, m: Any) -> nn.Module:
    """``transformers:BertForSequenceClassification`` with ``model.kwargs`` as its config
    (random weights from the campaign seed), or ``model.checkpoint`` a local directory saved with
    ``save_pretrained`` (nothing is downloaded)."""
    if m.checkpoint and Path(m.checkpoint).is_dir():
        return cls.from_pretrained(m.checkpoint, local_files_only=True)
    try:
        config = cls.config_class(**m.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"model.kwargs: {cls.config_class.__name__}({dict(m.kwargs)}) failed: {exc}",
            field="model.kwargs",
        ) from None
    return cls(config)


def _structured_inputs(cfg: CampaignConfig) -> tuple[Any, torch.Tensor | None] | None:
    """Inputs of a dataset of your own whose items are not ``(tensor, class)`` pairs batched on
    dim 0: dicts or tuples of tensors (or any batch_dim), stacked along ``data.batch_dim``.
    ``None``: the classic path (``dnn.create_dataset``) applies."""
    from collections.abc import Mapping

    d = cfg.data
    if ":" not in d.dataset:
        return None
    factory = load_factory(d.dataset, "data.dataset")
    try:
        ds = factory(split=d.split, **d.kwargs)
    except TypeError as exc:
        raise ConfigError(f"data.kwargs: {d.dataset!r}: {exc}", field="data.kwargs") from None
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__") or len(ds) == 0:
        return None
    first = ds[0]

    def split(item: Any) -> tuple[Any, Any]:
        if isinstance(item, Mapping):
            return item, None
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return item[0], item[1]
        return item, None

    x0, y0 = split(first)
    label_like = y0 is not None and (
        isinstance(y0, int) or (isinstance(y0, torch.Tensor) and y0.numel() == 1)
    )
    if isinstance(x0, torch.Tensor) and d.batch_dim == 0 and label_like:
        return None
    n = len(ds) if d.num_inputs == 0 else min(d.num_inputs, len(ds))
    items = [split(ds[i]) for i in range(n)]

    def stack(values: list[Any], where: str) -> Any:
        v0 = values[0]
        if isinstance(v0, Mapping):
            return {k: stack([v[k] for v in values], f"{where}.{k}") for k in v0}
        if isinstance(v0, (tuple, list)):
            return tuple(stack([v[j] for v in values], f"{where}.{j}") for j in range(len(v0)))
        if v0 is None or isinstance(v0, (bool, str)):
            return v0
        try:
            return torch.stack([torch.as_tensor(v) for v in values], dim=d.batch_dim)
        except RuntimeError as exc:
            raise ConfigError(
                f"data.dataset: the items' {where} do not batch along data.batch_dim "
                f"{d.batch_dim}: {exc}",
                field="data.dataset",
            ) from None

    try:
        inputs = as_batched(stack([x for x, _ in items], "input"), d.batch_dim, "data")
    except TorchFaultError as exc:
        raise ConfigError(str(exc), field="data.batch_dim") from None
    labels = None
    if all(y is not None for _, y in items):
        try:
            labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError):
            labels = None  # not classes (regression targets, masks): no accuracy
    return inputs, labels


def _shape_text(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape[1:]))
    return ", ".join(f"{p}: {tuple(t.shape)}" for p, t in inputs.tensors())


def build_inputs(cfg: CampaignConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inputs (stacked) and labels a campaign config names."""
    from torchfault import dnn
    from torchfault.dnn import SPLITS

    d = cfg.data
    structured = _structured_inputs(cfg) if d.split in SPLITS else None
    if structured is not None:
        return structured
    if d.batch_dim != 0:
        raise ConfigError(
            f"data.batch_dim: {d.batch_dim} is for datasets of your own (file.py:function) whose "
            f"items are batched along another dim; {d.dataset!r} gives inputs batched on dim 0.",
            field="data.batch_dim",
        )
    if d.split not in SPLITS:
        raise ConfigError(
            f"data.split: unknown split {d.split!r}; valid splits: {', '.join(SPLITS)}.{suggest(d.split, SPLITS)}"
        )
    ds = dnn.build_dataset(d)  # errors name data.dataset, data.split or data.kwargs
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
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(inputs, Batched):
        for path, t in inputs.tensors():
            h.update(f"{path}:{t.dtype}:{tuple(t.shape)}:{inputs.dim}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(inputs.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    if labels is not None:
        h.update(labels.cpu().numpy().tobytes())
    return h.hexdigest()


def build_engine(
    engine: str,
    model: nn.Module,
    inputs: torch.Tensor | Batched,
    golden: torch.Tensor | list[Any],
    criterion: Criterion,
    batch_size: int,
    fast: FastOptions | None = None,
    deterministic: bool = False,
) -> Engine:
    """Build an engine (a picklable entry point for executor workers); ``fast``: the fast
    engine's options (``engine.fast``); ``deterministic``: switch on
    ``torch.use_deterministic_algorithms`` in this process (``engine.deterministic``)."""
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        cls = ENGINES.get(engine)
    except ValueError as exc:
        raise ConfigError(f"engine.name: {exc}") from None
    if cls is not ReferenceEngine and not getattr(cls, "any_structure", False):
        # structures, metrics and devices the engine was not made for: the reference engine
        reason = reference_reason(inputs, golden, criterion)
        if reason is not None:
            return HandedOverEngine(engine, reason, model, inputs, golden, criterion, batch_size)
    if fast is not None and issubclass(cls, FastEngine):
        return cls(model, inputs, golden, criterion, batch_size, options=fast)
    return cls(model, inputs, golden, criterion, batch_size)


def _sampler_error(exc: BaseException) -> ConfigError:
    """A sampler's error as a ConfigError about the ``sampler.<field>`` it carries (set where
    the sampler raised it), or about ``sampler`` as a whole."""
    from torchfault.campaign._config import SamplerConfig

    msg = str(exc)
    own = getattr(exc, "field", None)
    where = f"sampler.{own}" if own in SamplerConfig.__dataclass_fields__ else "sampler"
    if isinstance(own, str) and own.startswith("targets."):
        where = own  # a sampler that cannot use the chosen targets (memory: no activations)
    return ConfigError(msg if msg.startswith(where) else f"{where}: {msg}", field=where)


def _check_fault_model(
    name: str, params: dict[str, Any], fmt_name: str, bits: tuple[int, ...]
) -> None:
    """Apply fault model ``name`` with ``params`` once to a scratch tensor; a ConfigError naming
    ``sampler.fault_model`` or ``sampler.params`` when it cannot be used."""
    from torchfault import numerics
    from torchfault.faults import FAULT_MODELS

    try:
        fn = FAULT_MODELS.get(name)
    except ValueError as exc:
        raise ConfigError(f"sampler.fault_model: {exc}") from None
    if FAULT_MODELS.info(name).capabilities.get("bit_op") is not None and params:
        # bitwise models are applied as one vectorised op: parameters would be ignored silently
        raise ConfigError(
            f"sampler.params: fault model {name!r} takes no parameters, got {dict(params)}."
        )
    try:
        fmt = numerics.get_format(fmt_name)
        if fmt.kind not in ("float", "int", "fixed"):
            fmt = numerics.get_format("float32")
    except TorchFaultError:
        fmt = numerics.get_format("float32")
    x = torch.zeros(4, dtype=fmt.value_dtype or torch.float32)
    try:
        fn(x, torch.tensor([1]), bits, fmt, torch.Generator().manual_seed(0), **params)
    except TypeError as exc:
        raise ConfigError(
            f"sampler.params: fault model {name!r} does not take {dict(params)}: {exc}"
        ) from None
    except (TorchFaultError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"sampler.params: {exc}") from None


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
        self.golden: torch.Tensor | list[Any] | None = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build model, inputs, golden outputs, fault space and sampler (idempotent)."""
        if self.model is not None:
            return
        cfg = self.config
        if cfg.engine.threads:
            torch.set_num_threads(cfg.engine.threads)
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.engine.device, "engine.device")
        self.criterion = cfg.outcome.criterion_object()
        self.model = build_model(cfg).to(device)
        self.inputs, self.labels = build_inputs(cfg)
        self.inputs = self.inputs.to(device)
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            if cfg.engine.deterministic:
                torch.use_deterministic_algorithms(True)
            self.golden = golden_run(self.model, self.inputs, cfg.engine.batch_size)
        except Exception as exc:  # the model cannot run on these inputs: a config problem
            shape = _shape_text(self.inputs)
            raise ConfigError(
                f"model.name / data.dataset: the golden run of {cfg.model.name!r} on "
                f"{cfg.data.dataset!r} inputs of shape {shape} failed "
                f"({type(exc).__name__}: {exc}). Check that the model is built for this data "
                "(model.dataset, model.kwargs, data.kwargs)."
            ) from exc
        finally:
            torch.use_deterministic_algorithms(deterministic)
        if cfg.outcome.topk != 1 or cfg.outcome.criterion == "topk":
            check_topk(self.golden, cfg.outcome.topk, "outcome.topk")
        try:
            check_fit(self.golden, self.criterion)
        except TorchFaultError as exc:
            out_err = str(exc).startswith("outcome.output")
            where = "outcome.output" if out_err else "outcome.criterion"
            raise ConfigError(str(exc), field=where) from None
        n_inputs = len(self.inputs)
        tops = evaluate(
            take_golden(self.golden, range(n_inputs)),
            take_golden(self.golden, range(n_inputs)),
            self.criterion,
        ).golden_top1
        self.golden_top1 = tops
        top1 = torch.tensor([-1 if t is None else t for t in tops], dtype=torch.int64)
        has_classes = all(t is not None for t in tops)
        ids = list(range(n_inputs))
        if cfg.data.only_correct and self.labels is not None:
            if not has_classes:
                raise ConfigError(
                    f"data.only_correct: criterion {self.criterion.label!r} gives no class per "
                    "input to compare with the labels.",
                    field="data.only_correct",
                )
            ids = [i for i in ids if int(top1[i]) == int(self.labels[i])]
            if not ids:
                raise TorchFaultError(
                    "data.only_correct: the golden model classifies no input correctly."
                )
        self.input_ids = ids
        self.accuracy = (
            float((top1 == self.labels.to(top1.device)).double().mean())
            if self.labels is not None and has_classes
            else None
        )
        t = cfg.targets
        if t.format is not None:
            from torchfault import numerics

            try:
                numerics.get_format(t.format)
            except ValueError as exc:
                raise ConfigError(f"targets.format: {exc}") from None
        try:
            targets = TargetSpec(
                modules=list(t.modules) or None, kinds=tuple(t.kinds), format=t.format
            )
            probe = (
                positional_args(self.model, self.inputs[:2])
                if isinstance(self.inputs, Batched)
                else self.inputs[:2]
            )
            self.sites = fault_space(self.model, probe, targets)
        except ValueError as exc:
            own = getattr(exc, "field", None)
            where = f"targets.{own}" if own in ("modules", "kinds", "format") else "targets"
            raise ConfigError(f"{where}: {exc}", field=where) from None
        if not self.sites:
            raise ConfigError("targets: the chosen modules and kinds hold no tensor to fault.")
        s = cfg.sampler
        try:
            from torchfault.faults import FAULT_MODELS

            FAULT_MODELS.get(s.fault_model)
        except ValueError as exc:
            raise ConfigError(f"sampler.fault_model: {exc}") from None
        self.sampler = self._make_sampler()
        self._check_margin_reachable()
        _check_fault_model(
            s.fault_model,
            dict(s.params),
            self.sampler.sites[0].format,
            self.sampler.site_bits[0][:1],
        )
        try:
            ENGINES.get(cfg.engine.name)
        except ValueError as exc:
            raise ConfigError(f"engine.name: {exc}") from None
        try:
            EXECUTORS.get(cfg.executor.name)
        except ValueError as exc:
            raise ConfigError(f"executor.name: {exc}") from None
        self.fingerprint = fingerprint(self.model, self.inputs, self.labels)
        self._setup_protection()

    def _setup_protection(self) -> None:
        """Build and check ``protection`` on the model (before the store is opened)."""
        self.protection = None
        if self.config.injected_values and not isinstance(self.inputs, torch.Tensor):
            raise ConfigError(
                "injected_values: needs a tensor of inputs (rows first).", field="injected_values"
            )
        self.trace_setup = None
        tc = self.config.trace
        if tc.enabled:
            from torchfault.analysis import layer_order
            from torchfault.injectors import load_profile

            if not isinstance(self.inputs, torch.Tensor):
                raise ConfigError("trace.enabled: needs a tensor of inputs.", field="trace.enabled")
            try:
                prof = load_profile(tc.profile, self.model) if tc.profile else None
                probe = self.inputs[[0] * 16]
                order = layer_order(self.model, probe, tc.layers)  # type: ignore[arg-type]
            except TorchFaultError as exc:
                where = "trace.profile" if exc.field == "profile" else "trace.layers"
                raise ConfigError(f"{where}: {exc}", field=where) from None
            self.trace_setup = (order, prof)
        spec = self.config.protection.spec()
        if spec is None:
            return
        from torchfault.campaign._protection import resolve_protection

        if not isinstance(self.inputs, torch.Tensor) or not isinstance(self.golden, torch.Tensor):
            raise ConfigError(
                "protection.name: protected runs need a tensor of inputs and one output tensor.",
                field="protection.name",
            )
        try:
            self.protection = resolve_protection(spec)
            self.protection.bind(self.model)
        except TorchFaultError as exc:
            own = exc.field if exc.field not in (None, "protection") else "name"
            where = own if own.startswith("protection") else f"protection.{own}"
            msg = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
            raise ConfigError(msg, field=where) from None

    def _protect(self, result: CampaignResult) -> Any:
        """Repeat every run of ``result`` under the protection; write ``protection.json``."""
        from torchfault.campaign._protection import protected_runs

        cfg = self.config
        by_fault: dict[int, list[int]] = {}
        for r in result.runs:
            by_fault.setdefault(r.fault_id, []).append(r.input_id)
        tasks = [
            RunTask(fid, tuple(result.faults[fid]), tuple(sorted(ids)))
            for fid, ids in sorted(by_fault.items())
        ]
        res = protected_runs(
            self.model,  # type: ignore[arg-type]
            self.inputs,  # type: ignore[arg-type]
            self.golden,  # type: ignore[arg-type]
            self.criterion,
            tasks,
            result.runs,
            self.protection,  # type: ignore[arg-type]
            cfg.engine.batch_size,
            self.labels,
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

    def _check_margin_reachable(self) -> None:
        """An adaptive campaign whose margin cannot be reached within ``sampler.max_faults``
        faults even if no fault ever gave an SDC is refused: it would run them all in vain."""
        from torchfault.analysis import interval_from_rate

        s = self.config.sampler
        if not s.adaptive or s.margin is None:
            return
        strata = self.sampler.strata()
        population = math.inf if strata is None else sum(strata.values())
        budget = min(s.max_faults, population)
        if budget >= population:
            return  # the whole population: the rate becomes exact
        n_eff = budget / (1.0 - budget / population) if math.isfinite(population) else budget
        low, high = interval_from_rate(0.0, n_eff, s.confidence, self.config.interval)
        if (high - low) / 2.0 > s.margin:
            raise ConfigError(
                f"sampler.margin: {s.margin} cannot be reached within sampler.max_faults = "
                f"{s.max_faults:,} faults (population {population:,}): even with no SDC at all "
                f"the {self.config.interval} interval's half-width stays {(high - low) / 2.0:.2g}. "
                "Raise sampler.max_faults or sampler.margin.",
                field="sampler.margin",
            )

    def _make_sampler(self) -> Any:
        from torchfault.samplers import SAMPLERS, create_sampler

        s = self.config.sampler
        kw: dict[str, Any] = {
            "sites": list(self.sites),
            "seed": self.config.seed,
            "fault_model": s.fault_model,
            "bits": s.bits,
            "persistence": s.persistence,
            "params": dict(s.params),
        }
        info = SAMPLERS.info(s.name) if SAMPLERS.is_registered(s.name) else None
        if info is not None and info.capabilities.get("needs_model"):
            kw["model"] = self.model  # memory, nonzero: they read the model's tensors
        if s.memory is not None:
            kw.update(s.memory)
        if s.name == "stratified":
            kw.update(allocation=s.allocation, strata=s.strata, bit_groups=s.bit_groups)
            kw["pilot"] = s.pilot
        if s.name == "ber":
            kw["rate"] = s.rate
            kw["n"] = s.max_faults if s.adaptive else s.n  # the config requires one of them
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
            raise _sampler_error(exc) from None

    def _inputs_for(self, k: int) -> tuple[int, ...]:
        ids = self.input_ids
        per = self.config.inputs_per_fault
        if per == 0 or per >= len(ids):
            return tuple(ids)
        return tuple(ids[(k * per + j) % len(ids)] for j in range(per))

    # ---------------------------------------------------------------- running
    #: What a refused store asks of the user (the store's own advice names its Python API).
    STORE_ADVICE = (
        "To keep both, give the campaign another store.path; to discard the stored results and start "
        "afresh, set store.overwrite: true (on the command line: --store.overwrite true)."
    )

    def open_store(self) -> Any:
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

    @property
    def runs_per_fault(self) -> int:
        """Inputs each fault runs on."""
        return len(self._inputs_for(0))

    def run(self) -> CampaignResult:
        """Run (or resume) the campaign; returns every stored run."""
        from torchfault.store import FaultRecord

        self.setup()
        cfg = self.config
        deterministic = torch.are_deterministic_algorithms_enabled()
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        assert self.model is not None and self.inputs is not None and self.golden is not None
        store = self.open_store()
        state: dict[str, Any] | None = None
        try:
            # a resumed store must hold this very model: same golden outputs, same fault sites
            store.set_golden(self._golden_rows())
            store.set_sites(list(self.sites))
            done = store.done_runs()
            if done:
                log.info("resuming: %d runs already stored in %s", len(done), cfg.store_path)
            # Neyman allocation: the pilot faults run first, the rest are drawn after it
            pilot = 0 if getattr(self.sampler, "allocated", True) else self.sampler.pilot_faults
            n_faults = len(self.sampler)
            adaptive = cfg.sampler.adaptive
            crit = self.criterion
            setup = functools.partial(
                build_engine,
                cfg.engine.name,
                self.model,
                self.inputs,
                self.golden,
                crit,
                cfg.engine.batch_size,
                cfg.engine.fast,
                deterministic=cfg.engine.deterministic,
            )
            try:
                executor = EXECUTORS.create(
                    cfg.executor.name, workers=cfg.executor.workers, address=cfg.executor.address
                )
            except ValueError as exc:
                raise ConfigError(f"executor.name: {exc}") from None
            chunk = cfg.executor.chunk_faults
            known = store.fault_ids()
            self._check_stored_faults(store, known, done)
            total = None if adaptive or pilot else n_faults * self.runs_per_fault
            # what a report of this store tells: being written (by this live process), or done
            state = {"pid": os.getpid(), "host": socket.gethostname(), "planned_runs": total}
            store.set_meta("state", {"status": "running", **state})
            progress = _Progress(cfg.progress, total=total, done=len(done))
            # adaptive: rounds of adaptive_step faults, the stopping rule checked at each round's
            # end over exactly the faults below it; otherwise one round of every fault
            step = cfg.sampler.adaptive_step if adaptive else max(n_faults, 1)
            # per-fault outcome counts for the stopping rule and the allocation (design-based)
            acc = self._accumulator(store) if adaptive or pilot else None

            def run_round(first: int, end: int) -> None:
                chunks = []
                new_faults = []
                for start in range(first, end, chunk):
                    tasks = []
                    for fid in range(start, min(start + chunk, end)):
                        ids = tuple(i for i in self._inputs_for(fid) if (fid, i) not in done)
                        if not ids:
                            continue
                        faults = self.sampler.draw(fid)
                        if acc is not None:
                            acc.add_faults({fid: faults})
                        if fid not in known:
                            new_faults.append(FaultRecord(fid, faults))
                        tasks.append(RunTask(fid, faults, ids))
                    if tasks:
                        chunks.append(tasks)
                if new_faults:
                    store.add_faults(new_faults)
                    store.flush()
                if cfg.injected_values:  # first: a stored run has its injected values
                    from torchfault.campaign._injected import injected_rows
                    from torchfault.store import write_injected

                    for tasks in chunks:
                        write_injected(store, injected_rows(self.model, self.inputs, tasks))
                if self.trace_setup is not None:  # first, too: a stored run has its trace
                    from torchfault.analysis import trace_rows, trace_runs
                    from torchfault.store import write_traces

                    order, prof = self.trace_setup
                    for tasks in chunks:
                        spec = [(t.fault_id, t.faults, t.input_ids) for t in tasks]
                        traces = trace_runs(self.model, self.inputs, spec, order, profile=prof)
                        write_traces(store, order, trace_rows(traces, order))
                for records in executor.map(setup, chunks):
                    _store_metrics(store, records)  # first: a stored run has its metrics
                    store.add_runs(records)
                    if acc is not None:
                        acc.update(records)
                    progress.advance(len(records))
                store.flush()

            with executor, progress:
                begin = 0
                if pilot:
                    run_round(0, pilot)
                    assert acc is not None
                    self.sampler.allocate(
                        acc.stratum_sd(below=pilot),
                        target_margin=cfg.sampler.margin if adaptive else None,
                    )
                    log.info("Neyman allocation after %d pilot faults: %s", pilot, self.sampler)
                    n_faults, begin = len(self.sampler), pilot
                    self._check_stored_faults(store, known, done)
                    if not adaptive:
                        step = max(n_faults - pilot, 1)
                for first in range(begin, n_faults, step):
                    end = min(first + step, n_faults)
                    run_round(first, end)
                    if adaptive and end < n_faults and self._adaptive_done(acc, end):
                        break
            store.flush()
            store.set_meta("state", {"status": "complete", **state})
            result = CampaignResult(_with_metrics(store, list(store.runs())), store.faults())
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
            if cfg.injected_values:
                from torchfault.store import read_injected

                result.injected = read_injected(store)
            if self.trace_setup is not None:
                from torchfault.analysis import read_traces

                result.traces = read_traces(store)
        except BaseException:
            if state is not None:  # interrupted or failed: reports say it stopped unfinished
                try:
                    store.set_meta("state", {"status": "stopped", **state})
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
            raise
        finally:
            store.close()
            torch.use_deterministic_algorithms(deterministic)
        if getattr(self, "protection", None) is not None:  # the store is complete and closed
            result.protection = self._protect(result)
        return result

    def _accumulator(self, store: Any) -> Any:
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

    def summary(self, result: CampaignResult | None = None) -> Any:
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


_METRICS_TABLE = (
    "CREATE TABLE IF NOT EXISTS run_metrics(fault_id INTEGER NOT NULL, input_id INTEGER NOT NULL, "
    "name TEXT NOT NULL, value REAL, PRIMARY KEY(fault_id, input_id, name)) WITHOUT ROWID"
)


def _store_metrics(store: Any, records: list[Any]) -> None:
    """Write the metrics of ``records`` (criteria that return metrics) to the store's
    ``run_metrics`` table, in one transaction, before their runs are written: a resumed campaign
    reruns a run without a row, and its metrics are replaced."""
    rows = [
        (r.fault_id, r.input_id, name, value)
        for r in records
        for name, value in getattr(r, "metrics", ())
    ]
    if not rows:
        return
    conn = store.conn
    conn.execute(_METRICS_TABLE)
    with conn:
        conn.executemany("INSERT OR REPLACE INTO run_metrics VALUES (?, ?, ?, ?)", rows)


def read_metrics(store: Any) -> dict[tuple[int, int], dict[str, float | None]]:
    """``(fault_id, input_id)`` -> metrics, from a store's ``run_metrics`` table (empty when the
    campaign's criterion returns none)."""
    conn = store.conn
    have = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='run_metrics'"
    ).fetchone()
    out: dict[tuple[int, int], dict[str, float | None]] = {}
    if have:
        for fid, iid, name, value in conn.execute(
            "SELECT fault_id, input_id, name, value FROM run_metrics ORDER BY fault_id, input_id, name"
        ):
            out.setdefault((int(fid), int(iid)), {})[str(name)] = value
    return out


def _with_metrics(store: Any, runs: list[Any]) -> list[Any]:
    metrics = read_metrics(store)
    if not metrics:
        return runs
    return [
        MeasuredRun(*r.as_tuple(), tuple(sorted(metrics[(r.fault_id, r.input_id)].items())))  # type: ignore[call-arg]
        if (r.fault_id, r.input_id) in metrics
        else r
        for r in runs
    ]


class _Progress:
    """A rich progress bar with runs/s and ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int | None, done: int) -> None:
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
