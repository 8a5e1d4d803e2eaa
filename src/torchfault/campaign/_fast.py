# SPDX-License-Identifier: MIT
"""The ``fast`` engine: run only what a fault touches, many faults per batch, stop masked rows early.

How it works (DESIGN.md, "The campaign engine"; docs/engine.md has the long version):

1. The model is traced once with ``torch.fx``. A fault *site* is the graph node of the faulted
   module (``call_module``) together with the faulted tensor (its output, or one parameter or
   buffer). For each site the engine plans "the rest of the network from here": the nodes that
   depend on the site and lead to the output, in graph order, and the golden values that they
   read from outside (the *boundary*: a residual branch, the site's own inputs).
2. Golden values are computed per block of inputs (``batch_size`` inputs) by running the graph
   once, and only the values the planned sites need are kept, in a byte-bounded LRU cache.
3. One faulty run is one *row*: (fault, input). Rows of the same site share one batched
   execution: an activation fault becomes the row's golden module output with the fault applied
   (the fault model functions of :data:`~torchfault.faults.FAULT_MODELS` do it, vectorised);
   a parameter fault becomes the module's output recomputed from its cached golden input with
   the faulted tensor (``torch.func.functional_call``; for a convolution only the one output
   channel the fault can change is recomputed, all faults of a site stacked in one call). Then
   the rest of the network runs over all rows at once.
4. After the site and after each masking operation (ReLU-like, max-pooling) at which the faulty
   value is the only live one, every row is compared word for word with the golden value; rows
   that are identical again are finished as ``masked`` and dropped from the batch.

Everything else goes to the ``reference`` engine (full forward passes with
:func:`torchfault.inject`): a model ``torch.fx`` cannot trace (one logging warning per model
class), several faults in one run, ``target="input"``, faults with ``sample`` or ``element`` set,
a module called more than once (unless the fault names its ``call``), parameters used by more
than one module or read directly by the graph, packed quantized weights, and any row group whose
execution raises (each task of the group is rerun through the reference engine, so each gets its
own outcome).

What is guaranteed. Floating-point kernels on CPU may round differently for different batch
sizes (oneDNN and MKL switch kernels for very small batches: on the machine this was written on,
linear layers with fewer than 12 rows). The engine therefore executes every batch with at least
:attr:`FastEngine.min_rows` rows (padding with duplicated rows), and checks, before it trusts
anything: (a) that its own golden pass reproduces the campaign's golden outputs bit for bit for
every input (inputs that do not are run by the reference engine), and (b) for each site, that
"the rest of the network" run on unfaulted rows, in shuffled order, reproduces the golden outputs
bit for bit (a site that does not is run by the reference engine). Under these checks a row's
faulty output is the same float computation as a full forward pass at a batch of at least
``min_rows`` rows, so its outcome, ``faulty_top1`` and ``max_abs_diff`` equal those of the
reference engine whenever the reference engine's own batch is large enough to reproduce the golden
outputs (on that machine: at least 12 inputs per fault). With one input per fault the reference
engine runs batches of one row, whose last bits can differ from the golden pass; it then calls
``benign`` some runs whose output is in truth identical to golden, which this engine calls
``masked``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import map_arg

from torchfault import numerics
from torchfault.campaign._engine import ENGINES, MIN_ROWS, Engine, ReferenceEngine, RunTask
from torchfault.campaign._outcome import OUTCOMES, Criterion, classify, output_words_equal
from torchfault.faults import FAULT_MODELS, Fault, is_packed
from torchfault.injectors import Injection
from torchfault.store import RunRecord

__all__ = ["FastEngine"]

log = logging.getLogger("torchfault.campaign")
_WARNED: set[str] = set()

_MASKING_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Threshold,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_MASKING_FUNCTIONS = {
    torch.relu,
    torch.clamp,
    torch.clip,
    torch.maximum,
    torch.minimum,
    torch.amax,
    torch.max,
    F.relu,
    F.relu6,
    F.hardtanh,
    F.threshold,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_MASKING_METHODS = {
    "relu",
    "relu_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "clip",
    "amax",
    "max",
}


class _Unsupported(Exception):
    """The fast path does not cover this site or model; the reference engine runs it."""


class _BadIndex(Exception):
    """A fault's index does not fit its tensor; the reference engine reports it (as it does)."""


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _ravel(index: Sequence[int], shape: Sequence[int]) -> int:
    if len(index) != len(shape):
        raise _BadIndex("index rank")
    flat = 0
    for v, n in zip(index, shape):
        if not -n <= v < n:
            raise _BadIndex("index range")
        flat = flat * n + (v % n)
    return flat


