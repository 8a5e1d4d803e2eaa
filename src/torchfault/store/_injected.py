# SPDX-License-Identifier: MIT
"""The ``injected`` table: each faulted element's value before and after the fault.

An additive, optional table (like ``run_metrics``): a store written without it (every store of
an older torchfault) simply has none, :func:`read_injected` then returns ``{}``, and the table is
created the first time a campaign writes to it (``CREATE TABLE IF NOT EXISTS``): no schema
version change, old stores open and resume as before.

Rows are ``(fault_id, input_id, k, before, after)``; ``k`` is the fault's position in its fault
set. Parameter and buffer faults hold the same pair on every input and are stored once, with
``input_id = -1`` (compact: one row per fault, not per run). SQLite stores NaN as NULL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["INJECTED_TABLE", "write_injected", "read_injected"]

INJECTED_TABLE = """CREATE TABLE IF NOT EXISTS injected(
    fault_id INTEGER NOT NULL,
    input_id INTEGER NOT NULL,
    k INTEGER NOT NULL,
    before REAL,
    after REAL,
    PRIMARY KEY(fault_id, input_id, k)
) WITHOUT ROWID"""

Row = tuple[int, int, int, "float | None", "float | None"]


def write_injected(store: Any, rows: Iterable[Row]) -> int:
    """Write rows (replacing those of the same run and fault) in one transaction; returns
    how many.

    Example:
        >>> import tempfile, pathlib
        >>> from torchfault.store import ResultStore
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.sqlite"
        >>> from torchfault.store import RunRecord
        >>> with ResultStore(p, campaign={"seed": 0}, fingerprint="f") as s:
        ...     write_injected(s, [(0, -1, 0, 1.0, float("inf")), (0, 3, 1, 2.0, -2.0)])
        ...     s.add_runs([RunRecord(0, 2, "sdc"), RunRecord(0, 3, "masked")]); s.flush()
        ...     read_injected(s)
        2
        {(0, 2): ((1.0, inf),), (0, 3): ((1.0, inf), (2.0, -2.0))}
    """
    rows = [
        (int(f), int(i), int(k), None if b is None else float(b), None if a is None else float(a))
        for f, i, k, b, a in rows
    ]
    if not rows:
        return 0
    conn = store.conn
    conn.execute(INJECTED_TABLE)
    with conn:
        conn.executemany("INSERT OR REPLACE INTO injected VALUES (?, ?, ?, ?, ?)", rows)
    return len(rows)


def read_injected(store: Any) -> dict[tuple[int, int], tuple[tuple[Any, Any], ...]]:
    """``(fault_id, input_id) -> ((before, after), ...)`` (one pair per fault of the run, in
    fault order) for every stored run with injected values; pairs stored once for every input
    (``input_id = -1``) are given to each run of the fault. Empty for a store without the table.
    """
    conn = store.conn
    have = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='injected'"
    ).fetchone()
    if not have:
        return {}
    by_fault: dict[int, dict[int, dict[int, tuple[Any, Any]]]] = {}
    for f, i, k, b, a in conn.execute("SELECT fault_id, input_id, k, before, after FROM injected"):
        by_fault.setdefault(int(f), {}).setdefault(int(i), {})[int(k)] = (b, a)
    out: dict[tuple[int, int], tuple[tuple[Any, Any], ...]] = {}
    for f, i in conn.execute("SELECT fault_id, input_id FROM runs ORDER BY fault_id, input_id"):
        rows = by_fault.get(int(f))
        if not rows:
            continue
        merged = {**rows.get(-1, {}), **rows.get(int(i), {})}
        if merged:
            out[(int(f), int(i))] = tuple(merged[k] for k in sorted(merged))
    return out
