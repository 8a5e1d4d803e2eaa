# SPDX-License-Identifier: MIT
"""Training, testing and cross-validation with PyTorch Lightning, from dataclass configs.

:func:`train` seeds everything (``seed_everything(seed, workers=True)``), runs a deterministic
Lightning ``Trainer`` (CPU by default) with ``ModelCheckpoint`` (compressed by
:class:`~torchfault.dnn.CompressCheckpoints`), ``EarlyStopping``, a CSV logger (and TensorBoard
when it is installed) and a progress bar when the output is a terminal, then reloads the best
checkpoint, tests it and optionally exports its weights as a compressed torchfault weights file
(the format of the shipped pretrained weights). Two runs with the same config give bit-identical
weights. :func:`cross_validate` trains K stratified folds of the train + val data and reports
each metric's mean and standard deviation.

Lightning is imported inside these functions only; :func:`evaluate` needs nothing but torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchfault.dnn._checkpoint import (
    COMPRESSIONS,
    CheckpointInfo,
    load_checkpoint,
    permanent_state_dict,
    save_checkpoint,
)
from torchfault.dnn._models import MODELS, WEIGHTS_FORMAT, extract_state_dict
from torchfault.dnn._spec import (
    DataSpec,
    JobModelSpec,
    build_dataset,
    build_job_model,
    legacy_job_keys,
)
from torchfault.errors import ConfigError, TorchFaultError, suggest

__all__ = [
    "CheckpointConfig",
    "CrossValidationResult",
    "EarlyStoppingConfig",
    "OptimizerConfig",
    "TestConfig",
    "TrainConfig",
    "TrainResult",
    "TrainerConfig",
    "cross_validate",
    "evaluate",
    "export_weights",
    "test",
    "train",
]

log = logging.getLogger("torchfault")


def _require_lightning() -> Any:
    """``lightning.pytorch``, or a clear error naming the extra that brings it."""
    try:
        import lightning.pytorch as pl
        import torchmetrics  # noqa: F401
    except ModuleNotFoundError as exc:
        raise TorchFaultError(
            f"training and testing need PyTorch Lightning and torchmetrics ({exc.name} is not "
            "installed): pip install 'torchfault[train]'."
        ) from None
    return pl


def _run_name(model: str, dataset: str) -> str:
    """``{model}_{dataset}``, a factory ``dir/file.py:function`` shortened to ``file.function``
    (no folders or colons in run directory names)."""

    def short(name: str) -> str:
        mod, sep, fn = name.rpartition(":")
        return f"{Path(mod).name.removesuffix('.py')}.{fn}" if sep else name

    return f"{short(model)}_{short(dataset)}"


def check_names(
    model: str, dataset: str, fields: tuple[str, str] = ("model.name", "data.dataset")
) -> None:
    """A clear error for a model or dataset that is neither registered nor a factory of your own
    (``path/to/file.py:function``); ``fields`` name the two settings in the error."""
    from torchfault.dnn._datasets import DATASETS, is_factory_spec

    if not is_factory_spec(model) and model not in MODELS:
        valid = MODELS.list()
        raise ConfigError(
            f"{fields[0]}: unknown model {model!r}; valid: {', '.join(valid)}, or a factory of "
            f"your own as 'path/to/file.py:function'.{suggest(model, valid)}",
            field=fields[0],
        )
    if not is_factory_spec(dataset) and dataset not in DATASETS:
        valid = DATASETS.list()
        raise ConfigError(
            f"{fields[1]}: unknown dataset {dataset!r}; valid: {', '.join(valid)}, or a factory "
            f"of your own as 'path/to/file.py:function'.{suggest(dataset, valid)}",
            field=fields[1],
        )


#: the metrics :class:`~torchfault.dnn.ClassifierModule` logs, which early stopping and
#: checkpointing can monitor
MONITORABLE = (
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "train_loss_epoch",
    "train_loss_step",
)


def _check_monitor(where: str, metric: str) -> None:
    if metric not in MONITORABLE:
        raise ConfigError(
            f"{where}: {metric!r} is not a logged metric; choose one of "
            f"{', '.join(MONITORABLE)}.{suggest(str(metric), MONITORABLE)}",
            field=where,
        )


@contextlib.contextmanager
def _trainer_errors(prefix: str, **settings: Any) -> Iterator[None]:
    """Lightning's complaints about Trainer settings as errors naming the config field (or, when
    the message names none, showing the ``settings`` it may be about)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except ImportError as exc:  # an accelerator whose package is missing (tpu without torch_xla)
        where = ".".join(p for p in (prefix, "accelerator") if p)
        shown = settings.get("accelerator", "?")
        raise TorchFaultError(
            f"{where}: {shown!r} cannot run here: {str(exc).splitlines()[0]}; choose cpu, auto, "
            "or gpu/cuda on a machine with a CUDA GPU."
        ) from None
    except (ValueError, MisconfigurationException) as exc:
        msg = str(exc)
        name = next((f for f in ("accelerator", "precision", "devices") if f in msg.lower()), None)
        where = ".".join(p for p in (prefix, name) if p) or "trainer"
        if name is None and settings:
            dot = f"{prefix}." if prefix else ""
            where += " (" + ", ".join(f"{dot}{k}={v!r}" for k, v in settings.items()) + ")"
        raise TorchFaultError(f"{where}: {msg}") from None


