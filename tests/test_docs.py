# SPDX-License-Identifier: MIT
"""The code of README.md and docs/*.md that no other test runs, run as written.

Covered elsewhere: README's Python example (tests/test_readme.py), docs/injection.md
(tests/injectors/test_docs.py) and the command lines of docs/dnn.md (tests/dnn/test_docs_dnn.py).
Here: README's command lines, the Python blocks of campaigns.md, engine.md, store.md,
statistics.md and dnn.md, engine.md's YAML, and store.md's schema and SQL against a real store.
Everything runs in a temporary directory; nothing is written into the repository.
"""

from __future__ import annotations

import doctest
import re
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from torchfault import Campaign, CampaignConfig, Fault
from torchfault.cli import main
from torchfault.config import from_dict

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

#: README command lines that run with extra arguments here, each with its reason
README_EXTRA = {
    "torchfault campaign --config examples/campaign_custom.yaml": (
        ["--sampler.n", "2", "--report", "false", "--progress", "false"],
        "2 faults per layer instead of 50, no plots: the same config and model, in a second",
    ),
    "torchfault train --config examples/train_lenet_digits.yaml": (
        ["--print_config"],
        "60 epochs: the config is read and checked, not trained",
    ),
}


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def run_blocks(path: Path, namespace: dict, replace: dict[str, str] | None = None) -> None:
    code = blocks(path, "python")
    assert code, f"{path.name} has no python block"
    for i, block in enumerate(code):
        for old, new in (replace or {}).items():
            block = block.replace(old, new)
        exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)


def small_campaign() -> dict:
    """A model, inputs and faults for the blocks that show ``run_campaign``'s call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    faults = [Fault("0", "weight", index=(1, 2), bits=(b,)) for b in (3, 30)]
    faults.append(Fault("1", index=(4,), bits=(30,)))
    return {"model": model, "inputs": torch.randn(4, 6), "faults": faults}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a copy of examples/ and a small demo store at runs/demo/campaign.sqlite."""
    path = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "examples", path / "examples")
    cfg = from_dict(CampaignConfig, yaml.safe_load((REPO / "examples/demo.yaml").read_text()))
    cfg.sampler.n, cfg.data.num_inputs, cfg.progress = 40, 20, False
    cfg.out_dir = str(path / "runs/demo")
    Campaign(cfg).run()
    return path


def test_readme_command_lines_run(workdir, monkeypatch, capsys) -> None:
    (text,) = blocks(REPO / "README.md", "bash")[1:]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("torchfault ")]
    keys = {shlex.join(shlex.split(ln, comments=True)) for ln in lines}
    assert set(README_EXTRA) <= keys, set(README_EXTRA) - keys
    monkeypatch.chdir(workdir)
    for line in lines:
        argv = shlex.split(line, comments=True)
        extra, _ = README_EXTRA.get(shlex.join(argv), ([], ""))
        status = main(argv[1:] + extra)
        out = capsys.readouterr()
        assert status == 0, f"{line}\n{out.err[-2000:]}"
    assert (workdir / "runs/demo/report.md").is_file()
    assert (workdir / "runs/custom/campaign.sqlite").is_file()
    assert not (workdir / "src").exists()  # the train line only printed its config


def test_campaigns_guide_example_runs(capsys) -> None:
    namespace = {"__name__": "campaigns_guide", **small_campaign()}
    run_blocks(DOCS / "campaigns.md", namespace)
    result = namespace["result"]
    assert set(result.outcome_counts()) == {"masked", "benign", "sdc", "due"}
    assert len(result.runs) == 3 * 4
    assert "Outcomes" in capsys.readouterr().out


def test_engine_guide_examples() -> None:
    namespace = {"__name__": "engine_guide", **small_campaign()}
    run_blocks(DOCS / "engine.md", namespace)
    assert len(namespace["result"].runs) == 3 * 4
    (settings,) = blocks(DOCS / "engine.md", "yaml")
    cfg = from_dict(CampaignConfig, yaml.safe_load(settings))
    assert (cfg.engine.name, cfg.engine.batch_size) == ("fast", 256)
    assert (cfg.executor.name, cfg.executor.workers) == ("process", 4)


def test_store_guide_example_schema_and_sql(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "store_guide"}
    run_blocks(DOCS / "store.md", namespace)
    run_blocks(DOCS / "store.md", namespace)  # a second run resumes: nothing new to add
    assert namespace["summary"].outcome_counts()["sdc"] == 10
    path = tmp_path / "runs/example/campaign.sqlite"
    schema, query = blocks(DOCS / "store.md", "sql")
    con = sqlite3.connect(path)
    try:
        stored = [s for (s,) in con.execute("SELECT sql FROM sqlite_master WHERE type='table'")]
        rows = con.execute(query).fetchall()
    finally:
        con.close()

    documented = re.sub(r"\s+", "", re.sub(r"--[^\n]*", "", schema)).rstrip(";").split(";")
    assert documented == [re.sub(r"\s+", "", s) for s in stored]
    assert rows == [("0", 1.0, 10)]


def test_statistics_guide_examples(workdir, monkeypatch, capsys) -> None:
    code = blocks(DOCS / "statistics.md", "python")
    for i, block in enumerate(b for b in code if ">>>" in b):
        name = f"statistics.md[doctest {i}]"
        test = doctest.DocTestParser().get_doctest(block, {}, name, name, 0)
        assert test.examples and doctest.DocTestRunner().run(test).failed == 0
    monkeypatch.chdir(workdir)
    code = [b for b in code if ">>>" not in b]
    namespace: dict = {"__name__": "statistics_guide"}
    for i, block in enumerate(code):
        exec(compile(block, f"statistics.md[block {i}]", "exec"), namespace)
    names = {p.name for p in namespace["files"]}
    assert {"summary_layer.csv", "summary_bit.parquet"} <= names
    out = capsys.readouterr().out
    assert re.search(r"^\S+: \d+\.\d\d% \[\d+\.\d\d%, \d+\.\d\d%\]$", out, flags=re.M), out


def test_dnn_guide_python_runs(tmp_path, monkeypatch, capsys) -> None:
    from torchfault.dnn import MODELS

    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.zeros(8)}, tmp_path / "epoch=3.ckpt")  # the file compress_file names
    namespace: dict = {"__name__": "dnn_guide"}
    if MODELS.is_registered("tiny"):
        MODELS.remove("tiny")
    try:
        run_blocks(DOCS / "dnn.md", namespace, {"/path/to/torchfault": str(REPO)})
        assert MODELS.is_registered("tiny")
    finally:
        if MODELS.is_registered("tiny"):
            MODELS.remove("tiny")
    assert tuple(namespace["x"].shape) == (2, 1, 8, 8)
    assert namespace["lenet"].model_name == "lenet" and namespace["mlp"].model_name == "mlp"
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    shown = re.search(r"print\(info\) +# (.*)", (DOCS / "dnn.md").read_text()).group(1)
    # the same line, numbers aside (the compressed size depends on the liblzma build); the
    # uncompressed size is torch.save's, fixed by the pinned torch
    assert re.sub(r"[\d,.]+", "N", printed) == re.sub(r"[\d,.]+", "N", shown)
    uncompressed = r"([\d,]+) uncompressed"
    assert re.search(uncompressed, printed).group(1) == re.search(uncompressed, shown).group(1)
    assert (tmp_path / "model.pt.xz").is_file()
