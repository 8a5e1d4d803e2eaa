# SPDX-License-Identifier: MIT
"""Golden values: one traced pass per block of inputs, the values the sites need kept in a
byte-bounded LRU cache.

A block is ``block`` consecutive campaign inputs (padded to ``min_rows`` rows, as every pass of
every engine is). The first pass over a block also checks that the traced graph reproduces the
campaign's golden outputs bit for bit; inputs that do not are listed in
:attr:`GoldenValues.bad_inputs` and run by the reference engine.

Memory: the cache is the only holder of golden values (:class:`BlockValues` refers to them by
key), so they stay within its budget (``FastOptions.cache_bytes``), however many nodes a block
needs; a value the cache has dropped is computed again by a pass over the block up to its node
(the same computation on the same rows: the same bits).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from torchfault.campaign._engine import _pad_index
from torchfault.campaign._fast._notices import log
from torchfault.campaign._fast._planning import Program, Unsupported
from torchfault.campaign._fast._rows import take
from torchfault.campaign._outcome import output_words_equal

__all__ = ["NOT_ROW_INDEXED", "BlockValues", "GoldenCache", "GoldenValues", "SharedGolden"]


class _NotRowIndexed:
    def __repr__(self) -> str:
        return "<not row-indexed>"


#: stands for a captured golden value that is not one row per input (a scalar, a tuple...)
NOT_ROW_INDEXED: Any = _NotRowIndexed()


class _InCache:
    def __repr__(self) -> str:
        return "<in the golden cache>"


#: stands for a golden value that the cache holds (or computes again when it has dropped it)
IN_CACHE: Any = _InCache()


class GoldenCache:
    """Golden values per (input block, node name), in a byte-bounded LRU."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.items: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self.bytes = 0
        # engines of a ``threads`` map may share one cache (:class:`SharedGolden`)
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self.items  # without touching the LRU order

    def get(self, key: tuple[int, str]) -> torch.Tensor | None:
        with self._lock:
            t = self.items.get(key)
            if t is not None:
                self.items.move_to_end(key)
            return t

    def put(self, key: tuple[int, str], t: torch.Tensor) -> None:
        with self._lock:
            if key in self.items:
                return
            self.items[key] = t
            self.bytes += t.numel() * t.element_size()
            while self.bytes > self.budget and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()


class SharedGolden:
    """What the fast engines of one ``threads`` executor map share, each over its own copy of
    the model: the golden-value cache, the blocks verified and the inputs whose traced output
    is not golden (:class:`GoldenValues`' ``verified`` and ``bad_inputs``), and the row check's
    verdict. Their models are bit-for-bit copies traced into the same graph (the engine checks
    both before it shares), so a golden value, a verification or the verdict one engine got is
    the one any other would get. ``lock`` guards the verification passes and the verdict.

    Example:
        >>> shared = SharedGolden(GoldenCache(2**20))
        >>> shared.verified, shared.rows_independent
        (set(), None)
    """

    def __init__(self, cache: GoldenCache) -> None:
        self.lock = threading.RLock()
        self.cache = cache
        #: the traced graph's nodes (name, op, target) of the first engine that traced
        self.graph: tuple[tuple[str, str, str], ...] | None = None
        self.verified: set[int] = set()
        self.bad_inputs: set[int] = set()
        self.rows_independent: bool | None = None


class BlockValues(dict[fx.Node, Any]):
    """The golden values of one block: node -> value, read with ``[]``, ``get`` and ``in``.

    Row-indexed values are not held here (the dict holds :data:`IN_CACHE` for them) but by the
    cache, within its budget; reading one the cache has dropped computes it again
    (:meth:`GoldenValues.refill`). The block's inputs and :data:`NOT_ROW_INDEXED` markers are
    held here. ``values()``/``items()`` show the markers, not the values; so does
    ``dict.get(block_values, node)``, which checks for :data:`NOT_ROW_INDEXED` without the pass
    that reading a value the cache has dropped would run.
    """

    def __init__(self, values: GoldenValues, block: int) -> None:
        super().__init__()
        self.golden = values
        self.block = block

    def __getitem__(self, node: fx.Node) -> Any:
        v = super().__getitem__(node)
        if v is IN_CACHE:
            v = self.golden.refill(self, node)
        return v

    def get(self, node: fx.Node, default: Any = None) -> Any:  # type: ignore[override]
        return self[node] if node in self else default  # noqa: SIM401 - this is get


