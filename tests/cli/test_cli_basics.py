# SPDX-License-Identifier: MIT
"""The ``torchfault`` command itself: ``list``, per-job help, usage, the installed script."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchfault.cli import COMMANDS, main
from torchfault.cli._jobs import load_families
from torchfault.config import describe
from torchfault.registry import all_registries


def test_list_prints_every_entry_of_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    load_families()
    regs = all_registries()
    for family in (
        "fault_models",
        "injectors",
        "samplers",
        "engines",
        "executors",
        "models",
        "datasets",
    ):
        assert family in regs, family
    for plural, reg in regs.items():
        assert plural in out
        for name in reg.list():
            assert name in out, (plural, name)


def test_list_filter_hides_families_without_a_match(capsys):
    assert main(["list", "--filter", "stuck*"]) == 0
    out = capsys.readouterr().out
    assert "stuck_at_0" in out and "stuck_at_1" in out
    assert "fault_models" in out and "samplers" not in out and "bit_flip" not in out
    assert main(["list", "--filter", "no_such_thing*"]) == 0
    assert "no entry matches 'no_such_thing*'" in capsys.readouterr().out


def test_list_one_registry_and_unknown_registry(capsys):
    assert main(["list", "samplers"]) == 0
    out = capsys.readouterr().out
    assert "uniform" in out and "fault_models" not in out
    assert main(["list", "sampler"]) == 2
    err = capsys.readouterr().err
    assert "unknown registry 'sampler'" in err and "Did you mean 'samplers'" in err


def test_usage_names_every_job(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS.list():
        assert f"  {name} " in out


@pytest.mark.parametrize(
    "job", ["campaign", "list", "report", "train", "prune", "quantize", "summary"]
)
def test_job_help_lists_every_field_with_its_description(job, capsys):
    assert main([job, "--help"]) == 0
    out = capsys.readouterr().out
    cmd = COMMANDS.get(job)
    assert out.startswith(f"usage: torchfault {job} ")
    rows = describe(cmd.config)
    assert rows
    for where, default, doc in rows:
        assert f"--{where} [{default}]" in out
        if doc:  # the first words of the description follow the field
            assert doc.replace("``", "`").split()[0] in out


def test_every_job_field_is_documented():
    """Every setting has a line of help (the Attributes: section of its dataclass)."""
    missing = [
        f"{name}: --{where}"
        for name in COMMANDS.list()
        for where, _, doc in describe(COMMANDS.get(name).config)
        if not doc
    ]
    assert not missing, missing


def test_unknown_job_suggests(capsys):
    assert main(["campain"]) == 2
    assert "Did you mean 'campaign'" in capsys.readouterr().err


def test_installed_script_and_module_run():
    script = Path(sys.executable).parent / "torchfault"
    cmd = [str(script)] if script.exists() else [shutil.which("torchfault") or "torchfault"]
    out = subprocess.run(
        [*cmd, "list", "fault_models"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "bit_flip" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "torchfault", "list", "--registry", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "unknown registry 'nope'" in out.stderr


@pytest.mark.parametrize("args", [["list"], ["campaign", "--help"], ["train", "--help"]])
def test_output_into_a_closed_pipe_ends_quietly(args):
    """``torchfault campaign --help | head -1``: the reader hangs up early; no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchfault", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # hang up before anything is written (the start-up takes a second)
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc in (0, 1)
