# SPDX-License-Identifier: MIT
"""Parallel executors: ``process`` (worker processes on one machine) and ``ray`` (a Ray cluster).

Both follow the :class:`~torchfault.campaign.Executor` contract: ``setup`` (a picklable callable
that builds the engine) runs once per worker, chunks of tasks are handed to free workers, and
each chunk's run records come back to the caller, the single writer of the store, in whatever
order chunks finish. A run's outcome does not depend on the worker that ran it, so the stored
table is the same whichever executor ran (or resumed) a campaign.

Workers never share mutable model state. The ``setup`` callable travels to each worker as plain
pickled bytes (never through torch's shared-memory tensor sharing): the reference engine writes
weight faults into its model in place, and two workers writing into one shared copy would see each
other's faults (issue 10: 1,660 of 11,658 rows differed from serial on the demo). Each worker
unpickles its own private model, inputs and golden outputs.

A worker process exits on its own within a fraction of a second when the process that started it
dies (even by ``kill -9``): a watchdog thread polls the parent's pid five times a second, so a
killed campaign leaves no worker behind.

``auto`` picks where runs execute from the campaign's size: it runs the first chunk in this
process, estimates the serial time of the rest from it, and starts worker processes only when
that estimate is large enough for them to pay back their start-up (spawning a worker that imports
torch costs seconds); otherwise it finishes serially.

Devices: when the campaign's model lives on a CUDA GPU (``engine.device`` ``cuda`` or ``cuda:N``),
each ``process`` worker gets one GPU of its own, round-robin over the GPUs this process sees
starting at the campaign's (:func:`worker_devices`): the model, inputs and golden outputs are
loaded straight onto that GPU in the worker. Ray actors ask Ray for ``num_gpus`` GPUs each (by
default one when the campaign is on CUDA, none otherwise) and load onto the GPU Ray gives them. On
the CPU (and ``mps``) nothing changes: every worker uses the campaign's device. None of this has
been run on a GPU by torchfault's tests (their machines have none): the assignment and the Ray
options are unit-tested with a mocked GPU count, the GPU tests are marked ``gpu``.

Ray is imported only when the ``ray`` executor is used; without it, that executor raises a
:class:`~torchfault.errors.TorchFaultError` that names the ``ray`` extra.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from torchfault.campaign._engine import Engine, RunTask, run_chunk
from torchfault.campaign._executors import EXECUTORS, Executor
from torchfault.errors import TorchFaultError
from torchfault.store import RunRecord

__all__ = [
    "AutoExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "campaign_device",
    "ray_actor_options",
    "worker_devices",
]

log = logging.getLogger("torchfault.campaign")


def _threads_per_worker(workers: int) -> int:
    """The parent's intra-op threads, capped so that all workers together fit the machine."""
    cpus = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cpus // max(workers, 1)))


# ---------------------------------------------------------------------- process workers
_WORKER_ENGINE: Engine | None = None


def _setup_bytes(setup: Callable[[], Engine]) -> bytes:
    """``setup`` as plain pickle bytes: tensors are copied into the bytes, never shared."""
    try:
        return pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - name what could not travel
        raise TorchFaultError(
            f"the engine setup cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
            "a model built by a 'file.py:function' factory must be importable, or use "
            "executor 'serial' or 'threads'."
        ) from None


def campaign_device(setup: Callable[[], Engine]) -> torch.device:
    """The device the engine ``setup`` builds on: that of the first model or tensor among its
    arguments (``setup`` is a :func:`functools.partial` of ``build_engine``, possibly held by a
    wrapper object such as one that counts the engines it builds), else the CPU.

    Example:
        >>> import functools, torch
        >>> campaign_device(functools.partial(print, torch.nn.Linear(2, 2)))
        device(type='cpu')
    """
    return _device_in(setup, 4) or torch.device("cpu")


