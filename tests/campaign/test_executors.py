# SPDX-License-Identifier: MIT
"""Executors: the table of runs is the same whichever executor ran (or resumed) a campaign."""

from __future__ import annotations

import sqlite3
import sys

import pytest
import torch

from torchfault import Campaign, CampaignConfig
from torchfault.campaign import EXECUTORS, RunTask, create_executor, golden_run
from torchfault.campaign._campaign import build_engine
from torchfault.campaign._outcome import Criterion
from torchfault.config import from_dict
from torchfault.dnn import create_model
from torchfault.errors import TorchFaultError
from torchfault.faults import Fault

COLUMNS = "fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, error"


def config(tmp_path, executor="serial", engine="fast", **executor_kw):
    return from_dict(
        CampaignConfig,
        {
            "name": "executors",
            "seed": 5,
            "model": {"name": "lenet", "dataset": "digits", "pretrained": True},
            "data": {"dataset": "digits", "split": "test", "num_inputs": 24},
            "targets": {"kinds": ["outputs", "weights", "biases"]},
            "sampler": {"name": "uniform", "n": 48},
            "inputs_per_fault": 16,
            "out_dir": str(tmp_path),
            "progress": False,
            "report": False,
            "engine": {"name": engine, "batch_size": 64},
            "executor": {"name": executor, "chunk_faults": 6, "workers": 2, **executor_kw},
        },
    )


def table(path):
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT {COLUMNS} FROM runs ORDER BY fault_id, input_id").fetchall()
    finally:
        con.close()


def crash(path, keep_every=3):
    """Simulate a campaign killed half-way: drop the runs of two chunks in three."""
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("DELETE FROM runs WHERE (fault_id / 6) % ? != 0", (keep_every,))
        left = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()
    return left


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The table of one uninterrupted serial campaign."""
    path = tmp_path_factory.mktemp("serial")
    Campaign(config(path)).run()
    rows = table(path / "campaign.sqlite")
    assert len(rows) == 48 * 16
    return rows


def test_executors_are_registered():
    assert {"serial", "process", "ray"} <= set(EXECUTORS.list())
    with pytest.raises(ValueError, match="workers"):
        create_executor("process", workers=0)


@pytest.mark.slow
def test_process_executor_gives_the_same_table_and_resumes(tmp_path, uninterrupted):
    Campaign(config(tmp_path / "a", "process")).run()
    assert table(tmp_path / "a/campaign.sqlite") == uninterrupted
    # crash a serial campaign half-way, finish it with worker processes
    Campaign(config(tmp_path / "b")).run()
    left = crash(tmp_path / "b/campaign.sqlite")
    assert 0 < left < len(uninterrupted)
    Campaign(config(tmp_path / "b", "process")).run()
    assert table(tmp_path / "b/campaign.sqlite") == uninterrupted
    # and the other way round: crash a process campaign, finish it serially
    left = crash(tmp_path / "a/campaign.sqlite", keep_every=2)
    Campaign(config(tmp_path / "a", "serial")).run()
    assert table(tmp_path / "a/campaign.sqlite") == uninterrupted


@pytest.mark.slow
def test_process_executor_returns_every_chunk_in_any_order():
    torch.manual_seed(0)
    model = create_model("mlp", dataset="digits").eval()
    x = model.example_inputs(16)
    golden = golden_run(model, x)
    setup = _Setup(model, x, golden)
    faults = [Fault("fc1", "output", index=(j,), bits=(30,)) for j in range(12)]
    chunks = [[RunTask(k, (f,), tuple(range(16)))] for k, f in enumerate(faults)]
    with create_executor("process", workers=2) as ex:
        got = [r for records in ex.map(setup, chunks) for r in records]
        again = [r for records in ex.map(setup, chunks[:3]) for r in records]  # the pool is reused
    want = setup().run([c[0] for c in chunks])
    strip = lambda r: (r.fault_id, r.input_id, r.outcome, r.faulty_top1, r.max_abs_diff)  # noqa: E731
    assert sorted(map(strip, got)) == sorted(map(strip, want))
    assert len(again) == 3 * 16


class _Setup:
    """A picklable engine factory (what Campaign passes: functools.partial of build_engine)."""

    def __init__(self, model, x, golden):
        self.args = ("fast", model, x, golden, Criterion(), 64)

    def __call__(self):
        return build_engine(*self.args)


def test_a_worker_error_reaches_the_caller():
    with (
        create_executor("process", workers=1) as ex,
        pytest.raises(TorchFaultError, match="unknown module"),
    ):
        list(ex.map(_BadSetup(), [[RunTask(0, (Fault("nope", "weight", (0,), (1,)),), (0,))]]))


class _BadSetup:
    def __call__(self):
        model = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
        x = torch.randn(4, 3)
        return build_engine("reference", model, x, model(x).detach(), Criterion(), 8)


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    ex = create_executor("ray", workers=1)
    with pytest.raises(TorchFaultError, match=r"torchfault\[ray\]"):
        list(ex.map(_BadSetup(), [[RunTask(0, (), (0,))]]))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_gives_the_same_table_and_resumes(tmp_path, uninterrupted, local_ray):
    Campaign(config(tmp_path / "a", "ray")).run()
    assert table(tmp_path / "a/campaign.sqlite") == uninterrupted
    assert local_ray.is_initialized()  # a runtime it found is left running
    Campaign(config(tmp_path / "b", "process")).run()
    crash(tmp_path / "b/campaign.sqlite")
    Campaign(config(tmp_path / "b", "ray")).run()
    assert table(tmp_path / "b/campaign.sqlite") == uninterrupted
