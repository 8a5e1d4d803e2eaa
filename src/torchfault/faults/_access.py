# SPDX-License-Identifier: MIT
"""Reading and writing a module's parameters and buffers, including packed quantized weights.

Quantized modules (``torch.ao.nn.quantized.Linear``, ``Conv2d``...) keep their weight and bias
packed; ``module.weight()`` unpacks them and ``module.set_weight_bias(w, b)`` packs them again.
These helpers hide the difference so faults treat every stored tensor alike.

A sparse tensor (COO, CSR, CSC, BSR, BSC) is stored as dense component tensors, and that is what
faults hit: ``weight.values`` and its indices (``weight.indices`` for COO; ``weight.crow_indices``
and ``weight.col_indices`` for CSR/BSR; ``weight.ccol_indices`` and ``weight.row_indices`` for
CSC/BSC). The components are views of the sparse tensor's own storage, so a fault written into
them is in the sparse tensor, and restoring them restores it. A flipped index may move a weight
or leave the tensor invalid (out of bounds, unordered compressed indices); sparse kernels do not
check and may read out of memory, so :func:`sparse_guard` checks the tensor before every forward
pass of its module and raises :class:`InvalidSparseTensorError` (a DUE, never a crash).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "InvalidSparseTensorError",
    "SPARSE_COMPONENTS",
    "get_stored",
    "is_packed",
    "packed_object",
    "put_packed_object",
    "set_packed",
    "sparse_components",
    "sparse_guard",
    "stored_tensors",
    "unpack",
]

#: The component tensors of each sparse layout, values first.
SPARSE_COMPONENTS: dict[torch.layout, tuple[str, ...]] = {
    torch.sparse_coo: ("values", "indices"),
    torch.sparse_csr: ("values", "crow_indices", "col_indices"),
    torch.sparse_bsr: ("values", "crow_indices", "col_indices"),
    torch.sparse_csc: ("values", "ccol_indices", "row_indices"),
    torch.sparse_bsc: ("values", "ccol_indices", "row_indices"),
}


class InvalidSparseTensorError(RuntimeError):
    """A faulted sparse tensor is invalid (an index out of bounds or out of order): the forward
    pass is refused, which a campaign records as a DUE."""


def sparse_components(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{component: dense view}`` of a sparse tensor (views share its storage).

    Example:
        >>> s = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse_csr()
        >>> {k: v.tolist() for k, v in sparse_components(s).items()}
        {'values': [2.0, 3.0], 'crow_indices': [0, 1, 2], 'col_indices': [1, 0]}
    """
    names = SPARSE_COMPONENTS.get(t.layout)
    if names is None:
        return {}
    if t.layout == torch.sparse_coo:
        return {"values": t._values(), "indices": t._indices()}
    getters = {
        "values": t.values,
        "crow_indices": getattr(t, "crow_indices", None),
        "col_indices": getattr(t, "col_indices", None),
        "ccol_indices": getattr(t, "ccol_indices", None),
        "row_indices": getattr(t, "row_indices", None),
    }
    return {n: getters[n]() for n in names}  # type: ignore[misc]


def _invalid(t: torch.Tensor) -> str | None:
    """Why sparse tensor ``t`` is invalid (``None``: it is valid)."""
    try:
        if t.layout == torch.sparse_coo:
            idx = t._indices()
            bounds = torch.tensor(t.shape[: idx.shape[0]], dtype=idx.dtype)[:, None]
            bad = ((idx < 0) | (idx >= bounds)).any(dim=0).nonzero()
            if bad.numel():
                j = int(bad[0, 0])
                return (
                    f"index {idx[:, j].tolist()} of entry {j} is out of bounds for shape "
                    f"{tuple(t.shape)}"
                )
            return None
        c = sparse_components(t)
        compressed, plain = list(c.values())[1:]
        torch._validate_sparse_compressed_tensor_args(
            compressed, plain, c["values"], t.shape, t.layout
        )
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0].rstrip(".")
    return None


def sparse_guard(module: nn.Module, target: str) -> Any:
    """A forward pre-hook handle on ``module`` that raises :class:`InvalidSparseTensorError`
    when the sparse tensor holding component ``target`` (``"weight.col_indices"``) is invalid;
    ``None`` for a target that is not an index component of a sparse tensor."""
    base, _, comp = target.partition(".")
    t = getattr(module, base, None)
    if (
        not comp
        or comp == "values"
        or not isinstance(t, torch.Tensor)
        or t.layout not in SPARSE_COMPONENTS
    ):
        return None

    def check(mod: nn.Module, args: Any) -> None:
        why = _invalid(getattr(mod, base))
        if why is not None:
            raise InvalidSparseTensorError(
                f"sparse tensor {base!r} of {type(mod).__name__} is invalid after a fault on its "
                f"{comp}: {why}."
            )

    return module.register_forward_pre_hook(check, prepend=True)


