# SPDX-License-Identifier: MIT
"""Outcome criteria as a registry: :data:`CRITERIA` (name -> ``fn(golden, faulty, criterion)
-> Verdict``), the :class:`Criterion` a campaign classifies with (a registered name, a callable of
your own or a ``file.py:function`` name, and its parameters), :class:`Verdict` and
:class:`CriterionError`. The built-in criteria are in ``_criteria``; classifying runs with them
in ``_outcome``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchfault.errors import TorchFaultError, suggest
from torchfault.registry import HIDE_DEFAULT, Capabilities, Registry

__all__ = [
    "CRITERIA",
    "Criterion",
    "CriterionCapabilities",
    "CriterionError",
    "Verdict",
    "criterion_capabilities",
    "is_criterion",
    "list_criteria",
    "register_criterion",
]

log = logging.getLogger("torchfault.campaign")


@dataclass(frozen=True)
class CriterionCapabilities(Capabilities):
    """What an outcome criterion supports (the criterion registry's typed capabilities).

    Attributes:
        reads: ``"tensor"``: the parts of all rows stacked into one ``(N, ...)`` tensor;
            ``"rows"``: a list of per-input parts.
        metrics: the names of the metrics it records.
        fast: the fast engine may classify with it (tensor parts, no metrics).

    Example:
        >>> from torchfault.campaign import criterion_capabilities
        >>> criterion_capabilities("detection").reads, criterion_capabilities("top1").fast
        ('rows', True)
    """

    reads: str = "tensor"
    metrics: tuple[str, ...] = field(default=(), metadata=HIDE_DEFAULT)
    fast: bool = field(default=False, metadata=HIDE_DEFAULT)

    def __post_init__(self) -> None:
        if self.reads not in ("tensor", "rows"):
            raise ValueError(f"A criterion's reads must be 'tensor' or 'rows', got {self.reads!r}.")
        object.__setattr__(self, "metrics", tuple(self.metrics))


#: Outcome criteria: name -> ``fn(golden, faulty, criterion) -> Verdict``, with
#: :class:`CriterionCapabilities`.
CRITERIA: Registry[Callable[..., Any]] = Registry(
    "criterion", plural="criteria", capabilities=CriterionCapabilities
)


def criterion_capabilities(name: str) -> CriterionCapabilities:
    """The typed capabilities of the registered criterion ``name``.

    Example:
        >>> from torchfault.campaign import criterion_capabilities
        >>> criterion_capabilities("regression").metrics
        ('rel_error',)
    """
    return CRITERIA.capabilities_of(name, CriterionCapabilities)


class CriterionError(TorchFaultError):
    """A criterion that raised or returned something that is not an outcome (never an SDC)."""


@dataclass
class Verdict:
    """What a criterion says about a batch of rows.

    Attributes:
        sdc: bool per row: the result changed.
        golden_top1, faulty_top1: the class per row where the criterion has one (else ``None``).
        metrics: name -> one value per row.
    """

    sdc: torch.Tensor
    golden_top1: Sequence[int | None] | torch.Tensor | None = None
    faulty_top1: Sequence[int | None] | torch.Tensor | None = None
    metrics: dict[str, Sequence[float | None]] = field(default_factory=dict)


def _resolve_spec(spec: str) -> Callable[..., Any]:
    from torchfault.config import load_factory

    fn = load_factory(spec, "outcome.criterion")
    if not callable(fn):
        raise TorchFaultError(f"outcome.criterion: {spec!r} is not callable.")
    return fn


_SPEC_CACHE: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class Criterion:
    """What counts as a silent data corruption.

    Attributes:
        name: a registered criterion (``top1``, ``topk``, ``tolerance``, ``regression``,
            ``segmentation``, ``detection``, ``tokens``; see :func:`list_criteria`), or a
            ``path/to/file.py:function`` / ``package.module:function`` callable criterion.
        topk: k for ``topk``.
        tolerance: absolute tolerance for ``tolerance``.
        rtol: relative tolerance for ``tolerance`` (an element is SDC past
            ``tolerance + rtol * |golden|``).
        threshold: relative error above which ``regression`` calls an SDC.
        fraction: fraction of pixels above which ``segmentation`` calls an SDC.
        iou: IoU at or above which ``detection`` matches two boxes.
        score_threshold: detections scoring below it are ignored by ``detection``.
        matching: ``greedy`` (by descending score) or ``hungarian`` (largest total IoU).
        k: ``tokens`` calls an SDC when more than ``k`` tokens change.
        output: the part of the output the criterion reads (``"logits"``, ``0``,
            ``"pred.boxes"``); ``None``: the whole output.
        fn: a callable criterion ``fn(golden, faulty) -> outcome`` (``name`` is then its label).
        params: options of a criterion of your own (registered ones read them from here).

    Example:
        >>> from torchfault.campaign import Criterion  # the built-in criteria registered
        >>> Criterion("tolerance", tolerance=0.1).name
        'tolerance'
        >>> Criterion("top5")
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: criterion: 'top5' is not valid; ...
    """

    name: str = "top1"
    topk: int = 1
    tolerance: float = 0.0
    rtol: float = 0.0
    threshold: float = 0.01
    fraction: float = 0.0
    iou: float = 0.5
    score_threshold: float = 0.0
    matching: str = "greedy"
    k: int = 0
    output: str | int | None = None
    fn: Callable[..., Any] | None = field(default=None, compare=False)
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.fn is not None:
            if not callable(self.fn):
                raise TorchFaultError(
                    f"criterion: fn must be callable fn(golden, faulty), got {type(self.fn).__name__}."
                )
        elif not isinstance(self.name, str) or not (
            ":" in self.name or CRITERIA.is_registered(self.name)
        ):
            names = CRITERIA.list()
            raise TorchFaultError(
                f"criterion: {self.name!r} is not valid; choose {', '.join(names)}, a callable "
                f"fn(golden, faulty) or 'path/to/file.py:function'.{suggest(str(self.name), names)}"
            )
        if self.topk < 1:
            raise TorchFaultError(f"criterion.topk must be >= 1, got {self.topk}.")
        for name in ("tolerance", "rtol", "threshold", "fraction", "score_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise TorchFaultError(f"criterion.{name} must be a finite number >= 0, got {v!r}.")
        if not 0.0 < self.iou <= 1.0:
            raise TorchFaultError(f"criterion.iou must be in (0, 1], got {self.iou}.")
        if self.fraction >= 1.0:
            raise TorchFaultError(f"criterion.fraction must be in [0, 1), got {self.fraction}.")
        if self.matching not in ("greedy", "hungarian"):
            raise TorchFaultError(
                f"criterion.matching must be 'greedy' or 'hungarian', got {self.matching!r}."
                f"{suggest(str(self.matching), ['greedy', 'hungarian'])}"
            )
        if self.k < 0:
            raise TorchFaultError(f"criterion.k must be >= 0, got {self.k}.")

    # --------------------------------------------------------------- what it is
    @property
    def callable(self) -> Callable[..., Any] | None:
        """The per-input callable of a callable criterion, else ``None``."""
        if self.fn is not None:
            return self.fn
        if ":" in self.name:
            if self.name not in _SPEC_CACHE:
                _SPEC_CACHE[self.name] = _resolve_spec(self.name)
            return _SPEC_CACHE[self.name]
        return None

    @property
    def label(self) -> str:
        if self.fn is not None:
            return getattr(self.fn, "__qualname__", None) or self.name
        return self.name

    def info(self) -> dict[str, Any]:
        if self.fn is not None or ":" in self.name:
            return {"reads": "input", "metrics": (), "fast": False}
        caps = criterion_capabilities(self.name)
        return {"reads": caps.reads, "metrics": caps.metrics, "fast": caps.fast}

    @property
    def fast(self) -> bool:
        """Whether the fast engine may classify with it (tensor parts, no metrics)."""
        return bool(self.info().get("fast")) and self.output is None


def register_criterion(
    name: str, *, reads: str = "tensor", metrics: Sequence[str] = (), description: str | None = None
) -> Callable[[Any], Any]:
    """Register ``fn(golden, faulty, criterion) -> Verdict`` as criterion ``name``.

    ``reads="tensor"``: ``golden`` and ``faulty`` are the parts of all rows stacked into one
    ``(N, ...)`` tensor each; ``reads="rows"``: lists of per-input parts.

    Example:
        >>> import torch
        >>> @register_criterion("sign_flip", description="Some output changed sign.")
        ... def sign_flip(g, f, crit):
        ...     return Verdict(((g > 0) != (f > 0)).reshape(len(g), -1).any(dim=1))
        >>> "sign_flip" in list_criteria()
        True
        >>> CRITERIA.remove("sign_flip")
    """
    if reads not in ("tensor", "rows"):
        raise ValueError(f"register_criterion: reads must be 'tensor' or 'rows', got {reads!r}.")
    return CRITERIA.register(
        name, description=description, reads=reads, metrics=tuple(metrics), fast=False
    )


def list_criteria(filter: str | None = None) -> list[str]:
    """Registered criterion names.

    Example:
        >>> from torchfault.campaign import list_criteria  # the built-in criteria registered
        >>> list_criteria("t*")
        ['tokens', 'tolerance', 'top1', 'topk']
    """
    return CRITERIA.list(filter)


def is_criterion(name: str) -> bool:
    """Whether ``name`` is a registered criterion."""
    return CRITERIA.is_registered(name)


# ------------------------------------------------------------------------ helpers
