# SPDX-License-Identifier: MIT
"""Confirming a protection plan by re-running: the measured SDC rate next to the predicted one.

:func:`torchfault.analysis.layers_to_protect` predicts, from unprotected traces, the SDC rate
with ``ranger`` on the layers it chooses; that prediction is a model (its docstring says what it
leaves out). :func:`confirm_plan` measures it: it re-runs the plan's held-out faults (or its
training faults) on the same inputs with :func:`run_campaign`, once without and once with
``ranger`` on ``plan.layers`` (``protection={"name": "ranger", "profile": profile, "layers":
[...]}``), and reports both measured rates beside the predicted one. The split is the plan's
own (``plan.held_out(fault_id)``), so the faults must be the ones the traces were made with,
fault id = position (or the campaign's ``{fault_id: faults}``). The figures are exact counts of
those runs; the error is the model's on this sample of faults, which has its own sampling
noise (a few faults can carry most SDCs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchfault.analysis import ProtectionPlan
from torchfault.campaign._engine import DEFAULT_ENGINE
from torchfault.campaign._protection import ProtectionResult
from torchfault.campaign._run import run_campaign
from torchfault.errors import TorchFaultError
from torchfault.faults import Fault

__all__ = ["PlanCheck", "confirm_plan"]

SPLITS = ("held_out", "train")


@dataclass(frozen=True)
class PlanCheck:
    """A protection plan checked by a re-run (:func:`confirm_plan`).

    Attributes:
        layers: the protected layers (the plan's).
        split: ``held_out`` or ``train``: which of the plan's faults were re-run.
        faults, runs: how many faults and runs were re-run.
        predicted: the plan's predicted SDC rate on those runs with ``layers`` protected.
        sdc_without, sdc_with: the measured SDC rates without and with ranger on ``layers``.
        protection: the protected campaign's :class:`ProtectionResult` (``None`` when the plan
            has no layer: nothing to protect, ``sdc_with`` is ``sdc_without``).
    """

    layers: tuple[str, ...]
    split: str
    faults: int
    runs: int
    predicted: float
    sdc_without: float
    sdc_with: float
    protection: ProtectionResult | None = field(default=None, repr=False)

    @property
    def error(self) -> float:
        """Measured minus predicted SDC rate with the protection (> 0: the plan was optimistic)."""
        return self.sdc_with - self.predicted


def confirm_plan(
    plan: ProtectionPlan,
    model: nn.Module,
    inputs: torch.Tensor,
    faults: Sequence[Fault | Sequence[Fault]] | Mapping[int, Fault | Sequence[Fault]],
    profile: Any,
    labels: torch.Tensor | None = None,
    *,
    split: str = "held_out",
    criterion: str = "top1",
    engine: str = DEFAULT_ENGINE,
    batch_size: int = 256,
) -> PlanCheck:
    """Re-run a plan's faults without and with ``ranger`` on its layers (see the module
    docstring).

    Args:
        plan: the answer of :func:`~torchfault.analysis.layers_to_protect`.
        model, inputs, labels: as the traced campaign's.
        faults: the traced campaign's faults, fault id = position, or ``{fault_id: faults}``.
        profile: the range profile ranger clamps to (the one the traces were made with), or
            its file.
        split: ``held_out`` (default: the faults the plan was not chosen on) or ``train``.
        criterion, engine, batch_size: of the campaigns (:func:`run_campaign`).

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault import Fault
        >>> from torchfault.analysis import layers_to_protect
        >>> from torchfault.injectors import profile_ranges
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> x = torch.randn(16, 4)
        >>> prof = profile_ranges(m, x)
        >>> fs = [Fault("0", "weight", (r, c), (30,)) for r in range(8) for c in range(4)]
        >>> traced = run_campaign(m, x, fs, trace=prof)
        >>> out = {(r.fault_id, r.input_id): r.outcome for r in traced.runs}
        >>> plan = layers_to_protect(traced.traces, out, traced.faults, 0.01, prof,
        ...                          validation=0.5, min_runs=1)
        >>> check = confirm_plan(plan, m, x, fs, prof)
        >>> check.layers == plan.layers, check.predicted == plan.val_predicted
        (True, True)
        >>> check.sdc_with <= check.sdc_without
        True
    """
    if not isinstance(plan, ProtectionPlan):
        raise TorchFaultError(
            f"plan: expected a ProtectionPlan (layers_to_protect's answer), got "
            f"{type(plan).__name__}.",
            field="plan",
        )
    if split not in SPLITS:
        raise TorchFaultError(
            f"split: {split!r} is not valid; choose held_out or train.", field="split"
        )
    pairs = faults.items() if isinstance(faults, Mapping) else enumerate(faults)
    want = split == "held_out"
    chosen = [(int(k), f) for k, f in pairs if plan.held_out(int(k)) == want]
    if not chosen:
        raise TorchFaultError(
            f"faults: none of them is in the plan's {split} split (validation "
            f"{plan.validation}, seed {plan.seed}); give the faults the traces were made with.",
            field="faults",
        )
    protection = None
    if plan.layers:
        protection = {"name": "ranger", "profile": profile, "layers": list(plan.layers)}
    result = run_campaign(
        model,
        inputs,
        [f for _, f in chosen],
        labels,
        criterion=criterion,
        engine=engine,
        batch_size=batch_size,
        protection=protection,
    )
    runs = len(result.runs)
    without = sum(r.outcome == "sdc" for r in result.runs) / runs if runs else math.nan
    prot = result.protection
    if prot is None:
        with_ = without
    else:
        with_ = sum(r.outcome == "sdc" for r in prot.runs) / runs if runs else math.nan
    return PlanCheck(
        layers=tuple(plan.layers),
        split=split,
        faults=len(chosen),
        runs=runs,
        predicted=plan.val_predicted if want else plan.predicted,
        sdc_without=without,
        sdc_with=with_,
        protection=prot,
    )
