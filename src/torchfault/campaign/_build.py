# SPDX-License-Identifier: MIT
"""What a campaign config names, built: the model (dnn's one builder, a Hugging Face class),
the inputs and labels (classic datasets or structured items of your own), their fingerprint,
and the engine (a picklable entry point for executor workers)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._config import CampaignConfig
from torchfault.campaign._engine import ENGINES, Engine, make_engine
from torchfault.campaign._fast import FastEngine, FastOptions
from torchfault.campaign._outcome import Criterion
from torchfault.campaign._structure import Batched, as_batched
from torchfault.config import load_factory
from torchfault.errors import ConfigError, TorchFaultError, suggest

__all__ = ["build_model", "build_inputs", "fingerprint", "build_engine"]


def _load_factory(spec: str) -> Any:
    """``config.load_factory(spec, "model.name")`` (kept for callers of the old name)."""
    return load_factory(spec, "model.name")


def build_model(cfg: CampaignConfig) -> nn.Module:
    """The model a campaign config names, in eval mode: dnn's one builder
    (:func:`torchfault.dnn.build_model`; a model of your own as its factory returns it, so faults
    name its own modules), or a Hugging Face model class."""
    from torchfault.dnn import build_model as build

    m = cfg.model
    factory = None
    if ":" in m.name and m.hub is None:
        factory = load_factory(m.name, "model.name")
        if _is_hf_model_class(factory):
            try:
                model = _build_hf(factory, m)
            except TypeError as exc:
                raise ConfigError(
                    f"model.kwargs: calling {m.name!r} with {dict(m.kwargs)} failed: {exc}",
                    field="model.kwargs",
                ) from None
            if m.checkpoint and not Path(m.checkpoint).is_dir():
                from torchfault.dnn import load_model_weights

                model = load_model_weights(model, m.checkpoint, quantized=m.quantized)
            return model.eval()
    return build(m, cfg.data, wrap=False, factory=factory)


def _is_hf_model_class(obj: Any) -> bool:
    """A Hugging Face ``transformers`` model class (built from its config class)."""
    return (
        isinstance(obj, type)
        and getattr(obj, "config_class", None) is not None
        and hasattr(obj, "from_pretrained")
    )


def _build_hf(cls: Any, m: Any) -> nn.Module:
    """``transformers:BertForSequenceClassification`` with ``model.kwargs`` as its config
    (random weights from the campaign seed), or ``model.checkpoint`` a local directory saved with
    ``save_pretrained`` (nothing is downloaded)."""
    if m.checkpoint and Path(m.checkpoint).is_dir():
        return cls.from_pretrained(m.checkpoint, local_files_only=True)
    try:
        config = cls.config_class(**m.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"model.kwargs: {cls.config_class.__name__}({dict(m.kwargs)}) failed: {exc}",
            field="model.kwargs",
        ) from None
    return cls(config)


def _structured_inputs(cfg: CampaignConfig) -> tuple[Any, torch.Tensor | None] | None:
    """Inputs of a dataset of your own whose items are not ``(tensor, class)`` pairs batched on
    dim 0: dicts or tuples of tensors (or any batch_dim), stacked along ``data.batch_dim``.
    ``None``: the classic path (``dnn.create_dataset``) applies."""
    from collections.abc import Mapping

    d = cfg.data
    if ":" not in d.dataset:
        return None
    factory = load_factory(d.dataset, "data.dataset")
    try:
        ds = factory(split=d.split, **d.kwargs)
    except TypeError as exc:
        raise ConfigError(f"data.kwargs: {d.dataset!r}: {exc}", field="data.kwargs") from None
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__") or len(ds) == 0:
        return None
    first = ds[0]

    def split(item: Any) -> tuple[Any, Any]:
        if isinstance(item, Mapping):
            return item, None
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return item[0], item[1]
        return item, None

    x0, y0 = split(first)
    label_like = y0 is not None and (
        isinstance(y0, int) or (isinstance(y0, torch.Tensor) and y0.numel() == 1)
    )
    if isinstance(x0, torch.Tensor) and d.batch_dim == 0 and label_like:
        return None
    n = len(ds) if d.num_inputs == 0 else min(d.num_inputs, len(ds))
    items = [split(ds[i]) for i in range(n)]

    def stack(values: list[Any], where: str) -> Any:
        v0 = values[0]
        if isinstance(v0, Mapping):
            return {k: stack([v[k] for v in values], f"{where}.{k}") for k in v0}
        if isinstance(v0, (tuple, list)):
            return tuple(stack([v[j] for v in values], f"{where}.{j}") for j in range(len(v0)))
        if v0 is None or isinstance(v0, (bool, str)):
            return v0
        try:
            return torch.stack([torch.as_tensor(v) for v in values], dim=d.batch_dim)
        except RuntimeError as exc:
            raise ConfigError(
                f"data.dataset: the items' {where} do not batch along data.batch_dim "
                f"{d.batch_dim}: {exc}",
                field="data.dataset",
            ) from None

    try:
        inputs = as_batched(stack([x for x, _ in items], "input"), d.batch_dim, "data")
    except TorchFaultError as exc:
        raise ConfigError(str(exc), field="data.batch_dim") from None
    labels = None
    if all(y is not None for _, y in items):
        try:
            labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError):
            labels = None  # not classes (regression targets, masks): no accuracy
    return inputs, labels


def shape_text(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape[1:]))
    return ", ".join(f"{p}: {tuple(t.shape)}" for p, t in inputs.tensors())


def build_inputs(cfg: CampaignConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inputs (stacked) and labels a campaign config names."""
    from torchfault import dnn
    from torchfault.dnn import SPLITS

    d = cfg.data
    structured = _structured_inputs(cfg) if d.split in SPLITS else None
    if structured is not None:
        return structured
    if d.batch_dim != 0:
        raise ConfigError(
            f"data.batch_dim: {d.batch_dim} is for datasets of your own (file.py:function) whose "
            f"items are batched along another dim; {d.dataset!r} gives inputs batched on dim 0.",
            field="data.batch_dim",
        )
    if d.split not in SPLITS:
        raise ConfigError(
            f"data.split: unknown split {d.split!r}; valid splits: {', '.join(SPLITS)}.{suggest(d.split, SPLITS)}"
        )
    ds = dnn.build_dataset(d)  # errors name data.dataset, data.split or data.kwargs
    n = len(ds) if d.num_inputs == 0 else min(d.num_inputs, len(ds))
    xs, ys = [], []
    for i in range(n):
        x, y = ds[i]
        xs.append(torch.as_tensor(x))
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def fingerprint(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """SHA-256 over the model's state (names, dtypes, shapes, bytes) and the inputs' bytes."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r}".encode())
            continue
        if t.is_quantized:
            t = t.int_repr()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(inputs, Batched):
        for path, t in inputs.tensors():
            h.update(f"{path}:{t.dtype}:{tuple(t.shape)}:{inputs.dim}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(inputs.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    if labels is not None:
        h.update(labels.cpu().numpy().tobytes())
    return h.hexdigest()


def build_engine(
    engine: str,
    model: nn.Module,
    inputs: torch.Tensor | Batched,
    golden: torch.Tensor | list[Any],
    criterion: Criterion,
    batch_size: int,
    fast: FastOptions | None = None,
    deterministic: bool = False,
    trace: tuple[list[str], Any] | None = None,
) -> Engine:
    """Build an engine (a picklable entry point for executor workers); ``fast``: the fast
    engine's options (``engine.fast``); ``deterministic``: switch on
    ``torch.use_deterministic_algorithms`` in this process (``engine.deterministic``);
    ``trace``: what its :meth:`~Engine.run_chunk` traces (``(layer order, range profile or
    None)``, the campaign's ``trace``)."""
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        cls = ENGINES.get(engine)
    except ValueError as exc:
        raise ConfigError(f"engine.name: {exc}") from None
    # the fast engine's options; make_engine hands structures and devices it was not made for
    # to the reference engine
    options = {"options": fast} if fast is not None and issubclass(cls, FastEngine) else {}
    return make_engine(engine, model, inputs, golden, criterion, batch_size, trace, **options)
