# SPDX-License-Identifier: MIT
"""Spatial-window geometry: where a single-element change of a 4-d map can reach, and how the
values around it are cropped, padded and pasted.

A :class:`Window` is a 4-d value that differs from a golden one only inside a rectangle, per row.
These are pure tensor functions (no graph, no engine): :mod:`._windows` runs layers on them, and
``tests/campaign/test_fast_geometry.py`` checks them against whole-map computations.

Rows come in runs that share a position (the rows of one fault, the canary rows): where a run
holds enough elements (:data:`RUN_ELEMENTS`), a crop, paste or region is a few slice copies per
run (:func:`runs`) instead of one advanced index over every element, which costs several times
more per element. Both give the same values (copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "RUN_ELEMENTS",
    "Window",
    "crop",
    "input_extent",
    "output_span",
    "paste",
    "region",
    "runs",
    "union",
]

#: fewest elements per run of rows for which the copies go run by run (slices); below it, one
#: advanced index over all rows (a call per run costs about as much as this many elements)
RUN_ELEMENTS = 2048


@dataclass(eq=False)
class Window:
    """A 4-d value that differs from golden only inside a window: per row, ``data`` (rows, C, h, w)
    is the value at rows ``y0 .. y0+h-1`` and columns ``x0 .. x0+w-1`` (inside the map), and the
    golden value holds everywhere else."""

    data: torch.Tensor
    y0: torch.Tensor
    x0: torch.Tensor

    def same_place(self, other: Window) -> bool:
        """Whether both windows have the same size and position in every row."""
        return (
            self.data.shape[2:] == other.data.shape[2:]
            and torch.equal(self.y0, other.y0)
            and torch.equal(self.x0, other.x0)
        )

    def select(self, idx: torch.Tensor) -> Window:
        """The rows ``idx`` of the window."""
        return Window(self.data[idx], self.y0[idx], self.x0[idx])


def crop(
    value: torch.Tensor, pos: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Per row r, ``value[pos[r], :, y0[r]:y0[r]+h, x0[r]:x0[r]+w]``, stacked (inside the map).

    Example:
        >>> v = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> crop(v, torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), 2, 2).flatten().tolist()
        [6.0, 7.0, 10.0, 11.0]
    """
    n, c = pos.numel(), value.shape[1]
    parts = runs(n * c * h * w, y0, x0) if value.is_contiguous() else None
    if parts is None:
        return value.unfold(2, h, 1).unfold(3, w, 1)[pos, :, y0, x0]
    out = value.new_empty((n, c, h, w))
    for r0, r1, (y, x) in parts:
        torch.index_select(value[:, :, y : y + h, x : x + w], 0, pos[r0:r1], out=out[r0:r1])
    return out


def paste(full: torch.Tensor, window: Window, rows: int) -> torch.Tensor:
    """Write the first ``rows`` rows of ``window`` into the same rows of ``full`` (in place)."""
    h, w = window.data.shape[2:]
    y0, x0 = window.y0[:rows], window.x0[:rows]
    parts = runs(rows * window.data.shape[1] * h * w, y0, x0)
    if parts is None:
        full.unfold(2, h, 1).unfold(3, w, 1)[torch.arange(rows), :, y0, x0] = window.data[:rows]
    else:
        for r0, r1, (y, x) in parts:
            full[r0:r1, :, y : y + h, x : x + w] = window.data[r0:r1]
    return full


def runs(elements: int, *coords: torch.Tensor) -> list[tuple[int, int, list[int]]] | None:
    """The runs of consecutive rows whose ``coords`` (one value per row each) are all equal:
    ``(first row, end row, their coordinates)``; ``None`` when a copy of ``elements`` elements
    over these rows is better done by one advanced index (fewer than :data:`RUN_ELEMENTS`
    elements per run).

    Example:
        >>> runs(10**6, torch.tensor([2, 2, 5, 2]), torch.tensor([0, 0, 1, 1]))
        [(0, 2, [2, 0]), (2, 3, [5, 1]), (3, 4, [2, 1])]
        >>> runs(100, torch.tensor([2, 2])) is None
        True
    """
    n = coords[0].numel()
    if not n or elements < RUN_ELEMENTS:
        return None
    key = torch.stack(coords, 1)
    starts = ((key[1:] != key[:-1]).any(1).nonzero().flatten() + 1).tolist()
    if (len(starts) + 1) * RUN_ELEMENTS > elements:
        return None
    first = [0, *starts]
    return list(zip(first, [*starts, n], key[first].tolist()))