def _device_in(obj: Any, depth: int) -> torch.device | None:
    """The device of the first model or tensor in ``obj``: itself, a partial's function and
    arguments, or an object's attributes, looked into ``depth`` levels deep."""
    if isinstance(obj, torch.nn.Module):
        return next((t.device for t in itertools.chain(obj.parameters(), obj.buffers())), None)
    if isinstance(obj, torch.Tensor):
        return obj.device
    if depth <= 0 or isinstance(obj, type):
        return None
    if isinstance(obj, functools.partial):
        parts: Iterable[Any] = (*obj.args, *obj.keywords.values(), obj.func)
    elif hasattr(obj, "__dict__"):
        parts = list(vars(obj).values())
    else:
        return None
    for part in parts:
        found = _device_in(part, depth - 1)
        if found is not None:
            return found
    return None


def worker_devices(
    device: str | torch.device, workers: int, gpus: int | None = None
) -> list[torch.device]:
    """The device of each of ``workers`` worker processes for a campaign on ``device``.

    On a CUDA device the workers take one GPU each, round-robin over the ``gpus`` GPUs visible
    (default ``torch.cuda.device_count()``) starting at ``device``'s index: ``cuda:0`` with two
    GPUs and three workers gives ``cuda:0, cuda:1, cuda:0``. Any other device is every worker's.

    Example:
        >>> worker_devices("cuda", 3, gpus=2)
        [device(type='cuda', index=0), device(type='cuda', index=1), device(type='cuda', index=0)]
        >>> worker_devices("cpu", 2)
        [device(type='cpu'), device(type='cpu')]
    """
    device = torch.device(device)
    if device.type != "cuda":
        return [device] * workers
    n = torch.cuda.device_count() if gpus is None else gpus
    if n < 1:
        raise TorchFaultError(
            f"the campaign runs on {device} but worker processes see no CUDA GPU "
            "(torch.cuda.device_count() is 0); set engine.device to cpu."
        )
    start = (device.index or 0) % n
    return [torch.device("cuda", (start + k) % n) for k in range(workers)]


def _setup_bytes_for_devices(setup: Callable[[], Engine]) -> bytes:
    """``setup`` saved with :func:`torch.save` (copied bytes, never shared memory), so that a
    worker can load its tensors straight onto its own device (:func:`_load_setup`)."""
    buf = io.BytesIO()
    try:
        torch.save(setup, buf)
    except Exception as exc:  # noqa: BLE001 - name what could not travel
        raise TorchFaultError(
            f"the engine setup cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
            "a model built by a 'file.py:function' factory must be importable, or use "
            "executor 'serial' or 'threads'."
        ) from None
    return buf.getvalue()


