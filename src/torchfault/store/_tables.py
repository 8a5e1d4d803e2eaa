# SPDX-License-Identifier: MIT
"""What every table writer of torchfault shares: the one way to reach pyarrow (the ``parquet``
extra) with the one message when it is missing, and the one table of runs. The store's export,
``CampaignResult.to_parquet`` and the summaries' Parquet files all go through
:func:`require_pyarrow`; the store's ``export_csv``/``export_parquet`` and ``CampaignResult``'s
``to_csv``/``to_parquet`` write the same :data:`RUN_COLUMNS` with :func:`write_run_table`, their
fault columns made by :func:`fault_columns`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchfault.errors import TorchFaultError
from torchfault.faults import Fault, fault_kind

__all__ = [
    "PARQUET_EXTRA",
    "RUN_COLUMNS",
    "fault_columns",
    "require_pyarrow",
    "write_run_table",
]

#: The columns of a table of runs, in order, with their Parquet types: the run's
#: :class:`~torchfault.store.RunRecord` fields, then its first fault's ``module``, ``target``,
#: ``kind`` and first ``bit``, the number of faults and ``faults`` (the JSON list of them).
_RUN_TYPES = (
    ("fault_id", "int64"),
    ("input_id", "int64"),
    ("outcome", "string"),
    ("golden_top1", "int64"),
    ("faulty_top1", "int64"),
    ("max_abs_diff", "float64"),
    ("seconds", "float64"),
    ("error", "string"),
    ("module", "string"),
    ("target", "string"),
    ("kind", "string"),
    ("bit", "int64"),
    ("n_faults", "int64"),
    ("faults", "string"),
)
#: Columns of every table of runs (store export and ``CampaignResult``), in order.
RUN_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _RUN_TYPES)

#: how to install what Parquet files need
PARQUET_EXTRA = "pip install 'torchfault[parquet]'"


def require_pyarrow(what: str) -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or a :class:`TorchFaultError` saying that ``what`` needs
    pyarrow and naming the ``parquet`` extra.

    Args:
        what: the function or option that writes Parquet (``"export_parquet"``).

    Example:
        >>> pa, pq = require_pyarrow("export_parquet")
        >>> pa.__name__, pq.__name__
        ('pyarrow', 'pyarrow.parquet')
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TorchFaultError(
            f"{what} needs pyarrow, which is not installed; install the 'parquet' extra: "
            f"{PARQUET_EXTRA}."
        ) from None
    return pa, pq


def fault_columns(
    faults: Sequence[Fault], kinds: Mapping[tuple[str, str], str] | None = None
) -> tuple[str | None, str | None, str | None, int | None, int, str]:
    """The fault columns of a run's row, ``(module, target, kind, bit, n_faults, faults)``:
    the first fault's module, target, kind (:func:`~torchfault.faults.fault_kind` with the
    sites' ``kinds``) and first bit, the number of faults and their JSON list.

    Example:
        >>> cols = fault_columns([Fault("fc", "weight", (0, 1), (30, 2))])
        >>> cols[:5], Fault.from_dict(json.loads(cols[5])[0]).bits
        (('fc', 'weight', 'parameter', 30, 1), (30, 2))
    """
    first = faults[0] if faults else None
    return (
        first.module if first else None,
        first.target if first else None,
        fault_kind(first, kinds) if first else None,
        first.bits[0] if first and first.bits else None,
        len(faults),
        json.dumps([f.to_dict() for f in faults], separators=(",", ":")),
    )


def write_run_table(
    rows: Iterable[Sequence[Any]], path: str | os.PathLike[str], fmt: str, what: str
) -> Path:
    """Write rows of :data:`RUN_COLUMNS` (one sequence per run, in that order) to ``path`` as
    ``fmt`` ``"csv"`` (missing values empty) or ``"parquet"`` (needs pyarrow; ``what`` names
    the caller in the message when it is missing). Returns the path.

    Example:
        >>> import tempfile
        >>> row = (0, 1, "sdc", 3, 7, 2.5, 0.01, None, "fc", "weight", "parameter", 30, 1, "[]")
        >>> out = write_run_table([row], Path(tempfile.mkdtemp()) / "runs.csv", "csv", "doc")
        >>> out.read_text().splitlines()[1]
        '0,1,sdc,3,7,2.5,0.01,,fc,weight,parameter,30,1,[]'
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"write_run_table: fmt must be 'csv' or 'parquet', got {fmt!r}.")
    out = Path(path)
    if fmt == "parquet":
        pa, pq = require_pyarrow(what)
        data = list(rows)
        types = [getattr(pa, t)() for _, t in _RUN_TYPES]
        columns = list(zip(*data)) if data else [()] * len(RUN_COLUMNS)
        table = pa.table(
            [pa.array(list(c), type=t) for c, t in zip(columns, types)],
            schema=pa.schema(list(zip(RUN_COLUMNS, types))),
        )
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out)
        except OSError as exc:
            raise TorchFaultError(f"{what}: cannot write Parquet {str(out)!r}: {exc}") from None
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(RUN_COLUMNS)
            for row in rows:
                writer.writerow(["" if v is None else v for v in row])
    except OSError as exc:
        raise TorchFaultError(f"{what}: cannot write CSV {str(out)!r}: {exc}") from None
    return out
