# SPDX-License-Identifier: MIT
"""Traces from the fast engine: the deviation of every traced layer read from the rest of the
network the engine runs, against the oracle, :func:`torchfault.analysis.trace_runs` (a golden and
a faulty forward pass with hooks per fault): equal in every field (each :class:`LayerDeviation`,
``masked_at``, ``out_of_range_at``), on several model families, activation, weight and bias
faults, bit flips that are masked early, a range profile, more than one input block; and without
calling ``trace_runs`` (or any full forward pass) for the rows the engine ran fast."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
import yaml

import torchfault.analysis
from torchfault import Campaign, CampaignConfig, Fault
from torchfault.analysis import layer_order, read_traces, trace_runs
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine
from torchfault.config import from_dict
from torchfault.dnn import create_model
from torchfault.faults import fault_space
from torchfault.injectors import load_profile, profile_ranges
from torchfault.store import open_store

BITS = (0, 3, 20, 22, 23, 27, 29, 30, 31)


class MLP(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
        )


class SmallCNN(nn.Module):
    """Convolutions, batch norm, ReLU (one in place), max and average pooling."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.r2 = nn.ReLU(inplace=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.pool(self.r1(self.b1(self.c1(x))))
        y = self.gap(self.r2(self.b2(self.c2(y))))
        return self.fc(y.flatten(1))


