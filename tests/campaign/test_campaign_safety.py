# SPDX-License-Identifier: MIT
"""Stored campaigns keep data safe and results exact: overwrite never deletes a foreign file,
adaptive stopping is a function of the config, a changed model is refused on resume, bad settings
are refused (naming their field) before any store exists, and the log keeps what was printed."""

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from torchfault import Campaign, CampaignConfig
from torchfault.analysis import summarize_store
from torchfault.cli import main
from torchfault.config import from_dict
from torchfault.errors import ConfigError, StoreMismatchError, TorchFaultError
from torchfault.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]

FACTORY = """
import torch
import torch.nn as nn


def build(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.{act}(), nn.Linear(32, 10))
"""


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


def campaign(tmp_path, **over):
    return Campaign(from_dict(CampaignConfig, tiny(tmp_path, **over)))


def rows(store_path):
    con = sqlite3.connect(store_path)
    try:
        return con.execute(
            "SELECT fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, error FROM runs ORDER BY fault_id, input_id"
        ).fetchall()
    finally:
        con.close()


def delete_runs(store_path, where):
    con = sqlite3.connect(store_path)
    try:
        con.execute(f"DELETE FROM runs WHERE {where}")
        con.commit()
    finally:
        con.close()


def write_config(tmp_path, name="c.yaml", **over):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny(tmp_path, **over)))
    return path


# ---------------------------------------------------------------- 1. overwrite


def test_overwrite_never_deletes_a_foreign_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("precious notes\n" * 100)
    with pytest.raises(TorchFaultError, match="store.path"):
        campaign(tmp_path, **{"store.path": str(text), "store.overwrite": True}).run()
    assert text.read_text() == "precious notes\n" * 100
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE accounts(id INTEGER)")
    con.execute("INSERT INTO accounts VALUES (42)")
    con.commit()
    con.close()
    with pytest.raises(TorchFaultError, match="not a torchfault results store"):
        campaign(tmp_path, **{"store.path": str(other), "store.overwrite": True}).run()
    con = sqlite3.connect(other)
    assert con.execute("SELECT id FROM accounts").fetchall() == [(42,)]
    con.close()


def test_overwrite_replaces_a_torchfault_store(tmp_path):
    path = tmp_path / "run/campaign.sqlite"
    campaign(tmp_path, **{"sampler.n": 10}).run()
    assert len(rows(path)) == 20
    # another campaign over the same store: refused without overwrite, a fresh store with it
    with pytest.raises(StoreMismatchError):
        campaign(tmp_path, **{"sampler.n": 12}).run()
    assert len(campaign(tmp_path, **{"sampler.n": 12, "store.overwrite": True}).run()) == 24
    with ResultStore(path, mode="r") as store:
        assert store.meta()["config"]["sampler"]["n"] == 12
    assert len(rows(path)) == 24


# ---------------------------------------------------------------- 2. adaptive stopping

ADAPTIVE = {
    "sampler.adaptive": True,
    "sampler.n": None,
    "sampler.margin": 0.03,
    "sampler.max_faults": 400,
    "sampler.adaptive_step": 20,
    "inputs_per_fault": 1,
}


def test_adaptive_stop_does_not_depend_on_chunking(tmp_path):
    a = campaign(tmp_path / "a", **ADAPTIVE, **{"executor.chunk_faults": 7}).run()
    b = campaign(tmp_path / "b", **ADAPTIVE, **{"executor.chunk_faults": 64}).run()
    assert rows(tmp_path / "a/run/campaign.sqlite") == rows(tmp_path / "b/run/campaign.sqlite")
    n = len(a)
    assert n == len(b) and n % 20 == 0 and 0 < n < 400
    assert sorted({r.fault_id for r in a.runs}) == list(range(n))
    # the rule holds at the stopping boundary, and did not one round before
    from torchfault.analysis import should_stop

    sdc = [r.fault_id for r in a.runs if r.outcome == "sdc"]
    assert should_stop(len(sdc), n, 0.03)
    assert not should_stop(sum(f < n - 20 for f in sdc), n - 20, 0.03)


