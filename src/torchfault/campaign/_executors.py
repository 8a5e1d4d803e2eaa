# SPDX-License-Identifier: MIT
"""Executors: where injection runs execute. A registry; ``serial`` runs in this process.

An executor takes a picklable ``setup`` callable that builds an :class:`Engine` (called once per
worker) and an iterable of task chunks, and yields each chunk's run records as they finish, in
any order. The campaign keeps the single writer of the store in the main process.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from torchfault.campaign._engine import Engine, RunTask
from torchfault.registry import Registry
from torchfault.store import RunRecord

__all__ = [
    "EXECUTORS",
    "Executor",
    "SerialExecutor",
    "register_executor",
    "list_executors",
    "is_executor",
    "create_executor",
]

EXECUTORS: Registry[type] = Registry("executor")


class Executor(abc.ABC):
    """Base class of executors.

    Args:
        workers: number of workers (processes or Ray tasks in flight); ignored by ``serial``.
        address: cluster address (Ray); ignored by others.
    """

    name = "base"

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        if int(workers) < 1:
            raise ValueError(f"executor.workers must be >= 1, got {workers}.")
        self.workers = int(workers)
        self.address = address

    @abc.abstractmethod
    def map(
        self, setup: Callable[[], Engine], chunks: Iterable[Sequence[RunTask]]
    ) -> Iterator[list[RunRecord]]:
        """Yield each chunk's run records as it finishes (in any order)."""

    def close(self) -> None:  # noqa: B027 - optional hook: executors without workers keep it
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@EXECUTORS.register("serial", description="Run every chunk in this process, one after another.")
class SerialExecutor(Executor):
    name = "serial"

    def map(
        self, setup: Callable[[], Engine], chunks: Iterable[Sequence[RunTask]]
    ) -> Iterator[list[RunRecord]]:
        engine = setup()
        for chunk in chunks:
            yield engine.run(chunk)


def register_executor(name: str, **kw: Any) -> Any:
    """Decorator registering an :class:`Executor` subclass."""
    return EXECUTORS.register(name, **kw)


def list_executors(filter: str | None = None) -> list[str]:
    """Registered executor names."""
    return EXECUTORS.list(filter)


def is_executor(name: str) -> bool:
    """Whether ``name`` is a registered executor."""
    return EXECUTORS.is_registered(name)


def create_executor(name: str, **kwargs: Any) -> Executor:
    """Build the executor ``name``."""
    return EXECUTORS.create(name, **kwargs)
