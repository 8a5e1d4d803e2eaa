# SPDX-License-Identifier: MIT
"""The HTML report: numbers against the store's known counts, self-containment, and a real browser.

The browser tests drive Debian's Chromium (``apt-get install chromium chromium-driver``) through
selenium; without them only those tests skip, naming what is missing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from torchfault.analysis import make_html_report, make_report, store_state, summarize_store
from torchfault.analysis._summary import _pct
from torchfault.cli import main
from torchfault.faults import FaultSite
from torchfault.store import FaultRecord, ResultStore, RunRecord

SITES = [
    FaultSite("conv1", "weight", "parameter", (4, 1, 3, 3), "float32", 32),
    FaultSite("fc", "output", "activation", (10,), "float32", 32),
    FaultSite("fc", "weight", "parameter", (10, 4), "float32", 32),
]
# fault k on site k % 3, element k, bit (30, 3, 22)[k % 3]; known outcome counts per fault
COUNTS = {
    0: {"sdc": 12, "masked": 28},
    1: {"masked": 30, "benign": 5},
    2: {"due": 4, "sdc": 6},
    3: {"masked": 15, "sdc": 1},
    4: {"sdc": 9, "benign": 1},
    5: {"masked": 7},
}
BITS = (30, 3, 22)


def _fill(path: Path, state: dict | None = None) -> Path:
    """One run per fault (so rates over runs and over faults agree): group k of COUNTS is
    ``sum(COUNTS[k].values())`` faults on site k % 3 with bit BITS[k % 3]."""
    with ResultStore(path, campaign={"seed": 5, "sampler": {"n": 6}}, fingerprint="f00d") as s:
        s.set_sites(SITES)
        fid = 0
        faults, runs = [], []
        for k, counts in COUNTS.items():
            site = SITES[k % 3]
            index = tuple([k % site.shape[0]] + [0] * (len(site.shape) - 1))
            for outcome, c in counts.items():
                for _ in range(c):
                    faults.append(FaultRecord(fid, (site.fault(index, (BITS[k % 3],)),)))
                    runs.append(RunRecord(fid, 0, outcome, 1, 1, 0.0, 0.01))
                    fid += 1
        s.add_faults(faults)
        s.add_runs(runs)
        if state is not None:
            s.set_meta("state", state)
    return path


@pytest.fixture
def store_path(tmp_path):
    return _fill(tmp_path / "runs" / "campaign.sqlite", {"status": "complete", "planned_runs": 123})


def _expected() -> dict[str, dict[str, dict[str, int]]]:
    """Counts per layer and per bit, from COUNTS by hand (the oracle)."""
    out: dict[str, dict] = {"layer": {}, "bit": {}}
    for k, counts in COUNTS.items():
        site = SITES[k % 3]
        for group, key in (("layer", site.module), ("bit", str(BITS[k % 3]))):
            acc = out[group].setdefault(key, {"masked": 0, "benign": 0, "sdc": 0, "due": 0})
            for o, c in counts.items():
                acc[o] += c
    return out


class _Page(HTMLParser):
    """Tables (id -> rows of cell texts), every src/href, and tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_numbers_match_the_store_and_nothing_is_fetched(store_path, tmp_path):
    pytest.importorskip("matplotlib")
    path = make_html_report(store_path, tmp_path / "r.html", method="wilson")
    text = path.read_text()
    page = _Page()
    page.feed(text)
    # self-contained: every URL is a data URI or an in-page anchor; no external stylesheet/script
    assert page.urls and all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls)
    assert "link" not in page.tags and not re.search(r"https?://", text)
    assert sum(u.startswith("data:image/png") for u in page.urls) == 3
    expected = _expected()
    # the counts against the hand counts; the intervals are the summary's own (their statistics
    # are tested in tests/analysis/test_stats.py and test_summary.py), laid out right
    with ResultStore(store_path, mode="r") as store:
        summary = summarize_store(store, 0.95, "wilson")
    for group in ("layer", "bit"):
        rows = {r[0]: r for r in page.tables[f"table-{group}"]}
        assert set(rows) == set(expected[group])
        stats = {str(r.key): r for r in summary.groups[group]}
        for key, counts in expected[group].items():
            n = sum(counts.values())
            low, high = stats[key].sdc.low, stats[key].sdc.high
            assert low <= counts["sdc"] / n <= high
            row = rows[key]
            assert row[1] == f"{n:,}" and row[2] == f"{n:,}"  # runs, faults (one run each)
            assert row[3] == _pct(counts["sdc"] / n)
            assert row[4] == f"[{_pct(low)}, {_pct(high)}]"
            assert row[7] == f"{counts['masked']:,}" and row[8] == f"{counts['benign']:,}"
    overall = {r[0]: r for r in page.tables["table-overall"]}
    assert overall["sdc"][1] == "28" and overall["due"][1] == "4"
    assert 'id="state"' not in text  # a complete store has no banner
    assert "&quot;seed&quot;: 5" in text and "f00d" in text  # the config, escaped


