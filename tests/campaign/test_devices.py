# SPDX-License-Identifier: MIT
"""Devices for parallel executors (issue 13 item 5) and the CLI's metrics summary (item 5 leftovers).

Nothing here runs on a GPU: the worker-to-GPU assignment and Ray's actor options are tested with a
mocked GPU count and the CPU's ``meta`` device standing in for a worker's GPU; the one test that
needs CUDA is marked ``gpu`` and skipped without it.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import sqlite3
import types

import pytest
import torch
from torch import nn

from torchfault.campaign import _parallel
from torchfault.campaign._parallel import (
    ProcessExecutor,
    RayExecutor,
    campaign_device,
    ray_actor_options,
    worker_devices,
)
from torchfault.errors import TorchFaultError


# ----------------------------------------------------------------------------- which GPU each worker
@pytest.mark.parametrize(
    ("device", "gpus", "workers", "want"),
    [
        ("cuda", 1, 3, ["cuda:0", "cuda:0", "cuda:0"]),
        ("cuda", 2, 3, ["cuda:0", "cuda:1", "cuda:0"]),
        ("cuda:0", 4, 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        ("cuda:2", 4, 5, ["cuda:2", "cuda:3", "cuda:0", "cuda:1", "cuda:2"]),
        ("cuda:1", 2, 1, ["cuda:1"]),
        ("cpu", 0, 2, ["cpu", "cpu"]),
        ("cpu", 4, 2, ["cpu", "cpu"]),  # GPUs present, campaign on the CPU: unchanged
    ],
)
def test_worker_devices_round_robin_over_the_visible_gpus(monkeypatch, device, gpus, workers, want):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    got = worker_devices(device, workers)
    assert got == [torch.device(w) for w in want]
    # an explicit count gives the same as the mocked one
    assert worker_devices(device, workers, gpus=gpus) == got


def test_worker_devices_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(TorchFaultError, match="no CUDA GPU.*engine.device"):
        worker_devices("cuda:0", 2)


def test_campaign_device_is_the_setup_models():
    model = nn.Linear(2, 2).to("meta")
    assert campaign_device(functools.partial(print, "engine", model)) == torch.device("meta")
    assert campaign_device(functools.partial(print, x=torch.zeros(1, device="meta"))).type == "meta"
    assert campaign_device(functools.partial(print, nn.Linear(2, 2))) == torch.device("cpu")
    assert campaign_device(lambda: None) == torch.device("cpu")

    class Tap:  # a wrapper around the setup, as the campaign's engine-counting one is
        def __init__(self, setup):
            self.setup, self.engines = setup, []

        def __call__(self):
            return self.setup()

    assert campaign_device(Tap(functools.partial(print, "engine", model))) == torch.device("meta")
    assert campaign_device(Tap(functools.partial(print, "engine"))) == torch.device("cpu")


class _Engine:
    """A stand-in engine: remembers where the model, inputs and golden outputs were loaded."""

    def __init__(self, model, inputs, golden):
        self.devices = (next(model.parameters()).device, inputs.device, golden[0].device)

    def run(self, chunk):
        return []


def test_each_worker_loads_the_setup_onto_its_own_device(monkeypatch):
    """The real worker initialiser, in this process: worker k takes devices[k % n] and every
    tensor of the setup that was on the campaign's device is loaded there (``meta`` stands in for
    a second GPU; the CPU for the first)."""
    monkeypatch.setattr(_parallel, "_die_with_parent", lambda parent: None)
    setup = functools.partial(_Engine, nn.Linear(3, 2), torch.ones(4, 3), [torch.zeros(4, 2)])
    data = _parallel._setup_bytes_for_devices(setup)
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    devices = ("meta", "cpu")
    seen = []
    for _ in range(5):
        _parallel._init_worker(data, torch.get_num_threads(), 0, devices, "cpu", counter)
        seen.append(_parallel._WORKER_ENGINE.devices)
    monkeypatch.setattr(_parallel, "_WORKER_ENGINE", None)
    meta, cpu = (torch.device("meta"),) * 3, (torch.device("cpu"),) * 3
    assert seen == [meta, cpu, meta, cpu, meta]
    assert counter.value == 5


@pytest.mark.parametrize("devices", [(), ("cpu",)])
def test_a_worker_builds_its_engine_under_deterministic_algorithms_when_asked(monkeypatch, devices):
    """engine.deterministic reaches every worker: the setup is build_engine(deterministic=True),
    which switches torch.use_deterministic_algorithms on in the worker before the engine is made
    (both ways a setup travels: plain pickle and torch.save for devices)."""
    from torchfault.campaign import golden_run
    from torchfault.campaign._campaign import build_engine
    from torchfault.campaign._outcome import Criterion

    monkeypatch.setattr(_parallel, "_die_with_parent", lambda parent: None)
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    x = torch.ones(4, 3)
    setup = functools.partial(
        build_engine,
        "reference",
        model,
        x,
        golden_run(model, x),
        Criterion(),
        4,
        deterministic=True,
    )
    if devices:
        data = _parallel._setup_bytes_for_devices(setup)
        args = (devices, "cpu", multiprocessing.get_context("spawn").Value("i", 0))
    else:
        data, args = _parallel._setup_bytes(setup), ()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        _parallel._init_worker(data, torch.get_num_threads(), 0, *args)
        assert torch.are_deterministic_algorithms_enabled()
        assert _parallel._WORKER_ENGINE is not None
    finally:
        torch.use_deterministic_algorithms(before)
        monkeypatch.setattr(_parallel, "_WORKER_ENGINE", None)


class _FakePool:
    def __init__(self, n, initializer=None, initargs=()):
        self.n, self.initializer, self.initargs = n, initializer, initargs

    def terminate(self):
        pass

    def join(self):
        pass


def _fake_spawn(monkeypatch):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    fake = types.SimpleNamespace(Pool=_FakePool, Value=ctx.Value)
    monkeypatch.setattr(mp, "get_context", lambda method: fake)


def test_process_pool_gives_cuda_workers_one_gpu_each_and_leaves_cpu_alone(monkeypatch):
    _fake_spawn(monkeypatch)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    setup = functools.partial(_Engine, nn.Linear(3, 2), torch.ones(4, 3), [torch.zeros(4, 2)])

    cpu = ProcessExecutor(workers=3)
    pool = cpu._ensure_pool(setup)
    # CPU: the initialiser's arguments are what they were before devices (plain pickle bytes)
    assert len(pool.initargs) == 3 and cpu.devices == []
    assert _parallel.pickle.loads(pool.initargs[0])().devices == (torch.device("cpu"),) * 3

    gpu = ProcessExecutor(workers=3)
    gpu.device = torch.device("cuda", 1)  # as the campaign says (the model here is on the CPU)
    pool = gpu._ensure_pool(setup)
    assert gpu.devices == [torch.device(d) for d in ("cuda:1", "cuda:0", "cuda:1")]
    data, _, _, devices, home, counter = pool.initargs
    assert devices == ("cuda:1", "cuda:0", "cuda:1") and home == "cuda:1" and counter.value == 0
    # the bytes carry the whole setup: loaded with the CPU mapped to meta, every tensor moves
    moved = _parallel._load_setup(data, "cpu", "meta")()
    assert moved.devices == (torch.device("meta"),) * 3
    cpu.close()
    gpu.close()


# ----------------------------------------------------------------------------- Ray actors
@pytest.mark.parametrize(
    ("num_gpus", "device", "want"),
    [
        (None, "cpu", 0),
        (None, "cuda", 1),
        (None, "cuda:3", 1),
        (0.5, "cuda:0", 0.5),
        (2, "cuda", 2),
        (1, "cpu", 1),  # asked for: granted even on a CPU campaign
    ],
)
def test_ray_actor_options(num_gpus, device, want):
    assert ray_actor_options(num_gpus, device) == {"num_cpus": 1, "num_gpus": want}


@pytest.mark.parametrize(
    ("num_gpus", "device", "match"),
    [(0, "cuda:0", "num_gpus: 0 GPUs.*cuda:0"), (-1, "cpu", "num_gpus: must be >= 0, got -1")],
)
def test_ray_actor_options_refuses_bad_gpu_counts(num_gpus, device, match):
    with pytest.raises(TorchFaultError, match=match):
        ray_actor_options(num_gpus, device)


class _FakeRay:
    """Records what the executor asks Ray for; starts nothing."""

    def __init__(self):
        self.inits, self.options, self.actors, self.puts = [], [], [], []

    def is_initialized(self):
        return True

    def init(self, **kw):
        self.inits.append(kw)

    def put(self, value):
        self.puts.append(value)
        return len(self.puts) - 1

    def remote(self, **options):
        self.options.append(options)
        fake = self

        class Actor:
            @staticmethod
            def remote(*args):
                fake.actors.append(args)
                return args

        return lambda cls: Actor

    def kill(self, actor):
        pass


@pytest.mark.parametrize(
    ("device", "num_gpus", "gpus", "home"),
    [("cpu", None, 0, None), ("cuda:0", None, 1, "cuda:0"), ("cuda:1", 0.25, 0.25, "cuda:1")],
)
def test_ray_actors_request_gpus_for_a_cuda_campaign(monkeypatch, device, num_gpus, gpus, home):
    fake = _FakeRay()
    monkeypatch.setattr(_parallel, "_import_ray", lambda: fake)
    ex = RayExecutor(workers=3, num_gpus=num_gpus)
    ex.device = torch.device(device)
    setup = functools.partial(_Engine, nn.Linear(3, 2), torch.ones(4, 3), [torch.zeros(4, 2)])
    ex._ensure_actors(setup)
    assert fake.options == [{"num_cpus": 1, "num_gpus": gpus}]
    assert len(fake.actors) == 3
    if home is None:  # CPU: the actor gets the plain pickle bytes, as before
        assert all(a == (0, 1) for a in fake.actors)
        assert _parallel.pickle.loads(fake.puts[0])().devices == (torch.device("cpu"),) * 3
    else:  # CUDA: the actor loads onto the GPU Ray gives it (its cuda:0)
        assert all(a == (0, 1, home) for a in fake.actors)
        assert _parallel._load_setup(fake.puts[0], "cpu", "meta")().devices[0].type == "meta"


def test_ray_refuses_no_gpu_for_a_cuda_campaign_before_starting_ray(monkeypatch):
    fake = _FakeRay()
    fake.is_initialized = lambda: False
    monkeypatch.setattr(_parallel, "_import_ray", lambda: fake)
    ex = RayExecutor(workers=2, num_gpus=0)
    ex.device = torch.device("cuda", 0)
    with pytest.raises(TorchFaultError, match="executor.num_gpus"):
        ex._ensure_actors(
            functools.partial(_Engine, nn.Linear(3, 2), torch.ones(1), [torch.ones(1)])
        )
    assert fake.inits == [] and fake.options == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_process_workers_on_gpus_give_the_serial_cuda_records():
    from torchfault.campaign import RunTask, create_executor, golden_run
    from torchfault.campaign._campaign import build_engine
    from torchfault.campaign._outcome import Criterion
    from torchfault.faults import Fault

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval().to("cuda")
    x = torch.randn(8, 6, device="cuda")
    golden = golden_run(model, x)
    setup = functools.partial(build_engine, "reference", model, x, golden, Criterion(), 8)
    tasks = [
        RunTask(i, [Fault("0", "weight", (i % 8, i % 6), (30,))], list(range(8))) for i in range(6)
    ]

    def rows(records):  # seconds aside
        return sorted(
            (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)
            for r in records
        )

    serial = rows(setup().run(tasks))
    ex = create_executor("process", workers=2)
    try:
        got = rows(r for c in ex.map(setup, [tasks[:3], tasks[3:]]) for r in c)
        assert ex.devices == worker_devices("cuda:0", 2)
    finally:
        ex.close()
    assert got == serial and len(got) == 48


# ----------------------------------------------------------------------------- CLI metrics summary
REGRESSION_PY = """
import torch


