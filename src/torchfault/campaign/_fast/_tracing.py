# SPDX-License-Identifier: MIT
"""Deviation traces of the rows the fast engine runs fast, from the rest of the network it runs.

A trace (:class:`torchfault.analysis.Trace`) holds a run's deviation from golden at every traced
layer; :func:`torchfault.analysis.trace_runs` defines it by a golden and a faulty pass with forward
hooks. The fast engine already computes, for each row, the faulty value of every node after the
fault's site; a traced layer is a ``call_module`` node (its last call, as a hook keeps it), so
its deviation is read where the node is computed, against the node's golden rows
(:meth:`~._golden.GoldenValues.gather`), with the same per-layer function
(:func:`torchfault.analysis.layer_deviations`) and the same derivation of ``masked_at`` and
``out_of_range_at`` (:meth:`Trace.of_layers <torchfault.analysis.Trace.of_layers>`).

Why the values are those of ``trace_runs`` bit for bit:

- a layer the site does not reach (before it, or on another branch) is golden in the faulty pass:
  deviation zero, and ``out_of_range`` is that of its golden value;
- the site's own layer is the site value: an activation fault's injected output (what a hook
  added after :func:`torchfault.inject`'s sees) or a parameter fault's faulty module output;
- a layer after the site is the node's value as the engine computes it, the computation whose
  bits the engine's exactness checks vouch for (they vouch for every node: rows are the same bits
  in any batch, so the traced pass, padded to the same ``min_rows``, computes the same values);
- a row dropped as masked at a node is bit-identical to golden there, and at that cut point the
  only live faulty value, so every later layer is golden (deviation zero).

Everything else is traced by ``trace_runs`` (the whole task, as the base engine does): rows handed
to the reference engine, sites that do not run through the plain loop (inner activation sites,
structured and packed sites, sites that reach no output), activation faults on values that are not
contiguous, a traced layer that is not one ``call_module`` node of the graph (inside a module
traced whole, a container) or whose node the plan does not compute (it reaches no output), a
traced layer whose node is also the output of a module traced as its parts (an encoder's last
layer) with an activation site there, and any row whose tracing raised. While it traces, the engine runs no spatial window (a window holds
only the part of a map that may differ; reading a deviation from it is possible, but the windows
would have to be unfolded for it, which costs what they save); traced campaigns run windowless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from torchfault.analysis import LayerDeviation, Trace, layer_deviations
from torchfault.campaign._fast._golden import NOT_ROW_INDEXED, GoldenValues
from torchfault.campaign._fast._notices import log
from torchfault.campaign._fast._planning import Program, Site

__all__ = ["BatchTrace", "FastTracer"]

#: one layer's deviation in one row: (max_abs, max_rel, changed, out_of_range)
Dev = tuple[float, float, int, bool | None]

#: a layer with no deviation and no profile
_ZERO: Dev = (0.0, 0.0, 0, None)


@dataclass(eq=False)
class BatchTrace:
    """The deviations recorded for one batch of rows of one site.

    Attributes:
        site: the site.
        plan: traced layer -> its node where the rows' values are read (``None``: golden).
        watch: node -> traced layer, for the nodes of ``plan``.
        pos: block positions of the batch's real rows.
        rows: per real row (batch order), layer -> deviation, for the layers recorded.
    """

    site: Site
    plan: dict[str, fx.Node | None]
    watch: dict[fx.Node, str]
    pos: list[int]
    rows: list[dict[str, Dev]] = field(default_factory=list)
    #: reading a value raised: the batch's rows are traced by ``trace_runs``
    failed: bool = False


class FastTracer:
    """Traces rows while the fast engine runs them (see the module docstring).

    Args:
        prog: the traced model.
        values: its golden values.
        layers: the traced layers, in execution order.
        profile: golden ranges (``out_of_range``), or ``None``.
    """

    def __init__(
        self, prog: Program, values: GoldenValues, layers: list[str], profile: Any
    ) -> None:
        self.prog = prog
        self.values = values
        self.layers = list(layers)
        self.profile = profile
        self.bounds: dict[str, Any] = dict(profile.layers) if profile is not None else {}
        #: traced layer -> its graph node (its last call), ``None``: not one call_module node
        self.nodes: dict[str, fx.Node | None] = {}
        for name in self.layers:
            calls = prog.calls.get(name, [])
            ok = calls and not any(c in prog.structured for c in calls)
            self.nodes[name] = calls[-1] if ok else None
        self._plans: dict[int, dict[str, fx.Node | None] | None] = {}
        self._golden_oor: dict[tuple[int, str], list[Dev]] = {}

    def need(self) -> set[fx.Node]:
        """The golden values tracing reads: every traced layer's node."""
        return {n for n in self.nodes.values() if n is not None}

    def plan(self, site: Site) -> dict[str, fx.Node | None] | None:
        """Where each traced layer's value is read for rows of ``site`` (``None``: golden), or
        ``None`` when its rows are traced by ``trace_runs``."""
        key = id(site)
        if key not in self._plans:
            self._plans[key] = self._plan(site)
        return self._plans[key]

    def _plan(self, site: Site) -> dict[str, fx.Node | None] | None:
        if site.inner or site.packed or site.masked_all:
            return None
        prog = self.prog
        # the output of a module traced as its parts (an encoder): its last part's node is also
        # the site of faults on the whole module's output, which a hook on that part does not
        # see; which of the two a row's fault is, the plan does not know
        expanded = any(site.node in ns for ns in prog.outputs_of.values())
        if site.target == "output" and expanded and site.node in self.nodes.values():
            return None
        affected = {site.node}
        for n in prog.nodes[prog.pos[site.node] + 1 :]:
            if any(a in affected for a in n.all_input_nodes):
                affected.add(n)
        computed = set(site.order) | {site.node}
        plan: dict[str, fx.Node | None] = {}
        for name, node in self.nodes.items():
            if node is None:
                return None
            if node not in affected:
                plan[name] = None
            elif node in computed:
                plan[name] = node
            else:  # reached by the fault, but not computed (it leads to no output)
                return None
        return plan

    def start(
        self, site: Site, pos: torch.Tensor, n: int, golden: dict[fx.Node, Any]
    ) -> BatchTrace | None:
        """A batch of ``n`` rows of ``site`` at block positions ``pos`` starts (``None``: its rows
        are traced by ``trace_runs``)."""
        plan = self.plan(site)
        if plan is None:
            return None
        for name, node in self.nodes.items():
            read = plan[name] is not None or name in self.bounds
            # the marker itself (dict.get: a value the cache dropped is not computed again here)
            if read and (node not in golden or dict.get(golden, node) is NOT_ROW_INDEXED):
                return None
        watch = {node: name for name, node in plan.items() if node is not None}
        return BatchTrace(site, plan, watch, pos[:n].tolist(), [{} for _ in range(n)])

    def record(
        self,
        bt: BatchTrace,
        node: fx.Node,
        value: torch.Tensor,
        golden: dict[fx.Node, Any],
        pos: torch.Tensor,
        rows: list[int],
    ) -> None:
        """The live rows ``rows`` (batch row numbers, in the order of ``value``'s first rows) of
        ``bt`` have ``value`` at ``node`` (their block positions ``pos``)."""
        if bt.failed:
            return
        name = bt.watch[node]
        n = len(rows)
        try:
            g = self.values.gather(golden, node, pos)
            devs = layer_deviations(g[:n], value[:n], self.bounds.get(name))
        except Exception:  # noqa: BLE001 - anything odd: trace_runs traces these rows
            log.debug(
                "fast engine: tracing %s failed; trace_runs traces the rows", name, exc_info=True
            )
            bt.failed = True
            return
        for k, d in zip(rows, devs):
            bt.rows[k][name] = d

    def traces(
        self,
        bt: BatchTrace,
        keys: list[tuple[int, int]],
        fault_ids: list[int],
        block: int,
        golden: dict[fx.Node, Any],
    ) -> list[tuple[tuple[int, int], Trace]]:
        """The finished batch's traces, one per real row (``keys[k]``: the row's key,
        ``fault_ids[k]``: its fault); ``[]`` when its tracing failed."""
        if bt.failed:
            return []
        out = []
        try:
            for k, key in enumerate(keys):
                got = bt.rows[k]
                layers = []
                for name in self.layers:
                    d = got.get(name)
                    if d is None:  # not reached, or dropped as masked before: golden
                        d = self._golden(block, name, bt.pos[k], golden)
                    layers.append(LayerDeviation(name, *d))
                out.append((key, Trace.of_layers(fault_ids[k], key[1], layers)))
        except Exception:  # noqa: BLE001 - anything odd: trace_runs traces these rows
            log.debug("fast engine: tracing failed; trace_runs traces the rows", exc_info=True)
            return []
        return out

    def _golden(self, block: int, name: str, at: int, golden: dict[fx.Node, Any]) -> Dev:
        """A layer that holds its golden value: no deviation, its golden range flag."""
        bounds = self.bounds.get(name)
        if bounds is None:
            return _ZERO
        key = (block, name)
        flags = self._golden_oor.get(key)
        if flags is None:
            node = self.nodes[name]
            assert node is not None  # checked by plan
            g = golden[node]
            flags = layer_deviations(g, g, bounds)
            self._golden_oor[key] = flags
        return flags[at]
