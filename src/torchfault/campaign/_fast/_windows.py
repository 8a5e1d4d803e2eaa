# SPDX-License-Identifier: MIT
"""Windowed execution: the layers after an activation fault on a 4-d map, computed on the window
the fault can reach.

A single-element fault can only change, in each following convolution, pooling or element-wise
operation, a window of the map that grows with the kernel and shrinks with the stride. While the
nodes after the site are such operations (:func:`~._operations.window_kind`), every value is kept
as a :class:`~._geometry.Window`. A convolution or pooling is computed on the region its output
window reads (golden halo, the input's window pasted in, zero or -inf past the map's border) with
padding 0; an element-wise operation on the union of its operands' windows. Canary rows (golden,
no fault) ride along in every windowed computation and must reproduce the golden window word for
word; if they do not (CPU kernels choose algorithms by shape), that (node, shape) is remembered
as failed and computed whole from then on. At the first node that is not windowable, whose window
would cover more than ``window_area`` of its map, or whose canary fails, every live window
becomes its whole value again and the rest of the network runs over whole values.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from torchfault.campaign._fast._faults import activation_faults
from torchfault.campaign._fast._geometry import (
    Window,
    crop,
    input_extent,
    output_span,
    paste,
    region,
    union,
)
from torchfault.campaign._fast._notices import log
from torchfault.campaign._fast._planning import Site
from torchfault.campaign._fast._rows import CanaryRunner, Key, Rows, pad, run_leading, take
from torchfault.campaign._outcome import output_words_equal
from torchfault.faults import Fault

__all__ = ["WindowRunner"]


class WindowRunner(CanaryRunner):
    """Runs the leading nodes of a site's plan on windows, checked by canary rows.

    Args:
        values: the golden values of the model.
        options: the engine's options (``window_area``, ``cache_bytes``).
        stats: the engine's counters (``window_rows``, ``window_steps``, ``window_fallback``).
    """

    def need(self, site: Site) -> set[fx.Node]:
        """The golden values the windowed computation of ``site`` reads: its window nodes, as many
        as fit in half the cache budget (the computation goes on over whole maps after them)."""
        if site.window_need is None:
            v = self.values
            rows = max(min(v.block, v.inputs.shape[0]), v.min_rows)
            budget, total, keep = self.options.cache_bytes // 2, 0, {}
            for node, kind in site.window_kinds.items():
                total += v.row_bytes.get(node, 0) * rows
                if total > budget:
                    break
                keep[node] = kind
            site.window_kinds = keep
            site.window_need = set(keep)
        return site.window_need

    def canaries(self, n: int) -> int:
        """Canary rows after ``n`` real rows: at least one, at least ``min_rows`` rows in all, and
        a multiple of 8 rows in all (fewer distinct shapes: fewer kernels for oneDNN to build)."""
        k = max(1, self.values.min_rows - n)
        return k + (-(n + k)) % 8

    def start(
        self,
        site: Site,
        faults: list[Fault],
        spans: list[tuple[int, int]],
        golden: dict[fx.Node, Any],
        real: torch.Tensor,
        block: int,
    ) -> tuple[Rows, Any] | None:
        """Window mode for an activation site: each row's value is the 1x1 window (all channels)
        at its fault's position; canary rows (golden, no fault) follow the real rows. Returns the
        rows and, per real row, whether the fault kept the word (``None``: the site does not
        run on windows)."""
        g = golden.get(site.node)
        if (
            not isinstance(g, torch.Tensor)
            or g.dim() != 4
            or not g.is_floating_point()
            or not site.window_kinds
        ):
            return None
        _, c, h, w = g.shape
        n = int(real.numel())
        ys = torch.empty(n, dtype=torch.int64)
        xs = torch.empty(n, dtype=torch.int64)
        channels = []
        for f, (r0, r1) in zip(faults, spans):
            if len(f.index) != 3:
                return None
            ys[r0:r1] = int(f.index[1]) % h
            xs[r0:r1] = int(f.index[2]) % w
            channels.append(int(f.index[0]) % c)
        order = torch.cat([torch.arange(n), torch.zeros(self.canaries(n), dtype=torch.int64)])
        pos, y0, x0 = real[order], ys[order], xs[order]
        pixel = g[pos, :, y0, x0].reshape(order.numel(), c, 1, 1)
        value, same = activation_faults(pixel, faults, spans, inner=channels)
        rows = Rows(block, pos, n, {site.node: Window(value, y0, x0)}, torch.arange(n))
        self.stats["window_rows"] += n
        return rows, same

    def run(self, site: Site, rows: Rows, golden: dict[fx.Node, Any], drop: bool) -> int:
        """Run the leading nodes of ``site.order`` on windows while they can be; then turn every
        live window into the whole value (full mode) and return the step to go on from."""
        i = run_leading(site, rows, golden, drop, self.step, self.drop_masked)
        if rows.n > 0:
            min_rows = self.values.min_rows
            for k, v in list(rows.env.items()):
                if isinstance(v, Window):
                    whole = take(golden[k], pad(rows.pos[: rows.n], min_rows))
                    rows.env[k] = paste(whole, v, rows.n)
            rows.pos = pad(rows.pos[: rows.n], min_rows)
        return i

    def step(
        self, site: Site, i: int, node: fx.Node, rows: Rows, golden: dict[fx.Node, Any]
    ) -> Window | None:
        """``node`` (step ``i`` of the site's plan) computed on windows, checked on the canary
        rows; ``None``: compute it whole."""
        kind = site.window_kinds.get(node)
        g_out = golden.get(node)
        if kind is None or not isinstance(g_out, torch.Tensor) or g_out.dim() != 4:
            return None
        out_h, out_w = g_out.shape[2:]
        if kind == "ew":
            return self.elementwise(site, i, node, rows, golden, g_out)
        if node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            return None
        a = node.args[0]
        v = rows.env.get(a)
        if not isinstance(v, Window):
            return None
        m: Any = self.prog.callee_of(node)
        if kind == "unary":
            if g_out.shape != golden[a].shape:
                return None
            key = (node.name, tuple(v.data.shape))
            if key in self.failed:
                return None
            data = v.data
            if getattr(m, "inplace", False):
                if site.last.get(a, -2) != i:
                    return None  # its input is read again: keep the model's aliasing, whole
                data = data.clone()
            return self.canary(key, Window(m(data), v.y0, v.x0), g_out, rows)
        # convolution or pooling: the output window, then the input region it reads
        kh, kw = _pair(m.kernel_size)
        sh, sw = _pair(m.stride)
        ph, pw = _pair(m.padding)
        dh, dw = _pair(getattr(m, "dilation", 1))
        h, w = v.data.shape[2:]
        oy, ho = output_span(v.y0, h, kh, sh, ph, dh, out_h)
        ox, wo = output_span(v.x0, w, kw, sw, pw, dw, out_w)
        if ho * wo > self.options.window_area * out_h * out_w:
            return None
        size = (input_extent(ho, kh, sh, dh), input_extent(wo, kw, sw, dw))
        key = (node.name, (v.data.shape[0], v.data.shape[1], *size))
        if key in self.failed:
            return None
        fill = float("-inf") if kind == "maxpool" else 0.0
        reg = region(v, golden[a], rows.pos, oy * sh - ph, ox * sw - pw, size, (ph, pw), fill)
        if kind == "conv":
            out = F.conv2d(reg, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        elif kind == "maxpool":
            out = F.max_pool2d(reg, m.kernel_size, m.stride, 0, m.dilation)
        else:
            out = F.avg_pool2d(
                reg, m.kernel_size, m.stride, 0, False, m.count_include_pad, m.divisor_override
            )
        if tuple(out.shape[2:]) != (ho, wo):
            return None
        return self.canary(key, Window(out, oy, ox), g_out, rows)

    def elementwise(
        self,
        site: Site,
        i: int,
        node: fx.Node,
        rows: Rows,
        golden: dict[fx.Node, Any],
        g_out: torch.Tensor,
    ) -> Window | None:
        """An element-wise function or method on the union of its operands' windows."""
        prog, constants = self.prog, self.values.constants
        wins: dict[fx.Node, Window] = {}
        whole: list[fx.Node] = []  # golden operands (no window)
        for a in node.all_input_nodes:
            if a in rows.env:
                v = rows.env[a]
                if not isinstance(v, Window) or golden[a].shape != g_out.shape:
                    return None
                wins[a] = v
            elif a in prog.dynamic:
                ga = golden.get(a)
                if not isinstance(ga, torch.Tensor) or ga.shape != g_out.shape:
                    return None
                whole.append(a)
            elif isinstance(constants.get(a), torch.Tensor):
                return None  # a constant tensor may broadcast: compute it whole
        if not wins:
            return None
        inplace = node.kwargs.get("inplace") is True or any(x is True for x in node.args)
        if inplace and any(site.last.get(a, -2) != i for a in wins):
            return None
        first = next(iter(wins.values()))
        if all(first.same_place(v) for v in wins.values()):
            y0, x0 = first.y0, first.x0
            h, w = first.data.shape[2:]
        else:
            out_h, out_w = g_out.shape[2:]
            y0, x0, h, w = union(list(wins.values()), (out_h, out_w))
            if h * w > self.options.window_area * out_h * out_w:
                return None
        key = (node.name, (first.data.shape[0], first.data.shape[1], h, w))
        if key in self.failed:
            return None
        vals: dict[fx.Node, Any] = {}
        for a, v in wins.items():
            if v.data.shape[2:] == (h, w) and torch.equal(v.y0, y0) and torch.equal(v.x0, x0):
                vals[a] = v.data.clone() if inplace else v.data
            else:
                vals[a] = region(v, golden[a], rows.pos, y0, x0, (h, w))
        for a in whole:
            vals[a] = crop(golden[a], rows.pos, y0, x0, h, w)
        out = prog.run_node(node, {}, lambda a: vals[a] if a in vals else constants[a])
        if not isinstance(out, torch.Tensor) or out.shape != first.data.shape[:2] + (h, w):
            return None
        return self.canary(key, Window(out, y0, x0), g_out, rows)

    def canary(self, key: Key, out: Window, g_out: torch.Tensor, rows: Rows) -> Window | None:
        """``out`` if its canary rows equal golden bit for bit; else remember ``key`` as failed."""
        n = rows.n
        h, w = out.data.shape[2:]
        # the canary rows are copies of one row (one input, one window position)
        p, y, x = int(rows.pos[n]), int(out.y0[n]), int(out.x0[n])
        want = g_out[p, :, y : y + h, x : x + w].expand(out.data.shape[0] - n, -1, -1, -1)
        if self.canary_ok(key, want, out.data[n:]):
            self.stats["window_steps"] += 1
            return out
        self.failed.add(key)
        self.stats["window_fallback"] += 1
        log.debug("fast engine: windowed %s %s differs from golden; computing it whole", *key)
        return None

    def canary_ok(self, key: Key, golden: torch.Tensor, computed: torch.Tensor) -> bool:
        """Do the canary rows of the windowed computation ``key`` equal golden, word for word?"""
        return bool(output_words_equal(golden, computed).all())

    def drop_masked(
        self, rows: Rows, node: fx.Node, golden: dict[fx.Node, Any], same: Any = None
    ) -> None:
        """Window mode: drop the real rows whose window at ``node`` equals golden; keep canaries."""
        n, v = rows.n, rows.env[node]
        if same is None:
            h, w = v.data.shape[2:]
            g = crop(golden[node], rows.pos[:n], v.y0[:n], v.x0[:n], h, w)
            same = output_words_equal(g, v.data[:n])
        keep = rows.keep(same)
        if keep is None or rows.n == 0:
            return
        canary = torch.full((self.canaries(rows.n),), n, dtype=torch.int64)
        idx = torch.cat([keep, canary])
        rows.pos = rows.pos[idx]
        for k, x in list(rows.env.items()):
            if isinstance(x, Window):
                rows.env[k] = x.select(idx)
