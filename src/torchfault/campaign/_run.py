# SPDX-License-Identifier: MIT
"""``run_campaign``: every fault on every input, in memory, with a result to count and summarize."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._device import resolve_device
from torchfault.campaign._engine import DEFAULT_ENGINE, MIN_ROWS, RunTask, make_engine
from torchfault.campaign._golden import golden_run, prepare_golden
from torchfault.campaign._handover import handed_over
from torchfault.campaign._outcome import Criterion
from torchfault.campaign._structure import Batched, as_batched
from torchfault.errors import TorchFaultError
from torchfault.faults import Fault
from torchfault.store import OUTCOMES, RUN_COLUMNS, RunRecord, fault_columns, write_run_table

__all__ = [
    "CampaignResult",
    "run_campaign",
    "golden_run",
    "as_fault_sets",
    "make_criterion",
    "summarize_metrics",
]


@dataclass
class CampaignResult:
    """The runs of a campaign and their faults.

    Attributes:
        runs: one :class:`~torchfault.store.RunRecord` per (fault, input), ordered by fault then input.
        faults: fault id -> the faults of that run.
    """

    runs: list[RunRecord]
    faults: dict[int, tuple[Fault, ...]] = field(default_factory=dict)
    #: with ``run_campaign(..., protection=...)``: the same runs under the protection
    #: (a :class:`~torchfault.campaign.ProtectionResult`), else ``None``
    protection: Any = None
    #: with ``injected_values=True``: ``(fault_id, input_id) -> ((before, after), ...)``, one
    #: pair per fault of the run (see :func:`torchfault.injectors.injected_values`)
    injected: dict[tuple[int, int], tuple[tuple[Any, Any], ...]] | None = None
    #: with ``trace=...``: one :class:`~torchfault.analysis.Trace` per run (layer-by-layer
    #: deviation from golden), ordered like ``runs``
    traces: list[Any] | None = None
    #: runs the engine handed to the reference engine, per reason (the fast engine's
    #: ``handed_over``, or the reason a whole campaign was handed over); empty when none.
    #: From :class:`Campaign`: the runs of that call, ``None`` when engines ran in worker
    #: processes (executors ``process``, ``ray``, ``auto`` once it started processes)
    handed_over: dict[str, int] | None = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def metrics(self) -> dict[tuple[int, int], dict[str, float | None]]:
        """``(fault_id, input_id)`` -> the metrics its criterion returned (runs with metrics)."""
        return {
            (r.fault_id, r.input_id): dict(getattr(r, "metrics", ()))
            for r in self.runs
            if getattr(r, "metrics", None)
        }

    def metrics_summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per metric, per outcome (and ``all``): count, mean, min and max (see
        :func:`summarize_metrics`)."""
        return summarize_metrics(self.runs, self.metrics)

    def outcome_counts(self) -> dict[str, int]:
        """Runs per outcome, the four outcomes always (zeros included), ``detected`` when a run
        has it."""
        counts = Counter(r.outcome for r in self.runs)
        outcomes = (*OUTCOMES, "detected") if counts.get("detected") else OUTCOMES
        return {o: counts.get(o, 0) for o in outcomes}

    def rows(self) -> list[dict[str, Any]]:
        """The table of runs: one dict per run with the columns
        :data:`~torchfault.store.RUN_COLUMNS`, those of a store's export: the
        :class:`~torchfault.store.RunRecord` fields, the first fault's ``module``, ``target``,
        ``kind`` and first ``bit``, the run's ``n_faults`` and ``faults`` (their JSON list).

        Example:
            >>> from torchfault.store import RunRecord
            >>> fault = Fault("fc", "weight", (0, 1), (30,))
            >>> row = CampaignResult([RunRecord(0, 2, "sdc", 1, 7)], {0: (fault,)}).rows()[0]
            >>> row["outcome"], row["module"], row["kind"], row["bit"], row["n_faults"]
            ('sdc', 'fc', 'parameter', 30, 1)
        """
        return [dict(zip(RUN_COLUMNS, row)) for row in self._table()]

    def _table(self) -> list[tuple[Any, ...]]:
        columns = {fid: fault_columns(f) for fid, f in self.faults.items()}
        missing = (None, None, None, None, 0, "[]")
        return [(*r.as_tuple(), *columns.get(r.fault_id, missing)) for r in self.runs]

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`rows` as CSV (missing values empty), the columns of the store's
        ``export_csv``; returns the path."""
        return write_run_table(self._table(), path, "csv", "CampaignResult.to_csv")

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`rows` as Parquet, the columns of the store's ``export_parquet``; needs
        pyarrow (the ``parquet`` extra). Returns the path."""
        return write_run_table(self._table(), path, "parquet", "CampaignResult.to_parquet")

    def summary(self, confidence: float = 0.95, method: str = "clopper_pearson") -> Any:
        """Rates with confidence intervals, overall and per layer, bit and target kind."""
        from torchfault.analysis import summarize

        return summarize(self.runs, self.faults, confidence=confidence, method=method)


