# SPDX-License-Identifier: MIT
"""Positions: transcendental element-wise functions whose bits depend on where a value sits.

CPU kernels of sigmoid, SiLU, ELU, softplus... compute the body of a buffer with vector
instructions and the last few values of each thread's share of it (its *tail*, fewer than two
vectors) with scalar code, which rounds some values differently. Where a value sits depends on
the batch composition and on the number of intra-op threads (each thread takes ``ceil(numel /
threads)`` values), and the fast engine composes its batches its own way. So it does not inherit
positions at all:

- **Canonical computation.** Every such function of the graph (:data:`~._operations.INEXACT_MODULES`
  and friends) that reads one dense value computed from the input (contiguous, or any layout
  with the batch outermost in memory, such as channels-last) is computed on that value
  flattened in memory order, padded to a multiple of :data:`ALIGN` elements and cut into blocks of
  :data:`BLOCK` elements: every block is one vectorised loop without a tail and below every
  kernel's threshold for threading, so every value gets the vectorised result, wherever it
  sits and however many threads run. The engine's golden values, its row check and the rest of
  the network after a fault are all computed this way. A value longer than a block is computed
  in one call over the whole value instead, padded so that every thread's share of it is a
  multiple of :data:`ALIGN` elements (:func:`share_aligned`; with one thread, the whole value
  is one share): every share is one vectorised loop without a tail, so the blocks' bits without
  a call and a copy per block. That is done for each function and thread count where it was
  measured to give the blocks' words (:meth:`Positions._one_call`).
- **Plain rows.** The reference engine runs the real kernels at the real places, so a row takes
  the fast path only when, at every such function, the real kernel in the batch the reference
  engine would run it in (the fault's inputs in chunks of ``batch_size``, padded to
  ``MIN_ROWS``) gives the canonical bits at every element of the row. Which rows are plain is
  measured, not predicted: per function, batch height and thread count, the function runs once
  on a probe of that height filled with values whose vectorised and scalar results differ (found
  per function on its own golden inputs and random values), twice with the fill shifted; a row
  where the result differs from the canonical one is not plain. Only the rows at the end of a
  thread's share whose size is not a multiple of the vector loop's step are not plain.
- A function for which no such value is found (its kernel gives the same bits on both paths
  for every value tried, as tanh, exp, log, erf and log-sigmoid do with torch 2.13 on x86: their
  kernels vectorise the tail too) is probed with all the values tried; that its rows are plain
  is then measured on those values, not proven for every value.
- A function that reads a value with gaps or the batch not outermost, a constant tensor of
  several values or two
  computed values keeps the old rule: exact only with one intra-op thread and rows a multiple of
  ``row_alignment`` bytes (:meth:`Positions.model_ok`).

Rows that are not plain go to the reference engine in the batch the reference engine would have
run them in (see ``FastEngine.run``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from torchfault.campaign._fast._operations import is_inexact
from torchfault.campaign._fast._planning import Program, Unsupported

__all__ = ["ALIGN", "BLOCK", "GRAIN", "Positions", "reference_layout", "share_aligned"]

#: canonical blocks are padded to a multiple of this many elements (two 512-bit vectors of the
#: narrowest float type, with room to spare)
ALIGN = 128
#: elements of one canonical block: below ATen's grain for threading element-wise loops (32768)
#: and GELU's own threshold (16384 is not above it)
BLOCK = 16384
#: values tried per function when looking for ones whose vectorised and scalar results differ
POOL = 8192
#: ATen's grain for threading element-wise loops (``at::internal::GRAIN_SIZE``): a loop over
#: ``n`` values runs in ``min(threads, ceil(n / GRAIN))`` shares of ``ceil(n / shares)`` values
GRAIN = 32768


def share_aligned(n: int, threads: int) -> int:
    """The fewest values, at least ``n``, that ``threads`` intra-op threads split into shares
    that are all a multiple of :data:`ALIGN` values (by the rule of :data:`GRAIN`).

    Example:
        >>> share_aligned(100, 1), share_aligned(40_000, 1)
        (128, 40064)
        >>> m = share_aligned(40_000, 2)  # two shares of 20,096
        >>> m, m // 2 % ALIGN
        (40192, 0)
        >>> m = share_aligned(70_001, 3)  # three shares of 23,424
        >>> m, -(-m // 3) % ALIGN, m % ALIGN
        (70272, 0, 0)
    """
    m = -(-n // ALIGN) * ALIGN
    while True:
        shares = max(1, min(threads, -(-m // GRAIN)))
        if -(-m // shares) % ALIGN == 0:
            return m
        m = -(-m // (shares * ALIGN)) * shares * ALIGN


@dataclass(eq=False)
class _Op:
    """A function computed canonically: its one computed operand and what a probe needs."""

    operand: fx.Node
    inplace: bool
    perm: tuple[int, ...]  # the operand's dimensions in memory order (channels-last: 0, 2, 3, 1)
    row_shape: torch.Size
    dtype: torch.dtype
    probe: torch.Tensor  # values whose vectorised and scalar results differ (or all tried)


def reference_layout(ids: Any, batch_size: int, min_rows: int) -> dict[int, tuple[int, int]]:
    """Input number -> (rows of its batch, its row) as the reference engine runs task ``ids``:
    chunks of ``batch_size`` in order, each padded to ``min_rows`` rows (first occurrence)."""
    out: dict[int, tuple[int, int]] = {}
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        n = max(len(chunk), min_rows)
        for p, i in enumerate(chunk):
            out.setdefault(i, (n, p))
    return out


def _inplace(node: fx.Node, module: Any) -> bool:
    if getattr(module, "inplace", False) is True:
        return True
    if node.kwargs.get("inplace") is True or any(a is True for a in node.args[1:]):
        return True
    return node.op == "call_method" and str(node.target).endswith("_")


def _memory_order(v: torch.Tensor) -> tuple[int, ...] | None:
    """``v``'s dimensions in memory order when it is dense with the batch outermost
    (contiguous: ``0, 1, ...``; channels-last: ``0, 2, 3, 1``); ``None`` otherwise."""
    if v.is_contiguous():
        return tuple(range(v.dim()))
    strides = v.stride()
    perm = (0, *sorted(range(1, v.dim()), key=lambda d: (-strides[d], d)))
    return perm if v.permute(perm).is_contiguous() else None


def _differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise: the words differ (NaN equals NaN)."""
    return (a != b) & ~(torch.isnan(a) & torch.isnan(b))


class Positions:
    """The graph's position-dependent functions, computed canonically, and which rows are plain.

    The functions' operands are found in one pass over a few padded campaign inputs: the
    probing pass of :func:`~._planning.trace` (the engine hands it :meth:`watch`, then calls
    :meth:`analyse`), or a pass of its own when ``probe`` is given.

    Args:
        prog: the traced model.
        probe: a few padded campaign inputs (one pass over them finds the functions' operands).
    """

    def __init__(self, prog: Program, probe: torch.Tensor | None = None) -> None:
        self.prog = prog
        self.ops: dict[fx.Node, _Op] = {}
        #: nodes the canonical computation does not cover (the old rule applies to them)
        self.others: list[fx.Node] = []
        self._constants: dict[fx.Node, Any] = {}
        self._nonplain: dict[tuple[str, int, int], frozenset[int]] = {}
        self._bad_rows: dict[tuple[int, int], frozenset[int]] = {}
        #: (function, thread count) measured to give the blocks' bits in one call over a whole
        #: value padded to aligned shares (see :meth:`_one_call`)
        self._whole: dict[tuple[fx.Node, int], bool] = {}
        self._inexact = [
            n for n in prog.nodes if n in prog.dynamic and is_inexact(n, prog.module_of(n))
        ]
        self._watched = set(self._inexact)
        # per function met in the pass: its operand, the operand's first values, the operand
        self._found: dict[fx.Node, tuple[fx.Node, torch.Tensor, torch.Tensor]] = {}
        self._error: Exception | None = None
        if probe is None or not self._inexact:
            return
        env: dict[fx.Node, Any] = {}
        for node in prog.nodes:
            if node.op == "output":
                break
            self.watch(node, env)
            env[node] = probe.clone() if node is prog.placeholder else prog.run_node(node, env)
        self.analyse()

    def watch(self, node: fx.Node, env: dict[fx.Node, Any]) -> None:
        """In a pass over the probe, before ``node`` runs (``env``: every value so far): keep
        the operand of a function to cover, as it is when the function reads it."""
        if node not in self._watched or self._error is not None:
            return
        try:
            op = self._operand(node, env)
            if op is None:
                return
            v = env[op]
            # its first values now; its dtype and layout (kept by in-place changes) read after
            self._found[node] = (op, v.detach().reshape(-1)[:POOL].clone(), v)
            for b in node.all_input_nodes:  # the constants it reads (what _call passes)
                if b is not op:
                    self._constants[b] = env[b]
        except Exception as exc:  # noqa: BLE001 - raised by analyse (not a failure of the pass)
            self._error = exc

    def analyse(self) -> None:
        """After the pass: which functions are covered, and the values that probe them."""
        if self._error is not None:
            raise self._error
        for node in self._inexact:
            if node not in self._found:
                self.others.append(node)
                continue
            op, seen, value = self._found[node]
            probe_values = self._discriminating(node, op, seen, value.dtype)
            if probe_values is None:
                self.others.append(node)
                continue
            perm = _memory_order(value)
            assert perm is not None
            self.ops[node] = _Op(
                op,
                _inplace(node, self.prog.module_of(node)),
                perm,
                value.shape[1:],
                value.dtype,
                probe_values,
            )
        self._found.clear()

    # ------------------------------------------------------------------ set-up
    def _operand(self, node: fx.Node, env: dict[fx.Node, Any]) -> fx.Node | None:
        """The one computed, dense floating-point operand of ``node`` (``None``: not
        covered). Its other inputs must be constants that are not tensors of several values."""
        prog = self.prog
        dyn = [a for a in node.all_input_nodes if a in prog.dynamic]
        if len(dyn) != 1:
            return None
        a = dyn[0]
        v = env.get(a)
        if not (
            isinstance(v, torch.Tensor)
            and v.dim() > 0
            and v.is_floating_point()
            and _memory_order(v) is not None
            and v.device.type == "cpu"
        ):
            return None
        for b in node.all_input_nodes:
            if b is a:
                continue
            c = env.get(b, self._constants.get(b))
            if isinstance(c, torch.Tensor) and c.numel() > 1:
                return None
        return a

    def _call(self, node: fx.Node, operand: fx.Node, t: torch.Tensor) -> Any:
        return self.prog.run_node(node, {}, lambda a: t if a is operand else self._constants[a])

    def _discriminating(
        self, node: fx.Node, operand: fx.Node, seen: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Values whose vectorised and scalar results differ (all values tried when none do;
        ``None``: the function fails on flat values)."""
        g = torch.Generator().manual_seed(0)
        pool = torch.cat(
            [seen.to(dtype)]
            + [(torch.randn(POOL, generator=g) * s).to(dtype) for s in (0.25, 1.0, 4.0, 16.0)]
        )
        try:
            vec = self._canonical(node, operand, pool)
            strided = torch.zeros(pool.numel(), 2, dtype=dtype)
            strided[:, 0] = pool
            sca = self._call(node, operand, strided[:, 0])
        except Exception:  # noqa: BLE001 - a function that fails on flat values: not covered
            return None
        if not isinstance(sca, torch.Tensor) or sca.shape != pool.shape:
            return None
        diff = _differ(vec, sca)
        if not bool(diff.any()):
            # both paths gave the same bits for every value tried (tanh, exp, log and erf here:
            # their kernels also vectorise the tail): probes with these values still measure
            # rows, and a row is plain unless some value of the probe told the paths apart
            return pool.clone()
        return pool[diff].clone()

    # ------------------------------------------------------------------ computing
    def _canonical(self, node: fx.Node, operand: fx.Node, x: torch.Tensor) -> torch.Tensor:
        """``node`` on ``x``, every value on the vectorised path (see the module docstring).
        ``x`` itself is never written (an in-place function runs on a copy)."""
        op = self.ops.get(node)
        perm = op.perm if op is not None else tuple(range(x.dim()))
        xp = x.permute(perm)  # memory order: a view, contiguous
        flat = xp.reshape(-1)
        if op is None or op.inplace:
            flat = flat.clone()
        n = flat.numel()
        if n > BLOCK and op is not None and self._one_call(node, op):
            # one call over the whole value, every thread's share aligned (see _one_call)
            out = self._aligned_call(node, operand, flat)
        else:
            out = self._blocks(node, operand, flat)
        out = out.reshape(xp.shape)
        inverse = sorted(range(len(perm)), key=perm.__getitem__)
        return out.permute(inverse)  # the operand's strides (channels-last stays so)

    def _aligned_call(self, node: fx.Node, operand: fx.Node, flat: torch.Tensor) -> torch.Tensor:
        """``node`` on the flat ``flat`` in one call, padded with zeros to
        :func:`share_aligned` values at the present thread count (a new buffer then: an
        in-place function writes into it, and ``flat`` is a copy when it would not be)."""
        k = flat.numel()
        m = share_aligned(k, torch.get_num_threads())
        seg = flat if m == k else torch.cat([flat, flat.new_zeros(m - k)])
        out = self._call(node, operand, seg)
        return out if out.numel() == k else out[:k]

    def _blocks(self, node: fx.Node, operand: fx.Node, flat: torch.Tensor) -> torch.Tensor:
        """``node`` on the flat ``flat`` block by block (:data:`BLOCK` values, each padded to
        :data:`ALIGN`): the canonical words."""
        parts = [
            self._aligned_call(node, operand, flat[i : i + BLOCK])
            for i in range(0, flat.numel(), BLOCK)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _one_call(self, node: fx.Node, op: _Op) -> bool:
        """May ``node`` be computed canonically in one call over a whole value, padded so that
        every thread's share is a multiple of :data:`ALIGN` (:func:`share_aligned`), instead
        of block by block? Each share of an element-wise kernel is one vectorised loop, with no
        tail when its length is such a multiple, so the blocks' bits without the calls and
        copies of each block. Measured once per function and thread count: values of
        ``3 * BLOCK + ALIGN`` elements and, with several threads, of ``(2 * threads + 1) *
        GRAIN + 3 * ALIGN`` (every thread takes a share), filled with the function's probe
        values (those whose vectorised and scalar results differ) and the same shifted by one,
        give the same words in one call as in blocks; otherwise the function keeps its blocks
        at that thread count."""
        threads = torch.get_num_threads()
        ok = self._whole.get((node, threads))
        if ok is not None:
            return ok
        sizes = [3 * BLOCK + ALIGN]
        if threads > 1:
            sizes.append((2 * threads + 1) * GRAIN + 3 * ALIGN)
        fill = op.probe.to(op.dtype).reshape(-1)

        def same(size: int, shift: int) -> bool:
            m = share_aligned(size, threads)
            x = fill.roll(shift).repeat(m // max(fill.numel(), 1) + 1)[:m].contiguous()
            whole = self._aligned_call(node, op.operand, x.clone())  # copies: in-place functions
            blocks = self._blocks(node, op.operand, x.clone())
            return whole.shape == blocks.shape and not bool(_differ(whole, blocks).any())

        try:
            ok = all(same(size, shift) for size in sizes for shift in (0, 1))
        except Exception:  # noqa: BLE001 - anything odd: blocks, as before
            ok = False
        self._whole[(node, threads)] = ok
        return ok

    def run_node(self, node: fx.Node, env: dict[fx.Node, Any], lookup: Any = None) -> Any:
        """``Program.run_node``, with the covered functions computed canonically."""
        op = self.ops.get(node)
        if op is None:
            return self.prog.run_node(node, env, lookup)
        x = lookup(op.operand) if lookup is not None else env[op.operand]
        if not (
            isinstance(x, torch.Tensor)
            and x.dtype == op.dtype
            and x.dim() == len(op.perm)
            and x.permute(op.perm).is_contiguous()
        ):
            raise Unsupported(f"{node.name}: operand in another memory layout or dtype")
        out = self._canonical(node, op.operand, x)
        if op.inplace:  # the model's aliasing: the function wrote into its operand
            x.copy_(out)
            return x
        return out

    # ------------------------------------------------------------------ plain rows
    def model_ok(self, row_bytes: dict[fx.Node, int], alignment: int) -> bool:
        """May the fast path run this model at all? The functions not covered must meet the old
        rule: one intra-op thread and rows a multiple of ``alignment`` bytes."""
        for node in self.others:
            if torch.get_num_threads() > 1:
                return False
            for a in node.all_input_nodes:
                if a not in self.prog.dynamic:
                    continue
                size = row_bytes.get(a)
                if size is None or size % alignment:
                    return False
        return True

    def nonplain(self, node: fx.Node, rows: int) -> frozenset[int]:
        """The rows of a batch of ``rows`` rows where the real kernel of ``node`` does not give
        the canonical bits (measured on a probe, cached per thread count)."""
        key = (node.name, rows, torch.get_num_threads())
        got = self._nonplain.get(key)
        if got is not None:
            return got
        op = self.ops[node]
        size = rows * math.prod(op.row_shape)
        bad = torch.zeros(rows, dtype=torch.bool)
        for shift in (0, 1):
            fill = op.probe.roll(shift).repeat(size // op.probe.numel() + 1)[:size]
            shape = (rows, *op.row_shape)
            inverse = sorted(range(len(op.perm)), key=op.perm.__getitem__)
            # in the operand's memory layout (row r's values are still the r-th block)
            x = fill.reshape([shape[d] for d in op.perm]).permute(inverse)
            real = self._call(node, op.operand, x.clone())
            want = self._canonical(node, op.operand, x)
            bad |= _differ(real, want).reshape(rows, -1).any(1)
        got = frozenset(int(i) for i in bad.nonzero().flatten().tolist())
        self._nonplain[key] = got
        return got

    def plain(self, rows: int, row: int) -> bool:
        """Is row ``row`` of a batch of ``rows`` rows plain at every covered function?"""
        key = (rows, torch.get_num_threads())
        bad = self._bad_rows.get(key)
        if bad is None:
            bad = frozenset().union(*(self.nonplain(node, rows) for node in self.ops))
            self._bad_rows[key] = bad
        return row not in bad
