# SPDX-License-Identifier: MIT
"""DNN jobs of the ``torchfault`` command: train, test, prune, quantize, summary, profile.

Each job takes a dataclass config (a YAML file with ``--config`` plus dotted overrides such as
``--trainer.max_epochs 3``); ``--print_config`` prints the merged config. Lightning is imported
only by the jobs that train.

Every job names its model and data with the ``model:`` and ``data:`` sections of ``torchfault
campaign`` (:class:`~torchfault.dnn.JobModelSpec`, :class:`~torchfault.dnn.DataSpec`), built by
the same builder: ``model.name`` is a zoo name or a factory of your own
(``path/to/file.py:function``, called with ``model.kwargs`` and wrapped with ``wrap_model`` for
the dataset's input shape and class count), ``model.checkpoint`` any weights file the jobs write;
``data.dataset`` likewise (``function(split=..., **data.kwargs)``). The old flat keys (``model:
NAME``, ``dataset``, ``model_options``, ``dataset_options``, ``checkpoint``, ``pretrained``,
``split``) are read for one more release, with a warning naming the new key.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torchfault.cli import command
from torchfault.config import check_seed, check_selectors
from torchfault.dnn import DataSpec, JobModelSpec, TestConfig, TrainConfig, legacy_job_keys
from torchfault.errors import ConfigError

__all__ = ["PruneConfig", "ProfileConfig", "QuantizeConfig", "SummaryConfig"]


def _console() -> Any:
    from rich.console import Console

    return Console()


def _wide_console() -> Any:
    """A console that never wraps or cuts lines (for output that is not a terminal)."""
    from rich.console import Console

    return Console(width=100_000)


def _metrics_table(title: str, rows: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return table


@command(
    "train",
    TrainConfig,
    "Train a model with PyTorch Lightning (seeded, deterministic); --cv K for K folds.",
    positional=("model.name",),
)
def train_job(cfg: TrainConfig) -> int:
    from torchfault.dnn import cross_validate, train

    console = _console()
    if cfg.cv:
        if cfg.export:
            # K folds give K models, none of them "the" model: train without --cv to export one
            print(
                f"torchfault train: warning: export={cfg.export} is not written with --cv "
                f"{cfg.cv} (cross-validation trains {cfg.cv} models to estimate accuracy; run "
                "without --cv to train and export one).",
                file=sys.stderr,
            )
        cv = cross_validate(cfg)
        from rich.table import Table

        keys = sorted(cv.mean)
        table = Table(
            title=f"{cfg.cv}-fold cross-validation of {cfg.model.name} on {cfg.data.dataset}"
        )
        table.add_column("fold")
        for k in keys:
            table.add_column(k, justify="right")
        for r in cv.folds:
            table.add_row(str(int(r["fold"])), *(f"{r.get(k, float('nan')):.4f}" for k in keys))
        table.add_row("mean", *(f"{cv.mean[k]:.4f}" for k in keys))
        table.add_row("std", *(f"{cv.std[k]:.4f}" for k in keys))
        console.print(table)
        return 0
    result = train(cfg)
    console.print(_metrics_table(f"{cfg.model.name} on {cfg.data.dataset}", result.metrics))
    console.print(f"run: {result.run_dir}")
    if result.best_checkpoint:
        console.print(f"best checkpoint: {result.best_checkpoint}")
    if result.exported is not None:
        console.print(f"exported weights: {result.exported}")
    return 0


@command(
    "test",
    TestConfig,
    "Test a model (shipped weights or a checkpoint) on a dataset split with Lightning.",
    positional=("model.name",),
)
def test_job(cfg: TestConfig) -> int:
    from torchfault.config import is_factory_spec
    from torchfault.dnn import test

    metrics = test(cfg)
    m = cfg.model
    src = m.checkpoint or ("factory weights" if is_factory_spec(m.name) else "shipped weights")
    title = f"{m.name} ({src}) on {cfg.data.dataset}/{cfg.data.split}"
    _console().print(_metrics_table(title, metrics))
    return 0


def _load_model(cfg: Any, pretrained: bool | None = None):
    """The model a job config's ``model:`` and ``data:`` sections name, built as a campaign builds its own (:func:`torchfault.dnn.build_model`:
    Lightning checkpoints, exports, pruned and quantized files); ``pretrained`` defaults to the
    config's own (a factory of your own brings its own weights)."""
    from torchfault.dnn import build_job_model

    return build_job_model(cfg, pretrained)


