# SPDX-License-Identifier: MIT
"""Per-module and per-operator times from ``torch.profiler``, and a Chrome trace.

Forward hooks open a ``record_function("module::<name>")`` range around every module's forward,
so the profiler's aggregated table has one row per module (inclusive time: the module and
everything it calls) next to the operator rows (``aten::conv2d``...; self and total time). The
Chrome trace (``chrome://tracing`` or https://ui.perfetto.dev) shows the module ranges nested
over their operators.

Example:
    >>> import os, tempfile
    >>> from torchfault.dnn import create_model, profile_model
    >>> model = create_model("lenet")
    >>> trace = os.path.join(tempfile.mkdtemp(), "trace.json")
    >>> result = profile_model(model, model.example_inputs(8), steps=2, trace_path=trace)
    >>> [r["name"] for r in result.modules][:2], os.path.getsize(trace) > 0
    (['(model)', 'conv1'], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from torchfault.errors import TorchFaultError

__all__ = ["ProfileResult", "profile_model"]

_PREFIX = "module::"


@dataclass
class ProfileResult:
    """Aggregated times (microseconds, summed over the profiled steps).

    Attributes:
        modules: per module: ``name``, ``type``, ``calls``, ``cpu_us`` (inclusive), and
            ``cuda_us`` when a GPU was profiled; in model order.
        operators: per operator: ``name``, ``calls``, ``self_cpu_us``, ``cpu_us``
            (and ``self_cuda_us``), most expensive first.
        steps: number of profiled forward passes.
        trace_path: the Chrome trace written, if any.
    """

    modules: list[dict[str, Any]] = field(default_factory=list)
    operators: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    trace_path: str | None = None

    def tables(self, row_limit: int = 20) -> list[Any]:
        """Two ``rich`` tables: modules, then the top ``row_limit`` operators."""
        from rich.table import Table

        mt = Table(title=f"per module ({self.steps} forward passes)", title_justify="left")
        for col in ("module", "type", "calls", "CPU total (ms)", "per call (us)"):
            mt.add_column(col, justify="left" if col in ("module", "type") else "right")
        for r in self.modules:
            per = r["cpu_us"] / max(r["calls"], 1)
            mt.add_row(
                r["name"], r["type"], str(r["calls"]), f"{r['cpu_us'] / 1e3:.3f}", f"{per:.1f}"
            )
        ot = Table(title="per operator", title_justify="left")
        for col in ("operator", "calls", "self CPU (ms)", "CPU total (ms)"):
            ot.add_column(col, justify="left" if col == "operator" else "right")
        for r in self.operators[:row_limit]:
            ot.add_row(
                r["name"],
                str(r["calls"]),
                f"{r['self_cpu_us'] / 1e3:.3f}",
                f"{r['cpu_us'] / 1e3:.3f}",
            )
        return [mt, ot]


def _device_time(evt: Any, attr: str) -> float:
    for name in (attr.replace("cuda", "device"), attr):
        v = getattr(evt, name, None)
        if v is not None:
            return float(v)
    return 0.0


@torch.no_grad()
def profile_model(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    warmup: int = 2,
    steps: int = 5,
    trace_path: str | Path | None = None,
    record_shapes: bool = True,
) -> ProfileResult:
    """Profile ``steps`` forward passes of ``model`` on ``inputs`` (after ``warmup`` passes).

    Args:
        model: any module (profiled in eval mode, without gradients).
        inputs: one input batch, on the model's device.
        warmup: unprofiled passes first (allocator and kernel selection warm-up).
        steps: profiled passes.
        trace_path: write a Chrome trace (JSON) there.
        record_shapes: record operator input shapes in the trace.

    Raises:
        TorchFaultError: ``steps`` < 1 or ``warmup`` < 0.
    """
    if int(steps) < 1 or int(warmup) < 0:
        raise TorchFaultError(
            f"profile: steps must be >= 1 and warmup >= 0, got {steps}, {warmup}."
        )
    names = {m: (n or "(model)") for n, m in model.named_modules()}
    stack: list[Any] = []

    def pre(mod: nn.Module, _inp: Any) -> None:
        rf = record_function(_PREFIX + names[mod])
        rf.__enter__()
        stack.append(rf)

    def post(mod: nn.Module, _inp: Any, _out: Any) -> None:
        if stack:
            stack.pop().__exit__(None, None, None)

    activities = [ProfilerActivity.CPU]
    cuda = inputs.is_cuda
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    was_training = model.training
    model.eval()
    handles = []
    try:
        for _ in range(int(warmup)):
            model(inputs)
        for m in names:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        with profile(activities=activities, record_shapes=record_shapes) as prof:
            for _ in range(int(steps)):
                model(inputs)
            if cuda:
                torch.cuda.synchronize()
    finally:
        for h in handles:
            h.remove()
        while stack:
            stack.pop().__exit__(None, None, None)
        model.train(was_training)
    result = ProfileResult(steps=int(steps))
    by_key = {e.key: e for e in prof.key_averages()}
    for m, name in names.items():
        evt = by_key.get(_PREFIX + name)
        if evt is None:
            continue
        row = {
            "name": name,
            "type": type(m).__name__,
            "calls": int(evt.count),
            "cpu_us": float(evt.cpu_time_total),
        }
        if cuda:
            row["cuda_us"] = _device_time(evt, "cuda_time_total")
        result.modules.append(row)
    ops = []
    for key, evt in by_key.items():
        if key.startswith(_PREFIX) or key.startswith("ProfilerStep"):
            continue
        row = {
            "name": key,
            "calls": int(evt.count),
            "self_cpu_us": float(evt.self_cpu_time_total),
            "cpu_us": float(evt.cpu_time_total),
        }
        if cuda:
            row["self_cuda_us"] = _device_time(evt, "self_cuda_time_total")
        ops.append(row)
    result.operators = sorted(ops, key=lambda r: r["self_cpu_us"], reverse=True)
    if trace_path is not None:
        path = Path(trace_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
        result.trace_path = str(path)
    return result
