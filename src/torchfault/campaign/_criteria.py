# SPDX-License-Identifier: MIT
"""The built-in outcome criteria (registered in :data:`CRITERIA` on import): ``top1``, ``topk``,
``tolerance``, ``regression``, ``segmentation``, ``tokens``, ``detection``, and the tensor
helpers they share (bitwise output comparison, NaN-safe top-1, box matching)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from torchfault.campaign._criterion import CRITERIA, Criterion, Verdict

__all__ = ["match_detections", "output_words_equal", "words_equal"]


#: the integer dtype of each float word size (bitwise comparisons)
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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
        g, f = g.contiguous(), f.contiguous()
        # the words of a row compared eight bytes at a time where they fill whole 8-byte words
        size, row = g.element_size(), g.shape[1] * g.element_size()
        if row and row % 8 == 0 and all(t.storage_offset() * size % 8 == 0 for t in (g, f)):
            size = 8
        idt = _INT_OF_SIZE[size]
        return _rows_all(g.view(idt) == f.view(idt))
    return _rows_all(g == f)


def _rows_all(equal: torch.Tensor) -> torch.Tensor:
    """``equal.all(dim=1)`` for a 2-d boolean tensor, read as bytes (the smallest byte of each
    row: a faster reduction than ``all`` on CPU)."""
    if not equal.shape[1]:
        return torch.ones(equal.shape[0], dtype=torch.bool)
    return equal.view(torch.uint8).amin(dim=1).bool()


#: from this many words on, two CPU tensors of integer words are compared by NumPy (one
#: vectorised loop: a few times faster than ``torch.equal`` on large tensors, the same answer)
_NUMPY_FROM = 4096
_NUMPY_WORDS = frozenset({torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64})


def words_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same words: same shape, dtype and bits (NaN payloads and
    signed zeros included), in one comparison (no per-row result, any memory layout).

    Example:
        >>> import torch
        >>> nan = torch.tensor([float("nan")])
        >>> words_equal(nan, nan.clone()), words_equal(torch.zeros(1), -torch.zeros(1))
        (True, False)
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    idt = _INT_OF_SIZE.get(a.element_size()) if a.dtype.is_floating_point else None
    if idt is not None:
        a, b = a.view(idt), b.view(idt)
    if (
        a.numel() >= _NUMPY_FROM
        and a.dtype in _NUMPY_WORDS
        and a.device.type == b.device.type == "cpu"
        and a.layout == b.layout == torch.strided
    ):
        if (
            a.is_contiguous()
            and b.is_contiguous()
            and a.numel() * a.element_size() % 8 == 0
            and a.data_ptr() % 8 == b.data_ptr() % 8 == 0
            and a.storage_offset() * a.element_size() % 8 == 0
            and b.storage_offset() * b.element_size() % 8 == 0
        ):  # the same bytes, eight at a time
            a, b = a.reshape(-1).view(torch.int64), b.reshape(-1).view(torch.int64)
        return bool(np.array_equal(a.detach().numpy(), b.detach().numpy()))
    return bool(torch.equal(a, b))


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
