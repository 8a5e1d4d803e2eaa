# SPDX-License-Identifier: MIT
"""Reports of a stored campaign: PNG plots and a Markdown summary beside them.

Plots are drawn on :class:`matplotlib.figure.Figure` objects saved through the Agg canvas, so
making a report never changes the user's pyplot backend or global state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchfault.analysis._stats import DEFAULT_INTERVAL
from torchfault.analysis._summary import (
    METHOD_LABELS,
    MULTIPLE,
    NONE,
    WHOLE,
    Row,
    Summary,
    summarize_store,
)
from torchfault.errors import TorchFaultError
from torchfault.store import open_store

__all__ = ["make_report", "plot_rate_per_layer", "plot_rate_per_bit", "plot_outcome_mix"]

_COLOURS = {
    "masked": "#4c9a5b",
    "benign": "#5b8fd0",
    "sdc": "#d0453b",
    "due": "#e8a33d",
    "detected": "#8a6bbf",
}
_MAX_BARS = 60


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TorchFaultError(
            "reports need matplotlib, which is not installed; install the 'plot' extra: "
            "pip install 'torchfault[plot]'."
        ) from None
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _yerr(rows: Sequence[Row], outcome: str) -> list[list[float]]:
    return [
        [max(0.0, r.rates[outcome].rate - r.rates[outcome].low) for r in rows],
        [max(0.0, r.rates[outcome].high - r.rates[outcome].rate) for r in rows],
    ]


def _label(summary: Summary) -> str:
    method = METHOD_LABELS.get(summary.method, summary.method)
    return f"{summary.confidence:.0%} {method} interval over {summary.faults:,} faults"


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_rate_per_layer(summary: Summary, path: str | os.PathLike[str]) -> Path:
    """Bar chart of the SDC and DUE rate of every layer, with interval bars; returns the path."""
    rows = [r for r in summary.by_layer if r.n > 0][:_MAX_BARS]
    fig = _figure(max(6.0, 0.45 * len(rows) + 2.5), 4.5)
    ax = fig.subplots()
    if not rows:
        _empty(ax, "no runs")
    else:
        xs = list(range(len(rows)))
        width = 0.4
        for shift, outcome in ((-width / 2, "sdc"), (width / 2, "due")):
            ax.bar(
                [x + shift for x in xs],
                [100 * r.rates[outcome].rate for r in rows],
                width,
                yerr=[[100 * v for v in side] for side in _yerr(rows, outcome)],
                capsize=3,
                color=_COLOURS[outcome],
                ecolor="#333333",
                label=outcome.upper(),
            )
        rotate = len(rows) > 4
        ax.set_xticks(
            xs,
            [f"{r.key}\n({r.faults:,} faults)" for r in rows],
            rotation=45 if rotate else 0,
            ha="right" if rotate else "center",
        )
        ax.set_ylabel("rate (%)")
        ax.set_xlabel("layer")
        ax.legend()
    ax.set_title(f"SDC and DUE rate per layer ({_label(summary)})")
    return _save(fig, Path(path))


def plot_rate_per_bit(summary: Summary, path: str | os.PathLike[str]) -> Path:
    """SDC and DUE rate per bit position with interval bars; returns the path."""
    rows = [r for r in summary.by_bit if isinstance(r.key, int) and r.n > 0]
    fig = _figure(max(6.0, 0.25 * len(rows) + 3.0), 4.0)
    ax = fig.subplots()
    if not rows:
        _empty(ax, "no single-bit runs")
    else:
        xs = [r.key for r in rows]
        for shift, outcome in ((-0.15, "sdc"), (0.15, "due")):
            ax.errorbar(
                [x + shift for x in xs],
                [100 * r.rates[outcome].rate for r in rows],
                yerr=[[100 * v for v in side] for side in _yerr(rows, outcome)],
                fmt="o",
                capsize=2,
                markersize=4,
                color=_COLOURS[outcome],
                label=outcome.upper(),
            )
        ax.set_xticks(xs)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("bit position (0 = least significant)")
        ax.set_ylabel("rate (%)")
        ax.legend()
    ax.set_title(f"SDC and DUE rate per bit position ({_label(summary)})")
    return _save(fig, Path(path))


def plot_outcome_mix(summary: Summary, path: str | os.PathLike[str]) -> Path:
    """Stacked bars of the four outcomes' shares, overall and per layer; returns the path."""
    rows = [summary.overall, *[r for r in summary.by_layer if r.n > 0][:_MAX_BARS]]
    labels = ["all runs", *[str(r.key) for r in rows[1:]]]
    fig = _figure(7.5, max(2.5, 0.35 * len(rows) + 1.5))
    ax = fig.subplots()
    if summary.runs == 0:
        _empty(ax, "no runs")
    else:
        ys = list(range(len(rows)))[::-1]
        left = [0.0] * len(rows)
        for outcome in summary.overall.counts:  # the four, and detected when a run has it
            shares = [100 * r.counts[outcome] / r.n if r.n else 0.0 for r in rows]
            ax.barh(ys, shares, left=left, color=_COLOURS[outcome], label=outcome)
            left = [a + b for a, b in zip(left, shares)]
        ax.set_yticks(ys, labels)
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of runs (%)")
        fig.legend(ncols=4, loc="outside lower center")
    ax.set_title("Outcome mix")
    return _save(fig, Path(path))


