# SPDX-License-Identifier: MIT
"""Classifying a faulty output against the golden one: masked, benign, SDC or DUE.

- ``masked``: every tensor of the faulty output is bit-identical to golden (the whole output,
  whatever part the criterion reads; same structure and shapes);
- ``due``: the part the criterion reads holds a NaN or an infinity (or the model raised under
  the fault);
- ``sdc``: the criterion says the result changed;
- ``benign``: the output changed but the criterion did not.

Criteria are a registry (:data:`CRITERIA`, :func:`register_criterion`; plugins through the
``torchfault.plugins`` entry points), and a criterion can also be a callable of your own or a
``path/to/file.py:function`` / ``package.module:function`` name:

==============  =====================================================================================
``top1``        the top-1 class changed (the part is ``(N, classes)``)
``topk``        the golden top-1 class left the faulty top-``topk``
``tolerance``   some element moved by more than ``tolerance + rtol * |golden|``
``regression``  the relative error ``||faulty - golden|| / ||golden||`` is above ``threshold``
                (metric ``rel_error``)
``segmentation`` per-pixel classes (argmax over dim 1 of ``(N, C, H, W)`` scores, or integer label
                maps): SDC when more than ``fraction`` of the pixels change class (metrics
                ``changed_pixels``, the fraction, and ``miou_drop``, 1 - the mIoU of the faulty map
                against the golden one)
``detection``   per-input dicts of ``boxes``/``labels``/``scores``: detections (score >=
                ``score_threshold``) matched at IoU >= ``iou`` (``matching``: ``greedy`` by score or
                ``hungarian``); SDC when one appears, disappears or changes class (metrics
                ``appeared``, ``disappeared``, ``class_changed``)
``tokens``      per-token top-1 over the vocabulary of ``(N, T, V)`` scores (or ``(N, T)`` ids):
                SDC when more than ``k`` tokens change (``k=0``: any; metric ``changed_tokens``)
==============  =====================================================================================

A callable criterion ``fn(golden, faulty)`` receives one input's output part (its batch
dimension removed) and returns ``"sdc"``, ``"benign"`` or ``"due"`` (or a bool: SDC or not),
optionally with a dict of metrics: ``("sdc", {"err": 0.3})``. It is not called for masked runs.
A criterion that raises during a run stops the campaign with a :class:`CriterionError` naming
it: that is a bug in the criterion, never an outcome.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchfault.errors import TorchFaultError, suggest
from torchfault.registry import Registry
from torchfault.store import OUTCOMES

__all__ = [
    "CRITERIA",
    "OUTCOMES",
    "Criterion",
    "CriterionError",
    "Evaluation",
    "Verdict",
    "check_fit",
    "classify",
    "evaluate",
    "is_criterion",
    "list_criteria",
    "match_detections",
    "output_words_equal",
    "register_criterion",
]

log = logging.getLogger("torchfault.campaign")

_CODE = {name: i for i, name in enumerate(OUTCOMES)}

#: Outcome criteria: name -> ``fn(golden, faulty, criterion) -> Verdict``. Capabilities:
#: ``reads`` (``"tensor"``: the parts of all rows stacked into one ``(N, ...)`` tensor;
#: ``"rows"``: a list of per-input parts), ``metrics`` (names it records) and ``fast`` (the fast
#: engine may classify with it: tensor parts, no metrics).
CRITERIA: Registry[Callable[..., Any]] = Registry("criterion", plural="criteria")


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
        return dict(CRITERIA.info(self.name).capabilities)

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
        >>> list_criteria("t*")
        ['tokens', 'tolerance', 'top1', 'topk']
    """
    return CRITERIA.list(filter)


def is_criterion(name: str) -> bool:
    """Whether ``name`` is a registered criterion."""
    return CRITERIA.is_registered(name)


# ------------------------------------------------------------------------ helpers
def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1)


