# SPDX-License-Identifier: MIT
"""The fast engine is the default engine (issue 12 item 5), and ``reference`` is one word away.

Every default points at it: :func:`run_campaign`'s ``engine``, ``EngineConfig.name`` and so the
command line's ``--engine.name``. What the fast engine does not cover (tuple and dict inputs,
devices other than the CPU, random fault models, several faults in one run, a model torch.fx
cannot trace) it hands to the reference engine itself: each such case runs here through
``run_campaign`` with the default engine and gives the reference engine's records (every field
but ``seconds``), with the runs counted in ``result.handed_over``. A store begun on the reference
engine (the default before) resumes on the default engine to the same rows.
"""

from __future__ import annotations

import inspect
import logging
import math
import sqlite3

import pytest
import torch
import torch.nn as nn
import yaml

from torchfault import Campaign, CampaignConfig, Fault, run_campaign
from torchfault.campaign import Criterion, _run
from torchfault.campaign._config import EngineConfig
from torchfault.campaign._engine import (
    DEFAULT_ENGINE,
    HandedOverEngine,
    ReferenceEngine,
    make_engine,
)
from torchfault.campaign._fast import FastEngine
from torchfault.campaign._fast._notices import REASONS
from torchfault.cli import main
from torchfault.config import from_dict


def _key(r):
    """A record without its timing (NaN as a string, so two NaNs compare equal)."""
    diff = r.max_abs_diff
    diff = "nan" if isinstance(diff, float) and math.isnan(diff) else diff
    metrics = tuple(getattr(r, "metrics", ()))
    return (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, diff, r.error, metrics)


def _same_records(default, reference):
    assert [_key(r) for r in default.runs] == [_key(r) for r in reference.runs]


class TwoInputs(nn.Module):
    """Takes a tuple of two tensors (positional arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(6, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x) + self.b(y)))


class Keywords(nn.Module):
    """Takes a dict of tensors (keyword arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(features)) * mask)


