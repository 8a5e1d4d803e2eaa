# SPDX-License-Identifier: MIT
"""Records the results store holds: one per fault, one per injection run, one per golden input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchfault.errors import TorchFaultError, suggest
from torchfault.faults import OUTCOMES, RUN_OUTCOMES, Fault

__all__ = [
    "OUTCOMES",
    "RUN_OUTCOMES",
    "present_outcomes",
    "RunRecord",
    "FaultRecord",
    "GoldenRecord",
]

# OUTCOMES (the four every campaign reports) and RUN_OUTCOMES (and ``detected``) are defined
# once, in torchfault.faults, and re-exported here.


def present_outcomes(outcomes: Any) -> tuple[str, ...]:
    """:data:`OUTCOMES`, and ``detected`` when it is among ``outcomes`` (any iterable).

    Example:
        >>> present_outcomes(["sdc"]), present_outcomes({"detected": 2})
        (('masked', 'benign', 'sdc', 'due'), ('masked', 'benign', 'sdc', 'due', 'detected'))
    """
    return RUN_OUTCOMES if "detected" in set(outcomes) else OUTCOMES


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One injection run: one fault (or fault set) ``fault_id`` on one input ``input_id``.

    Attributes:
        fault_id: the fault number (the sampler's ``k``).
        input_id: the input's number in the campaign's input set.
        outcome: ``"masked"``, ``"benign"``, ``"sdc"``, ``"due"`` or ``"detected"``.
        golden_top1: predicted class without the fault.
        faulty_top1: predicted class under the fault (``None`` when the model raised).
        max_abs_diff: largest absolute difference between faulty and golden outputs (``inf``
            for non-finite outputs; NaN is stored as NULL and read back as ``None``).
        seconds: time spent on this run.
        error: the exception text for a DUE raised by the model, else ``None``.

    Example:
        >>> RunRecord(3, 0, "sdc", 7, 1, 12.5, 0.001)
        RunRecord(fault_id=3, input_id=0, outcome='sdc', golden_top1=7, faulty_top1=1, max_abs_diff=12.5, seconds=0.001, error=None)
    """

    fault_id: int
    input_id: int
    outcome: str
    golden_top1: int | None = None
    faulty_top1: int | None = None
    max_abs_diff: float | None = None
    seconds: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in RUN_OUTCOMES:
            raise TorchFaultError(
                f"RunRecord outcome must be one of {', '.join(RUN_OUTCOMES)}, got "
                f"{self.outcome!r}.{suggest(str(self.outcome), RUN_OUTCOMES)}"
            )

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            int(self.fault_id),
            int(self.input_id),
            self.outcome,
            None if self.golden_top1 is None else int(self.golden_top1),
            None if self.faulty_top1 is None else int(self.faulty_top1),
            None if self.max_abs_diff is None else float(self.max_abs_diff),
            None if self.seconds is None else float(self.seconds),
            None if self.error is None else str(self.error),
        )


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """The faults of one fault number (one for single-fault samplers, any number for ``ber``).

    Example:
        >>> FaultRecord(0, [Fault("fc", "weight", (0, 1), (30,))]).faults[0].bits
        (30,)
    """

    fault_id: int
    faults: tuple[Fault, ...]

    def __post_init__(self) -> None:
        faults = (self.faults,) if isinstance(self.faults, Fault) else tuple(self.faults)
        for f in faults:
            if not isinstance(f, Fault):
                raise TorchFaultError(
                    f"FaultRecord faults must be Fault objects, got {type(f).__name__}."
                )
        object.__setattr__(self, "faults", faults)


@dataclass(frozen=True, slots=True)
class GoldenRecord:
    """The fault-free result of one input: top-1 class, label (if known) and output digest."""

    input_id: int
    top1: int | None = None
    label: int | None = None
    digest: str | None = None
