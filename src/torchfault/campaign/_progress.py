# SPDX-License-Identifier: MIT
"""The campaign's progress bar (rich; a no-op when disabled)."""

from __future__ import annotations

import time
from typing import Any


class _Progress:
    """A rich progress bar with runs/s and ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int | None, done: int) -> None:
        self.enabled, self.total, self.done, self.new = enabled, total, done, 0
        self.t0 = time.perf_counter()
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]campaign"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} runs/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("runs", total=self.total, completed=self.done, rate="-")
        return self

    def advance(self, n: int) -> None:
        self.done += n
        self.new += n
        if self._bar is not None:
            rate = self.new / max(time.perf_counter() - self.t0, 1e-9)
            self._bar.update(self._task, advance=n, rate=f"{rate:,.0f}")

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