@dataclass
class TrainerConfig:
    """Settings passed to ``lightning.pytorch.Trainer``.

    Attributes:
        max_epochs: the most epochs to train.
        min_epochs: epochs to train before early stopping may stop.
        accelerator: ``cpu``, ``gpu``, ``auto``... (Lightning's names).
        devices: how many devices of that accelerator.
        deterministic: ask torch for deterministic algorithms (bit-identical reruns).
        precision: Lightning precision (``32-true``, ``bf16-mixed``...).
        limit_train_batches: training batches per epoch: a fraction up to 1.0, above 1 a count.
        limit_val_batches: validation batches per epoch, the same way.
        limit_test_batches: test batches, the same way.
        log_every_n_steps: how often to log training metrics.
        gradient_clip_val: clip gradients to this norm; null: no clipping.
        enable_progress_bar: show a progress bar; null: when standard error is a terminal.
    """

    max_epochs: int = 30
    min_epochs: int = 1
    accelerator: str = "cpu"
    devices: int = 1
    deterministic: bool = True
    precision: str = "32-true"
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    limit_test_batches: float = 1.0
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    enable_progress_bar: bool | None = None

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ConfigError(
                f"trainer.max_epochs must be >= 1, got {self.max_epochs}.",
                field="trainer.max_epochs",
            )
        if not 0 <= self.min_epochs <= self.max_epochs:
            raise ConfigError(
                f"trainer.min_epochs must lie in [0, max_epochs={self.max_epochs}], "
                f"got {self.min_epochs}.",
                field="trainer.min_epochs",
            )
        if self.devices < 1:
            raise ConfigError(
                f"trainer.devices must be >= 1, got {self.devices}.", field="trainer.devices"
            )
        if self.log_every_n_steps < 1:
            raise ConfigError(
                f"trainer.log_every_n_steps must be >= 1, got {self.log_every_n_steps}.",
                field="trainer.log_every_n_steps",
            )
        if self.gradient_clip_val is not None and not self.gradient_clip_val >= 0:
            # a negative norm would flip every gradient (clip_grad_norm_ scales by max_norm/norm)
            raise ConfigError(
                "trainer.gradient_clip_val must be >= 0 (0 or null: no clipping), "
                f"got {self.gradient_clip_val}.",
                field="trainer.gradient_clip_val",
            )
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            v = getattr(self, name)
            if v <= 0 or (v > 1 and not float(v).is_integer()):
                raise ConfigError(
                    f"trainer.{name} must be a fraction in (0, 1] or a whole batch count, got {v}.",
                    field=f"trainer.{name}",
                )

    def kwargs(self) -> dict[str, Any]:
        def limit(v: float) -> float | int:
            return int(v) if v > 1 else float(v)

        bar = self.enable_progress_bar
        if bar is None:
            bar = sys.stderr.isatty()
        return {
            "max_epochs": self.max_epochs,
            "min_epochs": self.min_epochs,
            "accelerator": self.accelerator,
            "devices": self.devices,
            "deterministic": self.deterministic,
            "precision": self.precision,
            "limit_train_batches": limit(self.limit_train_batches),
            "limit_val_batches": limit(self.limit_val_batches),
            "limit_test_batches": limit(self.limit_test_batches),
            "log_every_n_steps": self.log_every_n_steps,
            "gradient_clip_val": self.gradient_clip_val,
            "enable_progress_bar": bar,
            "enable_model_summary": False,
        }


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: learning rate.
        weight_decay: L2 weight decay.
        momentum: momentum (``sgd`` only).
        scheduler: ``none``, ``cosine`` (over ``max_epochs``) or ``step``.
        step_size: epochs between learning-rate steps (``step``).
        gamma: factor of each step (``step``).
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = 10
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(
                f"optimizer.lr must be positive, got {self.lr}.", field="optimizer.lr"
            )
        if self.weight_decay < 0:
            raise ConfigError(
                f"optimizer.weight_decay must be >= 0, got {self.weight_decay}.",
                field="optimizer.weight_decay",
            )
        if self.step_size < 1:
            raise ConfigError(
                f"optimizer.step_size must be >= 1, got {self.step_size}.",
                field="optimizer.step_size",
            )
        if not self.gamma > 0:
            raise ConfigError(
                f"optimizer.gamma must be positive, got {self.gamma}.", field="optimizer.gamma"
            )
        if self.momentum < 0:
            raise ConfigError(
                f"optimizer.momentum must be >= 0, got {self.momentum}.", field="optimizer.momentum"
            )