def test_adaptive_resume_gives_identical_rows(tmp_path):
    ref = campaign(tmp_path / "ref", **ADAPTIVE).run()
    ref_rows = rows(tmp_path / "ref/run/campaign.sqlite")
    store = tmp_path / "cut/run/campaign.sqlite"
    campaign(tmp_path / "cut", **ADAPTIVE).run()
    n = len(ref)
    # lose the tail from the middle of a round, and a run of the first round
    delete_runs(store, f"fault_id >= {n - 30} OR fault_id = 3")
    assert len(rows(store)) < n
    campaign(tmp_path / "cut", **ADAPTIVE, **{"executor.chunk_faults": 5}).run()
    assert rows(store) == ref_rows
    # a finished store cut exactly at an earlier round boundary goes on to the same end
    delete_runs(store, f"fault_id >= {n - 20}")
    campaign(tmp_path / "cut", **ADAPTIVE).run()
    assert rows(store) == ref_rows


def test_adaptive_plan_says_up_to(tmp_path, monkeypatch):
    from torchfault.campaign import _campaign

    totals = []
    init = _campaign._Progress.__init__

    def spy(self, enabled, total, done):
        totals.append(total)
        init(self, enabled, total, done)

    monkeypatch.setattr(_campaign._Progress, "__init__", spy)
    camp = campaign(tmp_path, **ADAPTIVE)
    info = camp.describe()
    assert info["adaptive"] is True and info["faults"] == 400
    assert camp.plan_text().startswith("up to 400 faults") and "every 20 faults" in camp.plan_text()
    fixed = campaign(tmp_path / "fixed")
    assert fixed.describe()["adaptive"] is False and fixed.plan_text() == "60 faults, 120 runs"
    # the progress bar's total is left open for an adaptive campaign
    camp.run()
    fixed.run()
    assert totals == [None, 120]
    # the stopping settings are part of an adaptive campaign's identity only
    assert (
        camp.config.identity()["sampler"]["adaptive_step"] == 20
        and "interval" in camp.config.identity()
    )
    assert (
        "adaptive_step" not in fixed.config.identity()["sampler"]
        and "interval" not in fixed.config.identity()
    )


# ---------------------------------------------------------------- 3. changed model, sites


def test_changed_model_is_refused_on_resume(tmp_path):
    factory = tmp_path / "net.py"
    factory.write_text(FACTORY.format(act="ReLU"))
    over = {"model.name": f"{factory}:build", "sampler.n": 20}
    camp = campaign(tmp_path, **over)
    camp.run()
    store = tmp_path / "run/campaign.sqlite"
    delete_runs(store, "fault_id >= 10")
    before = rows(store)
    # same weights, another activation (a file of another size: no stale bytecode)
    factory.write_text(FACTORY.format(act="Sigmoid"))
    with pytest.raises(StoreMismatchError, match="golden result of input 0 differs"):
        campaign(tmp_path, **over).run()
    assert rows(store) == before
    # the command line refuses it too, telling command-line users what to do
    cfg_path = write_config(tmp_path, **over)
    assert main(["campaign", "--config", str(cfg_path)]) == 2
    assert rows(store) == before
    factory.write_text(FACTORY.format(act="ReLU"))
    assert len(campaign(tmp_path, **over).run()) == 40


def test_sites_table_orders_the_layers(tmp_path):
    camp = campaign(tmp_path, **{"sampler.n": 40})
    camp.run()
    with ResultStore(tmp_path / "run/campaign.sqlite", mode="r") as s:
        assert s.sites() == list(camp.sites)
        layers = [row.key for row in summarize_store(s).groups["layer"]]
    network = list(dict.fromkeys(site.module for site in camp.sites))
    assert layers == [m for m in network if m in layers]