class GoldenValues:
    """The golden values of a traced model over the campaign inputs, block by block.

    Args:
        prog: the traced model.
        inputs: every campaign input (one per row).
        outputs: the campaign's golden outputs (the reference engine's).
        block: inputs per block.
        min_rows: fewest rows of a pass.
        cache: where the values the sites need are kept.
    """

    def __init__(
        self,
        prog: Program,
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        block: int,
        min_rows: int,
        cache: GoldenCache,
    ) -> None:
        self.prog = prog
        self.inputs = inputs
        self.outputs = outputs
        self.block = block
        self.min_rows = min_rows
        self.cache = cache
        #: how a node is computed (the engine computes position-dependent functions canonically,
        #: :meth:`~._positions.Positions.run_node`)
        self.run_node = prog.run_node
        #: values that do not depend on the input (parameters read by the graph, shapes...)
        self.constants: dict[fx.Node, Any] = {}
        #: bytes per row of each node's value
        self.row_bytes: dict[fx.Node, int] = {}
        #: blocks whose outputs were compared with the campaign's golden outputs
        self.verified: set[int] = set()
        #: inputs whose traced output differs from the golden one
        self.bad_inputs: set[int] = set()

    def block_inputs(self, block: int) -> tuple[torch.Tensor, int]:
        """The inputs of ``block``, padded to ``min_rows`` rows, and how many are real."""
        start = block * self.block
        x = self.inputs[start : start + self.block]
        n = x.shape[0]
        if n < self.min_rows:
            x = x[_pad_index(n, self.min_rows)]  # indexing keeps the layout (torch.cat may not)
        return x, n

    def block_ids(self, block: int) -> list[int]:
        """The campaign input numbers of ``block`` whose traced output is golden."""
        start = block * self.block
        stop = min(start + self.block, self.inputs.shape[0])
        return [i for i in range(start, stop) if i not in self.bad_inputs]

    def forward(
        self,
        x: torch.Tensor,
        capture: set[fx.Node],
        stop: int | None = None,
        put: Callable[[fx.Node, torch.Tensor], None] | None = None,
    ) -> tuple[Any, dict[fx.Node, Any]]:
        """Run the graph on ``x`` (up to node number ``stop``); returns the output and the values
        of the nodes in ``capture`` (copies; :data:`NOT_ROW_INDEXED` for values that are not).
        With ``put``, each captured row-indexed copy is handed to it as soon as it is made and
        :data:`IN_CACHE` stands for it in the returned values (nothing here holds it)."""
        prog = self.prog
        env: dict[fx.Node, Any] = {}
        captured: dict[fx.Node, Any] = {}
        last = len(prog.nodes) - 1 if stop is None else stop
        for i, node in enumerate(prog.nodes[: last + 1]):
            if node.op == "output":
                break
            # a copy: the model may modify its input in place (the block's inputs stay golden)
            v = x.clone() if node is prog.placeholder else self.run_node(node, env)
            env[node] = v
            if (
                node not in self.row_bytes
                and isinstance(v, torch.Tensor)
                and v.dim() > 0
                and v.shape[0] == x.shape[0]
            ):
                self.row_bytes[node] = v[0].numel() * v.element_size()
            if node not in prog.dynamic:
                self.constants.setdefault(node, v)
            if node in capture:
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == x.shape[0]:
                    copy = v.detach().clone()  # later in-place ops must not change it
                    if put is None:
                        captured[node] = copy
                    else:
                        put(node, copy)
                        captured[node] = IN_CACHE
                    del copy
                else:
                    captured[node] = NOT_ROW_INDEXED
            for a in node.all_input_nodes:
                if prog.last_use[a] == i and a is not prog.result:
                    env.pop(a, None)
        return env.get(prog.result), captured

    def values(self, block: int, need: set[fx.Node]) -> tuple[BlockValues, bool]:
        """Golden values of ``need`` for ``block`` (and the placeholder's), from the cache or one
        pass; and whether this call verified the block (its first pass)."""
        prog = self.prog
        out = BlockValues(self, block)
        missing = set()
        for n in need:
            if (block, n.name) in self.cache:
                self.cache.get((block, n.name))  # recently used
                out[n] = IN_CACHE
            else:
                missing.add(n)
        x, n_real = self.block_inputs(block)
        out[prog.placeholder] = x
        if not missing and block in self.verified:
            return out, False
        verify = block not in self.verified
        stop = None if verify else max(prog.pos[n] for n in missing)

        def put(node: fx.Node, v: torch.Tensor) -> None:
            self.cache.put((block, node.name), v)

        res, captured = self.forward(x, missing, stop, put)
        out.update(captured)
        if verify:
            self.verified.add(block)
            ids = list(range(block * self.block, block * self.block + n_real))
            if not isinstance(res, torch.Tensor) or res.shape[0] != x.shape[0]:
                self.bad_inputs.update(ids)
            else:
                same = output_words_equal(self.outputs[ids], res[:n_real])
                bad = [i for i, s in zip(ids, same.tolist()) if not s]
                if bad:
                    log.info(
                        "fast engine: the traced graph does not reproduce the golden output of %d "
                        "input(s) bit for bit; the reference engine runs them.",
                        len(bad),
                    )
                    self.bad_inputs.update(bad)
        return out, verify

    def refill(self, out: BlockValues, node: fx.Node) -> torch.Tensor:
        """The golden value of ``node`` in ``out``'s block: from the cache, or computed again by a
        pass over the block up to it, which also puts back the values of ``out`` that follow it
        and are missing from the cache, as many as fit in a quarter of the budget (the nodes after
        a site are read next)."""
        block, prog = out.block, self.prog
        t = self.cache.get((block, node.name))
        if t is not None:
            return t
        x, _ = self.block_inputs(block)
        here = prog.pos[node]
        later = sorted(
            (
                n
                for n, v in dict.items(out)
                if v is IN_CACHE and prog.pos[n] > here and (block, n.name) not in self.cache
            ),
            key=prog.pos.__getitem__,
        )
        capture, total = {node}, 0
        for n in later:
            total += self.row_bytes.get(n, 0) * x.shape[0]
            if total > self.cache.budget // 4:
                break
            capture.add(n)
        found: dict[fx.Node, torch.Tensor] = {}

        def put(n: fx.Node, v: torch.Tensor) -> None:
            if n is node:
                found[n] = v  # returned even if the cache cannot keep it
            self.cache.put((block, n.name), v)

        self.forward(x, capture, max(prog.pos[n] for n in capture), put)
        if node not in found:
            raise Unsupported(f"golden value of {node.name} could not be computed again")
        return found[node]

    def gather(self, golden: dict[fx.Node, Any], node: fx.Node, pos: torch.Tensor) -> Any:
        """The golden value of ``node`` at block rows ``pos`` (a constant as it is)."""
        if node in golden:
            v = golden[node]
            if v is NOT_ROW_INDEXED:
                raise Unsupported(f"golden value of {node.name} is not row-indexed")
            return take(v, pos)
        if node in self.constants:
            return self.constants[node]
        raise Unsupported(f"no golden value for {node.name}")
