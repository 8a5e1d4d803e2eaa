# SPDX-License-Identifier: MIT
"""The :class:`FastEngine`: which runs take the fast path, and the loop that runs them.

Runs are grouped by input block and fault site; each group is split into batches of rows
(:mod:`._rows`), the site's faulty value is made (:mod:`._faults`, or a window,
:mod:`._windows`) and the rest of the network runs over the batch. Everything the fast path does
not cover goes to a :class:`~torchfault.campaign.ReferenceEngine` over the same model.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from torchfault.campaign._engine import (
    ENGINES,
    MIN_ROWS,
    Chunk,
    Engine,
    ReferenceEngine,
    RunTask,
    _pad_index,
    _random_faults,
    detected_task,
)
from torchfault.campaign._fast._channels import ChannelRunner, Channels
from torchfault.campaign._fast._exactness import refused, rows_independent, site_reproduces
from torchfault.campaign._fast._faults import (
    RowsApart,
    activation_faults,
    fits,
    inner_activation_faults,
    parameter_faults,
    site_output,
)
from torchfault.campaign._fast._geometry import Window
from torchfault.campaign._fast._golden import (
    NOT_ROW_INDEXED,
    GoldenCache,
    GoldenValues,
    SharedGolden,
)
from torchfault.campaign._fast._notices import REASONS, log
from torchfault.campaign._fast._options import FastOptions
from torchfault.campaign._fast._planning import (
    INNER,
    Program,
    Site,
    Unsupported,
    Watch,
    flatten_output,
    plan_site,
    trace,
)
from torchfault.campaign._fast._positions import Positions, reference_layout
from torchfault.campaign._fast._rows import (
    CheckTally,
    Done,
    Row,
    Rows,
    batches,
    drop_masked,
    fault_spans,
    general_records,
    in_parts,
    in_place,
    pad,
    records,
)
from torchfault.campaign._fast._tracing import BatchTrace, FastTracer
from torchfault.campaign._fast._windows import WindowRunner
from torchfault.campaign._outcome import Criterion, output_words_equal, words_equal
from torchfault.faults import is_packed
from torchfault.injectors import Injection
from torchfault.store import RunRecord

__all__ = ["FastEngine"]


@ENGINES.register(
    "fast",
    description="The default: fx-traced partial re-execution (only what a fault touches, many faults per batch, masked rows stop early); the rest goes to reference.",
)
class FastEngine(Engine):
    """Runs each fault from its own module onward, many faults per batch (see
    :mod:`torchfault.campaign._fast`).

    Gives the same outcomes as the ``reference`` engine (the tests compare them on every zoo model);
    tasks it does not cover are handed to a :class:`ReferenceEngine` over the same model.

    Args:
        model: the model, in eval mode.
        inputs: all campaign inputs, a tensor whose rows are the inputs.
        golden: the golden outputs, one row per input.
        criterion: what counts as an SDC.
        batch_size: the most rows of one batched execution.
        options: the tuning knobs (:class:`FastOptions`; ``engine.fast`` in a campaign config).

    Attributes:
        min_rows: fewest rows any batched execution has (padding with duplicated rows), so that
            float kernels take the same path as in the golden pass (the reference engine's
            ``MIN_ROWS``).
        stats: how many runs each path finished (``fast``, of which ``masked_early``;
            ``reference``); for spatial windows ``window_rows`` (rows that started on a window),
            ``window_steps`` (windowed node computations whose canaries passed) and
            ``window_fallback`` (canary failures); for channel windows (:mod:`._channels`)
            ``channel_rows``, ``channel_steps`` and ``channel_fallback``, the same counts;
            ``checks_skipped``: masking checks not made because checks of their kind seldom drop
            a row (:class:`~._rows.CheckTally`); ``in_place``: nodes computed into the buffer of
            an operand read no more (:func:`~._rows.in_place`); ``in_parts``: transformer
            encoder layers on tall batches computed in parts (:func:`~._rows.in_parts`).
        handed_over: the runs handed to the reference engine, by reason (the values of
            :data:`REASONS`); they add up to ``stats["reference"]``.
        traced: with :attr:`trace`, the runs :meth:`run_chunk` traced from the rows it ran
            (``fast``) and by :func:`~torchfault.analysis.trace_runs` (``trace_runs``; see
            :mod:`._tracing`).
        seconds: wall-clock seconds by phase: ``trace`` (tracing and probing the model, once),
            ``golden`` (the golden pass over each block, the first also checking its outputs),
            ``row_check`` (once), ``site_checks`` (once per parameter site), ``batches`` (the
            faulty rows, golden values computed again included) and ``reference`` (the runs
            handed to the reference engine). The first four are the engine's one-time work.

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
    #: runs models whose output is a structure (a tuple, a dict of tensors) and any criterion
    #: (see :func:`~torchfault.campaign._engine.reference_reason`)
    structured_outputs = True

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        golden: torch.Tensor | list[Any],
        criterion: Criterion | None = None,
        batch_size: int = 256,
        options: FastOptions | None = None,
    ) -> None:
        super().__init__(model, inputs, golden, criterion, batch_size)
        if options is not None and not isinstance(options, FastOptions):
            raise TypeError(f"options: expected FastOptions, got {type(options).__name__}")
        self.options = options or FastOptions()
        self.reference = ReferenceEngine(model, inputs, golden, criterion, batch_size)
        #: inputs per block of golden values: ``batch_size``, or fewer once the model is traced
        #: when a block's golden values would not fit in half the cache budget (:meth:`_fit_block`)
        self.block = self._max_block = max(self.batch_size, self.min_rows)
        # the golden-value cache, verifications and row-check verdict (:meth:`share_golden`)
        self._shared = SharedGolden(GoldenCache(self.options.cache_bytes))
        self.stats: dict[str, int] = defaultdict(int)
        self._prog: Program | None = None
        self._positions: Positions | None = None
        self._plain: dict[tuple[tuple[int, ...], int], set[int]] = {}  # see _plain_rows
        self._values: GoldenValues | None = None
        self._windows: WindowRunner | None = None
        self._channels: ChannelRunner | None = None
        self._traced = False
        self._sites: dict[tuple[str, str], Site | None] = {}
        #: the masking checks of parameter sites after the change may have spread across
        #: channels: whether they pay (``checks_skipped`` counts those not made)
        self._spread_checks = CheckTally()
        self._rows_independent: bool | None = None
        self._measured = False
        self._model_reason = ""  # why no run of this model can take the fast path
        # outputs that are a structure per input, or a criterion that is not top1/topk/tolerance:
        # records are made by the criterion's own evaluation on each output (as the reference)
        self._general = not isinstance(golden, torch.Tensor) or not self.criterion.fast
        #: runs handed to the reference engine, by reason (see :data:`REASONS`)
        self.handed_over: Counter[str] = Counter()
        self.traced: Counter[str] = Counter()
        #: seconds spent, by phase (:attr:`stats`' companion)
        self.seconds: defaultdict[str, float] = defaultdict(float)
        # while run_chunk traces: the traces of the rows run fast, by row (else None)
        self._tracing: dict[Row, Any] | None = None
        self._tracer: FastTracer | None = None

    @property
    def windows(self) -> WindowRunner | None:
        """The windowed execution (``None`` until the model is traced, or when it cannot be)."""
        return self._windows

    def share_golden(self, other: Any) -> bool:
        """Share ``other``'s golden values: its cache, the blocks it verified and the inputs it
        found not golden, and its row-check verdict (:class:`~._golden.SharedGolden`), so that
        engines of a ``threads`` map hold one cache and verify each block once. Only before
        this engine has run anything, with an engine of the same options, block, inputs, golden
        outputs and model parameters and buffers (bit for bit: a copy of the same model);
        otherwise nothing is shared. Returns whether it shares. Each engine keeps its own model
        (a parameter fault is computed by swapping the faulty tensor into the module for the
        call, which another thread must not see).

        Example:
            >>> import torch, torch.nn as nn, copy
            >>> from torchfault.campaign import golden_run
            >>> model = nn.Sequential(nn.Linear(4, 3)).eval()
            >>> x = torch.randn(8, 4)
            >>> golden = golden_run(model, x)
            >>> a = FastEngine(model, x, golden)
            >>> b = FastEngine(copy.deepcopy(model), x.clone(), golden.clone())
            >>> b.share_golden(a), b.cache is a.cache
            (True, True)
        """
        if (
            not isinstance(other, FastEngine)
            or other is self
            or self._traced
            or self.options != other.options
            or (self._max_block, self.min_rows) != (other._max_block, other.min_rows)
            or not _same_bits(self.inputs, other.inputs)
            or not _same_bits(self.golden, other.golden)
            or not _same_state(self.model, other.model)
        ):
            return False
        self._shared = other._shared
        return True

    @property
    def cache(self) -> GoldenCache:
        """The golden-value cache (its ``budget`` starts at ``options.cache_bytes``, less a
        reserve for the batches once the model is traced, :meth:`_fit_block`; shared with the
        engine given to :meth:`share_golden`)."""
        return self._shared.cache

    # ------------------------------------------------------------------ which runs go fast
    def _program(self) -> Program | None:
        """The traced model (traced on first use); ``None``: every run goes to the reference."""
        if self._traced:
            return self._prog
        self._traced = True
        t0 = time.perf_counter()
        try:
            return self._trace()
        finally:
            self.seconds["trace"] += time.perf_counter() - t0

    def _trace(self) -> Program | None:
        """Trace the model and probe it (:meth:`_program`)."""
        probe = self.inputs[: self.min_rows]
        if probe.shape[0] < self.min_rows:  # as a block is padded (indexing keeps the layout)
            probe = probe[_pad_index(probe.shape[0], self.min_rows)]
        # the position-dependent functions' operands are found in the probing pass of trace
        watching: list[Positions] = []

        def watch(prog: Program) -> Watch:
            watching.append(Positions(prog))
            return watching[0].watch

        traced = trace(self.model, probe, watch)
        if isinstance(traced, str):
            self._model_reason = traced
            return None
        prog = traced
        flat = self._flat_golden(prog)
        if flat is None:
            self._model_reason = REASONS["output"]
            return None
        try:
            positions = watching[0]
            positions.analyse()
        except Exception:  # noqa: BLE001 - cannot look at its functions: the reference runs it
            log.debug("fast engine: position-dependent functions not analysed", exc_info=True)
            self._model_reason = REASONS["position"]
            return None
        graph = tuple((n.name, n.op, str(n.target)) for n in prog.nodes)
        with self._shared.lock:
            if self._shared.graph is None:
                self._shared.graph = graph
            elif self._shared.graph != graph:  # traced otherwise than the engine it shares with
                log.info("fast engine: traced graph differs from the shared one; not sharing")
                self._shared = SharedGolden(GoldenCache(self.options.cache_bytes))
                self._shared.graph = graph
        self.block = self._fit_block(prog)
        values = GoldenValues(prog, self.inputs, flat, self.block, self.min_rows, self.cache)
        values.verified = self._shared.verified
        values.bad_inputs = self._shared.bad_inputs
        values.run_node = positions.run_node
        self._positions = positions
        self._prog, self._values = prog, values
        self._windows = WindowRunner(values, self.options, self.stats)
        self._channels = ChannelRunner(values, self.options, self.stats)
        return prog

    def _fit_block(self, prog: Program) -> int:
        """Size the golden values to the budget (``options.cache_bytes``); returns the inputs per
        block.

        The cache keeps the budget less a reserve for the batches' working memory: two values of
        ``batch_size`` rows of the graph's largest value per row, at most half the budget (the
        cache is the only bound on golden values; a batch's site rows, their faulty copy and the
        golden rows it gathers come on top of it). A block is ``batch_size`` inputs, or fewer (a
        multiple of ``min_rows``, at least ``min_rows``) so that one block's golden values, every
        row-indexed value of the graph, take at most half the cache: a block whose values do not
        fit has them dropped and computed again, pass after pass, and its passes hold more
        memory on top of the full cache (resnet18-like, one block of 256 inputs: 3.5x slower,
        and 190 MiB above the 512 MiB budget, than in blocks of 64). Which block a row is in
        changes no bit: a row's values do not depend on the other rows of its pass
        (:func:`~._exactness.rows_independent`).
        """
        budget = self.options.cache_bytes
        largest = max(prog.row_bytes.values(), default=0)
        self.cache.budget = budget - min(budget // 2, 2 * self._max_block * largest)
        per_row = max(1, sum(prog.row_bytes.values()))
        fit = self.cache.budget // 2 // per_row // self.min_rows * self.min_rows
        return max(self.min_rows, min(self._max_block, fit))

    def _flat_golden(self, prog: Program) -> torch.Tensor | None:
        """The golden outputs as the traced graph computes them: the tensor itself, or each
        input's structure flattened (:func:`flatten_output`); ``None``: they do not match."""
        if isinstance(self.golden, torch.Tensor):
            return None if prog.output_leaves else self.golden
        if not prog.output_leaves or not len(self.golden):
            return None
        rows = [flatten_output(g) for g in self.golden]
        sizes = {(r.numel(), r.dtype) if r is not None else None for r in rows}
        if None in sizes or len(sizes) != 1:
            return None
        return torch.stack([r for r in rows if r is not None])

    def _site_for(self, task: RunTask) -> Site | str:
        """The planned site of a task's fault, or why the reference engine runs the task."""
        prog = self._program()
        if prog is None:
            return self._model_reason
        if len(task.faults) != 1:
            return REASONS["several"]
        f = task.faults[0]
        if f.sample is not None or f.element is not None or f.target == "input" or not f.module:
            return REASONS["kind"]
        if _random_faults(task):  # one seeded run per (fault, input): the reference engine's way
            return REASONS["random"]
        calls = prog.calls.get(f.module, [])
        if not calls and f.is_activation:  # the output of a module traced as its parts
            calls = prog.outputs_of.get(f.module, [])
        if not calls:
            return self._inner_site(prog, f)
        if f.is_activation and f.call is not None:
            node = calls[f.call] if f.call < len(calls) else None
        else:
            node = calls[0] if len(calls) == 1 else None
        if node is None:
            return REASONS["calls"]
        if f.is_activation and node in prog.structured:
            # the output of a module that returns a structure: the module is called with the
            # fault injected, as for activation faults inside a module traced whole
            return self._inner_activation_site(prog, node, f.module)
        key = (node.name, f.target)
        if key in self._sites:
            return self._sites[key] or REASONS["tensor"]
        site = None
        module = prog.modules.get(f.module)
        if module is not None:
            t = None if f.is_activation else getattr(module, f.target, None)
            packed = not f.is_activation and is_packed(module, f.target)
            if (
                f.is_activation
                or packed
                or (
                    isinstance(t, torch.Tensor)
                    and f"{f.module}.{f.target}" not in prog.attr_uses
                    and prog.holders.get(id(t), 0) == 1
                )
            ):
                site = plan_site(prog, node, f.target, module, self.options.max_checks)
                site.packed = packed
        self._sites[key] = site
        return site or REASONS["tensor"]

    def _inner_site(self, prog: Program, f: Any) -> Site | str:
        """A fault of a submodule inside a module traced whole (an ``nn.TransformerEncoder``,
        ...): the site is that module's node. For a parameter or buffer its target is the dotted
        path of the tensor in it (the module is called with the faulty tensor by
        ``torch.func.functional_call``, as any parameter site); activation faults share one site
        (:data:`INNER`) whose module is called with them injected, each on its own rows."""
        parts = f.module.split(".")
        outer = next(
            (
                ".".join(parts[:k])
                for k in range(len(parts) - 1, 0, -1)
                if ".".join(parts[:k]) in prog.calls
            ),
            None,
        )
        if outer is None or len(prog.calls[outer]) != 1:
            return REASONS["hidden"]
        node = prog.calls[outer][0]
        if f.is_activation:  # f.target == "output" (input faults went to the reference)
            return self._inner_activation_site(prog, node, outer)
        inner = f.module[len(outer) + 1 :]
        target = f"{inner}.{f.target}"
        key = (node.name, target)
        if key in self._sites:
            return self._sites[key] or REASONS["tensor"]
        site = None
        module, sub = prog.modules.get(outer), prog.modules.get(f.module)
        t = getattr(sub, f.target, None) if sub is not None else None
        if (
            module is not None
            and isinstance(t, torch.Tensor)
            and sub is not None
            and not is_packed(sub, f.target)
            and f"{f.module}.{f.target}" not in prog.attr_uses
            and prog.holders.get(id(t), 0) == 1
        ):
            site = plan_site(prog, node, target, module, self.options.max_checks)
        self._sites[key] = site
        return site or REASONS["tensor"]

    def _inner_activation_site(self, prog: Program, node: fx.Node, name: str) -> Site | str:
        """The site of activation faults injected while module ``name`` (node ``node``) runs."""
        key = (node.name, INNER)
        if key not in self._sites:
            module = prog.modules.get(name)
            site = None
            if module is not None:
                site = plan_site(prog, node, INNER, module, self.options.max_checks)
                site.inner = True
            self._sites[key] = site
        return self._sites[key] or REASONS["tensor"]

    def _hand_over(
        self, to_reference: dict[int, list[int]], ti: int, ids: Sequence[int], reason: str
    ) -> None:
        """Send runs ``ids`` of task ``ti`` to the reference engine, counted under ``reason``."""
        to_reference[ti].extend(ids)
        if reason not in self.handed_over:
            log.info("fast engine: runs go to the reference engine: %s", reason)
        self.handed_over[reason] += len(ids)

    # ------------------------------------------------------------------ run
    def run_chunk(self, tasks: Sequence[RunTask]) -> Chunk:
        """:meth:`run` the tasks; with :attr:`trace`, their traces too: those of the rows run
        fast read from the run itself (:mod:`._tracing`), every other task's by
        :func:`~torchfault.analysis.trace_runs` (the whole task, as the base engine)."""
        if self.trace is None:
            return Chunk(self.run(tasks))
        self._tracing = {}
        try:
            records = self.run(tasks)
            fast = self._tracing
        finally:
            self._tracing = None
        rest = [
            t for ti, t in enumerate(tasks) if any((ti, int(i)) not in fast for i in t.input_ids)
        ]
        redone = iter(self.traces(rest))
        traces: list[Any] = []
        for ti, task in enumerate(tasks):
            if all((ti, int(i)) in fast for i in task.input_ids):
                traces.extend(fast[(ti, int(i))] for i in task.input_ids)
                self.traced["fast"] += len(task.input_ids)
            else:
                traces.extend(next(redone) for _ in task.input_ids)
                self.traced["trace_runs"] += len(task.input_ids)
        return Chunk(records, traces)

    def _tracer_now(self) -> FastTracer | None:
        """The tracer while :meth:`run_chunk` traces (``None`` otherwise)."""
        if self._tracing is None or self.trace is None:
            return None
        prog, values = self._prog, self._values
        assert prog is not None and values is not None
        layers, profile = self.trace
        t = self._tracer
        if t is None or t.layers != list(layers) or t.profile is not profile:
            t = self._tracer = FastTracer(prog, values, layers, profile)
        return t

    @torch.no_grad()
    def run(self, tasks: Sequence[RunTask]) -> list[RunRecord]:
        """Run the tasks; records come back task by task, inputs in each task's order."""
        results: dict[Row, RunRecord] = {}
        to_reference: dict[int, list[int]] = defaultdict(list)
        rows_by_block: dict[int, list[Row]] = defaultdict(list)
        sites: dict[int, Site] = {}
        # each task's faults are checked as the reference engine checks them (a bad fault raises
        # its error), against one walk of the model's modules per call
        modules = dict(self.model.named_modules())
        for ti, task in enumerate(tasks):
            if detected_task(task):  # flagged before the model reads it: not run, as reference
                Injection(self.model, task.faults, modules=modules)
                for r in self._detected(task):
                    results[(ti, r.input_id)] = r
                continue
            site = self._site_for(task)
            if isinstance(site, str):
                self._hand_over(to_reference, ti, task.input_ids, site)
                continue
            # a bad fault raises here, as in the reference engine
            Injection(self.model, task.faults, modules=modules)
            sites[ti] = site
            plain = self._plain_rows(task)
            for i in task.input_ids:
                if plain is None or int(i) in plain:
                    rows_by_block[int(i) // self.block].append((ti, int(i)))
                else:  # its bits depend on its place in the reference engine's batch
                    self._hand_over(to_reference, ti, [int(i)], REASONS["position"])
        finished: list[Done] = []
        for block in sorted(rows_by_block):
            self._run_block(block, rows_by_block[block], tasks, sites, finished, to_reference)
        if self._general:
            self.stats["fast"] += general_records(
                tasks, finished, self.golden, self.criterion, results
            )
        else:
            self.stats["fast"] += records(tasks, finished, self.golden, self.criterion, results)
        t0 = time.perf_counter()
        for ti, ids in to_reference.items():
            task = tasks[ti]
            order = {int(i): k for k, i in reversed(list(enumerate(task.input_ids)))}
            ids = sorted(set(ids), key=order.__getitem__)  # the task's order, as the reference
            wanted = set(ids)
            run = tuple(ids) if self._subset_exact(task, ids) else tuple(task.input_ids)
            for r in self.reference.run([RunTask(task.fault_id, task.faults, run)]):
                if r.input_id in wanted:
                    results[(ti, r.input_id)] = r
            self.stats["reference"] += len(ids)
        self.seconds["reference"] += time.perf_counter() - t0
        return [results[(ti, int(i))] for ti, task in enumerate(tasks) for i in task.input_ids]

    def _plain_rows(self, task: RunTask) -> set[int] | None:
        """The inputs of ``task`` whose rows are plain (:mod:`._positions`) in the batches the
        reference engine runs the task in; ``None``: every input (no covered function)."""
        positions = self._positions
        if positions is None or not positions.ops:
            return None
        key = (tuple(task.input_ids), torch.get_num_threads())
        plain = self._plain.get(key)
        if plain is None:  # tasks of a campaign mostly share their inputs: once per input list
            layout = reference_layout(task.input_ids, self.reference.batch_size, self.min_rows)
            plain = {i for i, (n, p) in layout.items() if positions.plain(n, p)}
            if len(self._plain) >= 1024:  # inputs drawn per fault: do not keep them all
                self._plain.clear()
            self._plain[key] = plain
        return plain

    def _subset_exact(self, task: RunTask, ids: Sequence[int]) -> bool:
        """Does the reference engine give inputs ``ids`` of ``task`` the same records when it
        runs them alone as within the whole task? Yes when they are the whole task, or when rows
        are computed independently of their batch and ``ids`` are plain in both compositions;
        otherwise the whole task is run again and their records taken from it."""
        if list(ids) == [int(i) for i in task.input_ids]:
            return True
        if self._rows_independent is not True:
            return False
        positions = self._positions
        if positions is None or not positions.ops:
            return True
        bs = self.reference.batch_size
        whole = reference_layout(task.input_ids, bs, self.min_rows)
        alone = reference_layout(ids, bs, self.min_rows)
        return all(positions.plain(*whole[i]) and positions.plain(*alone[i]) for i in ids)

    def _run_block(
        self,
        block: int,
        rows: list[Row],
        tasks: Sequence[RunTask],
        sites: dict[int, Site],
        finished: list[Done],
        to_reference: dict[int, list[int]],
    ) -> None:
        """Run the rows of one input block, site by site, batch by batch."""
        values, windows = self._values, self._windows
        assert values is not None and windows is not None
        here = list({id(sites[ti]): sites[ti] for ti, _ in rows}.values())
        need: set[fx.Node] = set()
        for s in here:
            need |= s.need
        tracer = self._tracer_now()
        if tracer is not None:
            need |= tracer.need()
        if self.options.window and tracer is None:  # traced runs go windowless (._tracing)
            count: dict[int, int] = defaultdict(int)
            for ti, _ in rows:
                count[id(sites[ti])] += 1
            windowed = [
                s for s in here if s.window_kinds and count[id(s)] >= self.options.window_min_rows
            ]
            if windowed and not self._measured:  # every value's size, from the probe pass
                self._measured = True
                assert self._prog is not None
                for node, size in self._prog.row_bytes.items():
                    values.row_bytes.setdefault(node, size)
            for s in windowed:
                need |= windows.need(s)
        if self.options.channels and tracer is None:  # and windowless, as spatial windows
            for s in here:
                need |= set(s.channel_kinds)
        shared = self._shared
        with shared.lock:  # a block is verified once, and the verdict given once, for all sharers
            t0 = time.perf_counter()
            golden, verified = values.values(block, need)
            self.seconds["golden"] += time.perf_counter() - t0
            if self._rows_independent is None:
                if shared.rows_independent is not None:
                    self._rows_independent = shared.rows_independent
                elif verified:
                    assert self._positions is not None
                    t0 = time.perf_counter()
                    self._rows_independent = rows_independent(
                        values, block, self.options, self._positions
                    )
                    self.seconds["row_check"] += time.perf_counter() - t0
                    shared.rows_independent = self._rows_independent
        if self._rows_independent is False:
            assert self._positions is not None
            exact = self._positions.model_ok(values.row_bytes, self.options.row_alignment)
            rows_reason = REASONS["batch"] if exact else REASONS["position"]
        else:
            rows_reason = REASONS["undecided"]
        by_site: dict[int, list[Row]] = defaultdict(list)
        for ti, i in rows:
            if i in values.bad_inputs:
                self._hand_over(to_reference, ti, [i], REASONS["golden"])
            elif not self._rows_independent:
                self._hand_over(to_reference, ti, [i], rows_reason)
            else:
                by_site[id(sites[ti])].append((ti, i))
        for group in by_site.values():
            site = sites[group[0][0]]
            if site.ok is None:
                t0 = time.perf_counter()
                if self._structured(site, golden):
                    site.ok = self._structured_reproduces(site, block, golden)
                else:
                    site.ok = site_reproduces(site, values, block, golden)
                self.seconds["site_checks"] += time.perf_counter() - t0
            if not site.ok:
                for ti, i in group:
                    self._hand_over(to_reference, ti, [i], REASONS["site"])
                continue
            if site.target == "output" and not site.masked_all:
                shape = golden[site.node].shape[1:]
                fit = {ti: fits(tasks[ti].faults[0].index, shape) for ti in {ti for ti, _ in group}}
                for ti, i in group:
                    if not fit[ti]:  # the reference engine reports the bad index (as a DUE)
                        self._hand_over(to_reference, ti, [i], REASONS["index"])
                group = [(ti, i) for ti, i in group if fit[ti]]
            group.sort()
            for batch in batches(group, self.batch_size):
                t0 = time.perf_counter()
                try:
                    done = self._run_batch(site, batch, tasks, golden, block)
                except Exception as exc:  # noqa: BLE001 - each task of the batch gets its own outcome
                    if isinstance(exc, Unsupported):
                        site.ok = False
                        reason = REASONS["unsupported"]
                    elif isinstance(exc, RowsApart):
                        reason = REASONS["apart"]
                    else:
                        reason = REASONS["raised"]
                    log.debug(
                        "fast engine: batch at %s raised (%s); rerunning it on the reference engine",
                        site.node.name,
                        exc,
                    )
                    for ti, i in batch:
                        self._hand_over(to_reference, ti, [i], reason)
                    continue
                spent = time.perf_counter() - t0
                self.seconds["batches"] += spent
                per = spent / max(len(batch), 1)
                finished.extend((keys, out, per) for keys, out in done if keys)

    def _run_batch(
        self,
        site: Site,
        batch: list[Row],
        tasks: Sequence[RunTask],
        golden: dict[fx.Node, Any],
        block: int,
    ) -> list[tuple[list[Row], torch.Tensor | None]]:
        """Run one batch of rows of ``site``; returns (rows, their outputs; ``None``: masked)."""
        values, windows = self._values, self._windows
        assert values is not None and windows is not None
        n = len(batch)
        pos = torch.tensor([i for _, i in batch], dtype=torch.int64) - block * self.block
        pos = pad(pos, self.min_rows)
        if site.masked_all:
            return [(list(batch), None)]
        faults, spans = fault_spans(batch, tasks)
        if self._structured(site, golden):
            return self._run_structured(site, batch, faults, spans, pos, golden, block)
        started = None
        # an activation fault on a value that is not contiguous (channels-last, permuted): the
        # reference's hook may hand on a copy in another layout, so the rest of the network may
        # round differently from golden even where the values are equal again; such rows are
        # run to the end (no masked-early drop, no windows), as the reference runs them
        g = golden.get(site.node)
        layout = site.target != "output" or not isinstance(g, torch.Tensor) or g.is_contiguous()
        if (
            layout
            and site.target == "output"
            and self.options.window
            and self._tracing is None  # traced runs go windowless (._tracing)
            and n >= self.options.window_min_rows
            and site.window_need
            and all(node in golden for node in site.window_need)
        ):
            started = windows.start(site, faults, spans, golden, pos[:n], block)
        elif (
            site.target != "output"
            and not site.inner
            and self.options.channels
            and self._tracing is None  # traced runs go windowless (._tracing)
            and self._channels is not None
            and self._channels.usable(site, golden)
        ):
            started = self._channels.start(site, faults, spans, golden, pos[:n], block)
        if started is not None:
            live, site_same = started
        else:
            base = values.gather(golden, site.node, pos)
            if site.inner:
                value, site_same = inner_activation_faults(
                    site, self.model, faults, spans, values, golden, pos, base
                )
            elif site.target == "output":
                value, site_same = activation_faults(base, faults, spans)
            else:
                value, site_same = parameter_faults(
                    site, faults, spans, values, golden, pos, base, self.model
                )
            live = Rows(block, pos, n, {site.node: value}, torch.arange(n))
        tracer = self._tracer_now()
        bt = None
        if tracer is not None and started is None and layout:
            bt = tracer.start(site, pos, n, golden)
            if bt is not None and site.node in bt.watch:
                tracer.record(bt, site.node, value, golden, pos, list(range(n)))
        out, alive, masked = self._run_after_site(site, live, golden, layout, site_same, bt)
        if bt is not None:
            assert tracer is not None and self._tracing is not None
            ids = [tasks[ti].fault_id for ti, _ in batch]
            self._tracing.update(tracer.traces(bt, list(batch), ids, block, golden))
        done: list[tuple[list[Row], torch.Tensor | None]] = [
            ([batch[k] for k in masked.tolist()], None)
        ]
        self.stats["masked_early"] += int(masked.numel())
        if out is not None:
            done.append(([batch[k] for k in alive.tolist()], out))
        return done

    # ------------------------------------------------------------------ structured sites
    @staticmethod
    def _structured(site: Site, golden: dict[fx.Node, Any]) -> bool:
        """A parameter (or inner) site whose module returns a structure (an ``nn.LSTM``'s
        ``(output, (h, c))``): its value is not one row-indexed tensor."""
        return site.target != "output" and dict.get(golden, site.node) is NOT_ROW_INDEXED

    def _structured_value(
        self, site: Site, fault: Any, rows: int, pos: torch.Tensor, golden: dict[fx.Node, Any]
    ) -> Any:
        """The site module's output (a structure) over block rows ``pos``, with ``fault``
        (``None``: golden) in its tensor or injected inside it on the first ``rows`` rows."""
        values = self._values
        assert values is not None
        return site_output(site, self.model, fault, rows, values, golden, pos, structured=True)

    def _structured_reproduces(self, site: Site, block: int, golden: dict[fx.Node, Any]) -> bool:
        """May a structured site run fast? Its other golden values must be row-indexed, and its
        module called from its cached inputs, then the rest of the network, must reproduce the
        golden outputs of a few inputs bit for bit (the structure itself has no golden copy)."""
        values = self._values
        assert values is not None
        if any(dict.get(golden, n) is NOT_ROW_INDEXED for n in site.need if n is not site.node):
            return False
        ids = values.block_ids(block)[::-1][: self.min_rows]
        if not ids:
            return False
        pos = pad(torch.tensor(ids, dtype=torch.int64) - block * self.block, self.min_rows)
        try:
            value = self._structured_value(site, None, len(ids), pos, golden)
            live = Rows(block, pos, len(ids), {site.node: value}, torch.arange(len(ids)))
            out, _, _ = self._run_after_site(site, live, golden, False)
            return out is not None and bool(output_words_equal(values.outputs[ids], out).all())
        except Exception as exc:  # noqa: BLE001 - anything odd: the reference engine runs it
            return refused(site, exc)

    def _run_structured(
        self,
        site: Site,
        batch: list[Row],
        faults: list[Any],
        spans: list[tuple[int, int]],
        pos: torch.Tensor,
        golden: dict[fx.Node, Any],
        block: int,
    ) -> list[tuple[list[Row], torch.Tensor | None]]:
        """A structured site: each fault's rows in a batch of their own (the structure's
        elements may hold rows on other dimensions), run to the end (no masked-early drop at
        the site: the structure has no golden copy)."""
        done: list[tuple[list[Row], torch.Tensor | None]] = []
        for f, (r0, r1) in zip(faults, spans):
            p = pad(pos[r0:r1], self.min_rows)
            value = self._structured_value(site, f, r1 - r0, p, golden)
            live = Rows(block, p, r1 - r0, {site.node: value}, torch.arange(r1 - r0))
            out, alive, masked = self._run_after_site(site, live, golden, True)
            done.append(([batch[r0 + k] for k in masked.tolist()], None))
            self.stats["masked_early"] += int(masked.numel())
            if out is not None:
                done.append(([batch[r0 + k] for k in alive.tolist()], out))
        return done

    def _run_after_site(
        self,
        site: Site,
        live: Rows,
        golden: dict[fx.Node, Any],
        drop: bool,
        site_same: Any = None,
        bt: BatchTrace | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Run the network after ``site.node`` for the rows ``live`` (its site value in
        ``live.env``), dropping rows golden again at the cut points when ``drop``; with ``bt``,
        the live rows' deviation at each traced node is recorded as it is computed.

        ``live`` is in window mode when the site value is a window (spatial, or channels), else
        in full mode.
        ``site_same`` tells which real rows equal golden at the site (computed when ``None``).
        Returns ``(out, alive, masked)``: the final outputs of the real rows still alive (``None``
        if none), their row numbers, and the row numbers dropped as masked.
        """
        prog, windows, positions = self._prog, self._windows, self._positions
        assert prog is not None and windows is not None and positions is not None
        start = 0
        if isinstance(live.env[site.node], Window):
            if drop:
                windows.drop_masked(live, site.node, golden, site_same)
            start = windows.run(site, live, golden, drop)
        elif isinstance(live.env[site.node], Channels):
            assert self._channels is not None
            if drop:
                self._channels.drop_masked(live, site.node, golden, site_same)
            start = self._channels.run(site, live, golden, drop)
        elif drop and dict.get(golden, site.node) is not NOT_ROW_INDEXED:
            drop_masked(
                live, site.node, golden.get(site.node), prog.dynamic, self.min_rows, site_same
            )

        def lookup(a: fx.Node) -> Any:
            if a in live.env:
                return live.env[a]
            assert self._values is not None
            return self._values.gather(golden, a, live.pos)

        for i in range(start, len(site.order)):
            if live.n == 0:
                break
            node = site.order[i]
            v = None  # a ReLU or + into the buffer of an operand read no more (._rows.in_place)
            a0 = node.args[0] if node.args else None
            if bt is None and not prog.mutators and isinstance(a0, fx.Node) and site.last[a0] == i:
                v = in_place(node, prog.module_of(node), live.env, lookup, prog.result)
                self.stats["in_place"] += v is not None
            if v is None and node.op == "call_module":
                v = in_parts(node, prog.callee_of(node), lookup, positions.run_node, self.min_rows)
                self.stats["in_parts"] += v is not None
            live.env[node] = v if v is not None else positions.run_node(node, live.env, lookup)
            if bt is not None and node in bt.watch:  # before any later in-place change
                assert self._tracer is not None
                self._tracer.record(bt, node, live.env[node], golden, live.pos, live.alive.tolist())
            for a in node.all_input_nodes:
                if site.last.get(a, -2) == i:
                    live.env.pop(a, None)
            if drop and node in site.checks:
                tally = (
                    self._spread_checks if site.target != "output" and i >= site.spread else None
                )
                if tally is None or tally.due():
                    n = live.n
                    drop_masked(live, node, golden.get(node), prog.dynamic, self.min_rows)
                    if tally is not None:
                        tally.add(n, n - live.n)
                else:
                    self.stats["checks_skipped"] += 1
        done = torch.cat(live.masked) if live.masked else torch.zeros(0, dtype=torch.int64)
        if live.n == 0:
            return None, live.alive, done
        res = live.env[prog.result] if site.order else live.env[site.node]
        if not isinstance(res, torch.Tensor):
            raise Unsupported("the output is not a tensor")
        return res[: live.n], live.alive, done


def _same_bits(a: Any, b: Any) -> bool:
    """Are ``a`` and ``b`` tensors of the same shape, dtype and bits?"""
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.device == b.device
        and words_equal(a, b)
    )


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    """Do modules ``a`` and ``b`` have the same state, entry for entry, bit for bit (a model and
    its deep copy)? Also the parameters and buffers a state dict leaves out; ``False`` for
    state this cannot compare (quantized tensors, packed parameters)."""
    ta = [*a.named_parameters(), *a.named_buffers(), *a.state_dict().items()]
    tb = [*b.named_parameters(), *b.named_buffers(), *b.state_dict().items()]
    return [n for n, _ in ta] == [n for n, _ in tb] and all(
        isinstance(x, torch.Tensor)
        and not x.is_quantized
        and isinstance(y, torch.Tensor)
        and _same_bits(x.detach(), y.detach())
        for (_, x), (_, y) in zip(ta, tb)
    )