def region(
    window: Window,
    golden: torch.Tensor,
    pos: torch.Tensor,
    ry: torch.Tensor,
    rx: torch.Tensor,
    size: tuple[int, int],
    pad: tuple[int, int] = (0, 0),
    fill: float = 0.0,
) -> torch.Tensor:
    """The value ``window`` over ``golden`` (rows ``pos``), on the region of ``size`` whose top-left
    corner is at map row ``ry``, column ``rx`` of each row (``fill`` outside the map, which a
    region overhangs by at most ``pad``).

    Equals, row by row, ``F.pad(value, pad, value=fill)`` cropped at ``(ry + pad, rx + pad)``,
    where ``value`` is golden with the window pasted in.
    """
    g = golden
    lh, lw = size
    big_h, big_w = g.shape[2:]
    n, c = pos.numel(), g.shape[1]
    if g.is_contiguous():
        parts = runs(n * c * lh * lw, ry, rx, window.y0, window.x0)
        if parts is not None:
            return _region_runs(window, g, pos, parts, size, fill)
    cy, cx = ry.clamp(0, max(big_h - lh, 0)), rx.clamp(0, max(big_w - lw, 0))
    shifts = ((2, ry - cy, lh), (3, rx - cx, lw))
    if lh <= big_h and lw <= big_w and not any(bool((d != 0).any()) for _, d, _ in shifts):
        reg = crop(g, pos, cy, cx, lh, lw)  # no row's region overhangs the map
    else:
        rows, inverse = torch.unique(pos, return_inverse=True)
        padded = rows.numel() * (big_h + 2 * pad[0]) * (big_w + 2 * pad[1])
        if lh > big_h or lw > big_w or padded <= 2 * inverse.numel() * lh * lw:
            # pad the maps of the inputs these rows come from
            g = F.pad(g.index_select(0, rows), (pad[1], pad[1], pad[0], pad[0]), value=fill)
            reg = crop(g, inverse, ry + pad[0], rx + pad[1], lh, lw)
        else:  # crop inside the map, then shift the rows that overhang it, fill the overhang
            reg = crop(g, pos, cy, cx, lh, lw)
            for dim, shift, length in shifts:
                if bool((shift != 0).any()):
                    at = torch.arange(length)[None, :] + shift[:, None]
                    out = (at < 0) | (at >= length)
                    at = at.clamp(0, length - 1)
                    if dim == 2:
                        at, out = at[:, None, :, None], out[:, None, :, None]
                    else:
                        at, out = at[:, None, None, :], out[:, None, None, :]
                    reg = reg.gather(dim, at.expand(reg.shape)).masked_fill_(out, fill)
    h, w = window.data.shape[2:]
    dy, dx = window.y0 - ry, window.x0 - rx
    if (
        h <= lh
        and w <= lw
        and bool(((dy >= 0) & (dy <= lh - h) & (dx >= 0) & (dx <= lw - w)).all())
    ):
        reg.unfold(2, h, 1).unfold(3, w, 1)[torch.arange(n), :, dy, dx] = window.data
        return reg
    # part of some window lies outside the region (it reaches nothing there): clip per row
    iy = torch.arange(lh)[None, :] - dy[:, None]
    ix = torch.arange(lw)[None, :] - dx[:, None]
    inside = ((iy >= 0) & (iy < h))[:, None, :, None] & ((ix >= 0) & (ix < w))[:, None, None, :]
    vals = window.data[
        torch.arange(n)[:, None, None, None],
        torch.arange(window.data.shape[1])[None, :, None, None],
        iy.clamp(0, h - 1)[:, None, :, None],
        ix.clamp(0, w - 1)[:, None, None, :],
    ]
    return torch.where(inside, vals, reg)


