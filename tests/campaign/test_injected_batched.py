# SPDX-License-Identifier: MIT
"""Injected values read many runs at a time (campaign._injected) against each run read alone.

The oracle is :func:`injected_values` on one run by itself (its input in a pass of ``MIN_ROWS``
copies, one fault set under one inject), plus, for bit flips, NumPy: the element read directly and
flipped by hand. Covered: activation faults (outputs, inputs, an in-place ReLU's input, sets of
several), several inputs per fault, passes smaller and larger than MIN_ROWS, parameter faults of
different runs on the same element (and on a tied weight: one tensor, two names) that must not
cancel, other fault models (read alone), a pass that crashes under one run's fault, a model
whose activations are not one row per input, dict inputs, and how many forward passes it takes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import Fault, run_campaign
from torchfault.campaign._engine import RunTask, run_seed
from torchfault.campaign._injected import injected_rows
from torchfault.injectors import injected_values


def _flip(v: float, bit: int) -> float:
    w = np.array([v], dtype=np.float32).view(np.uint32) ^ np.uint32(1 << bit)
    return float(w.view(np.float32)[0])


def _net() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)
    ).eval()


def _x(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(2))


def _per_run(rows) -> dict[tuple[int, int], dict[int, tuple]]:
    out: dict[tuple[int, int], dict[int, tuple]] = {}
    for f, i, k, b, a in rows:
        out.setdefault((f, i), {})[k] = (b, a)
    return out


def _same(p, q) -> bool:
    """Pairs equal, NaN equal to NaN."""
    return all(
        (u is None and v is None)
        or (u is not None and v is not None and (u == v or (math.isnan(u) and math.isnan(v))))
        for u, v in zip(p, q)
    )


def _check_alone(model, x, tasks, rows) -> None:
    """Every run's pairs equal the run read alone; parameter pairs are stored once per fault."""
    got = _per_run(rows)
    for t in tasks:
        shared = got.get((t.fault_id, -1), {})
        random = t.faults[0].model == "random_value"
        for i in t.input_ids:
            seed = run_seed(t, i) if random else None
            want = injected_values(model, t.faults, x[[i] * 16], seed=seed)[0]
            have = {**shared, **got.get((t.fault_id, i), {})}
            assert sorted(have) == list(range(len(t.faults))), (t, i)
            assert all(_same(have[k], want[k]) for k in range(len(want))), (t, i, have, want)


def _tasks() -> list[RunTask]:
    faults = [
        (Fault("0", "output", (1,), (30,)),),
        (Fault("2", "input", (3,), (31,)),),  # the in-place ReLU's output, read by layer 2
        (Fault("1", "input", (0,), (22,)),),  # ReLU(inplace=True) writes this very tensor
        (Fault("2", "output", (4,), (31,)), Fault("4", "input", (2,), (29,))),  # a set of two
        (Fault("0", "output", (1,), (30,)),),  # the same fault as run 0: its own row
        (Fault("4", "output", (0,), (1,)), Fault("4", "output", (0,), (1,))),  # cancels itself
        (Fault("0", "weight", (2, 3), (31,)),),
        (Fault("0", "weight", (2, 3), (31,)),),  # same element, another run: must not cancel
        (Fault("2", "bias", (1,), (30,)), Fault("2", "bias", (1,), (23,))),
        (Fault("0", "weight", (2, 3), (31,)), Fault("0", "output", (5,), (30,))),  # mixed
        (Fault("2", "weight", (0, 0), (), model="zero"),),  # not bitwise: read alone
        (Fault("0", "output", (2,), (), model="value", params={"value": 7.0}),),
        (Fault("2", "weight", (1, 1), (), model="random_value"),),  # seeded per run
        (Fault("0", "output", (3,), (), model="random_value"),),
        (Fault("4", "weight", (1, 2), (30,), model="stuck_at_1"),),
        (Fault("2", "output", (0,), (30, 31), model="stuck_at_0"),),
    ]
    return [RunTask(k, fs, (k % 7, (k * 3 + 1) % 40, 39)) for k, fs in enumerate(faults)]


@pytest.mark.parametrize("batch_size", [1, 5, 16, 256])
def test_many_runs_at_a_time_equal_each_run_alone(batch_size):
    model, x = _net(), _x()
    tasks = _tasks()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = injected_rows(model, x, tasks, batch_size)
    _check_alone(model, x, tasks, rows)
    assert rows == sorted(rows, key=lambda r: r[:3])
    # NumPy on the weight: the two runs flipping the same bit of one element both read w -> -w
    w = state["0.weight"][2, 3].item()
    for fid in (6, 7):
        assert _per_run(rows)[(fid, -1)] == {0: (w, _flip(w, 31))}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight  # one tensor, two names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_a_tied_weight_under_two_names_is_one_element():
    model = _Tied().eval()
    w = model.a.weight[1, 2].item()
    tasks = [
        RunTask(0, (Fault("a", "weight", (1, 2), (31,)),), (0,)),
        RunTask(1, (Fault("b", "weight", (1, 2), (31,)),), (0,)),
    ]
    rows = injected_rows(model, torch.ones(1, 3), tasks)
    assert rows == [(0, -1, 0, w, _flip(w, 31)), (1, -1, 0, w, _flip(w, 31))]


