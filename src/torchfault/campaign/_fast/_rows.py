# SPDX-License-Identifier: MIT
"""Row batching: one faulty run is a *row* (fault, input); rows of one site share an execution.

A batch holds up to ``batch_size`` rows, the rows of one fault together. Every execution has at
least ``min_rows`` rows (padded with copies of the first one), as every pass of every engine has.
While the rest of the network runs, :class:`Rows` holds the live rows and their values; rows that
are golden again at a cut point are dropped as masked (:func:`drop_masked`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn

from torchfault.campaign._engine import MeasuredRun, RunTask, take_golden
from torchfault.campaign._fast._operations import hooked
from torchfault.campaign._fast._planning import Site, Unsupported, unflatten_output
from torchfault.campaign._outcome import (
    OUTCOMES,
    Criterion,
    classify,
    evaluate,
    output_words_equal,
)
from torchfault.faults import Fault
from torchfault.store import RunRecord

if TYPE_CHECKING:  # _golden imports this module
    from torchfault.campaign._fast._golden import GoldenValues
    from torchfault.campaign._fast._options import FastOptions

__all__ = [
    "CheckTally",
    "Rows",
    "batches",
    "drop_masked",
    "fault_spans",
    "general_records",
    "in_parts",
    "in_place",
    "pad",
    "records",
    "run_leading",
    "take",
]

#: a row: (task number, input number)
Row = tuple[int, int]
#: finished rows of one batch: (rows, their outputs; ``None``: masked, seconds per row)
Done = tuple[list[Row], torch.Tensor | None, float]


def take(v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``pos`` of ``v``, in ``v``'s memory layout (channels-last and permuted values keep
    their strides, so kernels take the same path as on the whole value)."""
    return v.index_select(0, pos) if v.is_contiguous() else v[pos]


def pad(idx: torch.Tensor, min_rows: int) -> torch.Tensor:
    """``idx`` padded with copies of its first entry to ``min_rows`` entries."""
    if idx.numel() >= min_rows:
        return idx
    return torch.cat([idx, idx[:1].expand(min_rows - idx.numel())])


@dataclass(eq=False)
class Rows:
    """The rows of one execution of "the rest of the network" and their live values.

    In full mode, ``pos`` holds the block positions of the ``n`` real rows, padded to
    ``min_rows``; in window mode (the site value is a window), the ``n`` real rows are
    followed by canary rows (golden values, no fault) that check every windowed computation;
    they are copies of one row (one input, one window position).
    ``alive`` numbers the real rows still running (in the batch's order), ``masked`` collects the
    numbers of the rows dropped as masked.
    """

    block: int
    pos: torch.Tensor
    n: int
    env: dict[fx.Node, Any]
    alive: torch.Tensor
    masked: list[torch.Tensor] = field(default_factory=list)

    def keep(self, same: torch.Tensor) -> torch.Tensor | None:
        """Finish the real rows where ``same`` is true as masked; the positions of the others
        (``None`` when no row is dropped)."""
        if not bool(same.any()):
            return None
        keep = (~same).nonzero().flatten()
        self.masked.append(self.alive[same])
        self.alive = self.alive[keep]
        self.n = int(keep.numel())
        return keep


def drop_masked(
    rows: Rows,
    node: fx.Node,
    golden: Any,
    dynamic: set[fx.Node],
    min_rows: int,
    same: torch.Tensor | None = None,
) -> None:
    """Full mode: drop the rows whose value at ``node`` equals ``golden`` (the golden value of
    ``node`` for the block, or ``None`` when it is not row-indexed); ``same`` if already known."""
    n, env = rows.n, rows.env
    if same is None:
        if not isinstance(golden, torch.Tensor) or not isinstance(env[node], torch.Tensor):
            return
        same = output_words_equal(take(golden, rows.pos[:n]), env[node][:n])
    keep = rows.keep(same)
    if keep is None or rows.n == 0:
        return
    idx = pad(keep, min_rows)
    rows.pos = rows.pos.index_select(0, idx)
    for k in list(env):
        v = env[k]
        if isinstance(v, torch.Tensor) and v.dim() > 0 and k in dynamic:
            env[k] = take(v, idx)


class CheckTally:
    """Whether masking checks of one kind pay: the rows they compared and dropped.

    A check costs a comparison of every live row with golden; it saves the rest of the network
    for the rows it drops. Where a kind of check has compared ``probe_rows`` rows and dropped
    fewer than one in ``rate``, it is made only every ``every``-th time (which keeps the tally
    up to date, so checks that start to drop rows are made again). A check not made changes no
    record: a row that is golden again at a cut point runs on to the golden output.

    Example:
        >>> t = CheckTally(probe_rows=10, rate=4, every=3)
        >>> t.due(), t.add(12, 0), [t.due() for _ in range(6)]
        (True, None, [False, False, True, False, False, True])
    """

    def __init__(self, probe_rows: int = 256, rate: int = 64, every: int = 8) -> None:
        self.probe_rows, self.rate, self.every = probe_rows, rate, every
        self.compared = self.dropped = self.asked = 0

    def due(self) -> bool:
        """Is the next check of this kind to be made?"""
        if self.compared < self.probe_rows or self.dropped * self.rate >= self.compared:
            return True
        self.asked += 1
        return self.asked % self.every == 0

    def add(self, compared: int, dropped: int) -> None:
        """A check of this kind compared ``compared`` rows and dropped ``dropped``."""
        self.compared += compared
        self.dropped += dropped