def test_changed_sites_are_refused(tmp_path):
    camp = campaign(tmp_path, **{"sampler.n": 10})
    camp.run()
    path = tmp_path / "run/campaign.sqlite"
    store = ResultStore(path, campaign=camp.config.identity(), fingerprint=camp.fingerprint)
    with store, pytest.raises(StoreMismatchError, match=r"site 0: stored"):
        store.set_sites(list(camp.sites)[1:])


# ---------------------------------------------------------------- 4. settings checked before the store


@pytest.mark.parametrize(
    ("bad", "field", "good"),
    [
        (
            ["--sampler.fault_model", "bitflip"],
            "sampler.fault_model: Unknown fault model 'bitflip'",
            [],
        ),
        (
            ["--sampler.fault_model", "zero", "--sampler.params", "{foo: 1}"],
            "sampler.params:",
            ["--sampler.fault_model", "zero"],
        ),
        (
            ["--sampler.fault_model", "value"],
            "sampler.params:",
            ["--sampler.fault_model", "value", "--sampler.params", "{value: 0.0}"],
        ),
        (["--sampler.params", "{low: 1}"], "sampler.params:", []),
        (["--engine.name", "fastt"], "engine.name:", ["--engine.name", "fast"]),
        (["--executor.name", "seriall"], "executor.name:", []),
        (
            ["--data.dataset", "synthetic", "--data.kwargs", "{input_shape: [3, 8, 8]}"],
            "data.dataset: the golden run",
            [],
        ),
    ],
)
def test_bad_settings_are_refused_before_the_store(tmp_path, capsys, bad, field, good):
    cfg_path = write_config(tmp_path, **{"sampler.n": 5})
    store = tmp_path / "run/campaign.sqlite"
    assert main(["campaign", "--config", str(cfg_path), *bad]) == 2
    err = capsys.readouterr().err
    assert field in err, err
    assert not store.exists()
    assert main(["campaign", "--config", str(cfg_path), *good]) == 0
    assert len(rows(store)) == 10


def test_unknown_fault_model_suggests_the_right_one(tmp_path, capsys):
    cfg_path = write_config(tmp_path)
    assert main(["campaign", "--config", str(cfg_path), "--sampler.fault_model", "bitflip"]) == 2
    assert "Did you mean 'bit_flip'?" in capsys.readouterr().err


# ---------------------------------------------------------------- 5. errors name their field


def test_cli_errors_name_the_field(tmp_path, capsys):
    cfg_path = write_config(tmp_path, **{"sampler.n": 5})
    for args, start in [
        (["--data.split", "tset"], "data.split: "),
        (["--model.checkpoint", str(tmp_path / "nonexist.pt")], "model.checkpoint: "),
        (["--targets.format", "fp17"], "targets.format: "),
        (["--targets.modules", "[nope]"], "targets.modules: "),
        (["--sampler.bits", "[40]"], "sampler.bits: "),
        (["--sampler.name", "unifrom"], "sampler.name: "),
        (["--sampler.name", "ber", "--sampler.n", "null", "--sampler.rate", "1e-6"], "sampler.n: "),
        (["--sampler.name", "ber", "--sampler.n", "5"], "sampler.rate: "),
        (["--interval", "clopper"], "interval: "),
        (["--sampler.adaptive_step", "0"], "sampler.adaptive_step: "),
        (["--store.chunk_size", "0"], "store.chunk_size: "),
        (["--model.kwargs", "{nonsense: 1}"], "model.kwargs: "),
        (["--sampler.name", "per_layer", "--sampler.adaptive", "true"], "sampler.adaptive: "),
    ]:
        assert main(["campaign", "--config", str(cfg_path), *args]) == 2, args
        err = capsys.readouterr().err
        assert f"error: {start}" in err, (args, err)
        assert "sampler: bits" not in err
    # a refused store tells command-line users the command-line setting, not the Python API
    assert main(["campaign", "--config", str(cfg_path)]) == 0
    capsys.readouterr()
    assert main(["campaign", "--config", str(cfg_path), "--sampler.n", "6"]) == 2
    err = capsys.readouterr().err
    assert "different campaign config" in err and "--store.overwrite true" in err
    assert "mode='w'" not in err
    assert (
        main(
            ["campaign", "--config", str(cfg_path), "--sampler.n", "6", "--store.overwrite", "true"]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"name": "lenet", "dataset": "digitz"}, "model.dataset"),
        ({"name": "lenet", "kwargs": {"nonsense": 1}}, "model.kwargs"),
        # shipped digits weights do not fit a 3-class head: the kwargs are at fault
        ({"name": "lenet", "kwargs": {"num_classes": 3}}, "model.kwargs"),
        ({"name": "mlp", "dataset": "cifar10"}, "model.pretrained"),
        ({"name": "lenett"}, "model.name"),
        # a factory called with arguments it does not take is an error, not a traceback
        ({"name": "torch.nn:Linear"}, "model.kwargs"),
        ({"name": f"{ROOT}/examples/my_model.py:build", "kwargs": {"nonsense": 1}}, "model.kwargs"),
    ],
)
def test_model_errors_name_their_field(model, field):
    from torchfault.campaign._campaign import build_model

    cfg = from_dict(CampaignConfig, {"model": model})
    with pytest.raises(ConfigError, match=rf"^{field.replace('.', '[.]')}: "):
        build_model(cfg)


