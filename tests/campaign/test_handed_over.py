# SPDX-License-Identifier: MIT
"""Runs the fast engine hands to the reference engine are reported: ``CampaignResult.handed_over``
(by reason) from ``run_campaign`` and from a stored ``Campaign`` (serial and threads executors),
and one line of the campaign log; oracle: the same tasks run through a fast engine built by hand,
whose own ``handed_over`` counters say how many runs went where."""

import logging
from pathlib import Path

from torchfault import Campaign, Fault, run_campaign
from torchfault.campaign import RunTask, golden_run, make_criterion
from torchfault.campaign._fast import FastEngine
from torchfault.campaign._fast._notices import REASONS
from torchfault.dnn import create_model

ROOT = Path(__file__).resolve().parents[2]


def _oracle(model, x, tasks):
    """``FastEngine.handed_over`` of ``tasks`` run on an engine built here."""
    engine = FastEngine(model, x, golden_run(model, x, 256), make_criterion(), 256)
    engine.run(tasks)
    assert sum(engine.handed_over.values()) == engine.stats["reference"]
    return {k: v for k, v in engine.handed_over.items() if v}


def test_run_campaign_reports_handed_over_runs_by_reason():
    model = create_model("lenet", dataset="digits").eval()
    x = model.example_inputs(8)
    f = Fault("fc1", "output", (3,), (30,))
    faults = [(f, f), Fault("fc1", "input", (7,), (30,)), f]
    tasks = [
        RunTask(k, fs if isinstance(fs, tuple) else (fs,), tuple(range(8)))
        for k, fs in enumerate(faults)
    ]
    want = _oracle(model, x, tasks)
    assert want == {REASONS["several"]: 8, REASONS["kind"]: 8}
    assert run_campaign(model, x, faults, engine="fast").handed_over == want
    assert run_campaign(model, x, faults).handed_over == want  # the default: the fast engine
    assert run_campaign(model, x, faults, engine="reference").handed_over == {}  # hands nothing


def _config(tmp_path, executor, workers=1):
    return {
        "name": "handed",
        "seed": 5,
        "model": {"name": f"{ROOT}/examples/my_model.py:build", "kwargs": {"seed": 0}},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 8},
        "targets": {"kinds": ["outputs", "inputs"]},
        "sampler": {"name": "uniform", "n": 24},
        "engine": {"name": "fast"},
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "report": False,
        "executor": {"name": executor, "workers": workers, "chunk_faults": 5},
    }


def test_campaign_reports_handed_over_runs_in_result_and_log(tmp_path, caplog):
    camp = Campaign(_config(tmp_path, "serial"))
    with caplog.at_level(logging.INFO, logger="torchfault.campaign"):
        result = camp.run()
    # the oracle: the stored runs' faults, run again on a fast engine built by hand
    by_fault: dict[int, list[int]] = {}
    for r in result.runs:
        by_fault.setdefault(r.fault_id, []).append(r.input_id)
    tasks = [RunTask(k, result.faults[k], tuple(v)) for k, v in sorted(by_fault.items())]
    want = _oracle(camp.model, camp.inputs, tasks)
    assert want.get(REASONS["kind"], 0) > 0  # input faults go to the reference engine
    assert result.handed_over == want
    lines = [m for m in caplog.messages if "handed to the reference engine" in m]
    total = sum(want.values())
    assert lines == [
        f"engine 'fast': {total} runs handed to the reference engine ("
        + "; ".join(f"{k}: {v}" for k, v in sorted(want.items()))
        + ")"
    ]
    # a resumed, complete campaign ran nothing in this call: nothing handed over
    assert Campaign(_config(tmp_path, "serial")).run().handed_over == {}
    # threads: every thread's engine is counted, the same totals
    threads = Campaign(_config(tmp_path / "threads", "threads", workers=2)).run()
    assert threads.handed_over == want
    assert [r.as_tuple()[:3] for r in threads.runs] == [r.as_tuple()[:3] for r in result.runs]


def test_engine_tap_shares_its_engines_with_deep_copies_and_gives_up_once_pickled():
    import copy
    import functools
    import pickle

    from torchfault.campaign._handover import EngineTap

    model = create_model("lenet", dataset="digits").eval()
    x = model.example_inputs(4)
    golden = golden_run(model, x, 256)
    setup = functools.partial(FastEngine, model, x, golden, make_criterion(), 256)
    tap = EngineTap(setup)
    twin = copy.deepcopy(tap)  # what the threads executor gives its other threads
    f = Fault("fc1", "input", (7,), (30,))
    tap().run([RunTask(0, (f,), (0, 1))])
    twin().run([RunTask(1, (f,), (2, 3, 1))])
    assert tap.counts() == {REASONS["kind"]: 5} and twin.counts() == {REASONS["kind"]: 5}
    remote = pickle.loads(pickle.dumps(tap))  # what process and Ray workers get
    remote().run([RunTask(2, (f,), (0,))])
    assert tap.counts() is None and remote.counts() is None
