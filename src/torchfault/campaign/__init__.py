# SPDX-License-Identifier: MIT
"""Campaigns: golden run, injection runs, outcome classification, engines and executors.

The names below are what a user calls: :class:`Campaign` and its config sections,
:func:`run_campaign`, :func:`golden_run`, the outcome criteria and the engine and executor
registries (to add an entry). The machinery behind them (engine building and hand-over, inputs
and fingerprints, row batching, devices, protected re-runs, word comparison) stays in this
package's own modules; code inside the package imports it from the module that defines it.
"""

from torchfault.campaign import _fast, _parallel  # noqa: F401 - register engines, executors
from torchfault.campaign._campaign import Campaign
from torchfault.campaign._config import (
    CampaignConfig,
    DataConfig,
    EngineConfig,
    ExecutorConfig,
    ModelConfig,
    OutcomeConfig,
    ProtectionConfig,
    SamplerConfig,
    StoreConfig,
    TargetsConfig,
    TraceConfig,
)
from torchfault.campaign._confirm import PlanCheck, confirm_plan
from torchfault.campaign._engine import (
    ENGINES,
    Engine,
    RunTask,
    create_engine,
    is_engine,
    list_engines,
    register_engine,
)
from torchfault.campaign._executors import (
    EXECUTORS,
    Executor,
    create_executor,
    is_executor,
    list_executors,
    register_executor,
)
from torchfault.campaign._fast import FastOptions
from torchfault.campaign._outcome import (
    CRITERIA,
    OUTCOMES,
    Criterion,
    CriterionCapabilities,
    CriterionError,
    Evaluation,
    Verdict,
    criterion_capabilities,
    evaluate,
    is_criterion,
    list_criteria,
    register_criterion,
)
from torchfault.campaign._protection import PROTECTED_OUTCOMES, ProtectedRun, ProtectionResult
from torchfault.campaign._run import CampaignResult, golden_run, make_criterion, run_campaign

__all__ = [
    "CRITERIA",
    "ENGINES",
    "EXECUTORS",
    "OUTCOMES",
    "PROTECTED_OUTCOMES",
    "Campaign",
    "CampaignConfig",
    "CampaignResult",
    "Criterion",
    "CriterionCapabilities",
    "criterion_capabilities",
    "CriterionError",
    "DataConfig",
    "Engine",
    "EngineConfig",
    "Evaluation",
    "Executor",
    "ExecutorConfig",
    "FastOptions",
    "ModelConfig",
    "OutcomeConfig",
    "PlanCheck",
    "ProtectedRun",
    "ProtectionConfig",
    "ProtectionResult",
    "RunTask",
    "SamplerConfig",
    "StoreConfig",
    "TargetsConfig",
    "TraceConfig",
    "Verdict",
    "create_engine",
    "create_executor",
    "confirm_plan",
    "evaluate",
    "golden_run",
    "is_criterion",
    "is_engine",
    "is_executor",
    "list_criteria",
    "list_engines",
    "list_executors",
    "make_criterion",
    "register_criterion",
    "register_engine",
    "register_executor",
    "run_campaign",
]
