# SPDX-License-Identifier: MIT
"""DNN jobs of the ``torchfault`` command: train, test, prune, quantize, summary, profile.

Each job takes a dataclass config (a YAML file with ``--config`` plus dotted overrides such as
``--trainer.max_epochs 3``); ``--print_config`` prints the merged config. Lightning is imported
only by the jobs that train.
"""

from __future__ import annotations

from typing import Any

from torchfault.cli import command
from torchfault.dnn._training import TestConfig, TrainConfig

__all__: list[str] = []


def _console() -> Any:
    from rich.console import Console

    return Console()


def _metrics_table(title: str, rows: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return table


@command(
    "train",
    TrainConfig,
    "Train a zoo model with PyTorch Lightning (seeded, deterministic); --cv K for K folds.",
    positional=("model",),
)
def train_job(cfg: TrainConfig) -> int:
    from torchfault.dnn import cross_validate, train

    console = _console()
    if cfg.cv:
        result = cross_validate(cfg)
        from rich.table import Table

        keys = sorted(result.mean)
        table = Table(title=f"{cfg.cv}-fold cross-validation of {cfg.model} on {cfg.dataset}")
        table.add_column("fold")
        for k in keys:
            table.add_column(k, justify="right")
        for r in result.folds:
            table.add_row(str(int(r["fold"])), *(f"{r.get(k, float('nan')):.4f}" for k in keys))
        table.add_row("mean", *(f"{result.mean[k]:.4f}" for k in keys))
        table.add_row("std", *(f"{result.std[k]:.4f}" for k in keys))
        console.print(table)
        return 0
    result = train(cfg)
    console.print(_metrics_table(f"{cfg.model} on {cfg.dataset}", result.metrics))
    console.print(f"run: {result.run_dir}")
    if result.best_checkpoint:
        console.print(f"best checkpoint: {result.best_checkpoint}")
    if result.exported is not None:
        console.print(f"exported weights: {result.exported}")
    return 0


@command(
    "test",
    TestConfig,
    "Test a model (shipped weights or a checkpoint) on a dataset split with Lightning.",
    positional=("model",),
)
def test_job(cfg: TestConfig) -> int:
    from torchfault.dnn import test

    metrics = test(cfg)
    src = cfg.checkpoint or "shipped weights"
    _console().print(_metrics_table(f"{cfg.model} ({src}) on {cfg.dataset}/{cfg.split}", metrics))
    return 0