@pytest.mark.parametrize("name", ["per_layer", "per_bit", "exhaustive"])
def test_adaptive_needs_a_sampler_in_random_order(name):
    # these number their faults stratum after stratum: an adaptive campaign would stop on the
    # first stratum (before the fix, per_layer stopped after 100 faults, all in the first site)
    with pytest.raises(ConfigError, match=r"^sampler[.]adaptive: .*uniform"):
        from_dict(CampaignConfig, {"sampler": {"name": name, "adaptive": True}})
    for ok in ("uniform", "ber"):
        cfg = from_dict(CampaignConfig, {"sampler": {"name": ok, "adaptive": True, "rate": 1e-6}})
        assert cfg.sampler.adaptive


def test_exhaustive_refuses_n_and_store_checks_chunk_size():
    with pytest.raises(ConfigError, match=r"^sampler[.]n: the exhaustive sampler"):
        from_dict(CampaignConfig, {"sampler": {"name": "exhaustive", "n": 200}})
    assert from_dict(CampaignConfig, {"sampler": {"name": "exhaustive"}}).sampler.n is None
    with pytest.raises(ConfigError, match=r"^store[.]chunk_size: must be >= 1, got 0"):
        from_dict(CampaignConfig, {"store": {"chunk_size": 0}})


def test_ber_needs_n(tmp_path):
    with pytest.raises(ConfigError, match=r"^sampler\.n: the ber sampler needs sampler\.n"):
        from_dict(CampaignConfig, {"sampler": {"name": "ber", "rate": 1e-6}})
    cfg = from_dict(
        CampaignConfig,
        tiny(tmp_path, **{"sampler.name": "ber", "sampler.rate": 1e-5, "sampler.n": 7}),
    )
    assert len(Campaign(cfg).run()) == 14
    # adaptive ber: at most max_faults runs
    cfg = from_dict(
        CampaignConfig,
        {"sampler": {"name": "ber", "rate": 1e-6, "adaptive": True, "max_faults": 30}},
    )
    assert cfg.sampler.n is None


# ---------------------------------------------------------------- 7. interval method


