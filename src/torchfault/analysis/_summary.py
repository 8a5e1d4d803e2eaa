# SPDX-License-Identifier: MIT
"""Summaries of campaign runs: outcome counts and rates with confidence intervals, per group.

The counting is a small stateful accumulator in the style of torchmetrics' ``Metric``: states are
declared with :meth:`Accumulator.add_state` (a default and a reduction), :meth:`~Accumulator.update`
adds runs, :meth:`~Accumulator.merge` folds in another worker's accumulator, and
:meth:`~Accumulator.compute` gives a :class:`Summary`. Under it sit two pure functions,
:func:`_summary_update` (runs to counts) and :func:`_summary_compute` (counts to a summary).

The fault is the sampling unit: the state is the outcome count of every fault, rates are means of
the per-fault fractions, and intervals account for the correlation of a fault's runs, the strata
and the finite population (:mod:`torchfault.analysis._design`). Counts (``Row.counts``,
``Rate.k``, ``Rate.n``) stay counts of runs.

Groups. Every fault (with all its runs) counts once overall and once in each breakdown:

- ``layer``: the module of its faults; ``"(multiple)"`` when one run's faults lie in several
  modules (BER runs), ``"(none)"`` for a run without faults.
- ``target``: ``module:target`` likewise.
- ``kind``: ``activation``, ``parameter`` or ``buffer`` (from the fault sites when given;
  otherwise activations are recognised by their target, and the buffers of PyTorch's normalisation
  layers by name).
- ``bit``: the bit position of a single-bit fault; a fault (or fault set) flipping several bits
  is listed under its most significant flipped bit (the one that changes the value most), and a
  fault that replaces the whole element (``zero``, ``value``, ``random_value``) under
  ``"(whole element)"``.
- ``element`` (only with ``per_element=True``): ``module:target[index]``.

Example:
    >>> from torchfault import Fault
    >>> faults = {0: (Fault("fc", "weight", (0, 0), (30,)),), 1: (Fault("fc", "bias", (1,), (2,)),)}
    >>> runs = [{"fault_id": 0, "outcome": "sdc"}, {"fault_id": 1, "outcome": "masked"}]
    >>> s = summarize(runs, faults)
    >>> s.overall.counts
    {'masked': 1, 'benign': 0, 'sdc': 1, 'due': 0}
    >>> [row.key for row in s.by_bit]
    [2, 30]
"""

from __future__ import annotations

import abc
import copy
import csv
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchfault.analysis._design import SamplingDesign, estimate_groups, stratum_sd
from torchfault.analysis._stats import DEFAULT_INTERVAL, check_method
from torchfault.errors import TorchFaultError, suggest
from torchfault.faults import Fault, FaultSite, fault_kind
from torchfault.store import OUTCOMES, RUN_OUTCOMES, present_outcomes, require_pyarrow

__all__ = [
    "OUTCOMES",
    "GROUPS",
    "Accumulator",
    "OutcomeAccumulator",
    "Rate",
    "Row",
    "Summary",
    "summarize",
    "summarize_store",
]

#: Breakdowns a summary holds (``element`` only when asked).
GROUPS = ("layer", "target", "kind", "bit", "element")
MULTIPLE = "(multiple)"
NONE = "(none)"
#: The per-bit key of faults that replace whole elements (``zero``, ``value``, ``random_value``).
WHOLE = "(whole element)"
_REDUCTIONS = ("sum", "max", "min", "cat")
#: Columns of :meth:`Summary.to_rows` and of the summary CSV and Parquet files.
ROW_COLUMNS = (
    "group",
    "key",
    "outcome",
    "count",
    "runs",
    "rate",
    "low",
    "high",
    "confidence",
    "method",
    "faults",
    "n_eff",
)
#: Display names of the interval methods.
METHOD_LABELS = {
    "clopper_pearson": "Clopper-Pearson",
    "wilson": "Wilson",
    "wilson_modified": "modified Wilson",
}


def _pyarrow(what: str) -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or the store's one error naming the ``parquet`` extra."""
    return require_pyarrow(what)


# ---------------------------------------------------------------- accumulator base