class Residual(nn.Module):
    """A residual block; ``act`` is called twice (traced at its last call)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        y = self.act(self.stem(x))
        y = self.act(y + self.body(y))
        return self.head(self.pool(y).flatten(1))


class Smooth(nn.Module):
    """SiLU and sigmoid modules (transcendental functions: rows at unaligned places go to the
    reference engine, and so to trace_runs)."""

    def __init__(self):
        super().__init__()
        self.a, self.s1 = nn.Linear(16, 32), nn.SiLU()
        self.b, self.s2 = nn.Linear(32, 32), nn.Sigmoid()
        self.c = nn.Linear(32, 10)

    def forward(self, x):
        return self.c(self.s2(self.b(self.s1(self.a(x)))))


def _bn_stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def family(name):
    """(model, inputs) of a family: 40 inputs, so that 16-row blocks are three."""
    torch.manual_seed(7)
    if name == "lenet":
        return create_model("lenet", dataset="digits", pretrained=True).eval(), torch.randn(
            40, 1, 8, 8
        )
    model, shape = {
        "mlp": (MLP, (12,)),
        "cnn": (SmallCNN, (3, 8, 8)),
        "residual": (Residual, (1, 8, 8)),
        "smooth": (Smooth, (16,)),
    }[name]
    return _bn_stats(model()).eval(), torch.randn(40, *shape)


def faults_of(model, x, n, seed):
    """Activation, weight and bias bit flips (sign flips that ReLUs mask early among them)."""
    rng = random.Random(seed)
    sites = fault_space(model, x[:2], kinds=("outputs", "weights", "biases"))
    out = []
    for _ in range(n):
        s = rng.choice(sites)
        index = tuple(rng.randrange(d) for d in s.shape)
        out.append(Fault(s.module, s.target, index=index, bits=(rng.choice(BITS),)))
    return out


def tasks_of(faults, n_inputs, seed):
    """One task per fault on 6 to 20 inputs drawn from all (several blocks, any order)."""
    rng = random.Random(seed)
    out = []
    for k, f in enumerate(faults):
        ids = rng.sample(range(n_inputs), rng.randint(6, 20))
        out.append(RunTask(k, f if isinstance(f, tuple) else (f,), tuple(ids)))
    return out


def oracle(model, x, tasks, order, profile):
    return trace_runs(
        model, x, [(t.fault_id, t.faults, t.input_ids) for t in tasks], order, profile=profile
    )


def key(r):
    return (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)


def traced_engine(model, x, layers=None, profile=None, **kw):
    eng = FastEngine(model, x, golden_run(model, x, 256), batch_size=16, **kw)
    eng.trace = (layer_order(model, x[[0] * 16], layers), profile)
    return eng


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual", "smooth", "lenet"])
def test_fast_traces_equal_trace_runs(name):
    model, x = family(name)
    # a profile of a few inputs only: other inputs' golden values leave it too
    prof = profile_ranges(model, x[:4])
    faults = faults_of(model, x, 60, seed=1)
    faults.append((faults[0], faults[1]))  # two faults in one run: the reference engine
    tasks = tasks_of(faults, x.shape[0], seed=2)
    eng = traced_engine(model, x, profile=prof)
    chunk = eng.run_chunk(tasks)
    want = oracle(model, x, tasks, eng.trace[0], prof)
    assert len(chunk.traces) == len(want) == sum(len(t.input_ids) for t in tasks)
    assert repr(chunk.traces) == repr(want)  # every field (repr: NaN equals NaN)
    ref = ReferenceEngine(model, x, eng.golden, batch_size=16).run(tasks)
    assert [key(r) for r in chunk] == [key(r) for r in ref]  # records unchanged by tracing
    # most runs were traced from the engine's own rows; the rest (handed over) by trace_runs
    runs = len(want)
    assert eng.traced["fast"] + eng.traced["trace_runs"] == runs
    assert eng.traced["trace_runs"] >= len(tasks[-1].input_ids)  # the two-fault run at least
    if name != "smooth":
        assert eng.traced["fast"] > runs // 2, dict(eng.traced)
    # the traces hold every kind of run: deviating, masked early, masked later, out of range
    assert eng.stats["masked_early"] > 0
    assert any(t.masked_at for t in want) and any(t.out_of_range_at for t in want)
    assert any(all(d.changed == 0 for d in t.layers) for t in want)


def test_fast_traces_without_a_profile_and_with_chosen_layers():
    model, x = family("cnn")
    faults = faults_of(model, x, 40, seed=3)
    tasks = tasks_of(faults, x.shape[0], seed=4)
    for layers in (None, ["c2", "r2", "fc"], "re:[cb]1"):
        eng = traced_engine(model, x, layers=layers)
        chunk = eng.run_chunk(tasks)
        assert repr(chunk.traces) == repr(oracle(model, x, tasks, eng.trace[0], None)), layers
        assert all(d.out_of_range is None for t in chunk.traces for d in t.layers)
        assert eng.traced["fast"] > 0


def test_rows_run_fast_are_traced_without_trace_runs_or_full_passes(monkeypatch):
    """LeNet: every run takes the fast path; trace_runs is never called and the model is never
    run whole (a hook on the root module counts full forward passes)."""
    model, x = family("lenet")
    prof = profile_ranges(model, x)
    tasks = tasks_of(faults_of(model, x, 80, seed=5), x.shape[0], seed=6)
    want = oracle(model, x, tasks, layer_order(model, x[[0] * 16]), prof)
    eng = traced_engine(model, x, profile=prof)
    calls = []
    monkeypatch.setattr(
        torchfault.analysis, "trace_runs", lambda *a, **k: calls.append(a) or trace_runs(*a, **k)
    )
    passes = []
    h = model.register_forward_hook(lambda m, a, o: passes.append(1))
    try:
        chunk = eng.run_chunk(tasks)
    finally:
        h.remove()
    assert repr(chunk.traces) == repr(want)
    assert calls == [] and passes == []
    assert eng.traced == {"fast": len(want)} and eng.stats["reference"] == 0


def test_windows_are_off_while_tracing_and_records_stay_the_same():
    """Activation faults on a conv map run on spatial windows untraced; while tracing they run
    on whole maps (see _fast/_tracing.py), with the same records."""
    model, x = family("cnn")
    faults = [f for f in faults_of(model, x, 200, seed=7) if f.target == "output"][:40]
    tasks = [RunTask(k, (f,), tuple(range(40))) for k, f in enumerate(faults)]
    plain = FastEngine(model, x, golden_run(model, x, 256))
    untraced = plain.run(tasks)
    assert plain.stats["window_rows"] > 0
    eng = traced_engine(model, x)
    chunk = eng.run_chunk(tasks)
    assert eng.stats["window_rows"] == 0
    assert [key(r) for r in chunk] == [key(r) for r in untraced]
    assert repr(chunk.traces) == repr(oracle(model, x, tasks, eng.trace[0], None))


def test_a_traced_layer_that_is_no_graph_node_is_traced_by_trace_runs():
    """A container module (inlined by torch.fx: no node of its own) among the traced layers:
    every run's trace comes from trace_runs, equal all the same."""
    model = nn.Sequential(nn.Sequential(nn.Linear(12, 16), nn.ReLU()), nn.Linear(16, 4)).eval()
    x = torch.randn(20, 12)
    tasks = tasks_of(faults_of(model, x, 12, seed=8), 20, seed=9)
    eng = traced_engine(model, x, layers=["0", "0.0", "1"])
    chunk = eng.run_chunk(tasks)
    assert repr(chunk.traces) == repr(oracle(model, x, tasks, eng.trace[0], None))
    assert eng.traced == {"trace_runs": len(chunk.traces)} and eng.stats["fast"] > 0


