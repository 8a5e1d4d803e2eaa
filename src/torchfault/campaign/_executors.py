# SPDX-License-Identifier: MIT
"""Executors: where injection runs execute. A registry; ``serial`` runs in this process.

An executor takes a picklable ``setup`` callable that builds an :class:`Engine` (called once per
worker) and an iterable of task chunks, and yields each chunk's run records as they finish, in
any order (what :func:`~torchfault.campaign._engine.run_chunk` returns: with an engine that
traces, a :class:`~torchfault.campaign._engine.Chunk` that carries the runs' traces too). The
campaign keeps the single writer of the store in the main process.

``threads`` runs chunks concurrently in this process, on ``workers`` Python threads (torch's
kernels release the GIL, so the threads' kernels overlap): no spawn, no pickling. An engine is
used by one thread at a time: the reference engine writes weight faults into its model in place
and hooks its modules, and the fast engine swaps a faulty parameter into its module for the call
(``torch.func.functional_call``), so two threads on one model would see each other's faults. The first
thread uses the engine that ``setup`` builds on the caller's model; every other thread builds its
engine from a deep copy of ``setup`` (its own model; the copy is made once per map call). The
fast engines share the first one's golden values (cache, verified blocks, row-check verdict:
``FastEngine.share_golden``), so a map holds one golden cache and verifies each block once. The
engines are built, and run their first chunk, one after another before the threads start: the
fast engine traces its model with ``torch.fx`` on its first run, and tracing patches
``nn.Module.__call__`` process-wide, which would capture another thread's model running then.

Why not ``torch.jit.fork``: in eager mode (a Python function, not TorchScript) ``torch.jit.fork``
runs the function at once, in the calling thread, so it would run the chunks one after another
(checked on torch 2.13: every forked call reports the caller's thread id).
"""

from __future__ import annotations

import abc
import copy
import pickle
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from torchfault.campaign._engine import Engine, RunTask, run_chunk
from torchfault.errors import TorchFaultError
from torchfault.registry import Registry
from torchfault.store import RunRecord

__all__ = [
    "EXECUTORS",
    "Executor",
    "SerialExecutor",
    "ThreadsExecutor",
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
            yield run_chunk(engine, chunk)


def _private_copy(setup: Callable[[], Engine]) -> Callable[[], Engine]:
    """A copy of ``setup`` sharing no tensor with it: a deep copy, else a pickle round trip."""
    try:
        return copy.deepcopy(setup)
    except Exception as first:  # noqa: BLE001 - some modules cannot be deep-copied
        try:
            return pickle.loads(pickle.dumps(setup))
        except Exception:  # noqa: BLE001 - name both failures
            raise TorchFaultError(
                f"executor 'threads': the engine setup can be neither deep-copied "
                f"({type(first).__name__}: {first}) nor pickled, so threads cannot get their own "
                "model; use executor.workers: 1 or executor 'serial'."
            ) from None


@EXECUTORS.register(
    "threads",
    description="Threads in this process (no spawn or pickling); one engine and model copy per thread.",
)
class ThreadsExecutor(Executor):
    """Runs chunks on ``workers`` threads of this process, each with its own engine.

    Example:
        >>> from torchfault.campaign import create_executor
        >>> ex = create_executor("threads", workers=2)
        >>> ex.name, ex.workers
        ('threads', 2)
    """

    name = "threads"

    def map(
        self, setup: Callable[[], Engine], chunks: Iterable[Sequence[RunTask]]
    ) -> Iterator[list[RunRecord]]:
        todo = [list(c) for c in chunks]
        if not todo:
            return
        n = min(self.workers, len(todo))
        # copies made here, in the caller's thread, before any thread runs a fault
        setups = [setup] + [_private_copy(setup) for _ in range(n - 1)]
        lock = threading.Lock()
        pending = iter(todo)
        results: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()
        # every engine is built, and runs its first chunk, here, one after another: building and
        # first runs may trace the model with torch.fx, which patches nn.Module.__call__ for the
        # whole process while it traces, so a model running in another thread at that moment
        # would be traced into the wrong graph ("module is not installed as a submodule")
        engines: list[Engine] = []
        for make in setups:
            engine = make()
            share = getattr(engine, "share_golden", None)
            if engines and callable(share):  # the fast engine: one golden cache for all
                share(engines[0])
            engines.append(engine)
            chunk = next(pending, None)
            if chunk is not None:
                yield run_chunk(engine, chunk)

        def work(engine: Engine) -> None:
            try:
                while not stop.is_set():
                    with lock:
                        chunk = next(pending, None)
                    if chunk is None:
                        break
                    results.put(("records", run_chunk(engine, chunk)))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                results.put(("error", exc))
            finally:
                results.put(("done", None))

        threads = [
            threading.Thread(target=work, args=(e,), name=f"torchfault-run-{i}", daemon=True)
            for i, e in enumerate(engines)
        ]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                kind, value = results.get()
                if kind == "done":
                    running -= 1
                elif kind == "error":
                    raise value
                else:
                    yield value
        finally:
            stop.set()
            for t in threads:
                t.join()


# register_executor (a decorator for Executor subclasses), list_executors, is_executor,
# create_executor
register_executor, list_executors, is_executor, create_executor, _ = EXECUTORS.functions()
