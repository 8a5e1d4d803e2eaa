# SPDX-License-Identifier: MIT
"""What a protection bought, drawn: SDC and DUE rates without and with it, detection and false
positives.

The numbers are those of a protected campaign: ``protection.json``, which a campaign run with
``protection.name`` writes beside its store (its ``summary`` is
:meth:`~torchfault.campaign.ProtectionResult.summary`), or that summary itself. This module adds
no estimate of its own: every rate drawn is the file's, as stored. It adds the intervals: each
rate over runs is ``k / n`` with ``n`` the protected runs, and its interval is that of ``k``
events in ``n`` trials by the chosen method (:func:`~torchfault.analysis.interval_from_rate`
with ``n_eff = n``: exactly :func:`~torchfault.analysis.interval` of ``k`` and ``n``). Runs of
one fault on several inputs are counted as separate trials, as the rates themselves are.

The false-positive rate is over the campaign's fault-free inputs: ``false_positives`` of the
``fault_free_inputs`` inputs were flagged (both counts are in the summary). Each fault-free input
is one trial of its own (one fault-free pass, flagged or not; the inputs are independent of one
another and of the faults), so the rate is a binomial proportion and its interval is that of
``k`` events in ``n`` trials by the same method and confidence as the rates over runs
(:func:`~torchfault.analysis.interval`; Clopper-Pearson by default, which keeps its coverage at
``k = 0``, the usual count of a well-profiled protection). A file written before the summary held
the counts (only ``false_positive_rate``) still reads: its false-positive rate is drawn without an
interval.

Plots are drawn on a :class:`matplotlib.figure.Figure` saved through the Agg canvas (the
optional ``plot`` extra), as every plot of :mod:`torchfault.analysis`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchfault.analysis._stats import DEFAULT_INTERVAL, interval, interval_from_rate
from torchfault.analysis._summary import METHOD_LABELS, Rate, _pct
from torchfault.errors import TorchFaultError

__all__ = [
    "PROTECTION_FILE",
    "ProtectionRates",
    "plot_protection",
    "protection_markdown",
    "protection_rates",
    "read_protection",
]

#: The file a protected campaign writes beside its store.
PROTECTION_FILE = "protection.json"

_WITHOUT, _WITH = "#9aa3b0", "#2a5db0"


def read_protection(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The content of ``protection.json``: ``source`` is the file, or the folder holding it (a
    protected campaign's run folder).

    Raises:
        TorchFaultError: the file is missing, not JSON, or has no ``summary``; the message names
            the file.
    """
    path = Path(source)
    if path.is_dir():
        path = path / PROTECTION_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise TorchFaultError(
            f"protection: no such file {str(path)!r}; a campaign run with protection.name writes "
            f"{PROTECTION_FILE} into its run folder.",
            field="protection",
        ) from None
    except (OSError, ValueError) as exc:
        raise TorchFaultError(
            f"protection: {str(path)!r} could not be read: {exc}.", field="protection"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise TorchFaultError(
            f"protection: {str(path)!r} is not a protection file (no 'summary' object).",
            field="protection",
        )
    return doc


@dataclass(frozen=True)
class ProtectionRates:
    """The figures :func:`plot_protection` draws, with their intervals.

    Attributes:
        name: the protection's name.
        runs: protected runs (the ``n`` of every rate over runs).
        sdc: ``(without, with)`` SDC rate over runs (``None``: no runs to divide by); for a
            detecting protection, ``with`` is the SDC left undetected.
        due: ``(without, with)`` DUE rate over runs.
        detection: faulty runs the protection flagged (the detection rate).
        detected: runs whose outcome is ``detected`` (a non-correcting protection flagged them),
            as a share of the runs; 0 for a correcting protection.
        false_positive: fault-free inputs the protection flagged, the rate as stored.
        confidence, method: of the intervals.
        options: the protection's options as the file names them.
        false_positive_interval: the false-positive rate with its interval over the fault-free
            inputs (``k`` flagged of ``n``; see the module docstring); ``None`` for a file
            without those counts (written before they were stored) or without inputs.
    """

    name: str
    runs: int
    sdc: tuple[Rate | None, Rate | None]
    due: tuple[Rate | None, Rate | None]
    detection: Rate | None
    detected: float | None
    false_positive: float | None
    confidence: float = 0.95
    method: str = DEFAULT_INTERVAL
    options: dict[str, Any] = field(default_factory=dict)
    false_positive_interval: Rate | None = None


def _count(summary: Mapping[str, Any], key: str) -> int | None:
    value = summary.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TorchFaultError(
            f"protection: the summary's {key!r} must be a count >= 0, got {value!r}.",
            field="protection",
        )
    return value


def false_positive_rate(
    summary: Mapping[str, Any],
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
) -> Rate | None:
    """The false-positive rate of a protection summary with its interval: ``false_positives``
    flagged of ``fault_free_inputs`` fault-free inputs, one independent trial each, so the
    binomial interval of ``k`` in ``n`` (:func:`~torchfault.analysis.interval`, by ``method``)
    is valid. ``None`` when the summary does not hold both counts (a file written before they
    were stored) or holds no inputs.

    Raises:
        TorchFaultError: a count that is not an integer ``>= 0``, or more flagged than inputs.

    Example:
        >>> r = false_positive_rate({"false_positives": 0, "fault_free_inputs": 64})
        >>> r.k, r.n, r.rate, r.low, round(r.high, 4)
        (0, 64, 0.0, 0.0, 0.056)
        >>> false_positive_rate({"false_positive_rate": 0.0}) is None
        True
    """
    k = _count(summary, "false_positives")
    n = _count(summary, "fault_free_inputs")
    if k is None or n is None or n == 0:
        return None
    if k > n:
        raise TorchFaultError(
            f"protection: the summary's 'false_positives' ({k}) exceeds its 'fault_free_inputs' "
            f"({n}).",
            field="protection",
        )
    low, high = interval(k, n, confidence, method)
    return Rate(k, n, k / n, low, high, n_eff=float(n))


def _number(x: Any) -> float | None:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return None
    return float(x)


def protection_rates(
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
) -> ProtectionRates:
    """The rates of a protected campaign with their intervals (see the module docstring).

    Args:
        source: ``protection.json`` (or its folder), its content, or the summary of a
            :class:`~torchfault.campaign.ProtectionResult` (``result.protection.summary()``).
        confidence: confidence level of the intervals.
        method: interval method, one of :data:`~torchfault.analysis.INTERVAL_METHODS`.

    Example:
        >>> s = {"protection": "ranger", "runs": 200, "sdc_without": 0.05, "sdc_with": 0.01,
        ...      "due_without": 0.0, "due_with": 0.0, "detection_rate": 0.06,
        ...      "false_positive_rate": 0.0}
        >>> r = protection_rates(s)
        >>> r.sdc[0].k, r.sdc[1].k, r.detection.k
        (10, 2, 12)
        >>> from torchfault.analysis import interval
        >>> (r.sdc[1].low, r.sdc[1].high) == interval(2, 200)
        True
    """
    doc: Mapping[str, Any]
    if isinstance(source, Mapping):
        doc = source
    else:
        doc = read_protection(source)
    summary = doc.get("summary", doc)
    if not isinstance(summary, Mapping):
        raise TorchFaultError(
            f"protection: expected a protection summary, got {type(summary).__name__}.",
            field="protection",
        )
    spec = doc.get("protection") if isinstance(doc.get("protection"), Mapping) else {}
    runs = summary.get("runs")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise TorchFaultError(
            f"protection: the summary's 'runs' must be a count of runs, got {runs!r}.",
            field="protection",
        )

    def rate(key: str) -> Rate | None:
        value = _number(summary.get(key))
        if value is None or runs == 0:
            return None
        if not 0.0 <= value <= 1.0:
            raise TorchFaultError(
                f"protection: the summary's {key!r} must be a rate in [0, 1], got {value!r}.",
                field="protection",
            )
        low, high = interval_from_rate(value, runs, confidence, method)
        return Rate(round(value * runs), runs, value, low, high, n_eff=float(runs))

    name = spec.get("name") if isinstance(spec, Mapping) else None
    return ProtectionRates(
        name=str(name or summary.get("protection", "?")),
        runs=runs,
        sdc=(rate("sdc_without"), rate("sdc_with")),
        due=(rate("due_without"), rate("due_with")),
        detection=rate("detection_rate"),
        detected=_number(summary.get("detected")),
        false_positive=_number(summary.get("false_positive_rate")),
        confidence=confidence,
        method=method,
        options={k: v for k, v in (spec or {}).items() if k != "name"},
        false_positive_interval=false_positive_rate(summary, confidence, method),
    )


def _bars(ax: Any, xs: list[float], rates: list[Rate | None], width: float, **kw: Any) -> Any:
    heights = [100 * r.rate if r is not None else 0.0 for r in rates]
    err = [
        [100 * max(0.0, r.rate - r.low) if r is not None else 0.0 for r in rates],
        [100 * max(0.0, r.high - r.rate) if r is not None else 0.0 for r in rates],
    ]
    bars = ax.bar(xs, heights, width, yerr=err, capsize=4, ecolor="#333333", **kw)
    ax.bar_label(
        bars,
        labels=[_pct(r.rate) if r is not None else "n/a" for r in rates],
        padding=2,
        fontsize=8,
    )
    return bars


def plot_protection(
    source: Mapping[str, Any] | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
) -> Path:
    """Draw what a protection bought and write it to ``path`` (PNG); returns the path.

    Left: the SDC and DUE rate without and with the protection, bars with their intervals.
    Right: the detection rate (faulty runs flagged, with its interval) and the false-positive
    rate (fault-free inputs flagged, with its interval over those inputs where the file holds
    their counts; without one for an older file). Every bar is labelled with its value; the
    numbers are :func:`protection_rates`'.

    Args:
        source: ``protection.json`` (or its folder), its content, or the summary of a
            :class:`~torchfault.campaign.ProtectionResult`.
        path: the PNG file to write.
        confidence: confidence level of the intervals.
        method: interval method.

    Example:
        >>> import tempfile, pathlib
        >>> s = {"protection": "ranger", "runs": 200, "sdc_without": 0.05, "sdc_with": 0.01,
        ...      "due_without": 0.0, "due_with": 0.0, "detection_rate": 0.06,
        ...      "false_positive_rate": 0.0}
        >>> plot_protection(s, pathlib.Path(tempfile.mkdtemp()) / "protection.png").name
        'protection.png'
    """
    from torchfault.analysis._report import _figure

    r = protection_rates(source, confidence=confidence, method=method)
    fig = _figure(9.0, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[2.0, 1.2])
    width = 0.38
    _bars(
        left,
        [-width / 2, 1 - width / 2],
        [r.sdc[0], r.due[0]],
        width,
        color=_WITHOUT,
        label="without",
    )
    _bars(
        left,
        [width / 2, 1 + width / 2],
        [r.sdc[1], r.due[1]],
        width,
        color=_WITH,
        label=f"with {r.name}",
    )
    sdc_label = "SDC"
    if r.detected:
        sdc_label = f"SDC\n(with: undetected; {_pct(r.detected)} of runs detected)"
    left.set_xticks([0, 1], [sdc_label, "DUE"])
    left.set_ylabel("rate over runs (%)")
    left.set_title(f"SDC and DUE rate without and with {r.name}")
    left.legend()
    left.margins(y=0.15)
    _bars(right, [0], [r.detection], 0.6, color="#8a6bbf")
    fp, fpi = r.false_positive, r.false_positive_interval
    fp_label = "fault-free inputs\nflagged"
    if fpi is not None:
        _bars(right, [1], [fpi], 0.6, color="#e8a33d")
        fp_label += f"\n({fpi.k:,} of {fpi.n:,})"
    else:
        bars = right.bar([1], [100 * fp if fp is not None else 0.0], 0.6, color="#e8a33d")
        right.bar_label(bars, labels=[_pct(fp) if fp is not None else "n/a"], padding=2, fontsize=8)
    right.set_xticks([0, 1], ["faulty runs\nflagged", fp_label])
    right.set_ylabel("rate (%)")
    right.set_title("Detection and false positives")
    right.margins(y=0.15)
    method_label = METHOD_LABELS.get(r.method, r.method)
    over = "over runs" + (" (false positives: over fault-free inputs)" if fpi is not None else "")
    fig.suptitle(
        f"Protection {r.name}: {r.runs:,} runs; {r.confidence:.0%} {method_label} intervals {over}",
        fontsize="medium",
    )
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _fmt(rate: Rate | None) -> str:
    return "n/a" if rate is None else rate.format()


def protection_markdown(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
) -> list[str]:
    """The protection section of ``report.md`` when ``protection.json`` lies beside the store
    (no lines otherwise): the rates with their intervals and, with ``out_dir`` and matplotlib,
    ``protection.png`` (:func:`plot_protection`) drawn there and linked."""
    file = Path(store_path).parent / PROTECTION_FILE
    if not file.is_file():
        return []
    lines = ["## Protection", ""]
    try:
        doc = read_protection(file)
        r = protection_rates(doc, confidence=confidence, method=method)
    except TorchFaultError as exc:
        return lines + [f"{PROTECTION_FILE} could not be read: {exc}", ""]
    summary = doc["summary"]
    options = ", ".join(f"{k}: {v}" for k, v in r.options.items()) or "none"
    overhead = _number(summary.get("overhead"))
    method_label = METHOD_LABELS.get(r.method, r.method)
    lines += [
        f"Protection **{r.name}** ({options}), measured on {r.runs:,} runs of this campaign: "
        "each run repeated under it and compared with the unprotected golden output. "
        f"Intervals: {r.confidence:.0%} {method_label}, over runs.",
        "",
        "| | without | with |",
        "|---|---|---|",
        f"| SDC rate | {_fmt(r.sdc[0])} | {_fmt(r.sdc[1])} |",
        f"| DUE rate | {_fmt(r.due[0])} | {_fmt(r.due[1])} |",
        f"| detected (flagged, not corrected) | 0% | {_share(r.detected)} |",
        "",
        f"- faulty runs flagged (detection rate): {_fmt(r.detection)}",
        f"- unprotected SDCs flagged: {_share(summary.get('sdc_detection_rate'))}",
        f"- detected runs still correct: {_share(summary.get('detected_correct'))}",
        f"- fault-free inputs flagged (false positives): {_false_positives(r)}",
        f"- fault-free inputs whose class changes: {_share(summary.get('accuracy_cost'))}",
        "- time of a fault-free pass: "
        + ("n/a" if overhead is None else f"{100 * overhead:+.0f}%"),
        "",
    ]
    if out_dir is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return lines
        p = plot_protection(
            doc, Path(out_dir) / "protection.png", confidence=confidence, method=method
        )
        lines += [f"![SDC and DUE rate without and with {r.name}]({p.name})", ""]
    return lines


def _share(x: Any) -> str:
    value = _number(x)
    return "n/a" if value is None else _pct(value)


def _false_positives(r: ProtectionRates) -> str:
    """The false-positive rate with its interval and counts, or the bare rate of an old file."""
    fpi = r.false_positive_interval
    if fpi is None:
        return _share(r.false_positive)
    return f"{fpi.format()} ({fpi.k:,} of {fpi.n:,} inputs)"
