# SPDX-License-Identifier: MIT
"""The stored campaign: determinism, resume after SIGKILL, refusing a mismatched store, the CLI."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from torchfault import Campaign, CampaignConfig
from torchfault.cli import main
from torchfault.config import from_dict
from torchfault.errors import StoreMismatchError, TorchFaultError

ROOT = Path(__file__).resolve().parents[2]


def tiny(tmp_path, **over):
    cfg = {
        "name": "tiny",
        "seed": 3,
        "model": {"name": f"{ROOT}/examples/my_model.py:build", "kwargs": {"seed": 0}},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 16},
        "targets": {"kinds": ["outputs", "weights"]},
        "sampler": {"name": "uniform", "n": 60},
        "inputs_per_fault": 2,
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "report": False,
        "executor": {"name": "serial", "chunk_faults": 16},
    }
    for key, value in over.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def rows(store_path):
    con = sqlite3.connect(store_path)
    try:
        return con.execute(
            "SELECT fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, error FROM runs ORDER BY fault_id, input_id"
        ).fetchall()
    finally:
        con.close()


def test_campaign_runs_and_is_deterministic(tmp_path):
    a = Campaign(from_dict(CampaignConfig, tiny(tmp_path / "a"))).run()
    b = Campaign(from_dict(CampaignConfig, tiny(tmp_path / "b"))).run()
    assert len(a) == len(b) == 60 * 2
    assert [(r.fault_id, r.input_id, r.outcome) for r in a.runs] == [
        (r.fault_id, r.input_id, r.outcome) for r in b.runs
    ]
    assert rows(tmp_path / "a/run/campaign.sqlite") == rows(tmp_path / "b/run/campaign.sqlite")
    assert sum(a.outcome_counts().values()) == 120
    # another seed draws other faults
    c = Campaign(from_dict(CampaignConfig, tiny(tmp_path / "c", seed=4))).run()
    assert [f for f in c.faults.values()] != [f for f in a.faults.values()]


def test_rerun_resumes_without_duplicates(tmp_path):
    cfg = from_dict(CampaignConfig, tiny(tmp_path))
    first = Campaign(cfg).run()
    again = Campaign(cfg).run()
    assert len(again) == len(first)
    assert rows(tmp_path / "run/campaign.sqlite") == sorted(rows(tmp_path / "run/campaign.sqlite"))


def test_mismatched_config_or_model_is_refused(tmp_path):
    Campaign(from_dict(CampaignConfig, tiny(tmp_path))).run()
    before = rows(tmp_path / "run/campaign.sqlite")
    with pytest.raises(StoreMismatchError):
        Campaign(from_dict(CampaignConfig, tiny(tmp_path, **{"sampler.n": 61}))).run()
    with pytest.raises(StoreMismatchError):
        Campaign(from_dict(CampaignConfig, tiny(tmp_path, **{"model.kwargs": {"seed": 1}}))).run()
    assert rows(tmp_path / "run/campaign.sqlite") == before
    # overwrite starts afresh
    again = Campaign(
        from_dict(CampaignConfig, tiny(tmp_path, **{"sampler.n": 61, "store.overwrite": True}))
    ).run()
    assert len(again) == 122


ADAPTIVE = {
    "sampler.n": None,
    "sampler.adaptive": True,
    "sampler.margin": 0.02,
    "sampler.max_faults": 400,
}


@pytest.mark.slow
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
def test_resume_after_sigkill_gives_identical_rows(tmp_path, adaptive):
    over = {"sampler.n": 300, "executor.chunk_faults": 4, "store.chunk_size": 4}
    if adaptive:  # stops at a round boundary of 20 faults whatever the chunking and the kill
        over.update(ADAPTIVE, **{"sampler.adaptive_step": 20})
    ref = Campaign(
        from_dict(CampaignConfig, tiny(tmp_path / "ref", **{**over, "executor.chunk_faults": 16}))
    ).run()
    if adaptive:
        assert len(ref.runs) < 400 * 2
    cfg_path = tmp_path / "kill.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(tmp_path / "kill", **over)))
    store = tmp_path / "kill/run/campaign.sqlite"
    cmd = [sys.executable, "-m", "torchfault.cli", "campaign", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    n = len(rows(store))
                except sqlite3.Error:
                    n = 0
                if n >= 12:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = n
                    break
            time.sleep(0.005)
    finally:
        proc.wait()
    assert killed_at is not None and killed_at < len(ref.runs), (
        "the campaign was not killed mid-way"
    )
    con = sqlite3.connect(store)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    partial = rows(store)
    assert 0 < len(partial) < len(ref.runs)
    # same command again: resumes and ends with exactly the uninterrupted rows
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert rows(store) == rows(tmp_path / "ref/run/campaign.sqlite")


def test_cli_end_to_end_and_errors(tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(tmp_path, report=True)))
    assert main(["campaign", "--config", str(cfg_path), "--sampler.n", "20", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sampler"]["n"] == 20 and printed["model"]["name"].endswith("my_model.py:build")
    assert main(["campaign", "--config", str(cfg_path), "--sampler.n", "20"]) == 0
    out = capsys.readouterr().out
    assert "sdc" in out.lower()
    run = tmp_path / "run"
    assert (run / "campaign.sqlite").exists() and (run / "campaign.log").stat().st_size > 0
    assert (run / "runs.csv").read_text().count("\n") == 41
    for table in ("overall", "layer", "target", "kind", "bit"):
        assert (run / f"summary_{table}.csv").stat().st_size > 0, table
    assert (run / "report.md").exists()
    # errors name the config field
    for args, field in [
        (["--model.name", "lenett"], "model.name"),
        (["--sampler.name", "unifrom"], "sampler.name"),
        (["--sampler.margin", "1.5", "--sampler.n", "null"], "sampler.margin"),
        (["--targets.modules", "[nope]"], "targets.modules"),
        (["--data.split", "tset"], "data.split"),
        (["--model.checkpoint", str(tmp_path / "nonexist.pt")], "model.checkpoint"),
        (["--targets.format", "fp17"], "targets.format"),
        (["--sampler.bits", "[40]"], "sampler.bits"),
        (["--sampler.fault_model", "bitflip"], "sampler.fault_model"),
        (["--engine.name", "fastt"], "engine.name"),
        (["--out_dir", "/proc/forbidden/x"], "out_dir"),
        (["--store.path", "/proc/forbidden/c.sqlite"], "store.path"),
        (["--sampler.nn", "3"], "sampler.nn"),
    ]:
        assert main(["campaign", "--config", str(cfg_path), *args]) == 2, args
        err = capsys.readouterr().err
        assert f"error: {field}" in err, (args, err)


def test_bad_config_values_raise_config_errors():
    with pytest.raises(TorchFaultError, match="sampler.margin"):
        from_dict(CampaignConfig, {"sampler": {"margin": 0.0}})
    with pytest.raises(TorchFaultError, match="outcome.criterion"):
        from_dict(CampaignConfig, {"outcome": {"criterion": "top2"}})
