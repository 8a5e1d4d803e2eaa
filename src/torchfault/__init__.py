# SPDX-License-Identifier: MIT
"""torchfault: fault injection for PyTorch deep neural networks.

The public API is re-exported here and imported lazily, so ``import torchfault`` stays cheap and
the injection core works without the optional extras (Lightning, matplotlib, Ray, pyarrow).

Example:
    >>> import torch, torchfault
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> fault = torchfault.Fault("0", "weight", index=(0, 0), bits=(31,))
    >>> x = torch.ones(1, 4)
    >>> with torchfault.inject(model, [fault]):
    ...     faulty = model(x)
    >>> bool((faulty != model(x)).any())
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "TorchFaultError": "torchfault.errors",
    "ConfigError": "torchfault.errors",
    "Registry": "torchfault.registry",
    "Fault": "torchfault.faults",
    "FaultSite": "torchfault.faults",
    "fault_space": "torchfault.faults",
    "TargetSpec": "torchfault.faults",
    "get_format": "torchfault.numerics",
    "list_formats": "torchfault.numerics",
    "Injection": "torchfault.injectors",
    "register_fault_model": "torchfault.faults",
    "list_fault_models": "torchfault.faults",
    "is_fault_model": "torchfault.faults",
    "create_fault_model": "torchfault.faults",
    "inject": "torchfault.injectors",
    "list_injectors": "torchfault.injectors",
    "is_injector": "torchfault.injectors",
    "create_injector": "torchfault.injectors",
    "inject_ber": "torchfault.injectors",
    "sample_size": "torchfault.samplers",
    "list_samplers": "torchfault.samplers",
    "is_sampler": "torchfault.samplers",
    "create_sampler": "torchfault.samplers",
    "run_campaign": "torchfault.campaign",
    "Campaign": "torchfault.campaign",
    "CampaignConfig": "torchfault.campaign",
    "CampaignResult": "torchfault.campaign",
    "list_engines": "torchfault.campaign",
    "is_engine": "torchfault.campaign",
    "create_engine": "torchfault.campaign",
    "list_executors": "torchfault.campaign",
    "is_executor": "torchfault.campaign",
    "create_executor": "torchfault.campaign",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchfault' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
