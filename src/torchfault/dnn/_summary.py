# SPDX-License-Identifier: MIT
"""Per-layer model summaries: output shape, parameters, MACs / FLOPs, memory, and totals.

One forward pass under ``torch.utils.flop_counter.FlopCounterMode`` with forward hooks on every
module gives, for each leaf module (one with no children):

- its output shape (batch included) and the bytes of that activation;
- its own parameters and their bytes (buffers such as batch-norm statistics counted apart);
- the FLOPs of the matrix products and convolutions it ran (``FlopCounterMode`` counts a
  multiply-add as 2 FLOPs and ignores bias additions, activations and pooling), and the MACs
  (FLOPs / 2).

Quantized kernels (``quantized::conv2d``...) are not counted by ``FlopCounterMode`` and show 0.

Example:
    >>> import torch
    >>> from torchfault.dnn import summarize_model
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
    ...                           torch.nn.Linear(144, 10))
    >>> s = summarize_model(net, input_shape=(1, 8, 8))
    >>> s.rows[0].output_shape, s.rows[0].macs, s.total_macs
    ((1, 4, 6, 6), 1296, 2736)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchfault.errors import TorchFaultError

__all__ = ["LayerSummary", "ModelSummary", "summarize", "summarize_model"]


@dataclass(frozen=True)
class LayerSummary:
    """One leaf module's line of a summary."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    trainable_params: int
    param_bytes: int
    buffer_bytes: int
    flops: int
    macs: int
    activation_bytes: int
    calls: int = 1


@dataclass
class ModelSummary:
    """A model's per-layer summary and totals (see the module docstring for what is counted)."""

    model: str
    input_shape: tuple[int, ...]
    rows: list[LayerSummary] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    param_bytes: int = 0
    buffer_bytes: int = 0
    total_flops: int = 0
    total_macs: int = 0
    activation_bytes: int = 0
    input_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d

    def table(self, width: int | None = None) -> Any:
        """A ``rich`` table of the summary that fits ``width`` columns (default: no limit).

        When the full table (exact counts with thousands separators, FLOPs and parameter memory)
        is wider than ``width``, a compact one is given instead: counts abbreviated
        (``2.36M``), shapes as ``1x16x32x32``, FLOPs (twice the MACs) and parameter memory left
        out. Layer names are never cut: a name too long for its column wraps.
        """
        full = self._table(compact=False)
        if width is None or _width(full) <= width:
            return full
        return self._table(compact=True)

    def _table(self, compact: bool) -> Any:
        from rich.table import Table

        cols: tuple[str, ...]
        count: Callable[[int], str]
        shape: Callable[[Sequence[int]], str]
        if compact:
            cols = ("layer", "type", "output", "params", "MACs", "act mem")
            count, shape = _short_count, _short_shape
        else:
            cols = (
                "layer",
                "type",
                "output shape",
                "params",
                "MACs",
                "FLOPs",
                "param mem",
                "act mem",
            )
            count, shape = _full_count, _full_shape
        t = Table(title=f"{self.model}, input {self.input_shape}", title_justify="left")
        # layer names whole when they fit in 40 characters (longer ones fold); the type column
        # gives way first
        long_names = max((len(r.name) for r in self.rows), default=0) > 40
        for col in cols:
            left = col in ("layer", "type", "output", "output shape")
            t.add_column(
                col,
                justify="left" if left else "right",
                no_wrap=col != "type" and not (col == "layer" and long_names),
                overflow="fold",
            )
        for r in self.rows:
            cells = {
                "layer": r.name,
                "type": r.type,
                "output": shape(r.output_shape),
                "output shape": shape(r.output_shape),
                "params": count(r.params),
                "MACs": count(r.macs),
                "FLOPs": count(r.flops),
                "param mem": _human(r.param_bytes),
                "act mem": _human(r.activation_bytes),
            }
            t.add_row(*(cells[c] for c in cols))
        t.add_section()
        totals = {
            "layer": "total",
            "params": count(self.total_params),
            "MACs": count(self.total_macs),
            "FLOPs": count(self.total_flops),
            "param mem": _human(self.param_bytes + self.buffer_bytes),
            "act mem": _human(self.activation_bytes),
        }
        t.add_row(*(totals.get(c, "") for c in cols))
        return t

    def __str__(self) -> str:
        head = f"{'layer':<24} {'type':<18} {'output shape':<20} {'params':>10} {'MACs':>12}"
        lines = [f"{self.model}, input {self.input_shape}", head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name:<24} {r.type:<18} {str(tuple(r.output_shape)):<20} "
                f"{r.params:>10,} {r.macs:>12,}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"total params {self.total_params:,} ({self.trainable_params:,} trainable), "
            f"MACs {self.total_macs:,}, FLOPs {self.total_flops:,}, "
            f"parameter memory {_human(self.param_bytes)}, buffers {_human(self.buffer_bytes)}, "
            f"activation memory {_human(self.activation_bytes)}, input {_human(self.input_bytes)}"
        )
        return "\n".join(lines)


