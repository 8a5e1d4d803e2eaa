# SPDX-License-Identifier: MIT
"""Permanent faults in the processing elements (PEs) of a systolic array running a layer.

An accelerator computes a ``Linear`` or ``Conv2d`` layer (``groups=1``) as a matrix product
``out[p, o] = sum_k A[p, k] * W[o, k]`` (+ bias, added after the array): ``p`` runs over the
batch (and, for a convolution, over output pixels, batch-major), ``k`` over the reduction
(input features; ``(in channel, kernel row, kernel column)`` for a convolution, as
``torch.nn.functional.unfold`` orders them) and ``o`` over output features or channels. A
:class:`SystolicArray` of ``rows`` x ``cols`` PEs maps it in one of two dataflows:

- ``weight_stationary``: PE ``(r, c)`` holds weight ``W[o, k]`` for ``k % rows == r`` and
  ``o % cols == c`` (the reduction is cut in tiles of ``rows``, zero-padded at the end); inputs
  stream through, and the partial sum of a tile flows down column ``c``, each PE adding its
  product; the tiles' sums are added in an output buffer.
- ``output_stationary``: PE ``(r, c)`` computes ``out[p, o]`` for ``p % rows == r`` and
  ``o % cols == c``, accumulating its products over ``k`` in order.

A :class:`PEFault` is a permanent fault on one PE's ``multiplier`` output (every product it
makes) or ``accumulator`` output (every partial sum it passes on: in ``weight_stationary`` the
sum leaving the PE, in ``output_stationary`` its running sum after each step), as a bit flip or
stuck-at bits on the value in the layer's float format. It corrupts every output the PE
contributes to, and only those. :func:`inject_systolic` adds, at the layer's output (a forward
hook), exactly the difference the faulty PE makes: faulty minus fault-free products (or partial
sums), computed from the layer's input and weight; the other outputs are untouched. A product
on a zero-padded slot is ``0.0``, and a flipped ``0.0`` is not zero: padding PEs are real PEs.

Example:
    >>> import torch, torch.nn as nn
    >>> fc = nn.Linear(4, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = fc.weight.fill_(1.0)
    >>> array = SystolicArray(2, 2, "output_stationary")
    >>> x = torch.ones(2, 4)
    >>> with inject_systolic(fc, PEFault("", 1, 0, "multiplier", (30,)), array):  # 1.0 -> inf
    ...     fc(x).tolist()
    [[4.0, 4.0, 4.0], [inf, 4.0, inf]]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchfault import numerics
from torchfault.errors import TorchFaultError, suggest
from torchfault.injectors._memory import _outcomes

__all__ = [
    "DATAFLOWS",
    "PEFault",
    "SystolicArray",
    "inject_systolic",
    "pe_faults",
    "pe_map",
    "systolic_campaign",
]

DATAFLOWS = ("weight_stationary", "output_stationary")
UNITS = ("multiplier", "accumulator")
_OPS = {"bit_flip": "xor", "stuck_at_0": "stuck_at_0", "stuck_at_1": "stuck_at_1"}


def _pos_int(v: Any, what: str, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise TorchFaultError(f"{what} must be an integer >= {low}, got {v!r}.")
    return int(v)


@dataclass(frozen=True)
class SystolicArray:
    """An array of ``rows`` x ``cols`` PEs and its dataflow (see the module docstring)."""

    rows: int = 16
    cols: int = 16
    dataflow: str = "weight_stationary"

    def __post_init__(self) -> None:
        _pos_int(self.rows, "SystolicArray rows")
        _pos_int(self.cols, "SystolicArray cols")
        if self.dataflow not in DATAFLOWS:
            raise TorchFaultError(
                f"SystolicArray dataflow must be one of {DATAFLOWS}, got {self.dataflow!r}."
                f"{suggest(str(self.dataflow), DATAFLOWS)}"
            )


@dataclass(frozen=True)
class PEFault:
    """A permanent fault in PE ``(row, col)`` while it runs layer ``module``.

    Attributes:
        module: the layer (a ``Linear`` or ``Conv2d`` name from ``named_modules()``).
        row, col: the PE.
        unit: ``"multiplier"`` or ``"accumulator"`` (its output is faulted).
        bits: bit positions of the value (bit 0 is the LSB; float32: 31 is the sign).
        model: ``"bit_flip"``, ``"stuck_at_0"`` or ``"stuck_at_1"``.
    """

    module: str
    row: int
    col: int
    unit: str = "multiplier"
    bits: tuple[int, ...] = (30,)
    model: str = "bit_flip"

    def __post_init__(self) -> None:
        if not isinstance(self.module, str):
            raise TorchFaultError(f"PEFault module must be a module name, got {self.module!r}.")
        _pos_int(self.row, "PEFault row", 0)
        _pos_int(self.col, "PEFault col", 0)
        if self.unit not in UNITS:
            raise TorchFaultError(
                f"PEFault unit must be one of {UNITS}, got {self.unit!r}.{suggest(str(self.unit), UNITS)}"
            )
        bits = (self.bits,) if isinstance(self.bits, int) else tuple(self.bits)
        if not bits or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in bits):
            raise TorchFaultError(f"PEFault bits must be bit positions >= 0, got {self.bits!r}.")
        object.__setattr__(self, "bits", bits)
        if self.model not in _OPS:
            raise TorchFaultError(
                f"PEFault model must be one of {list(_OPS)}, got {self.model!r}."
                f"{suggest(str(self.model), list(_OPS))}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "row": self.row,
            "col": self.col,
            "unit": self.unit,
            "bits": list(self.bits),
            "model": self.model,
        }


def _gemm(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (P, K), W (O, K))`` of a layer's input."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]), module.weight.detach()
    conv = cast(nn.Conv2d, module)  # a Conv2d (checked before)
    cols = F.unfold(
        x,
        cast(tuple[int, int], conv.kernel_size),
        dilation=cast(tuple[int, int], conv.dilation),
        padding=cast(tuple[int, int], conv.padding),
        stride=cast(tuple[int, int], conv.stride),
    )  # (B, K, L)
    a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return a, conv.weight.detach().reshape(conv.out_channels, -1)


def _out_view(module: nn.Module, out: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The output as ``(P, O)`` and how to put it back."""
    if isinstance(module, nn.Linear):
        return out.reshape(-1, out.shape[-1]), lambda g: g.reshape(out.shape)
    b, o, h, w = out.shape
    g = out.permute(0, 2, 3, 1).reshape(b * h * w, o)
    return g, lambda g: g.reshape(b, h, w, o).permute(0, 3, 1, 2).contiguous()