def test_html_without_matplotlib_still_has_tables(store_path, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = make_html_report(store_path, tmp_path / "r.html").read_text()
    assert "data:image/png" not in text and 'id="table-layer"' in text


def test_store_state_from_meta(tmp_path):
    host = socket.gethostname()
    proc = subprocess.Popen(["true"])  # a process that has ended: its pid is free
    proc.wait()
    assert store_state({}, 4).status == "unknown"
    assert store_state({"state": {"status": "complete"}}, 4).message() == ""
    live = store_state({"state": {"status": "running", "pid": os.getpid(), "host": host}}, 4)
    assert live.status == "running" and live.partial
    gone = {"status": "running", "pid": proc.pid, "host": host, "planned_runs": 10}
    stopped = store_state({"state": gone}, 4)
    assert stopped.status == "stopped" and "4 of 10 planned" in stopped.message()
    # another host's process cannot be checked: still being written as far as we know
    other = store_state({"state": {**gone, "host": host + "-elsewhere"}}, 4)
    assert other.status == "running"


def test_a_store_still_being_written_says_so(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    state = {"status": "running", "pid": os.getpid(), "host": socket.gethostname()}
    path = _fill(tmp_path / "c.sqlite", {**state, "planned_runs": 500})
    files = make_report(path, tmp_path / "out", html=True)
    md = (tmp_path / "out" / "report.md").read_text()
    page = (tmp_path / "out" / "report.html").read_text()
    assert files[-1].name == "report.html"
    for text in (md, page):
        assert "still being written: 118 of 500 planned runs so far" in text
    # the command line says so too, on standard error
    assert main(["report", str(path), "--out_dir", str(tmp_path / "cli")]) == 0
    assert "still being written: 118 of 500" in capsys.readouterr().err


def test_long_breakdowns_go_to_files(tmp_path):
    """Per element with many rows: report.md shows the top rows and names the CSV holding all."""
    pytest.importorskip("matplotlib")
    from torchfault.analysis._report import MAX_MARKDOWN_ROWS

    path = tmp_path / "c.sqlite"
    n = MAX_MARKDOWN_ROWS + 15
    site = FaultSite("fc", "weight", "parameter", (n, 1), "float32", 32)
    with ResultStore(path, campaign={}, fingerprint="x") as s:
        s.set_sites([site])
        s.add_faults([FaultRecord(k, (site.fault((k, 0), (1,)),)) for k in range(n)])
        s.add_runs([RunRecord(k, 0, "sdc" if k % 7 == 0 else "masked") for k in range(n)])
    files = make_report(path, tmp_path / "out", per_element=True, html=True)
    names = [p.name for p in files]
    assert "summary_element.csv" in names and names[-1] == "report.html"
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"{n:,} rows: every row is in [summary_element.csv]" in md
    assert md.count("| fc:weight[") == 20  # the top 20 only
    csv_rows = (tmp_path / "out" / "summary_element.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4 * n  # one row per element and outcome
    page = _Page()
    page.feed((tmp_path / "out" / "report.html").read_text())
    assert len(page.tables["table-element"]) == n  # the HTML holds every row (filterable)


def test_cli_report_html(store_path, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cli"
    assert main(["report", str(store_path), "--out_dir", str(out), "--html", "true"]) == 0
    assert (out / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(store_path), "--out_dir", str(tmp_path / "no")]) == 0
    assert not (tmp_path / "no" / "report.html").exists()


# ---------------------------------------------------------------- in a real browser


def _browser():
    """A headless Chromium driven by selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip(
            "no Chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        opts.add_argument(flag)
    return webdriver, opts, Service(executable_path=driver_bin)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver, opts, service = _browser()
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=opts, service=service)
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start is a skip, with why
        pytest.skip(f"Chromium did not start: {str(exc).splitlines()[0]}")
    yield driver
    driver.quit()


def _ink(png: bytes) -> float:
    """Share of pixels that are not (near) the page background."""
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return float((px < 235).mean()) if px.size else 0.0


def _column(driver, table_id: str, col: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".map(r => r.cells[arguments[1]].textContent.trim());",
        table_id,
        col,
    )


@pytest.mark.slow
def test_report_in_a_real_browser(browser, store_path, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    from selenium.webdriver.common.by import By

    path = make_html_report(store_path, tmp_path / "report.html", per_element=True)
    browser.get(path.as_uri())
    logs = browser.get_log("browser")
    assert not [e for e in logs if e["level"] in ("SEVERE", "ERROR")], logs
    # nothing was fetched: the page is its only resource
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 100)"
    )
    # sorting: SDC column of the per-layer table, descending then ascending
    expected = _expected()["layer"]
    rate = {k: c["sdc"] / sum(c.values()) for k, c in expected.items()}
    header = browser.find_element(By.CSS_SELECTOR, "#table-layer thead th:nth-child(4) button")
    header.click()
    assert _column(browser, "table-layer", 0) == sorted(rate, key=lambda k: -rate[k])
    th = browser.find_element(By.CSS_SELECTOR, "#table-layer thead th:nth-child(4)")
    assert th.get_attribute("aria-sort") == "descending"
    header.click()
    assert _column(browser, "table-layer", 0) == sorted(rate, key=lambda k: rate[k])
    # the bit column sorts as numbers (3 < 22 < 30), not as text
    browser.find_element(By.CSS_SELECTOR, "#table-bit thead th:nth-child(1) button").click()
    assert _column(browser, "table-bit", 0) == ["3", "22", "30"]
    # the element filter hides rows that do not match
    box = browser.find_element(By.CSS_SELECTOR, "input[data-filter=table-element]")
    box.send_keys("conv1")
    shown = browser.execute_script(
        "return Array.from(document.getElementById('table-element').tBodies[0].rows)"
        ".filter(r => r.style.display !== 'none').map(r => r.cells[0].textContent)"
    )
    assert shown and all(s.startswith("conv1:") for s in shown)
    assert len(shown) == sum(1 for k in COUNTS if k % 3 == 0)
    # every section drawn with content: screenshot of its own rectangle has ink
    ids = browser.execute_script(
        "return Array.from(document.querySelectorAll('main > section')).map(s => s.id)"
    )
    assert ids[:3] == ["summary", "plots", "per-layer"] and "config" in ids
    for sid in ids:
        el = browser.find_element(By.ID, sid)
        browser.execute_script("arguments[0].scrollIntoView()", el)
        assert el.size["height"] > 20, sid
        assert _ink(el.screenshot_as_png) > 0.01, sid


@pytest.mark.slow
def test_report_reads_on_a_phone(browser, store_path, tmp_path):
    pytest.importorskip("PIL")
    from selenium.webdriver.common.by import By

    state = {"status": "running", "pid": os.getpid(), "host": socket.gethostname()}
    path = _fill(tmp_path / "c.sqlite", state)
    page = make_html_report(path, tmp_path / "report.html", per_element=True)
    browser.set_window_size(390, 844)
    try:
        browser.get(page.as_uri())
        width = browser.execute_script("return window.innerWidth")
        # the page itself never scrolls sideways: wide tables scroll in their own box
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        for sid in ("summary", "per-layer", "per-element"):
            el = browser.find_element(By.ID, sid)
            assert el.size["width"] <= width
            browser.execute_script("arguments[0].scrollIntoView()", el)
            assert _ink(el.screenshot_as_png) > 0.01, sid
        banner = browser.find_element(By.ID, "state")
        assert "still being written" in banner.text and banner.is_displayed()
        # the cards stack in one column
        tops = browser.execute_script(
            "return Array.from(document.querySelectorAll('.card')).map(c => c.offsetTop)"
        )
        assert len(set(tops)) == len(tops) == 3
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.set_window_size(1200, 900)


def test_report_json_unchanged_by_html(store_path, tmp_path):
    """--html adds a file; the other outputs are the same bytes."""
    pytest.importorskip("matplotlib")
    a = make_report(store_path, tmp_path / "a")
    b = make_report(store_path, tmp_path / "b", html=True)
    assert [p.name for p in b] == [p.name for p in a] + ["report.html"]
    assert json.loads(a[3].read_text()) == json.loads(b[3].read_text())


def test_cli_report_per_element_shows_progress_and_summarises_once(
    store_path, tmp_path, capsys, monkeypatch
):
    """--progress prints each stage (lines, as standard error is no terminal here); the store is
    summarised once; the per-element rows go to the files, not to the screen."""
    pytest.importorskip("matplotlib")
    calls = []
    original = summarize_store

    def counting(store, *args, **kwargs):
        calls.append(kwargs.get("per_element"))
        return original(store, *args, **kwargs)

    # every module that summarises a store holds its own name of the one function
    for module in (
        "torchfault.analysis",
        "torchfault.analysis._report",
        "torchfault.analysis._html",
    ):
        monkeypatch.setattr(f"{module}.summarize_store", counting)
    out = tmp_path / "pe"
    assert (
        main(["report", str(store_path), "--per_element", "--progress", "--out_dir", str(out)]) == 0
    )
    captured = capsys.readouterr()
    stages = re.findall(r"\] (summarising|drawing|printing)", captured.err)
    assert stages == ["summarising", "drawing", "printing"], captured.err
    assert calls == [True]
    assert "Per element" not in captured.out and "per-element rates:" in captured.out
    assert "Per element" in (out / "report.md").read_text()
    # by default: lines for --per_element (the slow case) when piped, nothing otherwise
    assert main(["report", str(store_path), "--per_element", "--out_dir", str(out)]) == 0
    assert "] summarising" in capsys.readouterr().err
    assert main(["report", str(store_path), "--out_dir", str(out)]) == 0
    assert "] summarising" not in capsys.readouterr().err


def test_extra_sections_appear_only_with_data(store_path, tmp_path, monkeypatch):
    """The hook through which propagation/protection results join the page: a section whose
    function returns None (no data in the store) is left out, one with data is in the nav."""
    from torchfault.analysis import _html

    seen = []

    def with_data(store):
        seen.append(store.count_runs())
        return "<p>protected: 3 of 4 SDCs removed</p>"

    monkeypatch.setattr(
        _html,
        "EXTRA_SECTIONS",
        [("protection", "Protection", with_data), ("propagation", "Propagation", lambda s: None)],
    )
    text = make_html_report(store_path, tmp_path / "r.html").read_text()
    assert seen == [118]
    assert 'id="protection"' in text and 'href="#protection"' in text and "3 of 4 SDCs" in text
    assert 'id="propagation"' not in text and "Propagation" not in text


def _protection_doc(store_path, outcome_with) -> dict:
    with ResultStore(store_path, mode="r") as store:
        runs = store.runs()
    return {
        "protection": {"name": "ranger", "profile": "lenet-ranges.json"},
        "summary": {
            "protection": "ranger",
            "runs": len(runs),
            "sdc_without": 0.25,
            "sdc_with": 0.125,
            "due_without": 0.03,
            "due_with": 0.0,
            "detected": 0.0,
            "detected_correct": None,
            "detection_rate": 0.5,
            "sdc_detection_rate": None,
            "false_positive_rate": 0.0,
            "accuracy_cost": 0.0,
            "accuracy_without": 1.0,
            "accuracy_with": 1.0,
            "overhead": 0.25,
        },
        "runs": [[r.fault_id, r.input_id, outcome_with(r), True, True] for r in runs],
    }


def test_protection_section_from_protection_json(store_path, tmp_path):
    """protection.json beside the store (what a campaign with protection.name writes) becomes a
    Protection section: the file's figures, and the outcome counts of the same runs without (from
    the store) and with (from the file) the protection."""
    import json as _json

    with_outcome = {"sdc": "masked", "due": "benign"}  # this protection turns SDCs and DUEs away
    doc = _protection_doc(store_path, lambda r: with_outcome.get(r.outcome, r.outcome))
    (store_path.parent / "protection.json").write_text(_json.dumps(doc))
    text = make_html_report(store_path, tmp_path / "r.html").read_text()
    page = _Page()
    page.feed(text)
    assert 'href="#protection"' in text and "<b>ranger</b>" in text
    figures = {r[0]: r[1:] for r in page.tables["table-protection"]}
    assert figures["SDC rate"] == ["25.00%", "12.50%"]
    assert figures["DUE rate"] == ["3.00%", "0%"]
    counts = {r[0]: r[1:] for r in page.tables["table-protection-outcomes"]}
    # without: the store's own counts (80 masked, 6 benign, 28 SDC, 4 DUE); with: the file's
    assert counts["sdc"] == ["28", "0"] and counts["due"] == ["4", "0"]
    assert counts["masked"] == ["80", "108"] and counts["benign"] == ["6", "10"]
    assert "unprotected SDCs flagged: n/a" in text and "+25%" in text
    assert "another state of the campaign" not in text
    # a file from another state of the campaign says so; a broken file says it cannot be read
    doc["runs"] = doc["runs"][:10]
    (store_path.parent / "protection.json").write_text(_json.dumps(doc))
    text = make_html_report(store_path, tmp_path / "r.html").read_text()
    assert "holds 10 runs and the store 118" in text
    (store_path.parent / "protection.json").write_text("{not json")
    text = make_html_report(store_path, tmp_path / "r.html").read_text()
    assert "protection.json could not be read" in text and 'id="table-layer"' in text


@pytest.mark.slow
def test_protection_section_of_a_real_campaign(tmp_path, monkeypatch):
    """A campaign with a protection writes protection.json and its report.html shows it."""
    pytest.importorskip("matplotlib")
    import json as _json

    monkeypatch.chdir(tmp_path)
    args = [
        "campaign", "--name", "prot", "--sampler.n", "30", "--data.num_inputs", "10",
        "--protection.name", "clip", "--protection.options", "{bound: 5.0}",
        "--protection.layers", "[fc1, fc2]", "--progress", "false",
    ]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "runs" / "prot"
    doc = _json.loads((run / "protection.json").read_text())
    text = (run / "report.html").read_text()
    page = _Page()
    page.feed(text)
    figures = {r[0]: r[1:] for r in page.tables["table-protection"]}
    assert figures["SDC rate"] == [
        _pct(doc["summary"]["sdc_without"]),
        _pct(doc["summary"]["sdc_with"]),
    ]
    counts = {r[0]: r[1:] for r in page.tables["table-protection-outcomes"]}
    with_counts = {o: sum(1 for r in doc["runs"] if r[2] == o) for o in counts}
    assert {o: int(c[1]) for o, c in counts.items()} == with_counts
    assert sum(int(c[0]) for c in counts.values()) == len(doc["runs"]) == 30


@pytest.mark.slow
def test_propagation_and_vulnerability_sections_in_a_real_browser(browser, tmp_path):
    """A stored campaign with traces, reported with vulnerability maps: the propagation and
    vulnerability sections are in the nav, drawn with ink, their images load, and the
    propagation table sorts by its deviating column."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    from selenium.webdriver.common.by import By

    from .test_report_sections import _campaign

    store = _campaign(tmp_path / "c", True)
    path = make_html_report(store, tmp_path / "report.html", vulnerability="element")
    browser.get(path.as_uri())
    assert not [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    nav = browser.execute_script(
        "return Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))"
    )
    assert "#propagation" in nav and "#vulnerability" in nav
    for sid in ("propagation", "plot-propagation", "vulnerability"):
        el = browser.find_element(By.ID, sid)
        browser.execute_script("arguments[0].scrollIntoView()", el)
        assert el.size["height"] > 20, sid
        assert _ink(el.screenshot_as_png) > 0.01, sid
    heatmaps = browser.execute_script(
        "return Array.from(document.querySelectorAll('#vulnerability figure img'))"
        ".map(i => i.complete && i.naturalWidth > 100)"
    )
    assert heatmaps and all(heatmaps)
    th = browser.find_element(By.CSS_SELECTOR, "#table-propagation thead th:nth-child(4) button")
    th.click()
    counts = [int(c.replace(",", "")) for c in _column(browser, "table-propagation", 3)]
    assert counts == sorted(counts, reverse=True) and max(counts) > 0
