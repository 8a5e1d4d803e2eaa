# SPDX-License-Identifier: MIT
"""Spatial-window geometry: where a single-element change of a 4-d map can reach, and how the
values around it are cropped, padded and pasted.

A :class:`Window` is a 4-d value that differs from a golden one only inside a rectangle, per row.
These are pure tensor functions (no graph, no engine): :mod:`._windows` runs layers on them, and
``tests/campaign/test_fast_geometry.py`` checks them against whole-map computations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Window", "crop", "input_extent", "output_span", "paste", "region", "union"]


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
    return value.unfold(2, h, 1).unfold(3, w, 1)[pos, :, y0, x0]


def paste(full: torch.Tensor, window: Window, rows: int) -> torch.Tensor:
    """Write the first ``rows`` rows of ``window`` into the same rows of ``full`` (in place)."""
    h, w = window.data.shape[2:]
    index = (torch.arange(rows), slice(None), window.y0[:rows], window.x0[:rows])
    full.unfold(2, h, 1).unfold(3, w, 1)[index] = window.data[:rows]
    return full


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
    n = reg.shape[0]
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
    lo = torch.div(start + p - d * (k - 1) + s - 1, s, rounding_mode="floor").clamp(0, size - 1)
    hi = torch.div(start + length - 1 + p, s, rounding_mode="floor").clamp(0, size - 1)
    span = int((torch.maximum(hi, lo) - lo).max()) + 1
    return lo.clamp(max=size - span), span


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
