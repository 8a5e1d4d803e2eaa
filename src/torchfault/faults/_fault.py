# SPDX-License-Identifier: MIT
"""What a fault is: :class:`Fault` (one fault to inject) and :class:`FaultSite` (a place faults land).

Both are frozen, hashable dataclasses that round-trip through plain dicts (JSON), so campaigns
can store and replay them. See DESIGN.md, "Contracts".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torchfault.errors import TorchFaultError, suggest

__all__ = [
    "Fault",
    "FaultSite",
    "ACTIVATION_TARGETS",
    "PERSISTENCES",
    "BUFFER_NAMES",
    "OUTCOMES",
    "RUN_OUTCOMES",
    "SITE_KINDS",
    "TARGET_KINDS",
    "fault_kind",
]

ACTIVATION_TARGETS = ("output", "input")
PERSISTENCES = ("transient", "permanent")
#: What a :class:`FaultSite` holds: a module's activation, parameter or buffer.
SITE_KINDS = ("activation", "parameter", "buffer")
#: Tensor kinds a campaign can target, as used by ``fault_space(targets=...)``.
TARGET_KINDS = ("outputs", "inputs", "weights", "biases", "buffers", "parameters", "masks")
#: The four outcomes every campaign reports (a criterion gives them); defined here, the lowest
#: layer that injectors, stores, analysis and campaigns share, and exported by torchfault.store.
OUTCOMES = ("masked", "benign", "sdc", "due")
#: Every outcome a run may have: :data:`OUTCOMES` and ``detected`` (an error flagged before the
#: model used the data, e.g. by a memory's ECC decoder; the run is not executed). Counts and
#: summaries list ``detected`` only when some run has it.
RUN_OUTCOMES = (*OUTCOMES, "detected")
#: Targets taken for buffers when no fault site says a fault's kind (batch-norm statistics).
BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def fault_kind(fault: Fault, kinds: Mapping[tuple[str, str], str] | None = None) -> str:
    """The kind of tensor a fault hits (``activation``, ``parameter`` or ``buffer``): from
    ``kinds`` (``{(module, target): kind}`` of the fault sites) when it names the fault's target,
    else ``activation`` for outputs and inputs, ``buffer`` for :data:`BUFFER_NAMES` and
    ``parameter`` otherwise. Stores and summaries group faults by it.

    Example:
        >>> fault_kind(Fault("bn", "running_var", (0,), (3,)))
        'buffer'
        >>> fault_kind(Fault("bn", "my_stat", (0,), (3,)), {("bn", "my_stat"): "buffer"})
        'buffer'
        >>> fault_kind(Fault("fc", "output", (0,), (3,))), fault_kind(Fault("fc", "weight", (0, 0), (3,)))
        ('activation', 'parameter')
    """
    kind = (kinds or {}).get((fault.module, fault.target))
    if kind:
        return kind
    if fault.is_activation:
        return "activation"
    return "buffer" if fault.target in BUFFER_NAMES else "parameter"


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (int(value),)
    try:
        items = tuple(value)
    except TypeError:
        raise TorchFaultError(f"Fault {what} must be a tuple of integers, got {value!r}.") from None
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
            raise TorchFaultError(f"Fault {what} must be a tuple of integers, got {value!r}.")
        out.append(int(v))
    return tuple(out)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _refuse_unknown_fields(cls: type, data: Mapping[str, Any]) -> None:
    """Refuse a dict for dataclass ``cls`` with keys that are not its fields, naming them and
    suggesting the closest."""
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise TorchFaultError(
            f"Unknown {cls.__name__} field(s) {unknown}; valid fields: {', '.join(valid)}."
            f"{suggest(str(unknown[0]), valid)}"
        )


@dataclass(frozen=True)
class Fault:
    """One fault: where it lands, what it does, how long it lasts.

    Attributes:
        module: fully-qualified module name from ``model.named_modules()`` (``""`` is the model).
        target: ``"output"``, ``"input"``, ``"weight"``, ``"bias"`` or any parameter/buffer name.
        index: index into the tensor; for activations it excludes the batch dimension.
        bits: bit positions (bit 0 is the least significant bit of the stored word).
        model: registered fault model name (``"bit_flip"``, ``"stuck_at_0"``, ...).
        format: number format the element is seen in (default: the tensor's own dtype).
        persistence: ``"transient"`` (next forward pass only) or ``"permanent"`` (until the
            injection context ends).
        sample: batch row an activation fault hits; ``None`` hits every row.
        call: which call of the module (0-based) in one forward pass; ``None`` hits every call.
        element: for modules whose output (or input) is a tuple, list or dict of tensors, the
            position or key of the tensor the fault hits; ``None`` means the tensor itself (or
            the first tensor found).
        params: fault-model parameters (``{"value": 1.5}``), stored as sorted ``(key, value)`` pairs.

    Example:
        >>> f = Fault("conv1", "weight", index=(0, 0, 1, 1), bits=(30,))
        >>> Fault.from_dict(f.to_dict()) == f
        True
        >>> f.is_activation
        False
    """

    module: str
    target: str = "output"
    index: tuple[int, ...] = ()
    bits: tuple[int, ...] = ()
    model: str = "bit_flip"
    format: str | None = None
    persistence: str = "permanent"
    sample: int | None = None
    call: int | None = None
    element: int | str | None = None
    params: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.module, str):
            raise TorchFaultError(f"Fault module must be a module name (str), got {self.module!r}.")
        if not isinstance(self.target, str) or not self.target:
            raise TorchFaultError(
                f"Fault target must be 'output', 'input' or a parameter/buffer name, got {self.target!r}."
            )
        object.__setattr__(self, "index", _int_tuple(self.index, "index"))
        bits = _int_tuple(self.bits, "bits")
        if any(b < 0 for b in bits):
            raise TorchFaultError(f"Fault bits must be non-negative bit positions, got {bits}.")
        object.__setattr__(self, "bits", bits)
        if self.persistence not in PERSISTENCES:
            raise TorchFaultError(
                f"Fault persistence must be one of {PERSISTENCES}, got {self.persistence!r}."
                f"{suggest(str(self.persistence), PERSISTENCES)}"
            )
        for name in ("sample", "call"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise TorchFaultError(f"Fault {name} must be None or an integer >= 0, got {v!r}.")
        if self.element is not None and not isinstance(self.element, (int, str)):
            raise TorchFaultError(
                f"Fault element must be None, an int or a str, got {self.element!r}."
            )
        object.__setattr__(
            self,
            "params",
            _freeze(dict(self.params) if not isinstance(self.params, Mapping) else self.params),
        )
        if not isinstance(self.model, str):
            raise TorchFaultError(
                f"Fault model must be a registered fault model name, got {self.model!r}."
            )

    @property
    def is_activation(self) -> bool:
        """Whether the fault hits a module's output or input (not a parameter or buffer)."""
        return self.target in ACTIVATION_TARGETS

    @property
    def param_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.params}

    def replace(self, **changes: Any) -> Fault:
        """A copy with some fields changed."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return Fault(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict; ``Fault.from_dict`` inverts it."""
        return {
            "module": self.module,
            "target": self.target,
            "index": list(self.index),
            "bits": list(self.bits),
            "model": self.model,
            "format": self.format,
            "persistence": self.persistence,
            "sample": self.sample,
            "call": self.call,
            "element": self.element,
            "params": self.param_dict,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from a dict; unknown keys are an error that names them."""
        _refuse_unknown_fields(cls, data)
        if "module" not in data:
            raise TorchFaultError("A fault dict needs a 'module' field.")
        return cls(**dict(data))


@dataclass(frozen=True)
class FaultSite:
    """A tensor where faults can land, as found by :func:`torchfault.fault_space`.

    Attributes:
        module: fully-qualified module name.
        target: ``"output"``, ``"input"`` or a parameter/buffer name.
        kind: ``"activation"``, ``"parameter"`` or ``"buffer"``.
        shape: tensor shape; for activations without the batch dimension.
        format: number-format name of the stored elements.
        bit_width: bits per element in that format.
        element: position or key inside a tuple/list/dict output or input (``None``: the tensor).
        calls: how many times the module ran in the probing forward pass.
        module_type: class name of the module.
    """

    module: str
    target: str
    kind: str
    shape: tuple[int, ...]
    format: str
    bit_width: int
    element: int | str | None = None
    calls: int = 1
    module_type: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.module, str) or not isinstance(self.target, str) or not self.target:
            raise TorchFaultError(
                f"FaultSite module and target must be names, got {self.module!r}, {self.target!r}."
            )
        if self.kind not in SITE_KINDS:
            raise TorchFaultError(
                f"FaultSite kind must be one of {SITE_KINDS}, got {self.kind!r}."
                f"{suggest(str(self.kind), SITE_KINDS)}"
            )
        shape = _int_tuple(self.shape, "shape")
        if any(n < 0 for n in shape):
            raise TorchFaultError(f"FaultSite shape must hold sizes >= 0, got {shape}.")
        object.__setattr__(self, "shape", shape)
        for name, low in (("bit_width", 1), ("calls", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TorchFaultError(f"FaultSite {name} must be an integer >= {low}, got {v!r}.")
        if self.element is not None and not isinstance(self.element, (int, str)):
            raise TorchFaultError(
                f"FaultSite element must be None, an int or a str, got {self.element!r}."
            )

    @property
    def numel(self) -> int:
        """Number of elements (per sample, for activations)."""
        return math.prod(self.shape)

    @property
    def population(self) -> int:
        """Number of (element, bit) pairs: the single-bit fault population of this site."""
        return self.numel * self.bit_width

    @property
    def name(self) -> str:
        """``module:target`` (with ``[element]`` where one is set)."""
        suffix = f"[{self.element}]" if self.element is not None else ""
        return f"{self.module}:{self.target}{suffix}"

    def fault(self, index: tuple[int, ...], bits: tuple[int, ...], **kw: Any) -> Fault:
        """A :class:`Fault` at this site."""
        return Fault(
            self.module,
            self.target,
            index=index,
            bits=bits,
            element=self.element,
            format=kw.pop("format", self.format),
            **kw,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "target": self.target,
            "kind": self.kind,
            "shape": list(self.shape),
            "format": self.format,
            "bit_width": self.bit_width,
            "element": self.element,
            "calls": self.calls,
            "module_type": self.module_type,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultSite:
        """Build a site from a dict (``to_dict`` inverts it); unknown or missing keys are named."""
        _refuse_unknown_fields(cls, data)
        required = ["module", "target", "kind", "shape", "format", "bit_width"]
        missing = [k for k in required if k not in data]
        if missing:
            raise TorchFaultError(f"A FaultSite dict needs the field(s) {missing}.")
        return cls(**dict(data))