class Encoder(nn.Module):
    """An ``nn.TransformerEncoder`` without a norm, traced by the fast engine as its layers: its
    last layer's node is also the output of the whole encoder."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_an_encoder_traced_as_its_layers():
    """Faults on the whole encoder's output and on its last layer's output share a graph node; a
    hook on the last layer sees the fault only in the second case. Traced layers that are graph
    nodes (the encoder's layers, embed, head) are read from the run; every trace equals
    trace_runs'."""
    torch.manual_seed(3)
    model = Encoder().eval()
    x = torch.randn(40, 5, 8)
    rng = random.Random(4)
    faults = [
        Fault(m, "output", (rng.randrange(5), rng.randrange(16)), (b,))
        for m in ("encoder", "encoder.layers.1", "encoder.layers.0", "embed")
        for b in (30, 22, 31)
    ]
    faults += [Fault("head", "weight", (1, 3), (30,)), Fault("embed", "bias", (2,), (27,))]
    faults += [Fault("encoder.layers.0.linear1", "weight", (4, 5), (30,))]
    tasks = tasks_of(faults, x.shape[0], seed=5)
    layers = ["embed", "encoder.layers.0", "encoder.layers.1", "head"]
    for chosen in (layers, layers[:2] + layers[3:]):
        eng = traced_engine(model, x, layers=chosen)
        chunk = eng.run_chunk(tasks)
        assert repr(chunk.traces) == repr(oracle(model, x, tasks, eng.trace[0], None)), chosen
        assert eng.traced["fast"] > 0
        if chosen == layers:
            by_fault = {t.fault_id: t for t in chunk.traces}
    # a fault on the encoder's output is seen at no encoder layer; one on its last layer there
    assert [d.changed for d in by_fault[0].layers[1:3]] == [0, 0]
    assert [d.changed for d in by_fault[3].layers[1:3]] == [0, 1]


# ---------------------------------------------------------------------------- stored campaigns
def stored_cfg(tmp_path, profile, **over):
    cfg = {
        "name": "traced",
        "seed": 5,
        "model": {"name": "lenet", "dataset": "digits", "pretrained": True},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 32},
        "targets": {"kinds": ["outputs", "weights", "biases"]},
        "sampler": {"name": "uniform", "n": 60},
        "inputs_per_fault": 4,
        "engine": {"name": "fast"},
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "report": False,
        "executor": {"name": "serial", "chunk_faults": 8},
        "trace": {"enabled": True, "profile": str(profile)},
    }
    for k, v in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return cfg


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    """The campaign model's golden ranges over 4 of its inputs (others leave them)."""
    tmp = tmp_path_factory.mktemp("profile")
    cfg = stored_cfg(tmp, "", **{"trace.enabled": False})
    camp = Campaign(from_dict(CampaignConfig, cfg))
    camp.setup()
    path = profile_ranges(camp.model, camp.inputs[:4]).save(tmp / "p.json")
    return path, camp.model, camp.inputs, load_profile(path, camp.model)


def stored_oracle(model, inputs, store_path, profile):
    """trace_runs over the stored runs, sorted; and the stored traces, sorted."""
    with open_store(store_path) as s:
        runs = list(s.runs())
        faults = s.faults()
        got = read_traces(s)
    by: dict[int, list[int]] = {}
    for r in runs:
        by.setdefault(r.fault_id, []).append(r.input_id)
    order = layer_order(model, inputs[[0] * 16])
    want = trace_runs(
        model, inputs, [(k, faults[k], v) for k, v in sorted(by.items())], order, profile=profile
    )
    return sorted(got, key=_run), sorted(want, key=_run), {(r.fault_id, r.input_id) for r in runs}


