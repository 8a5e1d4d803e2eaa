# SPDX-License-Identifier: MIT
"""Injected values of a campaign's runs: each faulted element before and after the fault.

:func:`injected_rows` turns runs into rows of the store's ``injected`` table
(:mod:`torchfault.store`) with :func:`torchfault.injectors.injected_values`, which reads the
values from :func:`~torchfault.injectors.inject` itself: parameter and buffer faults without a
forward pass (one row per fault, ``input_id = -1``), activation faults with one forward pass
over the fault's inputs, padded to ``MIN_ROWS`` rows as the engines pad theirs (one row per
run). Random fault models get the seed the
reference engine gives each run (:func:`run_seed`), one input at a time, and every pair is
stored per run. The values do not depend on the engine: every engine writes the same faults.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from torchfault.campaign._engine import MIN_ROWS, RunTask, _pad_index, _random_faults, run_seed
from torchfault.injectors import injected_values

__all__ = ["injected_rows"]


def _rows(inputs: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Inputs ``ids`` padded to :data:`MIN_ROWS` rows as the engines pad every pass (so an
    activation's fault-free value is the same bits as in the campaign's own passes)."""
    idx = torch.tensor(ids, dtype=torch.int64)
    if len(ids) < MIN_ROWS:
        idx = idx[_pad_index(len(ids), MIN_ROWS)]
    return inputs[idx]


Row = tuple[int, int, int, float | None, float | None]


def injected_rows(model: nn.Module, inputs: torch.Tensor, tasks: Sequence[RunTask]) -> list[Row]:
    """Rows ``(fault_id, input_id, k, before, after)`` for every run of ``tasks``.

    Example:
        >>> from torchfault import Fault
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> t = RunTask(0, (Fault("0", "output", (1,), (31,)),), (0, 1))
        >>> rows = injected_rows(m, torch.ones(2, 2), [t])
        >>> [(r[1], r[3] == -r[4]) for r in rows]
        [(0, True), (1, True)]
    """
    rows: list[Row] = []
    for task in tasks:
        faults = task.faults
        acts = [f.target in ("output", "input") for f in faults]
        ids = list(task.input_ids)
        if _random_faults(task):  # values drawn per run: every pair per input
            for i in ids:
                pairs = injected_values(model, faults, _rows(inputs, [i]), seed=run_seed(task, i))[
                    0
                ]
                rows.extend((task.fault_id, i, k, b, a) for k, (b, a) in enumerate(pairs))
            continue
        if any(acts):
            per = list(zip(ids, injected_values(model, faults, _rows(inputs, ids))))
        else:
            per = [(-1, injected_values(model, faults)[0])]
        for n, (i, pairs) in enumerate(per):
            for k, ((b, a), act) in enumerate(zip(pairs, acts)):
                if act:
                    rows.append((task.fault_id, i, k, b, a))
                elif n == 0:  # a parameter or buffer fault: the same pair on every input
                    rows.append((task.fault_id, -1, k, b, a))
    return rows