def output_words_equal(golden: torch.Tensor, faulty: torch.Tensor) -> torch.Tensor:
    """Per row: whether the two outputs are bit-identical (NaN payloads included).

    Example:
        >>> import torch
        >>> output_words_equal(torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [0, -0.0, 0]])).tolist()
        [True, False]
    """
    g, f = _flat(golden), _flat(faulty)
    if g.dtype.is_floating_point and g.dtype == f.dtype and g.element_size() in (2, 4, 8):
        idt = {2: torch.int16, 4: torch.int32, 8: torch.int64}[g.element_size()]
        return (g.contiguous().view(idt) == f.contiguous().view(idt)).all(dim=1)
    return (g == f).all(dim=1)


def _nan_low(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(x), torch.full_like(x, -float("inf")), x)


def _top1(g: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gf, ff = _flat(g).double(), _flat(f).double()
    return gf.argmax(dim=1), _nan_low(ff).argmax(dim=1)


def _max_diff(g: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    gf, ff = _flat(g).double(), _flat(f).double()
    diff = (ff - gf).abs()
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    if not diff.shape[1]:
        return torch.zeros(diff.shape[0], dtype=torch.float64)
    return diff.max(dim=1).values


def _finite_rows(f: torch.Tensor) -> torch.Tensor:
    ff = _flat(f)
    if not ff.dtype.is_floating_point and not ff.dtype.is_complex:
        return torch.ones(ff.shape[0], dtype=torch.bool)
    return torch.isfinite(ff).all(dim=1)


# ------------------------------------------------------------------------ built-in criteria
@CRITERIA.register("top1", description="The top-1 class changed.", reads="tensor", fast=True)
def _crit_top1(g: torch.Tensor, f: torch.Tensor, crit: Criterion) -> Verdict:
    gt, ft = _top1(g, f)
    return Verdict(gt != ft, gt, ft)


@CRITERIA.register(
    "topk", description="The golden top-1 class left the faulty top-k.", reads="tensor", fast=True
)
def _crit_topk(g: torch.Tensor, f: torch.Tensor, crit: Criterion) -> Verdict:
    gt, ft = _top1(g, f)
    ff = _nan_low(_flat(f).double())
    k = min(crit.topk, ff.shape[1])
    top = ff.topk(k, dim=1).indices
    return Verdict(~(top == gt[:, None]).any(dim=1), gt, ft)


@CRITERIA.register(
    "tolerance",
    description="Some element moved by more than tolerance + rtol * |golden|.",
    reads="tensor",
    fast=True,
)
def _crit_tolerance(g: torch.Tensor, f: torch.Tensor, crit: Criterion) -> Verdict:
    gt, ft = _top1(g, f)
    gf, ff = _flat(g).double(), _flat(f).double()
    diff = (ff - gf).abs()
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    bound = crit.tolerance + crit.rtol * gf.abs()
    changed = (diff > bound).any(dim=1) if diff.shape[1] else torch.zeros(len(gf), dtype=torch.bool)
    return Verdict(changed, gt, ft)


@CRITERIA.register(
    "regression",
    description="Relative error ||faulty - golden|| / ||golden|| above threshold.",
    reads="tensor",
    metrics=("rel_error",),
)
def _crit_regression(g: torch.Tensor, f: torch.Tensor, crit: Criterion) -> Verdict:
    gf, ff = _flat(g).double(), _flat(f).double()
    num = torch.linalg.vector_norm(ff - gf, dim=1)
    den = torch.linalg.vector_norm(gf, dim=1)
    rel = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, math.inf, 0.0))
    rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, math.inf))
    return Verdict(rel > crit.threshold, None, None, {"rel_error": rel.tolist()})


def _pixel_classes(x: torch.Tensor) -> torch.Tensor:
    if x.dtype.is_floating_point:
        return _nan_low(x.double()).argmax(dim=1)
    return x


