# SPDX-License-Identifier: MIT
"""The results store: one SQLite file per campaign, crash-safe and resumable.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a transaction is either wholly in the file
or not at all, whatever instant the writing process is killed (a power cut may lose the last
transactions, never corrupt the file). Runs are buffered and committed ``chunk_size`` at a time
(one transaction per chunk, ``INSERT OR IGNORE``, so replaying runs after a resume is harmless);
a chunk is also committed when the oldest buffered run is ``max_delay`` seconds old. The schema
is documented in ``docs/store.md``.

One writer at a time: a writing store holds ``<store>.lock`` (see :mod:`torchfault.store._lock`;
released by the kernel when the writer dies, even by ``kill -9``), so a second campaign on the same
store is refused with the first one's pid and host (or waits, ``wait=``), and ``mode='w'`` takes
the lock before it deletes anything. Before any write or pragma, an existing file is identified
read-only (:func:`~torchfault.store.inspect_file`): another application's file, or a file that is
not SQLite, is refused byte-for-byte untouched; a damaged store is refused, pointing to
``torchfault store check`` / ``repair``. A damaged page met later, or a stored fault that does not
decode, is a :class:`~torchfault.store.StoreDamagedError` naming the file (and the row).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.sqlite"
    >>> from torchfault import Fault
    >>> with ResultStore(path, campaign={"seed": 0}, fingerprint="abc") as store:
    ...     store.add_faults([FaultRecord(0, (Fault("fc", "weight", (0, 0), (30,)),))])
    ...     store.add_runs([RunRecord(0, 0, "sdc", 1, 2, 3.5, 0.01)])
    >>> with ResultStore(path, campaign={"seed": 0}, fingerprint="abc") as store:  # resume
    ...     store.done_runs()
    {(0, 0)}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchfault.errors import StoreMismatchError, TorchFaultError
from torchfault.faults import Fault, FaultSite
from torchfault.store._check import StoreDamagedError, damage_advice, inspect_file, refusal
from torchfault.store._lock import StoreLock
from torchfault.store._records import (
    RUN_OUTCOMES,
    FaultRecord,
    GoldenRecord,
    RunRecord,
    present_outcomes,
)
from torchfault.store._tables import fault_columns, write_run_table

__all__ = ["ResultStore", "SCHEMA_VERSION", "open_store"]

SCHEMA_VERSION = "1"
_MODES = ("a", "w", "r")
_RESERVED_META = (
    "config",
    "seed",
    "torchfault_version",
    "fingerprint",
    "created",
    "schema_version",
)

_ADVICE = (
    "To keep both, point the campaign at a new store path; to discard the stored results, "
    "overwrite it (ResultStore(..., mode='w'), or the campaign's overwrite setting)."
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sites(
    site_id INTEGER PRIMARY KEY,
    module TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    shape TEXT NOT NULL,
    format TEXT NOT NULL,
    bit_width INTEGER NOT NULL,
    element TEXT,
    calls INTEGER NOT NULL DEFAULT 1,
    module_type TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS faults(
    fault_id INTEGER PRIMARY KEY,
    faults TEXT NOT NULL,
    module TEXT,
    target TEXT,
    kind TEXT,
    bit INTEGER,
    n_faults INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs(
    fault_id INTEGER NOT NULL,
    input_id INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK(outcome IN ({", ".join(f"'{o}'" for o in RUN_OUTCOMES)})),
    golden_top1 INTEGER,
    faulty_top1 INTEGER,
    max_abs_diff REAL,
    seconds REAL,
    error TEXT,
    PRIMARY KEY(fault_id, input_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS golden(
    input_id INTEGER PRIMARY KEY,
    top1 INTEGER,
    label INTEGER,
    digest TEXT
);
"""

_EXPORT_SQL = (
    "SELECT r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff, "
    "r.seconds, r.error, f.module, f.target, f.kind, f.bit, f.n_faults, f.faults "
    "FROM runs r LEFT JOIN faults f ON f.fault_id = r.fault_id ORDER BY r.fault_id, r.input_id"
)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def _config_diff(stored: Any, given: Any, limit: int = 5) -> str:
    a, b = _flatten(stored), _flatten(given)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if _canonical(a.get(key, "<absent>")) != _canonical(b.get(key, "<absent>")):
            diffs.append(
                f"{key or '(config)'} (stored {a.get(key, '<absent>')!r}, given {b.get(key, '<absent>')!r})"
            )
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _site_text(s: FaultSite) -> str:
    element = "" if s.element is None else f"[{s.element!r}]"
    return f"{s.module}.{s.target}{element} ({s.module_type or s.kind}, shape {tuple(s.shape)}, {s.format})"