def _region_runs(
    window: Window,
    golden: torch.Tensor,
    pos: torch.Tensor,
    parts: list[tuple[int, int, list[int]]],
    size: tuple[int, int],
    fill: float,
) -> torch.Tensor:
    """:func:`region`, run by run (``parts``: the runs of equal region corner and window
    position, :func:`runs`): the part of the region inside the map copied from golden, ``fill``
    around it, the part of the window inside the region written over it."""
    lh, lw = size
    big_h, big_w = golden.shape[2:]
    h, w = window.data.shape[2:]
    out = golden.new_empty((pos.numel(), golden.shape[1], lh, lw))
    for r0, r1, (y, x, wy, wx) in parts:
        o = out[r0:r1]
        y_lo, y_hi, x_lo, x_hi = max(y, 0), min(y + lh, big_h), max(x, 0), min(x + lw, big_w)
        src = golden[:, :, y_lo:y_hi, x_lo:x_hi]
        if (y_lo, y_hi, x_lo, x_hi) == (y, y + lh, x, x + lw):
            torch.index_select(src, 0, pos[r0:r1], out=o)
        else:  # the region overhangs the map
            o.fill_(fill)
            if y_lo < y_hi and x_lo < x_hi:
                o[:, :, y_lo - y : y_hi - y, x_lo - x : x_hi - x] = src.index_select(0, pos[r0:r1])
        a_lo, a_hi, b_lo, b_hi = max(wy, y), min(wy + h, y + lh), max(wx, x), min(wx + w, x + lw)
        if a_lo < a_hi and b_lo < b_hi:
            o[:, :, a_lo - y : a_hi - y, b_lo - x : b_hi - x] = window.data[
                r0:r1, :, a_lo - wy : a_hi - wy, b_lo - wx : b_hi - wx
            ]
    return out


def output_span(
    start: torch.Tensor,
    length: int,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    size: int,
) -> tuple[torch.Tensor, int]:
    """Along one axis of a convolution or pooling with an output of ``size``: the first output
    position and the length (the same for every row) of the outputs that read the input span
    ``start .. start+length-1``; the span is moved left where it would pass the map's end.

    Example:
        >>> lo, n = output_span(torch.tensor([0, 5, 9]), 1, 3, 1, 1, 1, 10)
        >>> lo.tolist(), n
        ([0, 4, 7], 3)
    """
    k, s, p, d = kernel, stride, padding, dilation
    lo = (start + (p - d * (k - 1) + s - 1)).div_(s, rounding_mode="floor").clamp_(0, size - 1)
    hi = (start + (length - 1 + p)).div_(s, rounding_mode="floor").clamp_(0, size - 1)
    span = max(int((hi - lo).max()), 0) + 1
    return lo.clamp_(max=size - span), span


def input_extent(length: int, kernel: int, stride: int, dilation: int) -> int:
    """How many input positions ``length`` consecutive outputs read along one axis.

    Example:
        >>> input_extent(3, kernel=3, stride=2, dilation=1)
        7
    """
    return (length - 1) * stride + dilation * (kernel - 1) + 1


def union(
    windows: list[Window], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per row, the smallest rectangle holding every window (the same height and width for every
    row, moved inside a map of ``size``): ``(y0, x0, h, w)``."""
    out_h, out_w = size
    lo_y = torch.stack([v.y0 for v in windows]).amin(0)
    lo_x = torch.stack([v.x0 for v in windows]).amin(0)
    hi_y = torch.stack([v.y0 + v.data.shape[2] for v in windows]).amax(0)
    hi_x = torch.stack([v.x0 + v.data.shape[3] for v in windows]).amax(0)
    h, w = int((hi_y - lo_y).max()), int((hi_x - lo_x).max())
    return lo_y.clamp(max=out_h - h), lo_x.clamp(max=out_w - w), h, w
