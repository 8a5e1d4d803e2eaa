# SPDX-License-Identifier: MIT
"""Criterion metrics in a campaign's store: the additive ``run_metrics`` table, written before
the runs it belongs to and read back into the runs (:class:`MeasuredRun`)."""

from __future__ import annotations

from typing import Any

from torchfault.campaign._engine import MeasuredRun

__all__ = ["read_metrics", "with_metrics", "write_metrics"]

_METRICS_TABLE = (
    "CREATE TABLE IF NOT EXISTS run_metrics(fault_id INTEGER NOT NULL, input_id INTEGER NOT NULL, "
    "name TEXT NOT NULL, value REAL, PRIMARY KEY(fault_id, input_id, name)) WITHOUT ROWID"
)


def write_metrics(store: Any, records: list[Any]) -> None:
    """Write the metrics of ``records`` (criteria that return metrics) to the store's
    ``run_metrics`` table, in one transaction, before their runs are written: a resumed campaign
    reruns a run without a row, and its metrics are replaced."""
    rows = [
        (r.fault_id, r.input_id, name, value)
        for r in records
        for name, value in getattr(r, "metrics", ())
    ]
    if not rows:
        return
    conn = store.conn
    conn.execute(_METRICS_TABLE)
    with conn:
        conn.executemany("INSERT OR REPLACE INTO run_metrics VALUES (?, ?, ?, ?)", rows)


def read_metrics(store: Any) -> dict[tuple[int, int], dict[str, float | None]]:
    """``(fault_id, input_id)`` -> metrics, from a store's ``run_metrics`` table (empty when the
    campaign's criterion returns none)."""
    conn = store.conn
    have = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='run_metrics'"
    ).fetchone()
    out: dict[tuple[int, int], dict[str, float | None]] = {}
    if have:
        for fid, iid, name, value in conn.execute(
            "SELECT fault_id, input_id, name, value FROM run_metrics ORDER BY fault_id, input_id, name"
        ):
            out.setdefault((int(fid), int(iid)), {})[str(name)] = value
    return out


def with_metrics(store: Any, runs: list[Any]) -> list[Any]:
    """``runs`` with their stored metrics (a :class:`MeasuredRun` where a run has some)."""
    metrics = read_metrics(store)
    if not metrics:
        return runs
    return [
        MeasuredRun(*r.as_tuple(), tuple(sorted(metrics[(r.fault_id, r.input_id)].items())))  # type: ignore[call-arg]
        if (r.fault_id, r.input_id) in metrics
        else r
        for r in runs
    ]
