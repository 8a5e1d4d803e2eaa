# SPDX-License-Identifier: MIT
"""docs/protection.md as written: its Python blocks run in order in a temporary folder, its
command line runs through the CLI, its YAML block is a valid ``protection:`` config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from torchfault.campaign import CampaignConfig, ProtectionConfig
from torchfault.cli import main
from torchfault.config import from_dict

DOC = Path(__file__).resolve().parents[2] / "docs" / "protection.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)


def test_python_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, block in enumerate(_blocks("python")):
        exec(compile(block, f"protection.md[block {i}]", "exec"), ns)
    s = ns["s"]
    assert 0 <= s["sdc_with"] <= 1 and s["runs"] == 20 * 8
    assert (tmp_path / "lenet-ranges.json").exists()


def test_command_line_and_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (cmd,) = [b.strip() for b in _blocks("bash")]
    args = shlex.split(cmd)
    assert args[0] == "torchfault"
    assert main(args[1:] + ["--progress", "false"]) == 0
    assert Path("lenet-ranges.json").exists()
    (block,) = _blocks("yaml")
    cfg = from_dict(CampaignConfig, yaml.safe_load(block))
    assert isinstance(cfg.protection, ProtectionConfig)
    assert cfg.protection.spec() == {
        "name": "ranger",
        "profile": "lenet-ranges.json",
        "bounds": "minmax",
    }
