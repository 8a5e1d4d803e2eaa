# SPDX-License-Identifier: MIT
"""``torchfault report STORE``: plots, summary tables and exports of a stored campaign."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torchfault.cli import command
from torchfault.errors import ConfigError, suggest

__all__ = ["ReportConfig", "report_job"]


@dataclass
class ReportConfig:
    """Settings of ``torchfault report``.

    Attributes:
        store: the campaign's SQLite results store.
        out_dir: where to write the plots and ``report.md`` (default: the store's folder).
        confidence: confidence level of the intervals, in (0, 1).
        method: interval method.
        per_element: also break the summary down per element.
        export: also export the runs and the summary tables: ``csv`` and/or ``parquet``, as a
            list or comma-separated (``--export csv,parquet``); writes ``runs.<format>`` and
            ``summary_<group>.<format>`` for the groups overall, layer, target, kind and bit.
        html: also write ``report.html``: one self-contained page (sortable tables, the plots,
            every breakdown) that opens in any browser, offline, on a phone too.
        progress: show what is being done (a spinner on a terminal; lines when piped);
            null: on a terminal, and as lines with ``per_element`` (the slow case) when piped.
        vulnerability: also add the vulnerability maps: ``element`` or ``channel`` (the SDC
            rate per element or per channel of every stored tensor hit by single-fault runs,
            as heatmaps ``heatmap_<module>-<target>.png`` and a table of the most vulnerable
            cells, in report.md and report.html); null: none.
    """

    store: str = ""
    out_dir: str | None = None
    confidence: float = 0.95
    method: Literal["clopper_pearson", "wilson", "wilson_modified"] = "clopper_pearson"
    per_element: bool = False
    export: list[str] | None = None
    html: bool = False
    progress: bool | None = None
    vulnerability: Literal["element", "channel"] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence!r}.")
        if self.export is not None:
            formats = [f.strip() for item in self.export for f in str(item).split(",")]
            formats = list(dict.fromkeys(f for f in formats if f))
            for fmt in formats:
                if fmt not in ("csv", "parquet"):
                    raise ValueError(
                        f"export: {fmt!r} is not valid; choose csv and/or parquet."
                        f"{suggest(fmt, ['csv', 'parquet'])}"
                    )
            self.export = formats


@command(
    "report",
    ReportConfig,
    "Plots (rate per layer and per bit, outcome mix) and a Markdown summary of a stored campaign.",
    positional=("store",),
)
def report_job(cfg: ReportConfig) -> int:
    import sys

    from rich.console import Console

    from torchfault.analysis import export_summaries, make_report, store_state, summarize_store
    from torchfault.store import open_store

    if not cfg.store:
        raise ConfigError(
            "store: give the campaign's results store, e.g. torchfault report runs/demo/campaign.sqlite."
        )
    if not Path(cfg.store).is_file():
        raise ConfigError(f"store: no such file {cfg.store!r}.")
    console = Console()
    err = Console(stderr=True)
    with open_store(cfg.store) as store:
        state = store_state(store.meta(), store.count_runs())
        n_runs = state.runs
    if state.message():
        print(f"torchfault report: warning: {state.message()}", file=sys.stderr)
    show = (sys.stderr.isatty() or cfg.per_element) if cfg.progress is None else cfg.progress
    with _Stages(err, show) as stage:
        stage(f"summarising {n_runs:,} runs" + (" per element" if cfg.per_element else ""))
        with open_store(cfg.store) as store:
            full = summarize_store(store, cfg.confidence, cfg.method, per_element=cfg.per_element)
        stage("drawing the plots, writing the report" + (" and report.html" if cfg.html else ""))
        files = make_report(
            cfg.store,
            cfg.out_dir,
            confidence=cfg.confidence,
            method=cfg.method,
            per_element=cfg.per_element,
            html=cfg.html,
            summary=full,
            vulnerability=cfg.vulnerability,
        )
        out = files[0].parent
        stage("printing the summary")
        with open_store(cfg.store) as store:
            summary = full
            if cfg.per_element:  # thousands of rows belong in the files, not on the screen
                summary = dataclasses.replace(
                    summary, groups={g: r for g, r in summary.groups.items() if g != "element"}
                )
            summary.print(console)
            for kind in cfg.export or ():
                stage(f"exporting the runs as {kind}")
                path = out / f"runs.{kind}"
                files.append(
                    store.export_csv(path) if kind == "csv" else store.export_parquet(path)
                )
        if cfg.export:
            files += export_summaries(summary, out, cfg.export)
    if cfg.per_element:
        console.print(
            "per-element rates: "
            + ", ".join(str(p) for p in files if p.name in ("report.html", "summary_element.csv"))
            + f" (and {out / 'report.md'})"
        )
    console.print("wrote " + ", ".join(str(p) for p in files))
    return 0


class _Stages:
    """What the report is doing: a spinner on a terminal, one line per stage when piped."""

    def __init__(self, console: Any, show: bool) -> None:
        self.console, self.show = console, show
        self._status: Any = None  # rich's status spinner while it shows
        self._t0 = time.perf_counter()

    def __enter__(self) -> _Stages:
        if self.show and self.console.is_terminal:
            self._status = self.console.status("")
            self._status.__enter__()
        return self

    def __call__(self, text: str) -> None:
        if not self.show:
            return
        if self._status is not None:
            self._status.update(text + "...")
        else:
            self.console.print(f"[{time.perf_counter() - self._t0:5.1f} s] {text}...")

    def __exit__(self, *exc: Any) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
