# SPDX-License-Identifier: MIT
"""The fault space of a model: every tensor a campaign can hit, found with one probing forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchfault import numerics
from torchfault.errors import TorchFaultError
from torchfault.faults._access import stored_tensors
from torchfault.faults._fault import FaultSite
from torchfault.faults._structure import iter_tensors
from torchfault.faults._targets import ModuleSelector, normalize_kinds, select_modules, tensor_kind

__all__ = ["fault_space", "TargetSpec", "FaultSpace"]


@dataclass(frozen=True)
class TargetSpec:
    """Which tensors a campaign may hit.

    Attributes:
        modules: selectors (exact name, ``"re:<regex>"``, ``"type:<ClassName>"``, a module type or
            ``fn(module, name) -> bool``); ``None`` selects every leaf module.
        kinds: tensor kinds: ``outputs``, ``inputs``, ``weights`` (parameters named ``weight``,
            ``weight_*`` or ``*_weight``), ``biases`` (likewise), ``buffers``, ``parameters``
            (every parameter), ``masks`` (pruning masks: buffers named ``*_mask``).
        format: number format to see every element in (default: each tensor's own dtype).
        leaf_only: with no ``modules``, only modules without children or with tensors of their own.
    """

    modules: Any = None
    kinds: tuple[str, ...] = ("outputs", "weights", "biases")
    format: str | None = None
    leaf_only: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", normalize_kinds(self.kinds))
        if self.format is not None:
            numerics.get_format(self.format)


class FaultSpace(list):
    """A list of :class:`FaultSite` with the totals a sampler needs."""

    @property
    def population(self) -> int:
        """Total single-bit fault population: the sum of every site's (element, bit) pairs."""
        return sum(s.population for s in self)

    def by_name(self) -> dict[str, FaultSite]:
        return {s.name: s for s in self}

    def to_dicts(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self]


def probe_forward(model: nn.Module, example_inputs: Any) -> None:
    """One forward pass that leaves no trace: no grad, buffers and RNG states restored.

    A model in training mode updates its BatchNorm statistics and draws dropout masks; the probing
    passes of :func:`fault_space` and ``inject(..., example_inputs=...)`` must not, so the buffers
    are written back bit for bit (into the same tensors) and the random generators rewound.
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    saved = [(b, b.detach().clone()) for b in model.buffers() if isinstance(b, torch.Tensor)]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None
    )
    try:
        with torch.no_grad():
            model(*args)
    finally:
        with torch.no_grad():
            for b, copy in saved:
                if b.is_quantized:
                    continue  # quantized buffers are not updated by a forward pass
                b.detach().copy_(copy)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _floating_or_int(t: torch.Tensor) -> bool:
    return t.dtype != torch.bool and not t.is_complex() and t.dim() >= 0


def fault_space(
    model: nn.Module,
    example_inputs: Any = None,
    targets: TargetSpec | dict[str, Any] | None = None,
    *,
    modules: ModuleSelector | Sequence[ModuleSelector] | None = None,
    kinds: str | Iterable[str] | None = None,
    format: str | None = None,
) -> FaultSpace:
    """Every tensor of ``model`` that faults can hit, with its shape, format and bit width.

    Parameters, biases and buffers are read directly; activations (module outputs and inputs) are
    found with one forward pass over ``example_inputs`` (a tensor, or a tuple of positional
    arguments), run under ``torch.no_grad`` with temporary hooks that are always removed; the
    pass leaves the model's buffers (BatchNorm statistics) and the random generators as they were.

    Args:
        model: any ``nn.Module``.
        example_inputs: inputs for the probing pass; needed when activations are targeted.
        targets: a :class:`TargetSpec` or a dict of its fields.
        modules, kinds, format: shortcuts for the fields of ``targets``.

    Example:
        >>> import torch, torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> space = fault_space(m, torch.zeros(2, 4))
        >>> [(s.name, s.shape, s.bit_width) for s in space]
        [('0:output', (3,), 32), ('0:weight', (3, 4), 32), ('0:bias', (3,), 32), ('1:output', (3,), 32)]
        >>> space.population
        672
    """
    if targets is None:
        kinds_: Any = kinds or TargetSpec.kinds  # any spelling: __post_init__ normalises it
        targets = TargetSpec(modules=modules, kinds=kinds_, format=format)
    elif isinstance(targets, dict):
        targets = TargetSpec(**targets)
    elif not isinstance(targets, TargetSpec):
        raise TorchFaultError(
            f"targets must be a TargetSpec or a dict of its fields, got {targets!r}."
        )
    chosen = select_modules(model, targets.modules, leaf_only=targets.leaf_only)
    kinds_ = targets.kinds
    fmt_override = targets.format

    def fmt_for(t: torch.Tensor, where: str) -> numerics.NumberFormat:
        if fmt_override is None:
            return numerics.format_of(t)
        fmt = numerics.get_format(fmt_override)
        try:
            numerics.check_compatible(fmt, t)
        except TorchFaultError as exc:
            raise TorchFaultError(
                f"fault_space: format {fmt_override!r} does not fit the target {where}: {exc} "
                "Narrow the targets (modules, kinds) to tensors it fits, or leave format unset "
                "(each tensor in its own dtype).",
                field="format",
            ) from None
        return fmt

    acts: dict[
        tuple[str, str], list[tuple[int | str | None, tuple[int, ...], numerics.NumberFormat]]
    ] = {}
    calls: dict[str, int] = {}
    want_out, want_in = "outputs" in kinds_, "inputs" in kinds_
    if want_out or want_in:
        if example_inputs is None:
            raise TorchFaultError(
                "fault_space needs example_inputs to find activation sites (kinds include outputs/inputs)."
            )
        if isinstance(model, torch.jit.ScriptModule):
            raise TorchFaultError(
                f"fault_space: activation sites (kinds {list(kinds_)}) are found with forward "
                f"hooks, which a TorchScript module ({type(model).__name__}) does not run; use "
                "kinds=('weights', 'biases', 'buffers') for it, or the eager model."
            )
        handles = []

        def make_hooks(name: str) -> tuple[Callable[..., None], Callable[..., None]]:
            def pre(mod: nn.Module, args: Any) -> None:
                calls[name] = calls.get(name, 0) + 1
                if want_in and calls[name] == 1:
                    acts[(name, "input")] = [
                        (e, tuple(t.shape[1:]), fmt_for(t, f"{name}:input"))
                        for e, t in iter_tensors(args)
                        if t.dim() >= 1 and _floating_or_int(t)
                    ]

            def post(mod: nn.Module, args: Any, out: Any) -> None:
                if want_out and calls[name] == 1:
                    acts[(name, "output")] = [
                        (e, tuple(t.shape[1:]), fmt_for(t, f"{name}:output"))
                        for e, t in iter_tensors(out)
                        if t.dim() >= 1 and _floating_or_int(t)
                    ]

            return pre, post

        try:
            for name, mod in chosen:
                pre, post = make_hooks(name)
                handles.append(mod.register_forward_pre_hook(pre))
                handles.append(mod.register_forward_hook(post))
            probe_forward(model, example_inputs)
        finally:
            for h in handles:
                h.remove()

    space = FaultSpace()
    for name, mod in chosen:
        mtype = type(mod).__name__
        for target in ("output", "input"):
            for element, shape, fmt in acts.get((name, target), []):
                # a single positional input is addressed as the tensor itself
                if target == "input" and element == 0 and len(acts[(name, target)]) == 1:
                    element = None
                space.append(
                    FaultSite(
                        name,
                        target,
                        "activation",
                        shape,
                        fmt.name,
                        fmt.width,
                        element,
                        calls.get(name, 0),
                        mtype,
                    )
                )
        for pname, (pkind, t) in stored_tensors(mod, sparse_indices=True).items():
            kind_ok = any(k in kinds_ for k in tensor_kind(pname, pkind))
            if not kind_ok or t.numel() == 0 or not _floating_or_int(t):
                continue
            fmt = fmt_for(t, f"{name}:{pname}")
            space.append(
                FaultSite(
                    name,
                    pname,
                    pkind,
                    tuple(t.shape),
                    fmt.name,
                    fmt.width,
                    None,
                    calls.get(name, 0),
                    mtype,
                )
            )
    return space