def is_packed(module: nn.Module, target: str) -> bool:
    """Whether ``target`` of ``module`` is a packed quantized weight or bias."""
    return (
        target in ("weight", "bias")
        and hasattr(module, "set_weight_bias")
        and callable(getattr(module, target, None))
        and not isinstance(getattr(module, target, None), torch.Tensor)
    )


def stored_tensors(
    module: nn.Module, sparse_indices: bool = False
) -> dict[str, tuple[str, torch.Tensor]]:
    """``{name: (kind, tensor)}`` for the module's own parameters, buffers and packed weights.

    ``kind`` is ``"parameter"`` or ``"buffer"``. Packed quantized weights count as parameters. A
    sparse tensor ``name`` is listed as its components: ``name.values`` and, with
    ``sparse_indices`` (only for callers that install :func:`sparse_guard`), its index tensors.
    """
    out: dict[str, tuple[str, torch.Tensor]] = {}
    own: list[tuple[str, str, torch.Tensor | None]] = [
        ("parameter", n, p) for n, p in module.named_parameters(recurse=False)
    ]
    own += [("buffer", n, b) for n, b in module.named_buffers(recurse=False)]
    for kind, name, t in own:
        if t is None:
            continue
        if t.layout in SPARSE_COMPONENTS:
            for comp, view in sparse_components(t).items():
                if comp == "values" or sparse_indices:
                    out[f"{name}.{comp}"] = (kind, view)
        else:
            out[name] = (kind, t)
    names = [n for n in ("weight", "bias") if n not in out and is_packed(module, n)]
    if names:
        try:
            pair: tuple[Any, Any] | None = unpack(module)
        except Exception:  # noqa: BLE001 - some modules raise when unpacking
            pair = None
        for name in names:
            t = None if pair is None else pair[0 if name == "weight" else 1]
            if isinstance(t, torch.Tensor):
                out[name] = ("parameter", t)
    return out


#: unpacked packed parameters: id of the packed object -> (that object, weight, bias)
_UNPACKED: dict[int, tuple[Any, Any, Any]] = {}
_UNPACKED_MAX = 64


def packed_object(module: nn.Module) -> Any:
    """The object holding ``module``'s packed quantized weight and bias (a
    ``torch.ScriptObject``; ``None`` if unknown): what :func:`put_packed_object` puts back.
    ``set_weight_bias`` always makes a new one, so its identity names its contents."""
    p: Any = getattr(module, "_packed_params", None)
    inner = getattr(p, "_packed_params", None)  # quantized Linear: a module holding it
    if inner is not None:
        p = inner
    return p if isinstance(p, torch.ScriptObject) else None


def put_packed_object(module: nn.Module, obj: Any) -> None:
    """Make ``obj`` (from :func:`packed_object` on this module) its packed weight and bias again:
    the very object it held, no packing (``set_weight_bias`` packs anew)."""
    p: Any = getattr(module, "_packed_params", None)
    if isinstance(getattr(p, "_packed_params", None), torch.ScriptObject):
        p._packed_params = obj
    else:
        packed: Any = module
        packed._packed_params = obj


def unpack(module: nn.Module) -> tuple[Any, Any]:
    """The packed quantized weight and bias of ``module``, ``(weight, bias)``, copies of the
    stored ones.

    Unpacking costs about a millisecond per call for a small layer, and an injection needs the
    stored tensors several times (checking the fault, reading, writing and restoring them): the
    result is kept per packed object (``set_weight_bias`` replaces that object, so a new one is
    unpacked again) and handed out as copies. One unpack gives both (``_weight_bias()`` where
    the module has it; ``weight()`` and ``bias()`` unpack each).
    """
    obj = packed_object(module)
    hit = _UNPACKED.get(id(obj)) if obj is not None else None
    if hit is not None and hit[0] is obj:
        w, b = hit[1], hit[2]
    else:
        packed: Any = module
        both = getattr(packed, "_weight_bias", None)
        w, b = both() if callable(both) else (packed.weight(), packed.bias())
        if obj is not None:
            if len(_UNPACKED) >= _UNPACKED_MAX:
                _UNPACKED.clear()
            _UNPACKED[id(obj)] = (obj, w, b)  # holds obj: its id is not reused meanwhile
    return (
        w.clone() if isinstance(w, torch.Tensor) else w,
        b.clone() if isinstance(b, torch.Tensor) else b,
    )


def get_stored(module: nn.Module, target: str) -> torch.Tensor | None:
    """The tensor stored as ``target`` in ``module`` (``None`` if there is none)."""
    if is_packed(module, target):
        t = unpack(module)[target == "bias"]
        return t if isinstance(t, torch.Tensor) else None
    base, _, comp = target.partition(".")
    t = getattr(module, base if comp else target, None)
    if comp and isinstance(t, torch.Tensor):
        return sparse_components(t).get(comp)
    return t if isinstance(t, torch.Tensor) else None


def set_packed(module: nn.Module, target: str, tensor: torch.Tensor) -> None:
    """Write a packed quantized weight or bias back into its module."""
    packed: Any = module
    w, b = unpack(module)
    if target == "weight":
        w = tensor
    else:
        b = tensor
    packed.set_weight_bias(w, b)
