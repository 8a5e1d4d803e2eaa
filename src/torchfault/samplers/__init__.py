# SPDX-License-Identifier: MIT
"""Which faults a campaign injects: samplers (a registry) and the statistical sample size.

Example:
    >>> from torchfault.samplers import create_sampler, sample_size
    >>> sample_size(1_984_192, margin=0.01, confidence=0.99)
    16452
"""

from torchfault.samplers._memory import MemorySampler
from torchfault.samplers._pruned import NonzeroSampler
from torchfault.samplers._samplers import (
    EXHAUSTIVE_LIMIT,
    SAMPLERS,
    BerSampler,
    ExhaustiveSampler,
    PerBitSampler,
    PerLayerSampler,
    Sampler,
    SamplerCapabilities,
    UniformSampler,
    create_sampler,
    get_sampler,
    is_sampler,
    list_samplers,
    register_sampler,
    resolve_bits,
    sampler_capabilities,
)
from torchfault.samplers._size import normal_quantile, sample_size
from torchfault.samplers._stratified import (
    ALLOCATIONS,
    STRATA,
    StratifiedSampler,
    default_bit_groups,
)

__all__ = [
    "ALLOCATIONS",
    "EXHAUSTIVE_LIMIT",
    "SAMPLERS",
    "SamplerCapabilities",
    "sampler_capabilities",
    "STRATA",
    "BerSampler",
    "ExhaustiveSampler",
    "MemorySampler",
    "NonzeroSampler",
    "PerBitSampler",
    "PerLayerSampler",
    "Sampler",
    "StratifiedSampler",
    "UniformSampler",
    "create_sampler",
    "default_bit_groups",
    "get_sampler",
    "is_sampler",
    "list_samplers",
    "normal_quantile",
    "register_sampler",
    "resolve_bits",
    "sample_size",
]
