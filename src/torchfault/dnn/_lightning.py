# SPDX-License-Identifier: MIT
"""PyTorch Lightning pieces: the classifier module, the data module and checkpoint compression.

This module imports Lightning at the top; the rest of :mod:`torchfault.dnn` imports it only
inside the functions that train, so the injection core works without the ``train`` extra.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from torchfault.dnn._checkpoint import (
    _check_compression,
    compress_file,
    load_checkpoint,
    read_checkpoint_bytes,
    torch_load,
)
from torchfault.dnn._datasets import create_dataset
from torchfault.errors import TorchFaultError

__all__ = [
    "ClassifierModule",
    "ClassificationDataModule",
    "CompressCheckpoints",
    "CompressedCheckpointIO",
]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULERS = ("none", "cosine", "step")


def _fold_pruning_masks(raw: bytes, path: Any = "<checkpoint>") -> io.BytesIO:
    """A checkpoint saved while ``torch.nn.utils.prune`` masks were in place (fine-tuning between
    pruning steps) holds ``X_orig`` and ``X_mask`` for a pruned ``X``: folded into ``X`` here, so
    the checkpoint loads into the unpruned model that the hyperparameters rebuild. A file that
    holds code is refused here (``torch_load``), naming ``path``."""
    from torchfault.dnn._models import _apply_masks

    ckpt = torch_load(raw, path, map_location="cpu")
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        return io.BytesIO(raw)
    folded = _apply_masks(sd, {k.removesuffix("_orig") for k in sd if k.endswith("_orig")})
    if folded.keys() == sd.keys():
        return io.BytesIO(raw)
    ckpt["state_dict"] = folded
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    return buf


def _plain(v: Any) -> Any:
    """``v`` with os.PathLike values (in dicts, lists, tuples) turned into strings."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, dict):
        return {k: _plain(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(u) for u in v)
    return v


class ClassifierModule(pl.LightningModule):
    """A ``LightningModule`` around any classifier: cross-entropy loss, torchmetrics accuracy.

    Args:
        model: the classifier; when ``None`` it is built with
            ``create_model(model_name, dataset, **model_options)``.
        model_name: zoo model name (saved as a hyperparameter, so the checkpoint rebuilds it).
        dataset: dataset the model is configured for.
        model_options: constructor options of the zoo model.
        dataset_options: options of the dataset (its ``input_shape`` and ``num_classes``, where
            they set them, configure the model).
        num_classes: class count (taken from the model when it has ``num_classes``).
        optimizer: adam, adamw or sgd.
        lr: learning rate.
        weight_decay: L2 penalty.
        momentum: SGD momentum.
        scheduler: none, cosine (over ``max_epochs``) or step (``step_size``, ``gamma``).
        max_epochs: length of the cosine schedule.
        step_size: epochs between steps of the step schedule.
        gamma: factor of the step schedule.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        model_name: str | None = None,
        dataset: str | None = "digits",
        model_options: dict[str, Any] | None = None,
        dataset_options: dict[str, Any] | None = None,
        num_classes: int | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "none",
        max_epochs: int = 10,
        step_size: int = 10,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if optimizer not in _OPTIMIZERS:
            raise TorchFaultError(f"optimizer {optimizer!r}: valid: {', '.join(_OPTIMIZERS)}.")
        if scheduler not in _SCHEDULERS:
            raise TorchFaultError(f"scheduler {scheduler!r}: valid: {', '.join(_SCHEDULERS)}.")
        # hyperparameters are read back with weights_only=True: plain values only (a Path
        # option, say, is saved as its string)
        model_options = _plain(model_options)
        dataset_options = _plain(dataset_options)
        self.save_hyperparameters(ignore=["model"])
        if model is None:
            if model_name is None:
                raise TorchFaultError("ClassifierModule needs a model or a model_name.")
            from torchfault.dnn._models import create_model

            model = create_model(
                model_name,
                dataset=dataset,
                dataset_options=dataset_options,
                **(model_options or {}),
            )
        self.model = model
        k = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if k is None:
            raise TorchFaultError("ClassifierModule: give num_classes (the model does not say).")
        self.train_acc = MulticlassAccuracy(num_classes=int(k), average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=int(k), average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=int(k), average="micro")

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> ClassifierModule:
        """Lightning's ``load_from_checkpoint`` for compressed checkpoints too (lzma, gzip,
        bz2, as :class:`CompressCheckpoints` writes them), always with ``weights_only=True``;
        the model is rebuilt from the saved hyperparameters.

        Raises:
            TorchFaultError: a missing, truncated, corrupted or foreign file.
        """
        kwargs.pop("weights_only", None)
        remote = isinstance(checkpoint_path, str) and "://" in checkpoint_path
        if hasattr(checkpoint_path, "read") or (
            isinstance(checkpoint_path, (str, Path)) and not remote
        ):
            # local files and file objects may be compressed; URLs (fsspec) go to Lightning as
            # they are (uncompressed checkpoints only)
            name = getattr(checkpoint_path, "name", checkpoint_path)
            checkpoint_path = _fold_pruning_masks(read_checkpoint_bytes(checkpoint_path), name)
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location or "cpu",
            hparams_file=hparams_file,
            strict=strict,
            weights_only=True,
            **kwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: Sequence[torch.Tensor], stage: str, metric: MulticlassAccuracy):
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams  # Lightning's AttributeDict of the saved hyperparameters
        params = self.model.parameters()
        opt: torch.optim.Optimizer
        sched: Any
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(hp.max_epochs, 1))
        elif hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": sched}


class ClassificationDataModule(pl.LightningDataModule):
    """A ``LightningDataModule`` for any registered dataset (or explicit dataset objects).

    Args:
        dataset: registered dataset name (train, val and test splits come from it).
        batch_size: batch size of every loader.
        num_workers: loader worker processes (0 keeps runs bit-reproducible and fast on tiny data).
        dataset_options: options of :func:`torchfault.dnn.create_dataset`.
        seed: seed of the shuffling generator of the training loader.
        train_set: use this dataset for training instead of the ``train`` split.
        val_set: ... for validation instead of ``val``.
        test_set: ... for testing instead of ``test``.

    Example:
        >>> dm = ClassificationDataModule("digits", batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((32, 1, 8, 8), (32,))
    """

    def __init__(
        self,
        dataset: str | None = "digits",
        batch_size: int = 64,
        num_workers: int = 0,
        dataset_options: dict[str, Any] | None = None,
        seed: int = 0,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        test_set: Dataset | None = None,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise TorchFaultError(f"batch_size must be >= 1, got {batch_size!r}.")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.dataset_options = dict(dataset_options or {})
        self.seed = int(seed)
        self._sets: dict[str, Dataset | None] = {
            "train": train_set,
            "val": val_set,
            "test": test_set,
        }

    def _get(self, split: str) -> Dataset:
        if self._sets[split] is None:
            if self.dataset is None:
                raise TorchFaultError(f"ClassificationDataModule: no {split} dataset given.")
            self._sets[split] = create_dataset(self.dataset, split=split, **self.dataset_options)
        return self._sets[split]  # type: ignore[return-value]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._get("train")
            self._get("val")
        if stage in (None, "validate"):
            self._get("val")
        if stage in (None, "test"):
            self._get("test")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self._get(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=gen,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class CompressedCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that compresses each file right after it is written.

    Files keep their names (``epoch=3-step=60.ckpt``) and are standard xz / gzip / bzip2
    streams; loading recognises the compression (or none) by its magic bytes and always uses
    ``weights_only=True``.
    """

    def __init__(self, compression: str = "lzma") -> None:
        super().__init__()
        self.compression = _check_compression(compression)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        if self.compression != "none":
            compress_file(Path(path), self.compression)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint(path, map_location=map_location or "cpu")


class CompressCheckpoints(pl.Callback):
    """Callback compressing every checkpoint the trainer writes (lzma by default).

    On ``setup`` it puts a :class:`CompressedCheckpointIO` in the trainer's strategy, so every
    file that ``ModelCheckpoint`` saves is compressed after it is written, and Lightning itself
    (``trainer.test(ckpt_path="best")``, resuming) reads them back.

    Args:
        compression: lzma, gzip, bz2 or none.
    """

    def __init__(self, compression: str = "lzma") -> None:
        super().__init__()
        self.compression = _check_compression(compression)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        trainer.strategy.checkpoint_io = CompressedCheckpointIO(self.compression)
