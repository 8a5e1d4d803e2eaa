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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchfault.campaign._criteria import (  # importing it registers the built-in criteria
    _finite_rows,
    _flat,
    _max_diff,
    _top1,
    match_detections,
    output_words_equal,
    words_equal,
)
from torchfault.campaign._criterion import (
    CRITERIA,
    Criterion,
    CriterionCapabilities,
    CriterionError,
    Verdict,
    criterion_capabilities,
    is_criterion,
    list_criteria,
    register_criterion,
)
from torchfault.errors import TorchFaultError
from torchfault.store import OUTCOMES

__all__ = [
    "CRITERIA",
    "OUTCOMES",
    "Criterion",
    "CriterionCapabilities",
    "criterion_capabilities",
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
    "words_equal",
]

log = logging.getLogger("torchfault.campaign")

_CODE = {name: i for i, name in enumerate(OUTCOMES)}


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
    if fn is None or criterion_capabilities(criterion.name).reads != "tensor":
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
        reads = criterion_capabilities(criterion.name).reads
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
    reads = criterion_capabilities(name).reads
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