def _check_layer(model: nn.Module, f: PEFault, array: SystolicArray) -> nn.Module:
    mods = dict(model.named_modules())
    mod = mods.get(f.module)
    if mod is None:
        raise TorchFaultError(
            f"PEFault: unknown module {f.module!r}.{suggest(f.module, list(mods))} Layers: "
            f"{[n for n, m in mods.items() if isinstance(m, (nn.Linear, nn.Conv2d))]}."
        )
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise TorchFaultError(
                f"PEFault on {f.module!r}: the systolic model maps Conv2d with groups=1, zero "
                f"padding given as numbers; got groups={mod.groups}, padding={mod.padding!r}, "
                f"padding_mode={mod.padding_mode!r}."
            )
    elif not isinstance(mod, nn.Linear):
        raise TorchFaultError(
            f"PEFault on {f.module!r}: a systolic array runs Linear and Conv2d layers, not "
            f"{type(mod).__name__}."
        )
    if not mod.weight.dtype.is_floating_point:
        raise TorchFaultError(f"PEFault on {f.module!r}: the layer's weight is not floating point.")
    numerics.bit_mask(f.bits, numerics.format_of(mod.weight))  # a bit too wide is an error
    if f.row >= array.rows or f.col >= array.cols:
        raise TorchFaultError(
            f"PEFault at PE ({f.row}, {f.col}) is outside the {array.rows} x {array.cols} array."
        )
    return mod


def _apply(values: torch.Tensor, f: PEFault) -> torch.Tensor:
    fmt = numerics.format_of(values)
    mask = numerics.bit_mask(f.bits, fmt)
    flat = values.reshape(-1)
    index = torch.arange(flat.numel(), device=flat.device)
    out = numerics.apply_bits(flat, index, mask, _OPS[f.model], fmt)
    return out.reshape(values.shape)


def pe_delta(
    module: nn.Module, x: torch.Tensor, f: PEFault, array: SystolicArray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows p, columns o, delta (len p, len o))``: what the faulty PE adds to the output."""
    A, W = _gemm(module, x)
    P, K = A.shape
    n_out = W.shape[0]
    R, C = array.rows, array.cols
    dev = A.device
    os = torch.arange(f.col, n_out, C, device=dev)
    if array.dataflow == "weight_stationary":
        ps = torch.arange(P, device=dev)
        Kp = -(-K // R) * R
        Ap = F.pad(A, (0, Kp - K))
        Wp = F.pad(W[os], (0, Kp - K))
        if f.unit == "multiplier":
            ks = torch.arange(f.row, Kp, R, device=dev)
            prods = Ap[:, None, ks] * Wp[None, :, ks]  # (P, |os|, T)
            delta = (_apply(prods, f) - prods).sum(-1)
        else:
            prods = (Ap[:, None, :] * Wp[None, :, :]).reshape(P, len(os), Kp // R, R)
            psum = _seq(prods, f.row)  # (P, |os|, tiles)
            delta = (_apply(psum, f) - psum).sum(-1)
        return ps, os, delta
    ps = torch.arange(f.row, P, R, device=dev)
    prods = A[ps][:, None, :] * W[os][None, :, :]  # (|ps|, |os|, K)
    if f.unit == "multiplier":
        return ps, os, (_apply(prods, f) - prods).sum(-1)
    clean = torch.zeros(prods.shape[:2], dtype=prods.dtype, device=prods.device)
    faulty = clean.clone()
    for k in range(K):
        clean = clean + prods[..., k]
        faulty = _apply(faulty + prods[..., k], f)
    return ps, os, faulty - clean


def _seq(prods: torch.Tensor, row: int) -> torch.Tensor:
    """Partial sums leaving row ``row`` of each tile, added in the array's order."""
    s = torch.zeros_like(prods[..., 0])  # the sum entering the tile is +0.0 (+0.0 + -0.0 = +0.0)
    for r in range(row + 1):
        s = s + prods[..., r]
    return s