def _miou(gc: torch.Tensor, fc: torch.Tensor) -> float:
    """Mean IoU of one faulty class map against the golden one (classes present in either)."""
    ious = []
    for c in torch.unique(torch.cat([gc.reshape(-1), fc.reshape(-1)])).tolist():
        gm, fm = gc == c, fc == c
        union = int((gm | fm).sum())
        if union:
            ious.append(int((gm & fm).sum()) / union)
    return sum(ious) / len(ious) if ious else 1.0


@CRITERIA.register(
    "segmentation",
    description="Per-pixel classes: SDC when more than `fraction` of the pixels change class.",
    reads="tensor",
    metrics=("changed_pixels", "miou_drop"),
)
def _crit_segmentation(g: torch.Tensor, f: torch.Tensor, crit: Criterion) -> Verdict:
    gc, fc = _pixel_classes(g), _pixel_classes(f)
    changed = (gc != fc).reshape(len(gc), -1).double().mean(dim=1)
    drop = [1.0 - _miou(gc[i], fc[i]) for i in range(len(gc))]
    return Verdict(
        changed > crit.fraction, None, None, {"changed_pixels": changed.tolist(), "miou_drop": drop}
    )


@CRITERIA.register(
    "tokens",
    description="Per-token top-1: SDC when more than k tokens change (k=0: any).",
    reads="tensor",
    metrics=("changed_tokens",),
)
def _crit_tokens(g: torch.Tensor, f: torch.Tensor, crit: Criterion) -> Verdict:
    if g.dtype.is_floating_point:
        gt, ft = _nan_low(g.double()).argmax(dim=-1), _nan_low(f.double()).argmax(dim=-1)
    else:
        gt, ft = g, f
    n = (gt != ft).reshape(len(gt), -1).sum(dim=1)
    return Verdict(n > crit.k, None, None, {"changed_tokens": [float(v) for v in n.tolist()]})


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of boxes ``(x1, y1, x2, y2)``."""
    a, b = a.double(), b.double()
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(inter))


def _detections(d: Any, crit: Criterion) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keys = crit.params.get("keys", {}) if crit.params else {}
    bk, lk, sk = (
        keys.get("boxes", "boxes"),
        keys.get("labels", "labels"),
        keys.get("scores", "scores"),
    )
    boxes = torch.as_tensor(d[bk]).reshape(-1, 4)
    labels = torch.as_tensor(d[lk]).reshape(-1)
    scores = torch.as_tensor(d[sk]).reshape(-1) if sk in d else torch.ones(len(labels))
    keep = ~(scores.double() < crit.score_threshold)  # NaN scores are kept (and never match)
    return boxes[keep], labels[keep], scores[keep]


def match_detections(g: Any, f: Any, crit: Criterion) -> tuple[int, int, int]:
    """``(appeared, disappeared, class_changed)`` between two per-input detection dicts.

    Example:
        >>> import torch
        >>> g = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}
        >>> f = {"boxes": torch.tensor([[0.0, 0, 10, 11]]), "labels": torch.tensor([3]), "scores": torch.tensor([0.9])}
        >>> match_detections(g, f, Criterion("detection"))
        (0, 1, 1)
    """
    gb, gl, gs = _detections(g, crit)
    fb, fl, fs = _detections(f, crit)
    if not len(gb) or not len(fb):
        return len(fb), len(gb), 0
    iou = _box_iou(gb, fb)
    iou = torch.where(torch.isfinite(iou), iou, torch.zeros_like(iou))
    pairs: list[tuple[int, int]] = []
    if crit.matching == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(iou.numpy(), maximize=True)
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= crit.iou]
    else:
        used: set[int] = set()
        for gi in torch.argsort(gs.double(), descending=True, stable=True).tolist():
            best, bj = -1.0, -1
            for fj in range(len(fb)):
                if fj not in used and float(iou[gi, fj]) >= crit.iou and float(iou[gi, fj]) > best:
                    best, bj = float(iou[gi, fj]), fj
            if bj >= 0:
                used.add(bj)
                pairs.append((gi, bj))
    changed = sum(1 for gi, fj in pairs if int(gl[gi]) != int(fl[fj]))
    return len(fb) - len(pairs), len(gb) - len(pairs), changed


@CRITERIA.register(
    "detection",
    description="Boxes matched at an IoU threshold: SDC when a detection appears, disappears or changes class.",
    reads="rows",
    metrics=("appeared", "disappeared", "class_changed"),
)
def _crit_detection(g: Sequence[Any], f: Sequence[Any], crit: Criterion) -> Verdict:
    m = [match_detections(a, b, crit) for a, b in zip(g, f)]
    sdc = torch.tensor([any(v) for v in m], dtype=torch.bool)
    return Verdict(
        sdc,
        None,
        None,
        {
            "appeared": [float(v[0]) for v in m],
            "disappeared": [float(v[1]) for v in m],
            "class_changed": [float(v[2]) for v in m],
        },
    )


# ------------------------------------------------------------------------ classification
def classify(
    golden: torch.Tensor, faulty: torch.Tensor, criterion: Criterion | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classify each row of ``faulty`` against the same row of ``golden`` (tensor outputs, a
    ``fast`` criterion: ``top1``, ``topk``, ``tolerance``).

    Returns:
        ``(codes, golden_top1, faulty_top1, max_abs_diff)``: outcome codes index ``OUTCOMES``.

    Example:
        >>> import torch
        >>> g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
        >>> f = torch.tensor([[1.0, 0.0], [1.0, 0.5], [0.0, 2.0], [float("nan"), 0.0]])
        >>> [OUTCOMES[c] for c in classify(g, f)[0]]
        ['masked', 'benign', 'sdc', 'due']
    """
    criterion = criterion or Criterion()
    g, f = golden.detach(), faulty.detach()
    if _flat(g).shape != _flat(f).shape:
        raise TorchFaultError(
            f"faulty output shape {tuple(f.shape)} differs from golden {tuple(g.shape)}."
        )
    same = output_words_equal(g, f)
    max_diff = _max_diff(g, f)
    fn = (
        CRITERIA.get(criterion.name) if criterion.fn is None and ":" not in criterion.name else None
    )
    if fn is None or CRITERIA.info(criterion.name).capabilities.get("reads") != "tensor":
        raise TorchFaultError(f"classify: criterion {criterion.label!r} needs evaluate().")
    v = fn(g, f, criterion)
    gt, ft = _top1(g, f)
    codes = torch.full((g.shape[0],), _CODE["benign"], dtype=torch.int64)
    codes[v.sdc] = _CODE["sdc"]
    codes[~_finite_rows(f)] = _CODE["due"]
    codes[same] = _CODE["masked"]
    max_diff = torch.where(same, torch.zeros_like(max_diff), max_diff)
    return codes, gt, ft, max_diff


