# SPDX-License-Identifier: MIT
"""Analysis of campaign results: confidence intervals, summaries, reports and plots.

Example:
    >>> from torchfault.analysis import wilson_interval, should_stop
    >>> [round(x, 3) for x in wilson_interval(3, 30)]
    [0.035, 0.256]
"""

from typing import Any

from torchfault.analysis._design import (
    Estimate,
    SamplingDesign,
    estimate,
    estimate_groups,
    stratum_sd,
)
from torchfault.analysis._export import EXPORT_FORMATS, export_summaries
from torchfault.analysis._html import StoreState, make_html_report, store_state
from torchfault.analysis._layer_plan import (
    MAX_EXHAUSTIVE,
    ProtectionPlan,
    layers_to_protect,
    predicted_sdc,
)
from torchfault.analysis._propagation import (
    LayerDeviation,
    Trace,
    layer_deviations,
    layer_order,
    propagation_by_depth,
    propagation_by_group,
    read_traces,
    trace_rows,
    trace_runs,
)
from torchfault.analysis._protection import (
    PROTECTION_FILE,
    ProtectionRates,
    plot_protection,
    protection_rates,
    read_protection,
)
from torchfault.analysis._sdc_model import LayerFit, SDCModel, fit_sdc_model
from torchfault.analysis._stats import (
    DEFAULT_INTERVAL,
    INTERVAL_METHODS,
    beta_ppf,
    check_method,
    clopper_pearson_interval,
    interval,
    interval_from_rate,
    modified_wilson_interval,
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
    summarize_store,
)
from torchfault.analysis._vulnerability import (
    Cell,
    VulnerabilityMap,
    export_top,
    plot_heatmap,
    protect_top_k,
    rerun_outcome,
    vulnerability_maps,
)


def __getattr__(name: str) -> Any:
    # the report pulls in matplotlib when it runs; import its module only when asked for
    if name == "make_report":
        from torchfault.analysis._report import make_report

        return make_report
    raise AttributeError(f"module 'torchfault.analysis' has no attribute {name!r}")


__all__ = [
    "PROTECTION_FILE",
    "ProtectionRates",
    "plot_protection",
    "protection_rates",
    "read_protection",
    "MAX_EXHAUSTIVE",
    "ProtectionPlan",
    "layers_to_protect",
    "predicted_sdc",
    "LayerFit",
    "SDCModel",
    "fit_sdc_model",
    "Cell",
    "VulnerabilityMap",
    "export_top",
    "plot_heatmap",
    "protect_top_k",
    "rerun_outcome",
    "vulnerability_maps",
    "LayerDeviation",
    "Trace",
    "layer_deviations",
    "layer_order",
    "propagation_by_depth",
    "propagation_by_group",
    "read_traces",
    "trace_rows",
    "trace_runs",
    "DEFAULT_INTERVAL",
    "EXPORT_FORMATS",
    "GROUPS",
    "INTERVAL_METHODS",
    "OUTCOMES",
    "Accumulator",
    "Estimate",
    "OutcomeAccumulator",
    "Rate",
    "Row",
    "SamplingDesign",
    "StoreState",
    "Summary",
    "beta_ppf",
    "check_method",
    "clopper_pearson_interval",
    "estimate",
    "estimate_groups",
    "export_summaries",
    "interval",
    "interval_from_rate",
    "make_html_report",
    "make_report",
    "modified_wilson_interval",
    "should_stop",
    "store_state",
    "stratum_sd",
    "summarize",
    "summarize_store",
    "wilson_interval",
]