#: A breakdown longer than this goes to its own CSV file; report.md shows its top rows.
MAX_MARKDOWN_ROWS = 60
_TOP_ROWS = 20


def _long_groups(summary: Summary) -> dict[str, tuple[Row, ...]]:
    return {g: rows for g, rows in summary.groups.items() if len(rows) > MAX_MARKDOWN_ROWS}


def _top_table(summary: Summary, group: str, rows: Sequence[Row], file: str) -> list[str]:
    top = sorted(rows, key=lambda r: (-r.counts["sdc"], -r.n))[:_TOP_ROWS]
    lines = [
        f"### {summary._title(group)}",
        "",
        f"{len(rows):,} rows: every row is in [{file}]({file}) (and in report.html); "
        f"the {len(top)} with the most SDC runs:",
        "",
        f"| {group} | runs | SDC | DUE | masked | benign |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in top:
        key = str(row.key).replace("|", "\\|")
        lines.append(
            f"| {key} | {row.n} | {row.sdc.format()} | {row.due.format()} | "
            f"{row.counts['masked']} | {row.counts['benign']} |"
        )
    return lines + [""]


def _markdown(
    summary: Summary,
    meta: dict[str, Any],
    store_path: Path,
    images: Sequence[tuple[str, Path]],
    files: dict[str, str] | None = None,
    state_text: str = "",
    sections: Sequence[str] = (),
) -> str:
    files = files or {}
    long = {g: rows for g, rows in summary.groups.items() if g in files}
    short = dataclasses.replace(
        summary, groups={g: r for g, r in summary.groups.items() if g not in long}
    )
    lines = [
        "# torchfault campaign report",
        "",
        *([f"> **{state_text}**", ""] if state_text else []),
        f"- store: `{store_path}`",
        f"- created: {meta.get('created', '?')} with torchfault {meta.get('torchfault_version', '?')}",
        f"- seed: {meta.get('seed')}",
        f"- fingerprint of model and inputs: `{meta.get('fingerprint', '?')}`",
        f"- runs: {summary.runs:,}; recorded run time {summary.seconds:.1f} s",
        "",
    ]
    if summary.runs:
        sdc, due = summary.overall.sdc, summary.overall.due
        lines += [
            f"**SDC rate {sdc.format()}**, **DUE rate {due.format()}** ({_label(summary)}).",
            "",
        ]
    lines += ["## Summary", "", short.to_markdown().replace("### ", "#### ")]
    for group, rows in long.items():
        lines += [
            line.replace("### ", "#### ") for line in _top_table(summary, group, rows, files[group])
        ]
    lines += ["## Plots", ""]
    for title, image in images:
        lines += [f"### {title}", "", f"![{title}]({image.name})", ""]
    lines += list(sections)
    lines += [
        "## Campaign config",
        "",
        "```json",
        json.dumps(meta.get("config", {}), indent=2, sort_keys=True, default=str),
        "```",
        "",
        f"Groups named `{MULTIPLE}` hold runs whose faults span several layers; `{NONE}`, runs "
        "without faults. A fault flipping several bits is listed under its most significant bit; "
        f"one replacing whole elements under `{WHOLE}`. Rates and intervals are over faults "
        "(each fault one trial, strata weighted by their populations).",
        "",
    ]
    return "\n".join(lines)


def make_report(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
    per_element: bool = False,
    html: bool = False,
    summary: Summary | None = None,
    vulnerability: str | None = None,
) -> list[Path]:
    """Write the plots, ``summary.json`` and ``report.md`` of a stored campaign.

    A breakdown of more than :data:`MAX_MARKDOWN_ROWS` rows (per element, mostly) is written to
    ``summary_<group>.csv`` and ``report.md`` shows its rows with the most SDC runs. A store whose
    campaign is still running, or stopped before it finished, says so at the top.

    Args:
        store_path: the campaign's SQLite store.
        out_dir: where to write (default: the store's folder).
        confidence: confidence level of the intervals.
        method: interval method (default Clopper-Pearson), one of
            :data:`~torchfault.analysis.INTERVAL_METHODS`.
        per_element: also break down per element (in the JSON and Markdown).
        html: also write ``report.html``, one self-contained page with sortable tables
            (:func:`~torchfault.analysis.make_html_report`).
        summary: the store's summary when the caller has computed it already (with these
            ``confidence``, ``method`` and ``per_element``): it is not computed again.
        vulnerability: ``"element"`` or ``"channel"``: add the vulnerability maps (a table of
            the most vulnerable cells per stored tensor and ``heatmap_<module>-<target>.png``);
            ``None`` (default): none. A store with traces always gets a propagation section
            (and ``propagation.png``); one with ``protection.json`` beside it (a protected
            campaign) a protection section (and ``protection.png``,
            :func:`~torchfault.analysis.plot_protection`).

    Returns:
        The files written: ``rate_per_layer.png``, ``rate_per_bit.png``, ``outcome_mix.png``,
        ``summary.json`` and ``report.md``, then any ``summary_<group>.csv`` of long breakdowns
        and ``report.html``.

    Example:
        >>> import tempfile, pathlib
        >>> from torchfault import Fault
        >>> from torchfault.store import ResultStore, FaultRecord, RunRecord
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with ResultStore(tmp / "c.sqlite", campaign={}, fingerprint="x") as s:
        ...     s.add_faults([FaultRecord(0, (Fault("fc", "weight", (0, 0), (30,)),))])
        ...     s.add_runs([RunRecord(0, i, "sdc" if i % 3 else "masked") for i in range(9)])
        >>> [p.name for p in make_report(tmp / "c.sqlite")]
        ['rate_per_layer.png', 'rate_per_bit.png', 'outcome_mix.png', 'summary.json', 'report.md']
    """
    store_path = Path(store_path)
    _figure(1, 1)  # fail early, naming the extra, when matplotlib is missing
    from torchfault.analysis._html import check_vulnerability, make_html_report, store_state
    from torchfault.analysis._protection import protection_markdown
    from torchfault.analysis._sections import propagation_markdown, vulnerability_markdown

    check_vulnerability(vulnerability)

    with open_store(store_path) as store:
        if summary is None:
            summary = summarize_store(store, confidence, method, per_element=per_element)
        meta = store.meta()
        state = store_state(meta, store.count_runs())
    out = Path(out_dir) if out_dir is not None else store_path.parent
    tables = {g: f"summary_{g}.csv" for g in _long_groups(summary)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        images = [
            (
                "SDC and DUE rate per layer",
                plot_rate_per_layer(summary, out / "rate_per_layer.png"),
            ),
            (
                "SDC and DUE rate per bit position",
                plot_rate_per_bit(summary, out / "rate_per_bit.png"),
            ),
            ("Outcome mix", plot_outcome_mix(summary, out / "outcome_mix.png")),
        ]
        summary_json = out / "summary.json"
        summary_json.write_text(json.dumps(summary.to_dict(), indent=1, default=str))
        extra = [summary.to_csv(out / name, groups=[g]) for g, name in tables.items()]
        sections = protection_markdown(
            store_path, out, confidence=summary.confidence, method=summary.method
        )
        with open_store(store_path) as store:
            sections += propagation_markdown(store, out)
            if vulnerability is not None:
                sections += vulnerability_markdown(store, vulnerability, out)
        report = out / "report.md"
        report.write_text(
            _markdown(summary, meta, store_path, images, tables, state.message(), sections)
        )
    except OSError as exc:
        raise TorchFaultError(f"cannot write the report into {str(out)!r}: {exc}") from None
    if html:
        extra.append(
            make_html_report(
                store_path,
                out / "report.html",
                summary=summary,
                files=tables,
                plots=images,
                vulnerability=vulnerability,
            )
        )
    return [p for _, p in images] + [summary_json, report] + extra