def _tensors(v: Any) -> list[torch.Tensor]:
    """The tensors in a value (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (tuple, list)):
        return [t for u in v for t in _tensors(u)]
    if isinstance(v, dict):
        return [t for u in v.values() for t in _tensors(u)]
    return []


def in_place(
    node: fx.Node, module: Any, env: dict[fx.Node, Any], lookup: Any, result: fx.Node
) -> torch.Tensor | None:
    """A ReLU module or a ``+`` of two same-shaped tensors computed into the buffer of its first
    operand, when no later step reads that operand (the caller checks it) and nothing else
    refers to its buffer; ``None``: compute it as the model does.

    ``x.relu_()`` and ``x.add_(y)`` run the kernels of ``torch.relu(x)`` and ``x + y`` (the same
    element-wise loops, writing to the operand's buffer instead of a new one of the same layout),
    so they give the same bits; they save allocating (and first touching) a new buffer. Only a
    contiguous floating-point operand that is the whole of its buffer qualifies (no view of a
    value read later), and the other operand of ``+`` must have its shape, dtype and layout.
    """
    if node.kwargs or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    relu = type(module) is nn.ReLU and len(node.args) == 1 and not hooked(module)
    add = node.op == "call_function" and node.target is operator.add and len(node.args) == 2
    a = node.args[0]
    x = env.get(a)
    if not (relu or add) or a is result or not isinstance(x, torch.Tensor):
        return None
    if (
        not x.is_floating_point()
        or x.is_quantized
        or not x.is_contiguous()
        or x.storage_offset()
        or x.numel() * x.element_size() != x.untyped_storage().nbytes()
    ):
        return None
    buffer = x.untyped_storage().data_ptr()
    for k, v in env.items():
        if k is not a and any(t.untyped_storage().data_ptr() == buffer for t in _tensors(v)):
            return None
    if relu:
        return x.relu_()
    b = node.args[1]
    if not isinstance(b, fx.Node) or b is a:
        return None
    y = lookup(b)
    if (
        not isinstance(y, torch.Tensor)
        or y.shape != x.shape
        or y.dtype != x.dtype
        or not y.is_contiguous()
        or y.untyped_storage().data_ptr() == buffer
    ):
        return None
    return x.add_(y)


#: rows per call of a module computed in parts (:func:`in_parts`)
PART_ROWS = 32


def in_parts(
    node: fx.Node, module: Any, lookup: Any, run_node: Any, min_rows: int
) -> torch.Tensor | None:
    """A ``batch_first`` ``nn.TransformerEncoderLayer`` called on a batch of more than
    ``PART_ROWS`` rows, computed in calls of up to that many rows (each padded to ``min_rows``
    with copies of its first row, as every pass is) and joined; ``None``: compute it as the
    model does (another module, a mask or other arguments, hooks, an operand or output that is
    not contiguous).

    On CPU such a layer takes longer per row on a tall batch than on a few short ones (its
    attention scores outgrow the caches: 224 rows of a 64-token, 64-wide layer 47 ms, 14 calls of
    16 rows 34 ms). A row's bits do not depend on the other rows of its call (the row check),
    and the calls are about as tall as the reference engine's passes.
    """
    if (
        type(module) is not nn.TransformerEncoderLayer
        or not getattr(module.self_attn, "batch_first", False)
        or len(node.args) != 1
        or not isinstance(node.args[0], fx.Node)
        or any(v is not None and v is not False for v in node.kwargs.values())
        or any(hooked(m) for m in module.modules())
    ):
        return None
    a = node.args[0]
    x = lookup(a)
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] <= PART_ROWS:
        return None
    if not x.is_contiguous():
        return None
    parts = []
    for r0 in range(0, x.shape[0], PART_ROWS):
        part = x[r0 : r0 + PART_ROWS]
        k = part.shape[0]
        if k < min_rows:
            part = part[pad(torch.arange(k), min_rows)]
        out = run_node(node, {}, lambda b, part=part: part if b is a else lookup(b))
        if not isinstance(out, torch.Tensor) or not out.is_contiguous() or out.dtype != x.dtype:
            return None
        parts.append(out[:k])
    return torch.cat(parts)


#: a windowed or channel-window computation: (node name, shape of its windowed input or planes)
Key = tuple[str, tuple[int, ...]]


class CanaryRunner:
    """What the window and channel runners share: the golden values, the engine's options and
    counters, and the computations whose canary failed (computed whole from then on), by
    (node name, shape)."""

    def __init__(self, values: GoldenValues, options: FastOptions, stats: dict[str, int]) -> None:
        self.values = values
        self.prog = values.prog
        self.options = options
        self.stats = stats
        self.failed: set[Key] = set()


def run_leading(
    site: Site,
    rows: Rows,
    golden: dict[fx.Node, Any],
    drop: bool,
    step: Callable[[Site, int, fx.Node, Rows, dict[fx.Node, Any]], Any],
    drop_masked: Callable[[Rows, fx.Node, dict[fx.Node, Any]], None],
) -> int:
    """Run the leading nodes of ``site.order`` with ``step`` (a window runner's: a node's value on
    spatial or channel windows, ``None`` where it cannot) while it can, freeing each value after
    its last read and dropping rows masked at the site's checks (``drop``) with
    ``drop_masked``; returns the step to go on from."""
    i = 0
    while i < len(site.order) and rows.n > 0:
        node = site.order[i]
        out = step(site, i, node, rows, golden)
        if out is None:
            break
        rows.env[node] = out
        for a in node.all_input_nodes:
            if site.last.get(a, -2) == i:
                rows.env.pop(a, None)
        if drop and node in site.checks:
            drop_masked(rows, node, golden)
        i += 1
    return i


def fault_spans(
    batch: Sequence[Row], tasks: Sequence[RunTask]
) -> tuple[list[Fault], list[tuple[int, int]]]:
    """The faults of a batch (rows of one task together; one fault per task) and the rows of the
    batch each covers."""
    out: list[Fault] = []
    spans: list[tuple[int, int]] = []
    n = len(batch)
    r = 0
    while r < n:
        ti = batch[r][0]
        r1 = r
        while r1 < n and batch[r1][0] == ti:
            r1 += 1
        out.append(tasks[ti].faults[0])
        spans.append((r, r1))
        r = r1
    return out, spans


def batches(group: list[Row], batch_size: int) -> list[list[Row]]:
    """Split sorted rows into batches of up to ``batch_size`` rows; the rows of one fault stay
    together (a batch grows past ``batch_size`` to hold a fault's last rows)."""
    out = []
    start = 0
    while start < len(group):
        stop = min(start + batch_size, len(group))
        while stop < len(group) and stop > start + 1 and group[stop][0] == group[stop - 1][0]:
            stop += 1
        out.append(group[start:stop])
        start = stop
    return out


def records(
    tasks: Sequence[RunTask],
    finished: list[Done],
    golden: torch.Tensor,
    criterion: Criterion,
    results: dict[Row, RunRecord],
) -> int:
    """Classify every finished row (rows, their outputs or ``None`` for masked, seconds) against
    the campaign's ``golden`` outputs into ``results``; returns how many rows."""
    keys = [key for rows, _, _ in finished for key in rows]
    if not keys:
        return 0
    want = golden[[i for _, i in keys]]
    faulty = want.clone()  # masked rows: their golden output
    seconds: list[float] = []
    at = 0
    for rows, out, per in finished:
        if out is not None:
            if out.shape[1:] != want.shape[1:] or out.shape[0] != len(rows):
                raise Unsupported(f"faulty output shape {tuple(out.shape)} differs from golden")
            faulty[at : at + len(rows)] = out
        seconds += [per] * len(rows)
        at += len(rows)
    codes, g_top, f_top, diff = classify(want, faulty, criterion)
    for key, c, g, f, d, sec in zip(
        keys, codes.tolist(), g_top.tolist(), f_top.tolist(), diff.tolist(), seconds
    ):
        ti, i = key
        results[key] = RunRecord(
            tasks[ti].fault_id, i, OUTCOMES[int(c)], int(g), int(f), float(d), sec
        )
    return len(keys)


def general_records(
    tasks: Sequence[RunTask],
    finished: list[Done],
    golden: Any,
    criterion: Criterion,
    results: dict[Row, RunRecord],
) -> int:
    """:func:`records` for outputs that are a structure per input (``golden`` a list) or a
    criterion that is not top1/topk/tolerance: each faulty output rebuilt in its golden
    output's structure (masked rows: their golden output) and classified by the criterion's own
    evaluation, as the reference engine does; returns how many rows."""
    keys: list[Row] = []
    faulty: list[Any] = []
    seconds: list[float] = []
    tensor = isinstance(golden, torch.Tensor)
    for rows, out, per in finished:
        for k, (ti, i) in enumerate(rows):
            g = take_golden(golden, [i])[0]
            if out is None:
                faulty.append(g)
            else:
                faulty.append(out[k] if tensor else unflatten_output(out[k], g))
            keys.append((ti, i))
            seconds.append(per)
    if not keys:
        return 0
    ev = evaluate(
        take_golden(golden, [i for _, i in keys]),
        torch.stack(faulty) if tensor else faulty,
        criterion,
    )
    for k, ((ti, i), sec) in enumerate(zip(keys, seconds)):
        fields = (
            tasks[ti].fault_id,
            i,
            ev.outcomes[k],
            ev.golden_top1[k],
            ev.faulty_top1[k],
            ev.max_abs_diff[k],
            sec,
        )
        m = ev.metrics[k]
        results[(ti, i)] = (
            RunRecord(*fields)
            if m is None
            else MeasuredRun(*fields, None, tuple(sorted(m.items())))
        )
    return len(keys)