def test_interval_method_reaches_summary_and_report(tmp_path, capsys):
    camp = campaign(tmp_path / "py", **{"sampler.n": 10, "interval": "clopper_pearson"})
    camp.run()
    summary = camp.summary()
    assert summary.method == "clopper_pearson"
    from torchfault.analysis import clopper_pearson_interval

    sdc = summary.overall.rates["sdc"]
    # the fault is the sampling unit: no SDC in 10 faults (20 runs) is the interval of 0 in 10
    assert (sdc.k, sdc.faults, summary.runs) == (0, 10, 20)
    assert (sdc.low, sdc.high) == pytest.approx(clopper_pearson_interval(0, 10, 0.95), abs=1e-6)
    cfg_path = write_config(tmp_path, **{"sampler.n": 10, "report": True})
    assert main(["campaign", "--config", str(cfg_path), "--interval", "clopper-pearson"]) == 0
    out = capsys.readouterr().out
    assert "Clopper-Pearson" in out and "Wilson" not in out
    assert "Clopper-Pearson" in (tmp_path / "run/report.md").read_text()
    # for a campaign of a fixed size the method only changes the report: resuming with another works
    args = ["campaign", "--config", str(cfg_path), "--report", "false", "--interval", "wilson"]
    assert main(args) == 0
    assert "Wilson" in capsys.readouterr().out


# ---------------------------------------------------------------- 9. the example for a custom model


def test_custom_model_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the example's model path is relative to the repository root
    out = tmp_path / "custom"
    args = ["--out_dir", str(out), "--sampler.n", "2", "--progress", "false", "--report", "false"]
    assert main(["campaign", "--config", "examples/campaign_custom.yaml", *args]) == 0
    with ResultStore(out / "campaign.sqlite", mode="r") as s:
        golden = s.golden()
        runs = s.runs()
    assert runs and len({r.input_id for r in runs}) > 4
    # only inputs the (untrained) model classifies correctly
    assert all(golden[r.input_id].top1 == golden[r.input_id].label for r in runs)