def regressor():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))


def vectors(split="test", n=12):
    g = torch.Generator().manual_seed(6)
    return [(torch.randn(4, generator=g), None) for _ in range(n)]
"""


def _cli_config(tmp_path, criterion):
    import yaml

    data = tmp_path / "reg.py"
    data.write_text(REGRESSION_PY)
    cfg = {
        "name": "reg",
        "out_dir": str(tmp_path / "run"),
        "report": False,
        "progress": False,
        "model": {"name": f"{data}:regressor"},
        "data": {"dataset": f"{data}:vectors", "num_inputs": 12},
        "targets": {"kinds": ["weights", "biases"]},
        "sampler": {"n": 20},
        "seed": 2,
        "inputs_per_fault": 3,
        "outcome": criterion,
        "store": {"export": []},
    }
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stored_metric_rows(store_path):
    """(metric, outcome, runs, mean, min, max) from the store's tables, computed here."""
    con = sqlite3.connect(store_path)
    try:
        rows = con.execute(
            "SELECT m.name, r.outcome, m.value FROM run_metrics m JOIN runs r "
            "ON r.fault_id = m.fault_id AND r.input_id = m.input_id WHERE m.value IS NOT NULL"
        ).fetchall()
    finally:
        con.close()
    groups: dict[tuple[str, str], list[float]] = {}
    for name, outcome, value in rows:
        groups.setdefault((name, "all"), []).append(float(value))
        groups.setdefault((name, outcome), []).append(float(value))
    return {
        key: [str(len(v)), *(f"{x:.4g}" for x in (math.fsum(v) / len(v), min(v), max(v)))]
        for key, v in groups.items()
    }


