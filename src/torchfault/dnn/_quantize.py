# SPDX-License-Identifier: MIT
"""Post-training static int8 quantization with ``torch.ao.quantization`` (FX graph mode).

:func:`quantize_model` traces a float model with ``torch.fx``, inserts observers
(``prepare_fx`` with the backend's default qconfig mapping: per-channel symmetric int8 weights,
per-tensor affine uint8 activations), calibrates them on data, and converts the model
(``convert_fx``). Convolution + batch norm + ReLU chains are fused first. The result is a
``GraphModule`` of real PyTorch quantized modules (``QuantizedConvReLU2d``, ``QuantizedLinear``,
...): their weights are quantized tensors (``torch.qint8``) that the injection core can fault.

Why FX mode and not eager mode: eager mode needs ``QuantStub`` / ``DeQuantStub`` and
``FloatFunctional`` written into every model (residual additions included); FX mode quantizes any
traceable model as it is, which all zoo models are.

Status in torch 2.13: ``torch.ao.quantization`` still exists and works on CPU with the ``x86``
(default) and ``fbgemm`` engines, but it is deprecated in favour of torchao (each call warns;
we silence those warnings here). Its PT2E successor lives in torchao, which is not a dependency.

Example:
    >>> from torchfault.dnn import create_model, create_dataset, quantize_model, is_quantized
    >>> float_model = create_model("lenet", pretrained=True)
    >>> qmodel = quantize_model(float_model, create_dataset("digits", split="train"))
    >>> is_quantized(qmodel), qmodel.conv1.weight().dtype
    (True, torch.qint8)
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchfault.dnn._checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from torchfault.errors import TorchFaultError, suggest

__all__ = ["BACKENDS", "is_quantized", "load_quantized", "quantize_model", "save_quantized"]

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
QUANTIZED_FORMAT = "torchfault.quantized/1"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*must run observer before calling.*")
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        yield


def _check_backend(backend: str) -> str:
    supported = list(torch.backends.quantized.supported_engines)
    if backend not in BACKENDS or backend not in supported:
        valid = [b for b in BACKENDS if b in supported]
        raise TorchFaultError(
            f"quantization backend {backend!r} is not available; valid here: "
            f"{', '.join(valid)}.{suggest(str(backend), valid)}"
        )
    return backend


def _batches(data: Any, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i : i + batch_size]
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size)
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds quantized modules (``torch.ao.nn.quantized``).

    Example:
        >>> import torch
        >>> is_quantized(torch.nn.Linear(2, 2))
        False
    """
    return any(
        type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
        for m in model.modules()
    )


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    calibration: Any,
    *,
    backend: str = "x86",
    num_batches: int | None = 8,
    batch_size: int = 64,
    example_inputs: torch.Tensor | None = None,
) -> torch.fx.GraphModule:
    """Post-training static int8 quantization; the float ``model`` is left untouched.

    Args:
        model: a float model that ``torch.fx`` can trace.
        calibration: inputs to calibrate the activation ranges: a dataset of ``(x, y)``, a data
            loader or an input tensor.
        backend: the quantized engine (``x86`` or ``fbgemm`` on CPU).
        num_batches: calibration batches (``None``: all).
        batch_size: batch size when ``calibration`` is a dataset or a tensor.
        example_inputs: an input batch for tracing (default: the model's ``example_inputs()``
            or the first calibration batch).

    Returns:
        A ``GraphModule`` of quantized modules, in eval mode, taking and returning float tensors.

    Raises:
        TorchFaultError: unavailable backend, untraceable model or no calibration data.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    _check_backend(backend)
    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).cpu().eval()
    if example_inputs is None:
        if hasattr(float_model, "example_inputs"):
            example_inputs = float_model.example_inputs(1)  # type: ignore[operator]
        else:
            example_inputs = next(iter(_batches(calibration, batch_size)))[:1]
    with _quiet():
        try:
            prepared = prepare_fx(
                float_model, get_default_qconfig_mapping(backend), example_inputs=(example_inputs,)
            )
        except Exception as exc:  # noqa: BLE001 - torch.fx raises many kinds
            raise TorchFaultError(
                f"quantize_model: torch.fx could not trace {type(model).__name__}: {exc}"
            ) from None
        seen = 0
        for i, x in enumerate(_batches(calibration, batch_size)):
            if num_batches is not None and i >= num_batches:
                break
            prepared(x.float().cpu())
            seen += 1
        if seen == 0:
            raise TorchFaultError("quantize_model: the calibration data is empty.")
        quantized = convert_fx(prepared)
    quantized.eval()
    return quantized


def save_quantized(
    qmodel: nn.Module,
    path: str | Path,
    *,
    model_name: str,
    dataset: str | None,
    backend: str = "x86",
    model_options: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    compression: str = "lzma",
) -> CheckpointInfo:
    """Save a quantized zoo model (its state dict and how to rebuild it: model name, dataset,
    ``model_options`` and ``dataset_options``), compressed.

    Example:
        >>> import os, tempfile, torch
        >>> from torchfault.dnn import create_model, create_dataset
        >>> q = quantize_model(create_model("mlp", pretrained=True), create_dataset("digits"))
        >>> p = os.path.join(tempfile.mkdtemp(), "q.pt.xz")
        >>> _ = save_quantized(q, p, model_name="mlp", dataset="digits")
        >>> q2 = load_quantized(p)
        >>> x = create_dataset("digits").inputs[:8]
        >>> torch.equal(q(x), q2(x))
        True
    """
    payload = {
        "format": QUANTIZED_FORMAT,
        "model": model_name,
        "dataset": dataset,
        "backend": backend,
        "model_options": dict(model_options or {}),
        "dataset_options": dict(dataset_options or {}),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "state_dict": qmodel.state_dict(),
    }
    with _quiet():
        return save_checkpoint(payload, path, compression=compression)


def load_quantized(path: str | Path) -> torch.fx.GraphModule:
    """Rebuild a quantized zoo model saved by :func:`save_quantized`.

    The float model is created, quantized with a throw-away calibration, and then given the
    saved quantized weights, scales and zero points.
    """
    from torchfault.dnn._models import create_model

    with _quiet():
        payload = load_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != QUANTIZED_FORMAT:
        raise TorchFaultError(f"{path} is not a torchfault quantized model file.")
    model = create_model(
        payload["model"],
        dataset=payload["dataset"],
        dataset_options=dict(payload.get("dataset_options") or {}),
        **dict(payload.get("model_options") or {}),
    )
    x = model.example_inputs(4)
    qmodel = quantize_model(model, x, backend=payload.get("backend", "x86"), example_inputs=x[:1])
    try:
        with _quiet():
            qmodel.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise TorchFaultError(f"{path}: quantized weights do not fit the model: {exc}") from None
    return qmodel
