# SPDX-License-Identifier: MIT
"""Graph planning: the traced model, and per fault site the rest of the network to run.

:class:`Program` traces a model once with ``torch.fx`` and records what the planner needs: which
nodes depend on the input, which lead to the output, who holds each parameter, and (one probing
pass) which nodes modify values in place. :func:`plan_site` turns a faulted node and tensor into a
:class:`Site`: the nodes that depend on it in graph order, the golden values they read from
outside (the *boundary*), the cut points where rows golden again are dropped as masked, and the
leading nodes that can run on spatial windows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_arg

from torchfault.campaign._fast._notices import REASONS, first_line, warn_once
from torchfault.campaign._fast._operations import channel_kind, is_masking, window_kind

__all__ = [
    "INNER",
    "Program",
    "Site",
    "Unsupported",
    "Watch",
    "flatten_output",
    "plan_site",
    "trace",
    "unflatten_output",
]

#: the target of a site that stands for activation faults inside the site's module
INNER = "<activations inside>"

#: what watches a pass over the graph: called with each node and the values so far, before the
#: node runs
Watch = Callable[[fx.Node, dict[fx.Node, Any]], None]


def flatten_output(output: Any) -> torch.Tensor | None:
    """One input's output, a structure, as one flat tensor: its tensors in the order
    ``torch.fx.node.map_arg`` visits a structure (tuples and lists in order, dict values in
    insertion order), each flattened, concatenated (``None``: no tensor, or tensors of several
    dtypes, which concatenation would convert)."""
    parts: list[torch.Tensor] = []

    def visit(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            parts.append(v.reshape(-1))
        elif isinstance(v, (tuple, list)):
            for u in v:
                visit(u)
        elif isinstance(v, dict):
            for u in v.values():
                visit(u)

    visit(output)
    if not parts or len({p.dtype for p in parts}) != 1:
        return None
    return torch.cat(parts)


def unflatten_output(flat: torch.Tensor, template: Any) -> Any:
    """``template`` (one input's output) with its tensors, in :func:`flatten_output`'s order,
    replaced by the values of ``flat`` (their shapes and dtype kept; other values as they are)."""
    at = 0

    def build(v: Any) -> Any:
        nonlocal at
        if isinstance(v, torch.Tensor):
            k = v.numel()
            out = flat[at : at + k].reshape(v.shape)
            at += k
            return out
        if isinstance(v, tuple) and hasattr(v, "_fields"):  # a named tuple
            return type(v)(*(build(u) for u in v))
        if isinstance(v, (tuple, list)):
            return type(v)(build(u) for u in v)
        if isinstance(v, dict):
            return type(v)((k, build(u)) for k, u in v.items())
        return v

    return build(template)


class Unsupported(Exception):
    """The fast path does not cover this site or model; the reference engine runs it."""


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def versions(v: Any) -> Any:
    """The version counters of the tensors in ``v`` (changed by in-place operations)."""
    if isinstance(v, torch.Tensor):
        try:
            return v._version
        except RuntimeError:  # an inference tensor: no counter
            return -1
    if isinstance(v, (tuple, list)):
        return tuple(versions(u) for u in v)
    if isinstance(v, dict):
        return tuple((k, versions(u)) for k, u in v.items())
    return None


#: arguments of ``nn.TransformerEncoder.forward`` after ``src``
_ENCODER_OPTIONS = ("mask", "src_key_padding_mask", "is_causal")


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer (modules of ``torch.nn`` are leaves), except that an
    ``nn.TransformerEncoder`` called on its input alone (no mask) is traced as its layers, one
    node each, and its norm: the calls its ``forward`` makes then (each layer with
    ``src_mask=None, is_causal=False, src_key_padding_mask=None``), so a fault in layer k runs
    layers k onward only. ``expanded`` lists each such call: (the encoder's name, the node of
    its output)."""

    def __init__(self) -> None:
        super().__init__()
        self.expanded: list[tuple[str, fx.Node]] = []

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if type(m) is nn.TransformerEncoder and len(m.layers) and len(args) <= 1:
            options = dict(zip(_ENCODER_OPTIONS, args[1:]))
            options.update(kwargs)
            src = args[0] if args else options.pop("src", None)
            if isinstance(src, fx.Proxy) and all(
                k in _ENCODER_OPTIONS and v is None for k, v in options.items()
            ):
                name = self.path_of_module(m)
                out = src
                for layer in m.layers:
                    out = super().call_module(
                        layer,
                        layer.forward,
                        (out,),
                        {"src_mask": None, "is_causal": False, "src_key_padding_mask": None},
                    )
                if m.norm is not None:
                    out = super().call_module(m.norm, m.norm.forward, (out,), {})
                self.expanded.append((name, out.node))
                return out
        return super().call_module(m, forward, args, kwargs)


class Program:
    """The traced graph of a model and what the planner needs to know about it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        tracer = _Tracer()
        graph = tracer.trace(model)
        self.nodes: list[fx.Node] = list(graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        holders = [n for n in self.nodes if n.op == "placeholder"]
        if len(holders) != 1:
            raise Unsupported(f"the traced graph takes {len(holders)} inputs, not one")
        self.placeholder = holders[0]
        out = [n for n in self.nodes if n.op == "output"]
        result = out[0].args[0] if out else None
        #: the graph values a structured output (a tuple, a dict...) is made of, in the order
        #: :func:`flatten_output` reads a per-input output; empty for a single tensor
        self.output_leaves: list[fx.Node] = []
        if not isinstance(result, fx.Node) and out:
            # a structure: its values flattened per row and concatenated into one tensor (pure
            # copies), which the engine runs as the graph's result
            found: list[fx.Node] = []

            def collect(n: fx.Node) -> fx.Node:
                found.append(n)
                return n

            map_arg(result, collect)
            if not found:
                raise Unsupported("the model returns no value computed from its input")
            with graph.inserting_before(out[0]):
                flat = [graph.call_method("flatten", (n, 1)) for n in found]
                result = graph.call_function(torch.cat, (flat, 1))
            self.output_leaves = found
            self.nodes = list(graph.nodes)
            self.pos = {n: i for i, n in enumerate(self.nodes)}
        if not isinstance(result, fx.Node):
            raise Unsupported("the model does not return a single tensor")
        self.result: fx.Node = result
        self.calls: dict[str, list[fx.Node]] = defaultdict(list)
        self.attr_uses: set[str] = set()
        for n in self.nodes:
            if n.op == "call_module":
                self.calls[str(n.target)].append(n)
            elif n.op == "get_attr":
                self.attr_uses.add(str(n.target))
        #: modules traced as their parts (an encoder as its layers): name -> the node of their
        #: output, per call; where an activation fault on their output is applied (they are
        #: not in ``calls``, so no fault inside them is taken for one of the whole module)
        self.outputs_of: dict[str, list[fx.Node]] = defaultdict(list)
        for name, n in tracer.expanded:
            self.outputs_of[name].append(n)
        # nodes whose value depends on the input (row-indexed); the others are constants
        self.dynamic: set[fx.Node] = {self.placeholder}
        for n in self.nodes:
            if any(a in self.dynamic for a in n.all_input_nodes):
                self.dynamic.add(n)
        # nodes that lead to the output
        self.useful: set[fx.Node] = set()
        stack = [self.result]
        while stack:
            n = stack.pop()
            if n not in self.useful:
                self.useful.add(n)
                stack.extend(n.all_input_nodes)
        self.last_use = {n: max((self.pos[u] for u in n.users), default=-1) for n in self.nodes}
        # how many (module, name) pairs hold each parameter or buffer object
        self.holders: dict[int, int] = defaultdict(int)
        for _, mod in model.named_modules(remove_duplicate=False):
            for _, t in list(mod.named_parameters(recurse=False)) + list(
                mod.named_buffers(recurse=False)
            ):
                if t is not None:
                    self.holders[id(t)] += 1
        self.modules = dict(model.named_modules())
        self.callee: dict[fx.Node, nn.Module] = {}  # see callee_of
        # in-place mutations, found by :meth:`probe_mutations` (one pass): nodes that modify a
        # value they read, and values that are not what they were made (read after a mutation,
        # or constants modified), whose golden copies must not stand in for them
        self.mutators: set[fx.Node] = set()
        self.unsafe: set[fx.Node] = set()
        #: module calls whose value is a structure (a tuple...), found by :meth:`probe_mutations`
        self.structured: set[fx.Node] = set()
        #: bytes per row of each value with one row per probe input, measured by
        #: :meth:`probe_mutations` (what windows may keep is sized with them)
        self.row_bytes: dict[fx.Node, int] = {}

    def module_of(self, node: fx.Node) -> nn.Module | None:
        """The submodule a ``call_module`` node calls (``None`` for other nodes)."""
        return self.modules.get(str(node.target)) if node.op == "call_module" else None

    def probe_mutations(self, x: torch.Tensor, watch: Watch | None = None) -> None:
        """Run the graph once on ``x`` and record in-place mutations (tensor version counters)
        and the values' bytes per row (:attr:`row_bytes`); ``watch``, when given, is called
        before each node runs with the node and the values so far (one pass serves both).

        A node that changes the version of a value it reads is a *mutator*: it and what it reads
        become ``useful`` (its effect reaches the output through the mutated tensor, even when
        its own result is unused). A value read by some node after a mutation, or a constant
        that was mutated, is *unsafe*: a golden copy taken when it was made is not what its
        readers see. Sites whose computation reads an unsafe value run on the reference engine.
        """
        env: dict[fx.Node, Any] = {}
        made: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node.op == "output":
                break
            before = {a: versions(env.get(a)) for a in node.all_input_nodes}
            for a, ver in before.items():
                if ver != made.get(a):
                    self.unsafe.add(a)
            if watch is not None:
                watch(node, env)
            v = x.clone() if node is self.placeholder else self.run_node(node, env)
            for a, ver in before.items():
                if versions(env.get(a)) != ver:
                    self.mutators.add(node)
            env[node] = v
            made[node] = versions(v)
            if node.op == "call_module" and not isinstance(v, torch.Tensor):
                self.structured.add(node)
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == x.shape[0]:
                self.row_bytes[node] = v[0].numel() * v.element_size()
        for n in self.nodes:
            if n in made and n not in self.dynamic and versions(env.get(n)) != made[n]:
                self.unsafe.add(n)  # a constant modified in place
        stack = [n for n in self.mutators if n not in self.useful]
        while stack:
            n = stack.pop()
            if n not in self.useful:
                self.useful.add(n)
                stack.extend(n.all_input_nodes)

    def callee_of(self, node: fx.Node) -> nn.Module:
        """The submodule a ``call_module`` node calls, looked up once per node
        (``get_submodule`` walks the path; a module shared under several names has one of them
        in :attr:`modules`)."""
        module = self.callee.get(node)
        if module is None:
            module = self.callee[node] = self.model.get_submodule(str(node.target))
        return module

    def run_node(self, node: fx.Node, env: dict[fx.Node, Any], lookup: Any = None) -> Any:
        """Execute one node, its arguments read from ``env`` (or through ``lookup``)."""
        get = lookup or env.__getitem__
        args = map_arg(node.args, get)
        kwargs = map_arg(node.kwargs, get)
        if node.op == "call_module":
            return self.callee_of(node)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "get_attr":
            return _fetch_attr(self.model, str(node.target))
        raise Unsupported(f"cannot run node op {node.op!r}")


@dataclass(eq=False)
class Site:
    """A faulted node and tensor, with the plan of the rest of the network from there."""

    node: fx.Node
    target: str  # "output" or a parameter/buffer name of the module
    module: nn.Module
    order: list[fx.Node]
    checks: set[fx.Node]
    boundary: list[fx.Node]  # row-indexed golden values the rest reads (site inputs included)
    masked_all: bool  # the site does not reach the output: every run is masked
    last: dict[fx.Node, int]  # node -> last step (index in order) that reads it; -1: the start
    ok: bool | None = None  # validated: the rest of the network reproduces golden
    # stacked single-channel products (convolutions, static quantized layers) reproduce golden
    conv_trick: bool | None = None
    need: set[fx.Node] = field(default_factory=set)
    # activation sites: the leading nodes of ``order`` that can run on spatial windows, and how
    window_kinds: dict[fx.Node, str] = field(default_factory=dict)
    window_need: set[fx.Node] | None = None  # their golden values (once sizes are known)
    # activation faults on submodules of a module traced whole: the site is that module's node,
    # run with the faults injected (``target`` is then :data:`INNER`)
    inner: bool = False
    # a packed quantized weight or bias: the module is called under inject (no tensor to swap)
    packed: bool = False
    # convolution weight sites: the leading nodes of ``order`` that can run on channel windows
    # (:mod:`._channels`), and how
    channel_kinds: dict[fx.Node, str] = field(default_factory=dict)
    # parameter sites: the first step of ``order`` that may mix channels (or features), after
    # which a row is seldom golden again (see ``CheckTally``)
    spread: int = 0


def plan_site(
    prog: Program, node: fx.Node, target: str, module: nn.Module, max_checks: int
) -> Site:
    """Plan the rest of the network after the fault site ``(node, target)``."""
    affected = {node}
    for n in prog.nodes[prog.pos[node] + 1 :]:
        if any(a in affected for a in n.all_input_nodes):
            affected.add(n)
    masked_all = prog.result not in affected
    order = [n for n in prog.nodes[prog.pos[node] + 1 :] if n in affected and n in prog.useful]
    last: dict[fx.Node, int] = {node: -1}
    boundary: list[fx.Node] = []
    seen: set[fx.Node] = set()
    for i, n in enumerate(order):
        for a in n.all_input_nodes:
            last[a] = i
            if a not in affected and a in prog.dynamic and a not in seen:
                seen.add(a)
                boundary.append(a)
    if target != "output":
        for a in node.all_input_nodes:
            if a in prog.dynamic and a not in seen:
                seen.add(a)
                boundary.append(a)
    # cut points: after step i the only live affected value is order[i]
    checks: set[fx.Node] = set()
    live = {node} if last.get(node, -1) >= 0 else set()
    for i, n in enumerate(order):
        live = {m for m in live if last.get(m, -1) > i}
        if last.get(n, -1) > i:
            live.add(n)
        if (
            len(checks) < max_checks
            and live == {n}
            and n is not prog.result
            and is_masking(n, prog.module_of(n))
        ):
            checks.add(n)
    for n in order:
        last.setdefault(n, len(order))
    site = Site(node, target, module, order, checks, boundary, masked_all, last)
    # in-place mutations: a golden copy of a value read after it was modified (or a copy that an
    # affected mutation would modify where eager code modifies the shared tensor) is not exact
    reads = {a for n in affected for a in n.all_input_nodes}
    if target != "output":
        reads.update(node.all_input_nodes)
    if reads & prog.unsafe or (prog.unsafe and affected & prog.mutators):
        site.ok = False
    site.need = {*boundary, *checks, node} - {prog.placeholder}
    if target == "output":
        for n in order:
            kind = window_kind(n, prog.module_of(n))
            if kind is None:
                break
            site.window_kinds[n] = kind
    else:
        kinds: dict[fx.Node, str] = {}
        for n in order:
            kind = channel_kind(n, prog.module_of(n))
            if kind is None:
                break
            kinds[n] = kind
        site.spread = len(kinds)
        if target in ("weight", "bias") and isinstance(module, nn.modules.conv._ConvNd):
            site.channel_kinds = kinds
    return site


def trace(
    model: nn.Module, probe: torch.Tensor, watch: Callable[[Program], Watch] | None = None
) -> Program | str:
    """The traced model, with its in-place mutations probed on the inputs ``probe``; or why the
    fast path cannot run it (one warning per model class and reason). With ``watch``,
    ``watch(program)`` is called once the model is traced and what it returns watches the
    probing pass (see :meth:`Program.probe_mutations`)."""
    name = type(model).__name__
    try:
        prog = Program(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back
        warn_once(
            name,
            f"fast engine: torch.fx cannot trace {name} ({type(exc).__name__}: {first_line(exc)}); "
            "running its faults with the reference engine (full forward passes with hooks).",
        )
        return REASONS["trace"]
    try:
        prog.probe_mutations(probe, None if watch is None else watch(prog))
    except Exception as exc:  # noqa: BLE001 - the traced graph does not run: fall back
        warn_once(
            name,
            f"fast engine: the traced graph of {name} does not run ({type(exc).__name__}: "
            f"{first_line(exc)}); running its faults with the reference engine.",
        )
        return REASONS["run"]
    return prog
