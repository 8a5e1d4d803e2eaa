# SPDX-License-Identifier: MIT
"""Spatial-window geometry of the fast engine, on its own: every function against the whole-map
computation it stands for (pad the map, paste the window, slice; run the layer on the whole map).
Crops, pastes and regions are checked both ways they copy (run by run, one advanced index)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from torchfault.campaign._fast import _geometry
from torchfault.campaign._fast._geometry import (
    Window,
    crop,
    input_extent,
    output_span,
    paste,
    region,
    runs,
    union,
)


@pytest.fixture(params=[1, 2**62], ids=["by-runs", "one-index"])
def copy_way(request, monkeypatch):
    """Each way crops, pastes and regions copy: ``RUN_ELEMENTS`` so small that every copy goes
    run by run, or so large that none does."""
    monkeypatch.setattr(_geometry, "RUN_ELEMENTS", request.param)
    return request.param


def whole(golden: torch.Tensor, pos: torch.Tensor, win: Window) -> torch.Tensor:
    """Oracle: golden rows ``pos`` with each row's window written in, element by element."""
    out = golden[pos].clone()
    h, w = win.data.shape[2:]
    for r in range(pos.numel()):
        y, x = int(win.y0[r]), int(win.x0[r])
        out[r, :, y : y + h, x : x + w] = win.data[r]
    return out


def random_window(rng: random.Random, n: int, c: int, big: tuple[int, int], size=None) -> Window:
    """A window of ``n`` rows at random positions; rows come in runs at one position (the rows
    of one fault) about half the time."""
    h = size[0] if size else rng.randint(1, big[0])
    w = size[1] if size else rng.randint(1, big[1])
    y0 = [rng.randrange(big[0] - h + 1) for _ in range(n)]
    x0 = [rng.randrange(big[1] - w + 1) for _ in range(n)]
    for r in range(1, n):
        if rng.random() < 0.5:
            y0[r], x0[r] = y0[r - 1], x0[r - 1]
    return Window(torch.randn(n, c, h, w), torch.tensor(y0), torch.tensor(x0))


def test_runs_against_a_loop():
    rng = random.Random(3)
    for _ in range(30):
        n = rng.randint(1, 12)
        coords = [
            torch.tensor([rng.randint(0, 1) for _ in range(n)]) for _ in range(rng.randint(1, 3))
        ]
        got = runs(10**9, *coords)
        assert got is not None
        rows = [[int(c[r]) for c in coords] for r in range(n)]
        assert [r0 for r0, _, _ in got] == [r for r in range(n) if r == 0 or rows[r] != rows[r - 1]]
        assert got[-1][1] == n
        for r0, r1, at in got:
            assert all(rows[r] == at for r in range(r0, r1))
    # fewer elements per run than RUN_ELEMENTS: one advanced index
    many = torch.arange(8)
    assert runs(8 * _geometry.RUN_ELEMENTS, many) is not None
    assert runs(8 * _geometry.RUN_ELEMENTS - 1, many) is None
    assert runs(10**9, torch.zeros(0, dtype=torch.int64)) is None


def test_crop_and_paste_against_slicing(copy_way):
    g = torch.randn(5, 3, 7, 9)
    pos = torch.tensor([4, 0, 0, 2])
    y0, x0 = torch.tensor([0, 6, 3, 1]), torch.tensor([8, 0, 4, 2])
    got = crop(g, pos, y0, x0, 1, 1)
    for r in range(4):
        assert torch.equal(got[r], g[pos[r], :, y0[r] : y0[r] + 1, x0[r] : x0[r] + 1])
    win = Window(torch.randn(4, 3, 2, 3), torch.tensor([0, 5, 2, 1]), torch.tensor([6, 0, 3, 2]))
    full = g[pos].clone()
    assert paste(full, win, 3) is full
    want = whole(g, pos, win)
    assert torch.equal(full[:3], want[:3]) and torch.equal(full[3], g[pos[3]])  # row 3 untouched


@pytest.mark.parametrize("seed", range(20))
def test_crop_and_paste_random_runs(seed, copy_way):
    rng = random.Random(seed)
    big = (rng.randint(1, 9), rng.randint(1, 9))
    c, n = rng.randint(1, 4), rng.randint(1, 9)
    g = torch.randn(5, c, *big)
    pos = torch.tensor([rng.randrange(5) for _ in range(n)])
    win = random_window(rng, n, c, big)
    h, w = win.data.shape[2:]
    got = crop(g, pos, win.y0, win.x0, h, w)
    assert got.is_contiguous()
    for r in range(n):
        y, x = int(win.y0[r]), int(win.x0[r])
        assert torch.equal(got[r], g[pos[r], :, y : y + h, x : x + w])
    rows = rng.randint(0, n)
    full = g[pos].clone()
    paste(full, win, rows)
    want = whole(g, pos, win)
    assert torch.equal(full[:rows], want[:rows]) and torch.equal(full[rows:], g[pos[rows:]])