def as_fault_sets(faults: Iterable[Fault | Sequence[Fault]] | Fault) -> list[tuple[Fault, ...]]:
    """Normalise faults to a list of fault sets (one set per run)."""
    if isinstance(faults, Fault):
        return [(faults,)]
    out: list[tuple[Fault, ...]] = []
    for item in faults:
        if isinstance(item, Fault):
            out.append((item,))
        elif isinstance(item, (list, tuple)) and all(isinstance(f, Fault) for f in item):
            out.append(tuple(item))
        else:
            raise TorchFaultError(
                f"faults must be Fault objects or sequences of them, got {item!r}."
            )
    return out


def summarize_metrics(
    runs: Iterable[RunRecord], metrics: dict[tuple[int, int], dict[str, float | None]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per metric, per outcome (and ``all``): ``n`` (runs with a value), ``mean``, ``min``, ``max``.

    Example:
        >>> from torchfault.store import RunRecord
        >>> runs = [RunRecord(0, 0, "sdc"), RunRecord(1, 0, "benign")]
        >>> s = summarize_metrics(runs, {(0, 0): {"err": 0.5}, (1, 0): {"err": 0.1}})
        >>> s["err"]["all"]["n"], s["err"]["sdc"]["mean"]
        (2, 0.5)
    """
    values: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        m = metrics.get((r.fault_id, r.input_id))
        if not m:
            continue
        for name, v in m.items():
            if v is None:
                continue
            per = values.setdefault(name, {})
            per.setdefault("all", []).append(float(v))
            per.setdefault(r.outcome, []).append(float(v))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, per in values.items():
        out[name] = {
            k: {"n": len(v), "mean": sum(v) / len(v), "min": min(v), "max": max(v)}
            for k, v in per.items()
        }
    return out


def make_criterion(
    criterion: str | Criterion | Any = "top1",
    topk: int = 1,
    tolerance: float = 0.0,
    output: str | int | None = None,
    **options: Any,
) -> Criterion:
    """A :class:`Criterion` from a name, a callable ``fn(golden, faulty)`` or a Criterion.

    Example:
        >>> make_criterion("tokens", k=2).k
        2
        >>> make_criterion(lambda g, f: bool((g != f).any())).fn is not None
        True
    """
    if isinstance(criterion, Criterion):
        return criterion
    if callable(criterion):
        name = getattr(criterion, "__qualname__", None) or "callable"
        return Criterion(name, topk, tolerance, output=output, fn=criterion, **options)
    if isinstance(criterion, str):
        return Criterion(criterion, topk, tolerance, output=output, **options)
    raise TorchFaultError(
        f"criterion: expected a name, a Criterion or a callable fn(golden, faulty), got "
        f"{type(criterion).__name__}."
    )


def run_campaign(
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...] | dict[str, Any] | Batched,
    faults: Iterable[Fault | Sequence[Fault]] | Fault,
    labels: torch.Tensor | None = None,
    *,
    criterion: str | Criterion | Any = "top1",
    topk: int = 1,
    tolerance: float = 0.0,
    only_correct: bool = False,
    engine: str = DEFAULT_ENGINE,
    batch_size: int = 256,
    output: str | int | None = None,
    batch_dim: int = 0,
    device: str | torch.device | None = None,
    protection: Any = None,
    injected_values: bool = False,
    trace: Any = None,
) -> CampaignResult:
    """Run every fault (or fault set) on every input and classify each run.

    Args:
        model: the model (switched to eval mode for the campaign and restored after).
        inputs: the inputs: a tensor with one input per row, a tuple of tensors (positional
            arguments) or a dict of tensors (keyword arguments: ``input_ids``,
            ``attention_mask``), every tensor batched along ``batch_dim``.
        faults: faults, or sequences of faults that act together in one run. Activation faults
            with ``sample=None`` hit the run's own input.
        labels: true classes; needed for ``only_correct``.
        criterion: a registered criterion (``top1``, ``topk``, ``tolerance``, ``regression``,
            ``segmentation``, ``detection``, ``tokens``), a :class:`Criterion`, or a callable
            ``fn(golden, faulty) -> "sdc" | "benign" | "due"`` (optionally with a dict of metrics).
        topk, tolerance: parameters of the criterion.
        output: the part of the model's output the criterion reads (``"logits"``, ``0``).
        batch_dim: the batch dimension of every input tensor (and of the output's tensors).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``: the model and inputs are
            moved there for the campaign (the model moved back after); ``None``: where they are.
        only_correct: run only inputs the golden model classifies correctly.
        engine: a registered engine: ``"fast"`` (the default: the reference engine's records,
            sooner; runs it does not cover, such as tuple or dict inputs, other devices,
            ``random_value`` faults and several faults per run, it hands to the reference
            engine, counted in ``result.handed_over``) or ``"reference"`` (full re-execution,
            one forward pass per run).
        batch_size: rows per forward pass.
        protection: a protection (:mod:`torchfault.injectors`: ``ranger``, ``clip``,
            ``detect``; an object, a name or ``{"name": ..., **options}``): the same runs are
            repeated under it with full re-execution and compared with the unprotected golden
            outputs; ``result.protection`` holds them and their summary
            (:class:`~torchfault.campaign.ProtectionResult`).
        injected_values: record each faulted element's value before and after the fault in
            ``result.injected`` (read from the injection itself, many runs per pass, as a
            stored campaign does). Off by default here, unlike a stored campaign's
            ``injected_values``: the result is kept in memory, where every caller would pay
            for a pair per run it may not read; ask for them, or call
            :func:`~torchfault.injectors.injected_values` on the runs you look at.
        trace: record each run's deviation from golden at every layer in ``result.traces``
            (as :func:`torchfault.analysis.trace_runs` defines it; the engine computes them with
            its runs: the fast engine from the rest of the network it runs anyway, the same
            values): ``True`` for every leaf layer, a
            :class:`~torchfault.injectors.RangeProfile` to also find the first layer out of
            range, or ``{"layers": ..., "profile": ...}``.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault import Fault, run_campaign
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> x = torch.randn(5, 4)
        >>> faults = [Fault("0", "weight", index=(0, 0), bits=(b,)) for b in (0, 30)]
        >>> result = run_campaign(model, x, faults)
        >>> len(result), sum(result.outcome_counts().values())
        (10, 10)
    """
    crit = make_criterion(criterion, topk, tolerance, output)
    if output is not None and crit.output != output:
        crit = dataclasses.replace(crit, output=output)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TorchFaultError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if isinstance(inputs, torch.Tensor) and inputs.dim() < 1:
        raise TorchFaultError("inputs must be a tensor with one input per row, got a 0-d tensor.")
    inputs = as_batched(inputs, batch_dim)
    n_inputs = len(inputs) if isinstance(inputs, Batched) else inputs.shape[0]
    if n_inputs == 0:
        raise TorchFaultError("inputs: no inputs (0 rows); give at least one.")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.numel() != n_inputs:
            raise TorchFaultError(
                f"labels must hold one class per input: got {labels.numel()} labels for "
                f"{n_inputs} inputs."
            )
    sets = as_fault_sets(faults)
    prot = None
    if protection is not None:
        from torchfault.campaign._protection import resolve_protection

        if not isinstance(inputs, torch.Tensor):
            raise TorchFaultError(
                "run_campaign(protection=...): protected campaigns take one input tensor, not a "
                "tuple or dict of tensors."
            )
        prot = resolve_protection(protection)
        prot.bind(model)  # a missing layer or another model's profile: before anything runs
    opts = (
        _trace_options(model, inputs, trace) if trace is not None and trace is not False else None
    )
    dev = resolve_device(device, "device") if device is not None else None
    was_training = model.training
    home = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
    if dev is not None:
        model.to(dev)
        inputs = inputs.to(dev)
    model.eval()
    try:
        golden = prepare_golden(model, inputs, crit, batch_size)  # the one Campaign runs too
        if prot is not None and not isinstance(golden.outputs, torch.Tensor):
            raise TorchFaultError(
                "run_campaign(protection=...): protected campaigns need a model returning one "
                "tensor, not a tuple, list, dict or model output."
            )
        ids = list(range(n_inputs))
        traced = None
        if opts is not None:
            from torchfault.analysis import layer_order

            assert isinstance(inputs, torch.Tensor)  # checked by _trace_options
            traced = (
                layer_order(model, inputs[[0] * MIN_ROWS], opts.get("layers")),
                opts.get("profile"),
            )
        eng = make_engine(engine, model, inputs, golden.outputs, crit, batch_size, traced)
        if only_correct:
            if labels is None:
                raise TorchFaultError("run_campaign(only_correct=True) needs labels.")
            if not golden.has_classes:
                raise TorchFaultError(
                    f"run_campaign(only_correct=True): criterion {crit.label!r} gives no class "
                    "per input to compare with the labels."
                )
            ids = golden.correct_inputs(labels)
        tasks = [RunTask(k, fs, tuple(ids)) for k, fs in enumerate(sets)]
        chunk = eng.run_chunk(tasks)
        runs, traces = list(chunk), chunk.traces
        protected = None
        if prot is not None:
            from torchfault.campaign._protection import protected_runs

            # both checked before anything ran
            assert isinstance(inputs, torch.Tensor) and isinstance(golden.outputs, torch.Tensor)
            protected = protected_runs(
                model,
                inputs,
                golden.outputs,
                crit,
                tasks,
                runs,
                prot,
                batch_size,
                labels,  # type: ignore[arg-type]
            )
        # on the campaign's device, in eval mode, with the engines' batch size
        injected = _injected(model, inputs, sets, runs, batch_size) if injected_values else None
    finally:
        model.train(was_training)
        if dev is not None and home is not None:
            model.to(home)
    runs.sort(key=lambda r: (r.fault_id, r.input_id))
    result = CampaignResult(runs, {k: fs for k, fs in enumerate(sets)}, protected)
    result.handed_over = handed_over([eng])
    result.injected = injected
    if traces is not None:
        result.traces = sorted(traces, key=lambda t: (t.fault_id, t.input_id))
    return result


def _trace_options(model: nn.Module, inputs: Any, trace: Any) -> dict[str, Any]:
    """``trace`` (True, a RangeProfile or a dict) as ``{"layers": ..., "profile": ...}``."""
    from torchfault.injectors import RangeProfile, load_profile

    opts: dict[str, Any] = {}
    if isinstance(trace, RangeProfile):
        opts = {"profile": trace}
    elif isinstance(trace, dict):
        unknown = sorted(set(trace) - {"layers", "profile"})
        if unknown:
            raise TorchFaultError(
                f"trace.{unknown[0]}: unknown option; valid: layers, profile.", field="trace"
            )
        opts = dict(trace)
        if isinstance(opts.get("profile"), (str, os.PathLike)):
            opts["profile"] = load_profile(opts["profile"], model)
    elif trace is not True:
        raise TorchFaultError(
            f"trace: expected True, a RangeProfile or a dict, got {type(trace).__name__}.",
            field="trace",
        )
    if not isinstance(inputs, torch.Tensor):
        raise TorchFaultError("trace: needs a tensor of inputs (rows first).", field="trace")
    return opts


def _injected(
    model: nn.Module,
    inputs: torch.Tensor | Batched,
    sets: list[tuple[Fault, ...]],
    runs: list[RunRecord],
    batch_size: int,
) -> dict[tuple[int, int], tuple[tuple[Any, Any], ...]]:
    """Injected values of ``runs`` (as the store's ``injected`` table holds them, per run)."""
    from torchfault.campaign._injected import injected_rows

    ids: dict[int, list[int]] = {}
    for r in runs:
        ids.setdefault(r.fault_id, []).append(r.input_id)
    tasks = [RunTask(k, sets[k], tuple(v)) for k, v in sorted(ids.items())]
    rows = injected_rows(model, inputs, tasks, batch_size)
    by: dict[int, dict[int, dict[int, tuple[Any, Any]]]] = {}
    for f, i, k, b, a in rows:
        by.setdefault(f, {}).setdefault(i, {})[k] = (b, a)
    out = {}
    for r in runs:
        m = {**by.get(r.fault_id, {}).get(-1, {}), **by.get(r.fault_id, {}).get(r.input_id, {})}
        out[(r.fault_id, r.input_id)] = tuple(m[k] for k in sorted(m))
    return out