def test_cli_campaign_prints_the_criterion_metrics_after_the_summary(tmp_path, capsys):
    from torchfault.cli import main

    path = _cli_config(tmp_path, {"criterion": "regression", "threshold": 0.01})
    assert main(["campaign", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    want = _stored_metric_rows(tmp_path / "run" / "campaign.sqlite")
    assert ("rel_error", "all") in want and want[("rel_error", "all")][0] == "60"
    assert len({k[1] for k in want}) >= 3  # all and at least two outcomes
    assert "criterion metrics" in out
    # after the outcome summary, before the list of written files
    assert out.index("criterion metrics") < out.index("written:")
    assert out.index("criterion metrics") > out.lower().index("sdc")
    lines = [ln.replace("│", " ").replace("|", " ").split() for ln in out.splitlines()]
    for (name, outcome), cells in want.items():
        assert [name, outcome, *cells] in lines, (name, outcome, cells)


def test_cli_campaign_prints_no_metrics_table_for_a_criterion_without_metrics(tmp_path, capsys):
    from torchfault.cli import main

    path = _cli_config(tmp_path, {"criterion": "tolerance", "tolerance": 1e-6})
    assert main(["campaign", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "written:" in out and "criterion metrics" not in out


def test_executor_num_gpus_reaches_the_ray_executor_from_a_config():
    from torchfault.campaign import Campaign, CampaignConfig
    from torchfault.config import from_dict
    from torchfault.errors import ConfigError

    cfg = from_dict(CampaignConfig, {"executor": {"name": "ray", "num_gpus": 0.5}})
    assert cfg.executor.num_gpus == 0.5
    ex = Campaign(cfg)._executor()
    assert ex.num_gpus == 0.5
    with pytest.raises(ConfigError, match=r"executor\.num_gpus") as info:
        from_dict(CampaignConfig, {"executor": {"name": "ray", "num_gpus": -1}})
    assert info.value.field == "executor.num_gpus"