class Accumulator(abc.ABC):
    """Base of mergeable, resettable statistics (torchmetrics ``Metric`` style, without torch).

    Subclasses declare their state in ``__init__`` with :meth:`add_state` and implement
    :meth:`update` and :meth:`compute`.

    Example:
        >>> class Mean(Accumulator):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.add_state("total", 0.0)
        ...         self.add_state("count", 0)
        ...     def update(self, xs):
        ...         self.total += sum(xs)
        ...         self.count += len(xs)
        ...     def compute(self):
        ...         return self.total / self.count
        >>> a, b = Mean(), Mean()
        >>> a.update([1, 2]); b.update([6])
        >>> a.merge(b).compute()
        3.0
    """

    def __init__(self) -> None:
        self._defaults: dict[str, Any] = {}
        self._reductions: dict[str, str] = {}

    def add_state(self, name: str, default: Any, reduce: str = "sum") -> None:
        """Declare a state: its default (copied on reset) and how merging combines two values.

        ``reduce``: ``"sum"`` (numbers, or Counters added key by key), ``"max"``, ``"min"`` or
        ``"cat"`` (lists concatenated).
        """
        if reduce not in _REDUCTIONS:
            raise TorchFaultError(
                f"add_state({name!r}): reduce must be one of {', '.join(_REDUCTIONS)}, got {reduce!r}."
            )
        self._defaults[name] = copy.deepcopy(default)
        self._reductions[name] = reduce
        setattr(self, name, copy.deepcopy(default))

    def reset(self) -> None:
        """Every state back to its default."""
        for name, default in self._defaults.items():
            setattr(self, name, copy.deepcopy(default))

    def state_dict(self) -> dict[str, Any]:
        """The states (plain Python values; picklable, to send between processes)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self._defaults}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in self._defaults:
            setattr(self, name, copy.deepcopy(state[name]))

    def merge(self, *others: Accumulator | Mapping[str, Any]) -> Accumulator:
        """Fold other accumulators (or their ``state_dict()``) into this one; returns ``self``."""
        for other in others:
            state = other if isinstance(other, Mapping) else other.state_dict()
            for name, how in self._reductions.items():
                mine, theirs = getattr(self, name), state[name]
                if how == "sum":
                    if isinstance(mine, Counter):
                        mine.update(theirs)
                    else:
                        setattr(self, name, mine + theirs)
                elif how == "max":
                    setattr(self, name, max(mine, theirs))
                elif how == "min":
                    setattr(self, name, min(mine, theirs))
                else:
                    setattr(self, name, list(mine) + list(theirs))
        return self

    @abc.abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add data to the state."""

    @abc.abstractmethod
    def compute(self) -> Any:
        """The result of the state."""


# ---------------------------------------------------------------- summary values


@dataclass(frozen=True)
class Rate:
    """An outcome's rate with its confidence interval ``[low, high]``.

    Attributes:
        k: runs with the outcome.
        n: runs.
        rate: the estimate: the mean of the per-fault fractions, strata weighted by their
            populations (``k / n`` with one input per fault and one stratum).
        low, high: the confidence interval.
        faults: faults (sampling units) behind the estimate.
        n_eff: effective sample size of the interval (``inf``: exact).
        exact: every fault of the population ran on every input: the rate is exact.
    """

    k: int
    n: int
    rate: float
    low: float
    high: float
    faults: int = 0
    n_eff: float = 0.0
    exact: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "n": self.n,
            "rate": self.rate,
            "low": self.low,
            "high": self.high,
            "faults": self.faults,
            "n_eff": self.n_eff if math.isfinite(self.n_eff) else None,
            "exact": self.exact,
        }

    def format(self) -> str:
        """``"12.34% [10.10%, 14.80%]"`` (``"12.34% (exact)"`` for an exact rate)."""
        if self.exact:
            return f"{_pct(self.rate)} (exact)"
        return f"{_pct(self.rate)} [{_pct(self.low)}, {_pct(self.high)}]"


def _interval_text(r: Rate) -> str:
    return "exact" if r.exact else f"[{_pct(r.low)}, {_pct(r.high)}]"


def _pct(x: float) -> str:
    if x == 0:
        return "0%"
    if x < 0.0001:
        return f"{100 * x:.2g}%"
    return f"{100 * x:.2f}%"


