# SPDX-License-Identifier: MIT
"""``run_campaign``: every fault on every input, in memory, with a result to count and summarize."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._engine import ENGINES, RunTask, _forward
from torchfault.campaign._outcome import OUTCOMES, Criterion
from torchfault.errors import TorchFaultError
from torchfault.faults import Fault
from torchfault.store import RunRecord

__all__ = ["CampaignResult", "run_campaign", "golden_run", "as_fault_sets"]

#: Columns of :meth:`CampaignResult.rows` and of its CSV and Parquet files, in order.
ROW_COLUMNS = (
    *(f.name for f in dataclasses.fields(RunRecord)),
    "module",
    "target",
    "bits",
    "n_faults",
)


@dataclass
class CampaignResult:
    """The runs of a campaign and their faults.

    Attributes:
        runs: one :class:`~torchfault.store.RunRecord` per (fault, input), ordered by fault then input.
        faults: fault id -> the faults of that run.
    """

    runs: list[RunRecord]
    faults: dict[int, tuple[Fault, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.runs)

    def outcome_counts(self) -> dict[str, int]:
        """Runs per outcome, every outcome present (zeros included)."""
        counts = Counter(r.outcome for r in self.runs)
        return {o: counts.get(o, 0) for o in OUTCOMES}

    def rows(self) -> list[dict[str, Any]]:
        """The table of runs: one dict per run (the :class:`~torchfault.store.RunRecord` fields),
        with the first fault's ``module``, ``target`` and ``bits`` and the run's ``n_faults``.

        Example:
            >>> from torchfault.store import RunRecord
            >>> fault = Fault("fc", "weight", (0, 1), (30,))
            >>> row = CampaignResult([RunRecord(0, 2, "sdc", 1, 7)], {0: (fault,)}).rows()[0]
            >>> row["outcome"], row["module"], row["bits"], row["n_faults"]
            ('sdc', 'fc', [30], 1)
        """
        out = []
        for r in self.runs:
            f = self.faults.get(r.fault_id, ())
            first = f[0] if f else None
            out.append(
                {
                    **dataclasses.asdict(r),
                    "module": first.module if first else None,
                    "target": first.target if first else None,
                    "bits": list(first.bits) if first else None,
                    "n_faults": len(f),
                }
            )
        return out

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`rows` as CSV (``bits`` space-separated, missing values empty); returns
        the path."""
        out = Path(path)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(ROW_COLUMNS)
                for row in self.rows():
                    if row["bits"] is not None:
                        row["bits"] = " ".join(str(b) for b in row["bits"])
                    writer.writerow(["" if row[c] is None else row[c] for c in ROW_COLUMNS])
        except OSError as exc:
            raise TorchFaultError(f"cannot write CSV {str(out)!r}: {exc}") from None
        return out

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`rows` as Parquet (``bits`` a list of integers); needs pyarrow (the
        ``parquet`` extra). Returns the path."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise TorchFaultError(
                "CampaignResult.to_parquet needs pyarrow, which is not installed; install the "
                "'parquet' extra: pip install 'torchfault[parquet]'."
            ) from None
        types = {
            "fault_id": pa.int64(),
            "input_id": pa.int64(),
            "outcome": pa.string(),
            "golden_top1": pa.int64(),
            "faulty_top1": pa.int64(),
            "max_abs_diff": pa.float64(),
            "seconds": pa.float64(),
            "error": pa.string(),
            "module": pa.string(),
            "target": pa.string(),
            "bits": pa.list_(pa.int64()),
            "n_faults": pa.int64(),
        }
        rows = self.rows()
        table = pa.table(
            {c: pa.array([row[c] for row in rows], type=types[c]) for c in ROW_COLUMNS},
            schema=pa.schema([(c, types[c]) for c in ROW_COLUMNS]),
        )
        out = Path(path)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out)
        except OSError as exc:
            raise TorchFaultError(f"cannot write Parquet {str(out)!r}: {exc}") from None
        return out

    def summary(self, confidence: float = 0.95, method: str = "wilson") -> Any:
        """Rates with confidence intervals, overall and per layer, bit and target kind."""
        from torchfault.analysis import summarize

        return summarize(self.runs, self.faults, confidence=confidence, method=method)


