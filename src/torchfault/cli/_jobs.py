# SPDX-License-Identifier: MIT
"""General jobs: ``torchfault list``."""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass

from torchfault.cli import command
from torchfault.registry import all_registries

# Modules whose import fills the registries; a missing optional extra only hides its entries.
_FAMILY_MODULES = (
    "torchfault.faults",
    "torchfault.injectors",
    "torchfault.samplers",
    "torchfault.campaign",
    "torchfault.dnn",
)


def load_families() -> None:
    """Import every module that registers entries (skipping those whose extra is missing)."""
    for mod in _FAMILY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(mod)


@dataclass
class ListConfig:
    """Settings of ``torchfault list``.

    Attributes:
        registry: only this registry (e.g. ``fault_models``); empty for all.
        filter: wildcard over entry names.
    """

    registry: str = ""
    filter: str = ""


@command(
    "list",
    ListConfig,
    "List every registry: fault models, injectors, samplers, executors, models, datasets.",
    positional=("registry",),
)
def list_job(cfg: ListConfig) -> int:
    from rich.console import Console
    from rich.table import Table

    load_families()
    regs = all_registries()
    if cfg.registry:
        if cfg.registry not in regs:
            from torchfault.errors import TorchFaultError, suggest

            raise TorchFaultError(
                f"registry: unknown registry {cfg.registry!r}; valid: {', '.join(regs)}.{suggest(cfg.registry, regs)}"
            )
        regs = {cfg.registry: regs[cfg.registry]}
    console = Console()
    shown = 0
    for plural, reg in regs.items():
        infos = reg.infos(cfg.filter or None)
        if cfg.filter and not infos:
            continue  # a filter hides the families it does not match
        table = Table(title=plural, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("capabilities")
        for info in infos:
            caps = ", ".join(f"{k}={v}" for k, v in info.capabilities.items() if v is not None)
            table.add_row(info.name, info.description, caps)
        console.print(table)
        shown += len(infos)
    if cfg.filter and not shown:
        console.print(f"no entry matches {cfg.filter!r} in {', '.join(regs)}")
    return 0