def _check_names(cfg: Any) -> None:
    from torchfault.dnn import check_names

    check_names(cfg.model.name, cfg.data.dataset)


@legacy_job_keys("model", "dataset", "model_options", "dataset_options", "pretrained", "checkpoint")
@dataclass
class PruneConfig:
    """Settings of ``torchfault prune``.

    Attributes:
        model: the model, as in every job and in ``torchfault campaign``: ``model.name`` (a zoo
            model or a factory of your own, ``path/to/file.py:function``), ``model.kwargs``,
            ``model.checkpoint`` (any weights file the DNN jobs write), ``model.pretrained``
            (the shipped weights, unless ``model.checkpoint``), ``model.dataset`` (default:
            ``data.dataset``), ``model.hub``, ``model.quantized``.
        data: ``data.dataset`` and ``data.kwargs`` (``split_seed``; ``input_shape`` and
            ``num_classes`` of ``synthetic``, which also configure the model): evaluation on the
            test split and fine-tuning.
        method: l1_unstructured, random_unstructured, ln_structured or random_structured.
        amount: final fraction of weights (or output channels) to prune in each selected layer
            (or over all of them with ``scope: global``).
        scope: layer or global (unstructured methods only).
        n: norm order of ln_structured.
        dim: dimension of structured pruning (0: output channels / filters).
        modules: module names to prune (exact, wildcards, ``re:`` regex); empty: all linear and
            convolution layers.
        steps: pruning steps (iterative pruning when > 1).
        finetune_epochs: epochs of fine-tuning after each step (needs Lightning).
        lr: fine-tuning learning rate.
        seed: seed of random pruning and fine-tuning.
        batch_size: evaluation and fine-tuning batch size.
        out: where to save the pruned weights (masks made permanent); empty: do not save.
            ``{name}`` is replaced by a name made of the model, dataset, method, amount and
            (when not the default) steps, fine-tuning epochs and scope, e.g.
            ``lenet-digits-l1_unstructured-0.5``; ``{model}``, ``{dataset}``, ``{method}``,
            ``{amount}`` and ``{steps}`` by those settings.
        overwrite: replace an existing ``out`` file (else an existing file is an error, raised
            before anything is pruned).
        compression: compression of the saved file.
    """

    model: JobModelSpec = field(default_factory=lambda: JobModelSpec())
    data: DataSpec = field(default_factory=DataSpec)
    method: Literal[
        "l1_unstructured", "random_unstructured", "ln_structured", "random_structured"
    ] = "l1_unstructured"
    amount: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    n: float = 2.0
    dim: int = 0
    modules: list[str] = field(default_factory=list)
    steps: int = 1
    finetune_epochs: int = 0
    lr: float = 1e-3
    seed: int = 0
    batch_size: int = 256
    out: str = "runs/prune/{name}.pt.xz"
    overwrite: bool = False
    compression: Literal["lzma", "gzip", "bz2", "none"] = "lzma"

    def __post_init__(self) -> None:
        _check_names(self)
        check_seed(self.seed, "seed", 2**32 - 1 - self.steps)  # fine-tuning seeds seed + step
        check_selectors(self.modules, "modules")
        if not 0.0 <= self.amount < 1.0:
            raise ConfigError(f"amount must lie in [0, 1), got {self.amount}.", field="amount")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}.", field="steps")
        if self.finetune_epochs < 0:
            raise ConfigError(
                f"finetune_epochs must be >= 0, got {self.finetune_epochs}.",
                field="finetune_epochs",
            )
        if self.scope == "global" and self.method.endswith("_structured"):
            raise ConfigError(
                f"scope: 'global' needs an unstructured method, not {self.method!r}.", field="scope"
            )
        self.out_path()  # an unknown {placeholder} is an error now, not after pruning

    def out_path(self) -> str:
        """``out`` with its placeholders filled in (``""``: do not save).

        Example:
            >>> PruneConfig(amount=0.75, steps=3).out_path()
            'runs/prune/lenet-digits-l1_unstructured-0.75-3steps.pt.xz'
        """
        model = self.model.name
        if ":" in model:  # a factory: path/to/file.py:function or package.module:function
            where, fn = model.rsplit(":", 1)
            model = f"{Path(where).stem if where.endswith('.py') else where}.{fn}"
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)
        dataset = str(self.model.dataset or self.data.dataset)
        name = f"{model}-{dataset}-{self.method}-{self.amount:g}"
        if self.steps > 1:
            name += f"-{self.steps}steps"
        if self.finetune_epochs:
            name += f"-ft{self.finetune_epochs}"
        if self.scope != "layer":
            name += f"-{self.scope}"
        fields = {
            "name": name,
            "model": model,
            "dataset": dataset,
            "method": self.method,
            "amount": f"{self.amount:g}",
            "steps": self.steps,
        }
        try:
            return self.out.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"out: {self.out!r} has an unknown placeholder ({exc}); use "
                + ", ".join("{" + k + "}" for k in fields)
                + " (write {{ and }} for literal braces).",
                field="out",
            ) from None


