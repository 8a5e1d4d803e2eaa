# SPDX-License-Identifier: MIT
"""Analysis of campaign results: confidence intervals, summaries, reports and plots.

Example:
    >>> from torchfault.analysis import wilson_interval, should_stop
    >>> [round(x, 3) for x in wilson_interval(3, 30)]
    [0.035, 0.256]
"""

from typing import Any

from torchfault.analysis._export import EXPORT_FORMATS, export_summaries
from torchfault.analysis._stats import (
    INTERVAL_METHODS,
    beta_ppf,
    clopper_pearson_interval,
    interval,
    should_stop,
    wilson_interval,
)
from torchfault.analysis._summary import (
    GROUPS,
    OUTCOMES,
    Accumulator,
    OutcomeAccumulator,
    Rate,
    Row,
    Summary,
    summarize,
)


def __getattr__(name: str) -> Any:
    # the report pulls in matplotlib when it runs; import its module only when asked for
    if name == "make_report":
        from torchfault.analysis._report import make_report

        return make_report
    raise AttributeError(f"module 'torchfault.analysis' has no attribute {name!r}")


__all__ = [
    "EXPORT_FORMATS",
    "GROUPS",
    "INTERVAL_METHODS",
    "OUTCOMES",
    "Accumulator",
    "OutcomeAccumulator",
    "Rate",
    "Row",
    "Summary",
    "beta_ppf",
    "clopper_pearson_interval",
    "export_summaries",
    "interval",
    "make_report",
    "should_stop",
    "summarize",
    "wilson_interval",
]
