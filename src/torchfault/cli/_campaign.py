# SPDX-License-Identifier: MIT
"""``torchfault campaign``: run (or resume) a stored campaign from a YAML config."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torchfault.campaign import Campaign, CampaignConfig
from torchfault.cli import command
from torchfault.errors import TorchFaultError

log = logging.getLogger("torchfault")


def setup_logging(run_dir: str | Path, name: str = "campaign") -> Path:
    """Log to the console (rich) and to ``<run_dir>/<name>.log``; returns the log file path.

    Records logged with ``extra={"file_only": True}`` (the summary tables, errors the command
    line prints anyway) go to the file only.
    """
    from rich.logging import RichHandler

    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    log_file = path / f"{name}.log"
    root = logging.getLogger("torchfault")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_torchfault", False):
            root.removeHandler(h)
            h.close()
    console = RichHandler(show_path=False, rich_tracebacks=False)
    console.setLevel(logging.INFO)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    file = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in (console, file):
        h._torchfault = True  # type: ignore[union-attr]
        h.addFilter(_printable)
        root.addHandler(h)
    root.propagate = False
    return log_file


def _printable(record: logging.LogRecord) -> bool:
    """Make a record's message printable: a file name of any bytes (undecodable bytes read
    from the command line as lone surrogates) is written with ``\\xNN`` escapes instead of
    failing in the handler (``--- Logging error ---``)."""
    from torchfault.config import safe_text

    message = record.getMessage()
    safe = safe_text(message)
    if safe is not message:
        record.msg, record.args = safe, ()
    return True


@command(
    "campaign", CampaignConfig, "Run (or resume) a fault-injection campaign and store its results."
)
def campaign_job(cfg: CampaignConfig) -> int:
    from torchfault.errors import ConfigError

    try:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"out_dir: cannot create the run directory {cfg.run_dir!r}: {exc}"
        ) from None
    log_file = setup_logging(cfg.run_dir)
    try:
        return _run_campaign(cfg, log_file)
    except TorchFaultError as exc:
        log.error("error: %s", exc, extra=_FILE_ONLY)
        raise
    except KeyboardInterrupt:
        log.error("interrupted", extra=_FILE_ONLY)
        raise
    except Exception:
        log.exception("the campaign failed", extra=_FILE_ONLY)
        raise
    finally:
        _close_logging()


def _close_logging() -> None:
    """Remove and close the handlers :func:`setup_logging` added (the log file is complete; a
    later job in the same process logs afresh)."""
    root = logging.getLogger("torchfault")
    for h in list(root.handlers):
        if getattr(h, "_torchfault", False):
            root.removeHandler(h)
            h.close()
    root.propagate = True


_FILE_ONLY = {"file_only": True}


def metrics_table(metrics: dict[str, dict[str, dict[str, float]]]) -> list[list[str]]:
    """Rows (metric, outcome, runs, mean, min, max) of :meth:`Campaign.metrics_summary`'s
    result, ``all`` first for each metric; empty for a criterion that returns no metrics.

    Example:
        >>> metrics_table({"rel_error": {"all": {"n": 2, "mean": 0.5, "min": 0.0, "max": 1.0}}})
        [['rel_error', 'all', '2', '0.5', '0', '1']]
    """
    rows = []
    for name, per in metrics.items():
        for outcome in sorted(per, key=lambda o: (o != "all", o)):
            s = per[outcome]
            rows.append(
                [
                    name,
                    outcome,
                    str(int(s["n"])),
                    *(f"{float(s[k]):.4g}" for k in ("mean", "min", "max")),
                ]
            )
    return rows


def _print_metrics(console: Any, metrics: dict[str, dict[str, dict[str, float]]]) -> None:
    """The criterion's metrics (``rel_error``, ``miou_drop``...) per outcome, after the outcome
    summary; nothing for a criterion without metrics."""
    rows = metrics_table(metrics)
    if not rows:
        return
    from rich.table import Table

    table = Table(title="criterion metrics over the stored runs")
    for col in ("metric", "outcome", "runs", "mean", "min", "max"):
        table.add_column(col, justify="left" if col in ("metric", "outcome") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _run_campaign(cfg: CampaignConfig, log_file: Path) -> int:
    from rich.console import Console

    console = Console()
    camp = Campaign(cfg)
    t0 = time.perf_counter()
    info = camp.describe()
    log.info(
        "campaign %r: model %s, %d inputs (golden accuracy %s), %d fault sites, population %s, %s, store %s",
        cfg.name,
        info["model"],
        info["inputs"],
        f"{info['golden_accuracy']:.2%}" if info["golden_accuracy"] is not None else "n/a",
        info["sites"],
        f"{info['population']:,}",
        camp.plan_text(),
        info["store"],
    )
    result = camp.run()
    elapsed = time.perf_counter() - t0
    log.info("%d runs stored in %.1f s", len(result), elapsed)
    summary = camp.summary()
    summary.print(console)
    _print_metrics(console, camp.metrics_summary())
    mbit = getattr(camp.sampler, "mbit", None)
    if mbit is not None:  # the memory sampler: rates are per upset; FIT = FIT/Mbit x Mbit x rate
        sdc = summary.overall.rates["sdc"]
        log.info(
            "memory: %s cells, %.4f Mbit; SDC per upset %.4g [%.4g, %.4g]; SDC FIT = raw FIT per "
            "Mbit x %.4f x %.4g (at 1000 FIT/Mbit: %.4g [%.4g, %.4g])",
            f"{camp.sampler.population:,}",
            mbit,
            sdc.rate,
            sdc.low,
            sdc.high,
            mbit,
            sdc.rate,
            camp.sampler.fit(1000.0, sdc.rate),
            camp.sampler.fit(1000.0, sdc.low),
            camp.sampler.fit(1000.0, sdc.high),
        )
    log.info("summary:\n%s", summary.to_markdown(), extra=_FILE_ONLY)
    from torchfault.store import ResultStore

    outputs = [Path(cfg.store_path), log_file]
    with ResultStore(Path(cfg.store_path), mode="r") as store:
        for fmt in cfg.store.export:
            out = Path(cfg.run_dir) / f"runs.{fmt}"
            getattr(store, f"export_{fmt}")(out)
            outputs.append(out)
    if cfg.store.export:
        from torchfault.analysis import export_summaries

        outputs.extend(export_summaries(summary, cfg.run_dir, cfg.store.export))
    if cfg.report:
        try:
            from torchfault.analysis import make_report

            outputs.extend(
                make_report(
                    cfg.store_path,
                    cfg.run_dir,
                    confidence=cfg.sampler.confidence,
                    method=cfg.interval,
                    html=True,
                )
            )
        except (ImportError, TorchFaultError) as exc:
            # the runs are stored: a report that cannot be made (matplotlib missing) is a warning
            log.warning(
                "no report: %s (the runs are stored; `torchfault report %s` makes it later)",
                exc,
                cfg.store_path,
            )
    from torchfault.config import safe_text

    console.print("[bold]written:[/bold] " + safe_text(", ".join(str(p) for p in outputs)))
    log.info("written: %s", ", ".join(str(p) for p in outputs), extra=_FILE_ONLY)
    return 0
