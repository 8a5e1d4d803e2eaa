# SPDX-License-Identifier: MIT
"""The DNN side of torchfault: model zoo, datasets, training, pruning, quantization, checkpoints.

- Zoo (:func:`create_model`, :func:`list_models`, :func:`wrap_model`): ``mlp``, ``lenet``,
  ``resnet8``, ``resnet20``, ``vgg8``, each configured per dataset; pretrained weights for
  ``lenet`` and ``mlp`` on ``digits`` ship with the package.
- Datasets (:func:`create_dataset`, :func:`list_datasets`, :func:`wrap_dataset`): ``digits``,
  ``synthetic``, torchvision datasets read from disk.
- Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`): lzma / gzip / bz2 compressed,
  loaded with ``weights_only=True``.
- Training with Lightning (:func:`train`, :func:`test`, :func:`cross_validate`), pruning
  (:func:`prune_model`), post-training int8 quantization (:func:`quantize_model`), summaries
  (:func:`summarize_model`) and profiling (:func:`profile_model`).

Importing this package does not import Lightning; the Lightning classes
(:class:`ClassifierModule`, :class:`ClassificationDataModule`, :class:`CompressCheckpoints`)
load on first use.

Example:
    >>> import torchfault.dnn as dnn
    >>> model = dnn.create_model("lenet", dataset="digits", pretrained=True)
    >>> x, y = dnn.create_dataset("digits", split="test")[0]
    >>> int(model(x[None]).argmax()) == y
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from torchfault.dnn._checkpoint import (
    COMPRESSIONS,
    CheckpointInfo,
    compress_file,
    load_checkpoint,
    save_checkpoint,
)
from torchfault.dnn._datasets import (
    DATASETS,
    SPLITS,
    TensorClassificationDataset,
    WrappedDataset,
    create_dataset,
    dataset_info,
    is_dataset,
    list_datasets,
    register_dataset,
    wrap_dataset,
)
from torchfault.dnn._models import (
    MODELS,
    WrappedModel,
    ZooModel,
    create_model,
    is_model,
    list_models,
    list_pretrained,
    load_weights,
    pretrained_path,
    wrap_model,
)
from torchfault.dnn._spec import (
    LEGACY_JOB_KEYS,
    DataSpec,
    JobModelSpec,
    ModelSpec,
    build_dataset,
    build_job_model,
    build_model,
    legacy_job_keys,
    load_model_weights,
    translate_job_keys,
)
from torchfault.dnn._training import (
    CrossValidationResult,
    TestConfig,
    TrainConfig,
    TrainModelSpec,
    TrainResult,
    check_names,
    cross_validate,
    evaluate,
    export_weights,
    fine_tune,
    test,
    train,
)

# public name -> module, imported on first use (these import Lightning or heavier tooling)
_LAZY = {
    "ClassifierModule": "torchfault.dnn._lightning",
    "ClassificationDataModule": "torchfault.dnn._lightning",
    "CompressCheckpoints": "torchfault.dnn._lightning",
    "CompressedCheckpointIO": "torchfault.dnn._lightning",
    "FaultInjectionCallback": "torchfault.dnn._callback",
    "plot_accuracy_vs_ber": "torchfault.dnn._callback",
    "prune_model": "torchfault.dnn._prune",
    "sparsity_report": "torchfault.dnn._prune",
    "iterative_prune": "torchfault.dnn._prune",
    "PRUNING_METHODS": "torchfault.dnn._prune",
    "quantize_model": "torchfault.dnn._quantize",
    "is_quantized": "torchfault.dnn._quantize",
    "save_quantized": "torchfault.dnn._quantize",
    "load_quantized": "torchfault.dnn._quantize",
    "summarize": "torchfault.dnn._summary",
    "summarize_model": "torchfault.dnn._summary",
    "ModelSummary": "torchfault.dnn._summary",
    "profile_model": "torchfault.dnn._profile",
    "ProfileResult": "torchfault.dnn._profile",
}

__all__ = [
    "COMPRESSIONS",
    "CheckpointInfo",
    "CrossValidationResult",
    "DATASETS",
    "SPLITS",
    "DataSpec",
    "JobModelSpec",
    "LEGACY_JOB_KEYS",
    "MODELS",
    "ModelSpec",
    "TensorClassificationDataset",
    "TestConfig",
    "TrainConfig",
    "TrainModelSpec",
    "TrainResult",
    "WrappedDataset",
    "WrappedModel",
    "ZooModel",
    "build_dataset",
    "build_job_model",
    "legacy_job_keys",
    "translate_job_keys",
    "build_model",
    "check_names",
    "compress_file",
    "create_dataset",
    "create_model",
    "cross_validate",
    "dataset_info",
    "evaluate",
    "export_weights",
    "fine_tune",
    "is_dataset",
    "is_model",
    "list_datasets",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_model_weights",
    "load_weights",
    "pretrained_path",
    "register_dataset",
    "save_checkpoint",
    "test",
    "train",
    "wrap_dataset",
    "wrap_model",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torchfault.dnn' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("lightning", "torchmetrics"):
            from torchfault.errors import TorchFaultError

            raise TorchFaultError(
                f"torchfault.dnn.{name} needs PyTorch Lightning ({exc.name} is not installed): "
                "pip install 'torchfault[train]'."
            ) from exc
        raise
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
