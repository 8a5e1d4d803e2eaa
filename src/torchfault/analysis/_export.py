# SPDX-License-Identifier: MIT
"""Export of a campaign's summary tables to CSV and Parquet: one file per breakdown.

For a store (or a :class:`~torchfault.analysis.Summary`) and an output folder,
:func:`export_summaries` writes ``summary_overall``, ``summary_layer``, ``summary_target``,
``summary_kind`` and ``summary_bit`` (and ``summary_element`` for a per-element summary), each
as ``.csv`` and/or ``.parquet``, with the columns of :meth:`Summary.to_rows
<torchfault.analysis.Summary.to_rows>`: one row per (key, outcome) with its count, runs, rate
and confidence interval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchfault.analysis._stats import DEFAULT_INTERVAL
from torchfault.analysis._summary import Summary, _pyarrow, summarize_store
from torchfault.errors import TorchFaultError, suggest
from torchfault.store import ResultStore, open_store

__all__ = ["EXPORT_FORMATS", "export_summaries"]

#: File formats :func:`export_summaries` writes.
EXPORT_FORMATS = ("csv", "parquet")


def export_summaries(
    store_or_path: Any,
    out_dir: str | os.PathLike[str],
    formats: Sequence[str] = ("csv",),
    method: str = DEFAULT_INTERVAL,
    *,
    confidence: float = 0.95,
    per_element: bool = False,
) -> list[Path]:
    """Write the summary tables of a campaign: ``summary_<group>.<format>`` per breakdown.

    Args:
        store_or_path: the campaign's SQLite store (a path, or an open
            :class:`~torchfault.store.ResultStore`), or a :class:`Summary` already computed
            (``method``, ``confidence`` and ``per_element`` are then its own).
        out_dir: the folder to write into (created if needed).
        formats: ``"csv"`` and/or ``"parquet"`` (Parquet needs the ``parquet`` extra).
        method: interval method, one of :data:`~torchfault.analysis.INTERVAL_METHODS`.
        confidence: confidence level of the intervals.
        per_element: also write ``summary_element``.

    Returns:
        The files written: for each format, ``summary_overall``, then one file per group the
        summary holds (``layer``, ``target``, ``kind``, ``bit``, ``element``).

    Example:
        >>> import tempfile
        >>> from torchfault.analysis import summarize
        >>> from torchfault import Fault
        >>> faults = {0: (Fault("fc", "weight", (0, 0), (3,)),)}
        >>> s = summarize([{"fault_id": 0, "outcome": "sdc"}], faults)
        >>> [p.name for p in export_summaries(s, tempfile.mkdtemp())]
        ['summary_overall.csv', 'summary_layer.csv', 'summary_target.csv',
         'summary_kind.csv', 'summary_bit.csv']
    """
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    for fmt in formats:
        if fmt not in EXPORT_FORMATS:
            raise TorchFaultError(
                f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}."
                f"{suggest(str(fmt), EXPORT_FORMATS)}"
            )
    if "parquet" in formats:
        _pyarrow("export_summaries(formats=['parquet'])")  # fail before writing anything
    summary = _summary_of(store_or_path, confidence, method, per_element)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TorchFaultError(f"cannot create the export folder {str(out)!r}: {exc}") from None
    files = []
    for fmt in dict.fromkeys(formats):
        for group in ("overall", *summary.groups):
            path = out / f"summary_{group}.{fmt}"
            if fmt == "csv":
                files.append(summary.to_csv(path, groups=(group,)))
            else:
                files.append(summary.to_parquet(path, groups=(group,)))
    return files


def _summary_of(source: Any, confidence: float, method: str, per_element: bool) -> Summary:
    if isinstance(source, Summary):
        return source
    if isinstance(source, ResultStore):
        return summarize_store(source, confidence, method, per_element=per_element)
    if not isinstance(source, (str, os.PathLike)):
        raise TorchFaultError(
            "export_summaries: give a store path, a ResultStore or a Summary, "
            f"got {type(source).__name__}."
        )
    if not Path(source).is_file():
        raise TorchFaultError(f"export_summaries: no such store {str(source)!r}.")
    with open_store(source) as store:
        return summarize_store(store, confidence, method, per_element=per_element)
