# SPDX-License-Identifier: MIT
"""The results store: SQLite in WAL mode, crash-safe and resumable; CSV and Parquet export.

See ``docs/store.md`` for the schema.

Example:
    >>> from torchfault.store import RunRecord
    >>> RunRecord(0, 1, "masked").outcome
    'masked'
"""

from torchfault.store._check import (
    CheckReport,
    FileInfo,
    RepairReport,
    StoreDamagedError,
    check_store,
    inspect_file,
    repair_store,
)
from torchfault.store._injected import INJECTED_TABLE, read_injected, write_injected
from torchfault.store._lock import StoreBusyError, StoreLock
from torchfault.store._records import (
    OUTCOMES,
    RUN_OUTCOMES,
    FaultRecord,
    GoldenRecord,
    RunRecord,
    present_outcomes,
)
from torchfault.store._store import SCHEMA_VERSION, ResultStore, open_store
from torchfault.store._tables import (
    PARQUET_EXTRA,
    RUN_COLUMNS,
    fault_columns,
    require_pyarrow,
    write_run_table,
)
from torchfault.store._traces import TRACES_TABLE, read_trace_rows, write_traces

__all__ = [
    "INJECTED_TABLE",
    "PARQUET_EXTRA",
    "OUTCOMES",
    "RUN_COLUMNS",
    "RUN_OUTCOMES",
    "SCHEMA_VERSION",
    "TRACES_TABLE",
    "CheckReport",
    "FaultRecord",
    "FileInfo",
    "GoldenRecord",
    "RepairReport",
    "ResultStore",
    "RunRecord",
    "StoreBusyError",
    "StoreDamagedError",
    "StoreLock",
    "check_store",
    "fault_columns",
    "inspect_file",
    "open_store",
    "present_outcomes",
    "read_injected",
    "read_trace_rows",
    "repair_store",
    "require_pyarrow",
    "write_injected",
    "write_run_table",
    "write_traces",
]