@dataclass(frozen=True)
class Row:
    """Outcome counts and rates of one group (``key``) of runs.

    ``n`` and ``counts`` count runs; ``faults`` the faults behind them (the sampling units).
    """

    key: Any
    n: int
    counts: dict[str, int]
    rates: dict[str, Rate]
    faults: int = 0

    @property
    def sdc(self) -> Rate:
        return self.rates["sdc"]

    @property
    def due(self) -> Rate:
        return self.rates["due"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "n": self.n,
            "faults": self.faults,
            "counts": dict(self.counts),
            "rates": {o: r.to_dict() for o, r in self.rates.items()},
        }


@dataclass(frozen=True)
class Summary:
    """Outcome counts and rates with confidence intervals, overall and per group.

    Attributes:
        confidence: confidence level of the intervals.
        method: interval method, one of :data:`~torchfault.analysis.INTERVAL_METHODS`.
        overall: every run.
        groups: ``{"layer": (Row, ...), "target": ..., "kind": ..., "bit": ..., ["element": ...]}``.
        seconds: total run time recorded.
        design: how the faults were drawn (``"unstratified"``, or the sampler and its number of
            strata); intervals are over faults (see docs/statistics.md).
    """

    confidence: float
    method: str
    overall: Row
    groups: dict[str, tuple[Row, ...]] = field(default_factory=dict)
    seconds: float = 0.0
    design: str = "unstratified"

    @property
    def runs(self) -> int:
        return self.overall.n

    @property
    def faults(self) -> int:
        """Faults (sampling units) with runs."""
        return self.overall.faults

    @property
    def interval_label(self) -> str:
        """``"95% Clopper-Pearson intervals over 1,000 faults"``: what the intervals are."""
        return f"{self.confidence:.0%} {METHOD_LABELS.get(self.method, self.method)} intervals"

    @property
    def by_layer(self) -> tuple[Row, ...]:
        return self.groups.get("layer", ())

    @property
    def by_target(self) -> tuple[Row, ...]:
        return self.groups.get("target", ())

    @property
    def by_kind(self) -> tuple[Row, ...]:
        return self.groups.get("kind", ())

    @property
    def by_bit(self) -> tuple[Row, ...]:
        return self.groups.get("bit", ())

    @property
    def by_element(self) -> tuple[Row, ...]:
        return self.groups.get("element", ())

    def outcome_counts(self) -> dict[str, int]:
        """``{"masked": .., "benign": .., "sdc": .., "due": ..}`` over all runs."""
        return dict(self.overall.counts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "confidence": self.confidence,
            "method": self.method,
            "design": self.design,
            "runs": self.runs,
            "faults": self.faults,
            "seconds": self.seconds,
            "overall": self.overall.to_dict(),
            **{f"by_{g}": [r.to_dict() for r in rows] for g, rows in self.groups.items()},
        }

    def to_rows(self, groups: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One flat row per (group, key, outcome): for CSV or a data frame.

        Args:
            groups: the groups to include (``"overall"`` and any of :data:`GROUPS` the summary
                holds), in the summary's order; default: all.
        """
        wanted = self._check_groups(groups)
        out = []
        for group, rows in [("overall", (self.overall,)), *self.groups.items()]:
            if group not in wanted:
                continue
            for row in rows:
                for o in row.rates:
                    r = row.rates[o]
                    out.append(
                        {
                            "group": group,
                            "key": row.key,
                            "outcome": o,
                            "count": r.k,
                            "runs": r.n,
                            "rate": r.rate,
                            "low": r.low,
                            "high": r.high,
                            "confidence": self.confidence,
                            "method": self.method,
                            "faults": r.faults,
                            "n_eff": r.n_eff if math.isfinite(r.n_eff) else None,
                        }
                    )
        return out

    def _check_groups(self, groups: Sequence[str] | None) -> set[str]:
        have = ["overall", *self.groups]
        if groups is None:
            return set(have)
        if isinstance(groups, str):
            groups = (groups,)
        for g in groups:
            if g not in have:
                raise TorchFaultError(
                    f"summary group must be one of {', '.join(have)}, got {g!r}.{suggest(str(g), have)}"
                )
        return set(groups)

    def to_csv(self, path: str | Path, groups: Sequence[str] | None = None) -> Path:
        """Write :meth:`to_rows` (of ``groups``, default all) as CSV; returns the path."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(ROW_COLUMNS))
                writer.writeheader()
                writer.writerows(self.to_rows(groups))
        except OSError as exc:
            raise TorchFaultError(f"cannot write summary CSV {str(path)!r}: {exc}") from None
        return path

    def to_parquet(self, path: str | Path, groups: Sequence[str] | None = None) -> Path:
        """Write :meth:`to_rows` (of ``groups``, default all) as Parquet; returns the path.

        The ``key`` column is text (layer names, and bit positions as ``"30"``), as in the CSV.
        Needs pyarrow: the ``parquet`` extra.
        """
        pa, pq = _pyarrow("Summary.to_parquet")
        types = {
            "group": pa.string(),
            "key": pa.string(),
            "outcome": pa.string(),
            "count": pa.int64(),
            "runs": pa.int64(),
            "rate": pa.float64(),
            "low": pa.float64(),
            "high": pa.float64(),
            "confidence": pa.float64(),
            "method": pa.string(),
            "faults": pa.int64(),
            "n_eff": pa.float64(),
        }
        rows = self.to_rows(groups)
        for row in rows:
            row["key"] = str(row["key"])
        table = pa.table(
            {c: pa.array([row[c] for row in rows], type=types[c]) for c in ROW_COLUMNS},
            schema=pa.schema([(c, types[c]) for c in ROW_COLUMNS]),
        )
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        except OSError as exc:
            raise TorchFaultError(f"cannot write summary Parquet {str(path)!r}: {exc}") from None
        return path

    def _title(self, group: str) -> str:
        names = {
            "layer": "Per layer",
            "target": "Per target",
            "kind": "Per target kind",
            "bit": "Per bit position",
            "element": "Per element",
        }
        return names.get(group, group)

    def _header(self) -> str:
        return f"{self.interval_label} over {self.faults:,} faults, {self.design}"

    def tables(self) -> list[Any]:
        """The summary as ``rich.table.Table`` objects: overall, then one per group."""
        from rich.table import Table

        overall = Table(title=f"Outcomes of {self.runs:,} runs ({self._header()})")
        for col in ("outcome", "runs", "rate", "interval"):
            overall.add_column(col, justify="left" if col == "outcome" else "right")
        for o in self.overall.rates:
            r = self.overall.rates[o]
            overall.add_row(o, f"{r.k:,}", _pct(r.rate), _interval_text(r))
        tables = [overall]
        for group, rows in self.groups.items():
            t = Table(title=self._title(group))
            t.add_column(group)
            for col in ("faults", "runs", "SDC", "DUE", "masked", "benign"):
                t.add_column(col, justify="right")
            for row in rows:
                t.add_row(
                    str(row.key),
                    f"{row.faults:,}",
                    f"{row.n:,}",
                    row.sdc.format(),
                    row.due.format(),
                    f"{row.counts['masked']:,}",
                    f"{row.counts['benign']:,}",
                )
            tables.append(t)
        return tables

    def print(self, console: Any = None) -> None:
        """Print :meth:`tables` to a ``rich`` console (a new one on stdout by default)."""
        if console is None:
            from rich.console import Console

            console = Console()
        for t in self.tables():
            console.print(t)

    def to_markdown(self) -> str:
        """The tables in Markdown."""
        lines = [
            f"### Outcomes of {self.runs:,} runs ({self._header()})",
            "",
            "| outcome | runs | rate | interval |",
            "|---|---:|---:|---:|",
        ]
        for o in self.overall.rates:
            r = self.overall.rates[o]
            lines.append(f"| {o} | {r.k} | {_pct(r.rate)} | {_interval_text(r)} |")
        for group, rows in self.groups.items():
            lines += [
                "",
                f"### {self._title(group)}",
                "",
                f"| {group} | faults | runs | SDC | DUE | masked | benign |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for row in rows:
                key = str(row.key).replace("|", "\\|")
                lines.append(
                    f"| {key} | {row.faults} | {row.n} | {row.sdc.format()} | {row.due.format()} | "
                    f"{row.counts['masked']} | {row.counts['benign']} |"
                )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


# ---------------------------------------------------------------- functional core


def _get(run: Any, name: str) -> Any:
    return run[name] if isinstance(run, Mapping) else getattr(run, name)


def _kind_of(fault: Fault, kinds: Mapping[tuple[str, str], str]) -> str:
    return fault_kind(fault, kinds)


def _one(values: Iterable[Any]) -> Any:
    s = set(values)
    if not s:
        return NONE
    return s.pop() if len(s) == 1 else MULTIPLE


def _group_keys(
    faults: Sequence[Fault], kinds: Mapping[tuple[str, str], str], per_element: bool
) -> list[tuple[str, Any]]:
    keys = [
        ("layer", _one(f.module for f in faults)),
        ("target", _one(f"{f.module}:{f.target}" for f in faults)),
        ("kind", _one(_kind_of(f, kinds) for f in faults)),
    ]
    flipped = [b for f in faults for b in f.bits]
    if not faults:
        bit: Any = NONE
    elif not flipped:
        bit = WHOLE  # zero, value, random_value: the element, no bit
    else:
        bit = max(flipped)  # a multi-bit fault (set) under its most significant bit
    keys.append(("bit", bit))
    if per_element:
        keys.append(("element", _one(f"{f.module}:{f.target}{list(f.index)}" for f in faults)))
    return keys


def _summary_update(
    runs: Iterable[Any],
    faults: Mapping[int, Sequence[Fault]],
) -> tuple[Counter, Counter, float]:
    """Count runs per fault: ``Counter{(fault_id, outcome): runs}``, ``Counter{input_id: runs}``
    (empty when the runs carry no input id) and the seconds recorded."""
    counts: Counter = Counter()
    inputs: Counter = Counter()
    seconds = 0.0
    for run in runs:
        outcome = _get(run, "outcome")
        if outcome not in RUN_OUTCOMES:
            raise TorchFaultError(
                f"run outcome must be one of {', '.join(RUN_OUTCOMES)}, got {outcome!r}."
                f"{suggest(str(outcome), RUN_OUTCOMES)}"
            )
        fid = int(_get(run, "fault_id"))
        if fid not in faults:
            raise TorchFaultError(
                f"run of fault {fid}: no such fault among the {len(faults)} given."
            )
        counts[(fid, outcome)] += 1
        try:
            iid = _get(run, "input_id")
        except (KeyError, AttributeError):
            iid = None
        if iid is not None:
            inputs[int(iid)] += 1
        try:
            sec = _get(run, "seconds")
        except (KeyError, AttributeError):
            sec = None
        if sec is not None:
            seconds += float(sec)
    return counts, inputs, seconds


def _sort_key(order: Mapping[Any, int]) -> Callable[[Any], tuple]:
    def key(k: Any) -> tuple:
        if k in order:
            return (0, order[k], "")
        if isinstance(k, int):
            return (1, k, "")
        return (2 if k not in (MULTIPLE, NONE, WHOLE) else 3, 0, str(k))

    return key


@dataclass
class _Units:
    """Per-fault arrays of the faults with runs (the sampling units)."""

    ids: list[int]
    m: np.ndarray
    k: dict[str, np.ndarray]
    stratum: np.ndarray
    populations: list[float] | None
    inputs: float | None


def _units(
    counts: Mapping[tuple[int, str], int],
    faults: Mapping[int, Sequence[Fault]],
    design: SamplingDesign | None,
    inputs: int | None,
    below: int | None = None,
) -> _Units:
    per: dict[int, dict[str, int]] = {}
    for (fid, outcome), c in counts.items():
        if c and (below is None or fid < below):
            per.setdefault(fid, {})[outcome] = c
    ids = sorted(per)
    m = np.array([sum(per[f].values()) for f in ids], dtype=np.float64)
    present = present_outcomes(o for f in ids for o in per[f])
    k = {o: np.array([per[f].get(o, 0) for f in ids], dtype=np.float64) for o in present}
    pops: list[float] | None = None
    stratum = np.zeros(len(ids), dtype=np.int64)
    if design is not None and design.populations is not None:
        keys = list(design.populations)
        pops = [float(design.populations[key]) for key in keys]
        if len(keys) > 1:
            index = {key: j for j, key in enumerate(keys)}
            assert design.stratum_of is not None
            for j, fid in enumerate(ids):
                key = design.stratum_of(tuple(faults[fid]))
                if key not in index:
                    raise TorchFaultError(
                        f"design: fault {fid} is in stratum {key!r}, which is not among the "
                        f"design's {len(keys)} strata."
                    )
                stratum[j] = index[key]
    if design is not None and design.inputs is not None:
        inputs = design.inputs
    if inputs is not None and len(m) and m.max() > inputs:
        inputs = None  # more runs per fault than inputs (replicated runs): treat as unbounded
    return _Units(ids, m, k, stratum, pops, None if inputs is None else float(inputs))


def _rows(
    units: _Units,
    key: np.ndarray,
    labels: Sequence[Any],
    confidence: float,
    method: str,
) -> tuple[Row, ...]:
    n_keys = len(labels)
    ests = {
        o: estimate_groups(
            units.k[o] / np.maximum(units.m, 1),
            units.m,
            key,
            n_keys,
            units.stratum,
            units.populations,
            units.inputs,
            confidence,
            method,
        )
        for o in units.k
    }
    runs = np.bincount(key, units.m, minlength=n_keys) if n_keys else np.zeros(0)
    counts = {o: np.bincount(key, units.k[o], minlength=n_keys) for o in units.k}
    rows = []
    for g, label in enumerate(labels):
        full = {o: int(round(counts[o][g])) for o in units.k}
        n = int(round(runs[g]))
        rates = {
            o: Rate(
                full[o],
                n,
                ests[o][g].rate,
                ests[o][g].low,
                ests[o][g].high,
                ests[o][g].faults,
                ests[o][g].n_eff,
                ests[o][g].exact,
            )
            for o in units.k
        }
        rows.append(Row(label, n, full, rates, ests["sdc"][g].faults))
    return tuple(rows)


def _design_name(design: SamplingDesign | None) -> str:
    if design is None or design.populations is None:
        return "unstratified" + (f" ({design.name} sampler)" if design and design.name else "")
    n = len(design.populations)
    what = f"{design.name} sampler, " if design.name else ""
    if n == 1:
        return f"{what}one stratum of {next(iter(design.populations.values())):,} faults"
    return f"{what}{n} strata of {sum(design.populations.values()):,} faults"


def _summary_compute(
    counts: Mapping[tuple[int, str], int],
    faults: Mapping[int, Sequence[Fault]],
    seconds: float,
    confidence: float,
    method: str,
    *,
    kinds: Mapping[tuple[str, str], str] | None = None,
    orders: Mapping[str, Mapping[Any, int]] | None = None,
    per_element: bool = False,
    design: SamplingDesign | None = None,
    inputs: int | None = None,
) -> Summary:
    """Per-fault counts (from :func:`_summary_update`) to a :class:`Summary`."""
    orders = orders or {}
    units = _units(counts, faults, design, inputs)
    n = len(units.ids)
    overall = _rows(units, np.zeros(n, dtype=np.int64), ["all"], confidence, method)[0]
    group_keys = [_group_keys(tuple(faults[f]), kinds or {}, per_element) for f in units.ids]
    groups = {}
    for gi, group in enumerate(GROUPS):
        if group == "element" and not per_element:
            continue
        if not n:
            continue
        values = [keys[gi][1] for keys in group_keys]
        labels = sorted(set(values), key=_sort_key(orders.get(group, {})))
        index = {v: j for j, v in enumerate(labels)}
        key = np.array([index[v] for v in values], dtype=np.int64)
        groups[group] = _rows(units, key, labels, confidence, method)
    return Summary(confidence, method, overall, groups, seconds, _design_name(design))


# ---------------------------------------------------------------- accumulator


class OutcomeAccumulator(Accumulator):
    """Counts run outcomes per fault; merges workers' partial counts; computes the summary.

    The state is per fault (``Counter{(fault_id, outcome): runs}``): rates and intervals are
    computed with the fault as the sampling unit (:mod:`torchfault.analysis._design`).

    Args:
        faults: ``{fault_id: (Fault, ...)}`` of the runs to come (more can be added with
            :meth:`add_faults`).
        sites: the campaign's fault sites (exact target kinds, and the layer order of the tables).
        confidence: confidence level of the intervals.
        method: interval method, one of :data:`~torchfault.analysis.INTERVAL_METHODS`.
        per_element: also break down per element.
        design: how the faults were drawn (strata, populations); default: one stratum of
            unbounded population.

    Example:
        >>> from torchfault import Fault
        >>> faults = {0: (Fault("fc", "weight", (0, 0), (30,)),), 1: (Fault("fc", "bias", (1,), (2,)),)}
        >>> a, b = OutcomeAccumulator(faults), OutcomeAccumulator(faults)
        >>> a.update([{"fault_id": 0, "outcome": "sdc"}])
        >>> b.update([{"fault_id": 1, "outcome": "masked"}] * 3)
        >>> a.merge(b).compute().overall.rates["sdc"].rate
        0.5
    """

    # states declared with add_state in __init__
    counts: Counter
    inputs: Counter
    seconds: float

    def __init__(
        self,
        faults: Mapping[int, Sequence[Fault]] | None = None,
        sites: Sequence[FaultSite] | None = None,
        *,
        confidence: float = 0.95,
        method: str = DEFAULT_INTERVAL,
        per_element: bool = False,
        design: SamplingDesign | None = None,
    ) -> None:
        super().__init__()
        self.method = check_method(method, "method")
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, (int, float))
            or not 0 < confidence < 1
        ):
            raise TorchFaultError(f"confidence must be in (0, 1), got {confidence!r}.")
        if design is not None and not isinstance(design, SamplingDesign):
            raise TorchFaultError(
                f"design must be a SamplingDesign or None, got {type(design).__name__}."
            )
        self.confidence = float(confidence)
        self.per_element = per_element
        self.design = design
        self.faults: dict[int, tuple[Fault, ...]] = {}
        self.add_faults(faults or {})
        sites = list(sites or [])
        self.kinds = {(s.module, s.target): s.kind for s in sites}
        layer_order: dict[Any, int] = {}
        target_order: dict[Any, int] = {}
        for s in sites:
            layer_order.setdefault(s.module, len(layer_order))
            target_order.setdefault(f"{s.module}:{s.target}", len(target_order))
        self.orders = {
            "layer": layer_order,
            "target": target_order,
            "kind": {"activation": 0, "parameter": 1, "buffer": 2},
        }
        self.add_state("counts", Counter(), reduce="sum")
        self.add_state("inputs", Counter(), reduce="sum")
        self.add_state("seconds", 0.0, reduce="sum")

    def add_faults(self, faults: Mapping[int, Sequence[Fault]]) -> None:
        """Make more faults known (by fault id)."""
        for fid, fs in faults.items():
            self.faults[int(fid)] = tuple(fs)

    def update(self, runs: Iterable[Any]) -> None:
        """Count runs (``RunRecord`` objects or mappings with ``fault_id``, ``outcome``, and
        optionally ``input_id`` and ``seconds``)."""
        counts, inputs, seconds = _summary_update(runs, self.faults)
        self.counts.update(counts)
        self.inputs.update(inputs)
        self.seconds += seconds

    def _n_inputs(self) -> int | None:
        return len(self.inputs) or None

    def compute(self) -> Summary:
        return _summary_compute(
            self.counts,
            self.faults,
            self.seconds,
            self.confidence,
            self.method,
            kinds=self.kinds,
            orders=self.orders,
            per_element=self.per_element,
            design=self.design,
            inputs=self._n_inputs(),
        )

    def estimate(self, outcome: str = "sdc", *, below: int | None = None) -> Rate:
        """The overall rate of ``outcome`` with its interval, over the faults ``< below`` (all
        by default): what adaptive stopping watches.

        Example:
            >>> from torchfault import Fault
            >>> acc = OutcomeAccumulator({i: (Fault("fc", "bias", (0,), (i,)),) for i in range(4)})
            >>> acc.update([{"fault_id": i, "outcome": "sdc" if i == 3 else "masked"} for i in range(4)])
            >>> acc.estimate(below=3).k, acc.estimate().k
            (0, 1)
        """
        if outcome not in RUN_OUTCOMES:
            raise TorchFaultError(
                f"outcome must be one of {', '.join(RUN_OUTCOMES)}, got {outcome!r}."
                f"{suggest(str(outcome), RUN_OUTCOMES)}"
            )
        units = _units(self.counts, self.faults, self.design, self._n_inputs(), below)
        k = units.k.get(outcome, np.zeros(len(units.ids)))
        est = estimate_groups(
            k / np.maximum(units.m, 1),
            units.m,
            np.zeros(len(units.ids), dtype=np.int64),
            1,
            units.stratum,
            units.populations,
            units.inputs,
            self.confidence,
            self.method,
        )[0]
        return Rate(
            int(k.sum()),
            int(units.m.sum()),
            est.rate,
            est.low,
            est.high,
            est.faults,
            est.n_eff,
            est.exact,
        )

    def stratum_sd(self, outcome: str = "sdc", *, below: int | None = None) -> dict[Any, float]:
        """Each stratum's standard deviation of the per-fault ``outcome`` fraction over the
        faults ``< below``: what Neyman allocation after a pilot round needs
        (:func:`~torchfault.analysis.stratum_sd`)."""
        if self.design is None or self.design.populations is None:
            raise TorchFaultError("stratum_sd needs a design with strata (design=...).")
        units = _units(self.counts, self.faults, self.design, self._n_inputs(), below)
        keys = list(self.design.populations)
        sd = stratum_sd(units.k[outcome] / np.maximum(units.m, 1), units.stratum, len(keys))
        return {key: float(x) for key, x in zip(keys, sd)}

    def sdc_count(self) -> tuple[int, int]:
        """``(SDC runs, runs)`` so far."""
        n = sum(self.counts.values())
        return sum(c for (_, o), c in self.counts.items() if o == "sdc"), n


