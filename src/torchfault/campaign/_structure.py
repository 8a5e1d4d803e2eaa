# SPDX-License-Identifier: MIT
"""Inputs and outputs of any structure: batching, calling the model, reading parts of outputs.

A campaign input is a tensor, a tuple (or list) of tensors passed positionally, or a dict of
tensors passed as keyword arguments (``input_ids``, ``attention_mask``...). Every tensor of it is
batched along one declared dimension (``batch_dim``, default 0); any other value in it (a flag, a
``None``) is passed to every call unchanged. :class:`Batched` holds such an input set and takes
rows of it; a plain tensor batched along dim 0 stays a plain tensor everywhere.

An output is a tensor, a tuple, list or dict of outputs, a dataclass-like model output (a
``transformers.ModelOutput`` is a dict), or a list of per-input dicts (detection models: one
dict of ``boxes``/``labels``/``scores`` per input). :func:`split_rows` cuts a batch's output into
one output per input (the batch dimension removed), :func:`leaves` lists its tensors by path
(``"logits"``, ``"0"``, ``"hidden.1"``), and :func:`select` reads the part a criterion names.
Values that are neither tensors nor containers (a ``transformers`` cache object, ``None``) are
not compared: build the model with ``use_cache=False`` where a cache would matter.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError, suggest

__all__ = [
    "Batched",
    "as_batched",
    "call_model",
    "leaves",
    "positional_args",
    "select",
    "split_rows",
    "is_per_input_list",
]


def _tensor_leaves(x: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    out: list[tuple[str, torch.Tensor]] = []
    if isinstance(x, torch.Tensor):
        out.append((path, x))
    elif isinstance(x, Mapping):
        for k, v in x.items():
            out.extend(_tensor_leaves(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            out.extend(_tensor_leaves(v, f"{path}.{i}" if path else str(i)))
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            v = getattr(x, f.name)
            out.extend(_tensor_leaves(v, f"{path}.{f.name}" if path else f.name))
    return out


def leaves(output: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of an output, with its path (keys and positions joined by dots).

    Example:
        >>> import torch
        >>> out = {"logits": torch.zeros(2, 3), "extra": (torch.ones(2), None)}
        >>> [(p, tuple(t.shape)) for p, t in leaves(out)]
        [('logits', (2, 3)), ('extra.0', (2,))]
    """
    return _tensor_leaves(output)