@dataclass
class EarlyStoppingConfig:
    """``EarlyStopping`` on a logged metric.

    Attributes:
        enabled: stop when ``monitor`` stops improving.
        monitor: the logged metric (``val_acc``, ``val_loss``).
        mode: ``max`` or ``min``: which way is better.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
    """

    enabled: bool = True
    monitor: str = "val_acc"
    mode: Literal["min", "max"] = "max"
    patience: int = 10
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ConfigError(
                f"early_stopping.patience must be >= 1, got {self.patience}.",
                field="early_stopping.patience",
            )
        _check_monitor("early_stopping.monitor", self.monitor)


@dataclass
class CheckpointConfig:
    """``ModelCheckpoint`` settings and the compression of the files it writes.

    Attributes:
        monitor: the logged metric that ranks checkpoints.
        mode: ``max`` or ``min``: which way is better.
        save_top_k: how many best checkpoints to keep (-1: all).
        save_last: also keep the last epoch's checkpoint.
        compression: ``lzma``, ``gzip``, ``bz2`` or ``none`` for the checkpoint files.
    """

    monitor: str = "val_acc"
    mode: Literal["min", "max"] = "max"
    save_top_k: int = 1
    save_last: bool = False
    compression: Literal["lzma", "gzip", "bz2", "none"] = "lzma"

    def __post_init__(self) -> None:
        _check_monitor("checkpoint.monitor", self.monitor)
        if self.save_top_k < -1:
            raise ConfigError(
                f"checkpoint.save_top_k must be >= -1, got {self.save_top_k}.",
                field="checkpoint.save_top_k",
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"checkpoint.compression: {self.compression!r} is not one of "
                f"{', '.join(COMPRESSIONS)}.",
                field="checkpoint.compression",
            )


@dataclass
class TrainModelSpec(JobModelSpec):
    """The ``model:`` section of ``torchfault train``: training starts from scratch unless
    ``pretrained`` or ``checkpoint`` says otherwise.

    Attributes:
        name: a zoo model or a factory of your own (``path/to/file.py:function``).
        dataset: the zoo configuration (input shape, classes); unset: ``data.dataset``.
        pretrained: start from the zoo's shipped weights.
        checkpoint: start from this weights file (any file the DNN jobs write).
        kwargs: keyword arguments for the model or factory.
        hub: a Torch Hub entry point in a local repository, ``path/to/repo:entry``.
        quantized: must stay unset (a quantized model is not trained).
    """

    pretrained: bool = False


def _model_dataset(cfg: Any) -> str:
    """The dataset a job's model is configured for (``model.dataset``, else ``data.dataset``)."""
    return str(cfg.model.dataset if cfg.model.dataset is not None else cfg.data.dataset)