def _width(renderable: Any) -> int:
    """Columns ``renderable`` takes when nothing limits it."""
    from rich.console import Console

    console = Console(width=100_000, file=io.StringIO(), color_system=None)
    with console.capture() as cap:
        console.print(renderable)
    return max((len(line) for line in cap.get().splitlines()), default=0)


def _short_count(n: int) -> str:
    """``2359296`` -> ``"2.36M"``; below 10,000 the number itself."""
    if n < 10_000:
        return f"{n:,}"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)  # pragma: no cover


def _short_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) or "()"


def _full_count(n: int) -> str:
    return f"{n:,}"


def _full_shape(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _tensor_bytes(t: Any) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (tuple, list)):
        return sum(_tensor_bytes(x) for x in t)
    if isinstance(t, dict):
        return sum(_tensor_bytes(x) for x in t.values())
    return 0


def _shape(t: Any) -> tuple[int, ...]:
    if isinstance(t, torch.Tensor):
        return tuple(t.shape)
    if isinstance(t, (tuple, list)) and t and isinstance(t[0], torch.Tensor):
        return tuple(t[0].shape)
    return ()


def _own_params(m: nn.Module) -> tuple[int, int, int, int]:
    """(params, trainable, param bytes, buffer bytes) of ``m`` itself, quantized weights too."""
    params = list(m.parameters(recurse=False))
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    pbytes = sum(p.numel() * p.element_size() for p in params)
    weight: Any = getattr(m, "weight", None)
    if not params and callable(weight):  # quantized modules keep packed weights
        try:
            w = weight()
            packed_bias: Any = getattr(m, "bias", None)
            bias = packed_bias() if callable(packed_bias) else None
        except Exception:  # noqa: BLE001 - not a quantized module after all
            w = bias = None
        for t in (w, bias):
            if isinstance(t, torch.Tensor):
                n += t.numel()
                pbytes += t.numel() * t.element_size()
    bbytes = sum(b.numel() * b.element_size() for b in m.buffers(recurse=False))
    return n, trainable, pbytes, bbytes


def _leaves(model: nn.Module) -> list[nn.Module]:
    """Modules without children; a quantized module counts as one leaf with its packed params."""
    out: list[nn.Module] = []
    prefixes: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p) for p in prefixes):
            continue
        quantized = type(m).__module__.startswith("torch.ao.nn.") and m is not model
        if not list(m.children()) or quantized:
            out.append(m)
            if quantized:
                prefixes.append(name + ".")
    return out or [model]


@torch.no_grad()
def summarize_model(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    batch: int = 1,
    inputs: torch.Tensor | None = None,
) -> ModelSummary:
    """Summarise ``model`` by running one batch through it.

    Args:
        model: any module.
        input_shape: shape of one input without the batch dimension (default: the model's
            ``input_shape``, as zoo models have).
        batch: batch size of the probe input (activation memory scales with it).
        inputs: an explicit input batch instead of zeros of ``input_shape``.

    Raises:
        TorchFaultError: no input shape known.
    """
    if inputs is None:
        if input_shape is None:
            input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise TorchFaultError("summarize_model: give input_shape (the model does not say).")
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        inputs = torch.zeros((int(batch), *input_shape), device=device)
    records: dict[str, dict[str, Any]] = {}
    names = {m: n for n, m in model.named_modules()}
    leaves = _leaves(model)

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        rec = records.setdefault(names[mod], {"shape": (), "bytes": 0, "calls": 0})
        rec["shape"] = _shape(out)
        rec["bytes"] += _tensor_bytes(out)
        rec["calls"] += 1

    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)  # type: ignore[arg-type]
    try:
        with counter:
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    flops_by = counter.get_flop_counts()
    root = type(model).__name__
    summary = ModelSummary(type(model).__name__, tuple(inputs.shape))
    for m in leaves:
        name = names[m]
        rec = records.get(name)
        if rec is None:  # never called in forward
            continue
        key = f"{root}.{name}" if name else root
        flops = int(sum(flops_by.get(key, {}).values()))
        n, trainable, pbytes, bbytes = _own_params(m)
        summary.rows.append(
            LayerSummary(
                name=name or "(model)",
                type=type(m).__name__,
                output_shape=rec["shape"],
                params=n,
                trainable_params=trainable,
                param_bytes=pbytes,
                buffer_bytes=bbytes,
                flops=flops,
                macs=flops // 2,
                activation_bytes=rec["bytes"],
                calls=rec["calls"],
            )
        )
    seen: set[int] = set()
    for m in model.modules():
        n, trainable, pbytes, bbytes = _own_params(m)
        if id(m) in seen:
            continue
        seen.add(id(m))
        summary.total_params += n
        summary.trainable_params += trainable
        summary.param_bytes += pbytes
        summary.buffer_bytes += bbytes
    summary.total_flops = int(counter.get_total_flops())
    summary.total_macs = summary.total_flops // 2
    summary.activation_bytes = sum(r.activation_bytes for r in summary.rows)
    summary.input_bytes = _tensor_bytes(inputs)
    return summary


#: The former name of :func:`summarize_model` (``torchfault.analysis.summarize`` summarises
#: campaign results; this one summarises a model), kept because the DNN guide taught it.
summarize = summarize_model
