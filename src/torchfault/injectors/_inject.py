# SPDX-License-Identifier: MIT
"""Getting faults into a running model: activation hooks and in-place parameter/buffer patches.

:func:`inject` is the context manager of DESIGN.md. On entry every fault is checked (an unknown
module, target, format, fault model, an index of the wrong rank or out of range, a bit too wide
for the format: each is a :class:`~torchfault.errors.TorchFaultError` raised before anything is
touched). Parameter and buffer faults are then written in place, element by element: the
original words of the hit elements are kept (never a copy of the model or of whole tensors) and
written back on exit. Activation faults are forward hooks (outputs) and forward pre-hooks
(inputs). On exit, whatever happened inside, every hook is removed and every parameter and buffer
is bit-for-bit what it was.

An injection changes the faulted words and nothing else: a faulty tensor keeps the memory
layout of the one it replaces (channels-last stays channels-last: kernels round by layout), every
place of a module's inputs or outputs that holds the very same tensor gets the same faulty one
(``attn(x, x, x)`` keeps query, key and value one object), and a fault on the input of a module
that writes its input in place (``inplace=True``) goes into that tensor, whose other readers see
it after the module, as in the fault-free model.

Faults with a bitwise fault model (``bit_flip``, ``stuck_at_0``, ``stuck_at_1``) that hit the
same tensor are merged into one vectorised operation, so a hundred thousand faults cost one
scatter per tensor per forward pass.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchfault import numerics
from torchfault.errors import TorchFaultError, suggest
from torchfault.faults import (
    Fault,
    check_fault_model,
    get_element,
    get_stored,
    is_packed,
    iter_tensors,
    packed_object,
    probe_forward,
    put_packed_object,
    replace_element,
    set_packed,
    sparse_guard,
    stored_tensors,
    unpack,
)
from torchfault.injectors._apply import (
    apply_masks,
    apply_model,
    bitwise_op,
    check_bits,
    check_format,
    describe,
    flat_index,
)
from torchfault.injectors._script import check_model, is_script
from torchfault.injectors._words import may_write, merge_masks

__all__ = ["inject", "Injection"]


def _element(obj: Any, key: tuple[str, str, Any]) -> torch.Tensor:
    """The tensor a fault on ``key`` = (module, target, element) hits; errors name the site."""
    try:
        return get_element(obj, key[2])
    except TorchFaultError as exc:
        el = f"[{key[2]}]" if key[2] is not None else ""
        hint = " (keyword arguments of forward are not seen)" if key[1] == "input" else ""
        raise TorchFaultError(f"fault on {key[0] or '<model>'}:{key[1]}{el}: {exc}{hint}") from None


def _replace_everywhere(obj: Any, element: int | str | None, new: torch.Tensor) -> Any:
    """``obj`` with the tensor at ``element`` replaced by ``new``, and so every other place that
    holds the very same tensor object: one tensor in memory, one fault. ``attn(x, x, x)`` keeps
    its query, key and value the same object, as PyTorch's kernels test (``query is key``)."""
    old = get_element(obj, element)
    out = replace_element(obj, element, new)
    if isinstance(obj, torch.Tensor):
        return out
    for other, t in iter_tensors(obj):
        if t is old:
            out = replace_element(out, other, new)
    return out


@dataclass
class _Segment:
    """Consecutive faults on one tensor that one call applies (many for a bitwise model)."""

    faults: list[Fault]
    fmt_name: str | None
    bit_op: str | None
    call: int | None
    transient: bool
    spent: bool = False
    fired: int = 0
    _cache: dict[Any, tuple[Any, ...]] = field(default_factory=dict)

    def mergeable(self, f: Fault, bit_op: str | None) -> bool:
        return (
            bit_op is not None
            and self.bit_op == bit_op
            and self.fmt_name == f.format
            and self.call == f.call
            and self.transient == (f.persistence == "transient")
        )


def _segments(faults: Iterable[Fault]) -> list[_Segment]:
    segs: list[_Segment] = []
    for f in faults:
        op = bitwise_op(f.model)
        if segs and segs[-1].mergeable(f, op):
            segs[-1].faults.append(f)
        else:
            segs.append(_Segment([f], f.format, op, f.call, f.persistence == "transient"))
    return segs