@contextlib.contextmanager
def inject_systolic(
    model: nn.Module, faults: PEFault | Sequence[PEFault], array: SystolicArray
) -> Iterator[list[Any]]:
    """Make permanent PE faults active while ``model`` runs inside a ``with`` block.

    Each faulted layer gets a forward hook that adds what its faulty PEs change (see the module
    docstring); several faults on one layer add up (each against the fault-free layer). Every
    hook is removed on exit, whatever happened. Yields the hook handles.
    """
    fs = [faults] if isinstance(faults, PEFault) else list(faults)
    if not isinstance(array, SystolicArray):
        raise TorchFaultError(f"inject_systolic needs a SystolicArray, got {array!r}.")
    by_mod: dict[str, list[PEFault]] = {}
    for f in fs:
        if not isinstance(f, PEFault):
            raise TorchFaultError(f"inject_systolic takes PEFault objects, got {f!r}.")
        _check_layer(model, f, array)
        by_mod.setdefault(f.module, []).append(f)
    mods = dict(model.named_modules())
    handles: list[Any] = []

    def make_hook(layer_faults: list[PEFault]) -> Any:
        def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                g, back = _out_view(mod, out)
                g = g.clone()
                for f in layer_faults:
                    ps, os, delta = pe_delta(mod, args[0], f, array)
                    g[ps[:, None], os[None, :]] += delta.to(g.dtype)
                return back(g)

        return hook

    try:
        for name, layer_faults in by_mod.items():
            handles.append(mods[name].register_forward_hook(make_hook(layer_faults)))
        yield handles
    finally:
        for h in handles:
            h.remove()


def pe_faults(
    array: SystolicArray,
    module: str,
    *,
    units: Sequence[str] = UNITS,
    bits: Sequence[int] = (30,),
    model: str = "bit_flip",
) -> list[PEFault]:
    """Every PE of the array, for each unit and each single bit, on layer ``module``.

    Example:
        >>> len(pe_faults(SystolicArray(4, 4), "fc", bits=(30, 31)))
        64
    """
    return [
        PEFault(module, r, c, u, (b,), model)
        for u in units
        for r in range(array.rows)
        for c in range(array.cols)
        for b in bits
    ]


@torch.no_grad()
def systolic_campaign(
    model: nn.Module, inputs: torch.Tensor, array: SystolicArray, faults: Sequence[PEFault]
) -> list[dict[str, Any]]:
    """Run each PE fault on ``inputs`` (one full forward pass each); per fault its dict and the
    outcome counts (``masked``, ``benign``, ``sdc``, ``due``; see
    :func:`torchfault.injectors.memory_campaign`).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator ...>
        >>> net = nn.Sequential(nn.Linear(8, 4)).eval()
        >>> runs = systolic_campaign(net, torch.randn(6, 8), SystolicArray(2, 2), pe_faults(SystolicArray(2, 2), "0"))
        >>> len(runs), sorted(runs[0]["outcomes"])[0] in ("benign", "due", "masked", "sdc")
        (8, True)
    """
    golden = model(inputs)
    out = []
    for f in faults:
        try:
            with inject_systolic(model, f, array):
                outs = _outcomes(golden, model(inputs))
        except TorchFaultError:
            raise
        except Exception:  # noqa: BLE001 - a crash under a fault is a DUE
            outs = ["due"] * len(inputs)
        out.append({"fault": f.to_dict(), "outcomes": {o: outs.count(o) for o in set(outs)}})
    return out


def pe_map(
    runs: Sequence[dict[str, Any]], array: SystolicArray, outcome: str = "sdc"
) -> np.ndarray:
    """A ``rows x cols`` map of the fraction of runs with ``outcome`` per PE (all units, bits
    and layers of ``runs`` together; ``nan`` where a PE has no run): where the array is fragile.

    Example:
        >>> runs = [{"fault": {"row": 0, "col": 1}, "outcomes": {"sdc": 3, "masked": 1}}]
        >>> pe_map(runs, SystolicArray(1, 2)).tolist()
        [[nan, 0.75]]
    """
    hits = np.zeros((array.rows, array.cols))
    total = np.zeros((array.rows, array.cols))
    for r in runs:
        i, j = r["fault"]["row"], r["fault"]["col"]
        hits[i, j] += r["outcomes"].get(outcome, 0)
        total[i, j] += sum(r["outcomes"].values())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hits / np.maximum(total, 1), np.nan)