@dataclass
class Evaluation:
    """Per row: outcome, top-1 classes (or ``None``), largest absolute difference, metrics."""

    outcomes: list[str]
    golden_top1: list[int | None]
    faulty_top1: list[int | None]
    max_abs_diff: list[float | None]
    metrics: list[dict[str, float | None] | None]


def _same_output(g: Any, f: Any) -> bool:
    from torchfault.campaign._structure import leaves

    lg, lf = leaves(g), leaves(f)
    if [p for p, _ in lg] != [p for p, _ in lf]:
        return False
    for (_, a), (_, b) in zip(lg, lf):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.numel() and not bool(output_words_equal(a.reshape(1, -1), b.reshape(1, -1)).all()):
            return False
    return True


def _row_max_diff(g: Any, f: Any) -> float | None:
    from torchfault.campaign._structure import leaves

    lg, lf = leaves(g), leaves(f)
    if [p for p, _ in lg] != [p for p, _ in lf]:
        return None
    best = 0.0
    for (_, a), (_, b) in zip(lg, lf):
        if a.shape != b.shape:
            return None
        if a.numel():
            best = max(best, float(_max_diff(a.reshape(1, -1), b.reshape(1, -1))[0]))
    return best


def _finite_part(x: Any) -> bool:
    from torchfault.campaign._structure import leaves

    return all(bool(_finite_rows(t.reshape(1, -1)).all()) for _, t in leaves(x) if t.numel())


