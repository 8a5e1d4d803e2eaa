# SPDX-License-Identifier: MIT
"""Rough edges a new user hits on the command line: --version, bare switches, the demo's advice."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from pathlib import Path

import pytest
import yaml

from torchfault.cli import COMMANDS, _load_jobs, build_config, main
from torchfault.errors import TorchFaultError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    assert main([flag]) == 0
    out = capsys.readouterr().out.strip()
    # the installed distribution's own metadata is the oracle
    assert out == f"torchfault {importlib.metadata.version('torchfault')}"


def test_usage_mentions_version(capsys):
    assert main(["--help"]) == 0
    assert "torchfault --version" in capsys.readouterr().out


def _cmd(name: str):
    _load_jobs()
    return COMMANDS.get(name)


def test_bare_switches_mean_true():
    cfg, _ = build_config(_cmd("report"), ["s.sqlite", "--html", "--per_element"])
    assert cfg.html is True and cfg.per_element is True and cfg.store == "s.sqlite"
    cfg, _ = build_config(_cmd("report"), ["s.sqlite", "--per_element", "--html", "false"])
    assert cfg.per_element is True and cfg.html is False
    cfg, _ = build_config(_cmd("campaign"), ["--store.overwrite", "--seed", "3"])
    assert cfg.store.overwrite is True and cfg.seed == 3
    # a field that is not a switch still needs its value
    with pytest.raises(TorchFaultError, match="missing value"):
        build_config(_cmd("report"), ["s.sqlite", "--confidence"])
    with pytest.raises(TorchFaultError, match="confidence"):
        build_config(_cmd("report"), ["s.sqlite", "--confidence", "--html"])


def test_demo_comment_gives_a_command_that_does_not_meet_the_stored_campaign():
    """demo.yaml's comment suggests a changed setting; its command must name another run folder
    (the stored demo campaign refuses a changed margin), and work as written."""
    text = (REPO / "examples" / "demo.yaml").read_text()
    comments = "\n".join(line[1:] for line in text.splitlines() if line.startswith("#"))
    commands = re.findall(r"^\s*(torchfault campaign .*)$", comments, flags=re.M)
    assert commands, "demo.yaml shows the command to run"
    demo, _ = build_config(_cmd("campaign"), ["--config", str(REPO / "examples" / "demo.yaml")])
    for line in commands:
        args = shlex.split(line)[2:]
        args = [str(REPO / a) if a.startswith("examples/") else a for a in args]
        cfg, _ = build_config(_cmd("campaign"), args)
        assert cfg.identity() != demo.identity()  # another campaign: the demo store refuses it
        assert cfg.store_path != demo.store_path  # ... so the command gives it its own store
    # why the comment says --out_dir: demo.yaml sets out_dir, so --name alone would not move it
    named, _ = build_config(
        _cmd("campaign"),
        ["--config", str(REPO / "examples" / "demo.yaml"), "--name", "other"],
    )
    assert named.store_path == demo.store_path
    assert yaml.safe_load(text)["out_dir"] == "runs/demo"