@legacy_job_keys("model", "dataset", "model_options", "dataset_options", "pretrained", "weights")
@dataclass
class TrainConfig:
    """Everything :func:`train` needs; the ``torchfault train`` job's settings.

    Attributes:
        model: the model, as in every job and in ``torchfault campaign``: ``model.name`` (a zoo
            model or a factory of your own, ``path/to/file.py:function`` or
            ``package.module:function``, called with ``model.kwargs``), ``model.kwargs``,
            ``model.pretrained`` (start from the shipped weights; default here: false),
            ``model.checkpoint`` (start from this weights file), ``model.dataset`` (default:
            ``data.dataset``), ``model.hub``.
        data: the data: ``data.dataset`` (registered, or a factory ``path/to/file.py:function``
            called as ``function(split=..., **kwargs)``) and ``data.kwargs`` (``split_seed``,
            ``size``...; the model takes the ``input_shape`` and ``num_classes`` of
            ``synthetic``); training uses the train/val/test splits, ``data.split`` is not read.
        seed: seed of everything (initial weights, shuffling, dropout).
        batch_size: training and evaluation batch size.
        num_workers: data loader workers.
        out_dir: where runs go; each run is ``out_dir/name/version_N``.
        name: run name (default ``{model}_{dataset}``).
        cv: number of cross-validation folds (0: a plain train / val / test run).
        test: test the best checkpoint on the test split after training.
        export: write the best weights to this file (compressed torchfault weights format).
    """

    model: TrainModelSpec = field(default_factory=lambda: TrainModelSpec())
    data: DataSpec = field(default_factory=DataSpec)
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    out_dir: str = "runs/train"
    name: str | None = None
    cv: int = 0
    test: bool = True
    export: str | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        check_names(self.model.name, self.data.dataset)
        from torchfault.config import check_seed

        check_seed(self.seed, "seed", 2**32 - 1)  # Lightning's seed_everything takes 32 bits
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be >= 1, got {self.batch_size}.", field="batch_size"
            )
        if self.num_workers < 0:
            raise ConfigError(
                f"num_workers must be >= 0, got {self.num_workers}.", field="num_workers"
            )
        if self.cv == 1 or self.cv < 0:
            raise ConfigError(
                f"cv must be 0 (no cross-validation) or >= 2 folds, got {self.cv}.", field="cv"
            )
        if self.model.pretrained and self.model.checkpoint:
            raise ConfigError(
                "model.pretrained and model.checkpoint: give one starting point, not both.",
                field="model.pretrained",
            )

    @property
    def run_name(self) -> str:
        return self.name or _run_name(self.model.name, _model_dataset(self))


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model: the trained model with the best checkpoint's weights, in eval mode.
        metrics: best validation metric and test metrics (``val_acc``, ``test_acc``...).
        run_dir: the run's log directory (CSV metrics, hparams.yaml, checkpoints/).
        best_checkpoint: the best checkpoint file (compressed Lightning checkpoint).
        exported: sizes of the exported weights file, if one was asked for.
    """

    model: nn.Module
    metrics: dict[str, float]
    run_dir: str
    best_checkpoint: str | None
    exported: CheckpointInfo | None = None


@dataclass
class CrossValidationResult:
    """Per-fold metrics of :func:`cross_validate` with their mean and sample standard deviation."""

    folds: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]

    def __str__(self) -> str:
        keys = sorted(self.mean)
        return ", ".join(f"{k} {self.mean[k]:.4f} ± {self.std[k]:.4f}" for k in keys)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's advice that does not apply to tiny CPU runs, and give back the
    process-wide determinism setting that ``Trainer(deterministic=True)`` changes (left on, it
    breaks quantized kernels, which have no deterministic implementation)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with warnings.catch_warnings():
        for pattern in (
            ".*does not have many workers.*",
            ".*GPU available but not used.*",
            ".*number of training batches.*",
            ".*Checkpoint directory .* exists and is not empty.*",
            ".*LeafSpec.*",
            ".*isinstance.*treespec.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        logger = logging.getLogger("lightning.pytorch")
        old = logger.level
        logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(old)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _build_model(cfg: TrainConfig) -> nn.Module:
    """The starting model: dnn's one builder (the files a campaign reads, ``weights`` too)."""
    return build_job_model(cfg)


def _loggers(save_dir: str, name: str, version: str | int | None = None) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir, name=name, version=version)]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers.append(TensorBoardLogger(save_dir, name=name, version=loggers[0].version))
    return loggers


