# SPDX-License-Identifier: MIT
"""The configuration of a stored campaign (``torchfault campaign --config FILE.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torchfault.analysis import INTERVAL_METHODS
from torchfault.campaign._engine import DEFAULT_ENGINE
from torchfault.campaign._fast._options import FastOptions
from torchfault.config import check_seed, check_selectors
from torchfault.dnn import DataSpec, ModelSpec
from torchfault.errors import ConfigError, suggest
from torchfault.faults import normalize_kinds

__all__ = [
    "CampaignConfig",
    "ModelConfig",
    "DataConfig",
    "TargetsConfig",
    "SamplerConfig",
    "OutcomeConfig",
    "EngineConfig",
    "ExecutorConfig",
    "StoreConfig",
    "ProtectionConfig",
    "TraceConfig",
    "check_topk",
]

#: Samplers whose fault numbers run stratum after stratum (or site by site): an adaptive
#: campaign, which stops after the first rounds of fault numbers, would see only the first strata.
_ORDERED_SAMPLERS = ("per_layer", "per_bit", "exhaustive")
#: Settings of the ``memory`` sampler under ``sampler.memory``.
MEMORY_KEYS = ("layout", "patterns", "op", "ecc")


def check_topk(golden: Any, topk: int, field: str = "topk") -> None:
    """A ``topk`` criterion must leave room for an SDC: ``1 <= topk < classes`` (with ``topk``
    at or above the number of classes the golden class is always in the faulty top-k, and no run
    could ever be an SDC). A ConfigError naming ``field`` otherwise; checked on the golden
    outputs, before anything is stored.

    Example:
        >>> import torch
        >>> check_topk(torch.zeros(2, 10), 9)
        >>> check_topk(torch.zeros(2, 10), 11, "outcome.topk")
        Traceback (most recent call last):
        ...
        torchfault.errors.ConfigError: outcome.topk: must be in [1, 9] for a model with 10 output classes, got 11 (the golden class is always among the top 10, so no run could ever be an SDC).
    """
    shape = getattr(golden, "shape", None)
    if shape is None or len(shape) < 1 or shape[0] == 0:
        return  # not one tensor of rows: the criterion's own checks apply
    classes = math.prod(shape[1:])
    if classes > 1 and not 1 <= topk < classes:
        raise ConfigError(
            f"{field}: must be in [1, {classes - 1}] for a model with {classes} output classes, "
            f"got {topk} (the golden class is always among the top {classes}, so no run could "
            "ever be an SDC).",
            field=field,
        )


@dataclass
class ModelConfig(ModelSpec):
    """The model under test: dnn's :class:`~torchfault.dnn.ModelSpec` (the same fields in every
    job, documented there; a model of your own is faulted as its factory returns it).

    Attributes:
        dataset: the zoo configuration (input shape, classes) for zoo models.
    """


@dataclass
class DataConfig(DataSpec):
    """The inputs faults run on (dnn's :class:`~torchfault.dnn.DataSpec` and which inputs).

    Attributes:
        dataset: a registered dataset (``digits``, ``synthetic``...).
        split: ``train``, ``val`` or ``test``.
        num_inputs: how many inputs (the first of the split); 0 takes all.
        only_correct: keep only inputs the golden model classifies correctly.
        kwargs: keyword arguments for the dataset.
        batch_dim: the batch dimension of every input tensor (items of a dataset of your own
            may be tensors, tuples of tensors passed positionally, or dicts of tensors passed as
            keyword arguments such as ``input_ids`` and ``attention_mask``).
    """

    dataset: str = "digits"
    split: str = "test"
    num_inputs: int = 100
    only_correct: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_dim: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_inputs < 0:
            raise ConfigError(
                f"data.num_inputs: must be >= 0 (0 means all), got {self.num_inputs}.",
                field="data.num_inputs",
            )


@dataclass
class TargetsConfig:
    """Where faults may land.

    Attributes:
        modules: module selectors: exact names, ``re:<regex>``, ``type:<ClassName>``; empty: all leaves.
        kinds: ``outputs``, ``inputs``, ``weights``, ``biases``, ``buffers``, ``parameters``,
            ``masks`` (pruning masks, buffers named ``*_mask``).
        format: number format to see elements in (default: each tensor's dtype).
    """

    modules: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=lambda: ["outputs", "weights", "biases"])
    format: str | None = None

    def __post_init__(self) -> None:
        check_selectors(self.modules, "targets.modules")
        try:
            self.kinds = list(normalize_kinds(self.kinds))
        except ValueError as exc:
            raise ConfigError(f"targets.kinds: {exc}", field="targets.kinds") from None


@dataclass
class SamplerConfig:
    """Which faults, and how many.

    Attributes:
        name: ``uniform``, ``per_layer``, ``per_bit``, ``exhaustive`` or ``ber``.
        n: faults to draw (per stratum for stratified samplers); when set it takes precedence
            over ``margin``. The ``ber`` sampler needs it (runs, each with a random number of
            faults), unless ``adaptive``; ``exhaustive`` takes none.
        margin: error margin in (0, 1) for the sample size of Leveugle et al. (used when ``n``
            is not set).
        confidence: confidence level in (0, 1).
        adaptive: keep drawing faults until the SDC-rate interval half-width is <= ``margin``
            (``uniform`` and ``ber`` only: the others number their faults stratum by stratum).
        max_faults: the most faults an adaptive campaign draws.
        adaptive_step: an adaptive campaign runs faults in rounds of this many and checks its
            stopping rule only at round ends, over the runs of the faults below the boundary:
            where it stops depends on the config alone, never on chunking or interruptions.
        bits: bit positions or field names (``exponent``, ``sign``, ``mantissa``) to fault.
        fault_model: ``bit_flip``, ``stuck_at_0``, ``stuck_at_1``, ``random_value``, ``zero``...
        params: fault-model parameters.
        persistence: ``permanent`` or ``transient``.
        rate: bit-error rate for the ``ber`` sampler (needed by it).
        allocation: ``stratified`` sampler: ``neyman`` (from a pilot round), ``proportional``
            or ``equal``; ``n`` is then the whole budget (docs/statistics.md).
        strata: ``stratified`` sampler: ``layer_bit_group``, ``layer``, ``bit_group``,
            ``layer_bit`` or ``bit``.
        bit_groups: ``stratified`` sampler: ``{group: [bits or field names]}`` instead of the
            default groups (sign, exponent_msb, exponent, mantissa_high, mantissa_low).
        pilot: ``stratified`` sampler with Neyman allocation: faults of the pilot round
            (default 10 per stratum).
        memory: ``memory`` sampler: ``layout`` (a dict of
            :class:`~torchfault.faults.MemoryLayout` fields: ``width``, ``format``, ``order``,
            ``ecc``, ...), ``patterns`` (a pattern or ``{pattern: relative frequency}``), ``op``
            (``flip``, ``stuck_at_0``, ``stuck_at_1``) and ``ecc`` (decoder on, default true).
            ``n`` and ``margin`` then count memory cells.
    """

    name: str = "uniform"
    n: int | None = None
    margin: float | None = 0.01
    confidence: float = 0.95
    adaptive: bool = False
    max_faults: int = 100_000
    adaptive_step: int = 500
    bits: list[Any] | None = None
    fault_model: str = "bit_flip"
    params: dict[str, Any] = field(default_factory=dict)
    persistence: str = "permanent"
    rate: float | None = None
    allocation: str = "neyman"
    strata: str = "layer_bit_group"
    bit_groups: dict[str, Any] | None = None
    pilot: int | None = None
    memory: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from torchfault.samplers import ALLOCATIONS, STRATA

        for name, value, valid in (
            ("allocation", self.allocation, ALLOCATIONS),
            ("strata", self.strata, STRATA),
        ):
            if value not in valid:
                raise ConfigError(
                    f"sampler.{name}: {value!r} is not valid; choose one of {', '.join(valid)}."
                    f"{suggest(str(value), valid)}",
                    field=f"sampler.{name}",
                )
        if self.pilot is not None and (self.pilot < 1 or self.name != "stratified"):
            raise ConfigError(
                f"sampler.pilot: a pilot round (>= 1 faults) is for the stratified sampler with "
                f"Neyman allocation; got pilot={self.pilot} with sampler.name {self.name!r}.",
                field="sampler.pilot",
            )
        if self.margin is not None and not 0.0 < self.margin < 1.0:
            raise ConfigError(
                f"sampler.margin: must be in (0, 1), got {self.margin}.", field="sampler.margin"
            )
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(
                f"sampler.confidence: must be in (0, 1), got {self.confidence}.",
                field="sampler.confidence",
            )
        if self.n is not None and self.n < 1:
            raise ConfigError(f"sampler.n: must be >= 1, got {self.n}.", field="sampler.n")
        if self.adaptive and self.margin is None:
            raise ConfigError(
                "sampler.adaptive: needs sampler.margin (the target half-width).",
                field="sampler.adaptive",
            )
        if self.adaptive and self.name in _ORDERED_SAMPLERS:
            # these lay their fault numbers out stratum after stratum (site after site, bit after
            # bit): the first rounds would all hit one stratum, and the rule would stop on it
            raise ConfigError(
                f"sampler.adaptive: the {self.name} sampler numbers its faults stratum after "
                "stratum (site by site or bit by bit), so stopping early would leave the later "
                "ones unsampled; use sampler.name: uniform (or ber) for an adaptive campaign, or "
                "give sampler.n or sampler.margin without adaptive.",
                field="sampler.adaptive",
            )
        if self.name == "exhaustive" and self.n is not None:
            raise ConfigError(
                f"sampler.n: the exhaustive sampler injects every (element, bit) pair, so a fault "
                f"count does not apply (got {self.n}); leave sampler.n unset, or use another sampler.",
                field="sampler.n",
            )
        if self.memory is not None:
            if self.name != "memory":
                raise ConfigError(
                    f"sampler.memory: settings of the memory sampler, but sampler.name is "
                    f"{self.name!r}; set sampler.name: memory or leave sampler.memory unset.",
                    field="sampler.memory",
                )
            if not isinstance(self.memory, dict):
                raise ConfigError(
                    f"sampler.memory: must be a mapping of {', '.join(MEMORY_KEYS)}, got "
                    f"{self.memory!r}.",
                    field="sampler.memory",
                )
            unknown = [k for k in self.memory if k not in MEMORY_KEYS]
            if unknown:
                raise ConfigError(
                    f"sampler.memory.{unknown[0]}: unknown setting; valid: "
                    f"{', '.join(MEMORY_KEYS)}.{suggest(str(unknown[0]), MEMORY_KEYS)}",
                    field=f"sampler.memory.{unknown[0]}",
                )
        if self.max_faults < 1:
            raise ConfigError(
                f"sampler.max_faults: must be >= 1, got {self.max_faults}.",
                field="sampler.max_faults",
            )
        if self.adaptive_step < 1:
            raise ConfigError(
                f"sampler.adaptive_step: must be >= 1, got {self.adaptive_step}.",
                field="sampler.adaptive_step",
            )
        if self.persistence not in ("permanent", "transient"):
            raise ConfigError(
                f"sampler.persistence: must be 'permanent' or 'transient', got {self.persistence!r}."
                f"{suggest(self.persistence, ['permanent', 'transient'])}",
                field="sampler.persistence",
            )
        if self.rate is not None and not 0.0 < self.rate <= 1.0:
            raise ConfigError(
                f"sampler.rate: must be in (0, 1], got {self.rate}.", field="sampler.rate"
            )
        if self.name == "ber":
            if self.rate is None:
                raise ConfigError(
                    "sampler.rate: the ber sampler needs a bit-error rate in (0, 1].",
                    field="sampler.rate",
                )
            if self.n is None and not self.adaptive:
                raise ConfigError(
                    "sampler.n: the ber sampler needs sampler.n, the number of runs (each flips "
                    "Binomial(population, rate) bits; sampler.margin does not size it), or "
                    "sampler.adaptive: true to stop on the SDC interval (at most sampler.max_faults runs).",
                    field="sampler.n",
                )


@dataclass
class OutcomeConfig:
    """What counts as an SDC.

    Attributes:
        criterion: ``top1`` (the top-1 class changed), ``topk`` (the golden top-1 class left the
            faulty top ``topk``), ``tolerance`` (an element moved by more than ``tolerance +
            rtol * |golden|``), ``regression``, ``segmentation``, ``detection``, ``tokens``, a
            criterion a plugin registered, or a callable ``path/to/file.py:function`` /
            ``package.module:function`` called as ``fn(golden, faulty)`` per input.
        topk: k of the ``topk`` criterion.
        tolerance: largest absolute logit change that is not an SDC (``tolerance`` criterion).
        rtol: relative tolerance of the ``tolerance`` criterion.
        threshold: ``regression``: relative error above which a run is an SDC.
        fraction: ``segmentation``: fraction of pixels whose class may change without an SDC.
        iou: ``detection``: IoU at or above which two boxes match.
        score_threshold: ``detection``: detections scoring below it are ignored.
        matching: ``detection``: ``greedy`` (by score) or ``hungarian``.
        k: ``tokens``: more than ``k`` changed tokens is an SDC (0: any).
        output: the part of the model's output the criterion reads (``logits``, ``0``,
            ``pred.boxes``); unset: the whole output.
        params: options of a criterion of your own (registered criteria read them).
    """

    criterion: str = "top1"
    topk: int = 1
    tolerance: float = 0.0
    rtol: float = 0.0
    threshold: float = 0.01
    fraction: float = 0.0
    iou: float = 0.5
    score_threshold: float = 0.0
    matching: str = "greedy"
    k: int = 0
    output: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from torchfault.campaign._outcome import CRITERIA

        names = CRITERIA.list()
        if not isinstance(self.criterion, str) or not (
            ":" in self.criterion or CRITERIA.is_registered(self.criterion)
        ):
            raise ConfigError(
                f"outcome.criterion: {self.criterion!r} is not valid; choose {', '.join(names)} "
                f"or a callable 'path/to/file.py:function'.{suggest(str(self.criterion), names)}",
                field="outcome.criterion",
            )
        self.criterion_object()
        if isinstance(self.topk, bool) or not isinstance(self.topk, int):
            raise ConfigError(
                f"outcome.topk: must be an integer, got {self.topk!r}.", field="outcome.topk"
            )
        if self.topk < 1:
            raise ConfigError(f"outcome.topk: must be >= 1, got {self.topk}.", field="outcome.topk")
        if not (isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance)):
            raise ConfigError(
                f"outcome.tolerance: must be a finite number >= 0, got {self.tolerance!r} (with "
                "NaN or infinity no run could ever be an SDC).",
                field="outcome.tolerance",
            )
        if self.tolerance < 0:
            raise ConfigError(
                f"outcome.tolerance: must be >= 0, got {self.tolerance}.", field="outcome.tolerance"
            )

    def criterion_object(self) -> Any:
        """The :class:`~torchfault.campaign.Criterion` of these settings (errors name the field)."""
        from torchfault.campaign._outcome import Criterion
        from torchfault.errors import TorchFaultError

        try:
            return Criterion(
                self.criterion,
                self.topk,
                self.tolerance,
                rtol=self.rtol,
                threshold=self.threshold,
                fraction=self.fraction,
                iou=self.iou,
                score_threshold=self.score_threshold,
                matching=self.matching,
                k=self.k,
                output=None if self.output in (None, "") else str(self.output),
                params=dict(self.params),
            )
        except TorchFaultError as exc:
            msg = str(exc)
            import re

            m = re.match(r"criterion\.(\w+)", msg)
            where = f"outcome.{m.group(1)}" if m else "outcome.criterion"
            raise ConfigError(
                f"{where}: {msg.split(' ', 1)[1] if m else msg}", field=where
            ) from None


@dataclass
class EngineConfig:
    """How runs execute.

    Attributes:
        name: ``fast`` (the default: the reference engine's records, sooner; what it does not
            cover, it hands to the reference engine, counted in the campaign log) or
            ``reference`` (full re-execution, one forward pass per run).
        batch_size: rows per forward pass.
        threads: torch intra-op threads per process (0: torch's default). One thread is the
            default: injection runs are small, and on a busy machine torch's thread pool spends
            more time waiting than computing; scale with ``executor.workers`` instead.
        fast: the ``fast`` engine's tuning knobs (:class:`~torchfault.campaign.FastOptions`:
            cache size, spatial windows, row checks); no knob changes a record.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``: the model, the inputs and
            the golden outputs live there (checked to exist before anything runs).
        deterministic: run the campaign (golden pass and every worker) under
            ``torch.use_deterministic_algorithms(True)`` (restored after); on CUDA, set
            ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` too. An operation without a deterministic
            kernel then raises (in the golden pass: a config error).
    """

    name: str = DEFAULT_ENGINE
    batch_size: int = 256
    threads: int = 1
    fast: FastOptions = field(default_factory=FastOptions)
    device: str = "cpu"
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(
                f"engine.batch_size: must be >= 1, got {self.batch_size}.",
                field="engine.batch_size",
            )
        if self.threads < 0:
            raise ConfigError(
                f"engine.threads: must be >= 0 (0: torch's default), got {self.threads}.",
                field="engine.threads",
            )


@dataclass
class ExecutorConfig:
    """Where runs execute.

    Attributes:
        name: ``serial``, ``threads`` (threads of this process), ``process`` (worker processes
            on this machine), ``auto`` (serial unless worker processes pay back their start) or
            ``ray``.
        workers: worker processes, or Ray tasks in flight.
        address: Ray cluster address (``auto``, ``ray://host:10001``); null or ``local`` starts a
            local one.
        chunk_faults: faults handed to a worker at a time.
        num_gpus: GPUs each Ray actor asks for (``ray`` only; null: one on a CUDA campaign,
            none otherwise).
    """

    name: str = "serial"
    workers: int = 2
    address: str | None = None
    chunk_faults: int = 256
    num_gpus: float | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(
                f"executor.workers: must be >= 1, got {self.workers}.", field="executor.workers"
            )
        if self.chunk_faults < 1:
            raise ConfigError(
                f"executor.chunk_faults: must be >= 1, got {self.chunk_faults}.",
                field="executor.chunk_faults",
            )
        if self.num_gpus is not None and not self.num_gpus >= 0:
            raise ConfigError(
                f"executor.num_gpus: must be >= 0 or null, got {self.num_gpus}.",
                field="executor.num_gpus",
            )


@dataclass
class StoreConfig:
    """The SQLite results store.

    Attributes:
        path: the store file (default ``<out_dir>/campaign.sqlite``).
        overwrite: replace an existing torchfault store with a fresh one (a file that is not
            a torchfault store is refused and left intact); without it, a store of the same
            campaign is resumed and one of another campaign is refused.
        chunk_size: runs per committed write.
        export: formats the runs and summaries are exported to after the campaign (``csv``,
            ``parquet``).
        wait: seconds to wait when another campaign is writing the same store (one writer at
            a time); ``0`` refuses at once, naming the running campaign's pid and host;
            ``null`` waits as long as it takes.
    """

    path: str | None = None
    overwrite: bool = False
    chunk_size: int = 1000
    export: list[str] = field(default_factory=lambda: ["csv"])
    wait: float | None = 0.0

    def __post_init__(self) -> None:
        if self.wait is not None and (isinstance(self.wait, bool) or not self.wait >= 0):
            raise ConfigError(
                f"store.wait: must be >= 0 seconds, or null to wait as long as it takes; got {self.wait!r}.",
                field="store.wait",
            )
        if self.chunk_size < 1:
            raise ConfigError(
                f"store.chunk_size: must be >= 1, got {self.chunk_size}.", field="store.chunk_size"
            )
        for fmt in self.export:
            if fmt not in ("csv", "parquet"):
                raise ConfigError(
                    f"store.export: {fmt!r} is not valid; choose csv and/or parquet.",
                    field="store.export",
                )


@dataclass
class ProtectionConfig:
    """A protection measured on the campaign's faults (docs/protection.md): after the campaign,
    every stored run is repeated under it (full re-execution) and ``protection.json`` in the run
    directory gets SDC/DUE with and without it, detection, false-positive rate, accuracy cost
    and overhead. It changes no stored run, so it is not part of the store's identity.

    Attributes:
        name: a registered protection (``ranger``, ``clip``, ``detect``); null: none.
        profile: a range profile file (``torchfault profile-ranges``) made on this model.
        layers: module names or ``re:`` patterns, or a mapping ``name -> options``; null: every
            layer of the profile.
        options: the protection's other options (``bounds``, ``per_channel``, ``margin``,
            ``bound``, ``low``, ``high``, ``mode``).
    """

    name: str | None = None
    profile: str | None = None
    layers: dict[str, dict[str, Any]] | list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any] | None:
        """The protection as ``run_campaign(protection=...)`` takes it (``None``: no protection)."""
        if self.name is None:
            return None
        out: dict[str, Any] = {"name": self.name, **self.options}
        if self.profile is not None:
            out["profile"] = self.profile
        if self.layers is not None:
            out["layers"] = self.layers
        return out


@dataclass
class TraceConfig:
    """Layer-by-layer deviation traces of every run (docs/protection.md), stored in the
    store's ``traces`` table before the run itself; computed by the engine with the chunk's runs
    (the fast engine reads them from the rest of the network it runs; the reference engine by
    a golden and a faulty pass with hooks per fault), the same values whatever the engine. Not
    part of the store's identity (it changes no run).

    Attributes:
        enabled: record traces.
        layers: module names or ``re:`` patterns (null: every leaf module).
        profile: a range profile file (``torchfault profile-ranges``): also record the first
            layer out of its golden range.
    """

    enabled: bool = False
    layers: list[str] | None = None
    profile: str | None = None


@dataclass
class CampaignConfig:
    """A whole campaign. Every field can be overridden on the command line (``--sampler.margin 0.02``).

    Attributes:
        name: campaign name (also the default run directory ``runs/<name>``).
        seed: campaign seed: fault k is a pure function of the seed and k.
        inputs_per_fault: inputs each fault runs on (0: every input).
        out_dir: run directory (store, log, report); default ``runs/<name>``.
        report: write plots and a Markdown report after the campaign.
        progress: show a progress bar.
        injected_values: store each faulted element's value before and after the fault
            (the store's ``injected`` table; docs/protection.md). On by default: the values of
            a chunk's runs are read together (parameter faults under one injection, activation
            faults as the rows of one forward pass per ``engine.batch_size`` runs); ``false``
            stores none. Changes no run, so it is not part of the store's identity.
        interval: confidence-interval method of the printed summary, the report and the
            adaptive stopping rule: ``clopper_pearson`` (the default: keeps its coverage near 0
            and 1), ``wilson`` or ``wilson_modified`` (Brown-Cai-DasGupta). Intervals are over
            faults, not runs (docs/statistics.md).
    """

    name: str = "campaign"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    outcome: OutcomeConfig = field(default_factory=OutcomeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    protection: ProtectionConfig = field(default_factory=ProtectionConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    inputs_per_fault: int = 1
    out_dir: str | None = None
    report: bool = True
    progress: bool = True
    interval: str = "clopper_pearson"
    injected_values: bool = True

    def __post_init__(self) -> None:
        method = str(self.interval).lower().replace("-", "_")
        if method not in INTERVAL_METHODS:
            raise ConfigError(
                f"interval: {self.interval!r} is not valid; choose {' or '.join(INTERVAL_METHODS)}."
                f"{suggest(method, INTERVAL_METHODS)}",
                field="interval",
            )
        self.interval = method
        check_seed(self.seed, "seed")
        if self.inputs_per_fault < 0:
            raise ConfigError(
                f"inputs_per_fault: must be >= 0 (0 means all), got {self.inputs_per_fault}.",
                field="inputs_per_fault",
            )
        s = self.sampler
        if s.n is None and s.margin is None and s.name not in ("exhaustive", "ber"):
            raise ConfigError(
                "sampler: give sampler.n (a fault count) or sampler.margin and sampler.confidence.",
                field="sampler",
            )

    @property
    def run_dir(self) -> str:
        return self.out_dir or f"runs/{self.name}"

    @property
    def store_path(self) -> str:
        return self.store.path or f"{self.run_dir}/campaign.sqlite"

    def identity(self) -> dict[str, Any]:
        """The settings that define the campaign's results (a store refuses other values).

        How the runs execute (engine, executor, progress, report, export) is left out: any of them
        may change between a run and its resumption. The stopping settings (``interval``,
        ``sampler.adaptive_step``) are part of it only for adaptive campaigns, where they decide
        which runs are made.
        """
        from torchfault.config import to_dict

        d = to_dict(self)
        for key in (
            "engine",
            "executor",
            "progress",
            "report",
            "out_dir",
            "protection",
            "injected_values",
            "trace",
        ):
            d.pop(key, None)
        d["store"] = {}
        for key in ("hub", "quantized"):  # unset: as before these keys existed (old stores resume)
            if d["model"].get(key) is None:
                d["model"].pop(key, None)
        if not self.sampler.adaptive:
            d.pop("interval", None)
            d["sampler"].pop("adaptive_step", None)
        if self.sampler.name != "stratified":
            for key in ("allocation", "strata", "bit_groups", "pilot"):
                d["sampler"].pop(key, None)
        return d
