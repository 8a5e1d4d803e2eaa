# SPDX-License-Identifier: MIT
"""What a fault is: :class:`Fault`, :class:`FaultSite`, fault models and the fault space."""

from torchfault.faults._access import (
    SPARSE_COMPONENTS,
    InvalidSparseTensorError,
    get_stored,
    is_packed,
    set_packed,
    sparse_components,
    sparse_guard,
    stored_tensors,
)
from torchfault.faults._ecc import (
    ECC_CODES,
    EccCode,
    get_ecc,
    list_ecc,
    register_ecc,
)
from torchfault.faults._fault import (
    ACTIVATION_TARGETS,
    BUFFER_NAMES,
    OUTCOMES,
    PERSISTENCES,
    RUN_OUTCOMES,
    TARGET_KINDS,
    Fault,
    FaultSite,
    fault_kind,
)
from torchfault.faults._layouts import (
    LAYOUTS,
    MemoryLayout,
    TensorMemory,
    list_layouts,
    register_layout,
)
from torchfault.faults._memory import MemoryFault, MemoryMap, MemoryRegion, MemoryResolution
from torchfault.faults._models import (
    FAULT_MODELS,
    check_fault_model,
    create_fault_model,
    get_fault_model,
    is_fault_model,
    list_fault_models,
    register_fault_model,
)
from torchfault.faults._patterns import (
    PATTERNS,
    CellPattern,
    PatternMix,
    list_patterns,
    register_pattern,
)
from torchfault.faults._pruned import NonzeroFaults, unpruned_index
from torchfault.faults._space import FaultSpace, TargetSpec, fault_space, probe_forward
from torchfault.faults._structure import get_element, iter_tensors, replace_element
from torchfault.faults._targets import ModuleSelector, normalize_kinds, select_modules, tensor_kind

__all__ = [
    "ACTIVATION_TARGETS",
    "BUFFER_NAMES",
    "OUTCOMES",
    "RUN_OUTCOMES",
    "ECC_CODES",
    "LAYOUTS",
    "PATTERNS",
    "CellPattern",
    "EccCode",
    "InvalidSparseTensorError",
    "SPARSE_COMPONENTS",
    "MemoryFault",
    "MemoryLayout",
    "MemoryMap",
    "MemoryRegion",
    "MemoryResolution",
    "NonzeroFaults",
    "PatternMix",
    "TensorMemory",
    "get_ecc",
    "list_ecc",
    "list_layouts",
    "list_patterns",
    "register_ecc",
    "register_layout",
    "register_pattern",
    "FAULT_MODELS",
    "PERSISTENCES",
    "TARGET_KINDS",
    "Fault",
    "FaultSite",
    "FaultSpace",
    "ModuleSelector",
    "TargetSpec",
    "check_fault_model",
    "create_fault_model",
    "fault_kind",
    "fault_space",
    "get_element",
    "get_fault_model",
    "get_stored",
    "is_fault_model",
    "is_packed",
    "iter_tensors",
    "list_fault_models",
    "normalize_kinds",
    "probe_forward",
    "register_fault_model",
    "replace_element",
    "select_modules",
    "set_packed",
    "sparse_components",
    "sparse_guard",
    "stored_tensors",
    "tensor_kind",
    "unpruned_index",
]