def _find_seed(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        if "seed" in obj:
            return obj["seed"]
        for v in obj.values():
            s = _find_seed(v)
            if s is not None:
                return s
    return None


def _version() -> str:
    try:
        from torchfault import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


class ResultStore:
    """One campaign's results in one SQLite file: config, sites, faults, golden outputs, runs.

    Args:
        path: the SQLite file (parent folders are created).
        campaign: the campaign's config as plain JSON data: what must be equal to resume.
            Leave out settings that do not change results (worker counts, progress bars).
        fingerprint: digest of the model and inputs (computed by the campaign runner).
        mode: ``"a"`` open or create, and resume a store of the same campaign; ``"w"``
            overwrite: discard an existing store of any campaign and start afresh; ``"r"``
            read only (``campaign`` and ``fingerprint`` are then not needed).
        chunk_size: runs per transaction.
        max_delay: also commit buffered runs once the oldest is this many seconds old.
        advice: what a refused user should do, ending every mismatch error (default: a new
            store path, or ``mode='w'``); the campaign runner names its own settings here.
        wait: a writer (``'a'``, ``'w'``) waits this many seconds for another campaign writing
            the same store to finish; ``0`` refuses at once, ``None`` waits as long as it takes.
        writer: a name for this writer, shown to refused ones (the campaign's name).

    Raises:
        StoreMismatchError: the store holds another campaign (config or fingerprint differ).
        StoreBusyError: another process is writing the store.
        StoreDamagedError: the file is damaged.
        TorchFaultError: the path cannot be written, or is not a torchfault store.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        campaign: Mapping[str, Any] | None = None,
        fingerprint: str | None = None,
        mode: str = "a",
        chunk_size: int = 1000,
        max_delay: float = 10.0,
        advice: str | None = None,
        wait: float | None = 0.0,
        writer: str = "",
    ) -> None:
        if mode not in _MODES:
            raise TorchFaultError(
                f"ResultStore mode must be 'a' (append/resume), 'w' (overwrite) or 'r' (read), got {mode!r}."
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise TorchFaultError(f"chunk_size must be an integer >= 1, got {chunk_size!r}.")
        self.path = Path(path)
        self.mode = mode
        self.chunk_size = chunk_size
        self.max_delay = float(max_delay)
        self.advice = advice or _ADVICE
        self._lock = threading.RLock()
        self._buffer: list[tuple[Any, ...]] = []
        self._buffer_since: float | None = None
        self._conn: sqlite3.Connection | None = None
        self._writer_lock: StoreLock | None = None
        if mode != "r":
            self._writer_lock = StoreLock(self.path, wait=wait, campaign=writer)  # checks wait
        if mode == "r":
            self._open_read()
        else:
            if not isinstance(campaign, Mapping):
                raise TorchFaultError(
                    f"ResultStore({str(self.path)!r}): campaign must be the campaign config as a dict, got {type(campaign).__name__}."
                )
            if not isinstance(fingerprint, str) or not fingerprint:
                raise TorchFaultError(
                    f"ResultStore({str(self.path)!r}): fingerprint must be a non-empty string, got {fingerprint!r}."
                )
            try:
                self._open_write(json.loads(_canonical(campaign)), fingerprint)
            except BaseException:
                self._release()
                raise
        self._kinds = {(s.module, s.target): s.kind for s in self.sites()}

    # ------------------------------------------------------------------ opening

    def _error(self, what: str, exc: BaseException | None = None) -> TorchFaultError:
        tail = f": {exc}" if exc is not None else ""
        return TorchFaultError(f"results store {str(self.path)!r}: {what}{tail}")

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """SQLite's read errors as errors that name this file (and what to do when damaged)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise self._error(f"cannot read {what}", exc) from None
        except sqlite3.DatabaseError as exc:
            raise StoreDamagedError(
                f"results store {str(self.path)!r} is damaged: reading {what} failed "
                f"(SQLite: {exc}). {damage_advice(self.path)}"
            ) from None

    def _identify(self) -> None:
        """Refuse, before anything is written, a file that is not a sound-looking store."""
        info = inspect_file(self.path)
        if info.kind in ("not_sqlite", "foreign_sqlite", "damaged"):
            raise refusal(self.path, info)

    def _connect(self, uri: str | None = None) -> sqlite3.Connection:
        try:
            with self.path.open("rb") as fh:
                header = fh.read(16)
        except OSError:
            header = b""
        if header and header != b"SQLite format 3\x00":
            raise self._error("cannot open it as an SQLite database: the file holds something else")
        try:
            if uri is not None:
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30
                )
            else:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30
                )
            conn.execute("PRAGMA schema_version").fetchone()  # fails on a non-database file
        except sqlite3.DatabaseError as exc:
            raise self._error("cannot open it as an SQLite database", exc) from None
        return conn

    def _is_store(self, conn: sqlite3.Connection) -> bool:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return False
        if "meta" not in tables or "runs" not in tables:
            raise self._error(
                f"this SQLite file is not a torchfault results store (tables: {', '.join(sorted(tables))}); "
                "choose another path"
            )
        return True

    def _open_read(self) -> None:
        if not self.path.is_file():
            raise self._error("no such file")
        self._identify()
        # a plain connection (that we never write through) lets SQLite tidy its -wal/-shm files
        # on close; a read-only file or folder needs the read-only URI
        writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        conn = self._connect(None if writable else self.path.resolve().as_uri() + "?mode=ro")
        if not self._is_store(conn):
            conn.close()
            raise self._error("empty file, not a torchfault results store")
        self._conn = conn

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                p.unlink()

    def _open_write(self, campaign: dict[str, Any], fingerprint: str) -> None:
        if self.path.is_dir():
            raise self._error("is a folder; give a file path such as runs/campaign.sqlite")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error("cannot create its folder", exc) from None
        if not os.access(self.path.parent, os.W_OK):
            raise self._error("its folder is not writable")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise self._error("the file is not writable")
        if self.mode == "a" or self.path.exists():
            # read-only, before the lock file or any pragma: a foreign file keeps every byte
            info = inspect_file(self.path)
            if info.kind in ("not_sqlite", "foreign_sqlite") or (
                info.kind == "damaged" and self.mode == "a"
            ):
                raise refusal(self.path, info)
            if info.kind == "damaged":  # mode 'w' deletes only what it knows to be a store
                raise StoreDamagedError(
                    f"results store {str(self.path)!r}: cannot tell whether this damaged file is "
                    f"a torchfault store (SQLite: {info.detail}), so overwrite leaves it alone; "
                    "delete it yourself if it is yours, or give another store.path."
                )
        assert self._writer_lock is not None
        self._writer_lock.acquire()  # before deleting anything: never under a running campaign
        if self.mode == "w" and self.path.exists():
            self._remove_files()
        conn = self._connect()
        if self.mode == "a" and self.path.stat().st_size > 0:
            try:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            except sqlite3.DatabaseError as exc:
                problems = [str(exc)]
            if problems != ["ok"]:
                conn.close()
                raise StoreDamagedError(
                    f"results store {str(self.path)!r} is damaged (SQLite: {'; '.join(problems)}); "
                    f"nothing was written to it. {damage_advice(self.path)}"
                )
        meta = {
            "config": _canonical(campaign),
            "seed": _canonical(_find_seed(campaign)),
            "torchfault_version": _version(),
            "fingerprint": fingerprint,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "schema_version": SCHEMA_VERSION,
        }
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._error(f"cannot switch SQLite to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=NORMAL")
            # create schema and metadata in one transaction: a crash leaves all or nothing
            conn.execute("BEGIN IMMEDIATE")
            created = not self._is_store(conn)
            if created:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("cannot write", exc) from None
        except TorchFaultError:
            conn.close()
            raise
        self._conn = conn
        if not created:
            try:
                self._check_same(campaign, fingerprint)
            except TorchFaultError:
                self.close()
                raise

    def _check_same(self, campaign: dict[str, Any], fingerprint: str) -> None:
        meta = self._raw_meta()
        how = self.advice
        if "config" not in meta or "fingerprint" not in meta:
            raise self._error(
                "the store has no campaign metadata (a crash while it was created?). " + how
            )
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreMismatchError(
                f"results store {str(self.path)!r} has schema version {meta.get('schema_version')!r}, "
                f"this torchfault writes {SCHEMA_VERSION!r}. {how}"
            )
        stored = json.loads(meta["config"])
        if _canonical(stored) != _canonical(campaign):
            raise StoreMismatchError(
                f"results store {str(self.path)!r} holds a different campaign config: "
                f"{_config_diff(stored, campaign)}. {how}"
            )
        if meta["fingerprint"] != fingerprint:
            raise StoreMismatchError(
                f"results store {str(self.path)!r} was written for another model or inputs "
                f"(fingerprint stored {meta['fingerprint']!r}, given {fingerprint!r}). {how}"
            )

    # ------------------------------------------------------------------ plumbing

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._error("the store is closed")
        return self._conn

    def _transaction(self, fn: Any) -> Any:
        if self.mode == "r":
            raise self._error("opened read-only (mode='r')")
        with self._lock:
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                    exc, sqlite3.OperationalError
                ):
                    raise StoreDamagedError(
                        f"results store {str(self.path)!r} is damaged: a write failed "
                        f"(SQLite: {exc}). {damage_advice(self.path)}"
                    ) from None
                if isinstance(exc, sqlite3.Error):
                    raise self._error("write failed", exc) from None
                raise

    def _raw_meta(self) -> dict[str, str]:
        with self._guard("its metadata"):
            return dict(self.conn.execute("SELECT key, value FROM meta"))

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r}, mode={self.mode!r})"

    def _release(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.release()

    def close(self) -> None:
        """Commit buffered runs, close the file and release the write lock (idempotent)."""
        with self._lock:
            if self._conn is None:
                self._release()
                return
            try:
                if self.mode != "r":
                    self.flush()
            finally:
                self._conn.close()
                self._conn = None
                self._release()

    # ------------------------------------------------------------------ writing

    def set_meta(self, key: str, value: Any) -> None:
        """Store an extra JSON value under ``key`` (the campaign keys are reserved)."""
        if key in _RESERVED_META:
            raise self._error(f"meta key {key!r} is reserved ({', '.join(_RESERVED_META)})")
        self._transaction(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, _canonical(value))
            )
        )

    def set_sites(self, sites: Sequence[FaultSite]) -> None:
        """Record the campaign's fault sites (numbered in order); same sites again is a no-op."""
        rows = [
            (
                i,
                s.module,
                s.target,
                s.kind,
                json.dumps(list(s.shape)),
                s.format,
                int(s.bit_width),
                json.dumps(s.element),
                int(s.calls),
                s.module_type,
            )
            for i, s in enumerate(sites)
        ]
        existing = self.sites()
        if existing:
            given = list(sites)
            if existing != given:
                first = next(
                    (i for i, (a, b) in enumerate(zip(existing, given)) if a != b),
                    min(len(existing), len(given)),
                )
                stored = _site_text(existing[first]) if first < len(existing) else "none"
                now = _site_text(given[first]) if first < len(given) else "none"
                raise StoreMismatchError(
                    f"results store {str(self.path)!r} holds other fault sites ({len(existing)} stored, "
                    f"{len(rows)} given; site {first}: stored {stored}, now {now}); the model or the "
                    f"targets changed. {self.advice}"
                )
            return
        self._transaction(
            lambda c: c.executemany("INSERT INTO sites VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        )
        self._kinds = {(s.module, s.target): s.kind for s in sites}

    def add_faults(self, records: Iterable[FaultRecord]) -> None:
        """Record faults (one transaction per call; a fault id already stored is kept as is)."""
        rows = []
        for r in records:
            if not isinstance(r, FaultRecord):
                raise TorchFaultError(
                    f"add_faults expects FaultRecord objects, got {type(r).__name__}."
                )
            module, target, kind, bit, n_faults, faults = fault_columns(r.faults, self._kinds)
            rows.append((int(r.fault_id), faults, module, target, kind, bit, n_faults))
        if rows:
            self._transaction(
                lambda c: c.executemany("INSERT OR IGNORE INTO faults VALUES (?,?,?,?,?,?,?)", rows)
            )

    def add_runs(self, records: Iterable[RunRecord | Mapping[str, Any]]) -> None:
        """Buffer runs; every full chunk of ``chunk_size`` is committed in its own transaction."""
        rows = []
        for r in records:
            if isinstance(r, Mapping):
                r = RunRecord(**r)
            elif not isinstance(r, RunRecord):
                raise TorchFaultError(
                    f"add_runs expects RunRecord objects, got {type(r).__name__}."
                )
            rows.append(r.as_tuple())
        with self._lock:
            if rows and self._buffer_since is None:
                self._buffer_since = time.monotonic()
            self._buffer.extend(rows)
            while len(self._buffer) >= self.chunk_size:
                self._write_chunk(self._buffer[: self.chunk_size])
                del self._buffer[: self.chunk_size]
                self._buffer_since = time.monotonic() if self._buffer else None
            if self._buffer and time.monotonic() - (self._buffer_since or 0.0) >= self.max_delay:
                self.flush()

    def _write_chunk(self, rows: list[tuple[Any, ...]]) -> None:
        self._transaction(
            lambda c: c.executemany("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?)", rows)
        )

    def flush(self) -> None:
        """Commit the buffered runs now (in chunks of at most ``chunk_size``)."""
        with self._lock:
            while self._buffer:
                self._write_chunk(self._buffer[: self.chunk_size])
                del self._buffer[: self.chunk_size]
            self._buffer_since = None

    def set_golden(
        self, records: Iterable[GoldenRecord | Sequence[Any] | Mapping[str, Any]]
    ) -> None:
        """Record the golden (fault-free) results; a differing stored one is a StoreMismatchError.

        Each record is a :class:`GoldenRecord`, a tuple ``(input_id, top1, label, digest)`` or a
        mapping with those keys.
        """
        goldens = [
            g
            if isinstance(g, GoldenRecord)
            else GoldenRecord(**g)
            if isinstance(g, Mapping)
            else GoldenRecord(*g)
            for g in records
        ]
        stored = self.golden()
        for g in goldens:
            old = stored.get(int(g.input_id))
            if old is not None and old != g:
                raise StoreMismatchError(
                    f"results store {str(self.path)!r}: the golden result of input {g.input_id} differs "
                    f"(stored {old}, now {g}); the model or inputs changed, or the model is not "
                    f"deterministic. {self.advice}"
                )
        rows = [
            (
                int(g.input_id),
                None if g.top1 is None else int(g.top1),
                None if g.label is None else int(g.label),
                g.digest,
            )
            for g in goldens
            if int(g.input_id) not in stored
        ]
        if rows:
            self._transaction(lambda c: c.executemany("INSERT INTO golden VALUES (?,?,?,?)", rows))

    # ------------------------------------------------------------------ reading

    def _reading(self) -> sqlite3.Connection:
        if self.mode != "r":
            self.flush()
        return self.conn

    def meta(self) -> dict[str, Any]:
        """Campaign metadata: ``config`` (dict), ``seed``, ``torchfault_version``, ``fingerprint``,
        ``created``, ``schema_version`` and any :meth:`set_meta` keys (JSON-decoded)."""
        raw = self._raw_meta()
        out: dict[str, Any] = {}
        for k, v in raw.items():
            if v is None:  # never written (values are JSON text): a damaged page read back
                raise StoreDamagedError(
                    f"results store {str(self.path)!r}: its {k!r} metadata is missing (the file "
                    f"is damaged). {damage_advice(self.path)}"
                )
            if k in ("config", "seed") or k not in _RESERVED_META:
                try:
                    out[k] = json.loads(v)
                except json.JSONDecodeError:
                    out[k] = v
            else:
                out[k] = v
        return out

    def sites(self) -> list[FaultSite]:
        """The fault sites, in order."""
        with self._guard("its fault sites"):
            rows = self.conn.execute(
                "SELECT site_id, module, target, kind, shape, format, bit_width, element, calls, "
                "module_type FROM sites ORDER BY site_id"
            ).fetchall()
        out = []
        for sid, m, t, k, sh, fmt, bw, el, calls, mt in rows:
            try:
                shape, element = tuple(json.loads(sh)), json.loads(el) if el else None
            except (ValueError, TypeError) as exc:
                raise StoreDamagedError(
                    f"results store {str(self.path)!r}: sites row site_id={sid} does not decode "
                    f"({type(exc).__name__}: {exc}). {damage_advice(self.path)}"
                ) from None
            out.append(FaultSite(m, t, k, shape, fmt, bw, element, calls, mt))
        return out

    def faults(self, ids: Iterable[int] | None = None) -> dict[int, tuple[Fault, ...]]:
        """``{fault_id: (Fault, ...)}`` of every stored fault, or of those of ``ids`` stored."""
        with self._guard("its faults"):
            rows = self._fault_rows(ids)
        out: dict[int, tuple[Fault, ...]] = {}
        for fid, text in rows:
            try:
                out[fid] = tuple(Fault.from_dict(d) for d in json.loads(text))
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreDamagedError(
                    f"results store {str(self.path)!r}: faults row fault_id={fid} does not decode "
                    f"({type(exc).__name__}: {exc}). {damage_advice(self.path)}"
                ) from None
        return out

    def _fault_rows(self, ids: Iterable[int] | None) -> list[tuple[int, str]]:
        if ids is None:
            rows = list(self.conn.execute("SELECT fault_id, faults FROM faults ORDER BY fault_id"))
        else:
            wanted = sorted({int(i) for i in ids})
            rows = []
            for k in range(0, len(wanted), 500):  # SQLite limits the parameters of one query
                part = wanted[k : k + 500]
                marks = ",".join("?" * len(part))
                rows += self.conn.execute(
                    f"SELECT fault_id, faults FROM faults WHERE fault_id IN ({marks}) "
                    "ORDER BY fault_id",
                    part,
                ).fetchall()
        return rows

    def golden(self) -> dict[int, GoldenRecord]:
        """``{input_id: GoldenRecord}``."""
        with self._guard("its golden results"):
            return {
                row[0]: GoldenRecord(*row)
                for row in self.conn.execute(
                    "SELECT input_id, top1, label, digest FROM golden ORDER BY input_id"
                )
            }

    def iter_runs(self) -> Iterator[RunRecord]:
        """Every committed (and, when writing, buffered) run, ordered by fault and input."""
        with self._guard("its runs"):
            cur = self._reading().execute(
                "SELECT fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, "
                "seconds, error FROM runs ORDER BY fault_id, input_id"
            )
            for row in cur:
                yield RunRecord(*row)

    def runs(self) -> list[RunRecord]:
        """:meth:`iter_runs` as a list."""
        return list(self.iter_runs())

    def count_runs(self) -> int:
        with self._guard("its runs"):
            return int(self._reading().execute("SELECT count(*) FROM runs").fetchone()[0])

    def outcome_counts(self, *, below: int | None = None) -> dict[str, int]:
        """``{"masked": .., "benign": .., "sdc": .., "due": ..}`` (and ``"detected"`` when a run
        has it) over all runs, or over the runs of faults ``fault_id < below`` (what an adaptive
        campaign's stopping rule looks at)."""
        with self._guard("its runs"):
            if below is None:
                cur = self._reading().execute("SELECT outcome, count(*) FROM runs GROUP BY outcome")
            else:
                cur = self._reading().execute(
                    "SELECT outcome, count(*) FROM runs WHERE fault_id < ? GROUP BY outcome",
                    (int(below),),
                )
            counts = dict(cur)
        return {o: int(counts.get(o, 0)) for o in present_outcomes(counts)}

    def done_runs(self) -> set[tuple[int, int]]:
        """``{(fault_id, input_id)}`` of every run stored: what a resumed campaign skips."""
        with self._guard("its runs"):
            return set(self._reading().execute("SELECT fault_id, input_id FROM runs"))

    def fault_ids(self) -> set[int]:
        """Ids of the faults stored (with or without runs): what a resumed campaign need not add."""
        with self._guard("its faults"):
            return {r[0] for r in self.conn.execute("SELECT fault_id FROM faults")}

    def done_fault_ids(self, n_inputs: int | None = None) -> set[int]:
        """Fault ids with runs on all inputs: ``n_inputs`` of them (default: the number of
        golden inputs stored, or 1 when none are)."""
        with self._guard("its runs"):
            if n_inputs is None:
                n_inputs = int(self.conn.execute("SELECT count(*) FROM golden").fetchone()[0]) or 1
            cur = self._reading().execute(
                "SELECT fault_id FROM runs GROUP BY fault_id HAVING count(*) >= ?", (int(n_inputs),)
            )
            return {r[0] for r in cur}

    # ------------------------------------------------------------------ export

    def export_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write every run, joined with its fault's columns, as CSV (the columns of
        ``CampaignResult.to_csv``, see ``docs/store.md``); returns the path."""
        with self._guard("its runs"):  # streamed: the rows are not held in memory
            return write_run_table(self._reading().execute(_EXPORT_SQL), path, "csv", "export_csv")

    def export_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write every run, joined with its fault's columns, as Parquet (needs pyarrow; the
        columns of ``CampaignResult.to_parquet``); returns the path."""
        with self._guard("its runs"):
            rows = self._reading().execute(_EXPORT_SQL).fetchall()
        return write_run_table(rows, path, "parquet", "export_parquet")


def open_store(path: str | os.PathLike[str]) -> ResultStore:
    """Open an existing store read-only (for reports and exports)."""
    return ResultStore(path, mode="r")