def summarize(
    runs: Iterable[Any],
    faults: Mapping[int, Sequence[Fault]],
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
    *,
    sites: Sequence[FaultSite] | None = None,
    per_element: bool = False,
    design: SamplingDesign | None = None,
) -> Summary:
    """Summarise runs: overall and per-group outcome counts and rates with intervals.

    The fault is the sampling unit: rates are means of the per-fault fractions and intervals
    account for the correlation of a fault's runs, the strata and the finite population of the
    ``design`` (see docs/statistics.md).

    Args:
        runs: ``RunRecord`` objects (or mappings) with ``fault_id``, ``outcome`` and optionally
            ``input_id`` and ``seconds``.
        faults: ``{fault_id: (Fault, ...)}``.
        confidence: confidence level of the intervals.
        method: interval method, one of :data:`~torchfault.analysis.INTERVAL_METHODS`.
        sites: the fault sites, for exact target kinds and the layer order.
        per_element: also break down per element.
        design: the sampling design (:class:`~torchfault.analysis.SamplingDesign`); default one
            stratum of unbounded population.

    Example:
        >>> from torchfault import Fault
        >>> faults = {0: (Fault("fc", "weight", (0, 0), (30,)),)}
        >>> s = summarize([{"fault_id": 0, "outcome": "due"}] * 4, faults)
        >>> s.overall.due.k, s.overall.due.n, s.overall.due.faults, s.by_kind[0].key
        (4, 4, 1, 'parameter')
        >>> import json
        >>> json.dumps(s.to_dict())[:30]
        '{"confidence": 0.95, "method":'
    """
    acc = OutcomeAccumulator(
        faults,
        sites,
        confidence=confidence,
        method=method,
        per_element=per_element,
        design=design,
    )
    acc.update(runs)
    return acc.compute()


def summarize_store(
    store: Any,
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
    *,
    per_element: bool = False,
) -> Summary:
    """:func:`summarize` of a stored campaign, with the design of its sampler (strata,
    populations) rebuilt from the stored config and sites.

    Args:
        store: an open :class:`~torchfault.store.ResultStore`.
        confidence: confidence level of the intervals.
        method: interval method.
        per_element: also break down per element.
    """
    sites = store.sites()
    meta = store.meta()
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    sampler = config.get("sampler") if isinstance(config, Mapping) else None
    design = SamplingDesign.from_config(sampler, sites) if isinstance(sampler, Mapping) else None
    return summarize(
        store.iter_runs(),
        store.faults(),
        confidence,
        method,
        sites=sites,
        per_element=per_element,
        design=design,
    )
