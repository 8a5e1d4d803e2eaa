# SPDX-License-Identifier: MIT
"""``torchfault report STORE``: plots, summary tables and exports of a stored campaign."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    """

    store: str = ""
    out_dir: str | None = None
    confidence: float = 0.95
    method: Literal["wilson", "clopper_pearson"] = "wilson"
    per_element: bool = False
    export: list[str] | None = None

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
    from rich.console import Console

    from torchfault.analysis import export_summaries, make_report
    from torchfault.store import open_store

    if not cfg.store:
        raise ConfigError(
            "store: give the campaign's results store, e.g. torchfault report runs/demo/campaign.sqlite."
        )
    if not Path(cfg.store).is_file():
        raise ConfigError(f"store: no such file {cfg.store!r}.")
    console = Console()
    files = make_report(
        cfg.store,
        cfg.out_dir,
        confidence=cfg.confidence,
        method=cfg.method,
        per_element=cfg.per_element,
    )
    out = files[0].parent
    with open_store(cfg.store) as store:
        summary = store.summary(cfg.confidence, cfg.method, per_element=cfg.per_element)
        summary.print(console)
        for kind in cfg.export or ():
            path = out / f"runs.{kind}"
            files.append(store.export_csv(path) if kind == "csv" else store.export_parquet(path))
    if cfg.export:
        files += export_summaries(summary, out, cfg.export)
    console.print("wrote " + ", ".join(str(p) for p in files))
    return 0
