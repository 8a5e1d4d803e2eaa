# SPDX-License-Identifier: MIT
"""Fault models: what a fault does to the elements it hits.

A fault model is a function ``fn(x, index, bits, fmt, generator, **params) -> Tensor`` that
returns a new tensor equal to ``x`` except at the flat indices ``index`` (row-major, logical
order). ``bits`` are the fault's bit positions, ``fmt`` the :class:`~torchfault.numerics.NumberFormat`
the elements are seen in, ``generator`` a ``torch.Generator`` for random models, and ``params``
the fault's own parameters (``Fault.params``): the function's keyword arguments after
``generator``. :func:`check_fault_model` checks a fault's parameters against them (and the
values of the built-in models') before the fault touches anything.

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

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchfault import numerics
from torchfault.errors import TorchFaultError, suggest
from torchfault.registry import HIDE_DEFAULT, Capabilities, Registry

__all__ = [
    "FAULT_MODELS",
    "FaultModelCapabilities",
    "fault_model_capabilities",
    "FaultModelFn",
    "register_fault_model",
    "list_fault_models",
    "is_fault_model",
    "create_fault_model",
    "get_fault_model",
]

FaultModelFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class FaultModelCapabilities(Capabilities):
    """What a fault model supports (the fault model registry's typed capabilities).

    Attributes:
        needs_bits: a fault of this model must name bit positions (``False``: it replaces
            whole elements).
        bit_op: ``"xor"``, ``"stuck_at_0"`` or ``"stuck_at_1"`` for a model that is one bitwise
            op with the bit mask (enables vectorisation); ``None`` otherwise.
        random: the model draws from its ``generator``.
        detected: a run of this model is recorded as ``"detected"`` (ECC detected, not
            corrected).

    Example:
        >>> FAULT_MODELS.capabilities_of("bit_flip", FaultModelCapabilities).bit_op
        'xor'
    """

    needs_bits: bool = False
    bit_op: str | None = None
    random: bool = False
    detected: bool = field(default=False, metadata=HIDE_DEFAULT)


FAULT_MODELS: Registry[FaultModelFn] = Registry("fault model", capabilities=FaultModelCapabilities)


def fault_model_capabilities(name: str) -> FaultModelCapabilities:
    """The typed capabilities of the registered fault model ``name``.

    Example:
        >>> fault_model_capabilities("bit_flip").needs_bits
        True
    """
    return FAULT_MODELS.capabilities_of(name, FaultModelCapabilities)


#: checks of the built-in models' parameters, by function: run before a fault touches the model
_PARAM_CHECKS: dict[Any, Callable[..., Any]] = {}


def register_fault_model(
    name: str,
    *,
    description: str | None = None,
    needs_bits: bool = False,
    bit_op: str | None = None,
    random: bool = False,
    overwrite: bool = False,
) -> Callable[[FaultModelFn], FaultModelFn]:
    """Register a fault model function under ``name``.

    Args:
        name: the name faults use in ``Fault.model``.
        description: one line (default: the first docstring line).
        needs_bits: whether a fault of this model must name bit positions.
        bit_op: for models that are one bitwise op with the bit mask (enables vectorisation).
        random: the model draws from its ``generator``. Campaigns then run each (fault, input)
            on its own with a generator seeded from the fault and the input, so a run's values
            do not depend on chunking, resuming or the executor.
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
        name,
        description=description,
        overwrite=overwrite,
        needs_bits=needs_bits,
        bit_op=bit_op,
        random=random,
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


def _value_param(value: Any = None) -> float:
    """The ``value`` parameter of the ``value`` fault model, as a float."""
    if value is None:
        raise TorchFaultError("Fault model 'value' needs params={'value': <number>}.")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise TorchFaultError(
            f"Fault model 'value' needs a number in params['value'], got {value!r}."
        ) from None


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
    return numerics.set_values(x, index, _value_param(value), fmt)


_PARAM_CHECKS[value] = _value_param


def _range_params(low: Any = None, high: Any = None) -> tuple[float, float] | None:
    """``(low, high)`` of ``random_value`` as floats, or ``None`` for a random bit pattern."""
    if low is None and high is None:
        return None
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError, OverflowError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise TorchFaultError(
            "Fault model 'random_value' needs finite numbers low < high (or neither, for a random "
            f"bit pattern); got low={low!r}, high={high!r}."
        )
    return lo, hi


@register_fault_model(
    "random_value",
    description="A random value: uniform in [low, high), or a random bit pattern of the format.",
    random=True,
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
    bounds = _range_params(low, high)
    if bounds is None:
        words = numerics.random_words(n, fmt, generator).to(torch.int64)
        return numerics.apply_bits(x, index, words, "set", fmt)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    vals = bounds[0] + (bounds[1] - bounds[0]) * u
    return numerics.set_values(x, index, vals, fmt)


_PARAM_CHECKS[random_value] = _range_params


def _model_parameters(fn: Any) -> tuple[list[str], list[str], bool] | None:
    """The keyword parameters a fault model function takes after its five positional arguments,
    those of them without a default, and whether it takes ``**params``; ``None`` when its
    signature cannot be read. Cached per function (``inject`` checks every fault on entry)."""
    try:
        return _SIGNATURES[fn]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable: read its signature every time
        return _read_parameters(fn)
    _SIGNATURES[fn] = out = _read_parameters(fn)
    return out


_SIGNATURES: dict[Any, tuple[list[str], list[str], bool] | None] = {}


def _read_parameters(fn: Any) -> tuple[list[str], list[str], bool] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    ps = list(sig.parameters.values())
    positional = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = [
        p
        for p in ps
        if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and p in positional[5:])
    ]
    required = [p.name for p in keyword if p.default is p.empty]
    return [p.name for p in keyword], required, any(p.kind == p.VAR_KEYWORD for p in ps)


def check_fault_model(name: str, bits: Sequence[int], params: Mapping[str, Any]) -> None:
    """Raise TorchFaultError unless fault model ``name`` exists and can take ``bits`` and ``params``.

    Checked before a fault touches anything: the name (unknown names list the valid ones), bits
    for models that need them, parameter names against the model function's signature (bitwise
    models take none), and the values of the built-in models' parameters.

    Example:
        >>> check_fault_model("value", (), {"valeu": 1.0})
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: Fault model 'value' got unknown parameter(s) ['valeu']; it takes: value. Did you mean 'value'?
    """
    try:
        info = FAULT_MODELS.info(name)
    except ValueError as exc:
        raise TorchFaultError(str(exc)) from None
    if fault_model_capabilities(name).needs_bits and not bits:
        raise TorchFaultError(f"Fault model {name!r} needs at least one bit position in 'bits'.")
    params = dict(params)
    accepted = _model_parameters(info.obj)
    if accepted is not None:
        names, required, takes_any = accepted
        unknown = [k for k in params if k not in names]
        if unknown and not takes_any:
            takes = f"it takes: {', '.join(names)}." if names else "it takes no parameters."
            raise TorchFaultError(
                f"Fault model {name!r} got unknown parameter(s) {unknown}; {takes}"
                f"{suggest(str(unknown[0]), names)}"
            )
        missing = [k for k in required if k not in params]
        if missing:
            raise TorchFaultError(
                f"Fault model {name!r} needs parameter(s) {missing} in params, got {params}."
            )
    check = _PARAM_CHECKS.get(info.obj)
    if check is not None:
        check(**params)