class _Fragile(nn.Module):
    """Raises when a value is too large (as an index lookup or an assert in a model would)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if not bool(torch.isfinite(h).all()) or h.abs().max() > 1e6:
            raise RuntimeError("value out of range")
        return self.fc2(h)


def test_a_pass_that_crashes_is_read_again_one_run_at_a_time():
    model, x = _Fragile().eval(), _x(8)
    crash = (Fault("fc1", "output", (2,), (30,)),)  # exponent MSB: huge or inf -> raises
    quiet = (Fault("fc1", "output", (1,), (0,)),)
    later = (Fault("fc2", "input", (0,), (0,)),)  # after the raise: not read in a shared pass
    tasks = [
        RunTask(0, quiet, (0, 1)),
        RunTask(1, crash, (2,)),
        RunTask(2, quiet, (3,)),
        RunTask(3, later, (4, 5)),
    ]
    rows = injected_rows(model, x, tasks)
    got = _per_run(rows)
    with torch.no_grad():
        h = model.fc1(x)
    # the crashing run keeps the pair its fault wrote before the model raised (NumPy oracle)
    b = h[2, 2].item()
    assert got[(1, 2)] == {0: (b, _flip(b, 30))}
    # the others equal the values read alone (their own passes do not raise)
    assert got[(3, 4)][0][0] == h[4, 0].item()
    for t in (tasks[0], tasks[2], tasks[3]):
        for i in t.input_ids:
            assert got[(t.fault_id, i)] == {0: injected_values(model, t.faults, x[[i] * 16])[0][0]}


class _SeqFirst(nn.Module):
    """Its hidden activation has the features, not the inputs, on the first dimension."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.fc = nn.Linear(4, 4)
        self.mix = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(x.t()).t())


def test_activations_not_one_row_per_input_are_read_one_run_at_a_time():
    model, x = _SeqFirst().eval(), _x(20)
    tasks = [RunTask(k, (Fault("mix", "output", (k % 3,), (31,)),), (k, k + 1)) for k in range(6)]
    rows = injected_rows(model, x, tasks, batch_size=8)
    _check_alone(model, x, tasks, rows)
    # alone, row 0 of the (features, 16 copies) tensor: feature 0 of the input, sign flipped
    assert _per_run(rows)[(0, 0)] == {0: (x[0, 0].item(), -x[0, 0].item())}


def test_activation_runs_take_one_pass_per_batch_and_parameter_runs_none():
    model, x = _net(), _x()
    passes = []
    h = model.register_forward_pre_hook(lambda m, a: passes.append(a[0].shape[0]))
    try:
        acts = [
            RunTask(k, (Fault("2", "output", (k % 5,), (k % 32,)),), (k % 40,)) for k in range(70)
        ]
        rows = injected_rows(model, x, acts, batch_size=32)
        assert passes == [32, 32, 16]  # 70 runs: 32 + 32 + 6 padded to MIN_ROWS
        assert len(rows) == 70
        passes.clear()
        params = [
            RunTask(k, (Fault("0", "weight", (k % 6, k % 4), (k % 32,)),), (k,)) for k in range(40)
        ]
        rows = injected_rows(model, x, params)
        assert passes == [] and len(rows) == 40
    finally:
        h.remove()
    _check_alone(model, x, acts, injected_rows(model, x, acts, batch_size=32))
    _check_alone(model, x, params, injected_rows(model, x, params))


class _Keywords(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def test_dict_inputs_give_the_values_of_the_tensor_model():
    net, x = _net(), _x(6)
    faults = [
        [Fault("net.0", "output", (k % 6,), (30,)), Fault("net.2", "bias", (1,), (k,))]
        for k in range(4)
    ]
    faults += [[Fault("net.2", "input", (k,), (31,))] for k in range(3)]
    got = run_campaign(_Keywords(net), {"features": x}, faults, injected_values=True)
    for (fid, i), pairs in got.injected.items():
        plain = [Fault(f.module[4:], f.target, f.index, f.bits) for f in got.faults[fid]]
        want = injected_values(net, plain, x[[i] * 16])[0]
        assert len(pairs) == len(want) and all(map(_same, pairs, want)), (fid, i)
    assert len(got.injected) == len(got.runs) == 7 * 6