@command(
    "prune",
    PruneConfig,
    "Prune a model (unstructured or structured, iterative) and report sparsity.",
    positional=("model.name",),
)
def prune_job(cfg: PruneConfig) -> int:
    import torch
    from rich.table import Table

    from torchfault.dnn import (
        build_dataset,
        evaluate,
        export_weights,
        iterative_prune,
        sparsity_report,
    )

    out = cfg.out_path()
    if out and Path(out).exists() and not cfg.overwrite:
        raise ConfigError(
            f"out: {out} exists (pruned weights of an earlier run); pass --overwrite true to "
            "replace it, or another --out (placeholders: {name}, {model}, {amount}...)."
        )
    torch.manual_seed(cfg.seed)
    model = _load_model(cfg)
    test_set = build_dataset(cfg.data, split="test")
    before = evaluate(model, test_set, batch_size=cfg.batch_size)

    def finetune(m, step):
        # progress: a line per pruning step (and per fine-tuning epoch), on standard error
        sparsity = sparsity_report(m)["total"]["sparsity"]
        more = f"; fine-tuning {cfg.finetune_epochs} epoch(s)" if cfg.finetune_epochs else ""
        print(
            f"prune step {step + 1}/{cfg.steps}: sparsity {sparsity:.2%}{more}",
            file=sys.stderr,
            flush=True,
        )
        if not cfg.finetune_epochs:
            return m
        from torchfault.dnn import fine_tune

        return fine_tune(
            m,
            cfg.data.dataset,
            epochs=cfg.finetune_epochs,
            lr=cfg.lr,
            seed=cfg.seed + step,
            batch_size=min(cfg.batch_size, 64),
            dataset_options=cfg.data.kwargs,
            progress_prefix=f"  step {step + 1}/{cfg.steps}, fine-tune epoch",
        )

    iterative_prune(
        model,
        cfg.method,
        cfg.amount,
        steps=cfg.steps,
        finetune=finetune,
        scope=cfg.scope,
        n=cfg.n,
        dim=cfg.dim,
        modules=cfg.modules or None,
    )
    after = evaluate(model, test_set, batch_size=cfg.batch_size)
    report = sparsity_report(model)
    table = Table(
        title=f"{cfg.method} pruning of {cfg.model.name} ({cfg.amount:.0%}, {cfg.steps} step(s))",
        title_justify="left",
    )
    for col in ("parameter", "elements", "zeros", "sparsity", "zero channels"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    for name, r in report.items():
        if name == "total":
            table.add_section()
        table.add_row(
            name,
            f"{r['numel']:,}",
            f"{r['zeros']:,}",
            f"{r['sparsity']:.2%}",
            f"{r['zero_channels']}/{r['channels']}",
        )
    console = _console()
    console.print(table)
    console.print(f"test accuracy: {before['acc']:.4f} before, {after['acc']:.4f} after pruning")
    if out:
        info = export_weights(
            model,
            out,
            model_name=cfg.model.name,
            dataset=cfg.model.dataset or cfg.data.dataset,
            metrics={
                "test_acc": after["acc"],
                "test_acc_before": before["acc"],
                "sparsity": report["total"]["sparsity"],
            },
            extra={
                "model_options": dict(cfg.model.kwargs),
                "dataset_options": dict(cfg.data.kwargs),
            },
            compression=cfg.compression,
        )
        console.print(f"saved: {info}")
    return 0


@legacy_job_keys(
    "model", "dataset", "model_options", "dataset_options", "pretrained", "checkpoint", "split"
)
@dataclass
class QuantizeConfig:
    """Settings of ``torchfault quantize`` (post-training static int8, torch.ao FX mode).

    Attributes:
        model: the model, as in every job and in ``torchfault campaign``: ``model.name`` (a zoo
            model or a factory of your own, ``path/to/file.py:function``), ``model.kwargs``,
            ``model.checkpoint`` (any weights file the DNN jobs write), ``model.pretrained``
            (the shipped weights, unless ``model.checkpoint``), ``model.dataset`` (default:
            ``data.dataset``), ``model.hub``, ``model.quantized``.
        data: ``data.dataset`` and ``data.kwargs`` for calibration and evaluation;
            ``data.split``: the split on which float and int8 accuracy are compared.
        backend: quantized engine: x86 (default) or fbgemm on CPU.
        calibration_split: split whose inputs calibrate the activation ranges.
        calibration_batches: number of calibration batches.
        batch_size: calibration and evaluation batch size.
        out: where to save the quantized model; empty: do not save.
    """

    model: JobModelSpec = field(default_factory=lambda: JobModelSpec())
    data: DataSpec = field(default_factory=DataSpec)
    backend: Literal["x86", "fbgemm", "qnnpack", "onednn"] = "x86"
    calibration_split: Literal["train", "val", "test", "all"] = "train"
    calibration_batches: int = 8
    batch_size: int = 64
    out: str = "runs/quantize/quantized.pt.xz"

    def __post_init__(self) -> None:
        _check_names(self)
        if self.calibration_batches < 1:
            raise ConfigError(
                f"calibration_batches must be >= 1, got {self.calibration_batches}.",
                field="calibration_batches",
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be >= 1, got {self.batch_size}.", field="batch_size"
            )


@command(
    "quantize",
    QuantizeConfig,
    "Post-training static int8 quantization with calibration; accuracy before and after.",
    positional=("model.name",),
)
def quantize_job(cfg: QuantizeConfig) -> int:
    from torchfault.dnn import build_dataset, evaluate, quantize_model, save_quantized

    model = _load_model(cfg)
    calib = build_dataset(cfg.data, split=cfg.calibration_split)
    data = build_dataset(cfg.data)
    qmodel = quantize_model(
        model,
        calib,
        backend=cfg.backend,
        num_batches=cfg.calibration_batches,
        batch_size=cfg.batch_size,
    )
    f = evaluate(model, data, batch_size=cfg.batch_size)
    q = evaluate(qmodel, data, batch_size=cfg.batch_size)
    agree = float((f["predictions"] == q["predictions"]).float().mean())
    metrics = {"float_acc": f["acc"], "int8_acc": q["acc"], "agreement": agree}
    console = _console()
    console.print(
        _metrics_table(
            f"int8 ({cfg.backend}) quantization of {cfg.model.name} on "
            f"{cfg.data.dataset}/{cfg.data.split}",
            metrics,
        )
    )
    if cfg.out:
        info = save_quantized(
            qmodel,
            cfg.out,
            model_name=cfg.model.name,
            dataset=cfg.model.dataset or cfg.data.dataset,
            backend=cfg.backend,
            model_options=cfg.model.kwargs,
            dataset_options=cfg.data.kwargs,
            metrics=metrics,
        )
        console.print(f"saved: {info}")
    return 0


@legacy_job_keys("model", "dataset", "model_options", "dataset_options", "checkpoint")
@dataclass
class SummaryConfig:
    """Settings of ``torchfault summary``.

    Attributes:
        model: the model, as in every job and in ``torchfault campaign``: ``model.name`` (a zoo
            model or a factory of your own, ``path/to/file.py:function``), ``model.kwargs``,
            ``model.checkpoint`` (any weights file the DNN jobs write), ``model.pretrained``
            (not read: weights do not change the summary), ``model.dataset`` (default:
            ``data.dataset``), ``model.hub``, ``model.quantized``.
        data: ``data.dataset`` and ``data.kwargs``, whose input shape and classes configure
            the model.
        batch: batch size of the probe input (activation memory scales with it).
        json: also write the summary as JSON to this file; empty: do not.
    """

    model: JobModelSpec = field(default_factory=lambda: JobModelSpec())
    data: DataSpec = field(default_factory=DataSpec)
    batch: int = 1
    json: str = ""

    def __post_init__(self) -> None:
        _check_names(self)
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}.", field="batch")


