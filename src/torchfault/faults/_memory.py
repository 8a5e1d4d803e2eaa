# SPDX-License-Identifier: MIT
"""A model's parameters in memory: physical faults on cells, resolved to element faults.

:class:`MemoryMap` lays out the chosen parameters and buffers of a model (one
:class:`~torchfault.faults._layouts.TensorMemory` each, every tensor starting on a new row) in
one grid of ``rows`` x ``columns`` cells, the memory that holds them. A :class:`MemoryFault`
names a physical event: an anchor cell (global ``row``/``column``, or ``word``/``bit`` of a named
tensor's memory), a :class:`~torchfault.faults._patterns.CellPattern` and what the cells do
(``flip``, ``stuck_at_0``, ``stuck_at_1``). :meth:`MemoryMap.resolve` turns it into a
:class:`MemoryResolution`: the cells hit, the element faults (:class:`~torchfault.Fault`, bit
flips, one per hit element, exact for the tensor's current value) with the word's ECC decoder
off (``raw``) and on (``decoded``), and the decoder's status. The element faults are what
:func:`torchfault.inject` applies and what a run stores.

:meth:`MemoryMap.draw` draws physical faults uniformly over the grid's cells (a pattern's anchor
is drawn where the pattern fits), a pure function of ``(seed, k)``, so rates are per cell:
multiply a campaign's probability of an outcome per upset by the memory's size in Mbit and the
technology's raw FIT per Mbit to get the model's FIT (see :meth:`MemoryMap.fit`). Cells of a
row that hold no word (the end of a tensor's last row) are part of the memory: a fault there
is ``unused``.

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Linear(4, 2)
    >>> mm = MemoryMap(m, MemoryLayout(width=72, ecc="secded"))
    >>> [(r.name, r.memory.n_words, r.row) for r in mm.regions], mm.rows, mm.columns
    ([('weight', 4, 0), ('bias', 1, 4)], 5, 72)
    >>> res = mm.resolve(MemoryFault(row=0, column=30, pattern="adjacent_bits:2"))
    >>> res.status, [(f.index, f.bits) for f in res.raw], res.detected()
    ('detected', [((0, 0), (30, 31))], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchfault import numerics
from torchfault.errors import TorchFaultError, suggest
from torchfault.faults._access import get_stored
from torchfault.faults._fault import PERSISTENCES, Fault, FaultSite
from torchfault.faults._layouts import OPS, STATUSES, MemoryLayout, TensorMemory
from torchfault.faults._models import FAULT_MODELS
from torchfault.faults._patterns import CellPattern, PatternMix
from torchfault.faults._space import TargetSpec, fault_space

__all__ = ["ECC_DETECTED", "MemoryFault", "MemoryMap", "MemoryRegion", "MemoryResolution"]

#: The fault model of the bit flips in words the ECC decoder flagged as uncorrectable: applied,
#: they are the words as read (bit flips; none when only check bits flipped); a campaign
#: records such a run as ``detected`` without running it (the ``detected`` capability).
ECC_DETECTED = "ecc_detected"


def _ecc_detected(
    x: torch.Tensor,
    index: torch.Tensor,
    bits: Sequence[int],
    fmt: numerics.NumberFormat,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bit flips an ECC decoder detected but could not correct (the word as read)."""
    if not bits:
        return x.clone()
    return numerics.apply_bits(x, index, numerics.bit_mask(bits, fmt), "xor", fmt)


FAULT_MODELS.add(
    ECC_DETECTED,
    _ecc_detected,
    description="Bit flips the ECC decoder detected but could not correct (a campaign records "
    "the run as 'detected'; applied, the flipped word as read).",
    needs_bits=False,
    bit_op=None,
    random=False,
    detected=True,
)

_RANK = {s: i for i, s in enumerate(STATUSES)}
MBIT = 1 << 20