def _as_list(v: Any, n: int) -> list[Any]:
    if v is None:
        return [None] * n
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.reshape(-1).tolist()]
    return list(v)


def _user_outcome(res: Any, crit: Criterion) -> tuple[str, dict[str, float | None] | None]:
    metrics = None
    if isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], Mapping):
        res, raw = res
        try:
            metrics = {
                str(k): (
                    None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                )
                for k, v in raw.items()
            }
        except (TypeError, ValueError) as exc:
            raise CriterionError(
                f"criterion {crit.label!r} returned metrics that are not numbers: {raw!r} ({exc})."
            ) from None
    if isinstance(res, torch.Tensor) and res.numel() == 1:
        res = bool(res)
    if isinstance(res, bool):
        return ("sdc" if res else "benign"), metrics
    if res in ("sdc", "benign", "due"):
        return str(res), metrics
    if res == "masked":  # the output changed (masked runs never reach the criterion)
        return "benign", metrics
    raise CriterionError(
        f"criterion {crit.label!r} returned {res!r}; a criterion returns 'sdc', 'benign' or "
        "'due' (or True/False for SDC or not), optionally with a dict of metrics."
    )


def evaluate(golden: Any, faulty: Any, criterion: Criterion, where: str = "") -> Evaluation:
    """Classify each run: ``golden`` and ``faulty`` are ``(N, ...)`` tensors (rows first) or
    lists with one output per input (any structure).

    Raises:
        CriterionError: the criterion raised or returned something that is not an outcome.

    Example:
        >>> import torch
        >>> g = [{"logits": torch.tensor([1.0, 0.0])}] * 2
        >>> f = [{"logits": torch.tensor([1.0, 0.0])}, {"logits": torch.tensor([0.0, 3.0])}]
        >>> evaluate(g, f, Criterion("top1", output="logits")).outcomes
        ['masked', 'sdc']
    """
    from torchfault.campaign._structure import select, stack_rows

    if isinstance(golden, torch.Tensor) and isinstance(faulty, torch.Tensor) and criterion.fast:
        codes, gt, ft, diff = classify(golden, faulty, criterion)
        n = len(codes)
        return Evaluation(
            [OUTCOMES[int(c)] for c in codes.tolist()],
            [int(v) for v in gt.tolist()],
            [int(v) for v in ft.tolist()],
            [float(v) for v in diff.tolist()],
            [None] * n,
        )
    tensors = isinstance(golden, torch.Tensor) and isinstance(faulty, torch.Tensor)
    n = len(golden)
    if tensors:
        if _flat(golden).shape != _flat(faulty).shape:
            raise TorchFaultError(
                f"faulty output shape {tuple(faulty.shape)} differs from golden {tuple(golden.shape)}."
            )
        same = output_words_equal(golden, faulty).tolist()
        diffs: list[float | None] = [float(v) for v in _max_diff(golden, faulty).tolist()]
        g_rows: Any = golden.detach()
        f_rows: Any = faulty.detach()
        if criterion.output not in (None, ""):
            raise TorchFaultError(
                f"outcome.output: the model returns a single tensor; there is no part "
                f"{criterion.output!r} to read (leave outcome.output unset)."
            )
    else:
        same = [_same_output(a, b) for a, b in zip(golden, faulty)]
        diffs = [_row_max_diff(a, b) for a, b in zip(golden, faulty)]
        g_rows = [select(r, criterion.output) for r in golden]
        f_rows = [select(r, criterion.output) for r in faulty]
    diffs = [0.0 if s else d for s, d in zip(same, diffs)]
    outcomes: list[str] = []
    metrics: list[dict[str, float | None] | None] = [None] * n
    g_top: list[int | None] = [None] * n
    f_top: list[int | None] = [None] * n
    fn = criterion.callable
    reshaped: set[int] = set()
    try:
        if fn is not None:
            for i in range(n):
                if same[i]:
                    outcomes.append("masked")
                    continue
                gi, fi = (g_rows[i], f_rows[i])
                if not _finite_part(fi):
                    outcomes.append("due")
                    continue
                res = fn(gi, fi)
                out, m = _user_outcome(res, criterion)
                outcomes.append(out)
                metrics[i] = m
            return Evaluation(outcomes, g_top, f_top, diffs, metrics)
        info = CRITERIA.info(criterion.name)
        impl = info.obj
        reads = info.capabilities.get("reads", "tensor")
        if reads == "tensor":
            if tensors:
                gt_, ft_ = g_rows, f_rows
            else:
                _check_tensor_parts(g_rows, criterion)
                _check_tensor_parts(f_rows, criterion)
                # a fault that changed the shape of the part read is an SDC: the criterion
                # sees golden in its place, and its outcome and metrics are overridden below
                reshaped = {i for i in range(n) if g_rows[i].shape != f_rows[i].shape}
                kept = [g_rows[i] if i in reshaped else f_rows[i] for i in range(n)]
                gt_, ft_ = stack_rows(g_rows), stack_rows(kept)
            v = impl(gt_, ft_, criterion)
            finite = _finite_rows(ft_).tolist()
            for i in reshaped:
                finite[i] = _finite_part(f_rows[i])
        else:
            v = impl(list(g_rows), list(f_rows), criterion)
            finite = [_finite_part(x) for x in f_rows]
    except (TorchFaultError, CriterionError):
        raise
    except Exception as exc:  # noqa: BLE001 - a criterion's bug is never an outcome
        raise CriterionError(
            f"outcome.criterion {criterion.label!r} raised{where} "
            f"({type(exc).__name__}: {exc}); this is an error of the criterion, not an outcome."
        ) from exc
    sdc = v.sdc.reshape(-1).tolist()
    for i in reshaped:
        sdc[i] = True
    g_top = _as_list(v.golden_top1, n)
    f_top = _as_list(v.faulty_top1, n)
    names = list(v.metrics)
    for i in range(n):
        if same[i]:
            outcomes.append("masked")
        elif not finite[i]:
            outcomes.append("due")
        else:
            outcomes.append("sdc" if sdc[i] else "benign")
        if names and i not in reshaped:
            metrics[i] = {
                k: (
                    None
                    if v.metrics[k][i] is None or math.isnan(v.metrics[k][i])
                    else float(v.metrics[k][i])
                )
                for k in names
            }
    return Evaluation(outcomes, g_top, f_top, diffs, metrics)