def _fit(
    cfg: TrainConfig,
    model: nn.Module,
    datamodule: Any,
    name: str,
    version: str | int | None = None,
) -> tuple[nn.Module, dict[str, float], str, str | None]:
    """One seeded Lightning fit + test; returns (model with best weights, metrics, dirs)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from torchfault.dnn._lightning import CompressCheckpoints

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule.seed = cfg.seed
    model.train()
    module = _classifier(
        cfg,
        model,
        num_classes=getattr(model, "num_classes", None),
        optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        momentum=cfg.optimizer.momentum,
        scheduler=cfg.optimizer.scheduler,
        max_epochs=cfg.trainer.max_epochs,
        step_size=cfg.optimizer.step_size,
        gamma=cfg.optimizer.gamma,
    )
    ck = cfg.checkpoint
    checkpoint = ModelCheckpoint(
        monitor=ck.monitor,
        mode=ck.mode,
        save_top_k=ck.save_top_k,
        save_last=ck.save_last or None,
        filename="{epoch}-{" + ck.monitor + ":.4f}",
    )
    callbacks: list[Any] = [checkpoint, CompressCheckpoints(ck.compression)]
    es = cfg.early_stopping
    if es.enabled:
        callbacks.append(
            EarlyStopping(
                monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta
            )
        )
    if not cfg.trainer.kwargs()["enable_progress_bar"]:  # no terminal: a line per epoch
        from torchfault.dnn._progress import EpochLines

        callbacks.append(EpochLines())
    loggers = _loggers(cfg.out_dir, name, version)
    with _quiet_lightning():
        t = cfg.trainer
        with _trainer_errors(
            "trainer", accelerator=t.accelerator, devices=t.devices, precision=t.precision
        ):
            trainer = pl.Trainer(logger=loggers, callbacks=callbacks, **cfg.trainer.kwargs())
        trainer.fit(module, datamodule=datamodule)
        best = checkpoint.best_model_path or None
        metrics: dict[str, float] = {}
        if checkpoint.best_model_score is not None:
            metrics[f"best_{ck.monitor}"] = float(checkpoint.best_model_score)
        if best:
            sd = extract_state_dict(load_checkpoint(best), source=best)
            module.model.load_state_dict(sd)
        if cfg.test:
            out = trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in (out[0] if out else {}).items()})
    run_dir = str(loggers[0].log_dir)
    module.model.eval()
    return module.model, metrics, run_dir, best


def export_weights(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str | None = None,
    dataset: str | None = None,
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
    compression: str = "lzma",
) -> CheckpointInfo:
    """Write a compressed torchfault weights file (the format of the shipped weights).

    The file holds ``{"format", "model", "dataset", "state_dict", "metrics", ...}``, the state
    dict with the masks of pruned parameters applied (``weight``, not ``weight_orig`` and
    ``weight_mask``), so it loads into the plain model;
    :func:`torchfault.dnn.create_model` (``weights=path``) and :func:`load_checkpoint` read it.

    Example:
        >>> import os, tempfile
        >>> from torchfault.dnn import create_model, load_checkpoint
        >>> p = os.path.join(tempfile.mkdtemp(), "mlp.pt.xz")
        >>> _ = export_weights(create_model("mlp"), p, model_name="mlp", dataset="digits")
        >>> load_checkpoint(p)["model"]
        'mlp'
    """
    payload: dict[str, Any] = {
        "format": WEIGHTS_FORMAT,
        "model": model_name,
        "dataset": dataset,
        "state_dict": {k: v.detach().clone().cpu() for k, v in permanent_state_dict(model).items()},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "torch_version": str(torch.__version__),
    }
    payload.update(extra or {})
    return save_checkpoint(payload, path, compression=compression)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _classifier(cfg: TrainConfig | TestConfig, model: nn.Module, **training: Any) -> Any:
    """The ``ClassifierModule`` of a train or test config around ``model`` (with what rebuilds
    the model from a checkpoint: its name, dataset and options)."""
    from torchfault.dnn._lightning import ClassifierModule

    return ClassifierModule(
        model=model,
        model_name=cfg.model.name,
        dataset=_model_dataset(cfg),
        model_options=dict(cfg.model.kwargs),
        dataset_options=dict(cfg.data.kwargs),
        **training,
    )


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` with Lightning; see the module docstring.

    Example:
        >>> import tempfile
        >>> from torchfault.dnn import TrainConfig, train
        >>> from torchfault.dnn import TrainModelSpec
        >>> cfg = TrainConfig(model=TrainModelSpec("mlp"), out_dir=tempfile.mkdtemp(), seed=1)
        >>> cfg.trainer.max_epochs = 1
        >>> result = train(cfg)
        >>> result.metrics["test_acc"] > 0.7
        True
    """
    if cfg.cv:
        raise TorchFaultError("train: cfg.cv is set; call cross_validate(cfg) for K folds.")
    pl = _require_lightning()
    from torchfault.dnn._lightning import ClassificationDataModule

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = _build_model(cfg)
    dm = ClassificationDataModule(
        cfg.data.dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        dataset_options=cfg.data.kwargs,
        seed=cfg.seed,
    )
    model, metrics, run_dir, best = _fit(cfg, model, dm, cfg.run_name)
    exported = None
    if cfg.export:
        exported = _export(model, cfg, metrics, cfg.export)
    return TrainResult(model, metrics, run_dir, best, exported)