@command(
    "summary",
    SummaryConfig,
    "Per-layer output shapes, parameters, MACs/FLOPs and memory of a model.",
    positional=("model.name",),
)
def summary_job(cfg: SummaryConfig) -> int:
    import json

    from torchfault.dnn import summarize_model

    model = _load_model(cfg, pretrained=False)
    s = summarize_model(model, batch=cfg.batch)
    console = _console()
    if console.is_terminal or "COLUMNS" in os.environ:
        table = s.table(width=console.width)  # compact when the full table does not fit
    else:  # piped: every row whole, however wide (for grep, files, other programs)
        table = s.table()
        console = _wide_console()
    console.print(table)
    console.print(
        f"params {s.total_params:,} ({s.trainable_params:,} trainable); MACs {s.total_macs:,}; "
        f"FLOPs {s.total_flops:,}; parameter memory {s.param_bytes:,} B; buffers "
        f"{s.buffer_bytes:,} B; activations {s.activation_bytes:,} B (batch {cfg.batch})"
    )
    if cfg.json:
        path = Path(cfg.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(s.to_dict(), indent=2))
        console.print(f"wrote {path}")
    return 0


@legacy_job_keys("model", "dataset", "model_options", "dataset_options", "checkpoint")
@dataclass
class ProfileConfig:
    """Settings of ``torchfault profile``.

    Attributes:
        model: the model, as in every job and in ``torchfault campaign``: ``model.name`` (a zoo
            model or a factory of your own, ``path/to/file.py:function``), ``model.kwargs``,
            ``model.checkpoint`` (any weights file the DNN jobs write), ``model.pretrained``
            (not read: the shipped weights are not loaded), ``model.dataset`` (default:
            ``data.dataset``), ``model.hub``, ``model.quantized``.
        data: ``data.dataset`` and ``data.kwargs``, whose input shape configures the model.
        batch: batch size of the profiled forward passes.
        warmup: unprofiled passes first.
        steps: profiled passes.
        device: cpu or cuda.
        trace: Chrome trace file to write; empty: none.
        row_limit: operator rows shown.
    """

    model: JobModelSpec = field(default_factory=lambda: JobModelSpec())
    data: DataSpec = field(default_factory=DataSpec)
    batch: int = 64
    warmup: int = 2
    steps: int = 10
    device: str = "cpu"
    trace: str = "runs/profile/trace.json"
    row_limit: int = 15

    def __post_init__(self) -> None:
        _check_names(self)
        if self.batch < 1 or self.steps < 1 or self.warmup < 0:
            raise ConfigError(
                f"batch and steps must be >= 1 and warmup >= 0, got batch={self.batch}, "
                f"steps={self.steps}, warmup={self.warmup}.",
                field="batch",
            )


@command(
    "profile",
    ProfileConfig,
    "Per-module and per-operator times (torch.profiler) and a Chrome trace.",
    positional=("model.name",),
)
def profile_job(cfg: ProfileConfig) -> int:
    import torch

    from torchfault.dnn import profile_model
    from torchfault.errors import TorchFaultError

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise TorchFaultError(f"device: {cfg.device!r} asked for, but CUDA is not available.")
    model = _load_model(cfg, pretrained=False)
    model = model.to(cfg.device)
    x = model.example_inputs(cfg.batch)
    result = profile_model(
        model, x, warmup=cfg.warmup, steps=cfg.steps, trace_path=cfg.trace or None
    )
    console = _console()
    for table in result.tables(cfg.row_limit):
        console.print(table)
    if result.trace_path:
        console.print(
            f"Chrome trace: {result.trace_path} (open in chrome://tracing or ui.perfetto.dev)"
        )
    return 0
