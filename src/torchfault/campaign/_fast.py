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
5. Spatial windows (activation faults on 4-d maps). A single-element fault can only change, in
   each following convolution, pooling or element-wise operation, a window of the map that
   grows with the kernel and shrinks with the stride. While the nodes after the site are such
   operations (:func:`_win_kind`), every value is kept as a :class:`_Win`: per row, the window's
   contents and position (golden everywhere else). A convolution or pooling is computed on the
   region its output window reads (golden halo, the input's window pasted in, zero or -inf past
   the map's border) with padding 0; an element-wise operation on the union of its operands'
   windows. Canary rows (golden, no fault) ride along in every windowed computation and must
   reproduce the golden window word for word; if they do not (CPU kernels choose algorithms by
   shape), that (node, shape) is remembered as failed and computed whole from then on. At the
   first node that is not windowable, whose window would cover more than
   :attr:`FastEngine.window_area` of its map, or whose canary fails, every live window becomes
   its whole value again and the rest of the network runs as in 3. Rows are still dropped as
   masked at the cut points (comparing windows). Batches of fewer than
   :attr:`FastEngine.window_min_rows` rows of a site skip windows (they cost more than they save).

Everything else goes to the ``reference`` engine (full forward passes with
:func:`torchfault.inject`): a model ``torch.fx`` cannot trace (one logging warning per model
class), inputs that are not contiguous (channels-last), a model with transcendental element-wise
functions on rows that are not vector-aligned or under several threads (:meth:`FastEngine._positions_exact`),
several faults in one run, ``target="input"``, faults with ``sample`` or ``element`` set,
a module called more than once (unless the fault names its ``call``), parameters used by more
than one module or read directly by the graph, packed quantized weights, and any row group whose
execution raises (each task of the group is rerun through the reference engine, so each gets its
own outcome).

What is guaranteed. Floating-point kernels on CPU may round differently for different batch
sizes (oneDNN and MKL switch kernels for very small batches: on the machine this was written on,
linear layers with fewer than 12 rows). The engine therefore executes every batch with at least
:attr:`FastEngine.min_rows` rows (padding with duplicated rows), and checks, before it trusts
anything: (a) that its own golden pass reproduces the campaign's golden outputs bit for bit for
every input (inputs that do not are run by the reference engine), and (b) once per engine, on
the first block with such inputs, that
every node's value of ``min_rows`` rows is the same bits in a batch of their own and at
the end of taller, odd-sized batches (:meth:`FastEngine._same_in_any_batch`; a model that fails
it, such as one with a linear layer a few columns wide, runs on the reference engine). One pass
also records in-place modifications (tensor version counters): nodes that modify a value they
read are kept in the plan even when their result is unused, and a site that reads a value after
it was modified in place (where a golden copy is not what the model reads) runs on the reference
engine. Gathered golden rows keep their memory layout (channels-last stays channels-last). A
stacked single-channel convolution is checked by the same convolution with the golden kernels of
the faulted channels at the same places. Under these checks a row's
faulty output is the same float computation as a full forward pass at a batch of at least
``min_rows`` rows, so its outcome, ``faulty_top1`` and ``max_abs_diff`` equal those of the
reference engine, which pads its own passes to the same ``min_rows``
(:data:`~torchfault.campaign._engine.MIN_ROWS`). Windowed computations are trusted only where
their canary rows reproduce golden bit for bit; everything outside a window is golden by
construction (nothing there reads a changed value).
"""

from __future__ import annotations

import logging
import operator
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
from torch.nn.modules.utils import _pair

from torchfault import numerics
from torchfault.campaign._engine import (
    ENGINES,
    MIN_ROWS,
    Engine,
    ReferenceEngine,
    RunTask,
    _pad_index,
    _random_faults,
)
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


# Spatial windows (activation faults): operations whose output at one position reads a bounded
# neighbourhood of their inputs, computed on crops around a fault (see _win_kind). Transcendental
# element-wise functions (_INEXACT_MODULES below) are not among them: their bits may depend on
# where a value sits in its buffer, so they are computed on whole maps.
_WIN_UNARY_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Threshold,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
)
_WIN_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.relu,
    torch.clamp,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
}
_WIN_METHODS = {
    "add",
    "sub",
    "mul",
    "div",
    "relu",
    "clamp",
    "clamp_min",
    "clamp_max",
}


class _Unsupported(Exception):
    """The fast path does not cover this site or model; the reference engine runs it."""


class _BadIndex(Exception):
    """A fault's index does not fit its tensor; the reference engine reports it (as it does)."""


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


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


def _take(v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``pos`` of ``v``, in ``v``'s memory layout (channels-last and permuted values keep
    their strides, so kernels take the same path as on the whole value)."""
    return v.index_select(0, pos) if v.is_contiguous() else v[pos]


def _versions(v: Any) -> Any:
    """The version counters of the tensors in ``v`` (changed by in-place operations)."""
    if isinstance(v, torch.Tensor):
        try:
            return v._version
        except RuntimeError:  # an inference tensor: no counter
            return -1
    if isinstance(v, (tuple, list)):
        return tuple(_versions(u) for u in v)
    if isinstance(v, dict):
        return tuple((k, _versions(u)) for k, u in v.items())
    return None


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
        # in-place mutations, found by :meth:`probe_mutations` (one pass): nodes that modify a
        # value they read, and values that are not what they were made (read after a mutation,
        # or constants modified), whose golden copies must not stand in for them
        self.mutators: set[fx.Node] = set()
        self.unsafe: set[fx.Node] = set()

    def probe_mutations(self, x: torch.Tensor) -> None:
        """Run the graph once on ``x`` and record in-place mutations (tensor version counters).

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
            before = {a: _versions(env.get(a)) for a in node.all_input_nodes}
            for a, ver in before.items():
                if ver != made.get(a):
                    self.unsafe.add(a)
            v = x.clone() if node is self.placeholder else self.run_node(node, env)
            for a, ver in before.items():
                if _versions(env.get(a)) != ver:
                    self.mutators.add(node)
            env[node] = v
            made[node] = _versions(v)
        for n in self.nodes:
            if n in made and n not in self.dynamic and _versions(env.get(n)) != made[n]:
                self.unsafe.add(n)  # a constant modified in place
        stack = [n for n in self.mutators if n not in self.useful]
        while stack:
            n = stack.pop()
            if n not in self.useful:
                self.useful.add(n)
                stack.extend(n.all_input_nodes)

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


def _node_in(
    prog: _Program, node: fx.Node, modules: tuple[type, ...], functions: Any, methods: Any
) -> bool:
    """Whether ``node`` calls a module of one of the types ``modules``, or one of the
    ``functions``, or a tensor method named in ``methods``."""
    if node.op == "call_module":
        return isinstance(prog.modules.get(str(node.target)), modules)
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def _masking(prog: _Program, node: fx.Node) -> bool:
    return _node_in(prog, node, _MASKING_MODULES, _MASKING_FUNCTIONS, _MASKING_METHODS)


#: element-wise operations whose CPU kernels round differently on their vectorised path and on
#: the scalar path for the tail of a buffer (transcendental functions): a value's bits then
#: depend on where it sits in its buffer, which the fast engine changes (rows in other batches,
#: windows cropped from maps)
_INEXACT_MODULES: tuple[type, ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.LogSigmoid,
    nn.Tanhshrink,
)
_INEXACT_FUNCTIONS = {
    torch.sigmoid,
    torch.tanh,
    torch.exp,
    torch.exp2,
    torch.expm1,
    torch.log,
    torch.log2,
    torch.log10,
    torch.log1p,
    torch.sin,
    torch.cos,
    torch.tan,
    torch.erf,
    torch.erfc,
    torch.pow,
    torch.special.expit,
    operator.pow,
    F.gelu,
    F.silu,
    F.elu,
    F.celu,
    F.selu,
    F.softplus,
    F.mish,
    F.logsigmoid,
    F.tanhshrink,
}
_INEXACT_METHODS = {
    "sigmoid",
    "tanh",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log2",
    "log10",
    "log1p",
    "sin",
    "cos",
    "tan",
    "erf",
    "erfc",
    "pow",
    "sigmoid_",
    "tanh_",
    "exp_",
    "log_",
}


def _inexact(prog: _Program, node: fx.Node) -> bool:
    """Whether ``node`` is an element-wise operation whose bits may depend on its position in
    the buffer (see ``_INEXACT_MODULES``)."""
    return _node_in(prog, node, _INEXACT_MODULES, _INEXACT_FUNCTIONS, _INEXACT_METHODS)


def _win_kind(prog: _Program, node: fx.Node) -> str | None:
    """How node can run on a spatial window of its 4-d inputs: ``conv``, ``maxpool``, ``avgpool``
    (a bounded neighbourhood, its halo read from golden values), ``unary`` (one module input,
    element by element) or ``ew`` (an element-wise function or method); ``None``: it cannot."""
    if node.op == "call_module":
        m = prog.model.get_submodule(str(node.target))
        kind = type(m)
        if kind is nn.Conv2d:
            ok = m.padding_mode == "zeros" and isinstance(m.padding, tuple)
            return "conv" if ok else None
        if kind is nn.MaxPool2d:
            return "maxpool" if not (m.ceil_mode or m.return_indices) else None
        if kind is nn.AvgPool2d:
            ok = not m.ceil_mode and (m.count_include_pad or _pair(m.padding) == (0, 0))
            return "avgpool" if ok else None
        if kind in _WIN_UNARY_MODULES:
            if m.training:
                return None
            if kind is nn.BatchNorm2d and m.running_mean is None:
                return None
            return "unary"
        return None
    if node.op == "call_function" and node.target in _WIN_FUNCTIONS:
        return "ew"
    if node.op == "call_method" and node.target in _WIN_METHODS:
        return "ew"
    return None


@dataclass(eq=False)
class _Win:
    """A 4-d value that differs from golden only inside a window: per row, ``data`` (rows, C, h, w)
    is the value at rows ``y0 .. y0+h-1`` and columns ``x0 .. x0+w-1`` (inside the map), and the
    golden value holds everywhere else."""

    data: torch.Tensor
    y0: torch.Tensor
    x0: torch.Tensor

    def same_window(self, other: _Win) -> bool:
        return (
            self.data.shape[2:] == other.data.shape[2:]
            and torch.equal(self.y0, other.y0)
            and torch.equal(self.x0, other.x0)
        )


@dataclass(eq=False)
class _Batch:
    """The rows of one execution of "the rest of the network" and their live values.

    In full mode, ``pos`` holds the block positions of the ``n`` real rows, padded to
    ``min_rows``; in window mode, the ``n`` real rows are followed by canary rows (golden values,
    no fault) that check every windowed computation.
    """

    b: int
    pos: torch.Tensor
    n: int
    env: dict[fx.Node, Any]
    alive: torch.Tensor
    masked: list[torch.Tensor] = field(default_factory=list)


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
    # activation sites: the leading nodes of ``order`` that can run on spatial windows, and how
    win_kind: dict[fx.Node, str] = field(default_factory=dict)
    win_need: set[fx.Node] | None = None  # their golden values (once sizes are known)


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
            kind = _win_kind(prog, n)
            if kind is None:
                break
            site.win_kind[n] = kind
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
        window: compute the layers after an activation fault on the spatial window the fault can
            reach (checked by golden canary rows; see the module docstring).
        window_area: the windowed computation stops (the whole maps are computed) at the first
            layer whose window would cover more than this fraction of its output map.
        window_min_rows: fewest rows of one site in a batch for windows to be used (below it,
            the fixed cost of the windowed steps outweighs what they save).
        row_check_rows: inputs whose every value is compared in a batch of ``min_rows`` rows and
            at the end of taller batches before the fast path is trusted
            (:meth:`_same_in_any_batch`).
        row_check_heights: the taller batches: the checked rows after this many other rows.

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
    window = True
    window_area = 0.5
    window_min_rows = 32
    row_check_rows = 16
    row_check_heights = (1, 3, 33)

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
        self._row_bytes: dict[fx.Node, int] = {}  # bytes per row of each node's value
        self._measured = False
        #: windowed computations whose canary failed: (node name, shape of its windowed input)
        self._win_bad: set[tuple[str, tuple[int, ...]]] = set()
        #: how many runs each path finished (``fast``, ``masked_early``, ``reference``); and, for
        #: spatial windows, ``window_rows`` (rows that started on a window), ``window_steps``
        #: (windowed node computations whose canaries passed), ``window_fallback`` (canary failures)
        self.stats: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------ planning
    def _program(self) -> _Program | None:
        if not self._traced:
            self._traced = True
            name = type(self.model).__name__
            if not self.inputs.is_contiguous():
                # channels-last (or other strided) inputs: CPU kernels pick layouts and rounding
                # by strides, and a differential fuzz found rows of such models that the fast
                # path could not reproduce bit for bit; they run on the reference engine
                _warn_once(
                    f"layout:{name}",
                    f"fast engine: the inputs of {name} are not contiguous (channels-last?); "
                    "running its faults with the reference engine (full forward passes).",
                )
                return None
            try:
                self._prog = _Program(self.model)
            except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back
                _warn_once(
                    name,
                    f"fast engine: torch.fx cannot trace {name} ({type(exc).__name__}: {_first_line(exc)}); "
                    "running its faults with the reference engine (full forward passes with hooks).",
                )
                return None
            try:
                self._prog.probe_mutations(self._block_inputs(0)[0][: self.min_rows])
            except Exception as exc:  # noqa: BLE001 - the traced graph does not run: fall back
                _warn_once(
                    name,
                    f"fast engine: the traced graph of {name} does not run ({type(exc).__name__}: "
                    f"{_first_line(exc)}); running its faults with the reference engine.",
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
        if _random_faults(task):  # one seeded run per (fault, input): the reference engine's way
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
            x = x[_pad_index(n, self.min_rows)]  # indexing keeps the layout (torch.cat may not)
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
            # a copy: the model may modify its input in place (the block's inputs stay golden)
            v = x.clone() if node is prog.placeholder else prog.run_node(node, env)
            env[node] = v
            if (
                node not in self._row_bytes
                and isinstance(v, torch.Tensor)
                and v.dim() > 0
                and v.shape[0] == x.shape[0]
            ):
                self._row_bytes[node] = v[0].numel() * v.element_size()
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

    def _check_rows(self, b: int) -> bool | None:
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
            return None  # nothing to check here: decided on a later block (until then: reference)
        ids = ids[::-1][: self.min_rows - 1]
        ids = ids + ids[:1]
        if not self._positions_exact():
            _warn_once(
                f"rows:{type(self.model).__name__}",
                f"fast engine: {type(self.model).__name__} applies a transcendental element-wise "
                "function (sigmoid, tanh, exp...) to values whose bits may depend on their place "
                "in a batch; running its faults with the reference engine.",
            )
            return False
        try:
            ok, res = self._same_in_any_batch(self._pad(torch.tensor(ids, dtype=torch.int64)))
            ok = (
                ok
                and isinstance(res, torch.Tensor)
                and bool(output_words_equal(self.golden[ids], res[: len(ids)]).all())
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

    #: bytes per row that keep every row of a buffer on the same lanes of vectorised kernels
    row_alignment = 256

    def _positions_exact(self) -> bool:
        """Are the inexact element-wise operations of the graph (``_INEXACT_MODULES``) safe from
        their values' positions? They are when their inputs' rows are a multiple of
        :attr:`row_alignment` bytes (every row starts on the same vector lanes and no buffer has
        a scalar tail) and one intra-op thread runs (threads split buffers at other places)."""
        prog = self._prog
        assert prog is not None
        for node in prog.nodes:
            if node not in prog.dynamic or not _inexact(prog, node):
                continue
            if torch.get_num_threads() > 1:
                return False
            for a in node.all_input_nodes:
                if a not in prog.dynamic:
                    continue
                size = self._row_bytes.get(a)
                if size is None or size % self.row_alignment:
                    return False
        return True

    def _same_in_any_batch(self, batch: torch.Tensor) -> tuple[bool, Any]:
        """Run the graph on the inputs ``batch`` (row numbers, at least ``min_rows``); are its first
        :attr:`row_check_rows` rows computed to the same bits, at every node of the graph, there
        and at the end of taller, odd-sized batches? Returns ``(same, output of batch)``.

        The reference engine computes a row in a batch of its fault's inputs; the fast engine in
        a batch of many faults' rows. Small layers are not always row-wise exact on CPU (a GEMM
        with a few columns treats the last rows of a tall batch apart; element-wise kernels
        round the tail of a buffer that does not fill a vector differently), so the fast path
        needs every node's value of a row to be the same wherever the row sits.
        """
        prog = self._prog
        assert prog is not None
        rows = batch[: self.row_check_rows]
        k = len(rows)
        extra = lambda m: rows.repeat(m // k + 1)[:m].flip(0)  # noqa: E731
        # (row indices of the batch, where the checked rows start): the batch itself, and the
        # checked rows at the end of taller batches of a few odd heights (the tails of blocked
        # kernels); with row_check_rows = min_rows every batch has at least min_rows rows (the
        # engine pads every batch to it: smaller ones may take other kernels on purpose)
        heights = tuple(k + e for e in self.row_check_heights)
        layouts = [(batch, 0)]
        layouts += [(torch.cat([extra(h - k), rows]), h - k) for h in heights]
        envs: list[dict[fx.Node, Any]] = [{} for _ in layouts]
        for i, node in enumerate(prog.nodes):
            if node.op == "output":
                break
            vals = []
            for env, (idx, _) in zip(envs, layouts):
                v = self.inputs[idx] if node is prog.placeholder else prog.run_node(node, env)
                env[node] = v
                vals.append(v)
            first = vals[0]
            if (
                node in prog.dynamic
                and isinstance(first, torch.Tensor)
                and first.dim() > 0
                and first.shape[0] == batch.numel()
            ):
                for v, (idx, at) in zip(vals[1:], layouts[1:]):
                    if not (
                        isinstance(v, torch.Tensor)
                        and v.shape[0] == idx.numel()
                        and v.dtype == first.dtype
                        and bool(output_words_equal(first[:k], v[at : at + k]).all())
                    ):
                        log.info("fast engine: %s differs with the batch composition", node.name)
                        return False, None
            for a in node.all_input_nodes:
                if prog.last_use[a] == i and a is not prog.result:
                    for env in envs:
                        env.pop(a, None)
        return True, envs[0].get(prog.result)

    # ------------------------------------------------------------------ execution
    def _gather(self, gold: dict[fx.Node, Any], node: fx.Node, pos: torch.Tensor) -> Any:
        if node in gold:
            v = gold[node]
            if v is _NOT_ROWS:
                raise _Unsupported(f"golden value of {node.name} is not row-indexed")
            return _take(v, pos)
        if node in self._consts:
            return self._consts[node]
        raise _Unsupported(f"no golden value for {node.name}")

    def _pad(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.numel() >= self.min_rows:
            return idx
        return torch.cat([idx, idx[:1].expand(self.min_rows - idx.numel())])

    def _rest(
        self, site: _Site, st: _Batch, gold: dict[fx.Node, Any], drop: bool, same0: Any = None
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Run the network after ``site.node`` for the rows of ``st`` (its site value in ``st.env``).

        ``st`` is in window mode when the site value is a :class:`_Win`, else in full mode.
        ``same0`` tells which real rows equal golden at the site (computed here when ``None``).
        Returns ``(out, alive, masked)``: the final outputs of the real rows still alive (``None``
        if none), their row numbers, and the row numbers dropped as masked.
        """
        prog = self._prog
        assert prog is not None
        start = 0
        if isinstance(st.env[site.node], _Win):
            if drop:
                self._compact_win(st, site.node, gold, same0)
            start = self._run_windowed(site, st, gold, drop)
        elif drop:
            self._compact(st, site.node, gold, same0)

        def lookup(a: fx.Node) -> Any:
            if a in st.env:
                return st.env[a]
            return self._gather(gold, a, st.pos)

        for i in range(start, len(site.order)):
            if st.n == 0:
                break
            node = site.order[i]
            st.env[node] = prog.run_node(node, st.env, lookup)
            for a in node.all_input_nodes:
                if site.last.get(a, -2) == i:
                    st.env.pop(a, None)
            if drop and node in site.checks:
                self._compact(st, node, gold)
        done = torch.cat(st.masked) if st.masked else torch.zeros(0, dtype=torch.int64)
        if st.n == 0:
            return None, st.alive, done
        res = st.env[prog.result] if site.order else st.env[site.node]
        if not isinstance(res, torch.Tensor):
            raise _Unsupported("the output is not a tensor")
        return res[: st.n], st.alive, done

    def _compact(
        self, st: _Batch, node: fx.Node, gold: dict[fx.Node, Any], same: Any = None
    ) -> None:
        """Full mode: drop the rows whose value at ``node`` equals golden (finished as masked)."""
        prog = self._prog
        assert prog is not None
        n, env = st.n, st.env
        if same is None:
            g = gold[node]
            if g is _NOT_ROWS or not isinstance(env[node], torch.Tensor):
                return
            same = output_words_equal(_take(g, st.pos[:n]), env[node][:n])
        if not bool(same.any()):
            return
        keep = (~same).nonzero().flatten()
        st.masked.append(st.alive[same])
        st.alive = st.alive[keep]
        st.n = int(keep.numel())
        if st.n == 0:
            return
        idx = self._pad(keep)
        st.pos = st.pos.index_select(0, idx)
        for k in list(env):
            v = env[k]
            if isinstance(v, torch.Tensor) and v.dim() > 0 and k in prog.dynamic:
                env[k] = _take(v, idx)

    # ------------------------------------------------------------------ spatial windows
    def _window_need(self, site: _Site) -> set[fx.Node]:
        """The golden values the windowed computation of ``site`` reads: its window nodes, as many
        as fit in half the cache budget (the computation goes on over whole maps after them)."""
        if site.win_need is None:
            rows = max(min(self.block, self.inputs.shape[0]), self.min_rows)
            budget, total, keep = self.cache_bytes // 2, 0, {}
            for node, kind in site.win_kind.items():
                total += self._row_bytes.get(node, 0) * rows
                if total > budget:
                    break
                keep[node] = kind
            site.win_kind = keep
            site.win_need = set(keep)
        return site.win_need

    def _canaries(self, n: int) -> int:
        """Canary rows after ``n`` real rows: at least one, at least ``min_rows`` rows in all, and
        a multiple of 8 rows in all (fewer distinct shapes: fewer kernels for oneDNN to build)."""
        k = max(1, self.min_rows - n)
        return k + (-(n + k)) % 8

    def _start_window(
        self,
        site: _Site,
        faults: list[Fault],
        spans: list[tuple[int, int]],
        gold: dict[fx.Node, Any],
        real: torch.Tensor,
        b: int,
    ) -> tuple[_Batch, Any] | None:
        """Window mode for an activation site: each row's value is the 1x1 window (all channels)
        at its fault's position; canary rows (golden, no fault) follow the real rows."""
        g = gold.get(site.node)
        if (
            not isinstance(g, torch.Tensor)
            or g.dim() != 4
            or not g.is_floating_point()
            or not site.win_kind
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
        rows = torch.cat([torch.arange(n), torch.zeros(self._canaries(n), dtype=torch.int64)])
        pos, y0, x0 = real[rows], ys[rows], xs[rows]
        crop = g[pos, :, y0, x0].reshape(rows.numel(), c, 1, 1)
        value, same = self._apply_activation(crop, faults, spans, inner=channels)
        st = _Batch(b, pos, n, {site.node: _Win(value, y0, x0)}, torch.arange(n))
        self.stats["window_rows"] += n
        return st, same

    def _run_windowed(self, site: _Site, st: _Batch, gold: dict[fx.Node, Any], drop: bool) -> int:
        """Run the leading nodes of ``site.order`` on windows while they can be; then turn every
        live window into the whole value (full mode) and return the step to go on from."""
        i = 0
        while i < len(site.order) and st.n > 0:
            node = site.order[i]
            out = self._win_node(site, i, node, st, gold)
            if out is None:
                break
            st.env[node] = out
            for a in node.all_input_nodes:
                if site.last.get(a, -2) == i:
                    st.env.pop(a, None)
            if drop and node in site.checks:
                self._compact_win(st, node, gold)
            i += 1
        if st.n > 0:
            for k, v in list(st.env.items()):
                if isinstance(v, _Win):
                    st.env[k] = self._materialize(v, gold[k], st)
            st.pos = self._pad(st.pos[: st.n])
        return i

    def _crop(
        self, g: torch.Tensor, pos: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        """Per row r, ``g[pos[r], :, y0[r]:y0[r]+h, x0[r]:x0[r]+w]``, stacked."""
        return g.unfold(2, h, 1).unfold(3, w, 1)[pos, :, y0, x0]

    def _materialize(self, v: _Win, g: torch.Tensor, st: _Batch) -> torch.Tensor:
        """The whole value of the real rows (padded to ``min_rows``): golden with the windows."""
        n = st.n
        full = _take(g, self._pad(st.pos[:n]))
        h, w = v.data.shape[2:]
        full.unfold(2, h, 1).unfold(3, w, 1)[torch.arange(n), :, v.y0[:n], v.x0[:n]] = v.data[:n]
        return full

    def _region(
        self,
        v: _Win,
        node: fx.Node,
        gold: dict[fx.Node, Any],
        st: _Batch,
        ry: torch.Tensor,
        rx: torch.Tensor,
        size: tuple[int, int],
        pad: tuple[int, int] = (0, 0),
        fill: float = 0.0,
    ) -> torch.Tensor:
        """The value of ``node`` (window ``v``, golden elsewhere, ``fill`` outside the map, at most
        ``pad`` beyond it) on the region of ``size`` starting at rows ``ry``, columns ``rx``."""
        g = gold[node]
        lh, lw = size
        big_h, big_w = g.shape[2:]
        cy, cx = ry.clamp(0, max(big_h - lh, 0)), rx.clamp(0, max(big_w - lw, 0))
        shifts = ((2, ry - cy, lh), (3, rx - cx, lw))
        if lh <= big_h and lw <= big_w and not any(bool((d != 0).any()) for _, d, _ in shifts):
            reg = self._crop(g, st.pos, cy, cx, lh, lw)  # no row's region overhangs the map
        else:
            rows, pos = torch.unique(st.pos, return_inverse=True)
            padded = rows.numel() * (big_h + 2 * pad[0]) * (big_w + 2 * pad[1])
            if lh > big_h or lw > big_w or padded <= 2 * pos.numel() * lh * lw:
                # pad the maps of the inputs these rows come from
                g = F.pad(g.index_select(0, rows), (pad[1], pad[1], pad[0], pad[0]), value=fill)
                reg = self._crop(g, pos, ry + pad[0], rx + pad[1], lh, lw)
            else:  # crop inside the map, then shift the rows that overhang it, fill the overhang
                reg = self._crop(g, st.pos, cy, cx, lh, lw)
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
        rows = reg.shape[0]
        h, w = v.data.shape[2:]
        dy, dx = v.y0 - ry, v.x0 - rx
        if (
            h <= lh
            and w <= lw
            and bool(((dy >= 0) & (dy <= lh - h) & (dx >= 0) & (dx <= lw - w)).all())
        ):
            reg.unfold(2, h, 1).unfold(3, w, 1)[torch.arange(rows), :, dy, dx] = v.data
            return reg
        # part of some window lies outside the region (it reaches nothing there): clip per row
        iy = torch.arange(lh)[None, :] - dy[:, None]
        ix = torch.arange(lw)[None, :] - dx[:, None]
        inside = ((iy >= 0) & (iy < h))[:, None, :, None] & ((ix >= 0) & (ix < w))[:, None, None, :]
        vals = v.data[
            torch.arange(rows)[:, None, None, None],
            torch.arange(v.data.shape[1])[None, :, None, None],
            iy.clamp(0, h - 1)[:, None, :, None],
            ix.clamp(0, w - 1)[:, None, None, :],
        ]
        return torch.where(inside, vals, reg)

    def _win_node(
        self, site: _Site, i: int, node: fx.Node, st: _Batch, gold: dict[fx.Node, Any]
    ) -> _Win | None:
        """``node`` computed on windows, checked on the canary rows; ``None``: compute it whole."""
        prog = self._prog
        assert prog is not None
        kind = site.win_kind.get(node)
        g_out = gold.get(node)
        if kind is None or not isinstance(g_out, torch.Tensor) or g_out.dim() != 4:
            return None
        out_h, out_w = g_out.shape[2:]
        if kind == "ew":
            return self._win_elementwise(site, i, node, st, gold, g_out)
        if node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            return None
        a = node.args[0]
        v = st.env.get(a)
        if not isinstance(v, _Win):
            return None
        m = prog.model.get_submodule(str(node.target))
        if kind == "unary":
            if g_out.shape != gold[a].shape:
                return None
            key = (node.name, tuple(v.data.shape))
            if key in self._win_bad:
                return None
            data = v.data
            if getattr(m, "inplace", False):
                if site.last.get(a, -2) != i:
                    return None  # its input is read again: keep the model's aliasing, whole
                data = data.clone()
            out = m(data)
            return self._canary(key, _Win(out, v.y0, v.x0), g_out, st)
        # convolution or pooling: the output window, then the input region it reads
        kh, kw = _pair(m.kernel_size)
        sh, sw = _pair(m.stride)
        ph, pw = _pair(m.padding)
        dh, dw = _pair(getattr(m, "dilation", 1))
        h, w = v.data.shape[2:]

        def span(
            o: torch.Tensor, n: int, k: int, s: int, p: int, d: int, out: int
        ) -> tuple[torch.Tensor, int]:
            lo = torch.div(o + p - d * (k - 1) + s - 1, s, rounding_mode="floor").clamp(0, out - 1)
            hi = torch.div(o + n - 1 + p, s, rounding_mode="floor").clamp(0, out - 1)
            length = int((torch.maximum(hi, lo) - lo).max()) + 1
            return lo.clamp(max=out - length), length

        oy, ho = span(v.y0, h, kh, sh, ph, dh, out_h)
        ox, wo = span(v.x0, w, kw, sw, pw, dw, out_w)
        if ho * wo > self.window_area * out_h * out_w:
            return None
        size = ((ho - 1) * sh + dh * (kh - 1) + 1, (wo - 1) * sw + dw * (kw - 1) + 1)
        key = (node.name, (v.data.shape[0], v.data.shape[1], *size))
        if key in self._win_bad:
            return None
        fill = float("-inf") if kind == "maxpool" else 0.0
        reg = self._region(v, a, gold, st, oy * sh - ph, ox * sw - pw, size, (ph, pw), fill)
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
        return self._canary(key, _Win(out, oy, ox), g_out, st)

    def _win_elementwise(
        self,
        site: _Site,
        i: int,
        node: fx.Node,
        st: _Batch,
        gold: dict[fx.Node, Any],
        g_out: torch.Tensor,
    ) -> _Win | None:
        """An element-wise function or method on the union of its operands' windows."""
        prog = self._prog
        assert prog is not None
        wins: dict[fx.Node, _Win] = {}
        golden: list[fx.Node] = []
        for a in node.all_input_nodes:
            if a in st.env:
                v = st.env[a]
                if not isinstance(v, _Win) or gold[a].shape != g_out.shape:
                    return None
                wins[a] = v
            elif a in prog.dynamic:
                ga = gold.get(a)
                if not isinstance(ga, torch.Tensor) or ga.shape != g_out.shape:
                    return None
                golden.append(a)
            elif isinstance(self._consts.get(a), torch.Tensor):
                return None  # a constant tensor may broadcast: compute it whole
        if not wins:
            return None
        inplace = node.kwargs.get("inplace") is True or any(x is True for x in node.args)
        if inplace and any(site.last.get(a, -2) != i for a in wins):
            return None
        first = next(iter(wins.values()))
        if all(first.same_window(v) for v in wins.values()):
            y0, x0 = first.y0, first.x0
            h, w = first.data.shape[2:]
        else:
            out_h, out_w = g_out.shape[2:]
            lo_y = torch.stack([v.y0 for v in wins.values()]).amin(0)
            lo_x = torch.stack([v.x0 for v in wins.values()]).amin(0)
            hi_y = torch.stack([v.y0 + v.data.shape[2] for v in wins.values()]).amax(0)
            hi_x = torch.stack([v.x0 + v.data.shape[3] for v in wins.values()]).amax(0)
            h, w = int((hi_y - lo_y).max()), int((hi_x - lo_x).max())
            if h * w > self.window_area * out_h * out_w:
                return None
            y0, x0 = lo_y.clamp(max=out_h - h), lo_x.clamp(max=out_w - w)
        key = (node.name, (first.data.shape[0], first.data.shape[1], h, w))
        if key in self._win_bad:
            return None
        vals: dict[fx.Node, Any] = {}
        for a, v in wins.items():
            if v.data.shape[2:] == (h, w) and torch.equal(v.y0, y0) and torch.equal(v.x0, x0):
                vals[a] = v.data.clone() if inplace else v.data
            else:
                vals[a] = self._region(v, a, gold, st, y0, x0, (h, w))
        for a in golden:
            vals[a] = self._crop(gold[a], st.pos, y0, x0, h, w)
        out = prog.run_node(node, {}, lambda a: vals[a] if a in vals else self._consts[a])
        if not isinstance(out, torch.Tensor) or out.shape != first.data.shape[:2] + (h, w):
            return None
        return self._canary(key, _Win(out, y0, x0), g_out, st)

    def _canary(
        self, key: tuple[str, tuple[int, ...]], out: _Win, g_out: torch.Tensor, st: _Batch
    ) -> _Win | None:
        """``out`` if its canary rows equal golden bit for bit; else remember ``key`` as failed."""
        n = st.n
        h, w = out.data.shape[2:]
        want = self._crop(g_out, st.pos[n:], out.y0[n:], out.x0[n:], h, w)
        if self._canary_ok(key, want, out.data[n:]):
            self.stats["window_steps"] += 1
            return out
        self._win_bad.add(key)
        self.stats["window_fallback"] += 1
        log.debug("fast engine: windowed %s %s differs from golden; computing it whole", *key)
        return None

    def _canary_ok(
        self, key: tuple[str, tuple[int, ...]], golden: torch.Tensor, computed: torch.Tensor
    ) -> bool:
        """Do the canary rows of the windowed computation ``key`` equal golden, word for word?"""
        return bool(output_words_equal(golden, computed).all())

    def _compact_win(
        self, st: _Batch, node: fx.Node, gold: dict[fx.Node, Any], same: Any = None
    ) -> None:
        """Window mode: drop the real rows whose window at ``node`` equals golden; keep canaries."""
        n, v = st.n, st.env[node]
        if same is None:
            h, w = v.data.shape[2:]
            g = self._crop(gold[node], st.pos[:n], v.y0[:n], v.x0[:n], h, w)
            same = output_words_equal(g, v.data[:n])
        if not bool(same.any()):
            return
        keep = (~same).nonzero().flatten()
        st.masked.append(st.alive[same])
        st.alive = st.alive[keep]
        st.n = int(keep.numel())
        if st.n == 0:
            return
        canary = torch.full((self._canaries(st.n),), n, dtype=torch.int64)
        idx = torch.cat([keep, canary])
        st.pos = st.pos[idx]
        for k, x in list(st.env.items()):
            if isinstance(x, _Win):
                st.env[k] = _Win(x.data[idx], x.y0[idx], x.x0[idx])

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
        self,
        value: torch.Tensor,
        faults: list[Fault],
        spans: list[tuple[int, int]],
        inner: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply each fault to its rows of ``value``, as the reference hooks do.

        ``inner``: each fault's flat element index within a row (default: from its index).
        Returns the new tensor and, per row, whether the faulted element kept its word.
        """
        per = value[0].numel()
        shape = value.shape[1:]
        groups: dict[tuple[str, str | None], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        others = []
        every = []
        for k, (f, (r0, r1)) in enumerate(zip(faults, spans)):
            at = _ravel(f.index, shape) if inner is None else inner[k]
            flat = torch.arange(r0, r1, dtype=torch.int64) * per + at
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
        ws, bs = [], []
        for _, o, faulty in items:
            ws.append((faulty if site.target == "weight" else w)[o])
            if b is not None:
                bs.append((faulty if site.target == "bias" else b)[o])
        y = m._conv_forward(args[0], torch.stack(ws), torch.stack(bs) if b is not None else None)
        # the canary: the same convolution with each channel's golden kernel at the same place
        # (a kernel may round a channel differently by where it sits in its block of channels)
        outs = [o for _, o, _ in items]
        canary = m._conv_forward(args[0], w[outs], b[outs] if b is not None else None)
        n = len(rows)
        g = _take(gold[site.node], idx[:n])
        if not bool(output_words_equal(g[:, outs], canary[:n]).all()):
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
            return bool(output_words_equal(_take(gold[site.node], pos), value).all())
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
        outs: list[tuple[list[tuple[int, int]], torch.Tensor | None, float]] = []
        for b in sorted(rows_by_block):
            self._run_block(b, rows_by_block[b], tasks, sites, outs, to_reference)
        self._classify(tasks, outs, results)
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
        outs: list[tuple[list[tuple[int, int]], torch.Tensor | None, float]],
        to_reference: dict[int, list[int]],
    ) -> None:
        here = list({id(sites[ti]): sites[ti] for ti, _ in rows}.values())
        need: set[fx.Node] = set()
        for s in here:
            need |= s.need
        if self.window:
            count: dict[int, int] = defaultdict(int)
            for ti, _ in rows:
                count[id(sites[ti])] += 1
            windowed = [s for s in here if s.win_kind and count[id(s)] >= self.window_min_rows]
            if windowed and not self._measured:  # measure every value, on a few rows
                self._measured = True
                try:
                    self._forward(self._block_inputs(b)[0][: self.min_rows], set())
                except Exception:  # noqa: BLE001 - sizes unknown: no value is left out for size
                    log.debug("fast engine: could not measure the values' sizes", exc_info=True)
            for s in windowed:
                need |= self._window_need(s)
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
                outs.extend((keys, out, per) for keys, out in done if keys)

    def _run_rows(
        self,
        site: _Site,
        batch: list[tuple[int, int]],
        tasks: Sequence[RunTask],
        gold: dict[fx.Node, Any],
        b: int,
    ) -> list[tuple[list[tuple[int, int]], torch.Tensor | None]]:
        """Run one batch of rows of ``site``; returns (rows, their outputs; ``None``: masked)."""
        n = len(batch)
        pos = self._pad(torch.tensor([i for _, i in batch], dtype=torch.int64) - b * self.block)
        if site.masked_all:
            return [(list(batch), None)]
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
        started = None
        # an activation fault on a value that is not contiguous (channels-last, permuted): the
        # reference's hook may hand on a copy in another layout, so the rest of the network may
        # round differently from golden even where the values are equal again; such rows are
        # run to the end (no masked-early drop, no windows), as the reference runs them
        g = gold.get(site.node)
        layout = site.target != "output" or not isinstance(g, torch.Tensor) or g.is_contiguous()
        if (
            layout
            and site.target == "output"
            and self.window
            and n >= self.window_min_rows
            and site.win_need
            and all(node in gold for node in site.win_need)
        ):
            started = self._start_window(site, faults, spans, gold, pos[:n], b)
        if started is not None:
            st, same = started
        else:
            base = self._gather(gold, site.node, pos)
            if site.target == "output":
                value, same = self._apply_activation(base, faults, spans)
            else:
                value, same = self._apply_parameter(site, faults, spans, gold, pos, base)
            st = _Batch(b, pos, n, {site.node: value}, torch.arange(n))
        out, alive, masked = self._rest(site, st, gold, drop=layout, same0=same)
        done: list[tuple[list[tuple[int, int]], torch.Tensor | None]] = [
            ([batch[k] for k in masked.tolist()], None)
        ]
        self.stats["masked_early"] += int(masked.numel())
        if out is not None:
            done.append(([batch[k] for k in alive.tolist()], out))
        return done

    def _classify(
        self,
        tasks: Sequence[RunTask],
        outs: list[tuple[list[tuple[int, int]], torch.Tensor | None, float]],
        results: dict[tuple[int, int], RunRecord],
    ) -> None:
        """Classify every row of ``outs`` (rows, their outputs or ``None`` for masked, seconds)."""
        keys = [key for rows, _, _ in outs for key in rows]
        if not keys:
            return
        golden = self.golden[[i for _, i in keys]]
        faulty = golden.clone()  # masked rows: their golden output
        seconds: list[float] = []
        at = 0
        for rows, out, per in outs:
            if out is not None:
                if out.shape[1:] != golden.shape[1:] or out.shape[0] != len(rows):
                    raise _Unsupported(
                        f"faulty output shape {tuple(out.shape)} differs from golden"
                    )
                faulty[at : at + len(rows)] = out
            seconds += [per] * len(rows)
            at += len(rows)
        codes, g_top, f_top, diff = classify(golden, faulty, self.criterion)
        for key, c, g, f, d, sec in zip(
            keys, codes.tolist(), g_top.tolist(), f_top.tolist(), diff.tolist(), seconds
        ):
            ti, i = key
            results[key] = RunRecord(
                tasks[ti].fault_id, i, OUTCOMES[int(c)], int(g), int(f), float(d), sec
            )
        self.stats["fast"] += len(keys)


class _NotRows:
    def __repr__(self) -> str:
        return "<not row-indexed>"


_NOT_ROWS: Any = _NotRows()
