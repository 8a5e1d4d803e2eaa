# SPDX-License-Identifier: MIT
"""``torchfault report STORE``: plots, summary tables and exports of a stored campaign."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchfault.cli import command
from torchfault.errors import ConfigError

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
        export: also export the runs: ``csv`` and/or ``parquet`` (``runs.csv``, ``runs.parquet``).
    """

    store: str = ""
    out_dir: str | None = None
    confidence: float = 0.95
    method: Literal["wilson", "clopper_pearson"] = "wilson"
    per_element: bool = False
    export: list[Literal["csv", "parquet"]] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence!r}.")


@command(
    "report",
    ReportConfig,
    "Plots (rate per layer and per bit, outcome mix) and a Markdown summary of a stored campaign.",
    positional=("store",),
)
def report_job(cfg: ReportConfig) -> int:
    from rich.console import Console

    from torchfault.analysis import make_report
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
        store.summary(cfg.confidence, cfg.method, per_element=cfg.per_element).print(console)
        for kind in cfg.export or ():
            path = out / f"runs.{kind}"
            files.append(store.export_csv(path) if kind == "csv" else store.export_parquet(path))
    console.print("wrote " + ", ".join(str(p) for p in files))
    return 0
