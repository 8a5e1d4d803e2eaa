# SPDX-License-Identifier: MIT
"""Bad inputs, as a careless or hostile user gives them (issue 10): each case is answered with a
clear error that names the field or the file, exit status 2 on the command line, before anything
runs or is written, and every file that existed before is byte-identical afterwards.

The command line runs in-process (``torchfault.cli.main``); a small stored campaign made once per
module stands for the results a user already has (each case points ``store.path`` at a copy).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from torchfault.cli import main
from torchfault.errors import ConfigError, TorchFaultError

#: a campaign that costs ~1 s: two faults on two inputs, no report, no progress bar
SMALL = ["--sampler.n", "2", "--data.num_inputs", "2", "--report", "false", "--progress", "false"]

#: nine lines of YAML aliases that expand to 10^9 strings
BOMB = (
    'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    + "name: ["
    + ", ".join(["*h"] * 10)
    + "]\n"
)


class _Payload:
    """Unpickling it would create the file ``marker`` (a stand-in for any program)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A finished store of a small campaign (what a user has before trying something bad)."""
    out = tmp_path_factory.mktemp("stored")
    assert main(["campaign", *SMALL, "--out_dir", str(out), "--store.export", "[]"]) == 0
    return out / "campaign.sqlite"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _cli(tmp_path: Path, stored: Path, capsys, args: list[str]) -> tuple[int, str]:
    """Run ``torchfault ARGS`` with a copy of the stored campaign in ``tmp_path/old``; check
    that every file under ``tmp_path`` is byte-identical afterwards; returns (status, stderr)."""
    old = tmp_path / "old"
    old.mkdir(exist_ok=True)
    shutil.copy(stored, old / "campaign.sqlite")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = _snapshot(tmp_path)
    capsys.readouterr()
    status = main(args)
    err = capsys.readouterr().err
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "an existing file changed"
    return status, err


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def _campaign(*extra: str) -> list[str]:
    return [
        "campaign",
        *SMALL,
        "--out_dir",
        "{tmp}/new",
        "--store.path",
        "{tmp}/old/campaign.sqlite",
        *extra,
    ]


# (id, files to write, arguments, what the message must name)
CASES = [
    (
        "non-utf8-yaml",
        {"latin1.yaml": "name: caf\xe9\n".encode("latin-1")},
        ["campaign", "--config", "{tmp}/latin1.yaml"],
        ["latin1.yaml", "not UTF-8", "offset 9"],
    ),
    (
        "alias-bomb",
        {"bomb.yaml": BOMB},
        ["campaign", "--config", "{tmp}/bomb.yaml", "--sampler.n", "1"],
        ["bomb.yaml", "aliases"],
    ),
    ("tolerance-nan", {}, _campaign("--outcome.tolerance", ".nan"), ["outcome.tolerance", "NaN"]),
    ("tolerance-inf", {}, _campaign("--outcome.tolerance", ".inf"), ["outcome.tolerance"]),
    (
        "topk-11-of-10",
        {},
        _campaign("--outcome.criterion", "topk", "--outcome.topk", "11"),
        ["outcome.topk", "10 output classes"],
    ),
    ("topk-10^12", {}, _campaign("--outcome.topk", "1000000000000"), ["outcome.topk"]),
    ("regex", {}, _campaign("--targets.modules", "['re:[']"), ["targets.modules[0]", "re:["]),
    ("seed-1e30", {}, _campaign("--seed", "1.0e+30"), ["seed", "64-bit"]),
    ("seed-2^64", {}, _campaign("--seed", str(2**64)), ["seed", "64-bit"]),
    ("seed-negative", {}, _campaign("--seed", "-1"), ["seed", "[0, 2**63 - 1]"]),
    (
        "stdlib-factory",
        {},
        _campaign("--model.name", "subprocess:run", "--model.kwargs", "{args: [touch, {tmp}/RAN]}"),
        ["model.name", "subprocess:run", "standard library"],
    ),
    (
        "missing-factory-file",
        {},
        _campaign("--model.name", "{tmp}/nowhere.py:build"),
        ["model.name", "nowhere.py"],
    ),
    ("train-seed-2^32", {}, ["train", "--seed", str(2**32), "--out_dir", "{tmp}/new"], ["seed"]),
    ("prune-regex", {}, ["prune", "--modules", "['re:(']", "--out", ""], ["modules[0]"]),
]


@pytest.mark.parametrize("files, args, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_bad_input(tmp_path, stored, capsys, files, args, names):
    for name, data in files.items():
        _write(tmp_path, name, data)
    t0 = time.perf_counter()
    status, err = _cli(tmp_path, stored, capsys, args)
    assert status == 2, err
    assert "Traceback" not in err and "Logging error" not in err
    for name in names:
        assert name.replace("{tmp}", str(tmp_path)) in err, (name, err)
    assert not (tmp_path / "RAN").exists()
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("compression", ["none", "lzma"])
def test_checkpoint_with_code_is_refused_naming_file_and_code(
    tmp_path, stored, capsys, compression
):
    from torchfault.dnn import save_checkpoint

    marker = tmp_path / "RAN"
    save_checkpoint(
        {"conv1.weight": torch.ones(1), "x": _Payload(marker)}, tmp_path / "evil.pt", compression
    )
    status, err = _cli(tmp_path, stored, capsys, _campaign("--model.checkpoint", "{tmp}/evil.pt"))
    assert status == 2
    assert "model.checkpoint" in err and "evil.pt" in err and "pathlib" in err and "code" in err
    assert "weights_only=False" not in err
    assert not marker.exists()


def test_factory_import_is_logged(tmp_path, stored, capsys):
    """A config that names code runs it: the command line says which file it runs."""
    _write(
        tmp_path,
        "mine.py",
        "import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n",
    )
    status, err = _cli(tmp_path, stored, capsys, ["summary", "{tmp}/mine.py:build"])
    assert status == 0
    assert "running build from" in err and "mine.py" in err and "trust it like code" in err


def test_store_path_of_any_bytes_is_logged_safely(tmp_path, stored, capsys):
    """A store path that is not UTF-8 (as the shell passes bytes): the campaign runs and its log
    shows the name escaped, with no ``--- Logging error ---``."""
    name = (tmp_path / "new").as_posix() + "/\udcff.sqlite"  # how Python reads byte 0xff
    status, err = _cli(tmp_path, stored, capsys, _campaign()[:-2] + ["--store.path", name])
    assert status == 0, err
    assert "Logging error" not in err and "UnicodeEncodeError" not in err
    log = (tmp_path / "new" / "campaign.log").read_text()
    assert "\\xff.sqlite" in log
    assert (tmp_path / "new").joinpath(b"\xff.sqlite".decode("utf-8", "surrogateescape")).is_file()


# ----------------------------------------------------------------- the same through Python


@pytest.mark.parametrize(
    "data, field",
    [
        ({"outcome": {"tolerance": math.nan}}, "outcome.tolerance"),
        ({"outcome": {"tolerance": math.inf}}, "outcome.tolerance"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"targets": {"modules": ["re:["]}}, "targets.modules[0]"),
        ({"sampler": {"margin": math.nan}}, "sampler.margin"),
    ],
)
def test_campaign_config_from_dict_and_python_name_the_field(data, field):
    from torchfault.campaign import CampaignConfig
    from torchfault.campaign import _config as cc
    from torchfault.config import from_dict

    with pytest.raises(ConfigError) as err:
        from_dict(CampaignConfig, data)
    assert err.value.field == field and field in str(err.value)
    # built in Python, the dataclasses raise the same ConfigError
    key, value = next(iter(data.items()))
    with pytest.raises(ConfigError) as err2:
        if isinstance(value, dict):
            cls = {
                "outcome": cc.OutcomeConfig,
                "targets": cc.TargetsConfig,
                "sampler": cc.SamplerConfig,
            }
            CampaignConfig(**{key: cls[key](**value)})
        else:
            CampaignConfig(**data)
    assert err2.value.field == field


def test_topk_past_the_classes_is_refused_before_the_store_opens(tmp_path):
    from torchfault.campaign import Campaign, CampaignConfig
    from torchfault.config import from_dict

    cfg = from_dict(
        CampaignConfig,
        {
            "outcome": {"criterion": "topk", "topk": 10},
            "sampler": {"n": 2},
            "data": {"num_inputs": 2},
            "out_dir": str(tmp_path / "run"),
        },
    )
    with pytest.raises(ConfigError, match=r"outcome.topk: must be in \[1, 9\]") as err:
        Campaign(cfg).run()
    assert err.value.field == "outcome.topk"
    assert not (tmp_path / "run" / "campaign.sqlite").exists()


@pytest.mark.parametrize("topk", [3, 10**12])
def test_run_campaign_refuses_topk_past_the_classes(topk):
    from torchfault import Fault, run_campaign

    model = torch.nn.Linear(4, 3)
    with pytest.raises(TorchFaultError, match="topk: must be in \\[1, 2\\]"):
        run_campaign(
            model,
            torch.randn(2, 4),
            [Fault("", "weight", index=(0, 0), bits=(1,))],
            criterion="topk",
            topk=topk,
        )


def test_run_campaign_refuses_nan_tolerance():
    from torchfault import Fault, run_campaign

    with pytest.raises(TorchFaultError, match="tolerance"):
        run_campaign(
            torch.nn.Linear(4, 3),
            torch.randn(2, 4),
            [Fault("", "weight", index=(0, 0), bits=(1,))],
            criterion="tolerance",
            tolerance=math.nan,
        )


def _job_configs():
    from torchfault.cli._dnn import PruneConfig, QuantizeConfig, SummaryConfig
    from torchfault.dnn import TestConfig, TrainConfig
    from torchfault.dnn._training import TrainerConfig

    return [
        (PruneConfig, {"amount": 1.5}, "amount"),
        (PruneConfig, {"seed": 2**40}, "seed"),
        (QuantizeConfig, {"calibration_batches": 0}, "calibration_batches"),
        (SummaryConfig, {"batch": 0}, "batch"),
        (TestConfig, {"model": "lenett"}, "model.name"),  # old key, translated
        (TrainConfig, {"batch_size": 0}, "batch_size"),
        (TrainerConfig, {"max_epochs": 0}, "trainer.max_epochs"),
    ]


@pytest.mark.parametrize("index", range(7))
def test_job_configs_raise_config_errors_carrying_their_field(index):
    """DNN job configs built in Python raise ConfigError with ``field`` (as from YAML)."""
    from torchfault.config import from_dict
    from torchfault.dnn import TrainConfig

    cls, data, field = _job_configs()[index]
    with pytest.raises(ConfigError) as err:
        cls(**data)
    assert err.value.field == field and field in str(err.value)
    if field.startswith("trainer."):
        cls, data = TrainConfig, {"trainer": data}
    with pytest.raises(ConfigError) as err:
        from_dict(cls, data)
    assert err.value.field == field


# ----------------------------------------------------------------- damaged and foreign stores


def _damaged(store: Path, tmp_path: Path, how: str) -> Path:
    """A copy of a finished store, damaged as ``how`` says (made with sqlite3 / raw bytes)."""
    import sqlite3

    path = tmp_path / "old" / f"{how}.sqlite"
    path.parent.mkdir(exist_ok=True)
    if how == "foreign":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO customers VALUES (1, 'ada')")
        con.commit()
        con.close()
        return path
    shutil.copy(store, path)
    if how == "json":  # one byte of one stored fault
        con = sqlite3.connect(path)
        column = [r[1] for r in con.execute("PRAGMA table_info(faults)")][1]
        con.execute(f"UPDATE faults SET {column} = substr({column}, 2) WHERE fault_id = 0")
        con.commit()
        con.close()
    elif how == "page":  # garbage over the second page
        data = bytearray(path.read_bytes())
        page = int.from_bytes(data[16:18], "big") or 65536
        data[page + 8 : page + 200] = b"\xa5" * 192
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "job, how",
    [
        ("campaign", "foreign"),
        ("campaign", "page"),
        ("campaign", "json"),
        ("report", "foreign"),
        ("report", "page"),
        ("report", "json"),
    ],
)
def test_damaged_or_foreign_store_is_named_and_left_intact(tmp_path, stored, capsys, how, job):
    path = _damaged(stored, tmp_path, how)
    args = (
        [*_campaign()[:-2], "--store.path", str(path)]
        if job == "campaign"
        else ["report", str(path), "--out_dir", str(tmp_path / "new")]
    )
    status, err = _cli(tmp_path, stored, capsys, args)
    assert status == 2, err
    assert path.name in err and "Traceback" not in err, err
