# SPDX-License-Identifier: MIT
"""The documentation site: ``mkdocs build --strict`` passes, the tutorial path is in the nav, the
API pages hold the docstrings, and the tutorial's code runs as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from torchfault.cli import main

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = [
    "tutorial/first-campaign.md",
    "tutorial/own-model.md",
    "tutorial/reading-the-report.md",
    "tutorial/protections.md",
    "tutorial/hardware-faults.md",
    "tutorial/scaling-out.md",
]


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def _config() -> dict:
    return yaml.safe_load((REPO / "mkdocs.yml").read_text())


def test_nav_holds_the_tutorial_path_and_the_guides():
    """The tutorial in order, the guides that exist, no nav entry without its page. (A new page
    not yet in the nav is still built, reachable by its address; add it to mkdocs.yml's nav.)"""
    cfg = _config()
    pages = _nav_pages(cfg["nav"])
    assert [p for p in pages if p.startswith("tutorial/")] == TUTORIAL
    docs = REPO / cfg["docs_dir"]
    on_disk = {str(p.relative_to(docs)) for p in docs.rglob("*.md")} - {"README.md"}
    dangling = sorted(set(pages) - on_disk)
    assert not dangling, f"mkdocs.yml's nav names pages that do not exist: {dangling}"
    guides = {"injection.md", "campaigns.md", "store.md", "statistics.md", "dnn.md", "design.md"}
    assert guides <= set(pages) and "index.md" in pages
    for page in TUTORIAL:
        assert (docs / page).read_text().startswith("# "), page


@pytest.mark.slow
def test_site_builds_strict_with_the_api_from_docstrings(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (the 'docs' extra)")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] missing")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    for page in TUTORIAL:
        assert (site / page.replace(".md", "") / "index.html").is_file(), page
    # the API pages are generated from the docstrings: a function, its signature, its example
    api = (site / "api" / "analysis" / "index.html").read_text()
    assert "make_html_report" in api and "wilson_interval" in api
    from torchfault.analysis import wilson_interval

    first_line = wilson_interval.__doc__.strip().splitlines()[0]
    assert first_line.split()[0] in api


def _blocks(page: str, lang: str) -> list[str]:
    text = (REPO / "docs" / page).read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


@pytest.mark.slow
def test_tutorial_code_runs_as_written(tmp_path, monkeypatch, capsys):
    """Every Python block of the tutorial, page after page in one folder (the report page reads
    the store the first page wrote), and the command lines that run in seconds."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    for page in TUTORIAL:
        namespace: dict = {}
        for i, block in enumerate(_blocks(page, "python")):
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "SDC rate" in out and "with ranger" in out and "rows flagged" in out
    assert (tmp_path / "runs/first/report.html").is_file()
    ran = 0
    for page in TUTORIAL:
        for block in _blocks(page, "bash"):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if not line.startswith("torchfault "):
                    continue
                args = shlex.split(line)[1:]
                if "--print_config" in args or args[0] == "report":
                    args = [a.replace("runs/demo/", "runs/first/") for a in args]
                    assert main(args) == 0, line
                    ran += 1
    assert ran >= 5
