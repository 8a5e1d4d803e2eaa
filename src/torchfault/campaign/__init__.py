# SPDX-License-Identifier: MIT
"""Campaigns: golden run, injection runs, outcome classification, engines and executors."""

from torchfault.campaign import _fast, _parallel  # noqa: F401 - register engines, executors
from torchfault.campaign._campaign import (
    Campaign,
    build_engine,
    build_inputs,
    build_model,
    fingerprint,
)
from torchfault.campaign._config import (
    CampaignConfig,
    DataConfig,
    EngineConfig,
    ExecutorConfig,
    ModelConfig,
    OutcomeConfig,
    SamplerConfig,
    StoreConfig,
    TargetsConfig,
)
from torchfault.campaign._engine import (
    ENGINES,
    Engine,
    ReferenceEngine,
    RunTask,
    create_engine,
    is_engine,
    list_engines,
    register_engine,
)
from torchfault.campaign._executors import (
    EXECUTORS,
    Executor,
    SerialExecutor,
    create_executor,
    is_executor,
    list_executors,
    register_executor,
)
from torchfault.campaign._outcome import OUTCOMES, Criterion, classify, output_words_equal
from torchfault.campaign._run import CampaignResult, as_fault_sets, golden_run, run_campaign

__all__ = [
    "ENGINES",
    "EXECUTORS",
    "OUTCOMES",
    "Campaign",
    "CampaignConfig",
    "CampaignResult",
    "Criterion",
    "DataConfig",
    "Engine",
    "EngineConfig",
    "Executor",
    "ExecutorConfig",
    "ModelConfig",
    "OutcomeConfig",
    "ReferenceEngine",
    "RunTask",
    "SamplerConfig",
    "SerialExecutor",
    "StoreConfig",
    "TargetsConfig",
    "as_fault_sets",
    "build_engine",
    "build_inputs",
    "build_model",
    "classify",
    "create_engine",
    "create_executor",
    "fingerprint",
    "golden_run",
    "is_engine",
    "is_executor",
    "list_engines",
    "list_executors",
    "output_words_equal",
    "register_engine",
    "register_executor",
    "run_campaign",
]