def _fits(index: Sequence[int], shape: Sequence[int]) -> bool:
    try:
        _ravel(index, shape)
    except _BadIndex:
        return False
    return True


class _Program:
    """The traced graph of a model and what the planner needs to know about it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        graph = fx.symbolic_trace(model).graph
        self.nodes: list[fx.Node] = list(graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        holders = [n for n in self.nodes if n.op == "placeholder"]
        if len(holders) != 1:
            raise _Unsupported(f"the traced graph takes {len(holders)} inputs, not one")
        self.placeholder = holders[0]
        out = [n for n in self.nodes if n.op == "output"]
        result = out[0].args[0] if out else None
        if not isinstance(result, fx.Node):
            raise _Unsupported("the model does not return a single tensor")
        self.result: fx.Node = result
        self.calls: dict[str, list[fx.Node]] = defaultdict(list)
        self.attr_uses: set[str] = set()
        for n in self.nodes:
            if n.op == "call_module":
                self.calls[str(n.target)].append(n)
            elif n.op == "get_attr":
                self.attr_uses.add(str(n.target))
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

    def run_node(self, node: fx.Node, env: dict[fx.Node, Any], lookup: Any = None) -> Any:
        get = lookup or env.__getitem__
        args = map_arg(node.args, get)
        kwargs = map_arg(node.kwargs, get)
        if node.op == "call_module":
            return self.model.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "get_attr":
            return _fetch_attr(self.model, str(node.target))
        raise _Unsupported(f"cannot run node op {node.op!r}")


def _masking(prog: _Program, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(prog.model.get_submodule(str(node.target)), _MASKING_MODULES)
    if node.op == "call_function":
        return node.target in _MASKING_FUNCTIONS
    if node.op == "call_method":
        return node.target in _MASKING_METHODS
    return False


@dataclass(eq=False)
class _Site:
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
    conv_trick: bool | None = None  # stacked single-channel convolutions reproduce golden
    need: set[fx.Node] = field(default_factory=set)


def _plan(prog: _Program, node: fx.Node, target: str, module: nn.Module, max_checks: int) -> _Site:
    affected = {node}
    for n in prog.nodes[prog.pos[node] + 1 :]:
        if any(a in affected for a in n.all_input_nodes):
            affected.add(n)
    masked_all = prog.result not in affected
    order = [n for n in prog.nodes[prog.pos[node] + 1 :] if n in affected and n in prog.useful]
    step = {n: i for i, n in enumerate(order)}
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
        if len(checks) < max_checks and live == {n} and n is not prog.result and _masking(prog, n):
            checks.add(n)
    for n in order:
        last.setdefault(n, len(order))
    site = _Site(node, target, module, order, checks, boundary, masked_all, last)
    site.need = {*boundary, *checks, node} - {prog.placeholder}
    _ = step
    return site


class _GoldenCache:
    """Golden values per (input block, node), in a byte-bounded LRU."""

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


@ENGINES.register(
    "fast",
    description="fx-traced partial re-execution: only what a fault touches, many faults per batch, masked rows stop early.",
)
class FastEngine(Engine):
    """Runs each fault from its own module onward, many faults per batch (see the module docstring).

    Gives the same outcomes as the ``reference`` engine (the tests compare them on every zoo model);
    tasks it does not cover are handed to a :class:`ReferenceEngine` over the same model.

    Attributes:
        min_rows: fewest rows any batched execution has (padding with duplicated rows), so that
            float kernels take the same path as in the golden pass.
        cache_bytes: budget of the golden-activation cache.
        max_checks: masking checks per site after the site itself.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault import Fault, run_campaign
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x = torch.randn(16, 4)
        >>> faults = [Fault("0", "output", index=(j,), bits=(b,)) for j in range(8) for b in (3, 30, 31)]
        >>> fast = run_campaign(model, x, faults, engine="fast")
        >>> ref = run_campaign(model, x, faults, engine="reference")
        >>> [r.outcome for r in fast.runs] == [r.outcome for r in ref.runs]
        True
    """

    name = "fast"
    min_rows = MIN_ROWS
    cache_bytes = 512 * 2**20
    max_checks = 4

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        golden: torch.Tensor,
        criterion: Criterion | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__(model, inputs, golden, criterion, batch_size)
        self.reference = ReferenceEngine(model, inputs, golden, criterion, batch_size)
        self.block = max(self.batch_size, self.min_rows)
        self._prog: _Program | None = None
        self._traced = False
        self._sites: dict[tuple[str, str], _Site | None] = {}
        self._cache = _GoldenCache(self.cache_bytes)
        self._consts: dict[fx.Node, Any] = {}
        self._verified: set[int] = set()
        self._bad_inputs: set[int] = set()
        self._rows_independent: bool | None = None
        #: how many runs each path finished (``fast``, ``masked_early``, ``reference``)
        self.stats: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------ planning
    def _program(self) -> _Program | None:
        if not self._traced:
            self._traced = True
            try:
                self._prog = _Program(self.model)
            except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back
                name = type(self.model).__name__
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                _warn_once(
                    name,
                    f"fast engine: torch.fx cannot trace {name} ({type(exc).__name__}: {first[:200]}); "
                    "running its faults with the reference engine (full forward passes with hooks).",
                )
                self._prog = None
        return self._prog

    def _site_for(self, task: RunTask) -> _Site | None:
        prog = self._program()
        if prog is None or len(task.faults) != 1:
            return None
        f = task.faults[0]
        if f.sample is not None or f.element is not None or f.target == "input" or not f.module:
            return None
        calls = prog.calls.get(f.module, [])
        if f.is_activation:
            if f.call is not None:
                node = calls[f.call] if f.call < len(calls) else None
            else:
                node = calls[0] if len(calls) == 1 else None
        else:
            node = calls[0] if len(calls) == 1 else None
        if node is None:
            return None
        key = (node.name, f.target)
        if key in self._sites:
            return self._sites[key]
        site = None
        module = prog.modules.get(f.module)
        if module is not None:
            if f.is_activation:
                site = _plan(prog, node, f.target, module, self.max_checks)
            else:
                t = getattr(module, f.target, None)
                if (
                    isinstance(t, torch.Tensor)
                    and not is_packed(module, f.target)
                    and f"{f.module}.{f.target}" not in prog.attr_uses
                    and prog.holders.get(id(t), 0) == 1
                ):
                    site = _plan(prog, node, f.target, module, self.max_checks)
        self._sites[key] = site
        return site

    # ------------------------------------------------------------------ golden values
    def _block_inputs(self, b: int) -> tuple[torch.Tensor, int]:
        start = b * self.block
        x = self.inputs[start : start + self.block]
        n = x.shape[0]
        if n < self.min_rows:
            x = torch.cat([x, x[:1].expand(self.min_rows - n, *x.shape[1:])])
        return x, n

    def _forward(
        self, x: torch.Tensor, capture: set[fx.Node], stop: int | None = None
    ) -> tuple[Any, dict[fx.Node, Any]]:
        """Run the graph on ``x`` (up to node number ``stop``); returns the output and ``capture``'s values."""
        prog = self._prog
        assert prog is not None
        env: dict[fx.Node, Any] = {}
        captured: dict[fx.Node, Any] = {}
        last = len(prog.nodes) - 1 if stop is None else stop
        for i, node in enumerate(prog.nodes[: last + 1]):
            if node.op == "output":
                break
            v = x if node is prog.placeholder else prog.run_node(node, env)
            env[node] = v
            if node not in prog.dynamic:
                self._consts.setdefault(node, v)
            if node in capture:
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == x.shape[0]:
                    captured[node] = v.detach().clone()  # later in-place ops must not change it
                else:
                    captured[node] = _NOT_ROWS
            for a in node.all_input_nodes:
                if prog.last_use[a] == i and a is not prog.result:
                    env.pop(a, None)
        return env.get(prog.result), captured

    def _golden(self, b: int, need: set[fx.Node]) -> dict[fx.Node, Any]:
        """Golden values of ``need`` for block ``b`` (and the placeholder), from cache or one pass."""
        prog = self._prog
        assert prog is not None
        out: dict[fx.Node, Any] = {}
        missing = set()
        for n in need:
            t = self._cache.get((b, n.name))
            if t is None:
                missing.add(n)
            else:
                out[n] = t
        x, n_real = self._block_inputs(b)
        out[prog.placeholder] = x
        if not missing and b in self._verified:
            return out
        verify = b not in self._verified
        stop = None if verify else max(prog.pos[n] for n in missing)
        res, captured = self._forward(x, missing, stop)
        for node, v in captured.items():
            out[node] = v
            if v is not _NOT_ROWS:
                self._cache.put((b, node.name), v)
        if verify:
            self._verified.add(b)
            ids = list(range(b * self.block, b * self.block + n_real))
            if not isinstance(res, torch.Tensor) or res.shape[0] != x.shape[0]:
                self._bad_inputs.update(ids)
            else:
                same = output_words_equal(self.golden[ids], res[:n_real])
                bad = [i for i, s in zip(ids, same.tolist()) if not s]
                if bad:
                    log.info(
                        "fast engine: the traced graph does not reproduce the golden output of %d "
                        "input(s) bit for bit; the reference engine runs them.",
                        len(bad),
                    )
                    self._bad_inputs.update(bad)
            if self._rows_independent is None:
                self._rows_independent = self._check_rows(b)
        return out

    def _check_rows(self, b: int) -> bool:
        """Does the graph, run on block rows reversed and duplicated, give each row its golden output?

        The fast path relies on it: a row's values never depend on the other rows of its batch.
        """
        start = b * self.block
        ids = [
            i
            for i in range(start, min(start + self.block, self.inputs.shape[0]))
            if i not in self._bad_inputs
        ]
        if not ids:
            return True
        ids = ids[::-1][: self.min_rows - 1]
        ids = ids + ids[:1]
        x = self.inputs[self._pad(torch.tensor(ids, dtype=torch.int64))]
        try:
            res, _ = self._forward(x, set())
            ok = isinstance(res, torch.Tensor) and bool(
                output_words_equal(self.golden[ids], res[: len(ids)]).all()
            )
        except Exception:  # noqa: BLE001 - a model that fails on another batch: reference
            ok = False
        if not ok:
            _warn_once(
                f"rows:{type(self.model).__name__}",
                f"fast engine: {type(self.model).__name__} does not compute each batch row on its own "
                "(outputs change with the batch composition); running its faults with the reference engine.",
            )
        return ok

    # ------------------------------------------------------------------ execution
    def _gather(self, gold: dict[fx.Node, Any], node: fx.Node, pos: torch.Tensor) -> Any:
        if node in gold:
            v = gold[node]
            if v is _NOT_ROWS:
                raise _Unsupported(f"golden value of {node.name} is not row-indexed")
            return v.index_select(0, pos)
        if node in self._consts:
            return self._consts[node]
        raise _Unsupported(f"no golden value for {node.name}")

    def _pad(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.numel() >= self.min_rows:
            return idx
        return torch.cat([idx, idx[:1].expand(self.min_rows - idx.numel())])

    def _rest(
        self,
        site: _Site,
        value: torch.Tensor,
        pos: torch.Tensor,
        n: int,
        gold: dict[fx.Node, Any],
        drop: bool,
        same0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Run the network after ``site.node`` for rows whose site value is ``value``.

        ``pos`` are the rows' positions in the block (padded; the first ``n`` are real rows).
        ``same0`` tells which rows equal golden at the site (computed here when ``None``).
        Returns ``(out, alive, masked)``: the final outputs of the real rows still alive (``None``
        if none), their row numbers, and the row numbers dropped as masked.
        """
        prog = self._prog
        assert prog is not None
        alive = torch.arange(n)
        masked: list[torch.Tensor] = []
        env: dict[fx.Node, Any] = {site.node: value}

        def compact(node: fx.Node, same: torch.Tensor | None = None) -> None:
            nonlocal pos, alive, n
            if same is None:
                g = gold[node]
                if g is _NOT_ROWS or not isinstance(env[node], torch.Tensor):
                    return
                same = output_words_equal(g.index_select(0, pos[:n]), env[node][:n])
            if not bool(same.any()):
                return
            keep = (~same).nonzero().flatten()
            masked.append(alive[same])
            alive = alive[keep]
            n = int(keep.numel())
            if n == 0:
                return
            idx = self._pad(keep)
            pos = pos.index_select(0, idx)
            for k in list(env):
                v = env[k]
                if isinstance(v, torch.Tensor) and v.dim() > 0 and k in prog.dynamic:
                    env[k] = v.index_select(0, idx)

        def lookup(a: fx.Node) -> Any:
            if a in env:
                return env[a]
            return self._gather(gold, a, pos)

        if drop:
            compact(site.node, same0)
        for i, node in enumerate(site.order):
            if n == 0:
                break
            env[node] = prog.run_node(node, env, lookup)
            for a in node.all_input_nodes:
                if site.last.get(a, -2) == i:
                    env.pop(a, None)
            if drop and node in site.checks:
                compact(node)
        done = torch.cat(masked) if masked else torch.zeros(0, dtype=torch.int64)
        if n == 0:
            return None, alive, done
        res = env[prog.result] if site.order else env[site.node]
        if not isinstance(res, torch.Tensor):
            raise _Unsupported("the output is not a tensor")
        return res[:n], alive, done

    def _site_inputs(
        self, site: _Site, gold: dict[fx.Node, Any], pos: torch.Tensor
    ) -> tuple[Any, Any]:
        get = lambda a: self._gather(gold, a, pos)  # noqa: E731
        return map_arg(site.node.args, get), map_arg(site.node.kwargs, get)

    def _layer(
        self, site: _Site, tensor: torch.Tensor, gold: dict[fx.Node, Any], pos: torch.Tensor
    ) -> torch.Tensor:
        """The site module's output over rows ``pos`` with ``tensor`` as its faulted parameter."""
        args, kwargs = self._site_inputs(site, gold, pos)
        out = torch.func.functional_call(
            site.module, {site.target: tensor}, tuple(args), dict(kwargs)
        )
        if not isinstance(out, torch.Tensor):
            raise _Unsupported("the module output is not a tensor")
        return out

    @staticmethod
    def _faulty_tensor(f: Fault, t: torch.Tensor) -> torch.Tensor:
        """``t`` with fault ``f`` applied, as :func:`torchfault.inject` writes it."""
        fmt = numerics.get_format(f.format, t)
        flat = torch.tensor([_ravel(f.index, t.shape)], dtype=torch.int64)
        bit_op = FAULT_MODELS.info(f.model).capabilities.get("bit_op")
        if bit_op is not None:
            return numerics.apply_bits(
                t.detach(), flat, numerics.bit_mask(f.bits, fmt), bit_op, fmt
            )
        return FAULT_MODELS.get(f.model)(t.detach(), flat, f.bits, fmt, None, **f.param_dict)

    def _apply_activation(
        self, value: torch.Tensor, faults: list[Fault], spans: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply each fault to its rows of ``value``, as the reference hooks do.

        Returns the new tensor and, per row, whether the faulted element kept its word.
        """
        per = value[0].numel()
        shape = value.shape[1:]
        groups: dict[tuple[str, str | None], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        others = []
        every = []
        for f, (r0, r1) in zip(faults, spans):
            inner = _ravel(f.index, shape)
            flat = torch.arange(r0, r1, dtype=torch.int64) * per + inner
            every.append(flat)
            bit_op = FAULT_MODELS.info(f.model).capabilities.get("bit_op")
            if bit_op is None:
                others.append((f, flat))
                continue
            fmt = numerics.get_format(f.format, value)
            mask = numerics.bit_mask(f.bits, fmt)
            flats, masks = groups.setdefault((bit_op, f.format), ([], []))
            flats.append(flat)
            masks.append(torch.full((r1 - r0,), mask, dtype=torch.int64))
        out = value
        for (op, fmt_name), (flats, masks) in groups.items():
            fmt = numerics.get_format(fmt_name, value)
            out = numerics.apply_bits(out, torch.cat(flats), torch.cat(masks), op, fmt)
        for f, flat in others:
            fmt = numerics.get_format(f.format, out)
            out = FAULT_MODELS.get(f.model)(out, flat, f.bits, fmt, None, **f.param_dict)
        if out is value:
            out = value.clone()
        try:
            flat_all = torch.cat(every)
            same = output_words_equal(
                value.reshape(-1)[flat_all][:, None], out.reshape(-1)[flat_all][:, None]
            )
        except Exception:  # noqa: BLE001 - e.g. quantized tensors: compare whole rows instead
            same = None
        return out, same

    def _conv_ok(self, site: _Site, f: Fault) -> bool:
        m = site.module
        return (
            site.conv_trick is not False
            and isinstance(m, nn.modules.conv._ConvNd)
            and not m.transposed
            and m.groups == 1
            and site.target in ("weight", "bias")
            and len(f.index) >= 1
        )

    def _apply_parameter(
        self,
        site: _Site,
        faults: list[Fault],
        spans: list[tuple[int, int]],
        gold: dict[fx.Node, Any],
        pos: torch.Tensor,
        base: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The site output for every row: its fault's layer output, from the cached layer inputs.

        Returns it and, per row, whether the row equals golden there.
        """
        t = getattr(site.module, site.target)
        value = base.clone()
        n = spans[-1][1]
        same = torch.zeros(n, dtype=torch.bool)
        stacks: dict[tuple[int, ...], list[tuple[int, int, torch.Tensor]]] = defaultdict(list)
        full: list[tuple[int, int, torch.Tensor]] = []
        for f, (r0, r1) in zip(faults, spans):
            faulty = self._faulty_tensor(f, t)
            if self._conv_ok(site, f):
                rows = tuple(pos[r0:r1].tolist())
                stacks[rows].append((r0, int(f.index[0]) % t.shape[0], faulty))
            else:
                full.append((r0, r1, faulty))
        for rows, items in stacks.items():
            if self._stacked_conv(site, rows, items, gold, value):
                for r0, o, _ in items:
                    r1 = r0 + len(rows)
                    same[r0:r1] = output_words_equal(base[r0:r1, o], value[r0:r1, o])
            else:
                site.conv_trick = False
                full.extend((r0, r0 + len(rows), faulty) for r0, _, faulty in items)
        for r0, r1, faulty in full:
            out = self._layer(site, faulty, gold, self._pad(pos[r0:r1]))
            value[r0:r1] = out[: r1 - r0]
            same[r0:r1] = output_words_equal(base[r0:r1], value[r0:r1])
        return value, same

    def _stacked_conv(
        self,
        site: _Site,
        rows: tuple[int, ...],
        items: list[tuple[int, int, torch.Tensor]],
        gold: dict[fx.Node, Any],
        value: torch.Tensor,
    ) -> bool:
        """One convolution computing each fault's one changed output channel, plus a golden canary."""
        m = site.module
        idx = self._pad(torch.tensor(rows, dtype=torch.int64))
        args, kwargs = self._site_inputs(site, gold, idx)
        if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
            return False
        w, b = m.weight, m.bias
        canary = items[0][1]
        ws, bs = [], []
        for _, o, faulty in items:
            ws.append((faulty if site.target == "weight" else w)[o])
            if b is not None:
                bs.append((faulty if site.target == "bias" else b)[o])
        ws.append(w[canary])
        if b is not None:
            bs.append(b[canary])
        y = m._conv_forward(args[0], torch.stack(ws), torch.stack(bs) if b is not None else None)
        n = len(rows)
        g = gold[site.node].index_select(0, idx[:n])
        if not bool(output_words_equal(g[:, canary], y[:n, -1]).all()):
            return False
        if site.conv_trick is None:
            site.conv_trick = True
        for k, (r0, o, _) in enumerate(items):
            value[r0 : r0 + n, o] = y[:n, k]
        return True

    def _validate(self, site: _Site, b: int, gold: dict[fx.Node, Any]) -> bool:
        """May the site run fast? Its golden values must be row-indexed; a parameter site's module,
        called from its cached inputs, must reproduce its golden output bit for bit."""
        if site.masked_all:
            return True
        if any(gold.get(n) is _NOT_ROWS for n in site.need):
            return False
        if site.target == "output":
            return True
        start = b * self.block
        ids = [
            i
            for i in range(start, min(start + self.block, self.inputs.shape[0]))
            if i not in self._bad_inputs
        ]
        if not ids:
            return False
        pos = self._pad(torch.tensor(ids[::-1][: self.min_rows], dtype=torch.int64) - start)
        try:
            value = self._layer(site, getattr(site.module, site.target), gold, pos)
            return bool(output_words_equal(gold[site.node].index_select(0, pos), value).all())
        except Exception as exc:  # noqa: BLE001 - anything odd: the reference engine runs it
            log.info(
                "fast engine: %s:%s runs on the reference engine (%s)",
                site.node.name,
                site.target,
                exc,
            )
            return False

    # ------------------------------------------------------------------ run
    @torch.no_grad()
    def run(self, tasks: Sequence[RunTask]) -> list[RunRecord]:
        """Run the tasks; records come back task by task, inputs in each task's order."""
        results: dict[tuple[int, int], RunRecord] = {}
        to_reference: dict[int, list[int]] = defaultdict(list)
        rows_by_block: dict[int, list[tuple[int, int]]] = defaultdict(list)
        sites: dict[int, _Site] = {}
        for ti, task in enumerate(tasks):
            site = self._site_for(task)
            if site is None:
                to_reference[ti].extend(task.input_ids)
                continue
            # a bad fault raises here, as in the reference engine
            Injection(self.model, task.faults)
            sites[ti] = site
            for i in task.input_ids:
                rows_by_block[int(i) // self.block].append((ti, int(i)))
        outs: dict[tuple[int, int], torch.Tensor | None] = {}
        seconds: dict[tuple[int, int], float] = {}
        for b in sorted(rows_by_block):
            self._run_block(b, rows_by_block[b], tasks, sites, outs, seconds, to_reference)
        self._classify(tasks, outs, seconds, results)
        for ti, ids in to_reference.items():
            task = tasks[ti]
            for r in self.reference.run([RunTask(task.fault_id, task.faults, tuple(ids))]):
                results[(ti, r.input_id)] = r
            self.stats["reference"] += len(ids)
        return [results[(ti, int(i))] for ti, task in enumerate(tasks) for i in task.input_ids]

    def _run_block(
        self,
        b: int,
        rows: list[tuple[int, int]],
        tasks: Sequence[RunTask],
        sites: dict[int, _Site],
        outs: dict[tuple[int, int], torch.Tensor | None],
        seconds: dict[tuple[int, int], float],
        to_reference: dict[int, list[int]],
    ) -> None:
        need: set[fx.Node] = set()
        for s in {id(sites[ti]): sites[ti] for ti, _ in rows}.values():
            need |= s.need
        gold = self._golden(b, need)
        by_site: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for ti, i in rows:
            if i in self._bad_inputs or not self._rows_independent:
                to_reference[ti].append(i)
            else:
                by_site[id(sites[ti])].append((ti, i))
        for group in by_site.values():
            site = sites[group[0][0]]
            if site.ok is None:
                site.ok = self._validate(site, b, gold)
            if not site.ok:
                for ti, i in group:
                    to_reference[ti].append(i)
                continue
            if site.target == "output" and not site.masked_all:
                shape = gold[site.node].shape[1:]
                fits = {
                    ti: _fits(tasks[ti].faults[0].index, shape) for ti in {ti for ti, _ in group}
                }
                for ti, i in group:
                    if not fits[ti]:  # the reference engine reports the bad index (as a DUE)
                        to_reference[ti].append(i)
                group = [(ti, i) for ti, i in group if fits[ti]]
            group.sort()
            # rows of one fault stay together; a batch holds up to batch_size rows
            start = 0
            while start < len(group):
                stop = min(start + self.batch_size, len(group))
                while (
                    stop < len(group) and stop > start + 1 and group[stop][0] == group[stop - 1][0]
                ):
                    stop += 1
                batch = group[start:stop]
                start = stop
                t0 = time.perf_counter()
                try:
                    done = self._run_rows(site, batch, tasks, gold, b)
                except Exception as exc:  # noqa: BLE001 - each task of the batch gets its own outcome
                    if isinstance(exc, _Unsupported):
                        site.ok = False
                    log.debug(
                        "fast engine: batch at %s raised (%s); rerunning it on the reference engine",
                        site.node.name,
                        exc,
                    )
                    for ti, i in batch:
                        to_reference[ti].append(i)
                    continue
                per = (time.perf_counter() - t0) / max(len(batch), 1)
                for key, out in done.items():
                    outs[key] = out
                    seconds[key] = per

    def _run_rows(
        self,
        site: _Site,
        batch: list[tuple[int, int]],
        tasks: Sequence[RunTask],
        gold: dict[fx.Node, Any],
        b: int,
    ) -> dict[tuple[int, int], torch.Tensor | None]:
        n = len(batch)
        pos = self._pad(torch.tensor([i for _, i in batch], dtype=torch.int64) - b * self.block)
        if site.masked_all:
            return {key: None for key in batch}
        faults: list[Fault] = []
        spans: list[tuple[int, int]] = []
        r = 0
        while r < n:
            ti = batch[r][0]
            r1 = r
            while r1 < n and batch[r1][0] == ti:
                r1 += 1
            faults.append(tasks[ti].faults[0])
            spans.append((r, r1))
            r = r1
        base = self._gather(gold, site.node, pos)
        if site.target == "output":
            value, same = self._apply_activation(base, faults, spans)
        else:
            value, same = self._apply_parameter(site, faults, spans, gold, pos, base)
        out, alive, masked = self._rest(site, value, pos, n, gold, drop=True, same0=same)
        done: dict[tuple[int, int], torch.Tensor | None] = {batch[int(k)]: None for k in masked}
        self.stats["masked_early"] += len(done)
        if out is not None:
            for k, row in zip(alive.tolist(), out):
                done[batch[k]] = row
        return done

    def _classify(
        self,
        tasks: Sequence[RunTask],
        outs: dict[tuple[int, int], torch.Tensor | None],
        seconds: dict[tuple[int, int], float],
        results: dict[tuple[int, int], RunRecord],
    ) -> None:
        if not outs:
            return
        keys = list(outs)
        ids = [i for _, i in keys]
        golden = self.golden[ids]
        faulty = torch.stack(
            [golden[k] if outs[key] is None else outs[key] for k, key in enumerate(keys)]
        )
        codes, g_top, f_top, diff = classify(golden, faulty, self.criterion)
        for key, c, g, f, d in zip(
            keys, codes.tolist(), g_top.tolist(), f_top.tolist(), diff.tolist()
        ):
            ti, i = key
            results[key] = RunRecord(
                tasks[ti].fault_id, i, OUTCOMES[int(c)], int(g), int(f), float(d), seconds[key]
            )
        self.stats["fast"] += len(keys)


class _NotRows:
    def __repr__(self) -> str:
        return "<not row-indexed>"


_NOT_ROWS: Any = _NotRows()
