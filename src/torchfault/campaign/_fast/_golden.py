# SPDX-License-Identifier: MIT
"""Golden values: one traced pass per block of inputs, the values the sites need kept in a
byte-bounded LRU cache.

A block is ``block`` consecutive campaign inputs (padded to ``min_rows`` rows, as every pass of
every engine is). The first pass over a block also checks that the traced graph reproduces the
campaign's golden outputs bit for bit; inputs that do not are listed in
:attr:`GoldenValues.bad_inputs` and run by the reference engine.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.fx as fx

from torchfault.campaign._engine import _pad_index
from torchfault.campaign._fast._notices import log
from torchfault.campaign._fast._planning import Program, Unsupported
from torchfault.campaign._fast._rows import take
from torchfault.campaign._outcome import output_words_equal

__all__ = ["NOT_ROW_INDEXED", "GoldenCache", "GoldenValues"]


class _NotRowIndexed:
    def __repr__(self) -> str:
        return "<not row-indexed>"


#: stands for a captured golden value that is not one row per input (a scalar, a tuple...)
NOT_ROW_INDEXED: Any = _NotRowIndexed()


class GoldenCache:
    """Golden values per (input block, node name), in a byte-bounded LRU."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.items: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[int, str]) -> torch.Tensor | None:
        t = self.items.get(key)
        if t is not None:
            self.items.move_to_end(key)
        return t

    def put(self, key: tuple[int, str], t: torch.Tensor) -> None:
        if key in self.items:
            return
        self.items[key] = t
        self.bytes += t.numel() * t.element_size()
        while self.bytes > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


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
        self, x: torch.Tensor, capture: set[fx.Node], stop: int | None = None
    ) -> tuple[Any, dict[fx.Node, Any]]:
        """Run the graph on ``x`` (up to node number ``stop``); returns the output and the values
        of the nodes in ``capture`` (copies; :data:`NOT_ROW_INDEXED` for values that are not)."""
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
                    captured[node] = v.detach().clone()  # later in-place ops must not change it
                else:
                    captured[node] = NOT_ROW_INDEXED
            for a in node.all_input_nodes:
                if prog.last_use[a] == i and a is not prog.result:
                    env.pop(a, None)
        return env.get(prog.result), captured

    def values(self, block: int, need: set[fx.Node]) -> tuple[dict[fx.Node, Any], bool]:
        """Golden values of ``need`` for ``block`` (and the placeholder's), from the cache or one
        pass; and whether this call verified the block (its first pass)."""
        prog = self.prog
        out: dict[fx.Node, Any] = {}
        missing = set()
        for n in need:
            t = self.cache.get((block, n.name))
            if t is None:
                missing.add(n)
            else:
                out[n] = t
        x, n_real = self.block_inputs(block)
        out[prog.placeholder] = x
        if not missing and block in self.verified:
            return out, False
        verify = block not in self.verified
        stop = None if verify else max(prog.pos[n] for n in missing)
        res, captured = self.forward(x, missing, stop)
        for node, v in captured.items():
            out[node] = v
            if v is not NOT_ROW_INDEXED:
                self.cache.put((block, node.name), v)
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
