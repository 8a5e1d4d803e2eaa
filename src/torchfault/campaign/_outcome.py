# SPDX-License-Identifier: MIT
"""Classifying a faulty output against the golden one: masked, benign, SDC or DUE.

- ``masked``: the faulty output is bit-identical to the golden output;
- ``due``: the output holds a NaN or an infinity (or the model raised under the fault);
- ``sdc``: the prediction criterion changed: by default the top-1 class; with ``topk=k`` the
  golden top-1 class left the faulty top-k; with ``tolerance`` any logit moved by more than it;
- ``benign``: the output changed but the criterion did not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchfault.errors import TorchFaultError

__all__ = ["OUTCOMES", "Criterion", "classify", "output_words_equal"]

OUTCOMES = ("masked", "benign", "sdc", "due")
_CODE = {name: i for i, name in enumerate(OUTCOMES)}


@dataclass(frozen=True)
class Criterion:
    """What counts as a silent data corruption.

    Attributes:
        name: ``"top1"``, ``"topk"`` (golden top-1 missing from the faulty top-``topk``) or
            ``"tolerance"`` (some output element moved by more than ``tolerance``).
        topk: k for ``"topk"``.
        tolerance: absolute tolerance for ``"tolerance"``.
    """

    name: str = "top1"
    topk: int = 1
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("top1", "topk", "tolerance"):
            raise TorchFaultError(
                f"criterion: {self.name!r} is not valid; choose top1, topk or tolerance."
            )
        if self.topk < 1:
            raise TorchFaultError(f"criterion.topk must be >= 1, got {self.topk}.")
        if self.tolerance < 0:
            raise TorchFaultError(f"criterion.tolerance must be >= 0, got {self.tolerance}.")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1)


def output_words_equal(golden: torch.Tensor, faulty: torch.Tensor) -> torch.Tensor:
    """Per row: whether the two outputs are bit-identical (NaN payloads included)."""
    g, f = _flat(golden), _flat(faulty)
    if g.dtype.is_floating_point and g.dtype == f.dtype and g.element_size() in (2, 4, 8):
        idt = {2: torch.int16, 4: torch.int32, 8: torch.int64}[g.element_size()]
        return (g.contiguous().view(idt) == f.contiguous().view(idt)).all(dim=1)
    return (g == f).all(dim=1)


def classify(
    golden: torch.Tensor, faulty: torch.Tensor, criterion: Criterion | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classify each row of ``faulty`` against the same row of ``golden``.

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
    g, f = _flat(golden).detach(), _flat(faulty).detach()
    if g.shape != f.shape:
        raise TorchFaultError(
            f"faulty output shape {tuple(f.shape)} differs from golden {tuple(g.shape)}."
        )
    same = output_words_equal(g, f)
    gf, ff = g.double(), f.double()
    finite = torch.isfinite(ff).all(dim=1)
    diff = (ff - gf).abs()
    diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
    max_diff = (
        diff.max(dim=1).values if diff.shape[1] else torch.zeros(diff.shape[0], dtype=torch.float64)
    )
    g_top = gf.argmax(dim=1)
    f_top = torch.where(torch.isnan(ff), torch.full_like(ff, -float("inf")), ff).argmax(dim=1)
    if criterion.name == "top1":
        changed = g_top != f_top
    elif criterion.name == "topk":
        k = min(criterion.topk, ff.shape[1])
        topk = (
            torch.where(torch.isnan(ff), torch.full_like(ff, -float("inf")), ff)
            .topk(k, dim=1)
            .indices
        )
        changed = ~(topk == g_top[:, None]).any(dim=1)
    else:
        changed = max_diff > criterion.tolerance
    codes = torch.full((g.shape[0],), _CODE["benign"], dtype=torch.int64)
    codes[changed] = _CODE["sdc"]
    codes[~finite] = _CODE["due"]
    codes[same] = _CODE["masked"]
    max_diff = torch.where(same, torch.zeros_like(max_diff), max_diff)
    return codes, g_top, f_top, max_diff
