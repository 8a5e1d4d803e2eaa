# SPDX-License-Identifier: MIT
"""Chaos: a campaign's process is killed with SIGKILL at seeded random instants, then resumed;
the final store must equal an uninterrupted serial campaign on the reference engine, row by row
(``seconds`` aside), for every executor x engine pair, and no worker may outlive its parent.

``make test`` makes one kill per pair; ``make soak`` sets ``TORCHFAULT_CHAOS_KILLS`` (kills per
pair, each followed by a restart that may itself be killed) and ``TORCHFAULT_CHAOS_SEED``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from torchfault import Campaign

COLUMNS = "fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, error"
KILLS = int(os.environ.get("TORCHFAULT_CHAOS_KILLS", "1"))
SEED = int(os.environ.get("TORCHFAULT_CHAOS_SEED", "20261201"))
N_FAULTS, PER_FAULT = 96, 8

SCRIPT = """
import json, sys
from torchfault import Campaign
Campaign(json.loads(sys.argv[1])).run()
"""


def config(out: Path, executor: str = "serial", engine: str = "reference") -> dict:
    return {
        "name": "chaos",
        "seed": 11,
        "model": {"name": "lenet", "dataset": "digits", "pretrained": True},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 16},
        "targets": {"kinds": ["outputs", "weights", "biases"]},
        "sampler": {"name": "uniform", "n": N_FAULTS},
        "inputs_per_fault": PER_FAULT,
        "out_dir": str(out),
        "progress": False,
        "report": False,
        "store": {"chunk_size": 16, "export": []},
        "engine": {"name": engine, "batch_size": 64},
        "executor": {"name": executor, "chunk_faults": 4, "workers": 2},
    }


def table(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT {COLUMNS} FROM runs ORDER BY fault_id, input_id").fetchall()
    finally:
        con.close()


def tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``tag`` (the campaign and its workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag.encode() in env and state != "Z":
            pids.append(int(d.name))
    return pids


def writing(store: Path, pid: int) -> bool:
    """Whether process ``pid`` holds the store's write lock (its lock file names it)."""
    try:
        return json.loads(Path(f"{store}.lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    Campaign(config(out)).run()
    rows = table(out / "campaign.sqlite")
    assert len(rows) == N_FAULTS * PER_FAULT
    return rows


#: the pairs ``make test`` kills (the soak kills every pair, several times)
QUICK = {("serial", "fast"), ("threads", "reference"), ("process", "reference")}


def _marks(executor, engine):
    marks = [pytest.mark.slow]  # a subprocess that imports torch per kill
    if executor == "ray":
        marks.append(pytest.mark.ray)
    soak = "TORCHFAULT_CHAOS_KILLS" in os.environ or "TORCHFAULT_SOAK" in os.environ
    if not soak and (executor, engine) not in QUICK:
        marks.append(pytest.mark.skip(reason="make soak kills every pair"))
    return marks


PAIRS = [
    pytest.param(ex, en, marks=_marks(ex, en), id=f"{ex}-{en}")
    for ex in ("serial", "threads", "auto", "process", "ray")
    for en in ("fast", "reference")
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("executor", "engine"), PAIRS)
def test_kill_at_random_instants_then_resume(tmp_path, executor, engine, oracle):
    if executor == "ray":
        pytest.importorskip("ray")
    rng = random.Random(f"{SEED}-{executor}-{engine}")
    cfg = config(tmp_path, executor, engine)
    store = tmp_path / "campaign.sqlite"
    # the run phase lasts about a second in one process; worker processes first take seconds
    # to start, so their kills are spread wider
    span = {"process": 15.0, "ray": 20.0}.get(executor, 1.5)
    kills = []
    for _ in range(KILLS):
        tag = f"torchfault-chaos-{uuid.uuid4().hex}"
        env = {**os.environ, "TORCHFAULT_CHAOS_TAG": tag}
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, json.dumps(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while not writing(store, proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # until the campaign has built its model and holds the store
        delay = rng.uniform(0.0, span)
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if finished:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        proc.stderr.close()
        stored = len(table(store)) if store.exists() else 0
        what = "finished first" if finished else f"killed with {stored} runs stored"
        kills.append((round(delay, 2), what))
        # no worker outlives the killed campaign: process workers poll their parent 5 times a
        # second; a local Ray runtime's actors die with their driver, and its dashboard and
        # runtime-env agents follow by themselves, 15 s later on an idle machine
        killed_at = time.monotonic()
        end = killed_at + (120 if executor == "ray" else 10)
        while tagged(tag) and time.monotonic() < end:
            time.sleep(0.1)
        left = tagged(tag)
        kills[-1] += (f"all gone {time.monotonic() - killed_at:.1f} s later",)
        for pid in left:  # do not leave them to the next test
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind by the killed campaign: {left} (kills {kills})"
    Campaign(cfg).run()  # resume in this process
    print(f"{executor}-{engine}: kills (delay s, state) {kills}")
    got = table(store)
    diff = [(a, b) for a, b in zip(got, oracle) if a != b]
    assert len(got) == len(oracle) and not diff, (kills, diff[:3])