class Injection:
    """The faults of one :func:`inject` context; ``remove()`` undoes everything (idempotent).

    Args:
        model: the model (see :func:`inject`).
        faults: the faults (see :func:`inject`).
        generator: what random fault models draw from (:func:`inject` makes it from ``seed``).
        example_inputs: see :func:`inject`.
        modules: ``dict(model.named_modules())`` when the caller holds it already (a campaign
            engine checking the faults of many tasks against one model: one walk of the model
            instead of one per task); it must be the model's current modules.

    Attributes:
        faults: the faults, in the order given.
        passes: forward passes of the model seen while attached.
    """

    def __init__(
        self,
        model: nn.Module,
        faults: Iterable[Fault] | Fault,
        *,
        generator: torch.Generator | None = None,
        example_inputs: Any = None,
        modules: dict[str, nn.Module] | None = None,
    ) -> None:
        if isinstance(faults, Fault):
            faults = [faults]
        faults = list(faults)
        for f in faults:
            if not isinstance(f, Fault):
                raise TorchFaultError(
                    f"inject() takes Fault objects, got {type(f).__name__}: {f!r}."
                )
        check_model(model, faults)  # TorchScript and exported programs: what is supported
        self.model = model
        self.faults: tuple[Fault, ...] = tuple(faults)
        self.generator = generator
        self.passes = 0
        self._handles: list[Any] = []
        self._param_groups: list[dict[str, Any]] = []
        self._act_groups: dict[tuple[str, str, Any], list[_Segment]] = {}
        self._calls: dict[tuple[str, str, Any], int] = {}
        self._ptrs: dict[nn.Module, set[int]] = {}
        self._attached = False
        self._modules = dict(model.named_modules()) if modules is None else modules
        self._validate()
        if example_inputs is not None and any(f.is_activation for f in self.faults):
            self._probe(example_inputs)

    # ------------------------------------------------------------------ checks
    def _module(self, f: Fault) -> nn.Module:
        mod = self._modules.get(f.module)
        if mod is None:
            names = list(self._modules)
            raise TorchFaultError(
                f"{describe(f)}: unknown module {f.module!r}.{suggest(f.module, names)} "
                f"Modules: {', '.join(repr(n) for n in names[:40])}{' ...' if len(names) > 40 else ''}."
            )
        return mod

    def _validate(self) -> None:
        for f in self.faults:
            mod = self._module(f)
            try:
                check_fault_model(f.model, f.bits, f.param_dict)
            except TorchFaultError as exc:
                raise TorchFaultError(f"{describe(f)}: {exc}") from None
            if f.is_activation:
                if f.format is not None:
                    try:
                        fmt = numerics.get_format(f.format)
                    except TorchFaultError as exc:
                        raise TorchFaultError(f"{describe(f)}: {exc}") from None
                    if f.bits:
                        check_bits(f, fmt)
                elif f.bits and max(f.bits) >= 64:
                    # the tensor's dtype is known when the module runs; no format is this wide
                    raise TorchFaultError(
                        f"{describe(f)}: bit {max(f.bits)} is out of range for every number "
                        "format (at most 64 bits: 0..63)."
                    )
                continue
            stored = stored_tensors(mod, sparse_indices=True)
            if f.target not in stored:
                raise TorchFaultError(
                    f"{describe(f)}: module {f.module!r} ({type(mod).__name__}) has no parameter or "
                    f"buffer {f.target!r}. Valid targets: 'output', 'input'"
                    f"{''.join(', ' + repr(n) for n in stored)}.{suggest(f.target, ['output', 'input', *stored])}"
                )
            t = stored[f.target][1]
            check_format(f, t)
            flat_index(f.index, t.shape, describe(f))

    def _probe(self, example_inputs: Any) -> None:
        """Run the model once (no grad, no trace left) to check activation faults before any runs."""
        handles = []
        seen: dict[tuple[str, str, Any], list[tuple[torch.Size, torch.Tensor]]] = {}
        act = [f for f in self.faults if f.is_activation]
        try:
            for key in dict.fromkeys((f.module, f.target, f.element) for f in act):
                mod = self._modules[key[0]]

                def record(obj: Any, key: tuple[str, str, Any] = key) -> None:
                    t = _element(obj, key)
                    seen.setdefault(key, []).append(
                        (t.shape, t.flatten()[:0])
                    )  # shape, dtype, quantizer

                if key[1] == "output":
                    handles.append(mod.register_forward_hook(lambda m, a, o, r=record: r(o)))
                else:
                    handles.append(mod.register_forward_pre_hook(lambda m, a, r=record: r(a)))
            probe_forward(self.model, example_inputs)
        finally:
            for h in handles:
                h.remove()
        for f in act:
            runs = seen.get((f.module, f.target, f.element), [])
            if not runs:
                raise TorchFaultError(
                    f"{describe(f)}: module {f.module!r} did not run in the forward pass."
                )
            if f.call is not None and f.call >= len(runs):
                raise TorchFaultError(
                    f"{describe(f)}: call {f.call} is out of range; module {f.module!r} runs "
                    f"{len(runs)} time(s) per forward pass (calls 0..{len(runs) - 1})."
                )
            for shape, empty in runs if f.call is None else [runs[f.call]]:
                self._check_act(f, shape)
                check_format(f, empty)

    def _check_act(self, f: Fault, shape: torch.Size) -> None:
        if len(shape) == 0:
            raise TorchFaultError(
                f"{describe(f)}: the tensor is a scalar; activation faults need a batch dimension."
            )
        flat_index(f.index, shape[1:], describe(f))
        if f.sample is not None and f.sample >= shape[0]:
            raise TorchFaultError(
                f"{describe(f)}: sample {f.sample} is out of range for a batch of {shape[0]} "
                f"(tensor shape {tuple(shape)})."
            )

    # ------------------------------------------------------------------ attach
    def attach(self) -> Injection:
        """Apply parameter faults and register activation hooks."""
        if self._attached:
            return self
        self._attached = True
        try:
            if not is_script(self.model):  # TorchScript runs no hooks: permanent faults only
                self._handles.append(
                    self.model.register_forward_pre_hook(self._begin_pass, prepend=True)
                )
            acts = [f for f in self.faults if f.is_activation]
            keys: dict[tuple[str, str, Any], list[Fault]] = {}
            for f in acts:
                keys.setdefault((f.module, f.target, f.element), []).append(f)
            for key, fs in keys.items():
                self._act_groups[key] = _segments(fs)
                mod = self._modules[key[0]]
                if key[1] == "output":
                    self._handles.append(mod.register_forward_hook(self._make_out_hook(key)))
                else:
                    self._handles.append(mod.register_forward_pre_hook(self._make_in_hook(key)))
            if not is_script(self.model):
                self._handles.append(self.model.register_forward_hook(self._end_pass))
            params = [f for f in self.faults if not f.is_activation]
            # permanent groups first, so transient ones restore onto the permanent state
            for transient in (False, True):
                groups: dict[tuple[str, str], list[Fault]] = {}
                for f in params:
                    if (f.persistence == "transient") == transient:
                        groups.setdefault((f.module, f.target), []).append(f)
                for (mname, target), fs in groups.items():
                    self._apply_param_group(mname, target, fs, transient)
        except BaseException:
            self.remove()
            raise
        return self

    @torch.no_grad()
    def _apply_param_group(
        self, mname: str, target: str, faults: list[Fault], transient: bool
    ) -> None:
        mod = self._modules[mname]
        pair = unpack(mod) if is_packed(mod, target) else None  # one unpack for both
        t = get_stored(mod, target) if pair is None else pair[target == "bias"]
        assert t is not None  # checked in _validate
        new = t.detach()
        flat_all = []
        for seg in _segments(faults):
            new, flat = self._apply_segment(new, seg)
            flat_all.append(flat)
        idx = torch.unique(torch.cat(flat_all))
        group: dict[str, Any] = {
            "module": mod,
            "target": target,
            "transient": transient,
            "done": False,
        }
        if pair is not None:
            group["original"], group["before"] = t, packed_object(mod)
            packed: Any = mod
            packed.set_weight_bias(*((new, pair[1]) if target == "weight" else (pair[0], new)))
            group["after"] = packed_object(mod)
        else:
            own = numerics.format_of(t)
            group["tensor"], group["index"], group["fmt"] = t, idx, own
            group["saved"] = numerics.read_elements(t.data, idx, own)
            numerics.apply_bits_(t.data, idx, numerics.read_elements(new, idx, own), "set", own)
        self._param_groups.append(group)
        guard = sparse_guard(mod, target)  # a faulted sparse index: refuse invalid tensors
        if guard is not None:
            self._handles.append(guard)

    @torch.no_grad()
    def _restore_group(self, group: dict[str, Any]) -> None:
        if group["done"]:
            return
        group["done"] = True
        if "original" in group:
            mod, before = group["module"], group["before"]
            if before is not None and packed_object(mod) is group["after"]:
                # nothing packed since this group's write: the object it replaced goes back
                # (no packing; also the object every earlier reader saw)
                put_packed_object(mod, before)
            else:  # another group wrote after it (restored in write order): pack its tensor
                set_packed(mod, group["target"], group["original"])
        else:
            numerics.apply_bits_(
                group["tensor"].data, group["index"], group["saved"], "set", group["fmt"]
            )

    # ------------------------------------------------------------------ applying
    def _apply_segment(self, t: torch.Tensor, seg: _Segment) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply one segment to a parameter or buffer ``t`` (out of place): ``(new, flat indices)``."""
        fmt = numerics.get_format(seg.fmt_name, t)
        flat = torch.tensor(
            [flat_index(f.index, t.shape, describe(f)) for f in seg.faults], dtype=torch.int64
        )
        if seg.bit_op is not None:
            masks = torch.tensor([check_bits(f, fmt) for f in seg.faults], dtype=torch.int64)
            out = apply_masks(t, flat, masks, seg.bit_op, fmt)
        else:
            out = apply_model(t, flat, seg.faults[0], fmt, self.generator)
        seg.fired += 1
        return out, flat

    def _act_plan(self, t: torch.Tensor, seg: _Segment) -> tuple[Any, ...]:
        """Flat indices and masks of a segment for an activation of ``t``'s shape (cached)."""
        key = (tuple(t.shape), t.dtype, t.is_quantized)
        plan = seg._cache.get(key)
        if plan is not None:
            return plan
        fmt = None
        for f in seg.faults:
            self._check_act(f, t.shape)
            fmt = check_format(f, t)
        assert fmt is not None
        batch, per = t.shape[0], math.prod(t.shape[1:])
        inner = torch.tensor(
            [flat_index(f.index, t.shape[1:], describe(f)) for f in seg.faults], dtype=torch.int64
        )
        samples = torch.tensor(
            [-1 if f.sample is None else f.sample for f in seg.faults], dtype=torch.int64
        )
        every = samples < 0
        rows = torch.arange(batch, dtype=torch.int64)
        flat = torch.cat(
            [
                samples[~every] * per + inner[~every],
                (rows[:, None] * per + inner[every][None, :]).flatten(),
            ]
        )
        masks = None
        fast = False
        if seg.bit_op is not None:
            masks = torch.tensor([check_bits(f, fmt) for f in seg.faults], dtype=torch.int64)
            masks = torch.cat([masks[~every], masks[every].repeat(batch)])
            if fmt.kind in ("float", "int") and fmt.value_dtype == t.dtype and not t.is_quantized:
                flat, masks = merge_masks(flat, masks, seg.bit_op, fmt)
                fast = True
        plan = (flat, masks, fmt, fast)
        seg._cache[key] = plan
        return plan

    def _fault_tensor(
        self,
        key: tuple[str, str, Any],
        obj: Any,
        module: nn.Module | None,
        inputs: Any,
        into: bool = False,
    ) -> Any:
        """``obj`` with the faults of ``key`` applied (``None``: none fires now). ``into``: write
        the faulty words into the tensor itself and hand on ``obj`` unchanged."""
        count = self._calls.get(key, 0)
        self._calls[key] = count + 1
        segs = [
            s for s in self._act_groups[key] if not s.spent and (s.call is None or s.call == count)
        ]
        if not segs:
            return None
        t = original = _element(obj, key)
        # a fresh module output may be written in place; a tensor made here always may
        own = module is not None and may_write(t, module, inputs, self._ptrs)
        for seg in segs:
            flat, masks, fmt, merged = self._act_plan(t, seg)
            if seg.bit_op is not None:
                t = apply_masks(t, flat, masks, seg.bit_op, fmt, merged=merged, inplace=own)
                own = True
            else:
                t = apply_model(t, flat, seg.faults[0], fmt, self.generator)
                own = False
            seg.fired += 1
        if into and t is not original and not original.is_quantized and t.dtype == original.dtype:
            with torch.no_grad():
                numerics.to_words(original).copy_(numerics.to_words(t))
            return obj
        return _replace_everywhere(obj, key[2], t)

    def _make_out_hook(self, key: tuple[str, str, Any]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            return self._fault_tensor(key, output, module, args)

        return hook

    def _make_in_hook(self, key: tuple[str, str, Any]) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            # an input belongs to whoever produced it (a residual branch may read it too): copy;
            # but a module that writes its input in place (ReLU(inplace=True)) makes that very
            # tensor its output, which the producer's other readers see after it: the faulty
            # words go into the tensor itself, as the module's own write does
            into = getattr(module, "inplace", False) is True
            return self._fault_tensor(key, args, None, None, into=into)

        return hook

    def _begin_pass(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()

    def _end_pass(self, module: nn.Module, args: Any, output: Any) -> None:
        self.passes += 1
        for segs in self._act_groups.values():
            for s in segs:
                if s.transient:
                    s.spent = True
        for g in self._param_groups:
            if g["transient"]:
                self._restore_group(g)

    # ------------------------------------------------------------------ remove
    def remove(self) -> None:
        """Remove every hook and restore every parameter and buffer bit for bit."""
        errors = []
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for g in reversed(self._param_groups):
            try:
                self._restore_group(g)
            except Exception as exc:  # noqa: BLE001 - restore the others first
                errors.append(exc)
        self._param_groups.clear()
        self._attached = False
        if errors:
            raise errors[0]

    @property
    def fired(self) -> int:
        """How many times activation fault segments were applied."""
        return sum(s.fired for segs in self._act_groups.values() for s in segs)

    def unfired(self) -> list[Fault]:
        """Activation faults never applied so far (their module, or their ``call``, never ran)."""
        return [
            f for segs in self._act_groups.values() for s in segs if not s.fired for f in s.faults
        ]

    def warn_unfired(self) -> None:
        """Warn when forward passes ran but some activation faults were never applied.

        Without ``example_inputs`` nothing checks beforehand that a faulted module runs (or runs
        ``call`` + 1 times per pass): a fault that never fires would otherwise look like a
        masked one.
        """
        missed = self.unfired() if self.passes else []
        if missed:
            shown = "; ".join(
                f"{describe(f)}" + (f" call={f.call}" if f.call is not None else "")
                for f in missed[:3]
            )
            more = f" (and {len(missed) - 3} more)" if len(missed) > 3 else ""
            warnings.warn(
                f"torchfault.inject: {len(missed)} activation fault(s) never applied in "
                f"{self.passes} forward pass(es): {shown}{more}. The module did not run (or not "
                "that many times per pass); pass example_inputs=... to check before running.",
                stacklevel=3,
            )

    def __enter__(self) -> Injection:
        return self.attach()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.remove()
        if exc_type is None:
            self.warn_unfired()


@contextlib.contextmanager
def inject(
    model: nn.Module,
    faults: Iterable[Fault] | Fault,
    *,
    seed: int | None = None,
    example_inputs: Any = None,
) -> Iterator[Injection]:
    """Make ``faults`` active in ``model`` inside a ``with`` block.

    Args:
        model: any ``nn.Module``; module names are those of ``model.named_modules()``.
        faults: one :class:`~torchfault.Fault` or several; several on one tensor compose in order.
        seed: seed of the generator random fault models use (default: torch's global generator).
        example_inputs: if given, one extra forward pass checks activation indices and samples
            before the block runs; otherwise they are checked when the module first runs.

    Yields:
        The :class:`Injection`, with ``passes`` (forward passes seen) and ``fired``.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault import Fault, inject
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(1.0), model[0].bias.zero_()
        >>> x = torch.ones(1, 2)
        >>> with inject(model, Fault("0", "output", index=(1,), bits=(30,))):
        ...     model(x).tolist()  # 2.0 is 0x40000000: flipping bit 30 gives 0.0
        [[2.0, 0.0]]
        >>> model(x).tolist()
        [[2.0, 2.0]]
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    inj = Injection(model, faults, generator=gen, example_inputs=example_inputs)
    inj.attach()
    try:
        yield inj
    finally:
        inj.remove()
    inj.warn_unfired()