def _export(
    model: nn.Module, cfg: TrainConfig, metrics: dict[str, float], path: str | Path
) -> CheckpointInfo:
    """The weights file ``train`` exports (``export: FILE``)."""
    return export_weights(
        model,
        path,
        model_name=cfg.model.name,
        dataset=_model_dataset(cfg),
        metrics=metrics,
        extra={
            "model_options": _plain(cfg.model.kwargs),
            # where the run was written is not part of the recipe: leave it out, so the
            # file is the same byte for byte wherever it is exported
            "config": _recipe(cfg),
        },
    )


def _recipe(cfg: TrainConfig) -> dict[str, Any]:
    """The config an export embeds (``from_dict(TrainConfig, recipe)`` reads it back).

    Where the run was written (``out_dir``, ``export``, ``name``) is left out. A model and data
    that the flat keys of format 1 can say (``model``, ``dataset``, ``model_options``,
    ``dataset_options``, ``pretrained``, ``weights``) are written in them, as in the shipped
    weights files, so ``torchfault train --config examples/train_lenet_digits.yaml`` still
    reproduces those files byte for byte; others (``model.hub``, ``model.dataset`` other than
    ``data.dataset``) are written as ``model:``/``data:`` sections.
    """
    from torchfault.config import to_dict

    d = {k: v for k, v in _plain(to_dict(cfg)).items() if k not in ("out_dir", "export", "name")}
    m, data = cfg.model, cfg.data
    if m.hub is None and m.quantized is None and m.dataset in (None, data.dataset):
        flat = {
            "model": m.name,
            "dataset": data.dataset,
            "model_options": _plain(m.kwargs),
            "dataset_options": _plain(data.kwargs),
            "pretrained": m.pretrained,
            "weights": m.checkpoint,
        }
        d = {**flat, **{k: v for k, v in d.items() if k not in ("model", "data")}}
    return d


def cross_validate(cfg: TrainConfig, folds: int | None = None) -> CrossValidationResult:
    """K-fold cross-validation over the train + val splits (stratified, seeded by ``cfg.seed``).

    Each fold trains a fresh model on K-1 parts, validates (checkpoint choice, early stopping)
    on the held-out part and tests on the test split.

    Args:
        cfg: the training config; ``cfg.cv`` folds unless ``folds`` is given.
        folds: number of folds (>= 2).

    Returns:
        The K per-fold metric dicts with each metric's mean and sample standard deviation.
    """
    k = int(folds if folds is not None else cfg.cv)
    if k < 2:
        raise TorchFaultError(f"cross_validate needs at least 2 folds, got {k}.")
    pl = _require_lightning()
    from sklearn.model_selection import StratifiedKFold
    from torch.utils.data import ConcatDataset, Subset

    from torchfault.dnn._datasets import create_dataset
    from torchfault.dnn._lightning import ClassificationDataModule

    opts, name = cfg.data.kwargs, cfg.data.dataset
    pool: ConcatDataset[Any] = ConcatDataset(
        [create_dataset(name, split=s, **opts) for s in ("train", "val")]
    )
    test_set = create_dataset(name, split="test", **opts)
    labels = [int(pool[i][1]) for i in range(len(pool))]
    if min(labels.count(c) for c in set(labels)) < k:
        raise TorchFaultError(f"cross_validate: some class has fewer than {k} examples.")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=cfg.seed)
    results = []
    for fold, (tr, va) in enumerate(splitter.split(list(range(len(labels))), labels)):
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model = _build_model(cfg)
        dm = ClassificationDataModule(
            None,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            train_set=Subset(pool, tr.tolist()),
            val_set=Subset(pool, va.tolist()),
            test_set=test_set,
        )
        _, metrics, run_dir, _ = _fit(cfg, model, dm, cfg.run_name + "_cv", version=f"fold_{fold}")
        metrics = {"fold": float(fold), **metrics}
        log.info("fold %d: %s (%s)", fold, metrics, run_dir)
        results.append(metrics)
    keys = sorted({key for r in results for key in r if key != "fold"})
    mean, std = {}, {}
    for key in keys:
        vals = [r[key] for r in results if key in r]
        mu = sum(vals) / len(vals)
        mean[key] = mu
        std[key] = (
            math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        )
    return CrossValidationResult(results, mean, std)


