# SPDX-License-Identifier: MIT
"""Injected values of every fault model read many runs at a time (campaign._injected) against
two oracles: the one-at-a-time reading (each random run alone with its seed, each other fault in
one pass over its inputs: what ``injected_rows`` did for these models before) and an outside
computation (the golden value read with a forward hook or from the parameter, the fault model
applied with NumPy/struct, the random draws made with a generator seeded as the engines seed each
run). Values are compared bit for bit (float64 words, NaN payloads included).

Covered: a convolutional net and an MLP (float32) and a float64 MLP; weights, biases, layer
outputs and inputs (an in-place ReLU's input too); ``bit_flip``, ``stuck_at_0``/``stuck_at_1``, ``zero``, ``value`` (finite,
huge, inf, NaN), ``random_value`` with bounds and as a random bit pattern; several seeds; faults
of one site on the same inputs (read by site), on a few inputs (rows of shared passes), on the
same element in different runs, sets of two faults; and how many passes the shared readings take.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import Fault
from torchfault.campaign._engine import MIN_ROWS, RunTask, _random_faults, run_seed
from torchfault.campaign._injected import SITE_FAULTS, _alone, _one_task, injected_rows

N = 20  # inputs


def _conv() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),  # writes its input, the first layer's output, in place
        nn.Conv2d(4, 6, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 8),
        nn.Tanh(),
        nn.Linear(8, 5),
    ).eval()


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(8)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4)).to(dtype).eval()


NETS = {
    "conv": (_conv, (1, 6, 6), {"0": (4, 6, 6), "1": (4, 6, 6), "2": (6, 6, 6), "5": (8,)}),
    "mlp": (_mlp, (5,), {"0": (7,), "1": (7,), "2": (4,)}),
    "mlp64": (lambda: _mlp(torch.float64), (5,), {"0": (7,), "1": (7,), "2": (4,)}),
}


def _inputs(net: str) -> torch.Tensor:
    make, shape, _ = NETS[net]
    dtype = next(make().parameters()).dtype
    return torch.randn(N, *shape, generator=torch.Generator().manual_seed(3), dtype=dtype)


def _model_fields(rng: np.random.Generator, width: int) -> dict:
    """A fault model with its bits/params, drawn."""
    kind = rng.choice(
        ["bit_flip", "stuck_at_0", "stuck_at_1", "zero", "value", "bounded", "pattern"]
    )
    bits = tuple(sorted({int(b) for b in rng.integers(0, width, size=rng.integers(1, 3))}))
    if kind in ("bit_flip", "stuck_at_0", "stuck_at_1"):
        return {"model": str(kind), "bits": bits}
    if kind == "zero":
        return {"model": "zero", "bits": ()}
    if kind == "value":
        v = float(rng.choice([0.5, -3.25, 1e30, 1e300, math.inf, -math.inf, math.nan, 7.0]))
        return {"model": "value", "bits": (), "params": {"value": v}}
    if kind == "bounded":
        return {"model": "random_value", "bits": (), "params": {"low": -2.0, "high": 3.5}}
    return {"model": "random_value", "bits": ()}


def _tasks(net: str, seed: int) -> list[RunTask]:
    """Faults of every kind: single faults at a site on all inputs (read by site), on a few
    inputs (rows of shared passes), parameters, the same element twice, sets of two."""
    rng = np.random.default_rng(seed)
    model = NETS[net][0]()
    acts = NETS[net][2]
    inputs = {"1": (4, 6, 6), "2": (4, 6, 6), "5": (54,)} if net == "conv" else {"2": (7,)}
    width = 64 if net == "mlp64" else 32
    params = [(m, n, tuple(p.shape)) for m, mod in model.named_modules() if m
              for n, p in mod.named_parameters(recurse=False)]  # fmt: skip
    every = tuple(range(N))
    out: list[tuple[Fault, ...]] = []
    ids: list[tuple[int, ...]] = []

    def act_fault(fields: dict) -> Fault:
        module = str(rng.choice(sorted(acts)))
        target = "input" if module in inputs and rng.random() < 0.3 else "output"
        shape = acts[module] if target == "output" else inputs[module]
        index = tuple(int(rng.integers(0, s)) for s in shape)
        return Fault(module, target, index, **fields)

    def param_fault(fields: dict) -> Fault:
        module, name, shape = params[int(rng.integers(0, len(params)))]
        return Fault(module, name, tuple(int(rng.integers(0, s)) for s in shape), **fields)

    for _ in range(40):  # activations on every input (a site's faults on the same inputs)
        out.append((act_fault(_model_fields(rng, width)),))
        ids.append(every)
    for _ in range(25):  # activations on a few inputs
        out.append((act_fault(_model_fields(rng, width)),))
        ids.append(tuple(sorted({int(i) for i in rng.integers(0, N, size=3)})))
    for _ in range(30):  # parameters
        out.append((param_fault(_model_fields(rng, width)),))
        ids.append(tuple(sorted({int(i) for i in rng.integers(0, N, size=4)})))
    for _ in range(8):  # sets of two (deterministic models; a random one is read alone)
        fields = [_model_fields(rng, width) for _ in range(2)]
        pick = act_fault if rng.random() < 0.5 else param_fault
        out.append((pick(fields[0]), pick(fields[1])))
        ids.append(every if rng.random() < 0.5 else (1, 5))
    out += out[:6] + out[65:70]  # the same faults again: same elements in other runs
    ids += ids[:6] + ids[65:70]
    return [RunTask(k, fs, i) for k, (fs, i) in enumerate(zip(out, ids))]


def _one_at_a_time(model, x, tasks) -> list:
    """What injected_rows read for these fault models before: a random run alone with its seed,
    any other fault in one pass over its inputs."""
    rows = []
    for t in tasks:
        if _random_faults(t):
            for i in t.input_ids:
                rows += _alone(model, x, t, i, seed=run_seed(t, i))
        else:
            rows += _one_task(model, x, t)
    return sorted(rows, key=lambda r: r[:3])


def _bits(v: float | None) -> bytes | None:
    return None if v is None else struct.pack("<d", v)


def _exact(rows) -> list:
    return [(f, i, k, _bits(b), _bits(a)) for f, i, k, b, a in rows]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("batch_size", [7, 256])
def test_many_at_a_time_equal_one_at_a_time_bit_for_bit(net, seed, batch_size):
    model, x = NETS[net][0](), _inputs(net)
    tasks = _tasks(net, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = injected_rows(model, x, tasks, batch_size)
    want = _one_at_a_time(model, x, tasks)
    assert len(got) == len(want) and _exact(got) == _exact(want)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _golden(model, x, f: Fault, i: int) -> float:
    """The fault-free value of a fault's element on input ``i`` (in the engines' pass of
    MIN_ROWS copies of it), read with a hook or from the parameter."""
    mod = dict(model.named_modules())[f.module]
    if not f.is_activation:
        return float(getattr(mod, f.target).detach()[f.index])
    seen = []
    if f.target == "output":
        h = mod.register_forward_hook(lambda m, a, o: seen.append(o[0][f.index].item()))
    else:
        h = mod.register_forward_pre_hook(lambda m, a: seen.append(a[0][0][f.index].item()))
    try:
        with torch.no_grad():
            model(x[[i] * MIN_ROWS])
    finally:
        h.remove()
    return seen[0]


def _word(v: float, dtype: type) -> int:
    return int(np.array([v], dtype=dtype).view(np.uint32 if dtype is np.float32 else np.uint64)[0])


def _float(w: int, dtype: type) -> float:
    words = np.array([w], dtype=np.uint32 if dtype is np.float32 else np.uint64)
    return float(words.view(dtype)[0])


def _faulty(f: Fault, task: RunTask, i: int, before: float, dtype: type) -> float:
    """The fault model applied by hand (NumPy words; random draws from the run's seed)."""
    width = 32 if dtype is np.float32 else 64
    mask = sum(1 << b for b in f.bits)
    w = _word(before, dtype)
    if f.model == "bit_flip":
        return _float(w ^ mask, dtype)
    if f.model == "stuck_at_0":
        return _float(w & ~mask, dtype)
    if f.model == "stuck_at_1":
        return _float(w | mask, dtype)
    if f.model == "zero":
        return 0.0
    if f.model == "value":
        with np.errstate(over="ignore"):  # 1e300 in float32: inf, as torch casts it
            return float(np.array([f.param_dict["value"]]).astype(dtype)[0])
    g = torch.Generator().manual_seed(run_seed(task, i))
    n = MIN_ROWS if f.is_activation else 1  # every row of the engines' one-input pass
    p = f.param_dict
    if p:
        u = torch.rand(n, generator=g, dtype=torch.float64)[0].item()
        return float(np.array([p["low"] + (p["high"] - p["low"]) * u]).astype(dtype)[0])
    if width == 32:
        return _float(int(torch.randint(0, 1 << 32, (n,), generator=g)[0]), dtype)
    high = int(torch.randint(0, 1 << 32, (n,), generator=g)[0])
    low = int(torch.randint(0, 1 << 32, (n,), generator=g)[0])
    return _float((high << 32) | low, dtype)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("net", sorted(NETS))
def test_single_faults_against_hooks_and_numpy(net, seed):
    model, x = NETS[net][0](), _inputs(net)
    dtype = np.float64 if net == "mlp64" else np.float32
    tasks = [t for t in _tasks(net, seed) if len(t.faults) == 1]
    rows = injected_rows(model, x, tasks, 64)
    got = {(f, i): (b, a) for f, i, k, b, a in rows}
    checked = 0
    for t in tasks:
        f = t.faults[0]
        shared = not f.is_activation and not _random_faults(t)
        for i in t.input_ids:
            before = _golden(model, x, f, i)
            want = (before, _faulty(f, t, i, before, dtype))
            have = got[(t.fault_id, -1 if shared else i)]
            assert tuple(map(_bits, have)) == tuple(map(_bits, want)), (t, i, have, want)
            checked += 1
    assert checked > 500


def _count_passes(model) -> tuple[list[int], object]:
    passes: list[int] = []
    h = model.register_forward_pre_hook(lambda m, a: passes.append(a[0].shape[0]))
    return passes, h


def test_zero_and_value_faults_of_a_site_share_passes():
    model, x = _conv(), _inputs("conv")
    # 100 zero/value faults on distinct elements of one layer's output, each on all 20 inputs
    elements = [(c, r, q) for c in range(4) for r in range(6) for q in range(6)][:100]
    tasks = [
        RunTask(k, (Fault("2", "output", e, (), model="zero" if k % 2 else "value",
                          params={} if k % 2 else {"value": k / 7}),), tuple(range(N)))
        for k, e in enumerate(elements)
    ]  # fmt: skip
    passes, h = _count_passes(model)
    try:
        rows = injected_rows(model, x, tasks, 256)
    finally:
        h.remove()
    assert passes == [N]  # one pass for 2,000 runs
    assert _exact(rows) == _exact(_one_at_a_time(model, x, tasks))
    # the same element twice cannot share a pass (the second write would hide the first)
    twice = tasks[:3] + [RunTask(100 + k, t.faults, t.input_ids) for k, t in enumerate(tasks[:3])]
    passes, h = _count_passes(model)
    try:
        rows = injected_rows(model, x, twice, 256)
    finally:
        h.remove()
    assert passes == [N, N]
    assert _exact(rows) == _exact(_one_at_a_time(model, x, twice))
    assert SITE_FAULTS >= 100


def test_random_runs_take_shared_passes():
    model, x = _conv(), _inputs("conv")
    bounded = {"low": -1.0, "high": 1.0}
    tasks = [
        RunTask(0, (Fault("0", "output", (1, 2, 3), (), model="random_value", params=bounded),),
                tuple(range(N))),
        RunTask(1, (Fault("5", "input", (4,), (), model="random_value", params=bounded),),
                tuple(range(N))),
        RunTask(2, (Fault("2", "weight", (1, 2, 0, 1), (), model="random_value"),), tuple(range(N))),
        RunTask(3, (Fault("5", "bias", (3,), (), model="random_value", params=bounded),), (0, 4)),
    ]  # fmt: skip
    passes, h = _count_passes(model)
    try:
        rows = injected_rows(model, x, tasks, 256)
    finally:
        h.remove()
    # 40 activation runs as rows of two passes (at most 32 runs each); parameters need none
    assert passes == [32, MIN_ROWS]
    assert _exact(rows) == _exact(_one_at_a_time(model, x, tasks))
    # every run has its own value, stored per run (parameters too: input_id is the input)
    assert len({r[4] for r in rows if r[0] == 2}) == N and all(r[1] >= 0 for r in rows)
    # a random bit pattern on an activation: a fault-free pass finds the activation's dtype
    # (the words' width), then its runs are rows of one pass
    pattern = [
        RunTask(0, (Fault("0", "output", (1, 2, 3), (), model="random_value"),), tuple(range(N))),
        RunTask(1, (Fault("5", "input", (7,), (), model="random_value"),), tuple(range(N))),
    ]
    passes, h = _count_passes(model)
    try:
        rows = injected_rows(model, x, pattern, 256)
    finally:
        h.remove()
    assert passes == [MIN_ROWS, 2 * N]
    assert _exact(rows) == _exact(_one_at_a_time(model, x, pattern))
    assert len(rows) == 2 * N and len({r[4] for r in rows}) == 2 * N
