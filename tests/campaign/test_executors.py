# SPDX-License-Identifier: MIT
"""Executors: the table of runs is the same whichever executor ran (or resumed) a campaign."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time

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
from torchfault.store import RunRecord

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
    assert {"serial", "threads", "auto", "process", "ray"} <= set(EXECUTORS.list())
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

    def __init__(self, model, x, golden, engine="fast"):
        self.args = (engine, model, x, golden, Criterion(), 64)

    def __call__(self):
        return build_engine(*self.args)


@pytest.mark.slow
def test_workers_share_no_mutable_model_state():
    """A change the caller makes to its model in place after the workers started is not seen by
    them (it was, through shared memory, before the fix: the reference engine's in-place weight
    faults leaked between workers the same way). A fault-free task must stay masked."""
    torch.manual_seed(0)
    model = create_model("mlp", dataset="digits").eval()
    x = model.example_inputs(16)
    golden = golden_run(model, x)
    setup = _Setup(model, x, golden, engine="reference")
    plain = [[RunTask(k, (), tuple(range(16)))] for k in range(4)]
    with create_executor("process", workers=2) as ex:
        before = [r.outcome for rs in ex.map(setup, plain) for r in rs]
        with torch.no_grad():
            model.fc1.weight.mul_(-1.0)  # the caller's model changes in place
        after = [r.outcome for rs in ex.map(setup, plain) for r in rs]  # the pool is reused
    assert before == ["masked"] * 64
    assert after == ["masked"] * 64  # the workers hold their own copies
    with torch.no_grad():
        model.fc1.weight.mul_(-1.0)


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


# ---------------------------------------------------------------- every executor x engine pair
EXECUTOR_NAMES = ("serial", "threads", "auto", "process", "ray")
ENGINE_NAMES = ("fast", "reference")


def _pair_marks(executor, engine):
    marks = []
    if executor == "ray":
        marks += [pytest.mark.ray, pytest.mark.slow]
    if executor == "process":
        marks += [pytest.mark.slow]
    if executor in ("process", "ray") and engine == "fast" and "TORCHFAULT_SOAK" not in os.environ:
        # make test keeps the pairs at risk (reference: in-place weight faults) and
        # test_process/ray_executor_gives_the_same_table_and_resumes; make soak runs these too
        marks.append(pytest.mark.skip(reason="run by make soak (TORCHFAULT_SOAK=1)"))
    return marks


PAIRS = [
    pytest.param(ex, en, marks=_pair_marks(ex, en), id=f"{ex}-{en}")
    for ex in EXECUTOR_NAMES
    for en in ENGINE_NAMES
]


@pytest.fixture(scope="module")
def reference_table(tmp_path_factory):
    """The oracle: a serial campaign on the reference engine (plain full re-execution)."""
    path = tmp_path_factory.mktemp("serial-reference")
    Campaign(config(path, "serial", "reference")).run()
    rows = table(path / "campaign.sqlite")
    assert len(rows) == 48 * 16
    return rows


@pytest.mark.parametrize(("executor", "engine"), PAIRS)
def test_every_executor_and_engine_store_the_serial_table(
    tmp_path, executor, engine, reference_table, request
):
    """Row by row (``seconds`` aside) the same table as serial + reference. Before workers got
    private copies of the model, process + reference differed here: each worker saw the other's
    in-place weight faults through shared memory."""
    if executor == "ray":
        request.getfixturevalue("local_ray")
    Campaign(config(tmp_path, executor, engine)).run()
    got = table(tmp_path / "campaign.sqlite")
    assert len(got) == len(reference_table)
    diff = [(a, b) for a, b in zip(got, reference_table) if a != b]
    assert not diff, f"{len(diff)} rows differ from serial, e.g. {diff[:3]}"


@pytest.mark.slow
def test_auto_starts_processes_when_they_pay_and_stores_the_same_table(
    tmp_path, reference_table, monkeypatch
):
    from torchfault.campaign._parallel import AutoExecutor

    made = []
    monkeypatch.setattr(AutoExecutor, "start_seconds", 0.0)  # any gain is worth a pool
    monkeypatch.setattr(AutoExecutor, "close", lambda self: made.append(self.chosen))
    Campaign(config(tmp_path, "auto", "reference")).run()
    assert made == ["process"]
    assert table(tmp_path / "campaign.sqlite") == reference_table


def test_auto_stays_serial_for_a_small_campaign(tmp_path, reference_table, monkeypatch):
    from torchfault.campaign._parallel import AutoExecutor, ProcessExecutor

    def no_pool(*a, **k):
        raise AssertionError("auto started worker processes for a campaign too small to gain")

    monkeypatch.setattr(ProcessExecutor, "_ensure_pool", no_pool)
    ex = create_executor("auto", workers=2)
    cfg = config(tmp_path, "serial", "reference")
    camp = Campaign(cfg)
    camp.setup()
    setup = _Setup(camp.model, camp.inputs, camp.golden)
    chunks = [[RunTask(k, camp.sampler.draw(k), tuple(range(16)))] for k in range(6)]
    with ex:
        got = [r for rs in ex.map(setup, chunks) for r in rs]
    assert ex.chosen == "serial" and isinstance(ex, AutoExecutor)
    assert len(got) == 6 * 16


class _NoDeepcopy(_Setup):
    def __deepcopy__(self, memo):
        raise TypeError("cannot deep-copy this model")


class _Neither(_NoDeepcopy):
    def __reduce__(self):
        raise TypeError("cannot pickle this model")


def test_threads_copy_a_setup_that_cannot_be_deep_copied():
    torch.manual_seed(0)
    model = create_model("mlp", dataset="digits").eval()
    x = model.example_inputs(16)
    golden = golden_run(model, x)
    chunks = [[RunTask(k, (), tuple(range(16)))] for k in range(4)]
    with create_executor("threads", workers=2) as ex:
        got = [r.outcome for rs in ex.map(_NoDeepcopy(model, x, golden), chunks) for r in rs]
        assert got == ["masked"] * 64  # copied by a pickle round trip instead
        with pytest.raises(TorchFaultError, match="neither deep-copied.*nor pickled"):
            list(ex.map(_Neither(model, x, golden), chunks))


class _FirstRunProbe:
    """An engine whose first run (where the fast engine traces its model with torch.fx, which
    patches nn.Module.__call__ process-wide) records any other engine running meanwhile."""

    busy = 0
    overlaps: list[int] = []
    guard = threading.Lock()

    def __init__(self):
        self.first = True

    def __call__(self):
        return self

    def run(self, chunk):
        cls = type(self)
        with cls.guard:
            if self.first and cls.busy:
                cls.overlaps.append(cls.busy)
            cls.busy += 1
        time.sleep(0.05 if self.first else 0.02)
        self.first = False
        with cls.guard:
            cls.busy -= 1
        return [RunRecord(t.fault_id, 0, "masked") for t in chunk]


def test_threads_never_run_an_engine_first_run_beside_another_engine():
    """The regression: threads-fast stored 'NameError: module is not installed as a submodule'
    DUEs when one thread's engine traced its model while another thread ran its own."""
    _FirstRunProbe.overlaps.clear()
    chunks = [[RunTask(k, (), (0,))] for k in range(12)]
    with create_executor("threads", workers=3) as ex:
        got = [r.fault_id for rs in ex.map(_FirstRunProbe(), chunks) for r in rs]
    assert sorted(got) == list(range(12))
    assert _FirstRunProbe.overlaps == []
