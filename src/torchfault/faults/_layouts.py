# SPDX-License-Identifier: MIT
"""Memory layouts: how a tensor's elements sit in the words and rows of a memory.

A radiation strike upsets memory *cells*; which elements and bits it hits depends on the layout.
A :class:`MemoryLayout` says:

- ``width``: stored bits per word, check bits included (32, 64, 72 for 64 data bits with
  SEC-DED, 128, 256...);
- ``ecc``: the code of each word (``None``, ``"parity"``, ``"secded"``; see
  :mod:`torchfault.faults._ecc`); the data bits are ``width`` minus its check bits, first in the
  word (bits ``0..d-1``), the check bits after them;
- ``format``: the number format elements are stored in (default: the tensor's own); the data
  bits of a word hold ``d / element bits`` elements, element slot ``i`` at data bits
  ``i*e .. i*e+e-1`` (bit ``b`` of the element is data bit ``i*e + b``; bit 0 is the LSB, as
  everywhere in torchfault). The element width must divide the data bits;
- ``order``: which element comes next in memory, a registered element order
  (:func:`list_layouts`): ``row_major`` (logical order), ``channels_last`` (dimension 1 last,
  as NHWC), ``tiled`` (a 2-D view ``(shape[0], rest)`` cut in ``tile`` blocks stored one after
  the other, as an accelerator's buffer);
- ``row_words`` and ``interleave``: a physical row (word line) holds ``row_words`` words; in each
  group of ``interleave`` words, the bits are interleaved, bit ``b`` of the group's word ``j`` in
  column ``b * interleave + j`` (so physically adjacent cells belong to different words).

:meth:`MemoryLayout.bind` gives the :class:`TensorMemory` of one tensor: its words, rows and
columns, its stored image (a ``numpy`` 0/1 matrix, check bits encoded) and the resolution of
changed cells into element bits, through the real ECC decoder. No fault means the image decodes
to the tensor bit for bit.

Example:
    >>> import torch
    >>> mem = MemoryLayout(width=64).bind(torch.zeros(2, 3))
    >>> mem.per_word, mem.n_words, mem.cells
    (2, 3, 192)
    >>> mem.element_bits(word=1, bit=40)     # data bit 40 of word 1: element slot 1, bit 8
    (3, 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchfault import numerics
from torchfault.errors import TorchFaultError, suggest
from torchfault.faults._ecc import CORRECTED, DETECTED, EccCode, get_ecc
from torchfault.registry import Registry

__all__ = [
    "LAYOUTS",
    "OPS",
    "STATUSES",
    "MemoryLayout",
    "TensorMemory",
    "list_layouts",
    "register_layout",
]

#: Element orders: ``fn(shape, tile) -> perm`` with ``perm[p]`` the logical (row-major) flat
#: index of the element at memory position ``p``.
LAYOUTS: Registry[Callable[..., np.ndarray]] = Registry("memory layout", "memory_layouts")


#: What a changed cell does: ``flip``, ``stuck_at_0``, ``stuck_at_1``.
OPS = ("flip", "stuck_at_0", "stuck_at_1")
#: What the decoder made of a fault, worst first: ``detected`` (an uncorrectable word flagged: a
#: DUE), ``miscorrected`` (the decoder changed a word into wrong data), ``undetected`` (wrong data,
#: no flag), ``corrected`` (stored bits changed, data restored), ``unused`` (only unused cells
#: changed: padding, or check bits of a code that does not look at them), ``none`` (no stored bit
#: changed, e.g. a cell stuck at the value it holds).
STATUSES = ("detected", "miscorrected", "undetected", "corrected", "unused", "none")


# register_layout (a decorator for element orders ``fn(shape, tile) -> numpy permutation``) and
# list_layouts (the registered orders; tests/test_registry.py checks the built-in ones)
register_layout, list_layouts, _, _, _ = LAYOUTS.functions("layout", "layouts")


@register_layout("row_major", description="Logical (C, row-major) order.")
def _row_major(shape: tuple[int, ...], tile: tuple[int, int]) -> np.ndarray:
    return np.arange(math.prod(shape), dtype=np.int64)


@register_layout("channels_last", description="Dimension 1 last (NHWC for 4-D tensors).")
def _channels_last(shape: tuple[int, ...], tile: tuple[int, int]) -> np.ndarray:
    idx = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    if len(shape) >= 3:
        idx = np.moveaxis(idx, 1, -1)
    return idx.reshape(-1)


@register_layout("tiled", description="2-D view (dim 0, rest) stored in tiles, row-major inside.")
def _tiled(shape: tuple[int, ...], tile: tuple[int, int]) -> np.ndarray:
    n = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    cols = n // rows if rows else 0
    th, tw = tile
    pr, pc = -(-rows // th) * th, -(-cols // tw) * tw
    grid = np.full((pr, pc), -1, dtype=np.int64)
    grid[:rows, :cols] = np.arange(n, dtype=np.int64).reshape(rows, cols)
    out = grid.reshape(pr // th, th, pc // tw, tw).transpose(0, 2, 1, 3).reshape(-1)
    return out[out >= 0]


def _check_int(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise TorchFaultError(f"MemoryLayout {what} must be an integer >= {low}, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class MemoryLayout:
    """How tensors are stored in memory words (see the module docstring).

    Attributes:
        width: stored bits per word, check bits included.
        format: number format of the stored elements (default: each tensor's own dtype).
        order: a registered element order (:func:`list_layouts`).
        ecc: ``None``, ``"parity"`` or ``"secded"`` (or another registered code).
        interleave: words whose bits are interleaved along a row (1: none).
        row_words: words per physical row (default: ``interleave``); a multiple of it.
        tile: ``(rows, columns)`` of a tile for ``order="tiled"``.

    Example:
        >>> MemoryLayout(width=72, format="bfloat16", ecc="secded").data_bits
        64
        >>> MemoryLayout(width=64, format="bfloat16", ecc="secded")
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: MemoryLayout: the 57 data bits of a 64-bit word with ecc 'secded' (7 check bits) do not hold a whole number of 16-bit bfloat16 elements; ...
    """

    width: int = 64
    format: str | None = None
    order: str = "row_major"
    ecc: str | None = None
    interleave: int = 1
    row_words: int | None = None
    tile: tuple[int, int] = (8, 8)

    def __post_init__(self) -> None:
        _check_int(self.width, "width", 1)
        if self.width > 4096:
            raise TorchFaultError(
                f"MemoryLayout width must be at most 4096 bits, got {self.width}."
            )
        code = get_ecc(self.ecc)
        try:
            code.data_bits_for(self.width)
        except TorchFaultError as exc:
            raise TorchFaultError(f"MemoryLayout width {self.width}: {exc}") from None
        if not isinstance(self.order, str) or not LAYOUTS.is_registered(self.order):
            raise TorchFaultError(
                f"MemoryLayout order must be one of {list_layouts()}, got {self.order!r}."
                f"{suggest(str(self.order), list_layouts())}"
            )
        _check_int(self.interleave, "interleave", 1)
        rw = self.interleave if self.row_words is None else self.row_words
        _check_int(rw, "row_words", 1)
        if rw % self.interleave:
            raise TorchFaultError(
                f"MemoryLayout row_words ({rw}) must be a multiple of interleave ({self.interleave})."
            )
        object.__setattr__(self, "row_words", int(rw))
        tile = tuple(self.tile) if isinstance(self.tile, (tuple, list)) else ()
        if len(tile) != 2:
            raise TorchFaultError(f"MemoryLayout tile must be (rows, columns), got {self.tile!r}.")
        object.__setattr__(
            self, "tile", (_check_int(tile[0], "tile", 1), _check_int(tile[1], "tile", 1))
        )
        if self.format is not None:
            self._per_word(numerics.get_format(self.format))

    @property
    def code(self) -> EccCode:
        """The word's error-correcting code."""
        return get_ecc(self.ecc)

    @property
    def data_bits(self) -> int:
        """Data bits per word (``width`` minus the check bits)."""
        return self.code.data_bits_for(self.width)

    @property
    def columns(self) -> int:
        """Cells per physical row."""
        return int(self.row_words or 1) * self.width

    def _per_word(self, fmt: numerics.NumberFormat) -> int:
        d, e = self.data_bits, fmt.width
        if d % e:
            check = self.width - d
            with_ecc = f" with ecc {self.ecc!r} ({check} check bits)" if check else ""
            fits = [w for w in (8, 16, 32, 64, 128, 256, 512) if w % e == 0 and w >= e]
            ecc_w = ", ".join(str(self.code.width_for(w)) for w in fits[:4])
            raise TorchFaultError(
                f"MemoryLayout: the {d} data bits of a {self.width}-bit word{with_ecc} do not "
                f"hold a whole number of {e}-bit {fmt.name} elements; valid widths for "
                f"{fmt.name}{' with this ecc' if check else ''}: {ecc_w}, ..."
            )
        return d // e

    def bind(self, tensor: torch.Tensor, module: str = "", target: str = "") -> TensorMemory:
        """The memory image of ``tensor`` in this layout (``module``/``target`` name its faults)."""
        return TensorMemory(self, tensor, module, target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "format": self.format,
            "order": self.order,
            "ecc": self.ecc,
            "interleave": self.interleave,
            "row_words": self.row_words,
            "tile": list(self.tile),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryLayout:
        """Inverse of :meth:`to_dict`; unknown keys are named."""
        valid = list(cls.__dataclass_fields__)
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise TorchFaultError(
                f"Unknown MemoryLayout field(s) {unknown}; valid: {', '.join(valid)}."
                f"{suggest(str(unknown[0]), valid)}"
            )
        d = dict(data)
        if "tile" in d:
            d["tile"] = tuple(d["tile"])
        return cls(**d)


class TensorMemory:
    """One tensor stored in a :class:`MemoryLayout`: geometry, image and resolution of cells.

    Attributes:
        layout, fmt: the layout and the elements' number format.
        shape, numel: the tensor's shape and element count.
        elem_bits, per_word: bits per element, elements per word.
        n_words, n_rows, columns: words, physical rows, cells per row.
        perm: ``perm[p]`` is the logical flat index of the element at memory position ``p``.
    """

    def __init__(self, layout: MemoryLayout, tensor: torch.Tensor, module: str, target: str):
        if not isinstance(tensor, torch.Tensor):
            raise TorchFaultError(f"MemoryLayout.bind needs a tensor, got {type(tensor).__name__}.")
        if tensor.layout != torch.strided:
            raise TorchFaultError(
                f"MemoryLayout.bind: {module}:{target} is a {tensor.layout} tensor; memory "
                "layouts model dense (strided) tensors."
            )
        self.layout = layout
        self.module, self.target = module, target
        self.fmt = numerics.get_format(layout.format, tensor)
        try:
            numerics.check_compatible(self.fmt, tensor)
        except TorchFaultError as exc:
            raise TorchFaultError(f"MemoryLayout.bind {module}:{target}: {exc}") from None
        self.shape = tuple(tensor.shape)
        self.numel = tensor.numel()
        self.elem_bits = self.fmt.width
        self.per_word = layout._per_word(self.fmt)
        self.n_words = -(-self.numel // self.per_word)
        self.row_words = int(layout.row_words)  # type: ignore[arg-type]
        self.n_rows = -(-self.n_words // self.row_words)
        self.columns = layout.columns
        self.perm = LAYOUTS.get(layout.order)(self.shape, layout.tile)

    # ------------------------------------------------------------------ geometry
    @property
    def cells(self) -> int:
        """Stored cells of the words holding the tensor (check bits included)."""
        return self.n_words * self.layout.width

    def element_bits(self, word: int, bit: int) -> tuple[int, int] | None:
        """``(logical flat index, element bit)`` of stored bit ``bit`` of ``word``; ``None`` for
        a check bit or an unused (padding) slot."""
        self._check_cell(word, bit)
        d = self.layout.data_bits
        if bit >= d:
            return None
        pos = word * self.per_word + bit // self.elem_bits
        if pos >= self.numel:
            return None
        return int(self.perm[pos]), bit % self.elem_bits

    def word_of(self, flat: int) -> tuple[int, int]:
        """``(word, first data bit)`` of the element with logical flat index ``flat``."""
        if not 0 <= flat < self.numel:
            raise TorchFaultError(
                f"{self.module}:{self.target}: element {flat} is outside the tensor "
                f"(0..{self.numel - 1})."
            )
        pos = int(np.nonzero(self.perm == flat)[0][0])
        return pos // self.per_word, (pos % self.per_word) * self.elem_bits

    def _check_cell(self, word: Any, bit: Any) -> None:
        w, b = np.asarray(word), np.asarray(bit)
        if w.size and (w.min() < 0 or w.max() >= self.n_words):
            raise TorchFaultError(
                f"{self.module}:{self.target}: word {int(w.max() if w.max() >= 0 else w.min())} "
                f"is outside the tensor's memory (words 0..{self.n_words - 1})."
            )
        if b.size and (b.min() < 0 or b.max() >= self.layout.width):
            raise TorchFaultError(
                f"{self.module}:{self.target}: bit {int(b.max() if b.max() >= 0 else b.min())} is "
                f"outside a {self.layout.width}-bit word (0..{self.layout.width - 1})."
            )

    def cell_position(self, word: Any, bit: Any) -> tuple[np.ndarray, np.ndarray]:
        """Physical ``(row, column)`` of stored bits (arrays)."""
        self._check_cell(word, bit)
        w, b = np.asarray(word, dtype=np.int64), np.asarray(bit, dtype=np.int64)
        k, width = self.layout.interleave, self.layout.width
        slot = w % self.row_words
        col = (slot // k) * k * width + b * k + slot % k
        return w // self.row_words, col

    def cell_word(self, row: Any, column: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(word, bit)`` of physical cells; ``word`` is ``-1`` where a row's slot holds no word."""
        r, c = np.asarray(row, dtype=np.int64), np.asarray(column, dtype=np.int64)
        if r.size and (r.min() < 0 or r.max() >= self.n_rows):
            raise TorchFaultError(
                f"{self.module}:{self.target}: row {int(r.max())} is outside the tensor's memory "
                f"(rows 0..{self.n_rows - 1})."
            )
        if c.size and (c.min() < 0 or c.max() >= self.columns):
            raise TorchFaultError(
                f"{self.module}:{self.target}: column {int(c.max())} is outside a row of "
                f"{self.columns} cells (0..{self.columns - 1})."
            )
        k, width = self.layout.interleave, self.layout.width
        group, rem = c // (k * width), c % (k * width)
        word = r * self.row_words + group * k + rem % k
        return np.where(word < self.n_words, word, -1), rem // k

    # ------------------------------------------------------------------ image
    def _element_words(self, tensor: torch.Tensor, flat: np.ndarray) -> np.ndarray:
        """Bits ``(len(flat), elem_bits)`` of the elements at logical flat indices."""
        idx = torch.as_tensor(flat, dtype=torch.int64)
        t = tensor.detach()
        if t.is_quantized:  # per-channel quantized tensors cannot be indexed: their integers can
            raw = t.int_repr().reshape(-1)[idx]
        else:
            raw = numerics.to_words(t.reshape(-1)[idx.to(t.device)], self.fmt)
        words = raw.to(torch.int64).cpu().numpy().astype(np.uint64)
        shifts = np.arange(self.elem_bits, dtype=np.uint64)
        return ((words[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)

    def _check_tensor(self, tensor: torch.Tensor) -> None:
        if tuple(tensor.shape) != self.shape:
            raise TorchFaultError(
                f"{self.module}:{self.target}: tensor of shape {tuple(tensor.shape)} does not match "
                f"the bound memory of shape {self.shape}."
            )

    def data(
        self, tensor: torch.Tensor, words: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Data bits ``(len(words), data_bits)`` of ``words`` (default: all) holding ``tensor``."""
        self._check_tensor(tensor)
        words = np.arange(self.n_words) if words is None else np.asarray(words, dtype=np.int64)
        self._check_cell(words, 0)
        pos = (words[:, None] * self.per_word + np.arange(self.per_word)[None, :]).reshape(-1)
        used = pos < self.numel
        bits = np.zeros((pos.size, self.elem_bits), dtype=np.uint8)
        bits[used] = self._element_words(tensor, self.perm[pos[used]])
        out = np.zeros((len(words), self.layout.data_bits), dtype=np.uint8)
        out[:, : self.per_word * self.elem_bits] = bits.reshape(len(words), -1)
        return out

    def image(
        self, tensor: torch.Tensor, words: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Stored bits ``(len(words), width)``: data bits and their check bits.

        Example:
            >>> mem = MemoryLayout(width=39, ecc="secded").bind(torch.tensor([1.0, -2.0]))
            >>> img = mem.image(torch.tensor([1.0, -2.0]))
            >>> img.shape, mem.decode(img).tolist()
            ((2, 39), [1.0, -2.0])
        """
        return self.layout.code.encode(self.data(tensor, words))

    def decode(self, data: np.ndarray, like: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor held by the data bits ``(n_words, >= data_bits)`` (check bits ignored).

        ``like`` gives dtype and quantizer (default: a float32 or integer tensor of the format).
        """
        data = np.asarray(data, dtype=np.uint8)[:, : self.per_word * self.elem_bits]
        if data.shape[0] != self.n_words:
            raise TorchFaultError(
                f"{self.module}:{self.target}: decode needs {self.n_words} words, got {data.shape[0]}."
            )
        bits = data.reshape(-1, self.elem_bits)[: self.numel].astype(np.uint64)
        vals = (bits << np.arange(self.elem_bits, dtype=np.uint64)[None, :]).sum(
            axis=1, dtype=np.uint64
        )
        words = np.empty(self.numel, dtype=np.int64)
        words[self.perm] = vals.view(np.int64)
        if like is None:
            dtype = self.fmt.value_dtype or torch.float32
            like = torch.empty(self.shape, dtype=dtype)
        return numerics.from_words(torch.from_numpy(words).reshape(self.shape), like, self.fmt)

    # ------------------------------------------------------------------ resolution
    def resolve(
        self, tensor: torch.Tensor, words: Any, bits: Any, op: str | Sequence[str] = "flip"
    ) -> tuple[dict[int, int], dict[int, int], str]:
        """What changing stored cells does to ``tensor``'s elements, without and with the decoder.

        Args:
            tensor: the tensor as stored now (stuck-at cells depend on the stored value).
            words, bits: the cells (arrays of equal length).
            op: ``"flip"``, ``"stuck_at_0"`` or ``"stuck_at_1"``, or one per cell (flips first,
                then stuck cells, which read their stuck value whatever was written).

        Returns:
            ``(raw, decoded, status)``: ``{flat index: xor mask of element bits}`` with the
            decoder off and on, and what the decoder made of it (:data:`STATUSES`).

        Example:
            >>> t = torch.tensor([1.0, 2.0])
            >>> mem = MemoryLayout(width=72, ecc="secded").bind(t)
            >>> mem.resolve(t, [0, 0], [3, 40])   # two flips in one word: detected (data as read)
            ({0: 8, 1: 256}, {0: 8, 1: 256}, 'detected')
            >>> mem.resolve(t, [0], [70])         # a check bit: corrected
            ({}, {}, 'corrected')
        """
        w = np.atleast_1d(np.asarray(words, dtype=np.int64))
        b = np.atleast_1d(np.asarray(bits, dtype=np.int64))
        if w.shape != b.shape:
            raise TorchFaultError("resolve: words and bits must have the same length.")
        ops = np.broadcast_to(np.asarray(op, dtype=object), w.shape)
        for o in set(ops.tolist()):
            if o not in OPS:
                raise TorchFaultError(
                    f"resolve: op must be one of {OPS}, got {o!r}.{suggest(str(o), OPS)}"
                )
        self._check_cell(w, b)
        uniq, local = np.unique(w, return_inverse=True)
        clean = self.image(tensor, uniq)
        hit = clean.copy()
        flip = ops == "flip"
        np.bitwise_xor.at(hit, (local[flip], b[flip]), 1)
        for o, v in (("stuck_at_0", 0), ("stuck_at_1", 1)):  # a stuck cell reads stuck
            sel = ops == o
            hit[local[sel], b[sel]] = v
        d = self.layout.data_bits
        fixed, status = self.layout.code.decode(hit)
        raw = self._diff(uniq, clean[:, :d], hit[:, :d])
        dec = self._diff(uniq, clean[:, :d], fixed)
        used = self._used(uniq)
        bad = ((clean[:, :d] != fixed) & used).any(axis=1)
        changed = (hit != clean).any(axis=1)
        return raw, dec, _status(changed, bad, status)

    def _used(self, words: np.ndarray) -> np.ndarray:
        """Mask ``(len(words), data_bits)`` of data bits that hold an element."""
        slots = words[:, None] * self.per_word + np.arange(self.per_word)[None, :] < self.numel
        out = np.zeros((len(words), self.layout.data_bits), dtype=bool)
        out[:, : self.per_word * self.elem_bits] = np.repeat(slots, self.elem_bits, axis=1)
        return out

    def _diff(self, words: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict[int, int]:
        rows, cols = np.nonzero(before != after)
        out: dict[int, int] = {}
        for r, c in zip(rows.tolist(), cols.tolist()):
            pos = int(words[r]) * self.per_word + c // self.elem_bits
            if pos >= self.numel:
                continue  # an unused slot
            flat = int(self.perm[pos])
            out[flat] = out.get(flat, 0) ^ (1 << (c % self.elem_bits))
        return out


def _status(changed: np.ndarray, bad: np.ndarray, status: np.ndarray) -> str:
    """The worst outcome over the hit words (per word: changed stored bits, wrong data after
    the decoder, the decoder's status)."""
    if (status == DETECTED).any():
        return "detected"
    if (bad & (status == CORRECTED)).any():
        return "miscorrected"
    if bad.any():
        return "undetected"
    if (changed & (status == CORRECTED)).any():
        return "corrected"
    if changed.any():
        return "unused"
    return "none"
