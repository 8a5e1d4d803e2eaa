# SPDX-License-Identifier: MIT
"""The import layers of docs/design.md hold: import-linter's contracts (.importlinter) and a
scan of every source file (doctests included) for another package's ``_private`` module."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "torchfault"

# `from torchfault.pkg._mod import x` / `import torchfault.pkg._mod`, in code or in a doctest line
_PRIVATE = re.compile(
    r"^\s*(?:(?:>>>|\.\.\.)\s+)?(?:from|import)\s+torchfault\.([a-z_]+)\.(_[A-Za-z0-9_]+)"
)


def _lint_imports() -> str | None:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    return found or shutil.which("lint-imports")


def _owner(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else None


def cross_package_private_imports(root: Path = SRC) -> list[str]:
    """``file:line: text`` of every import of another package's ``_private`` module."""
    found = []
    for path in sorted(root.rglob("*.py")):
        own = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = _PRIVATE.match(line)
            if match and match.group(1) != own:
                found.append(f"{path.relative_to(root.parent.parent)}:{number}: {line.strip()}")
    return found


def test_import_linter_contracts_are_kept():
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is not installed (pip install import-linter)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [exe, str(ROOT / ".importlinter"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_layers_contract_names_every_package():
    """A new package must be placed in the layers (else import-linter would not check it)."""
    text = (ROOT / ".importlinter").read_text()
    layers = text.split("[importlinter:contract:layers]")[1].split("[importlinter:")[0]
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in SRC.glob("*.py") if not p.name.startswith("_")}
    for name in sorted(packages | modules):
        assert f"torchfault.{name}" in layers, f"{name} is not in the layers contract"


def test_no_package_imports_another_packages_private_module():
    assert cross_package_private_imports() == []


def test_the_scan_finds_private_imports(tmp_path):
    """The scan itself: a private import from another package (code and doctest) is found, one
    inside the same package is not."""
    pkg = tmp_path / "src" / "torchfault"
    (pkg / "store").mkdir(parents=True)
    (pkg / "store" / "_a.py").write_text(
        "from torchfault.faults._fault import Fault\n"
        "from torchfault.store._records import RunRecord\n"
        '"""\n>>> from torchfault.analysis._summary import Summary\n"""\n'
        "from torchfault.faults import Fault\n"
    )
    found = cross_package_private_imports(pkg)
    assert [f.split(": ", 1)[1] for f in found] == [
        "from torchfault.faults._fault import Fault",
        ">>> from torchfault.analysis._summary import Summary",
    ]


def test_function_level_imports_respect_the_layers():
    """import-linter sees imports inside functions too; this checks the same over the AST, so a
    circle cannot hide in a function even where import-linter is not installed."""
    order = [
        {"errors"},
        {"config", "registry"},
        {"numerics"},
        {"faults"},
        {"injectors", "samplers", "store"},
        {"analysis"},
        {"dnn"},
        {"campaign"},
        {"cli", "compat"},
    ]
    level = {name: i for i, names in enumerate(order) for name in names}
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        own = _owner(path) or path.stem
        if own not in level:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] != "torchfault":
                    continue
                targets = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [
                    a.name.split(".")[1] for a in node.names if a.name.startswith("torchfault.")
                ]
            else:
                continue
            for target in targets:
                if target in level and level[target] > level[own]:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {own} -> {target}")
    assert bad == []


def test_design_page_python_runs_and_names_the_layers_contract():
    """docs/design.md's Python runs as written (twice: it cleans up after itself) and its layer
    list is the one .importlinter checks."""
    page = (ROOT / "docs" / "design.md").read_text()
    code = re.findall(r"^```python\n(.*?)^```", page, flags=re.M | re.S)
    assert code
    for _ in range(2):
        for i, block in enumerate(code):
            exec(compile(block, f"design.md[block {i}]", "exec"), {"__name__": "design_page"})
    diagram = page.split("## Layers")[1].split("```")[1]  # the page's drawing of the layers
    contract = (ROOT / ".importlinter").read_text()
    layers = contract.split("layers =")[1].split("[importlinter:")[0]
    drawn = [re.findall(r"\w+", line)[0] for line in diagram.strip().splitlines() if line[0] != " "]
    names = [re.findall(r"torchfault\.(\w+)", line) for line in layers.strip().splitlines()]
    for name in (n for line in names for n in line):
        assert re.search(rf"\b{name}\b", diagram), f"docs/design.md does not draw the layer {name}"
    # the same order, top to bottom: the first package of each drawn line
    assert drawn == [line[0] for line in names if line and line[0] in drawn]


def test_one_definition_of_outcomes_and_buffer_names():
    """OUTCOMES, RUN_OUTCOMES and the buffer names are defined once (torchfault.faults, the lowest
    layer their users share) and every package's name is that object; no literal copy in src."""
    import torchfault.analysis
    import torchfault.campaign
    import torchfault.faults
    import torchfault.store
    from torchfault.campaign._protection import PROTECTED_OUTCOMES
    from torchfault.injectors._memory import MEMORY_OUTCOMES

    faults = torchfault.faults
    assert faults.OUTCOMES == ("masked", "benign", "sdc", "due")
    assert faults.RUN_OUTCOMES[:4] == faults.OUTCOMES
    assert faults.RUN_OUTCOMES[4:] == ("detected",)
    for same in (
        torchfault.store.OUTCOMES,
        torchfault.campaign.OUTCOMES,
        torchfault.analysis.OUTCOMES,
    ):
        assert same is faults.OUTCOMES
    for same in (torchfault.store.RUN_OUTCOMES, PROTECTED_OUTCOMES, MEMORY_OUTCOMES):
        assert same is faults.RUN_OUTCOMES
    wanted = {
        "outcomes": ["masked", "benign", "sdc", "due"],
        "buffer names": ["running_mean", "running_var", "num_batches_tracked"],
    }
    for what, names in wanted.items():
        # every tuple/list/set literal in src (code, not docstrings) that spells them out
        where = [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for path in sorted(SRC.rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.Tuple, ast.List, ast.Set))
            and [getattr(e, "value", None) for e in node.elts][: len(names)] == names
        ]
        assert where == [f"src/torchfault/faults/_fault.py:{_line_of(what)}"], (what, where)


def _line_of(what: str) -> int:
    text = (SRC / "faults" / "_fault.py").read_text().splitlines()
    start = "OUTCOMES = (" if what == "outcomes" else "BUFFER_NAMES = "
    return next(n for n, line in enumerate(text, 1) if line.startswith(start))