def _map(x: Any, fn: Any) -> Any:
    """``x`` with ``fn`` applied to every tensor (containers rebuilt, other values kept)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        items = {k: _map(v, fn) for k, v in x.items()}
        try:
            return type(x)(**items) if not isinstance(x, dict) or type(x) is not dict else items
        except Exception:  # noqa: BLE001 - a mapping that cannot be rebuilt: a plain dict
            return items
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
        return type(x)(*(_map(v, fn) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_map(v, fn) for v in x)
    return x


def is_per_input_list(output: Any) -> bool:
    """Whether an output is a list with one dict per input (detection models)."""
    return (
        isinstance(output, (list, tuple))
        and bool(output)
        and all(isinstance(v, Mapping) for v in output)
    )


class Batched:
    """A set of inputs of any structure, batched along ``dim`` of every tensor.

    Args:
        data: a tensor, a tuple/list of them (positional arguments) or a dict of them (keyword
            arguments); other values in a tuple or dict are passed to every call as they are.
        dim: the batch dimension of every tensor.
        field: the name errors use for the inputs (``"inputs"``, ``"data"``).

    Example:
        >>> import torch
        >>> b = Batched({"input_ids": torch.arange(12).reshape(3, 4), "attention_mask": torch.ones(3, 4)})
        >>> len(b), b[[2, 0]].data["input_ids"][:, 0].tolist()
        (3, [8, 0])
    """

    def __init__(self, data: Any, dim: int = 0, field: str = "inputs") -> None:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TorchFaultError(f"{field}: batch_dim must be an integer, got {dim!r}.")
        if not isinstance(data, (torch.Tensor, tuple, list, Mapping)):
            raise TorchFaultError(
                f"{field}: an input set must be a tensor, a tuple/list of tensors (positional "
                f"arguments) or a dict of tensors (keyword arguments), got {type(data).__name__}."
            )
        if isinstance(data, Mapping):
            bad = [k for k in data if not isinstance(k, str)]
            if bad:
                raise TorchFaultError(
                    f"{field}: the keys of a dict input are keyword arguments and must be strings, got {bad[0]!r}."
                )
            data = dict(data)
        self.data = data
        self.dim = dim
        self.field = field
        tensors = leaves(data)
        if not tensors:
            raise TorchFaultError(f"{field}: the input holds no tensor to batch.")
        sizes = {}
        for path, t in tensors:
            if t.dim() == 0 or not -t.dim() <= dim < t.dim():
                raise TorchFaultError(
                    f"{field}: tensor {path or '(the input)'} of shape {tuple(t.shape)} has no "
                    f"batch dimension {dim}; every tensor of an input set is batched along "
                    "batch_dim (set data.batch_dim / batch_dim= to the right one)."
                )
            sizes[path or "(the input)"] = t.shape[dim]
        if len(set(sizes.values())) != 1:
            shown = ", ".join(f"{p}: {n}" for p, n in sizes.items())
            raise TorchFaultError(
                f"{field}: the tensors do not batch: they hold different numbers of rows along "
                f"batch_dim {dim} ({shown}); every tensor must hold one row per input."
            )
        self.rows = next(iter(sizes.values()))

    def __len__(self) -> int:
        return int(self.rows)

    @property
    def plain(self) -> bool:
        """A single tensor batched along dim 0 (the classic case)."""
        return isinstance(self.data, torch.Tensor) and self.dim == 0

    def _take(self, idx: torch.Tensor) -> Any:
        return _map(self.data, lambda t: t.index_select(self.dim, idx.to(t.device)))

    def __getitem__(self, ids: Any) -> Batched:
        if isinstance(ids, slice):
            ids = range(self.rows)[ids]
        idx = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids).long()
        out = Batched.__new__(Batched)
        out.data, out.dim, out.field, out.rows = self._take(idx), self.dim, self.field, len(idx)
        return out

    def clone(self) -> Batched:
        out = Batched.__new__(Batched)
        out.data = _map(self.data, lambda t: t.clone())
        out.dim, out.field, out.rows = self.dim, self.field, self.rows
        return out

    def to(self, device: Any) -> Batched:
        out = Batched.__new__(Batched)
        out.data = _map(self.data, lambda t: t.to(device))
        out.dim, out.field, out.rows = self.dim, self.field, self.rows
        return out

    def call(self, model: nn.Module) -> Any:
        """``model`` on these inputs: positional for a tensor or tuple, keywords for a dict."""
        return call_model(model, self.data)

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return leaves(self.data)

    def __repr__(self) -> str:
        kind = type(self.data).__name__
        return f"Batched({kind}, rows={self.rows}, dim={self.dim})"


def as_batched(inputs: Any, dim: int = 0, field: str = "inputs") -> torch.Tensor | Batched:
    """A tensor batched along dim 0 as it is; anything else as a :class:`Batched`.

    Example:
        >>> import torch
        >>> type(as_batched(torch.zeros(2, 3))).__name__, len(as_batched((torch.zeros(4, 1), torch.ones(4))))
        ('Tensor', 4)
    """
    if isinstance(inputs, Batched):
        return inputs
    if isinstance(inputs, torch.Tensor) and dim == 0:
        if inputs.dim() < 1:
            raise TorchFaultError(
                f"{field} must be a tensor with one input per row, got a 0-d tensor."
            )
        return inputs
    return Batched(inputs, dim, field)


def call_model(model: nn.Module, data: Any) -> Any:
    """Call ``model`` on ``data``: a dict as keyword arguments, a tuple/list as positional ones."""
    if isinstance(data, Batched):
        data = data.data
    if isinstance(data, Mapping):
        return model(**data)
    if isinstance(data, (tuple, list)):
        return model(*data)
    return model(data)


def positional_args(model: nn.Module, data: Any) -> Any:
    """``data`` as positional arguments of ``model`` (for probes that take a tuple): a dict is
    bound to the parameters of ``model.forward`` by name, defaults filling the gaps."""
    if isinstance(data, Batched):
        data = data.data
    if isinstance(data, Mapping):
        sig = inspect.signature(model.forward)
        try:
            bound = sig.bind_partial(**data)
        except TypeError as exc:
            raise TorchFaultError(
                f"inputs: the keys {sorted(data)} do not fit {type(model).__name__}.forward: {exc}"
            ) from None
        bound.apply_defaults()
        if bound.kwargs:
            raise TorchFaultError(
                f"inputs: keys {sorted(bound.kwargs)} are keyword-only arguments of "
                f"{type(model).__name__}.forward; activation sites cannot be probed with them "
                "(target weights/biases only: targets.kinds)."
            )
        return tuple(bound.args)
    if isinstance(data, list):
        return tuple(data)
    return data


def split_rows(output: Any, n: int, dim: int = 0) -> list[Any]:
    """One output per input: the first ``n`` rows of a batch's output, the batch dim removed.

    A list with one dict per input is cut by position; every tensor whose size along ``dim``
    is at least ``n`` is indexed along it; other values are repeated for every input.

    Example:
        >>> import torch
        >>> rows = split_rows({"logits": torch.arange(6.0).reshape(3, 2)}, 2)
        >>> [r["logits"].tolist() for r in rows]
        [[0.0, 1.0], [2.0, 3.0]]
    """
    if is_per_input_list(output):
        if len(output) < n:
            raise TorchFaultError(
                f"the model returned {len(output)} per-input outputs for a batch of {n} inputs."
            )
        return [output[i] for i in range(n)]

    def row(i: int) -> Any:
        def pick(t: torch.Tensor) -> torch.Tensor:
            if t.dim() > dim and t.shape[dim] >= n:
                return t.select(dim, i)
            return t

        return _map(output, pick)

    return [row(i) for i in range(n)]


def stack_rows(rows: Sequence[Any]) -> torch.Tensor:
    """Per-input tensors stacked into one batch (dim 0); a clear error when shapes differ."""
    shapes = {tuple(r.shape) for r in rows}
    if len(shapes) > 1:
        raise TorchFaultError(f"outputs of different shapes cannot be compared as one: {shapes}.")
    return torch.stack(list(rows))


def select(output: Any, path: str | int | None, field: str = "outcome.output") -> Any:
    """The part of ``output`` at ``path`` (``"logits"``, ``0``, ``"hidden.1"``); ``None``: all.

    Example:
        >>> import torch
        >>> select({"logits": torch.zeros(3), "loss": None}, "logits").shape
        torch.Size([3])
        >>> select((torch.zeros(1), torch.ones(2)), 1).tolist()
        [1.0, 1.0]
    """
    if path is None or path == "":
        return output
    cur = output
    for key in str(path).split("."):
        if isinstance(cur, Mapping):
            if key not in cur:
                raise TorchFaultError(
                    f"{field}: the model's output has no key {key!r}; its keys are "
                    f"{list(cur.keys())}.{suggest(key, [str(k) for k in cur])}"
                )
            cur = cur[key]
        elif isinstance(cur, (tuple, list)) and not isinstance(cur, str):
            names = getattr(cur, "_fields", None)
            if names and key in names:
                cur = getattr(cur, key)
                continue
            try:
                i = int(key)
            except ValueError:
                raise TorchFaultError(
                    f"{field}: the model's output is a {type(cur).__name__} of {len(cur)} "
                    f"values; read one by position (0..{len(cur) - 1}), not {key!r}."
                ) from None
            if not -len(cur) <= i < len(cur):
                raise TorchFaultError(
                    f"{field}: position {i} is out of range for an output of {len(cur)} values."
                )
            cur = cur[i]
        elif dataclasses.is_dataclass(cur) and not isinstance(cur, type):
            names = [f.name for f in dataclasses.fields(cur)]
            if key not in names:
                raise TorchFaultError(
                    f"{field}: the model's output has no field {key!r}; its fields are "
                    f"{names}.{suggest(key, names)}"
                )
            cur = getattr(cur, key)
        else:
            raise TorchFaultError(
                f"{field}: cannot read {key!r} of a {type(cur).__name__} output (path {path!r})."
            )
    return cur