class Untraceable(nn.Module):
    """Python control flow on a traced value: torch.fx cannot trace it (rows stay independent)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if h.dim() == 2:
            h = h * 2
        return self.head(h)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def _bit_flips(a: str, head: str) -> list[Fault]:
    """Weight, bias and output flips in two layers, bits from the mantissa to the sign."""
    return [
        Fault(module, target, index=index, bits=(bit,))
        for module, target, index in (
            (a, "weight", (1, 2)),
            (head, "weight", (0, 3)),
            (head, "bias", (2,)),
            (a, "output", (5,)),
        )
        for bit in (3, 23, 30, 31)
    ]


@pytest.fixture
def xs() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(7, 6)


# ------------------------------------------------------------------------------- the defaults
def test_every_default_names_the_fast_engine():
    assert DEFAULT_ENGINE == "fast"
    assert inspect.signature(run_campaign).parameters["engine"].default == "fast"
    assert EngineConfig().name == "fast"
    cfg = from_dict(CampaignConfig, {"model": {"name": "lenet", "dataset": "digits"}})
    assert cfg.engine.name == "fast"
    # one word away, and a bad name is still refused by name
    assert EngineConfig(name="reference").name == "reference"


def test_run_campaign_builds_the_fast_engine_by_default(monkeypatch, xs):
    built = []

    def spy(*args, **kwargs):
        engine = make_engine(*args, **kwargs)
        built.append(engine)
        return engine

    monkeypatch.setattr(_run, "make_engine", spy)
    model, faults = _mlp(), _bit_flips("0", "2")
    default = run_campaign(model, xs, faults)
    reference = run_campaign(model, xs, faults, engine="reference")
    assert type(built[0]) is FastEngine and type(built[1]) is ReferenceEngine
    _same_records(default, reference)
    assert default.handed_over == {} and reference.handed_over == {}
    assert built[0].stats["fast"] == len(default.runs) and built[0].stats["reference"] == 0


def test_cli_config_defaults_to_the_fast_engine(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "lenet", "dataset": "digits"}}))
    assert main(["campaign", "--config", str(path), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["engine"]["name"] == "fast"
    args = ["campaign", "--config", str(path), "--engine.name", "reference", "--print_config"]
    assert main(args) == 0
    assert yaml.safe_load(capsys.readouterr().out)["engine"]["name"] == "reference"


# ------------------------------------------------- what the fast engine hands over, on the default
def test_tuple_inputs_on_the_default_engine_give_the_reference_records(xs):
    torch.manual_seed(1)
    model, inputs = TwoInputs(), (xs, torch.randn(7, 6))
    faults = _bit_flips("a", "head") + [Fault("b", "weight", index=(4, 1), bits=(30,))]
    default = run_campaign(model, inputs, faults)
    _same_records(default, run_campaign(model, inputs, faults, engine="reference"))
    ((reason, n),) = default.handed_over.items()
    assert reason.startswith("inputs of another structure") and n == len(default.runs)


def test_dict_inputs_on_the_default_engine_give_the_reference_records(xs):
    torch.manual_seed(2)
    model = Keywords()
    inputs = {"features": xs, "mask": (torch.rand(7, 8) > 0.3).float()}
    faults = _bit_flips("a", "head")
    default = run_campaign(model, inputs, faults)
    _same_records(default, run_campaign(model, inputs, faults, engine="reference"))
    ((reason, n),) = default.handed_over.items()
    assert reason.startswith("inputs of another structure") and n == len(default.runs)


def test_random_value_faults_on_the_default_engine_give_the_reference_records(xs):
    torch.manual_seed(3)
    model = _mlp()
    params = {"low": -8.0, "high": 8.0}
    faults = [
        Fault("0", "weight", index=(1, 2), model="random_value", params=params),
        Fault("2", "bias", index=(3,), model="random_value", params=params),
        Fault("0", "output", index=(4,), model="random_value", params=params),
    ] + _bit_flips("0", "2")[:4]
    default = run_campaign(model, xs, faults)
    _same_records(default, run_campaign(model, xs, faults, engine="reference"))
    assert default.handed_over == {REASONS["random"]: 3 * len(xs)}


def test_several_faults_per_run_on_the_default_engine_give_the_reference_records(xs):
    torch.manual_seed(4)
    model = _mlp()
    flips = _bit_flips("0", "2")
    sets = [(flips[i], flips[-1 - i]) for i in range(6)] + [(flips[7],)]
    default = run_campaign(model, xs, sets)
    _same_records(default, run_campaign(model, xs, sets, engine="reference"))
    assert default.handed_over == {REASONS["several"]: 6 * len(xs)}


def test_a_model_fx_cannot_trace_on_the_default_engine_gives_the_reference_records(xs):
    torch.manual_seed(5)
    model = Untraceable()
    faults = _bit_flips("a", "head")
    default = run_campaign(model, xs, faults)
    _same_records(default, run_campaign(model, xs, faults, engine="reference"))
    assert default.handed_over == {REASONS["trace"]: len(default.runs)}


def test_metrics_criterion_on_the_default_engine_gives_the_reference_metrics(xs):
    torch.manual_seed(6)
    model, faults = _mlp(), _bit_flips("0", "2")
    default = run_campaign(model, xs, faults, criterion="regression")
    reference = run_campaign(model, xs, faults, criterion="regression", engine="reference")
    _same_records(default, reference)
    assert default.metrics == reference.metrics and default.metrics


def test_the_default_engine_hands_other_devices_to_the_reference_engine():
    """Built without running anything (no GPU here): the ``meta`` device stands in for one."""
    model = _mlp().to("meta")
    x = torch.empty(4, 6, device="meta")
    engine = make_engine(DEFAULT_ENGINE, model, x, torch.empty(4, 4, device="meta"), Criterion(), 8)
    assert isinstance(engine, HandedOverEngine) and engine.requested == "fast"
    assert engine.reason.startswith("device meta")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_campaign_on_the_default_engine_gives_the_reference_records(xs):
    torch.manual_seed(7)
    model, faults = _mlp(), _bit_flips("0", "2")
    default = run_campaign(model, xs, faults, device="cuda")
    _same_records(default, run_campaign(model, xs, faults, device="cuda", engine="reference"))
    ((reason, n),) = default.handed_over.items()
    assert reason.startswith("device cuda") and n == len(default.runs)


# ------------------------------------------------------------------------------ stored campaigns
def _stored(tmp_path, engine=None):
    d = {
        "name": "default-engine",
        "seed": 3,
        "model": {"name": "lenet", "dataset": "digits", "pretrained": True},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 8},
        "targets": {"kinds": ["outputs", "weights", "biases"]},
        "sampler": {"name": "uniform", "n": 24},
        "inputs_per_fault": 4,
        "out_dir": str(tmp_path),
        "progress": False,
        "report": False,
        "executor": {"name": "serial", "chunk_faults": 4},
    }
    if engine is not None:
        d["engine"] = {"name": engine}
    return from_dict(CampaignConfig, d)


def _table(path):
    con = sqlite3.connect(path)
    try:
        cols = "fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, error"
        return con.execute(f"SELECT {cols} FROM runs ORDER BY fault_id, input_id").fetchall()
    finally:
        con.close()


def test_a_store_begun_on_the_reference_engine_resumes_on_the_default(tmp_path, caplog):
    """The engine is not part of a store's identity: a store the old default (reference) began
    resumes with a config that names no engine, and ends with the uninterrupted rows."""
    want_dir, dir_ = tmp_path / "want", tmp_path / "resumed"
    Campaign(_stored(want_dir, "reference")).run()
    want = _table(want_dir / "campaign.sqlite")
    Campaign(_stored(dir_, "reference")).run()
    store = dir_ / "campaign.sqlite"
    con = sqlite3.connect(store)
    with con:
        con.execute("DELETE FROM runs WHERE fault_id % 3 != 0")
    con.close()
    assert 0 < len(_table(store)) < len(want)
    with caplog.at_level(logging.INFO, logger="torchfault.campaign"):
        result = Campaign(_stored(dir_)).run()
    assert _table(store) == want and len(result.runs) == len(want)
    assert result.handed_over == {}
    assert "engine 'fast': 0 runs handed to the reference engine" in caplog.text
