# SPDX-License-Identifier: MIT
"""What every table writer of torchfault shares: the one way to reach pyarrow (the ``parquet``
extra) with the one message when it is missing. The store's export, ``CampaignResult.to_parquet``
and the summaries' Parquet files all go through :func:`require_pyarrow`.
"""

from __future__ import annotations

from typing import Any

from torchfault.errors import TorchFaultError

__all__ = ["PARQUET_EXTRA", "require_pyarrow"]

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
