# SPDX-License-Identifier: MIT
"""What a protection buys: the same faults on the same inputs, with and without it.

:func:`protected_runs` (called by ``run_campaign(..., protection=...)``) puts a protection
(:mod:`torchfault.injectors`: ``ranger``, ``clip``, ``detect``) on the model and re-runs every
fault of the campaign with the plain reference loop: inject, one full forward pass, compare with
the **unprotected** golden outputs (the answer the user wants), read the rows the protection
flagged. Protected runs always use this loop, whatever engine ran the unprotected ones, so the
records are the same for every engine (the fast engine's suffix execution does not see the
protection's hooks; handing these runs to full re-execution is the simple exact choice).

Outcomes of a protected run: ``masked``, ``benign``, ``sdc``, ``due`` as usual, and
``detected`` where a detecting (non-correcting) protection flagged the run; ``correct`` then
says whether the output was still right (masked or benign under the criterion).

Also measured: the false-positive rate (golden inputs the protection flags; the summary also
holds the count and the number of golden inputs, ``false_positives`` of ``fault_free_inputs``,
so that a reader can give the rate its interval), the accuracy cost
(golden inputs whose class the protection changes; and the label accuracy with and without it
when labels are given) and the overhead (protected over plain fault-free forward time, best of
``repeats`` timed passes over all inputs).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._engine import (
    MIN_ROWS,
    ReferenceEngine,
    RunTask,
    _forward,
    _random_faults,
    run_seed,
)
from torchfault.campaign._outcome import Criterion
from torchfault.errors import TorchFaultError
from torchfault.injectors import Protection, create_protection, inject, load_profile, protect
from torchfault.store import RUN_OUTCOMES, RunRecord

__all__ = [
    "PROTECTED_OUTCOMES",
    "ProtectedRun",
    "ProtectionResult",
    "protected_runs",
    "resolve_protection",
]

#: Outcomes of a protected run: the store's run outcomes (``detected`` included).
PROTECTED_OUTCOMES = RUN_OUTCOMES


@dataclass(frozen=True)
class ProtectedRun:
    """One fault on one input under a protection.

    Attributes:
        fault_id, input_id: the run.
        outcome: one of :data:`PROTECTED_OUTCOMES`.
        flagged: the protection saw a value outside its range during the run.
        correct: the output was masked or benign (for ``detected``: whether the flagged output
            was still right); ``False`` for a DUE.
        faulty_top1: the class under fault and protection (``None`` for a DUE).
        max_abs_diff: largest absolute difference from the unprotected golden output.
    """

    fault_id: int
    input_id: int
    outcome: str
    flagged: bool
    correct: bool
    faulty_top1: int | None = None
    max_abs_diff: float | None = None


def _rate(k: int, n: int) -> float:
    return k / n if n else float("nan")


@dataclass
class ProtectionResult:
    """A protection measured on a campaign's faults (see the module docstring).

    Attributes:
        name: the protection's name.
        runs: the protected runs, ordered like the campaign's runs.
        baseline: the unprotected outcome of each run, ``(fault_id, input_id) -> outcome``.
        golden_flagged: per input, whether the protection flagged the fault-free run.
        golden_changed: per input, whether the protection changed the fault-free class.
        accuracy: ``(without, with)`` label accuracy of the fault-free model (``None``
            without labels).
        seconds: ``(without, with)`` seconds of one fault-free pass over all inputs.
    """

    name: str
    runs: list[ProtectedRun]
    baseline: dict[tuple[int, int], str]
    golden_flagged: list[bool]
    golden_changed: list[bool]
    accuracy: tuple[float, float] | None
    seconds: tuple[float, float]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = Counter(self.baseline.values())
        prot = Counter(r.outcome for r in self.runs)
        self.counts = {
            "without": {o: base.get(o, 0) for o in PROTECTED_OUTCOMES},
            "with": {o: prot.get(o, 0) for o in PROTECTED_OUTCOMES},
        }

    def summary(self) -> dict[str, Any]:
        """The figures: SDC and DUE rates without and with the protection, the detection rate
        (faulty runs flagged, and unprotected SDCs flagged), detected runs still correct, the
        false-positive rate on golden inputs (with its count ``false_positives`` and the number of
        golden inputs ``fault_free_inputs``: the interval's ``k`` and ``n``), the accuracy cost
        and the overhead.

        Example:
            >>> res = ProtectionResult("detect", [ProtectedRun(0, 0, "detected", True, False)],
            ...     {(0, 0): "sdc"}, [False], [False], None, (1.0, 1.5))
            >>> s = res.summary(); s["sdc_without"], s["sdc_with"], s["detection_rate"]
            (1.0, 0.0, 1.0)
            >>> s["overhead"]
            0.5
            >>> s["false_positive_rate"], s["false_positives"], s["fault_free_inputs"]
            (0.0, 0, 1)
        """
        n = len(self.runs)
        base_sdc = [r for r in self.runs if self.baseline[(r.fault_id, r.input_id)] == "sdc"]
        detected = [r for r in self.runs if r.outcome == "detected"]
        acc = self.accuracy
        plain, prot = self.seconds
        return {
            "protection": self.name,
            "runs": n,
            "sdc_without": _rate(self.counts["without"]["sdc"], n),
            "sdc_with": _rate(self.counts["with"]["sdc"], n),
            "due_without": _rate(self.counts["without"]["due"], n),
            "due_with": _rate(self.counts["with"]["due"], n),
            "detected": _rate(len(detected), n),
            "detected_correct": _rate(sum(r.correct for r in detected), len(detected)),
            "detection_rate": _rate(sum(r.flagged for r in self.runs), n),
            "sdc_detection_rate": _rate(sum(r.flagged for r in base_sdc), len(base_sdc)),
            "false_positive_rate": _rate(sum(self.golden_flagged), len(self.golden_flagged)),
            "false_positives": sum(self.golden_flagged),
            "fault_free_inputs": len(self.golden_flagged),
            "accuracy_cost": _rate(sum(self.golden_changed), len(self.golden_changed)),
            "accuracy_without": None if acc is None else acc[0],
            "accuracy_with": None if acc is None else acc[1],
            "overhead": prot / plain - 1 if plain > 0 else float("nan"),
        }


def _timed_golden(
    model: nn.Module, inputs: torch.Tensor, batch_size: int, repeats: int
) -> tuple[torch.Tensor, float]:
    best = float("inf")
    out: torch.Tensor | None = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [
            _forward(model, inputs[i : i + batch_size])
            for i in range(0, inputs.shape[0], batch_size)
        ]
        best = min(best, time.perf_counter() - t0)
        out = torch.cat(outs)  # type: ignore[arg-type]
    assert out is not None
    return out, best


def resolve_protection(protection: Protection | str | dict[str, Any]) -> Protection:
    """A :class:`~torchfault.injectors.Protection` from itself, a registered name, or a dict
    ``{"name": ..., **options}`` (``profile`` may be a file path, read with
    :func:`~torchfault.injectors.load_profile`).

    Example:
        >>> resolve_protection({"name": "clip", "layers": ["fc"], "bound": 6.0}).name
        'clip'
    """
    if isinstance(protection, dict):
        opts = dict(protection)
        name = opts.pop("name", None)
        if not isinstance(name, str):
            raise TorchFaultError(
                f"protection.name: give the protection's name, got {name!r}.",
                field="protection.name",
            )
        if isinstance(opts.get("profile"), (str, os.PathLike)):
            opts["profile"] = load_profile(opts["profile"])
        protection = create_protection(name, **opts)
    elif isinstance(protection, str):
        protection = create_protection(protection)
    if not isinstance(protection, Protection):
        raise TorchFaultError(
            f"protection: expected a Protection, a name or a dict, got {type(protection).__name__}.",
            field="protection",
        )
    return protection


@torch.no_grad()
def protected_runs(
    model: nn.Module,
    inputs: torch.Tensor,
    golden: torch.Tensor,
    criterion: Criterion,
    tasks: Sequence[RunTask],
    baseline: Sequence[RunRecord],
    protection: Protection | str | dict[str, Any],
    batch_size: int,
    labels: torch.Tensor | None = None,
    repeats: int = 10,
) -> ProtectionResult:
    """Re-run ``tasks`` on ``model`` under ``protection`` (see the module docstring).

    Args:
        model: the model, in eval mode.
        inputs: all campaign inputs (a tensor, rows first).
        golden: the unprotected golden outputs.
        criterion: the campaign's criterion.
        tasks: the campaign's runs.
        baseline: the unprotected records of those runs.
        protection: a :class:`~torchfault.injectors.Protection`, a registered name, or a dict
            ``{"name": ..., **options}``.
        batch_size: rows per forward pass.
        labels: true classes, for the accuracy with and without the protection.
        repeats: timed fault-free passes per configuration (the best counts).
    """
    protection = resolve_protection(protection)
    if not isinstance(inputs, torch.Tensor) or not isinstance(golden, torch.Tensor):
        raise TorchFaultError(
            "protection: protected campaigns take a tensor of inputs and a model returning one "
            "tensor.",
            field="protection",
        )
    ref = ReferenceEngine(model, inputs, golden, criterion, batch_size)
    g_top = ref.golden_top1(range(inputs.shape[0]))
    plain_out, plain_s = _timed_golden(model, inputs, batch_size, repeats)
    with protect(model, protection) as prot:
        # fault-free: flags per input (false positives), classes changed (accuracy cost)
        flags: list[bool] = []
        outs = []
        for i in range(0, inputs.shape[0], batch_size):
            prot.reset()
            g_out = _forward(model, inputs[i : i + batch_size])
            n = min(batch_size, inputs.shape[0] - i)
            f = prot.flags
            flags.extend([False] * n if f is None else f[:n].tolist())
            outs.append(g_out)
        prot_golden = torch.cat(outs)  # type: ignore[arg-type]
        _, prot_s = _timed_golden(model, inputs, batch_size, repeats)
        p_top = [
            r.faulty_top1
            for r in ref._records(RunTask(-1, (), ()), range(inputs.shape[0]), prot_golden, 0.0)
        ]
        runs: list[ProtectedRun] = []
        for task in tasks:
            ids = list(task.input_ids)
            random = _random_faults(task)
            size = 1 if random else batch_size
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                seed = run_seed(task, chunk[0]) if random else None
                prot.reset()
                out: Any = None
                with inject(model, task.faults, seed=seed):
                    try:
                        out = _forward(model, inputs[chunk])
                    except Exception as exc:  # noqa: BLE001 - a crash under a fault is a DUE
                        out = exc
                recs = (
                    ref._due(task, chunk, out, 0.0)
                    if isinstance(out, Exception)
                    else ref._records(task, chunk, out, 0.0)  # type: ignore[arg-type]
                )
                f = prot.flags
                fl = [False] * len(chunk) if f is None else f[: len(chunk)].tolist()
                if f is not None and f.shape[0] not in (len(chunk), max(len(chunk), MIN_ROWS)):
                    fl = [bool(f.any())] * len(chunk)  # a model that reshapes its batch
                for r, flagged in zip(recs, fl):
                    correct = r.outcome in ("masked", "benign")
                    outcome = r.outcome
                    if flagged and not prot.corrects:
                        outcome = "detected"
                    runs.append(
                        ProtectedRun(
                            r.fault_id,
                            r.input_id,
                            outcome,
                            bool(flagged),
                            correct,
                            r.faulty_top1,
                            r.max_abs_diff,
                        )
                    )
    acc = None
    if labels is not None:
        lab = labels.reshape(-1).tolist()
        acc = (
            _rate(sum(int(t) == int(y) for t, y in zip(g_top, lab) if t is not None), len(lab)),
            _rate(sum(int(t) == int(y) for t, y in zip(p_top, lab) if t is not None), len(lab)),
        )
    runs.sort(key=lambda r: (r.fault_id, r.input_id))
    base = {(r.fault_id, r.input_id): r.outcome for r in baseline}
    del plain_out
    return ProtectionResult(
        name=prot.name,
        runs=runs,
        baseline=base,
        golden_flagged=[bool(x) for x in flags],
        golden_changed=[a != b for a, b in zip(g_top, p_top)],
        accuracy=acc,
        seconds=(plain_s, prot_s),
    )
