# SPDX-License-Identifier: MIT
"""One writer per store: an advisory lock file held while a campaign writes the store.

The lock is ``<store>.lock`` next to the store, locked with ``flock`` (exclusive) for the whole
life of the writing :class:`~torchfault.store.ResultStore`, and holding the writer's pid, host,
start time and campaign name as JSON. The kernel releases an ``flock`` when its process ends,
however it ends (``kill -9`` included), so a dead campaign never leaves a stale lock: the next
writer simply takes it. A second writer is refused with a :class:`StoreBusyError` naming the
running campaign, or waits for it when asked (``wait`` seconds). ``overwrite`` takes the lock
before deleting anything, so it never pulls a file from under a running campaign.

The lock file is removed when its holder closes the store; a writer that opened the old file just
before it was removed notices (the file it locked is no longer the one at the path) and tries
again. Readers (reports, exports) take no lock: SQLite's WAL mode lets them read while a campaign
writes. On a system without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from torchfault.errors import TorchFaultError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["StoreBusyError", "StoreLock"]


class StoreBusyError(TorchFaultError):
    """Another campaign is writing this store (its pid and host are in the message)."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (
            f"campaign {info.get('campaign')!r} (pid {info.get('pid')} on host "
            f"{info.get('host')!r}, since {info.get('started')})"
        )
    except (OSError, ValueError):
        return "another process (its lock file is being written)"


class StoreLock:
    """The exclusive write lock of the store ``store_path`` (a context manager).

    Args:
        store_path: the store file; the lock is ``<store_path>.lock``.
        wait: seconds to wait for a running writer to finish; ``0`` refuses at once,
            ``None`` waits as long as it takes.
        campaign: a name for the holder, shown to refused writers.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.sqlite"
        >>> with StoreLock(p, campaign="demo"):
        ...     try:
        ...         StoreLock(p).acquire()
        ...     except StoreBusyError as exc:
        ...         print("refused:", "pid" in str(exc))
        refused: True
    """

    def __init__(
        self, store_path: str | os.PathLike[str], wait: float | None = 0.0, campaign: str = ""
    ) -> None:
        if wait is not None and (isinstance(wait, bool) or not float(wait) >= 0.0):
            raise TorchFaultError(f"store.wait: must be >= 0 seconds (or null), got {wait!r}.")
        self.store_path = Path(store_path)
        self.path = Path(str(store_path) + ".lock")
        self.wait = None if wait is None else float(wait)
        self.campaign = campaign
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try_once(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed it after we opened it: lock the new one
            os.close(fd)
            return False
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "campaign": self.campaign,
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return True

    def acquire(self) -> StoreLock:
        """Take the lock (waiting up to ``wait`` seconds); a :class:`StoreBusyError` if held."""
        if fcntl is None or self._fd is not None:
            return self
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            try:
                if self._try_once():
                    return self
            except OSError as exc:
                raise TorchFaultError(
                    f"results store {str(self.store_path)!r}: cannot create its lock file "
                    f"{str(self.path)!r}: {exc}"
                ) from None
            if deadline is not None and time.monotonic() >= deadline:
                waited = f" (waited {self.wait:g} s)" if self.wait else ""
                raise StoreBusyError(
                    f"results store {str(self.store_path)!r} is being written by "
                    f"{_holder_text(self.path)}{waited}. Wait for it to finish (store.wait: "
                    "seconds to wait, null for as long as it takes), or give this campaign "
                    "another store.path. Its lock file is "
                    f"{str(self.path)!r}; it is released when that process ends."
                )
            time.sleep(0.1)

    def release(self) -> None:
        """Release the lock and remove the lock file (idempotent)."""
        if self._fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                self.path.unlink()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