def as_fault_sets(faults: Iterable[Fault | Sequence[Fault]] | Fault) -> list[tuple[Fault, ...]]:
    """Normalise faults to a list of fault sets (one set per run)."""
    if isinstance(faults, Fault):
        return [(faults,)]
    out = []
    for item in faults:
        if isinstance(item, Fault):
            out.append((item,))
        elif isinstance(item, (list, tuple)) and all(isinstance(f, Fault) for f in item):
            out.append(tuple(item))
        else:
            raise TorchFaultError(
                f"faults must be Fault objects or sequences of them, got {item!r}."
            )
    return out


@torch.no_grad()
def golden_run(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The fault-free outputs of ``model`` on ``inputs``, in batches."""
    outs = []
    for start in range(0, inputs.shape[0], batch_size):
        try:
            # a copy: a model may modify its input in place, and the inputs must stay golden
            out = _forward(model, inputs[start : start + batch_size].clone())
        except TypeError as exc:
            raise TorchFaultError(str(exc)) from None
        outs.append(out.detach())
    return torch.cat(outs)


def run_campaign(
    model: nn.Module,
    inputs: torch.Tensor,
    faults: Iterable[Fault | Sequence[Fault]] | Fault,
    labels: torch.Tensor | None = None,
    *,
    criterion: str | Criterion = "top1",
    topk: int = 1,
    tolerance: float = 0.0,
    only_correct: bool = False,
    engine: str = "reference",
    batch_size: int = 256,
) -> CampaignResult:
    """Run every fault (or fault set) on every input and classify each run.

    Args:
        model: the model (switched to eval mode for the campaign and restored after).
        inputs: a batch of inputs, one per row.
        faults: faults, or sequences of faults that act together in one run. Activation faults
            with ``sample=None`` hit the run's own input.
        labels: true classes; needed for ``only_correct``.
        criterion: ``"top1"``, ``"topk"``, ``"tolerance"`` or a :class:`Criterion`.
        topk, tolerance: parameters of the criterion.
        only_correct: run only inputs the golden model classifies correctly.
        engine: ``"reference"`` (full re-execution) or another registered engine (``"fast"``).
        batch_size: rows per forward pass.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault import Fault, run_campaign
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> x = torch.randn(5, 4)
        >>> faults = [Fault("0", "weight", index=(0, 0), bits=(b,)) for b in (0, 30)]
        >>> result = run_campaign(model, x, faults)
        >>> len(result), sum(result.outcome_counts().values())
        (10, 10)
    """
    crit = criterion if isinstance(criterion, Criterion) else Criterion(criterion, topk, tolerance)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TorchFaultError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1:
        what = "a 0-d tensor" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise TorchFaultError(f"inputs must be a tensor with one input per row, got {what}.")
    if inputs.shape[0] == 0:
        raise TorchFaultError("inputs: no inputs (a tensor with 0 rows); give at least one.")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.numel() != inputs.shape[0]:
            raise TorchFaultError(
                f"labels must hold one class per input: got {labels.numel()} labels for "
                f"{inputs.shape[0]} inputs."
            )
    sets = as_fault_sets(faults)
    was_training = model.training
    model.eval()
    try:
        golden = golden_run(model, inputs, batch_size)
        if crit.topk != 1 or crit.name == "topk":
            from torchfault.campaign._config import check_topk

            check_topk(golden, crit.topk)
        ids = list(range(inputs.shape[0]))
        if only_correct:
            if labels is None:
                raise TorchFaultError("run_campaign(only_correct=True) needs labels.")
            correct = golden.reshape(len(ids), -1).argmax(dim=1) == labels.reshape(-1)
            ids = [i for i in ids if bool(correct[i])]
        eng = ENGINES.get(engine)(model, inputs, golden, crit, batch_size)
        tasks = [RunTask(k, fs, tuple(ids)) for k, fs in enumerate(sets)]
        runs = eng.run(tasks)
    finally:
        model.train(was_training)
    runs.sort(key=lambda r: (r.fault_id, r.input_id))
    return CampaignResult(runs, {k: fs for k, fs in enumerate(sets)})
