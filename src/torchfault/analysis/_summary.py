# SPDX-License-Identifier: MIT
"""Summaries of campaign runs: outcome counts and rates with confidence intervals, per group.

The counting is a small stateful accumulator in the style of torchmetrics' ``Metric``: states are
declared with :meth:`Accumulator.add_state` (a default and a reduction), :meth:`~Accumulator.update`
adds runs, :meth:`~Accumulator.merge` folds in another worker's accumulator, and
:meth:`~Accumulator.compute` gives a :class:`Summary`. Under it sit two pure functions,
:func:`_summary_update` (runs to counts) and :func:`_summary_compute` (counts to a summary).

Groups. Every run counts once overall and once in each breakdown:

- ``layer``: the module of its faults; ``"(multiple)"`` when one run's faults lie in several
  modules (BER runs), ``"(none)"`` for a run without faults.
- ``target``: ``module:target`` likewise.
- ``kind``: ``activation``, ``parameter`` or ``buffer`` (from the fault sites when given;
  otherwise activations are recognised by their target, and the buffers of PyTorch's normalisation
  layers by name).
- ``bit``: the bit position when every fault of the run flips the same single bit, else
  ``"(multiple)"``.
- ``element`` (only with ``per_element=True``): ``module:target[index]``.

Example:
    >>> from torchfault.faults._fault import Fault
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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchfault.analysis._stats import INTERVAL_METHODS, interval
from torchfault.errors import TorchFaultError, suggest
from torchfault.faults._fault import Fault, FaultSite
from torchfault.store._records import OUTCOMES

__all__ = [
    "OUTCOMES",
    "GROUPS",
    "Accumulator",
    "OutcomeAccumulator",
    "Rate",
    "Row",
    "Summary",
    "summarize",
]

#: Breakdowns a summary holds (``element`` only when asked).
GROUPS = ("layer", "target", "kind", "bit", "element")
MULTIPLE = "(multiple)"
NONE = "(none)"
_BUFFER_NAMES = {"running_mean", "running_var", "num_batches_tracked"}
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
)


def _pyarrow(what: str) -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or an error naming the ``parquet`` extra."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TorchFaultError(
            f"{what} needs pyarrow, which is not installed; install the 'parquet' extra: "
            "pip install 'torchfault[parquet]'."
        ) from None
    return pa, pq


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
    """A proportion ``k / n`` with its confidence interval ``[low, high]``."""

    k: int
    n: int
    rate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "rate": self.rate, "low": self.low, "high": self.high}

    def format(self) -> str:
        """``"12.34% [10.10%, 14.80%]"``."""
        return f"{_pct(self.rate)} [{_pct(self.low)}, {_pct(self.high)}]"


def _pct(x: float) -> str:
    if x == 0:
        return "0%"
    if x < 0.0001:
        return f"{100 * x:.2g}%"
    return f"{100 * x:.2f}%"


@dataclass(frozen=True)
class Row:
    """Outcome counts and rates of one group (``key``) of runs."""

    key: Any
    n: int
    counts: dict[str, int]
    rates: dict[str, Rate]

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
            "counts": dict(self.counts),
            "rates": {o: r.to_dict() for o, r in self.rates.items()},
        }


@dataclass(frozen=True)
class Summary:
    """Outcome counts and rates with confidence intervals, overall and per group.

    Attributes:
        confidence: confidence level of the intervals.
        method: ``"wilson"`` or ``"clopper_pearson"``.
        overall: every run.
        groups: ``{"layer": (Row, ...), "target": ..., "kind": ..., "bit": ..., ["element": ...]}``.
        seconds: total run time recorded.
    """

    confidence: float
    method: str
    overall: Row
    groups: dict[str, tuple[Row, ...]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def runs(self) -> int:
        return self.overall.n

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
            "runs": self.runs,
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
                for o in OUTCOMES:
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
        label = "Wilson" if self.method == "wilson" else "Clopper-Pearson"
        return f"{self.confidence:.0%} {label} intervals"

    def tables(self) -> list[Any]:
        """The summary as ``rich.table.Table`` objects: overall, then one per group."""
        from rich.table import Table

        overall = Table(title=f"Outcomes of {self.runs:,} runs ({self._header()})")
        for col in ("outcome", "runs", "rate", "interval"):
            overall.add_column(col, justify="left" if col == "outcome" else "right")
        for o in OUTCOMES:
            r = self.overall.rates[o]
            overall.add_row(o, f"{r.k:,}", _pct(r.rate), f"[{_pct(r.low)}, {_pct(r.high)}]")
        tables = [overall]
        for group, rows in self.groups.items():
            t = Table(title=self._title(group))
            t.add_column(group)
            for col in ("runs", "SDC", "DUE", "masked", "benign"):
                t.add_column(col, justify="right")
            for row in rows:
                t.add_row(
                    str(row.key),
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
        for o in OUTCOMES:
            r = self.overall.rates[o]
            lines.append(f"| {o} | {r.k} | {_pct(r.rate)} | [{_pct(r.low)}, {_pct(r.high)}] |")
        for group, rows in self.groups.items():
            lines += [
                "",
                f"### {self._title(group)}",
                "",
                f"| {group} | runs | SDC | DUE | masked | benign |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for row in rows:
                key = str(row.key).replace("|", "\\|")
                lines.append(
                    f"| {key} | {row.n} | {row.sdc.format()} | {row.due.format()} | "
                    f"{row.counts['masked']} | {row.counts['benign']} |"
                )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


# ---------------------------------------------------------------- functional core


def _get(run: Any, name: str) -> Any:
    return run[name] if isinstance(run, Mapping) else getattr(run, name)


def _kind_of(fault: Fault, kinds: Mapping[tuple[str, str], str]) -> str:
    kind = kinds.get((fault.module, fault.target))
    if kind:
        return kind
    if fault.is_activation:
        return "activation"
    return "buffer" if fault.target in _BUFFER_NAMES else "parameter"


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
    bits = {f.bits for f in faults}
    if not faults:
        bit: Any = NONE
    elif len(bits) == 1 and len(next(iter(bits))) == 1:
        bit = next(iter(bits))[0]
    else:
        bit = MULTIPLE
    keys.append(("bit", bit))
    if per_element:
        keys.append(("element", _one(f"{f.module}:{f.target}{list(f.index)}" for f in faults)))
    return keys


def _summary_update(
    runs: Iterable[Any],
    faults: Mapping[int, Sequence[Fault]],
    kinds: Mapping[tuple[str, str], str] | None = None,
    per_element: bool = False,
) -> tuple[Counter, float]:
    """Count runs: ``Counter{(group, key, outcome): n}`` (group ``"overall"`` too) and seconds."""
    counts: Counter = Counter()
    seconds = 0.0
    kinds = kinds or {}
    cache: dict[int, list[tuple[str, Any]]] = {}
    for run in runs:
        outcome = _get(run, "outcome")
        if outcome not in OUTCOMES:
            raise TorchFaultError(
                f"run outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}."
                f"{suggest(str(outcome), OUTCOMES)}"
            )
        fid = int(_get(run, "fault_id"))
        keys = cache.get(fid)
        if keys is None:
            if fid not in faults:
                raise TorchFaultError(
                    f"run of fault {fid}: no such fault among the {len(faults)} given."
                )
            keys = cache[fid] = _group_keys(tuple(faults[fid]), kinds, per_element)
        counts[("overall", "", outcome)] += 1
        for group, key in keys:
            counts[(group, key, outcome)] += 1
        try:
            sec = _get(run, "seconds")
        except (KeyError, AttributeError):
            sec = None
        if sec is not None:
            seconds += float(sec)
    return counts, seconds


def _row(key: Any, counts: Mapping[str, int], confidence: float, method: str) -> Row:
    n = sum(counts.get(o, 0) for o in OUTCOMES)
    full = {o: int(counts.get(o, 0)) for o in OUTCOMES}
    rates = {}
    for o in OUTCOMES:
        low, high = interval(full[o], n, confidence, method)
        rates[o] = Rate(full[o], n, full[o] / n if n else 0.0, low, high)
    return Row(key, n, full, rates)


def _sort_key(order: Mapping[Any, int]) -> Callable[[Any], tuple]:
    def key(k: Any) -> tuple:
        if k in order:
            return (0, order[k], "")
        if isinstance(k, int):
            return (1, k, "")
        return (2 if k not in (MULTIPLE, NONE) else 3, 0, str(k))

    return key


def _summary_compute(
    counts: Mapping[tuple[str, Any, str], int],
    seconds: float,
    confidence: float,
    method: str,
    orders: Mapping[str, Mapping[Any, int]] | None = None,
) -> Summary:
    """Counts (from :func:`_summary_update`) to a :class:`Summary`."""
    orders = orders or {}
    per: dict[str, dict[Any, dict[str, int]]] = {}
    for (group, key, outcome), c in counts.items():
        per.setdefault(group, {}).setdefault(key, {})[outcome] = c
    overall = _row("all", per.get("overall", {}).get("", {}), confidence, method)
    groups = {}
    for group in GROUPS:
        if group not in per:
            continue
        keys = sorted(per[group], key=_sort_key(orders.get(group, {})))
        groups[group] = tuple(_row(k, per[group][k], confidence, method) for k in keys)
    return Summary(confidence, method, overall, groups, seconds)


# ---------------------------------------------------------------- accumulator


class OutcomeAccumulator(Accumulator):
    """Counts run outcomes overall and per group; merge workers' partial counts.

    Args:
        faults: ``{fault_id: (Fault, ...)}`` of the runs to come (more can be added with
            :meth:`add_faults`).
        sites: the campaign's fault sites (exact target kinds, and the layer order of the tables).
        confidence: confidence level of the intervals.
        method: ``"wilson"`` or ``"clopper_pearson"``.
        per_element: also break down per element.

    Example:
        >>> from torchfault.faults._fault import Fault
        >>> faults = {0: (Fault("fc", "weight", (0, 0), (30,)),)}
        >>> a, b = OutcomeAccumulator(faults), OutcomeAccumulator(faults)
        >>> a.update([{"fault_id": 0, "outcome": "sdc"}])
        >>> b.update([{"fault_id": 0, "outcome": "masked"}] * 3)
        >>> a.merge(b).compute().overall.rates["sdc"].rate
        0.25
    """

    def __init__(
        self,
        faults: Mapping[int, Sequence[Fault]] | None = None,
        sites: Sequence[FaultSite] | None = None,
        *,
        confidence: float = 0.95,
        method: str = "wilson",
        per_element: bool = False,
    ) -> None:
        super().__init__()
        if method not in INTERVAL_METHODS:
            raise TorchFaultError(
                f"method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}."
                f"{suggest(str(method), INTERVAL_METHODS)}"
            )
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, (int, float))
            or not 0 < confidence < 1
        ):
            raise TorchFaultError(f"confidence must be in (0, 1), got {confidence!r}.")
        self.confidence = float(confidence)
        self.method = method
        self.per_element = per_element
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
        self.add_state("seconds", 0.0, reduce="sum")

    def add_faults(self, faults: Mapping[int, Sequence[Fault]]) -> None:
        """Make more faults known (by fault id)."""
        for fid, fs in faults.items():
            self.faults[int(fid)] = tuple(fs)

    def update(self, runs: Iterable[Any]) -> None:
        """Count runs (``RunRecord`` objects or mappings with ``fault_id``, ``outcome``, ``seconds``)."""
        counts, seconds = _summary_update(runs, self.faults, self.kinds, self.per_element)
        self.counts.update(counts)
        self.seconds += seconds

    def compute(self) -> Summary:
        return _summary_compute(
            self.counts, self.seconds, self.confidence, self.method, self.orders
        )

    def sdc_count(self) -> tuple[int, int]:
        """``(SDC runs, runs)`` so far: what adaptive stopping watches."""
        n = sum(self.counts.get(("overall", "", o), 0) for o in OUTCOMES)
        return self.counts.get(("overall", "", "sdc"), 0), n


def summarize(
    runs: Iterable[Any],
    faults: Mapping[int, Sequence[Fault]],
    confidence: float = 0.95,
    method: str = "wilson",
    *,
    sites: Sequence[FaultSite] | None = None,
    per_element: bool = False,
) -> Summary:
    """Summarise runs: overall and per-group outcome counts and rates with intervals.

    Args:
        runs: ``RunRecord`` objects (or mappings) with ``fault_id``, ``outcome`` and optionally
            ``seconds``.
        faults: ``{fault_id: (Fault, ...)}``.
        confidence: confidence level of the intervals.
        method: ``"wilson"`` or ``"clopper_pearson"``.
        sites: the fault sites, for exact target kinds and the layer order.
        per_element: also break down per element.

    Example:
        >>> from torchfault.faults._fault import Fault
        >>> faults = {0: (Fault("fc", "weight", (0, 0), (30,)),)}
        >>> s = summarize([{"fault_id": 0, "outcome": "due"}] * 4, faults)
        >>> s.overall.due.k, s.overall.due.n, s.by_kind[0].key
        (4, 4, 'parameter')
        >>> import json
        >>> json.dumps(s.to_dict())[:30]
        '{"confidence": 0.95, "method":'
    """
    acc = OutcomeAccumulator(
        faults, sites, confidence=confidence, method=method, per_element=per_element
    )
    acc.update(runs)
    return acc.compute()
