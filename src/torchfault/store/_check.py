# SPDX-License-Identifier: MIT
"""Knowing what a file is before touching it; checking a store; salvaging a damaged one.

:func:`inspect_file` tells a torchfault store from another application's SQLite file, a file that
is not SQLite at all, or a damaged one, **read-only**: it reads the header and opens the file
with SQLite's ``immutable`` URI (no lock, no journal, no ``-shm`` file, not one byte written);
only when the main file shows no table and a ``-wal`` file exists does it look again through a
read-only (``mode=ro``) connection. :class:`~torchfault.store.ResultStore` calls it before any
write or pragma, so a foreign file keeps every byte (its header included).

:func:`check_store` runs SQLite's ``integrity_check`` and decodes every stored fault;
:func:`repair_store` copies every readable row of a damaged store into a new one, skipping the
key ranges that sit on damaged pages. A campaign pointed at the new store (``store.path``)
resumes: it redraws the lost faults from the seed and runs the lost runs again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchfault.errors import TorchFaultError
from torchfault.faults import Fault

__all__ = [
    "StoreDamagedError",
    "FileInfo",
    "CheckReport",
    "RepairReport",
    "inspect_file",
    "check_store",
    "repair_store",
]

_MAGIC = b"SQLite format 3\x00"
_STORE_TABLES = {"meta", "sites", "faults", "runs", "golden"}


class StoreDamagedError(TorchFaultError):
    """The store file is damaged (SQLite reports a malformed page, or a stored row is garbled)."""


def damage_advice(path: str | os.PathLike[str]) -> str:
    """What to do about a damaged store ``path``."""
    p = str(path)
    return (
        f"Check it with `torchfault store check {p}`; salvage its readable runs into a new store "
        f"with `torchfault store repair {p} --out NEW.sqlite`, then resume the campaign with "
        "--store.path NEW.sqlite (lost runs are run again)."
    )


@dataclass(frozen=True)
class FileInfo:
    """What a file is.

    Attributes:
        kind: ``missing``, ``empty`` (0 bytes), ``not_sqlite``, ``blank_sqlite`` (an SQLite file
            without tables), ``foreign_sqlite`` (another application's tables), ``store`` (a
            torchfault results store) or ``damaged`` (SQLite cannot read its schema).
        detail: tables found, or SQLite's message.
    """

    kind: str
    detail: str = ""


def _ro_uri(path: Path, immutable: bool) -> str:
    return path.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")


def _tables(path: Path, immutable: bool) -> set[str]:
    conn = sqlite3.connect(_ro_uri(path, immutable), uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def inspect_file(path: str | os.PathLike[str]) -> FileInfo:
    """Identify ``path`` without writing to it (nor to any file beside it, for a non-WAL file).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = p.write_text("hello")
        >>> inspect_file(p).kind, inspect_file(p.with_suffix(".none")).kind
        ('not_sqlite', 'missing')
    """
    p = Path(path)
    if not p.is_file():
        return FileInfo("missing")
    try:
        with p.open("rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise TorchFaultError(f"results store {str(p)!r}: cannot read it: {exc}") from None
    if not header:
        return FileInfo("empty")
    if not header.startswith(_MAGIC):
        return FileInfo("not_sqlite", f"it starts with {header[:16]!r}")
    try:
        tables = _tables(p, immutable=True)
        wal = Path(str(p) + "-wal")
        if not tables and wal.is_file() and wal.stat().st_size > 0:
            tables = _tables(p, immutable=False)  # the schema is still in the write-ahead log
    except sqlite3.DatabaseError as exc:
        return FileInfo("damaged", str(exc))
    if not tables:
        return FileInfo("blank_sqlite")
    if {"meta", "runs"} <= tables:
        return FileInfo("store", ", ".join(sorted(tables)))
    return FileInfo("foreign_sqlite", ", ".join(sorted(tables)))


def refusal(path: str | os.PathLike[str], info: FileInfo) -> TorchFaultError:
    """The error for a file that is not a usable torchfault store."""
    p = str(path)
    if info.kind == "not_sqlite":
        return TorchFaultError(
            f"results store {p!r}: cannot open it as an SQLite database: the file holds "
            f"something else ({info.detail}); it is not a torchfault results store and was left "
            "untouched. Give the campaign another store.path."
        )
    if info.kind == "foreign_sqlite":
        return TorchFaultError(
            f"results store {p!r} is another application's SQLite database (tables: {info.detail}), "
            "not a torchfault results store; it was left untouched. Give the campaign another "
            "store.path."
        )
    return StoreDamagedError(
        f"results store {p!r} is damaged (SQLite: {info.detail}); nothing was written to it. "
        + damage_advice(p)
    )


# ---------------------------------------------------------------------- check


@dataclass
class CheckReport:
    """What :func:`check_store` found.

    Attributes:
        path: the file.
        kind: :attr:`FileInfo.kind`.
        problems: SQLite's integrity messages and the rows that do not decode (empty: sound).
        counts: rows per table that could be read.
    """

    path: str
    kind: str
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind == "store" and not self.problems

    def text(self) -> str:
        """A few lines for people."""
        if self.kind != "store":
            what = {
                "missing": "no such file",
                "empty": "an empty file",
                "not_sqlite": "not an SQLite file",
                "blank_sqlite": "an SQLite file with no tables",
                "foreign_sqlite": "another application's SQLite database",
                "damaged": "a damaged SQLite file (its schema cannot be read)",
            }.get(self.kind, self.kind)
            lines = [f"{self.path}: {what}: not a usable torchfault results store"]
        else:
            counts = ", ".join(f"{n:,} {t}" for t, n in self.counts.items())
            state = "sound" if self.ok else f"DAMAGED ({len(self.problems)} problems)"
            lines = [f"{self.path}: torchfault results store, {state}; readable: {counts}"]
        lines += [f"  {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        if self.kind == "store" and not self.ok:
            lines.append(damage_advice(self.path))
        return "\n".join(lines)


def _decode_faults(fault_id: int, text: str) -> tuple[Fault, ...]:
    return tuple(Fault.from_dict(d) for d in json.loads(text))


def check_store(path: str | os.PathLike[str]) -> CheckReport:
    """Integrity of a store, read-only: SQLite's ``integrity_check`` and every fault decoded.

    Example:
        >>> import tempfile, pathlib
        >>> from torchfault.store import ResultStore, RunRecord
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.sqlite"
        >>> with ResultStore(p, campaign={"seed": 0}, fingerprint="f") as s:
        ...     s.add_runs([RunRecord(0, 0, "masked")])
        >>> report = check_store(p)
        >>> report.ok, report.counts["runs"]
        (True, 1)
    """
    p = Path(path)
    info = inspect_file(p)
    report = CheckReport(str(p), info.kind)
    if info.kind == "damaged":
        report.problems.append(info.detail)
    if info.kind != "store":
        return report
    conn = sqlite3.connect(_ro_uri(p, immutable=False), uri=True)
    try:
        try:
            for (msg,) in conn.execute("PRAGMA integrity_check(100)"):
                if msg != "ok":
                    report.problems.append(f"SQLite: {msg}")
        except sqlite3.DatabaseError as exc:
            report.problems.append(f"SQLite: {exc}")
        for table, key in (
            ("meta", "key"),
            ("sites", "site_id"),
            ("golden", "input_id"),
            ("faults", "fault_id"),
            ("runs", "fault_id"),
        ):
            n = 0
            lost: list[Any] = []
            for row in _scan(conn, f"SELECT * FROM {table}", key, lost):
                n += 1
                if table == "faults":
                    try:
                        _decode_faults(row[0], row[1])
                    except (ValueError, TypeError, KeyError) as exc:
                        report.problems.append(
                            f"faults row fault_id={row[0]}: cannot decode the stored fault "
                            f"({type(exc).__name__}: {exc})"
                        )
            report.counts[table] = n
            report.problems += [f"{table}: unreadable rows {what}" for what in lost]
    finally:
        conn.close()
    return report


def _scan(conn: sqlite3.Connection, select: str, key: str, lost: list[str]) -> Iterator[Any]:
    """Rows of ``select`` in ``key`` order, stepping over key ranges on unreadable pages (each
    range skipped is described in ``lost``)."""
    order = f" ORDER BY {key}"
    if key == "key":  # the text-keyed meta table: all or nothing
        try:
            yield from conn.execute(select + order).fetchall()
        except sqlite3.DatabaseError as exc:
            lost.append(f"(all: {exc})")
        return
    lo: int | None = None
    while True:
        last: int | None = None
        try:
            cur = (
                conn.execute(select + order)
                if lo is None
                else conn.execute(f"{select} WHERE {key} >= ?{order}", (lo,))
            )
            for row in cur:
                yield row
                last = row[0]
            return
        except sqlite3.DatabaseError as exc:
            base = (last + 1) if last is not None else (lo if lo is not None else 0)
            step, found = 1, None
            while step < 1 << 40:
                try:
                    conn.execute(
                        f"{select} WHERE {key} >= ?{order} LIMIT 1", (base + step,)
                    ).fetchall()
                    found = base + step
                    break
                except sqlite3.DatabaseError:
                    step *= 2
            end = "the end" if found is None else f"{key} {found - 1}"
            lost.append(f"from {key} {base} to {end} ({exc})")
            if found is None:
                return
            lo = found


# ---------------------------------------------------------------------- repair


@dataclass
class RepairReport:
    """What :func:`repair_store` copied (``kept``) and left behind (``dropped``), per table."""

    path: str
    out: str
    kept: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def text(self) -> str:
        kept = ", ".join(f"{n:,} {t}" for t, n in self.kept.items())
        lines = [f"salvaged {kept} from {self.path} into {self.out}"]
        lines += [f"  left behind: {d}" for d in self.dropped[:20]]
        if len(self.dropped) > 20:
            lines.append(f"  ... and {len(self.dropped) - 20} more")
        lines.append(
            f"Resume the campaign with --store.path {self.out}: it runs the missing runs again."
        )
        return "\n".join(lines)


def repair_store(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> RepairReport:
    """Copy every readable row of the store ``path`` into the new store ``out`` (read-only on
    ``path``). Faults that do not decode, and their runs, are left behind.

    Raises:
        TorchFaultError: ``out`` exists, or ``path`` is not a torchfault store, or its campaign
            metadata (config, fingerprint) cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> from torchfault.store import ResultStore, RunRecord
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with ResultStore(d / "a.sqlite", campaign={"seed": 0}, fingerprint="f") as s:
        ...     s.add_runs([RunRecord(0, 0, "masked")])
        >>> repair_store(d / "a.sqlite", d / "b.sqlite").kept["runs"]
        0
    """
    from torchfault.store._store import ResultStore

    src, dst = Path(path), Path(out)
    if dst.exists():
        raise TorchFaultError(
            f"store repair: --out {str(dst)!r} exists; give a new file name (nothing is overwritten)."
        )
    info = inspect_file(src)
    if info.kind != "store":
        raise (
            refusal(src, info)
            if info.kind != "missing"
            else TorchFaultError(f"store repair: no such file {str(src)!r}.")
        )
    report = RepairReport(str(src), str(dst))
    conn = sqlite3.connect(_ro_uri(src, immutable=False), uri=True)
    try:
        lost: list[str] = []
        meta = dict(_scan(conn, "SELECT key, value FROM meta", "key", lost))
        if "config" not in meta or "fingerprint" not in meta:
            raise StoreDamagedError(
                f"store repair: the campaign metadata of {str(src)!r} cannot be read "
                f"({'; '.join(lost) or 'no config or fingerprint stored'}); nothing to resume "
                "from. Start the campaign afresh with another store.path."
            )

        def rows(select: str, key: str, keep: Callable[[Any], bool] | None = None) -> list[Any]:
            got = [r for r in _scan(conn, select, key, lost) if keep is None or keep(r)]
            report.dropped.extend(f"{select.split('FROM ')[1]}: {x}" for x in lost)
            lost.clear()
            return got

        bad: list[int] = []

        def fault_ok(row: Any) -> bool:
            try:
                _decode_faults(row[0], row[1])
                return True
            except (ValueError, TypeError, KeyError):
                bad.append(row[0])
                return False

        sites = rows("SELECT * FROM sites", "site_id")
        golden = rows("SELECT * FROM golden", "input_id")
        faults = rows("SELECT * FROM faults", "fault_id", fault_ok)
        good = {r[0] for r in faults}
        report.dropped += [f"faults: fault_id {f} does not decode (and its runs)" for f in bad]
        runs = rows("SELECT * FROM runs", "fault_id", lambda r: r[0] in good)
        store = ResultStore(
            dst, campaign=json.loads(meta["config"]), fingerprint=meta["fingerprint"]
        )
        try:

            def write(c: sqlite3.Connection) -> None:
                c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
                c.executemany(f"INSERT INTO sites VALUES ({','.join('?' * 10)})", sites)
                c.executemany("INSERT INTO golden VALUES (?,?,?,?)", golden)
                c.executemany("INSERT INTO faults VALUES (?,?,?,?,?,?,?)", faults)
                c.executemany("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?)", runs)

            store._transaction(write)
        finally:
            store.close()
        report.kept = {
            "sites": len(sites),
            "golden": len(golden),
            "faults": len(faults),
            "runs": len(runs),
        }
    finally:
        conn.close()
    return report
