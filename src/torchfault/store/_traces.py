# SPDX-License-Identifier: MIT
"""The ``traces`` table: layer-by-layer deviation of each run from golden.

An additive, optional table (like ``injected`` and ``run_metrics``): created on the first write
(``CREATE TABLE IF NOT EXISTS``), absent from older stores (they read as no traces and resume as
before; the schema version does not change).

Rows are ``(fault_id, input_id, depth, max_abs, max_rel, changed, out_of_range)`` for the layers
where the run deviated (``changed > 0``) or left the golden range; every other traced layer was
bit-identical to golden and in range. Each traced run also has one row at ``depth = -1`` (a
marker: the run was traced, even when no layer deviated). The traced layers, in execution order, are kept in the
store's meta under ``trace_layers`` (``depth`` indexes them), so a trace is rebuilt whole
(:func:`torchfault.analysis.read_traces`). ``out_of_range`` is NULL when no profile was given.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["TRACES_TABLE", "read_trace_rows", "write_traces"]

TRACES_TABLE = """CREATE TABLE IF NOT EXISTS traces(
    fault_id INTEGER NOT NULL,
    input_id INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    max_abs REAL,
    max_rel REAL,
    changed INTEGER NOT NULL,
    out_of_range INTEGER,
    PRIMARY KEY(fault_id, input_id, depth)
) WITHOUT ROWID"""


def write_traces(store: Any, layers: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
    """Record the traced layers (once; a store keeps one layer list) and write ``rows`` in one
    transaction (replacing those of the same run and depth); returns how many rows.

    Raises:
        ValueError: the store already holds traces over other layers.
    """
    conn = store.conn
    conn.execute(TRACES_TABLE)
    have = conn.execute("SELECT value FROM meta WHERE key = 'trace_layers'").fetchone()
    if have is not None and json.loads(have[0]) != list(layers):
        raise ValueError(
            f"the store holds traces over layers {json.loads(have[0])}, not {list(layers)}."
        )
    rows = [tuple(r) for r in rows]
    with conn:
        if have is None:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('trace_layers', ?)",
                (json.dumps(list(layers)),),
            )
        conn.executemany("INSERT OR REPLACE INTO traces VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows)


def read_trace_rows(store: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The traced layers and every stored row, ordered by run and depth (``([], [])`` for a
    store without traces)."""
    conn = store.conn
    have = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='traces'"
    ).fetchone()
    meta = conn.execute("SELECT value FROM meta WHERE key = 'trace_layers'").fetchone()
    if not have or meta is None:
        return [], []
    rows = conn.execute(
        "SELECT fault_id, input_id, depth, max_abs, max_rel, changed, out_of_range FROM traces "
        "ORDER BY fault_id, input_id, depth"
    ).fetchall()
    return json.loads(meta[0]), rows