def _load_setup(data: bytes, home: str, device: str) -> Callable[[], Engine]:
    """The setup of :func:`_setup_bytes_for_devices`, every tensor that was on ``home`` loaded
    onto ``device`` (tensors elsewhere stay where they were)."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    # bytes this campaign's own process pickled a moment ago (a model, inputs and a callable),
    # not a file from elsewhere: weights_only loading cannot hold a callable
    setup: Callable[[], Engine] = torch.load(
        io.BytesIO(data), map_location={home: device}, weights_only=False
    )
    return setup


def _die_with_parent(parent: int) -> None:
    """End this worker when process ``parent`` is gone (a killed campaign leaves no worker)."""
    if os.getppid() != parent:  # died before we got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="torchfault-parent-watch", daemon=True).start()


def _init_worker(
    setup: bytes,
    threads: int,
    parent: int,
    devices: tuple[str, ...] = (),
    home: str = "",
    counter: Any = None,
) -> None:
    global _WORKER_ENGINE
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    if not devices:
        _WORKER_ENGINE = pickle.loads(setup)()
        return
    # the k-th worker started (a replacement for a dead one included) takes devices[k % n]
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    _WORKER_ENGINE = _load_setup(setup, home, devices[k % len(devices)])()


def _run_chunk(chunk: Sequence[RunTask]) -> list[RunRecord]:
    assert _WORKER_ENGINE is not None, "worker not initialised"
    return run_chunk(_WORKER_ENGINE, chunk)


@EXECUTORS.register(
    "process",
    description="Worker processes on this machine (spawned; one engine each, results to the main process).",
)
class ProcessExecutor(Executor):
    """Runs chunks in ``workers`` spawned processes; each builds its engine once.

    Processes are started with the ``spawn`` method (``fork`` after torch has started its thread
    pools can deadlock); the model and inputs travel to each once, as pickled bytes (each worker
    holds its own private copy: no shared, mutable model state). Each
    worker uses the parent's intra-op thread count, capped at ``cpu_count // workers``. The pool
    lives until :meth:`close` (or the end of a ``with`` block), so several ``map`` calls with the
    same ``setup`` reuse it.

    When the campaign is on a CUDA GPU, worker ``k`` (in the order they start) runs on
    ``worker_devices(device, workers)[k]``: one GPU each, round-robin over the visible GPUs
    (:attr:`devices` after :meth:`map` lists them); on the CPU nothing changes.

    Example:
        >>> from torchfault.campaign import create_executor
        >>> ex = create_executor("process", workers=2)
        >>> ex.name, ex.workers
        ('process', 2)
        >>> ex.close()
    """

    name = "process"

    def __init__(self, workers: int = 2, address: str | None = None) -> None:
        super().__init__(workers, address)
        self._pool: Any = None
        self._setup: Any = None
        #: the campaign's device, when the caller knows it (else read from the setup's model)
        self.device: torch.device | None = None
        #: the device each worker was given (empty when they all use the campaign's device)
        self.devices: list[torch.device] = []

    def _ensure_pool(self, setup: Callable[[], Engine]) -> Any:
        if self._pool is not None and self._setup is setup:
            return self._pool
        self.close()
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        threads = _threads_per_worker(self.workers)
        home = self.device if self.device is not None else campaign_device(setup)
        if home.type == "cuda":
            self.devices = worker_devices(home, self.workers)
            log.info(
                "executor process: %d workers on %s",
                self.workers,
                ", ".join(str(d) for d in self.devices),
            )
            initargs: tuple[Any, ...] = (
                _setup_bytes_for_devices(setup),
                threads,
                os.getpid(),
                tuple(str(d) for d in self.devices),
                str(home),
                ctx.Value("i", 0),
            )
        else:
            self.devices = []
            initargs = (_setup_bytes(setup), threads, os.getpid())
        self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=initargs)
        self._setup = setup
        return self._pool

    def map(
        self, setup: Callable[[], Engine], chunks: Iterable[Sequence[RunTask]]
    ) -> Iterator[list[RunRecord]]:
        chunks = [list(c) for c in chunks]
        if not chunks:
            return
        pool = self._ensure_pool(setup)
        try:
            yield from pool.imap_unordered(_run_chunk, chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            self._setup = None


# ---------------------------------------------------------------------- auto
@EXECUTORS.register(
    "auto",
    description="Serial for small campaigns; worker processes once the first chunk shows they pay back their start.",
)
class AutoExecutor(Executor):
    """Serial, or ``process`` workers when the runs left are long enough to gain from them.

    The first chunk runs in this process; its time, scaled by the runs left, estimates the
    serial time of the rest. Worker processes are started only when that estimate exceeds
    :attr:`start_seconds` (the start-up of one spawned worker that imports torch and builds its
    engine, seconds on a loaded machine) times ``workers / (workers - 1)``, i.e. when the time
    they save exceeds their start; with one worker or one CPU it stays serial. The choice is
    logged and kept in :attr:`chosen`. Outcomes do not depend on it.

    Example:
        >>> from torchfault.campaign import create_executor
        >>> ex = create_executor("auto", workers=2)
        >>> ex.name, ex.chosen
        ('auto', None)
    """

    name = "auto"
    #: seconds a pool of worker processes takes to start and build their engines (measured:
    #: 100 LeNet runs took 8 s with ``process``, 1.5 s serially)
    start_seconds = 10.0

    def __init__(self, workers: int = 2, address: str | None = None) -> None:
        super().__init__(workers, address)
        self.chosen: str | None = None
        self._process: ProcessExecutor | None = None

    def map(
        self, setup: Callable[[], Engine], chunks: Iterable[Sequence[RunTask]]
    ) -> Iterator[list[RunRecord]]:
        todo = [list(c) for c in chunks]
        if not todo:
            return
        engine = setup()
        t0 = time.perf_counter()
        yield run_chunk(engine, todo[0])
        first = time.perf_counter() - t0
        rest = todo[1:]
        if not rest:
            self.chosen = self.chosen or "serial"
            return
        runs = lambda cs: sum(len(t.input_ids) for c in cs for t in c)  # noqa: E731
        estimate = first * runs(rest) / max(runs(todo[:1]), 1)
        workers = min(self.workers, len(rest), os.cpu_count() or 1)
        gain = estimate * (1 - 1 / workers) if workers > 1 else 0.0
        self.chosen = "process" if gain > self.start_seconds else "serial"
        log.info(
            "executor auto: %d runs left, about %.1f s serially: %s",
            runs(rest),
            estimate,
            f"{workers} worker processes" if self.chosen == "process" else "serial",
        )
        if self.chosen == "serial":
            for chunk in rest:
                yield run_chunk(engine, chunk)
            return
        if self._process is None:
            self._process = ProcessExecutor(workers)
        yield from self._process.map(setup, rest)

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None


# ---------------------------------------------------------------------- ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TorchFaultError(
            "executor 'ray' needs Ray, which is not installed; install the 'ray' extra: "
            "pip install 'torchfault[ray]' (or choose executor 'process' or 'serial')."
        ) from None
    return ray


def ray_actor_options(num_gpus: float | None, device: str | torch.device) -> dict[str, Any]:
    """The resources each Ray actor asks for: one CPU, and ``num_gpus`` GPUs (``None``: one
    when the campaign's ``device`` is a CUDA GPU, else none).

    Example:
        >>> ray_actor_options(None, "cuda:0")
        {'num_cpus': 1, 'num_gpus': 1}
        >>> ray_actor_options(0.5, "cuda")
        {'num_cpus': 1, 'num_gpus': 0.5}
        >>> ray_actor_options(None, "cpu")
        {'num_cpus': 1, 'num_gpus': 0}
    """
    cuda = torch.device(device).type == "cuda"
    gpus = (1 if cuda else 0) if num_gpus is None else num_gpus
    if gpus < 0:
        raise TorchFaultError(f"executor.num_gpus: must be >= 0, got {num_gpus}.")
    if cuda and gpus == 0:
        raise TorchFaultError(
            f"executor.num_gpus: 0 GPUs per Ray actor, but the campaign runs on {device} "
            "(engine.device); give num_gpus > 0 (e.g. 1, or 0.5 for two actors per GPU) or "
            "set engine.device to cpu."
        )
    return {"num_cpus": 1, "num_gpus": gpus}


class _RayWorker:
    """Body of the Ray actor: builds the engine once, then runs chunks."""

    def __init__(self, setup: bytes, threads: int, home: str = "") -> None:
        torch.set_num_threads(threads)
        if home.startswith("cuda"):
            # Ray shows an actor only the GPUs it was given: the first is cuda:0 here
            self.engine = _load_setup(setup, home, "cuda:0")()
        else:
            self.engine = pickle.loads(setup)()  # a private copy: actors share no mutable state

    def run(self, chunk: Sequence[RunTask]) -> list[RunRecord]:
        return run_chunk(self.engine, chunk)


@EXECUTORS.register(
    "ray",
    description="A Ray cluster: 'address' None or 'local' starts a local one, 'auto' or 'ray://...' connects.",
)
class RayExecutor(Executor):
    """Runs chunks on ``workers`` Ray actors (one CPU each); each builds its engine once.

    Args:
        workers: actors to start.
        num_gpus: GPUs each actor asks Ray for (fractions share a GPU); ``None``: one when the
            campaign's model is on a CUDA GPU, none otherwise (:func:`ray_actor_options`). An
            actor with a GPU loads the model, inputs and golden outputs onto it.
        address: ``None`` or ``"local"``: use the Ray runtime already initialised in this process
            or start a local one; ``"auto"``: connect to the cluster this machine belongs to; any
            other value is passed to ``ray.init(address=...)`` (``"ray://head:10001"``).

    A runtime this executor started is shut down by :meth:`close`; one it found running is left.

    Example:
        >>> from torchfault.campaign import create_executor
        >>> ex = create_executor("ray", workers=2, address="auto")  # nothing starts before map()
        >>> ex.name, ex.address
        ('ray', 'auto')
    """

    name = "ray"

    def __init__(
        self, workers: int = 2, address: str | None = None, num_gpus: float | None = None
    ) -> None:
        super().__init__(workers, address)
        self.num_gpus = num_gpus
        #: the campaign's device, when the caller knows it (else read from the setup's model)
        self.device: torch.device | None = None
        self._started = False
        self._actors: list[Any] = []
        self._setup: Any = None

    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address in (None, "", "local"):
                kw["num_cpus"] = max(self.workers, 1)
            else:
                kw["address"] = self.address
            try:
                ray.init(**kw)
            except Exception as exc:  # noqa: BLE001 - name the address in the error
                raise TorchFaultError(
                    f"executor 'ray': cannot start or reach a Ray cluster at address={self.address!r}: {exc}"
                ) from None
            self._started = True
        return ray

    def _ensure_actors(self, setup: Callable[[], Engine]) -> list[Any]:
        if self._actors and self._setup is setup:
            return self._actors
        home = self.device if self.device is not None else campaign_device(setup)
        options = ray_actor_options(self.num_gpus, home)  # a bad num_gpus before Ray starts
        ray = self._connect()
        self._kill_actors()
        actor = ray.remote(**options)(_RayWorker)
        if home.type == "cuda":
            ref = ray.put(_setup_bytes_for_devices(setup))
            self._actors = [actor.remote(ref, 1, str(home)) for _ in range(self.workers)]
        else:
            ref = ray.put(_setup_bytes(setup))
            self._actors = [actor.remote(ref, 1) for _ in range(self.workers)]
        self._setup = setup
        return self._actors

    def map(
        self, setup: Callable[[], Engine], chunks: Iterable[Sequence[RunTask]]
    ) -> Iterator[list[RunRecord]]:
        chunks = [list(c) for c in chunks]
        if not chunks:
            return
        actors = self._ensure_actors(setup)
        ray = _import_ray()
        todo = iter(chunks)
        running: dict[Any, Any] = {}
        try:
            # two chunks in flight per actor keeps every actor busy while results travel back
            for a in actors * 2:
                chunk = next(todo, None)
                if chunk is None:
                    break
                running[a.run.remote(chunk)] = a
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    a = running.pop(ref)
                    records = ray.get(ref)
                    chunk = next(todo, None)
                    if chunk is not None:
                        running[a.run.remote(chunk)] = a
                    yield records
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True)
            self._kill_actors()
            raise

    def _kill_actors(self) -> None:
        if self._actors:
            ray = _import_ray()
            for a in self._actors:
                with contextlib.suppress(Exception):  # already gone
                    ray.kill(a)
        self._actors = []
        self._setup = None

    def close(self) -> None:
        if self._actors or self._started:
            self._kill_actors()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