@dataclass(frozen=True)
class MemoryFault:
    """A physical fault: an anchor cell, a pattern and what the cells do.

    Give the anchor as ``row`` and ``column`` of the whole memory, or as ``word`` and ``bit`` of
    the memory of the tensor ``module``:``target``.

    Attributes:
        row, column: anchor cell in the memory grid.
        module, target, word, bit: anchor as a stored bit of one tensor's words.
        pattern: a :class:`CellPattern` spec (``"single"``, ``"adjacent_bits:2"``, ``"cluster"``).
        op: ``"flip"``, ``"stuck_at_0"`` or ``"stuck_at_1"`` (stuck cells are usually permanent).
        persistence: of the element faults it resolves to (``"transient"``: one forward pass).
    """

    row: int | None = None
    column: int | None = None
    pattern: str = "single"
    op: str = "flip"
    persistence: str = "transient"
    module: str | None = None
    target: str | None = None
    word: int | None = None
    bit: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", CellPattern.parse(self.pattern).label)
        if self.op not in OPS:
            raise TorchFaultError(
                f"MemoryFault op must be one of {OPS}, got {self.op!r}.{suggest(str(self.op), OPS)}"
            )
        if self.persistence not in PERSISTENCES:
            raise TorchFaultError(
                f"MemoryFault persistence must be one of {PERSISTENCES}, got {self.persistence!r}."
            )
        by_cell = self.row is not None or self.column is not None
        by_word = any(v is not None for v in (self.module, self.target, self.word, self.bit))
        if by_cell == by_word:
            raise TorchFaultError(
                "MemoryFault needs its anchor as row and column, or as module, target, word and "
                f"bit (one of the two), got {self!r}."
            )
        names = ("row", "column") if by_cell else ("word", "bit")
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise TorchFaultError(f"MemoryFault {name} must be an integer >= 0, got {v!r}.")
        if by_word and (not isinstance(self.module, str) or not isinstance(self.target, str)):
            raise TorchFaultError(
                f"MemoryFault module and target must be names, got {self.module!r}, {self.target!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryFault:
        """Inverse of :meth:`to_dict`; unknown keys are named."""
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise TorchFaultError(
                f"Unknown MemoryFault field(s) {unknown}; valid: {', '.join(valid)}."
                f"{suggest(str(unknown[0]), valid)}"
            )
        return cls(**dict(data))


@dataclass(frozen=True)
class MemoryResolution:
    """What one :class:`MemoryFault` does (see the module docstring).

    Attributes:
        physical: the physical fault(s), resolved together.
        cells: ``(row, column)`` of every cell hit (cells holding no word included).
        raw: element faults with the ECC decoder off (the check bits are not used).
        decoded: element faults after the decoder (empty when it corrected the words).
        status: the decoder's verdict, worst over the hit words (``STATUSES``): ``detected``,
            ``miscorrected``, ``undetected``, ``corrected``, ``unused`` or ``none``.
    """

    physical: tuple[MemoryFault, ...]
    cells: tuple[tuple[int, int], ...]
    raw: tuple[Fault, ...]
    decoded: tuple[Fault, ...]
    status: str

    def faults(self, ecc: bool = True) -> tuple[Fault, ...]:
        """The element faults to inject with the decoder on (``ecc``) or off."""
        return self.decoded if ecc else self.raw

    def detected(self, ecc: bool = True) -> bool:
        """Whether the decoder flags the fault (a detected, unrecoverable error)."""
        return ecc and self.status == "detected"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the physical fault, the cells, both fault lists and the status."""
        return {
            "faults": [f.to_dict() for f in self.physical],
            "cells": [list(c) for c in self.cells],
            "raw": [f.to_dict() for f in self.raw],
            "decoded": [f.to_dict() for f in self.decoded],
            "status": self.status,
        }


@dataclass(frozen=True)
class MemoryRegion:
    """One tensor's place in a :class:`MemoryMap`: ``module``, ``target``, its memory, first row."""

    module: str
    target: str
    memory: TensorMemory
    row: int

    @property
    def name(self) -> str:
        return f"{self.module}:{self.target}" if self.module else self.target


class MemoryMap:
    """Chosen parameters and buffers of ``model`` in one memory (see the module docstring).

    Args:
        model: the model (its tensors are read when a fault is resolved).
        layout: a :class:`MemoryLayout` (or a dict of its fields).
        modules, kinds: which tensors, as :func:`torchfault.fault_space` selects them (stored
            tensors only: ``weights``, ``biases``, ``buffers``, ``parameters``).
        sites: instead of ``modules`` and ``kinds``: exactly these stored-tensor
            :class:`~torchfault.FaultSite` (from :func:`torchfault.fault_space`), in this order.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: MemoryLayout | Mapping[str, Any],
        *,
        modules: Any = None,
        kinds: Sequence[str] | str = ("weights", "biases"),
        sites: Sequence[FaultSite] | None = None,
    ) -> None:
        if isinstance(layout, Mapping):
            layout = MemoryLayout.from_dict(dict(layout))
        if not isinstance(layout, MemoryLayout):
            raise TorchFaultError(f"layout must be a MemoryLayout or a dict, got {layout!r}.")
        spec = TargetSpec(
            modules=modules, kinds=(kinds,) if isinstance(kinds, str) else tuple(kinds)
        )
        acts = [k for k in spec.kinds if k in ("outputs", "inputs")]
        if acts:
            raise TorchFaultError(
                f"MemoryMap kinds: {acts} are activations; a memory map holds stored tensors "
                "(weights, biases, buffers, parameters)."
            )
        self.model, self.layout = model, layout
        mods = dict(model.named_modules())
        self.regions: list[MemoryRegion] = []
        row = 0
        chosen = fault_space(model, targets=spec) if sites is None else list(sites)
        for site in chosen:
            if not isinstance(site, FaultSite) or site.kind not in ("parameter", "buffer"):
                raise TorchFaultError(
                    f"MemoryMap sites: a memory holds stored tensors (parameters and buffers), "
                    f"got {site!r}."
                )
            t = get_stored(mods[site.module], site.target)
            if t is None or t.layout != torch.strided:
                continue
            mem = layout.bind(t, site.module, site.target)
            self.regions.append(MemoryRegion(site.module, site.target, mem, row))
            row += mem.n_rows
        if not self.regions:
            raise TorchFaultError(
                f"MemoryMap: no stored tensor of {type(model).__name__} matches modules="
                f"{modules!r}, kinds={spec.kinds}."
            )
        self.rows, self.columns = row, layout.columns
        self._starts = np.array([r.row for r in self.regions], dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"MemoryMap({len(self.regions)} tensors, {self.rows} rows x {self.columns} columns, "
            f"{self.mbit:.4f} Mbit, {self.layout})"
        )

    @property
    def cells(self) -> int:
        """Cells of the memory (rows x columns)."""
        return self.rows * self.columns

    @property
    def mbit(self) -> float:
        """Size in Mbit (2**20 cells)."""
        return self.cells / MBIT

    def fit(self, fit_per_mbit: float, probability: float) -> float:
        """The model's FIT for an outcome of ``probability`` per upset, at a raw rate of
        ``fit_per_mbit`` upsets per 10**9 hours per Mbit.

        Example:
            >>> mm = MemoryMap(nn.Linear(64, 64), MemoryLayout(width=32))
            >>> round(mm.fit(1000.0, 0.01), 4)   # 4160 words of 32 cells = 0.127 Mbit
            1.2695
        """
        return float(fit_per_mbit) * self.mbit * float(probability)

    def region(self, module: str, target: str) -> MemoryRegion:
        """The region of ``module``:``target``."""
        for r in self.regions:
            if r.module == module and r.target == target:
                return r
        names = [r.name for r in self.regions]
        raise TorchFaultError(
            f"MemoryMap: {module}:{target} is not in this memory; tensors: {names}."
            f"{suggest(f'{module}:{target}', names)}"
        )

    def region_at(self, row: int) -> MemoryRegion:
        """The region (tensor) whose rows include ``row``.

        Example:
            >>> MemoryMap(nn.Linear(4, 2), MemoryLayout(width=64)).region_at(4).name
            'bias'
        """
        if (
            isinstance(row, bool)
            or not isinstance(row, (int, np.integer))
            or not 0 <= row < self.rows
        ):
            raise TorchFaultError(
                f"MemoryMap: row {row!r} is outside the memory (rows 0..{self.rows - 1})."
            )
        return self.regions[int(np.searchsorted(self._starts, row, side="right") - 1)]

    def anchor(self, fault: MemoryFault) -> tuple[int, int]:
        """Global ``(row, column)`` of a fault's anchor cell (checked)."""
        if fault.row is not None:
            r, c = int(fault.row), int(fault.column)  # type: ignore[arg-type]
            if r >= self.rows or c >= self.columns:
                raise TorchFaultError(
                    f"MemoryFault at row {r}, column {c} is outside the memory "
                    f"({self.rows} rows x {self.columns} columns)."
                )
            return r, c
        reg = self.region(str(fault.module), str(fault.target))
        rr, cc = reg.memory.cell_position(fault.word, fault.bit)
        return reg.row + int(rr), int(cc)

    def cells_of(self, fault: MemoryFault) -> tuple[np.ndarray, np.ndarray]:
        """Global rows and columns of the cells a fault hits; beyond the memory is an error."""
        r0, c0 = self.anchor(fault)
        pattern = CellPattern.parse(fault.pattern)
        off = np.array(pattern.offsets(self.rows, self.columns), dtype=np.int64)
        if pattern.name == "word_line":
            c0 = 0
        elif pattern.name == "bit_line":
            r0 = 0
        rows, cols = r0 + off[:, 0], c0 + off[:, 1]
        if rows.max() >= self.rows or cols.max() >= self.columns:
            raise TorchFaultError(
                f"MemoryFault {pattern.label!r} at row {r0}, column {c0} reaches row "
                f"{int(rows.max())}, column {int(cols.max())}: outside the memory ({self.rows} "
                f"rows x {self.columns} columns)."
            )
        return rows, cols

    def resolve(self, faults: MemoryFault | Sequence[MemoryFault]) -> MemoryResolution:
        """The cells, element faults and decoder status of a physical fault (or of several
        together: faults in one word are decoded together) for the model's current tensors
        (see :class:`MemoryResolution`)."""
        fs = (faults,) if isinstance(faults, MemoryFault) else tuple(faults)
        if not fs or not all(isinstance(f, MemoryFault) for f in fs):
            raise TorchFaultError(
                f"MemoryMap.resolve takes a MemoryFault or a non-empty list of them, got {faults!r}."
            )
        persist = {f.persistence for f in fs}
        if len(persist) > 1:
            raise TorchFaultError(
                "MemoryMap.resolve: faults resolved together must share one persistence, got "
                f"{sorted(persist)}; resolve transient and permanent faults apart."
            )
        persistence = persist.pop()
        parts = [self.cells_of(f) for f in fs]
        rows = np.concatenate([p[0] for p in parts])
        cols = np.concatenate([p[1] for p in parts])
        ops = np.concatenate([np.full(len(p[0]), f.op, dtype=object) for p, f in zip(parts, fs)])
        which = np.searchsorted(self._starts, rows, side="right") - 1
        raw: list[Fault] = []
        dec: list[Fault] = []
        status = "none"
        mods = dict(self.model.named_modules())
        for i in np.unique(which).tolist():
            reg = self.regions[i]
            sel = which == i
            words, bits = reg.memory.cell_word(rows[sel] - reg.row, cols[sel])
            keep = words >= 0
            if not keep.any():
                status = min(status, "unused", key=_RANK.__getitem__)
                continue
            t = get_stored(mods[reg.module], reg.target)
            assert t is not None
            r, d, s = reg.memory.resolve(t, words[keep], bits[keep], ops[sel][keep])
            if not keep.all() and s == "none":
                s = "unused"
            status = min(status, s, key=_RANK.__getitem__)
            raw += self._faults(reg, r, persistence)
            dec += self._faults(reg, d, persistence)
        cells = tuple(zip(rows.tolist(), cols.tolist()))
        return MemoryResolution(fs, cells, tuple(raw), tuple(dec), status)

    def fault_set(self, res: MemoryResolution, ecc: bool = True) -> tuple[Fault, ...]:
        """The fault set a campaign runs for a resolution of this memory: its element faults
        with the decoder on (``ecc``) or off, except that a fault the decoder flagged is its raw
        bit flips under the ``ecc_detected`` fault model (a campaign records it as ``detected``
        without running); when only check bits flipped, that is one ``ecc_detected`` fault with
        no bits on the first element of the first hit word.

        Example:
            >>> mm = MemoryMap(nn.Linear(4, 2), MemoryLayout(width=72, ecc="secded"))
            >>> res = mm.resolve(MemoryFault(row=0, column=30, pattern="adjacent_bits:2"))
            >>> [(f.model, f.bits) for f in mm.fault_set(res)], mm.fault_set(res, False)[0].model
            ([('ecc_detected', (30, 31))], 'bit_flip')
            >>> res = mm.resolve(MemoryFault(row=1, column=70, pattern="adjacent_bits:2"))
            >>> [(f.model, f.index, f.bits) for f in mm.fault_set(res)], mm.fault_set(res, False)
            ([('ecc_detected', (0, 2), ())], ())
        """
        if not res.detected(ecc):
            return res.faults(ecc)
        if res.raw:
            return tuple(dataclasses.replace(f, model=ECC_DETECTED) for f in res.raw)
        persistence = res.physical[0].persistence
        for r, c in res.cells:
            reg = self.region_at(int(r))
            words, _ = reg.memory.cell_word(np.array([r - reg.row]), np.array([c]))
            hit = reg.memory.element_bits(int(words[0]), 0) if words[0] >= 0 else None
            if hit is not None:
                mem = reg.memory
                index = tuple(int(i) for i in np.unravel_index(hit[0], mem.shape))
                return (
                    Fault(
                        reg.module,
                        reg.target,
                        index=index,
                        bits=(),
                        model=ECC_DETECTED,
                        format=mem.fmt.name,
                        persistence=persistence,
                    ),
                )
        return ()  # pragma: no cover - a detected word holds data

    @staticmethod
    def _faults(reg: MemoryRegion, masks: dict[int, int], persistence: str) -> list[Fault]:
        mem = reg.memory
        out = []
        for flat in sorted(masks):
            index = tuple(int(i) for i in np.unravel_index(flat, mem.shape)) if mem.shape else ()
            bits = tuple(b for b in range(mem.elem_bits) if masks[flat] >> b & 1)
            out.append(
                Fault(
                    reg.module,
                    reg.target,
                    index=index,
                    bits=bits,
                    model="bit_flip",
                    format=mem.fmt.name,
                    persistence=persistence,
                )
            )
        return out

    def draw(
        self,
        k: int,
        seed: int = 0,
        patterns: PatternMix | Mapping[Any, float] | str = "single",
        *,
        op: str = "flip",
        persistence: str = "transient",
    ) -> MemoryFault:
        """Physical fault number ``k`` of a campaign seeded ``seed``: a pattern drawn by
        frequency, its anchor uniform over the cells where it fits (pure function of seed, k).

        Example:
            >>> mm = MemoryMap(nn.Linear(4, 2), MemoryLayout(width=32))
            >>> mm.draw(7, seed=1) == mm.draw(7, seed=1)
            True
        """
        mix = patterns if isinstance(patterns, PatternMix) else PatternMix(patterns)
        for name, v in (("k", k), ("seed", seed)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise TorchFaultError(f"MemoryMap.draw: {name} must be an integer >= 0, got {v!r}.")
        rng = np.random.default_rng([int(seed), int(k)])
        pattern = mix.choose(rng)
        n_rows, n_cols = pattern.anchors(self.rows, self.columns)
        row, col = int(rng.integers(n_rows)), int(rng.integers(n_cols))
        return MemoryFault(row, col, pattern.label, op, persistence)

    def draws(
        self, n: int, seed: int = 0, patterns: Any = "single", **kw: Any
    ) -> Iterator[MemoryFault]:
        """Faults ``0..n-1`` of :meth:`draw`."""
        mix = patterns if isinstance(patterns, PatternMix) else PatternMix(patterns)
        for k in range(n):
            yield self.draw(k, seed, mix, **kw)
