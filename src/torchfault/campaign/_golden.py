# SPDX-License-Identifier: MIT
"""The golden pass shared by :class:`Campaign` and :func:`run_campaign`: the fault-free outputs,
checked against the criterion (it fits the output; top-k leaves room for an SDC), the
criterion's class of each input, the golden accuracy and the inputs classified correctly."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._config import check_topk
from torchfault.campaign._engine import _forward, take_golden
from torchfault.campaign._outcome import Criterion, check_fit, evaluate
from torchfault.campaign._structure import Batched, as_batched
from torchfault.errors import TorchFaultError

__all__ = ["GoldenPass", "golden_run", "prepare_golden"]


@torch.no_grad()
def golden_run(
    model: nn.Module, inputs: torch.Tensor | Batched | Any, batch_size: int = 256
) -> torch.Tensor | list[Any]:
    """The fault-free outputs of ``model`` on ``inputs``, in batches: one tensor (rows first)
    when the model returns a tensor for a tensor input, else a list of per-input outputs."""
    inputs = as_batched(inputs)
    n = len(inputs) if isinstance(inputs, Batched) else inputs.shape[0]
    outs: list[Any] = []
    for start in range(0, n, batch_size):
        try:
            # a copy: a model may modify its input in place, and the inputs must stay golden
            out = _forward(model, inputs[start : start + batch_size].clone())
        except TypeError as exc:
            raise TorchFaultError(str(exc)) from None
        outs.append(out.detach() if isinstance(out, torch.Tensor) else _detached(out))
    if all(isinstance(o, torch.Tensor) for o in outs):
        return torch.cat(outs)
    return [row for o in outs for row in (list(o) if not isinstance(o, torch.Tensor) else o)]


def _detached(rows: list[Any]) -> list[Any]:
    from torchfault.campaign._structure import _map

    return [_map(r, lambda t: t.detach()) for r in rows]


@dataclass
class GoldenPass:
    """Golden outputs checked against their criterion.

    Attributes:
        outputs: one tensor (rows first) or a list of per-input outputs (see :func:`golden_run`).
        criterion: the criterion the outputs were checked against.
    """

    outputs: torch.Tensor | list[Any]
    criterion: Criterion
    _top1: list[int | None] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.outputs)

    def top1(self) -> list[int | None]:
        """The criterion's class of each input (``None`` where it gives none); computed once."""
        if self._top1 is None:
            every = take_golden(self.outputs, range(len(self)))
            self._top1 = list(evaluate(every, every, self.criterion).golden_top1)
        return self._top1

    @property
    def has_classes(self) -> bool:
        """The criterion gives a class for every input."""
        return all(t is not None for t in self.top1())

    def accuracy(self, labels: torch.Tensor | None) -> float | None:
        """The share of inputs whose class is their label (``None`` without labels or classes)."""
        if labels is None or not self.has_classes:
            return None
        top1 = torch.tensor([-1 if t is None else t for t in self.top1()], dtype=torch.int64)
        return float((top1 == labels.to(top1.device)).double().mean())

    def correct_inputs(self, labels: torch.Tensor) -> list[int]:
        """The inputs whose class is their label (the criterion must give classes)."""
        flat = labels.reshape(-1)
        return [i for i, t in enumerate(self.top1()) if int(t) == int(flat[i])]  # type: ignore[arg-type]


@contextlib.contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside (when ``on``), restored after."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        if on:
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def prepare_golden(
    model: nn.Module,
    inputs: torch.Tensor | Batched,
    criterion: Criterion,
    batch_size: int,
    *,
    deterministic: bool = False,
    topk_field: str = "topk",
    failed: Callable[[Exception], Exception] | None = None,
) -> GoldenPass:
    """Run the golden pass and check the criterion on it.

    Args:
        model, inputs, criterion, batch_size: as for :func:`run_campaign`.
        deterministic: run the pass under ``torch.use_deterministic_algorithms(True)``.
        topk_field: the field a top-k out of range is named by.
        failed: turns an exception of the golden pass into the one raised (default: as is).

    Raises:
        TorchFaultError: the criterion does not fit the output (``check_fit``); a
            :class:`~torchfault.errors.ConfigError` naming ``topk_field`` for top-k.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault.campaign import make_criterion
        >>> g = prepare_golden(nn.Linear(4, 3), torch.zeros(2, 4), make_criterion(), 8)
        >>> len(g), g.has_classes
        (2, True)
    """
    try:
        with _deterministic(deterministic):
            outputs = golden_run(model, inputs, batch_size)
    except Exception as exc:
        if failed is None:
            raise
        raise failed(exc) from exc
    check_fit(outputs, criterion)
    if criterion.topk != 1 or criterion.name == "topk":
        check_topk(outputs, criterion.topk, topk_field)
    return GoldenPass(outputs, criterion)
