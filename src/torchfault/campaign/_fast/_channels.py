# SPDX-License-Identifier: MIT
"""Channel windows: the per-channel layers after a convolution weight fault, computed on the one
output channel the fault changes.

A fault in a convolution's weight or bias changes one output channel of the convolution (its
stacked single-channel computation, :func:`~._faults.channel_faults`). The layers that follow and
compute each channel from the same channel only (:func:`~._operations.channel_kind`: batch norm in
eval mode, element-wise modules such as ReLU, element-wise functions such as a residual ``+`` of a
golden shortcut) keep the change in that channel. While the nodes after the site are such
layers, every changed value is kept as a :class:`Channels` value: per row, the plane of its one
changed channel and the channel's number; every other channel is golden by construction (nothing
computes it from a changed value). A row whose plane is golden again at a cut point is golden
everywhere there, so masked rows are dropped by comparing that plane alone. At the first node
that mixes channels (the next convolution, a linear layer, a flatten) or is not covered, every
live value becomes its whole value again: the rows' golden values with the planes pasted in.

What is exact, and why. A channel's plane is computed by the same kernel as in the whole
value: batch norm in eval mode is one affine map per channel, computed plane by plane (here one
call per channel, with that channel's statistics and parameters); an element-wise kernel
computes every element from the same elements of its operands. Two checks guard the kernel
paths: planes must fill whole ``row_alignment`` bytes (``FastOptions.row_alignment``), so each
element sits on the same lanes of a vectorised kernel as in the whole value, and golden canary
rows ride along in every computation (one per channel of the batch: the golden plane of that
channel) and must reproduce the golden plane word for word. A computation whose canaries fail is
remembered (by node and shape) and computed whole from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from torchfault.campaign._fast._faults import channel_faults
from torchfault.campaign._fast._notices import log
from torchfault.campaign._fast._planning import Site
from torchfault.campaign._fast._rows import CanaryRunner, Key, Rows, pad, run_leading, take
from torchfault.campaign._outcome import output_words_equal
from torchfault.faults import Fault

__all__ = ["ChannelRunner", "Channels", "plane"]


@dataclass(eq=False)
class Channels:
    """A value (rows, C, ...) that differs from golden in one channel per row: ``data``
    (rows, 1, ...) is that channel's plane in each row and ``ch`` (rows,) its number; the golden
    value holds in every other channel."""

    data: torch.Tensor
    ch: torch.Tensor

    def select(self, idx: torch.Tensor) -> Channels:
        """The rows ``idx`` of the value."""
        return Channels(self.data[idx], self.ch[idx])


def plane(value: torch.Tensor, pos: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
    """Per row r, channel ``ch[r]`` of row ``pos[r]`` of ``value``, stacked as (rows, 1, ...).

    Example:
        >>> v = torch.arange(12.0).reshape(2, 3, 2)
        >>> plane(v, torch.tensor([1, 0]), torch.tensor([2, 0])).flatten().tolist()
        [10.0, 11.0, 0.0, 1.0]
    """
    return value[pos, ch].unsqueeze(1)


class ChannelRunner(CanaryRunner):
    """Runs the leading per-channel nodes of a convolution weight site's plan on channel windows,
    checked by canary rows.

    Args:
        values: the golden values of the model.
        options: the engine's options (``row_alignment``).
        stats: the engine's counters (``channel_rows``, ``channel_steps``, ``channel_fallback``).
    """

    def usable(self, site: Site, golden: dict[fx.Node, Any]) -> bool:
        """Whether rows of ``site`` may start on channel windows: its per-channel nodes' golden
        values are cached, contiguous, in a floating-point format, and their planes fill whole
        ``row_alignment`` bytes."""
        g = golden.get(site.node)
        if not site.channel_kinds or not isinstance(g, torch.Tensor) or g.dim() < 3:
            return False
        if not g.is_floating_point() or not g.is_contiguous():
            return False
        plane_bytes = g[0, 0].numel() * g.element_size()
        return plane_bytes % self.options.row_alignment == 0 and all(
            n in golden for n in site.channel_kinds
        )

    def start(
        self,
        site: Site,
        faults: list[Fault],
        spans: list[tuple[int, int]],
        golden: dict[fx.Node, Any],
        real: torch.Tensor,
        block: int,
    ) -> tuple[Rows, torch.Tensor] | None:
        """Channel mode for a convolution weight site: each row's site value is its fault's one
        changed channel; one canary row per channel of the batch (golden, no fault) follows the
        real rows. Returns the rows and, per real row, whether the site value is golden
        (``None``: the batch does not run on channel windows)."""
        g = golden[site.node]
        made = channel_faults(site, faults, spans, self.values, golden, real)
        if made is None:
            return None
        data, ch = made
        n = int(real.numel())
        same = output_words_equal(plane(g, real, ch), data)
        # canaries: per channel, the golden plane of the first row that has it
        first: dict[int, int] = {}
        for r, c in enumerate(ch.tolist()):
            first.setdefault(c, r)
        at = torch.tensor(list(first.values()), dtype=torch.int64)
        pos = torch.cat([real, real[at]])
        ch = torch.cat([ch, ch[at]])
        data = torch.cat([data, plane(g, real[at], ch[n:])])
        rows = Rows(block, pos, n, {site.node: Channels(data, ch)}, torch.arange(n))
        self.stats["channel_rows"] += n
        return rows, same

    def run(self, site: Site, rows: Rows, golden: dict[fx.Node, Any], drop: bool) -> int:
        """Run the leading nodes of ``site.order`` on channel windows while they can be; then
        turn every live channel window into the whole value (full mode) and return the step to
        go on from."""
        i = run_leading(site, rows, golden, drop, self.step, self.drop_masked)
        if rows.n > 0:
            n, min_rows = rows.n, self.values.min_rows
            for k, v in list(rows.env.items()):
                if isinstance(v, Channels):
                    whole = take(golden[k], pad(rows.pos[:n], min_rows))
                    whole[torch.arange(n), v.ch[:n]] = v.data[:n, 0]
                    rows.env[k] = whole
            rows.pos = pad(rows.pos[:n], min_rows)
        return i

    def step(
        self, site: Site, i: int, node: fx.Node, rows: Rows, golden: dict[fx.Node, Any]
    ) -> Channels | None:
        """``node`` (step ``i`` of the site's plan) computed on channel windows, checked on the
        canary rows; ``None``: compute it whole."""
        kind = site.channel_kinds.get(node)
        g_out = golden.get(node)
        if kind is None or not isinstance(g_out, torch.Tensor) or not g_out.is_contiguous():
            return None
        if kind == "ew":
            return self.elementwise(site, i, node, rows, golden, g_out)
        if node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            return None
        a = node.args[0]
        v = rows.env.get(a)
        if not isinstance(v, Channels) or golden[a].shape != g_out.shape:
            return None
        key = (node.name, tuple(v.data.shape))
        if key in self.failed:
            return None
        m: Any = self.prog.callee_of(node)
        if kind == "norm":
            out = torch.empty_like(v.data)
            for c in torch.unique(v.ch).tolist():
                at = (v.ch == c).nonzero().flatten()
                out.index_copy_(0, at, self._norm(m, v.data.index_select(0, at), c))
        else:
            data = v.data
            if getattr(m, "inplace", False):
                if site.last.get(a, -2) != i:
                    return None  # its input is read again: keep the model's aliasing, whole
                data = data.clone()
            out = m(data)
        return self.canary(key, Channels(out, v.ch), g_out, rows)

    @staticmethod
    def _norm(m: Any, x: torch.Tensor, c: int) -> torch.Tensor:
        """Batch norm ``m`` in eval mode (as its ``forward`` calls it) on planes ``x`` of
        channel ``c``, with that channel's statistics and parameters."""
        one = slice(c, c + 1)
        w = m.weight[one] if m.weight is not None else None
        b = m.bias[one] if m.bias is not None else None
        return F.batch_norm(x, m.running_mean[one], m.running_var[one], w, b, False, 0.0, m.eps)

    def elementwise(
        self,
        site: Site,
        i: int,
        node: fx.Node,
        rows: Rows,
        golden: dict[fx.Node, Any],
        g_out: torch.Tensor,
    ) -> Channels | None:
        """An element-wise function or method on channel windows: its changed operands' planes
        and the same channel of its golden operands (of the output's shape)."""
        prog, constants = self.prog, self.values.constants
        vals: dict[fx.Node, Any] = {}
        first: Channels | None = None
        for a in node.all_input_nodes:
            if a in rows.env:
                v = rows.env[a]
                if not isinstance(v, Channels) or golden[a].shape != g_out.shape:
                    return None
                if first is None:
                    first = v
                elif not torch.equal(v.ch, first.ch):
                    return None
                vals[a] = v
            elif a in prog.dynamic:
                ga = golden.get(a)
                if not isinstance(ga, torch.Tensor) or ga.shape != g_out.shape:
                    return None
                vals[a] = None  # its planes, below
            elif isinstance(constants.get(a), torch.Tensor):
                return None  # a constant tensor may broadcast over channels: compute it whole
        if first is None:
            return None
        inplace = node.kwargs.get("inplace") is True or any(x is True for x in node.args)
        if inplace and any(site.last.get(a, -2) != i for a in vals if a in rows.env):
            return None
        key = (node.name, tuple(first.data.shape))
        if key in self.failed:
            return None
        for a in list(vals):
            v = vals[a]
            if v is None:
                vals[a] = plane(golden[a], rows.pos, first.ch)
            else:
                vals[a] = v.data.clone() if inplace else v.data
        out = prog.run_node(node, {}, lambda a: vals[a] if a in vals else constants[a])
        if not isinstance(out, torch.Tensor) or out.shape != first.data.shape:
            return None
        return self.canary(key, Channels(out, first.ch), g_out, rows)

    def canary(self, key: Key, out: Channels, g_out: torch.Tensor, rows: Rows) -> Channels | None:
        """``out`` if its canary rows equal golden bit for bit; else remember ``key`` as failed."""
        n = rows.n
        want = plane(g_out, rows.pos[n:], out.ch[n:])
        if bool(output_words_equal(want, out.data[n:]).all()):
            self.stats["channel_steps"] += 1
            return out
        self.failed.add(key)
        self.stats["channel_fallback"] += 1
        log.debug(
            "fast engine: %s on channel windows %s differs from golden; computing it whole", *key
        )
        return None

    def drop_masked(
        self, rows: Rows, node: fx.Node, golden: dict[fx.Node, Any], same: Any = None
    ) -> None:
        """Channel mode: drop the real rows whose plane at ``node`` equals golden (the row is then
        golden in every channel); keep the canaries."""
        n, v = rows.n, rows.env[node]
        if same is None:
            same = output_words_equal(plane(golden[node], rows.pos[:n], v.ch[:n]), v.data[:n])
        keep = rows.keep(same)
        if keep is None or rows.n == 0:
            return
        idx = torch.cat([keep, torch.arange(n, int(v.ch.numel()), dtype=torch.int64)])
        rows.pos = rows.pos[idx]
        for k, x in list(rows.env.items()):
            if isinstance(x, Channels):
                rows.env[k] = x.select(idx)