def test_relative_model_path_error_names_the_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "examples/campaign_custom.yaml", tmp_path / "c.yaml")
    assert main(["campaign", "--config", "c.yaml", "--out_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "model.name: no such file 'examples/my_model.py'" in err and "current directory" in err


# ---------------------------------------------------------------- 10. the log file


def test_log_file_holds_summary_and_errors(tmp_path, capsys):
    cfg_path = write_config(tmp_path, **{"sampler.n": 5})
    assert main(["campaign", "--config", str(cfg_path)]) == 0
    log = (tmp_path / "run/campaign.log").read_text()
    assert "Outcomes of 10 runs (95% Clopper-Pearson intervals over 5 faults" in log
    assert "| sdc |" in log
    assert "written:" in log
    assert main(["campaign", "--config", str(cfg_path), "--sampler.fault_model", "bitflip"]) == 2
    log = (tmp_path / "run/campaign.log").read_text()
    assert "ERROR" in log and "sampler.fault_model: Unknown fault model 'bitflip'" in log
    # the console shows the summary tables once, not the Markdown copy
    assert "| sdc |" not in capsys.readouterr().out


# ---------------------------------------------------------------- 11. resume adds no stored fault


def test_resume_does_not_reinsert_stored_faults(tmp_path, monkeypatch):
    store = tmp_path / "run/campaign.sqlite"
    campaign(tmp_path).run()
    ref = rows(store)
    delete_runs(store, "fault_id BETWEEN 5 AND 9 AND input_id % 2 = 0 OR fault_id > 50")
    added = []
    original = ResultStore.add_faults

    def spy(self, records):
        records = list(records)
        added.extend(r.fault_id for r in records)
        return original(self, records)

    monkeypatch.setattr(ResultStore, "add_faults", spy)
    campaign(tmp_path).run()
    assert added == []
    assert rows(store) == ref


def test_zoo_model_takes_the_shape_of_a_synthetic_dataset(tmp_path):
    """data.kwargs of synthetic (input_shape, num_classes) configure a zoo model built for it."""
    over = {
        "model": {"name": "resnet8", "dataset": "synthetic", "pretrained": False},
        "data.dataset": "synthetic",
        "data.kwargs": {"input_shape": [3, 16, 16], "num_classes": 4, "size": 8},
        "data.num_inputs": 8,
        "sampler.n": 12,
    }
    result = campaign(tmp_path, **over).run()
    got = rows(tmp_path / "run" / "campaign.sqlite")
    assert len(got) == 12 * 2
    assert {r[3] for r in got} <= set(range(4))  # golden top-1 among the 4 classes
    assert len(result.runs) == len(got)


def test_resume_refuses_a_sampler_that_draws_other_faults(tmp_path, monkeypatch):
    """Missing runs are redrawn from (seed, k): if the sampler changed since the store was
    started (another torchfault version), resuming would mix two samples; it is refused."""
    from torchfault.samplers import _samplers

    camp = campaign(tmp_path)
    camp.run()
    store = tmp_path / "run/campaign.sqlite"
    delete_runs(store, "fault_id >= 50")
    before = rows(store)
    # the same campaign resumes fine
    camp2 = campaign(tmp_path)
    assert len(camp2.run()) == len(before) + 10 * 2
    delete_runs(store, "fault_id >= 50")
    # a sampler whose fault 55 is another one
    original = _samplers.UniformSampler.draw

    def other(self, k):
        faults = original(self, k)
        if k != 55:
            return faults
        f = faults[0]
        return (f.replace(bits=((f.bits[0] + 1) % 32,)),)

    monkeypatch.setattr(_samplers.UniformSampler, "draw", other)
    with pytest.raises(StoreMismatchError, match="fault 55 is stored as"):
        campaign(tmp_path).run()
    assert rows(store) == before


def test_a_report_that_cannot_be_made_is_a_warning(tmp_path, monkeypatch):
    """Without matplotlib the campaign still ends well (its runs are stored); the report is
    skipped with a warning saying how to make it later."""
    import sys

    cfg_path = write_config(tmp_path, **{"sampler.n": 5, "report": True})
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    assert main(["campaign", "--config", str(cfg_path)]) == 0
    assert len(rows(tmp_path / "run/campaign.sqlite")) == 10
    assert not (tmp_path / "run/report.md").exists()
    log = (tmp_path / "run/campaign.log").read_text()
    assert "WARNING" in log and "no report:" in log and "torchfault report" in log


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_random_value_campaign_resumes_to_the_same_rows(tmp_path, engine):
    """random_value draws from a generator seeded per (fault, input): a resumed campaign, or one
    cut into other chunks, ends with exactly the rows of an uninterrupted one."""
    over = {
        "sampler.fault_model": "random_value",
        "sampler.params": {"low": -8.0, "high": 8.0},
        "sampler.bits": None,
        "engine.name": engine,
    }
    campaign(tmp_path / "ref", **over).run()
    ref = rows(tmp_path / "ref/run/campaign.sqlite")
    assert len({r[5] for r in ref}) > 10  # max_abs_diff: the values really are random
    cut = tmp_path / "cut/run/campaign.sqlite"
    campaign(tmp_path / "cut", **over, **{"executor.chunk_faults": 7}).run()
    assert rows(cut) == ref
    # a fault's second input alone: in its resumed task it is the first row, not the second
    delete_runs(cut, "fault_id % 3 = 1 OR input_id % 2 = 1")
    campaign(tmp_path / "cut", **over).run()
    assert rows(cut) == ref


def test_a_nan_parameter_campaign_runs_again(tmp_path):
    """value: nan is stored as NaN; resuming (and re-running a finished store) compares the
    redrawn faults with the stored ones as JSON, where NaN equals NaN."""
    over = {
        "sampler.fault_model": "value",
        "sampler.params": {"value": float("nan")},
        "sampler.bits": None,
    }
    campaign(tmp_path, **over).run()
    store = tmp_path / "run/campaign.sqlite"
    ref = rows(store)
    campaign(tmp_path, **over).run()
    delete_runs(store, "fault_id % 4 = 1")
    campaign(tmp_path, **over).run()
    assert rows(store) == ref
