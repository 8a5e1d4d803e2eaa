# SPDX-License-Identifier: MIT
"""Memory layouts, patterns and ECC on layouts, against a pure-Python bit-level memory model.

The oracle builds each word as a Python int from element bits read with ``struct`` (never with
torchfault's numerics), orders elements with explicit loops, lays rows out cell by cell, and
decodes with the textbook Hamming code of ``test_ecc``. Injected tensors are compared with it bit
for bit (their words read with ``Tensor.view``).
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.faults import (
    CellPattern,
    MemoryFault,
    MemoryLayout,
    MemoryMap,
    PatternMix,
    list_layouts,
    list_patterns,
)
from torchfault.injectors import inject_memory

from .test_ecc import oracle_decode, oracle_encode

# ----------------------------------------------------------------------------- the oracle

_WIDTH = {"float32": 32, "bfloat16": 16, "float16": 16, "float64": 64, "int8": 8}
_DTYPE = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
    "int8": torch.int8,
}
_VIEW = {
    "float32": torch.int32,
    "bfloat16": torch.int16,
    "float16": torch.int16,
    "float64": torch.int64,
    "int8": torch.int8,
}


def elem_bits(v: float | int, fmt: str) -> int:
    if fmt == "float32":
        return struct.unpack("<I", struct.pack("<f", v))[0]
    if fmt == "bfloat16":  # bf16 values are exact float32 values
        return struct.unpack("<I", struct.pack("<f", v))[0] >> 16
    if fmt == "float16":
        return struct.unpack("<H", struct.pack("<e", v))[0]
    if fmt == "float64":
        return struct.unpack("<Q", struct.pack("<d", v))[0]
    return int(v) & 0xFF


def tensor_bits(t: torch.Tensor, fmt: str) -> list[int]:
    """Stored bits of each element of an actual tensor (logical order)."""
    mask = (1 << _WIDTH[fmt]) - 1
    return [w & mask for w in t.contiguous().view(_VIEW[fmt]).reshape(-1).tolist()]


def oracle_order(shape: tuple[int, ...], order: str, tile: tuple[int, int]) -> list[int]:
    n = int(np.prod(shape))
    if order == "row_major" or (order == "channels_last" and len(shape) < 3):
        return list(range(n))
    if order == "channels_last":
        N, C, H, W = shape
        return [
            ((a * C + c) * H + h) * W + w
            for a in range(N)
            for h in range(H)
            for w in range(W)
            for c in range(C)
        ]
    rows = shape[0]
    cols = n // rows
    th, tw = tile
    out = []
    for r0 in range(0, rows, th):
        for c0 in range(0, cols, tw):
            for r in range(r0, min(r0 + th, rows)):
                for c in range(c0, min(c0 + tw, cols)):
                    out.append(r * cols + c)
    return out


class Oracle:
    """A memory of Python-int words holding one tensor."""

    def __init__(self, values: list, shape, fmt, width, ecc, order, tile, interleave, row_words):
        self.fmt, self.ew, self.width, self.ecc = fmt, _WIDTH[fmt], width, ecc
        self.check = {None: 0, "parity": 1, "secded": None}[ecc]
        if ecc == "secded":
            d = width
            while d + _r(d) > width:
                d -= 1
            self.check = width - d
        self.d = width - self.check
        self.per = self.d // self.ew
        self.order = oracle_order(shape, order, tile)
        self.n = len(values)
        self.n_words = -(-self.n // self.per)
        self.bits = [elem_bits(v, fmt) for v in values]
        self.data = []
        for w in range(self.n_words):
            word = 0
            for i in range(self.per):
                p = w * self.per + i
                if p < self.n:
                    word |= self.bits[self.order[p]] << (i * self.ew)
            self.data.append(word)
        # one physical row, cell by cell: (slot in the row, bit of that word)
        self.row_words = row_words
        self.row_cells = []
        for g in range(row_words // interleave):
            for b in range(width):
                for j in range(interleave):
                    self.row_cells.append((g * interleave + j, b))

    def stored(self, w: int) -> list[int]:
        data = [(self.data[w] >> i) & 1 for i in range(self.d)]
        if self.ecc == "secded":
            return oracle_encode(data)
        if self.ecc == "parity":
            return data + [sum(data) % 2]
        return data

    def cell(self, row: int, col: int) -> tuple[int, int]:
        slot, bit = self.row_cells[col]
        return row * self.row_words + slot, bit

    def hit(self, cells: list[tuple[int, int]], op: str = "flip", ecc: bool = True):
        """(element bits after the fault, status) -- the spec in the module docstring."""
        words: dict[int, list[int]] = {}
        statuses = []
        for row, col in cells:
            w, b = self.cell(row, col)
            if w >= self.n_words:
                statuses.append(4)  # a cell of a row slot that holds no word: unused
                continue
            stored = words.setdefault(w, self.stored(w))
            stored[b] = stored[b] ^ 1 if op == "flip" else int(op[-1])
        bits = list(self.bits)
        for w, stored in words.items():
            changed = stored != self.stored(w)
            if self.ecc == "secded" and ecc:
                data, st = oracle_decode(stored, self.d)
            elif self.ecc == "parity" and ecc:
                data, st = stored[:-1], "detected" if sum(stored) % 2 else "clean"
            else:
                data, st = stored[: self.d], "clean"
            value = sum(bit << i for i, bit in enumerate(data))
            bad = False
            for i in range(self.per):
                p = w * self.per + i
                if p < self.n:
                    e = (value >> (i * self.ew)) & ((1 << self.ew) - 1)
                    bad |= e != bits[self.order[p]]
                    bits[self.order[p]] = e
            if st == "detected":
                statuses.append(0)
            elif bad:
                statuses.append(1 if st == "corrected" else 2)
            elif changed:
                statuses.append(3 if st == "corrected" else 4)
        names = ["detected", "miscorrected", "undetected", "corrected", "unused", "none"]
        return bits, names[min(statuses, default=5)]


def _r(d: int) -> int:
    r = 0
    while 2**r < d + r + 1:
        r += 1
    return r + 1


class Holder(nn.Module):
    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.register_buffer("w", t)

    def forward(self, x):
        return x


CASES = [
    # format, width, ecc, order, interleave, row_words
    ("float32", 32, None, "row_major", 1, 1),
    ("float32", 64, None, "channels_last", 1, 2),
    ("float32", 39, "secded", "tiled", 1, 1),
    ("float32", 256, None, "row_major", 1, 1),
    ("bfloat16", 72, "secded", "row_major", 2, 2),
    ("bfloat16", 64, None, "tiled", 4, 4),
    ("float16", 33, "parity", "channels_last", 1, 1),
    ("float64", 72, "secded", "row_major", 2, 4),
    ("int8", 72, "secded", "channels_last", 4, 8),
    ("int8", 128, None, "tiled", 2, 4),
]
IDS = [f"{c[0]}-w{c[1]}-{c[2]}-{c[3]}-i{c[4]}r{c[5]}" for c in CASES]


def _setup(case, shape=(5, 3, 3, 3), seed=0):
    fmt, width, ecc, order, k, rw = case
    g = torch.Generator().manual_seed(seed)
    if fmt == "int8":
        t = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    else:
        t = torch.randn(shape, generator=g).to(_DTYPE[fmt])
    tile = (2, 4)
    layout = MemoryLayout(width, None, order, ecc, k, rw, tile)
    values = [int(v) if fmt == "int8" else float(v) for v in t.reshape(-1).tolist()]
    oracle = Oracle(values, shape, fmt, width, ecc, order, tile, k, rw)
    return t, layout, oracle


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_layout_image_matches_oracle_and_round_trips(case):
    t, layout, oracle = _setup(case)
    mem = layout.bind(t)
    assert mem.n_words == oracle.n_words and mem.per_word == oracle.per
    img = mem.image(t)
    for w in range(mem.n_words):
        assert img[w].tolist() == oracle.stored(w)
    back = mem.decode(img, like=t)
    assert torch.equal(back.view(_VIEW[case[0]]), t.view(_VIEW[case[0]]))  # bit-identical
    assert layout.bind(t).perm.tolist() == oracle.order


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(
    "pattern", ["single", "adjacent_bits:2", "adjacent_bits:3", "adjacent_words:2", "cluster"]
)
def test_injected_patterns_match_oracle(case, pattern):
    t, layout, oracle = _setup(case, seed=len(pattern))
    model = Holder(t.clone())
    mm = MemoryMap(model, layout, kinds="buffers")
    rng = random.Random(f"{case}{pattern}")
    off = CellPattern.parse(pattern).offsets(mm.rows, mm.columns)
    h, w = max(r for r, _ in off) + 1, max(c for _, c in off) + 1
    for _ in range(6):
        r0, c0 = rng.randrange(mm.rows - h + 1), rng.randrange(mm.columns - w + 1)
        cells = [(r0 + dr, c0 + dc) for dr, dc in off]
        fault = MemoryFault(r0, c0, pattern)
        for ecc in (False, True):
            exp_bits, exp_status = oracle.hit(cells, ecc=ecc)
            with inject_memory(model, fault, mm, ecc=ecc) as mi:
                got = tensor_bits(model.w, case[0])
            assert sorted(mi.resolution.cells) == sorted(cells)
            if ecc:
                assert mi.resolution.status == exp_status
                if exp_status == "detected":
                    assert mi.detected and got == oracle.bits  # nothing injected
                    continue
            assert got == exp_bits
        assert tensor_bits(model.w, case[0]) == oracle.bits  # restored


@pytest.mark.parametrize("op", ["stuck_at_0", "stuck_at_1"])
def test_stuck_cells_match_oracle(op):
    case = ("bfloat16", 72, "secded", "row_major", 1, 1)
    t, layout, oracle = _setup(case)
    model = Holder(t.clone())
    mm = MemoryMap(model, layout, kinds="buffers")
    seen = set()
    for r0 in range(0, mm.rows, 4):
        for c0 in range(0, 72, 7):
            fault = MemoryFault(r0, c0, "adjacent_bits:2", op=op, persistence="permanent")
            for ecc in (False, True):
                exp_bits, exp_status = oracle.hit([(r0, c0), (r0, c0 + 1)], op=op, ecc=ecc)
                with inject_memory(model, fault, mm, ecc=ecc) as mi:
                    got = tensor_bits(model.w, "bfloat16")
                    model(torch.zeros(1))
                    assert tensor_bits(model.w, "bfloat16") == got  # permanent: still there
                if ecc:
                    assert mi.resolution.status == exp_status
                    seen.add(exp_status)
                    if exp_status == "detected":
                        continue
                assert got == exp_bits
    assert {"none", "corrected", "detected"} <= seen  # a stuck cell at its value does nothing


def test_interleaving_spreads_an_adjacent_upset_over_words():
    t = torch.randn(64)
    plain = MemoryMap(Holder(t), MemoryLayout(72, ecc="secded"), kinds="buffers")
    inter = MemoryMap(Holder(t), MemoryLayout(72, ecc="secded", interleave=4), kinds="buffers")
    fault = MemoryFault(0, 8, "adjacent_bits:4")
    assert plain.resolve(fault).status == "detected"  # 4 bits of one word
    res = inter.resolve(fault)
    assert res.status == "corrected" and res.decoded == ()  # one bit in each of 4 words
    assert len({c for c in res.cells}) == 4 and len(res.raw) == 4


def test_word_and_bit_line_faults():
    t = torch.randn(10, 4)
    model = Holder(t)
    mm = MemoryMap(model, MemoryLayout(64), kinds="buffers")  # 2 floats a word, 20 rows
    res = mm.resolve(MemoryFault(3, 5, "word_line"))
    assert sorted({f.index for f in res.raw}) == [(1, 2), (1, 3)]  # word 3 holds elements 6, 7
    res = mm.resolve(MemoryFault(0, 31, "bit_line"))
    assert len(res.raw) == 20 and {f.bits for f in res.raw} == {(31,)}
    assert all(f.index[1] % 2 == 0 for f in res.raw)  # slot 0 of each word: even elements


def test_memory_map_regions_and_sizes():
    m = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    mm = MemoryMap(m, MemoryLayout(72, format="bfloat16", ecc="secded"))
    assert [r.name for r in mm.regions] == ["0:weight", "0:bias", "2:weight", "2:bias"]
    assert [r.memory.n_words for r in mm.regions] == [15, 2, 5, 1]
    assert mm.rows == 23 and mm.cells == 23 * 72
    # a fault at word 1, bit 16 of 2:weight: element 5 of the flat weight, bit 0
    res = mm.resolve(MemoryFault(module="2", target="weight", word=1, bit=16))
    assert res.cells == ((18, 16),) and res.raw[0].index == (0, 5) and res.raw[0].bits == (0,)
    assert res.raw[0].format == "bfloat16"
    assert MemoryFault.from_dict(res.physical[0].to_dict()) == res.physical[0]


def test_draws_are_pure_uniform_and_follow_frequencies():
    mm = MemoryMap(nn.Linear(32, 32), MemoryLayout(64))
    mix = PatternMix({"single": 0.7, "adjacent_bits:2": 0.2, "cluster": 0.1})
    faults = list(mm.draws(3000, seed=5, patterns=mix))
    assert faults[17] == mm.draw(17, 5, mix)
    counts = {
        p: sum(f.pattern == p for f in faults) / 3000
        for p in ("single", "adjacent_bits:2", "cluster")
    }
    assert abs(counts["single"] - 0.7) < 0.04 and abs(counts["cluster"] - 0.1) < 0.03
    singles = [f for f in faults if f.pattern == "single"]
    rows = np.array([f.row for f in singles])
    assert rows.min() == 0 and rows.max() == mm.rows - 1
    assert abs(rows.mean() - (mm.rows - 1) / 2) < 0.1 * mm.rows
    # clusters fit: anchors leave room for the second row and column
    assert all(
        f.row < mm.rows - 1 and f.column < mm.columns - 1 for f in faults if f.pattern == "cluster"
    )


def test_fit_per_mbit():
    mm = MemoryMap(nn.Linear(1024, 1024, bias=False), MemoryLayout(32))
    assert mm.mbit == 32.0
    assert mm.fit(100.0, 0.5) == 1600.0


def test_registries():
    assert list_layouts() == ["channels_last", "row_major", "tiled"]
    assert set(list_patterns()) == {
        "single",
        "adjacent_bits",
        "adjacent_words",
        "cluster",
        "word_line",
        "bit_line",
    }


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error():
    with pytest.raises(
        TorchFaultError, match="48-bit word do not hold a whole number of 32-bit float32"
    ):
        MemoryLayout(48, format="float32")
    with pytest.raises(TorchFaultError, match="do not hold a whole number of 16-bit bfloat16.*72"):
        MemoryLayout(64, format="bfloat16", ecc="secded")
    with pytest.raises(TorchFaultError, match="56 data bits of a 63-bit word.*32-bit float32"):
        MemoryMap(nn.Linear(2, 2), MemoryLayout(63, ecc="secded"))
    with pytest.raises(
        TorchFaultError, match="width 2: ecc 'secded': a word of width 2 has no room"
    ):
        MemoryLayout(2, ecc="secded")
    with pytest.raises(TorchFaultError, match="order must be one of.*Did you mean 'tiled'"):
        MemoryLayout(64, order="tiles")
    with pytest.raises(
        TorchFaultError, match="row_words \\(3\\) must be a multiple of interleave \\(2\\)"
    ):
        MemoryLayout(64, interleave=2, row_words=3)
    mm = MemoryMap(nn.Linear(4, 2), MemoryLayout(64))
    with pytest.raises(
        TorchFaultError, match="row 99, column 0 is outside the memory \\(5 rows x 64 columns\\)"
    ):
        mm.resolve(MemoryFault(99, 0))
    with pytest.raises(
        TorchFaultError, match="word 9 is outside the tensor's memory \\(words 0..3\\)"
    ):
        mm.resolve(MemoryFault(module="", target="weight", word=9, bit=0))
    with pytest.raises(TorchFaultError, match="bit 64 is outside a 64-bit word"):
        mm.resolve(MemoryFault(module="", target="weight", word=0, bit=64))
    with pytest.raises(
        TorchFaultError,
        match="'adjacent_bits:65' spans 65 cells of a row but a row of this memory has 64 cells",
    ):
        mm.resolve(MemoryFault(0, 0, "adjacent_bits:65"))
    with pytest.raises(TorchFaultError, match="reaches row 4, column 64: outside the memory"):
        mm.resolve(MemoryFault(3, 63, "cluster"))
    with pytest.raises(TorchFaultError, match="Did you mean 'weight'"):
        mm.resolve(MemoryFault(module="", target="weigth", word=0, bit=0))
    with pytest.raises(TorchFaultError, match="pattern must be one of.*Did you mean 'cluster'"):
        MemoryFault(0, 0, "clustr")
    with pytest.raises(TorchFaultError, match="anchor as row and column, or as module"):
        MemoryFault(0, 0, module="", target="weight", word=0, bit=0)
    with pytest.raises(TorchFaultError, match="op must be one of"):
        MemoryFault(0, 0, op="flop")
    with pytest.raises(TorchFaultError, match="activations"):
        MemoryMap(nn.Linear(2, 2), MemoryLayout(64), kinds=("outputs", "weights"))
    with pytest.raises(TorchFaultError, match="frequency of 'single' must be a number >= 0"):
        PatternMix({"single": -1})


@pytest.mark.parametrize("order", ["row_major", "channels_last", "tiled"])
@pytest.mark.parametrize("interleave,row_words", [(1, 1), (2, 2), (4, 8)])
def test_every_element_bit_has_exactly_one_cell(order, interleave, row_words):
    """Exhaustive: the map from data cells to (element, bit) pairs is a bijection onto every
    bit of every element, and every physical (row, column) names one stored cell."""
    t = torch.randn(3, 5, 2, 2).to(torch.bfloat16)
    layout = MemoryLayout(72, None, order, "secded", interleave, row_words, (2, 3))
    mem = layout.bind(t)
    seen = {}
    for w in range(mem.n_words):
        for b in range(72):
            eb = mem.element_bits(w, b)
            if eb is not None:
                assert eb not in seen, (eb, seen.get(eb), (w, b))
                seen[eb] = (w, b)
            r, c = mem.cell_position(w, b)
            assert tuple(x.tolist() for x in mem.cell_word(r, c)) == (w, b)
    assert set(seen) == {(e, b) for e in range(t.numel()) for b in range(16)}
    cells = {(r, c) for r in range(mem.n_rows) for c in range(mem.columns)}
    words = [tuple(int(v) for v in mem.cell_word(r, c)) for r, c in cells]
    assert len({wb for wb in words if wb[0] >= 0}) == mem.n_words * 72
