# SPDX-License-Identifier: MIT
"""How faults get into a running model: :func:`inject` (listed faults) and :func:`inject_ber`
(bit flips at a bit-error rate), both context managers that restore the model exactly.

Every injector (and the campaigns' fast engine) puts faults into tensors through one path:
:func:`apply_fault` (a list of :class:`~torchfault.Fault` on one tensor), built on
:func:`apply_masks` (bitwise fault models) and :func:`apply_model` (any fault model), with one
validation (:func:`flat_index`, :func:`check_format`).

Golden range profiles (:func:`profile_ranges`, :func:`load_profile`) record what each layer's
output looks like on fault-free inputs; protections (:func:`protect`, :func:`protect_`, the
:data:`PROTECTIONS` registry: ``ranger``, ``clip``, ``detect``) bound or check outputs against
them.

Injectors are a registry too, so campaigns and plugins can pick one by name.
"""

from typing import Any

from torchfault.injectors._apply import (
    apply_fault,
    apply_masks,
    apply_model,
    bitwise_op,
    check_format,
    flat_index,
)
from torchfault.injectors._ber import BERInjection, draw_flips, inject_ber
from torchfault.injectors._inject import Injection, inject
from torchfault.injectors._memory import (
    MemoryCampaignResult,
    MemoryInjection,
    inject_memory,
    memory_campaign,
)
from torchfault.injectors._protect import (
    PROTECTIONS,
    Protection,
    ProtectionHandle,
    create_protection,
    is_protection,
    list_protections,
    protect,
    protect_,
    register_protection,
)
from torchfault.injectors._ranges import (
    LayerRange,
    RangeProfile,
    load_profile,
    model_digests,
    profile_ranges,
    select_layers,
)
from torchfault.injectors._systolic import (
    DATAFLOWS,
    PEFault,
    SystolicArray,
    inject_systolic,
    pe_faults,
    pe_map,
    systolic_campaign,
)
from torchfault.injectors._values import InjectedPass, injected_pass, injected_values
from torchfault.registry import Registry

__all__ = [
    "DATAFLOWS",
    "INJECTORS",
    "PROTECTIONS",
    "LayerRange",
    "Protection",
    "ProtectionHandle",
    "RangeProfile",
    "create_protection",
    "is_protection",
    "list_protections",
    "load_profile",
    "model_digests",
    "profile_ranges",
    "protect",
    "protect_",
    "register_protection",
    "select_layers",
    "BERInjection",
    "Injection",
    "apply_fault",
    "apply_masks",
    "apply_model",
    "bitwise_op",
    "check_format",
    "MemoryCampaignResult",
    "MemoryInjection",
    "PEFault",
    "SystolicArray",
    "create_injector",
    "draw_flips",
    "flat_index",
    "inject",
    "inject_ber",
    "inject_memory",
    "inject_systolic",
    "InjectedPass",
    "injected_pass",
    "injected_values",
    "is_injector",
    "list_injectors",
    "memory_campaign",
    "pe_faults",
    "pe_map",
    "register_injector",
    "systolic_campaign",
]

INJECTORS: Registry[Any] = Registry("injector")
INJECTORS.add(
    "faults", inject, description="Listed faults (activations, parameters, buffers).", context=True
)
INJECTORS.add(
    "ber",
    inject_ber,
    description="Bit flips at a bit-error rate, vectorised per tensor.",
    context=True,
)


# register_injector (a decorator for context-manager injectors ``fn(model, ...)``),
# list_injectors, is_injector, create_injector (calls the injector: a context manager)
register_injector, list_injectors, is_injector, create_injector, _ = INJECTORS.functions()