def parse_rates(value: Any, field_name: str = "ber") -> list[float]:
    """Bit-error rates from ``"1e-6,1e-5"`` or a list; a ConfigError naming the field.

    Example:
        >>> parse_rates("1e-6, 1e-5")
        [1e-06, 1e-05]
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    rates = []
    for item in items:
        try:
            r = float(item)
        except (TypeError, ValueError):
            r = float("nan")
        if not 0.0 < r <= 1.0:
            raise ConfigError(
                f"{field_name}: {str(item).strip()!r} is not a bit-error rate in (0, 1]; give "
                "rates separated by commas, e.g. 1e-6,1e-5.",
                field=field_name,
            )
        rates.append(r)
    if not rates:
        raise ConfigError(f"{field_name}: no rate given; e.g. 1e-6,1e-5.", field=field_name)
    return rates


@legacy_job_keys("model", "dataset", "model_options", "dataset_options", "checkpoint", "split")
@dataclass
class TestConfig:
    """Settings of ``torchfault test``: which weights, which data.

    Attributes:
        model: the model, as in every job and in ``torchfault campaign``: ``model.name``,
            ``model.kwargs``, ``model.checkpoint`` (any weights file the DNN jobs write; unset:
            the shipped weights, or the weights a factory of your own gives its model),
            ``model.quantized``, ``model.dataset``, ``model.hub``.
        data: ``data.dataset``, ``data.kwargs`` and ``data.split``, the split to evaluate
            (train, val, test, all).
        batch_size: evaluation batch size.
        accelerator: Lightning accelerator (cpu, gpu, auto).
        out_dir: where the CSV log of the test goes.
        ber: bit-error rates (``1e-6,1e-5`` or a list): the test also runs every batch under
            bit flips in the weights and biases at each rate (a ``FaultInjectionCallback``), logs
            ``test_acc@ber=...`` and ``test_sdc@ber=...`` beside the clean metrics and plots
            accuracy against the rate (``<out_dir>/accuracy_vs_ber.png``, with matplotlib).
        ber_seed: seed of the bit errors (fault ``k`` of each rate for the ``k``-th batch).
    """

    __test__ = False  # not a pytest class

    model: JobModelSpec = field(default_factory=lambda: JobModelSpec())
    data: DataSpec = field(default_factory=DataSpec)
    batch_size: int = 256
    accelerator: str = "cpu"
    out_dir: str = "runs/test"
    ber: list[float] | str | None = None
    ber_seed: int = 0

    def __post_init__(self) -> None:
        check_names(self.model.name, self.data.dataset)
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be >= 1, got {self.batch_size}.", field="batch_size"
            )
        if self.ber is not None:
            self.ber = parse_rates(self.ber, "ber")


def test(cfg: TestConfig) -> dict[str, float]:
    """Test a model with Lightning's ``Trainer.test``; returns ``test_acc`` and ``test_loss``.

    Example:
        >>> import tempfile
        >>> from torchfault.dnn import TestConfig, test
        >>> test(TestConfig(out_dir=tempfile.mkdtemp()))["test_acc"] > 0.95
        True
    """
    pl = _require_lightning()
    from torchfault.dnn._lightning import ClassificationDataModule

    model = build_job_model(cfg)  # shipped weights unless a checkpoint is given
    data = build_dataset(cfg.data)
    dm = ClassificationDataModule(None, batch_size=cfg.batch_size, test_set=data)
    module = _classifier(cfg, model)
    callbacks = []
    if cfg.ber:
        from torchfault.dnn._callback import FaultInjectionCallback

        callbacks.append(FaultInjectionCallback(ber=list(cfg.ber), seed=cfg.ber_seed))  # type: ignore[arg-type]
    with _quiet_lightning():
        with _trainer_errors("", accelerator=cfg.accelerator):
            trainer = pl.Trainer(
                accelerator=cfg.accelerator,
                devices=1,
                logger=_loggers(cfg.out_dir, _run_name(cfg.model.name, _model_dataset(cfg))),
                enable_progress_bar=sys.stderr.isatty(),
                enable_model_summary=False,
                callbacks=callbacks,
            )
        out = trainer.test(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in (out[0] if out else {}).items()}
    if callbacks:
        _plot_ber(callbacks[0].results, metrics, cfg.out_dir)
    return metrics


def _plot_ber(results: Any, metrics: dict[str, float], out_dir: str) -> None:
    """``<out_dir>/accuracy_vs_ber.png`` (skipped with a warning without matplotlib)."""
    import warnings

    from torchfault.dnn._callback import plot_accuracy_vs_ber

    try:
        path = plot_accuracy_vs_ber(
            results, Path(out_dir) / "accuracy_vs_ber.png", clean_acc=metrics.get("test_acc")
        )
    except TorchFaultError as exc:
        warnings.warn(f"no accuracy-vs-BER plot: {exc}", UserWarning, stacklevel=2)
        return
    metrics["plot"] = str(path)  # type: ignore[assignment]


test.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, max_batches: int | None = None
) -> dict[str, Any]:
    """Accuracy and mean cross-entropy of ``model`` on ``dataset``, in plain torch.

    Returns:
        ``{"acc", "loss", "n", "predictions"}`` (predictions: a tensor of predicted classes).

    Example:
        >>> from torchfault.dnn import create_model, create_dataset, evaluate
        >>> r = evaluate(create_model("lenet", pretrained=True), create_dataset("digits"))
        >>> r["n"], r["acc"] > 0.95
        (360, True)
    """
    was_training = model.training
    model.eval()
    correct, total, loss = 0, 0, 0.0
    preds = []
    try:
        for i, (x, y) in enumerate(DataLoader(dataset, batch_size=batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            logits = model(x).float()
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            p = logits.argmax(dim=1)
            preds.append(p)
            correct += int((p == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise TorchFaultError("evaluate: the dataset is empty.")
    return {
        "acc": correct / total,
        "loss": loss / total,
        "n": total,
        "predictions": torch.cat(preds),
    }


def fine_tune(
    model: nn.Module,
    dataset: str = "digits",
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 64,
    accelerator: str = "cpu",
    dataset_options: dict[str, Any] | None = None,
    progress_prefix: str = "fine-tune epoch",
) -> nn.Module:
    """Train ``model`` in place for a few epochs on ``dataset``'s train split (Lightning, seeded,
    deterministic, no checkpoints or logs); used between pruning steps. Without a terminal,
    each epoch ends with a line ``<progress_prefix> k/epochs: ...`` on standard error.

    Example:
        >>> from torchfault.dnn import create_model
        >>> m = fine_tune(create_model("mlp"), epochs=1)
        >>> m.training
        False
    """
    pl = _require_lightning()
    from torchfault.dnn._lightning import ClassificationDataModule, ClassifierModule
    from torchfault.dnn._progress import EpochLines

    pl.seed_everything(seed, workers=True, verbose=False)
    model.train()
    module = ClassifierModule(
        model=model,
        dataset=dataset,
        dataset_options=dict(dataset_options or {}),
        num_classes=getattr(model, "num_classes", None),
        lr=lr,
    )
    dm = ClassificationDataModule(
        dataset, batch_size=batch_size, dataset_options=dataset_options, seed=seed
    )
    with _quiet_lightning():
        with _trainer_errors("", accelerator=accelerator):
            trainer = pl.Trainer(
                max_epochs=int(epochs),
                accelerator=accelerator,
                devices=1,
                deterministic=True,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=sys.stderr.isatty(),
                enable_model_summary=False,
                limit_val_batches=0,
                callbacks=[] if sys.stderr.isatty() else [EpochLines(progress_prefix)],
            )
        trainer.fit(module, datamodule=dm)
    model.eval()
    return model
