# SPDX-License-Identifier: MIT
"""pytorchfi 0.6's ``weight_error_models`` on torchfault: random weight faults.

The same calls to Python's ``random`` module as pytorchfi's, in the same order, so after
``random.seed(s)`` the same weight element and value are drawn. Changes: a 1-d weight draws no
``dim1`` (pytorchfi raises ``UnboundLocalError``) and a 5-d weight (``Conv3d``) also draws its
last coordinate (pytorchfi cannot inject into it).

Example:
    >>> import random, torch.nn as nn
    >>> from torchfault.compat.pytorchfi import core, weight_error_models as wem
    >>> pfi = core.fault_injection(nn.Sequential(nn.Conv2d(1, 2, 3)), 1, [1, 5, 5])
    >>> random.seed(0)
    >>> wem.random_weight_location(pfi)
    ([0], [1], [0], [1], [2])
    >>> bad = wem.zero_func_rand_weight(pfi)
    >>> bad.faults[0].params
    (('value', 0.0),)
"""

from __future__ import annotations

from typing import Any

import torch

from torchfault.compat.pytorchfi import core
from torchfault.compat.pytorchfi._corrupted import CorruptedModel
from torchfault.compat.pytorchfi.util import random

__all__ = ["random_value", "random_weight_inj", "random_weight_location", "zero_func_rand_weight"]


def random_value(min_val: float = -1, max_val: float = 1) -> float:
    """A uniform number in ``[min_val, max_val]`` (``random.uniform``), as in pytorchfi."""
    return random.uniform(min_val, max_val)


def random_weight_location(pfi: core.fault_injection, layer: int = -1) -> tuple[list[Any], ...]:
    """``([layer], [k], [dim1], [dim2], [dim3])`` of a random weight element (``None`` past the
    weight's dimensions); a random layer when ``layer == -1``. A 5-d weight adds ``[dim4]``."""
    if layer == -1:
        layer = random.randint(0, pfi.get_total_layers() - 1)
    dim = pfi.get_weights_dim(layer)
    shape = pfi.get_weights_size(layer)
    assert shape is not None  # get_weights_dim raised otherwise
    k = random.randint(0, shape[0] - 1)
    coords = [random.randint(0, shape[d] - 1) if dim > d else None for d in (1, 2, 3)]
    location: tuple[list[Any], ...] = ([layer], [k], *([c] for c in coords))
    if dim > 4:
        location = (*location, [random.randint(0, shape[4] - 1)])
    return location


def _declare(
    pfi: core.fault_injection, location: tuple[list[Any], ...], **kw: Any
) -> CorruptedModel:
    names = ("layer_num", "k", "dim1", "dim2", "dim3", "dim4")
    return pfi.declare_weight_fi(**dict(zip(names, location)), **kw)


def random_weight_inj(
    pfi: core.fault_injection, corrupt_layer: int = -1, min_val: float = -1, max_val: float = 1
) -> CorruptedModel:
    """One random weight element (of ``corrupt_layer``, or a random layer) set to a random value."""
    location = random_weight_location(pfi, corrupt_layer)
    faulty_val = [random_value(min_val=min_val, max_val=max_val)]
    return _declare(pfi, location, value=faulty_val)


def zero_func_rand_weight(pfi: core.fault_injection) -> CorruptedModel:
    """One random weight element set to zero (through a custom function, as pytorchfi does)."""
    location = random_weight_location(pfi)
    return _declare(pfi, location, function=_zero_rand_weight)


def _zero_rand_weight(data: torch.Tensor, location: tuple[Any, ...]) -> torch.Tensor:
    return data[location] * 0