@pytest.mark.parametrize("seed", range(40))
def test_region_equals_padded_whole_map(seed, copy_way):
    """``region`` is the padded whole value (golden + window) cropped at each row's corner, in
    all three of its ways (inside the map, padded maps, shifted rows) and with windows partly
    outside the region (clipped)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    big = (rng.randint(3, 10), rng.randint(3, 10))
    c, n = rng.randint(1, 3), rng.randint(1, 6)
    g = torch.randn(4, c, *big)
    pos = torch.tensor([rng.randrange(4) for _ in range(n)])
    win = random_window(rng, n, c, big)
    pad = (rng.randint(0, 3), rng.randint(0, 3))
    fill = rng.choice([0.0, float("-inf")])
    size = (rng.randint(1, big[0] + 2 * pad[0]), rng.randint(1, big[1] + 2 * pad[1]))
    ry = torch.tensor([rng.randint(-pad[0], big[0] + pad[0] - size[0]) for _ in range(n)])
    rx = torch.tensor([rng.randint(-pad[1], big[1] + pad[1] - size[1]) for _ in range(n)])
    same = torch.tensor([r > 0 and bool(win.y0[r] == win.y0[r - 1]) for r in range(n)])
    for corner in (ry, rx):  # regions of rows at one window position: mostly at one corner
        if n > 1 and rng.random() < 0.7:
            corner[1:] = torch.where(same[1:], corner[:-1], corner[1:])
    got = region(win, g, pos, ry, rx, size, pad, fill)
    padded = F.pad(whole(g, pos, win), (pad[1], pad[1], pad[0], pad[0]), value=fill)
    for r in range(n):
        y, x = int(ry[r]) + pad[0], int(rx[r]) + pad[1]
        assert torch.equal(got[r], padded[r, :, y : y + size[0], x : x + size[1]]), (seed, r)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1), (3, 1, 2, 2), (5, 3, 2, 1), (2, 2, 0, 1)],
)
def test_output_span_and_extent_cover_every_changed_output(kernel, stride, padding, dilation):
    """A convolution of the region ``input_extent`` long at the span's first output, with no
    padding, equals the whole map's convolution on the span, and no output outside the span
    changes when the window changes."""
    torch.manual_seed(0)
    size = 13
    # small integers: every sum is exact, whatever algorithm the kernel picks
    weight = torch.randint(-3, 4, (2, 2, kernel, kernel)).float()
    x = torch.randint(-3, 4, (1, 2, size, size)).float()
    conv = lambda t: F.conv2d(t, weight, None, stride, padding, dilation)  # noqa: E731
    base = conv(x)
    out = base.shape[2]
    for start in range(size):
        for length in (1, 2, 3):
            if start + length > size:
                continue
            changed = x.clone()
            changed[:, :, start : start + length, :] += 50.0
            diff = (conv(changed) != base).any(dim=(0, 1, 3)).nonzero().flatten().tolist()
            lo, span = output_span(
                torch.tensor([start]), length, kernel, stride, padding, dilation, out
            )
            lo0 = int(lo[0])
            assert set(diff) <= set(range(lo0, lo0 + span)), (start, length, diff, lo0, span)
            assert lo0 >= 0 and lo0 + span <= out
            # the region read by the span, computed without padding, gives the same outputs
            extent = input_extent(span, kernel, stride, dilation)
            top = lo0 * stride - padding
            padded = F.pad(changed, (padding, padding, padding, padding))
            part = padded[:, :, top + padding : top + padding + extent, :]
            got = F.conv2d(part, weight, None, stride, 0, dilation)
            assert torch.equal(got, conv(changed)[:, :, lo0 : lo0 + span, :])


def test_union_holds_every_window_inside_the_map():
    rng = random.Random(5)
    for _ in range(50):
        big = (rng.randint(2, 9), rng.randint(2, 9))
        wins = [random_window(rng, 4, 1, big) for _ in range(rng.randint(1, 3))]
        y0, x0, h, w = union(wins, big)
        assert h <= big[0] and w <= big[1]
        assert bool((y0 >= 0).all() and (x0 >= 0).all())
        assert bool((y0 + h <= big[0]).all() and (x0 + w <= big[1]).all())
        for v in wins:
            assert bool((v.y0 >= y0).all() and (v.y0 + v.data.shape[2] <= y0 + h).all())
            assert bool((v.x0 >= x0).all() and (v.x0 + v.data.shape[3] <= x0 + w).all())


def test_window_select_and_same_place():
    win = Window(torch.randn(3, 2, 2, 2), torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]))
    part = win.select(torch.tensor([2, 0]))
    assert torch.equal(part.data, win.data[[2, 0]]) and part.y0.tolist() == [2, 0]
    assert win.same_place(Window(torch.zeros(3, 5, 2, 2), win.y0.clone(), win.x0.clone()))
    assert not win.same_place(Window(torch.zeros(3, 2, 1, 2), win.y0, win.x0))
    assert not win.same_place(part)
