# SPDX-License-Identifier: MIT
"""``torchfault campaign``: run (or resume) a stored campaign from a YAML config."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torchfault.campaign import Campaign, CampaignConfig
from torchfault.cli import command

log = logging.getLogger("torchfault")


def setup_logging(run_dir: str | Path, name: str = "campaign") -> Path:
    """Log to the console (rich) and to ``<run_dir>/<name>.log``; returns the log file path."""
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
    file = logging.FileHandler(log_file)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in (console, file):
        h._torchfault = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.propagate = False
    return log_file


@command("campaign", CampaignConfig, "Run (or resume) a fault-injection campaign and store its results.")
def campaign_job(cfg: CampaignConfig) -> int:
    from rich.console import Console

    try:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from torchfault.errors import ConfigError

        raise ConfigError(f"out_dir: cannot create the run directory {cfg.run_dir!r}: {exc}") from None
    log_file = setup_logging(cfg.run_dir)
    console = Console()
    camp = Campaign(cfg)
    t0 = time.perf_counter()
    info = camp.describe()
    log.info(
        "campaign %r: model %s, %d inputs (golden accuracy %s), %d fault sites, population %s, "
        "%d faults, %d runs, store %s",
        cfg.name,
        info["model"],
        info["inputs"],
        f"{info['golden_accuracy']:.2%}" if info["golden_accuracy"] is not None else "n/a",
        info["sites"],
        f"{info['population']:,}",
        info["faults"],
        info["runs"],
        info["store"],
    )
    result = camp.run()
    elapsed = time.perf_counter() - t0
    log.info("%d runs stored in %.1f s", len(result), elapsed)
    summary = result.summary(confidence=cfg.sampler.confidence)
    summary.print(console)
    from torchfault.store import ResultStore

    outputs = [Path(cfg.store_path), log_file]
    with ResultStore(Path(cfg.store_path), mode="r") as store:
        for fmt in cfg.store.export:
            out = Path(cfg.run_dir) / f"runs.{fmt}"
            getattr(store, f"export_{fmt}")(out)
            outputs.append(out)
    if cfg.report:
        try:
            from torchfault.analysis import make_report

            outputs.extend(make_report(cfg.store_path, cfg.run_dir))
        except ImportError as exc:
            log.warning("no report: %s", exc)
    console.print("[bold]written:[/bold] " + ", ".join(str(p) for p in outputs))
    return 0
