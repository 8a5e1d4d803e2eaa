# SPDX-License-Identifier: MIT
"""Fault models: what a fault does to the elements it hits.

A fault model is a function ``fn(x, index, bits, fmt, generator, **params) -> Tensor`` that
returns a new tensor equal to ``x`` except at the flat indices ``index`` (row-major, logical
order). ``bits`` are the fault's bit positions, ``fmt`` the :class:`~torchfault.numerics.NumberFormat`
the elements are seen in, ``generator`` a ``torch.Generator`` for random models, and ``params``
the fault's own parameters (``Fault.params``).

Models whose effect is one bitwise operation with the fault's bit mask declare it with the
``bit_op`` capability (``"xor"``, ``"stuck_at_0"``, ``"stuck_at_1"``); the injectors then apply
many such faults on one tensor in a single vectorised operation.

Example:
    >>> import torch
    >>> from torchfault.faults import create_fault_model, list_fault_models
    >>> "bit_flip" in list_fault_models()
    True
    >>> flip = create_fault_model("bit_flip")
    >>> from torchfault.numerics import get_format
    >>> flip(torch.tensor([1.0, 2.0]), torch.tensor([0]), (31,), get_format("float32"), None)
    tensor([-1.,  2.])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchfault import numerics
from torchfault.errors import TorchFaultError
from torchfault.registry import Registry

__all__ = [
    "FAULT_MODELS",
    "FaultModelFn",
    "register_fault_model",
    "list_fault_models",
    "is_fault_model",
    "create_fault_model",
    "get_fault_model",
]

FaultModelFn = Callable[..., torch.Tensor]

FAULT_MODELS: Registry[FaultModelFn] = Registry("fault model")


def register_fault_model(
    name: str,
    *,
    description: str | None = None,
    needs_bits: bool = False,
    bit_op: str | None = None,
    overwrite: bool = False,
) -> Callable[[FaultModelFn], FaultModelFn]:
    """Register a fault model function under ``name``.

    Args:
        name: the name faults use in ``Fault.model``.
        description: one line (default: the first docstring line).
        needs_bits: whether a fault of this model must name bit positions.
        bit_op: for models that are one bitwise op with the bit mask (enables vectorisation).
        overwrite: replace an existing entry of that name.

    Example:
        >>> import torch
        >>> @register_fault_model("double", overwrite=True)
        ... def double(x, index, bits, fmt, generator):
        ...     '''Doubles the element.'''
        ...     y = x.flatten().clone()
        ...     y[index] *= 2
        ...     return y.view_as(x)
        >>> create_fault_model("double")(torch.ones(3), torch.tensor([1]), (), None, None)
        tensor([1., 2., 1.])
    """
    return FAULT_MODELS.register(
        name, description=description, overwrite=overwrite, needs_bits=needs_bits, bit_op=bit_op
    )


def list_fault_models(filter: str | None = None) -> list[str]:
    """Registered fault model names, optionally filtered with a wildcard (``"stuck*"``)."""
    return FAULT_MODELS.list(filter)


def is_fault_model(name: str) -> bool:
    """Whether ``name`` is a registered fault model."""
    return FAULT_MODELS.is_registered(name)


def get_fault_model(name: str) -> FaultModelFn:
    """The fault model function registered as ``name`` (unknown names list the valid ones)."""
    return FAULT_MODELS.get(name)


def create_fault_model(name: str) -> FaultModelFn:
    """Same as :func:`get_fault_model`; fault models are plain functions and take no settings."""
    return FAULT_MODELS.get(name)


def _bit_model(op: str) -> FaultModelFn:
    def fn(
        x: torch.Tensor,
        index: torch.Tensor,
        bits: Sequence[int],
        fmt: numerics.NumberFormat,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return numerics.apply_bits(x, index, numerics.bit_mask(bits, fmt), op, fmt)

    return fn


bit_flip = register_fault_model(
    "bit_flip",
    description="Invert the given bits (single or multi-bit upset).",
    needs_bits=True,
    bit_op="xor",
)(_bit_model("xor"))
stuck_at_0 = register_fault_model(
    "stuck_at_0", description="Force the given bits to 0.", needs_bits=True, bit_op="stuck_at_0"
)(_bit_model("stuck_at_0"))
stuck_at_1 = register_fault_model(
    "stuck_at_1", description="Force the given bits to 1.", needs_bits=True, bit_op="stuck_at_1"
)(_bit_model("stuck_at_1"))


@register_fault_model("zero", description="Set the element to zero.")
def zero(
    x: torch.Tensor,
    index: torch.Tensor,
    bits: Sequence[int],
    fmt: numerics.NumberFormat,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    return numerics.set_values(x, index, 0.0, fmt)


@register_fault_model("value", description="Set the element to a given value (param 'value').")
def value(
    x: torch.Tensor,
    index: torch.Tensor,
    bits: Sequence[int],
    fmt: numerics.NumberFormat,
    generator: torch.Generator | None = None,
    *,
    value: float | None = None,
) -> torch.Tensor:
    if value is None:
        raise TorchFaultError("Fault model 'value' needs params={'value': <number>}.")
    return numerics.set_values(x, index, float(value), fmt)


@register_fault_model(
    "random_value",
    description="A random value: uniform in [low, high), or a random bit pattern of the format.",
)
def random_value(
    x: torch.Tensor,
    index: torch.Tensor,
    bits: Sequence[int],
    fmt: numerics.NumberFormat,
    generator: torch.Generator | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    n = int(index.numel())
    if low is None and high is None:
        words = numerics.random_words(n, fmt, generator).to(torch.int64)
        return numerics.apply_bits(x, index, words, "set", fmt)
    if low is None or high is None or not float(low) < float(high):
        raise TorchFaultError(
            f"Fault model 'random_value' needs low < high (or neither, for a random bit pattern); got low={low}, high={high}."
        )
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    vals = float(low) + (float(high) - float(low)) * u
    return numerics.set_values(x, index, vals, fmt)


def check_fault_model(name: str, bits: Sequence[int], params: dict[str, Any]) -> None:
    """Raise TorchFaultError if ``name`` is unknown or needs bits it was not given."""
    try:
        info = FAULT_MODELS.info(name)
    except ValueError as exc:
        raise TorchFaultError(str(exc)) from None
    if info.capabilities.get("needs_bits") and not bits:
        raise TorchFaultError(f"Fault model {name!r} needs at least one bit position in 'bits'.")