def _check_tensor_parts(parts: Sequence[Any], crit: Criterion) -> None:
    for p in parts[:1]:
        if not isinstance(p, torch.Tensor):
            from torchfault.campaign._structure import leaves

            paths = [q for q, _ in leaves(p)]
            if isinstance(p, Mapping) and "boxes" in p:
                hint = " (one dict of boxes per input: use criterion 'detection')"
            elif paths:
                hint = f" (set outcome.output to the tensor to read, one of {paths[:8]})"
            else:
                hint = ""
            raise TorchFaultError(
                f"outcome.criterion {crit.label!r} reads a tensor, but the output part "
                f"{crit.output!r} is a {type(p).__name__}{hint}."
            )


def check_fit(golden_rows: Any, crit: Criterion) -> None:
    """Check, on golden outputs, that ``crit`` fits the output: a clear error (or a warning)
    that names the criterion to use; a callable criterion must run on them.

    ``golden_rows``: a ``(N, ...)`` tensor or a list of per-input outputs.
    """
    from torchfault.campaign._structure import select, stack_rows

    if isinstance(golden_rows, torch.Tensor):
        if crit.output not in (None, ""):
            raise TorchFaultError(
                f"outcome.output: the model returns a single tensor; there is no part "
                f"{crit.output!r} to read (leave outcome.output unset)."
            )
        part: Any = golden_rows
        row_parts: list[Any] = list(golden_rows[:2])
    else:
        row_parts = [select(r, crit.output) for r in golden_rows[:2]]
        part = row_parts[0] if row_parts else None
        if row_parts and isinstance(part, torch.Tensor):
            with contextlib.suppress(TorchFaultError):
                part = stack_rows(row_parts)
    fn = crit.callable
    if fn is not None:
        try:
            _user_outcome(fn(row_parts[0], row_parts[0]), crit)
        except CriterionError as exc:
            raise TorchFaultError(f"outcome.criterion: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - name the criterion and what it raised
            raise TorchFaultError(
                f"outcome.criterion: {crit.label!r} raised on the golden output "
                f"({type(exc).__name__}: {exc}); it is called as fn(golden, faulty) with one "
                "input's output part, its batch dimension removed."
            ) from None
        return
    name = crit.name
    reads = CRITERIA.info(name).capabilities.get("reads", "tensor")
    if reads == "rows":
        if name == "detection":
            for p in row_parts:
                if not isinstance(p, Mapping) or "boxes" not in p or "labels" not in p:
                    got = list(p.keys()) if isinstance(p, Mapping) else type(p).__name__
                    raise TorchFaultError(
                        f"outcome.criterion 'detection' reads one dict per input with 'boxes' and "
                        f"'labels' (and 'scores'), got {got}."
                    )
        return
    _check_tensor_parts(row_parts, crit)
    shape = tuple(part.shape[1:])
    if name in ("top1", "topk"):
        cols = int(torch.tensor(shape).prod()) if shape else 1
        if cols == 1:
            raise TorchFaultError(
                f"outcome.criterion {name!r}: the output has one value per input (shape "
                f"{tuple(part.shape)}), so its top-1 class is always 0 and no fault can change "
                "it; use criterion 'regression' (relative error above threshold) or "
                "'tolerance' (absolute/relative tolerance)."
            )
        if len(shape) > 1:
            what = "segmentation" if len(shape) >= 3 else "tokens"
            msg = (
                f"outcome.criterion {name!r} over a {len(shape)}-d output per input {shape} takes "
                f"the top-1 of the flattened map, which is not a class; use criterion "
                f"'{what}' (per-{'pixel' if what == 'segmentation' else 'token'} classes), or "
                "'tolerance'."
            )
            warnings.warn(msg, UserWarning, stacklevel=3)
            log.warning(msg)
    elif name == "segmentation":
        if (part.dtype.is_floating_point and len(shape) < 3) or len(shape) < 2:
            raise TorchFaultError(
                f"outcome.criterion 'segmentation' reads (N, C, H, W) scores or (N, H, W) class "
                f"maps, got shape {tuple(part.shape)}; for one class per input use 'top1'."
            )
    elif name == "tokens":
        if (part.dtype.is_floating_point and len(shape) != 2) or len(shape) < 1:
            raise TorchFaultError(
                f"outcome.criterion 'tokens' reads (N, T, V) scores or (N, T) token ids, got "
                f"shape {tuple(part.shape)}; for one class per input use 'top1', for "
                "(N, C, H, W) class scores 'segmentation'."
            )
    elif name in ("regression", "tolerance") and not part.dtype.is_floating_point:
        raise TorchFaultError(
            f"outcome.criterion {name!r} reads a floating-point output, got {part.dtype}."
        )