def _run(t):
    return (t.fault_id, t.input_id)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.parametrize(
    "executor",
    [
        "serial",
        "threads",
        "auto",
        pytest.param("process", marks=pytest.mark.slow),
        pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow]),
    ],
)
def test_stored_campaign_traces_come_from_the_engine(
    tmp_path, tiny_profile, executor, monkeypatch, request
):
    """A stored fast campaign with traces: the stored traces equal trace_runs over the stored
    runs, every run has one, and trace_runs never ran in this process (serial, threads, auto: the
    fast engines traced every run themselves; process, ray: the workers' traces came back with
    their records)."""
    if executor == "ray":
        request.getfixturevalue("local_ray")
    path, model, inputs, prof = tiny_profile
    calls = []
    real = torchfault.analysis.trace_runs
    monkeypatch.setattr(
        torchfault.analysis, "trace_runs", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    over = {"executor.name": executor, "executor.workers": 2}
    res = Campaign(from_dict(CampaignConfig, stored_cfg(tmp_path, path, **over))).run()
    monkeypatch.setattr(torchfault.analysis, "trace_runs", real)
    assert calls == []
    got, want, runs = stored_oracle(model, inputs, tmp_path / "run/campaign.sqlite", prof)
    assert len(runs) == 60 * 4 and {_run(t) for t in got} == runs
    assert repr(got) == repr(want)
    assert repr(sorted(res.traces, key=_run)) == repr(want)
    assert any(t.masked_at for t in got) and any(t.out_of_range_at for t in got)


def test_an_engine_without_traces_gets_them_from_the_campaign(tmp_path, tiny_profile, monkeypatch):
    """An engine (or executor) that brings no traces back: the campaign computes them with
    trace_runs before it stores the chunk's runs."""
    path, model, inputs, prof = tiny_profile
    monkeypatch.setattr(FastEngine, "run_chunk", lambda self, tasks: self.run(tasks))
    Campaign(from_dict(CampaignConfig, stored_cfg(tmp_path, path, **{"sampler.n": 20}))).run()
    got, want, runs = stored_oracle(model, inputs, tmp_path / "run/campaign.sqlite", prof)
    assert {_run(t) for t in got} == runs and repr(got) == repr(want)


def _traced_runs(store_path):
    con = sqlite3.connect(store_path)
    try:
        runs = set(con.execute("SELECT fault_id, input_id FROM runs").fetchall())
        traced = set(con.execute("SELECT fault_id, input_id FROM traces WHERE depth = -1"))
    finally:
        con.close()
    return runs, traced


@pytest.mark.slow
def test_killed_traced_campaign_resumes_with_every_stored_run_traced(tmp_path, tiny_profile):
    """kill -9 in the middle of a traced fast campaign: every run in the store has its trace
    (written before the run), and the resumed campaign ends with the traces of trace_runs."""
    path, model, inputs, prof = tiny_profile
    over = {"sampler.n": 400, "executor.chunk_faults": 2, "store.chunk_size": 4}
    cfg_path = tmp_path / "kill.yaml"
    cfg_path.write_text(yaml.safe_dump(stored_cfg(tmp_path, path, **over)))
    store = tmp_path / "run/campaign.sqlite"
    cmd = [sys.executable, "-m", "torchfault.cli", "campaign", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    n = len(_traced_runs(store)[0])
                except sqlite3.Error:
                    n = 0
                if n >= 40:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = n
                    break
            time.sleep(0.005)
    finally:
        proc.wait()
    assert killed_at is not None and killed_at < 400 * 4, "the campaign was not killed mid-way"
    runs, traced = _traced_runs(store)
    assert 0 < len(runs) < 400 * 4 and runs <= traced
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    runs, traced = _traced_runs(store)
    assert len(runs) == 400 * 4 and runs == traced
    got, want, _ = stored_oracle(model, inputs, store, prof)
    assert repr(got) == repr(want)
