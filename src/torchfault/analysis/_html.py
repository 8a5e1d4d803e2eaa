# SPDX-License-Identifier: MIT
"""A campaign report as one self-contained HTML file: summary, sortable tables, plots.

The file needs nothing but a browser: CSS and JavaScript are inline, the plots are PNG data URIs,
and nothing is fetched from the network (no fonts, no scripts, no images by address). It reads on
a phone: the layout is one column below 700 px and wide tables scroll sideways in their own box.

Sections, each present when its data exist:

- the campaign (store, seed, fingerprint, version) and its state: a store that a campaign is still
  writing, or that a campaign stopped writing before it finished, says so at the top;
- the headline SDC and DUE rates with their intervals, and the outcome table;
- the plots of :mod:`torchfault.analysis` (rate per layer, per bit, outcome mix; when matplotlib
  is installed);
- one sortable table per breakdown of the summary (layer, target, target kind, bit, element):
  clicking a column header sorts by it (numbers as numbers), clicking again reverses; the
  per-element table has a filter box;
- propagation and protection results, when the analysis of the store exposes them (see
  :data:`EXTRA_SECTIONS`);
- the campaign config.

Every number comes from the :class:`~torchfault.analysis.Summary` that
:func:`~torchfault.analysis.summarize_store` computes; this module only lays
it out.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import socket
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchfault.analysis._summary import (
    METHOD_LABELS,
    MULTIPLE,
    NONE,
    Row,
    Summary,
    _pct,
    summarize_store,
)
from torchfault.errors import TorchFaultError
from torchfault.store import RUN_OUTCOMES, open_store

__all__ = [
    "EXTRA_SECTIONS",
    "StoreState",
    "html_report",
    "make_html_report",
    "protection_section",
    "store_state",
]

#: Rows of a breakdown table shown in the HTML file; a longer breakdown shows the rows with the
#: most SDC runs and names the file that holds every row.
MAX_HTML_ROWS = 2000


# ---------------------------------------------------------------- state of the store


@dataclass(frozen=True)
class StoreState:
    """Whether a store's campaign finished.

    Attributes:
        status: ``"complete"`` (the campaign ended), ``"running"`` (a live process on this machine
            is writing it), ``"stopped"`` (a campaign began writing it and ended before finishing:
            interrupted or killed) or ``"unknown"`` (the store does not say: written by hand or
            by an older torchfault).
        runs: runs stored.
        planned: runs the campaign planned (``None`` when unknown or adaptive).
    """

    status: str
    runs: int
    planned: int | None = None

    @property
    def partial(self) -> bool:
        """The campaign has not finished: the report shows part of its runs."""
        return self.status in ("running", "stopped")

    def message(self) -> str:
        """One sentence for the top of a report (empty for a complete or unknown store)."""
        of = f" of {self.planned:,} planned" if self.planned else ""
        if self.status == "running":
            return (
                f"This store is still being written: {self.runs:,}{of} runs so far. The report "
                "shows the runs stored when it was made; make it again when the campaign ends."
            )
        if self.status == "stopped":
            return (
                f"The campaign stopped before it finished: {self.runs:,}{of} runs stored. Run the "
                "same campaign again to resume it; this report shows the runs stored."
            )
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def store_state(meta: dict[str, Any], runs: int) -> StoreState:
    """The :class:`StoreState` of a store from its ``meta()`` and its number of runs.

    A campaign records ``state`` in the store's meta when it starts (``running``, with its
    process id and host) and when it ends (``complete``, or ``stopped`` when it was interrupted
    or failed). A ``running`` state whose process is gone (on this host) means the campaign was
    killed.

    Example:
        >>> store_state({"state": {"status": "complete", "planned_runs": 9}}, 9).status
        'complete'
        >>> store_state({"state": {"status": "running", "pid": -1, "host": "x"}}, 3).message()[:36]
        'This store is still being written: 3'
    """
    state = meta.get("state")
    if not isinstance(state, dict):
        return StoreState("unknown", runs)
    planned = state.get("planned_runs")
    planned = int(planned) if isinstance(planned, int) and not isinstance(planned, bool) else None
    status = state.get("status")
    if status in ("complete", "stopped"):
        return StoreState(status, runs, planned)
    if status != "running":
        return StoreState("unknown", runs, planned)
    pid, host = state.get("pid"), state.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and pid > 0 and not _alive(pid):
        return StoreState("stopped", runs, planned)
    return StoreState("running", runs, planned)


# ---------------------------------------------------------------- building blocks

_CSS = """
:root{--fg:#1d2430;--muted:#5b6577;--line:#d9dee7;--bg:#fff;--panel:#f5f7fa;--sdc:#d0453b;
--due:#e8a33d;--masked:#4c9a5b;--benign:#5b8fd0;--accent:#2a5db0}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header,main{max-width:1100px;margin:0 auto;padding:0 16px}
header{padding-top:18px}
h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid var(--line);padding-bottom:.2em}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;margin:10px 0;font-size:.92em}
nav a{color:var(--accent);text-decoration:none}
.meta{color:var(--muted);font-size:.9em;word-break:break-all}
.banner{background:#fff4d6;border:1px solid #e8c35d;border-radius:6px;padding:10px 12px;margin:12px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{flex:1 1 200px;background:var(--panel);border-radius:8px;padding:12px 14px}
.card .v{font-size:1.6em;font-weight:600}
.card .i{color:var(--muted);font-size:.88em}
.card.sdc .v{color:var(--sdc)}.card.due .v{color:#b5761a}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid var(--line);
border-radius:6px;max-height:75vh;overflow-y:auto}
table{border-collapse:collapse;width:100%;font-size:.9em;font-variant-numeric:tabular-nums}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left;white-space:normal;word-break:break-all;min-width:8em}
thead th{position:sticky;top:0;background:var(--panel);z-index:1}
th button{all:unset;cursor:pointer;font-weight:600}
th button::after{content:" \\2195";color:var(--muted);font-size:.8em}
th[aria-sort=ascending] button::after{content:" \\2191";color:var(--fg)}
th[aria-sort=descending] button::after{content:" \\2193";color:var(--fg)}
tbody tr:nth-child(even){background:#fafbfc}
.bar{display:inline-block;height:.7em;background:var(--sdc);vertical-align:middle;margin-right:6px;
border-radius:2px;min-width:1px}
.note{color:var(--muted);font-size:.88em;margin:.4em 0}
figure{margin:12px 0}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:.88em}
input[type=search]{width:100%;max-width:360px;padding:6px 8px;margin:6px 0;font:inherit;
border:1px solid var(--line);border-radius:6px}
pre{background:var(--panel);padding:10px;border-radius:6px;overflow-x:auto;font-size:.85em}
footer{max-width:1100px;margin:24px auto;padding:0 16px;color:var(--muted);font-size:.85em}
@media (max-width:700px){body{font-size:14px}.card{flex-basis:100%}th,td{padding:4px 6px}
.wide{display:none}}
"""

# sorting: numbers by their data-v value, text by locale; a filter box hides non-matching rows
_JS = """
(function(){
function val(td){var v=td.getAttribute('data-v');return v===null?td.textContent.trim():parseFloat(v);}
function sortBy(table,col,th){
  var now=th.getAttribute('aria-sort');
  var dir=now===null?(th.getAttribute('data-first')||'descending'):(now==='descending'?'ascending':'descending');
  table.querySelectorAll('thead th').forEach(function(h){h.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',dir);
  var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows),sign=dir==='ascending'?1:-1;
  rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);
    if(typeof x==='number'&&typeof y==='number'){return sign*(x-y);}
    return sign*String(x).localeCompare(String(y),undefined,{numeric:true});});
  rows.forEach(function(r){body.appendChild(r);});
}
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('thead th').forEach(function(th,col){
    var b=th.querySelector('button');if(b){b.addEventListener('click',function(){sortBy(table,col,th);});}
  });
});
document.querySelectorAll('input[data-filter]').forEach(function(box){
  var table=document.getElementById(box.getAttribute('data-filter'));
  box.addEventListener('input',function(){var q=box.value.toLowerCase();
    Array.prototype.forEach.call(table.tBodies[0].rows,function(r){
      r.style.display=r.cells[0].textContent.toLowerCase().indexOf(q)<0?'none':'';});});
});
})();
"""

_TITLES = {
    "layer": ("Per layer", "layer"),
    "target": ("Per target", "module:target"),
    "kind": ("Per target kind", "kind"),
    "bit": ("Per bit position", "bit"),
    "element": ("Per element", "element"),
}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _interval(summary: Summary) -> str:
    method = METHOD_LABELS.get(summary.method, summary.method)
    return f"{summary.confidence:.0%} {method} interval"


def _td(text: str, value: float | int | None = None, cls: str = "") -> str:
    attrs = f' data-v="{value!r}"' if value is not None else ""
    attrs += f' class="{cls}"' if cls else ""
    return f"<td{attrs}>{_e(text)}</td>"


def _th(text: str, first: str = "descending", cls: str = "") -> str:
    """A sortable header; ``first``: the order of its first click (names A-Z, rates high-low)."""
    c = f' class="{cls}"' if cls else ""
    return f'<th scope="col" data-first="{first}"{c}><button type="button">{_e(text)}</button></th>'


def _key_value(key: Any) -> float | None:
    # bits sort as numbers; "(multiple)" and "(none)" after every bit
    if isinstance(key, int) and not isinstance(key, bool):
        return float(key)
    if key in (MULTIPLE, NONE):
        return 1e9 if key == MULTIPLE else 1e9 + 1
    return None


def _group_table(table_id: str, label: str, rows: Sequence[Row], numeric_key: bool) -> str:
    head = [
        _th(label, "ascending"),
        _th("runs"),
        _th("faults"),
        _th("SDC"),
        _th("SDC interval", cls="wide"),
        _th("DUE"),
        _th("DUE interval", cls="wide"),
        _th("masked"),
        _th("benign"),
    ]
    top = max((r.sdc.rate for r in rows), default=0.0) or 1.0
    body = []
    for r in rows:
        sdc, due = r.sdc, r.due
        bar = (
            f'<span class="bar" style="width:{100 * sdc.rate / top:.1f}px"></span>'
            if sdc.rate > 0
            else ""
        )
        kv = _key_value(r.key) if numeric_key else None
        body.append(
            "<tr>"
            + _td(str(r.key), kv)
            + _td(f"{r.n:,}", r.n)
            + _td(f"{r.faults:,}", r.faults)
            + f'<td data-v="{sdc.rate!r}">{bar}{_e(_pct(sdc.rate))}</td>'
            + _td(f"[{_pct(sdc.low)}, {_pct(sdc.high)}]", sdc.low, "wide")
            + _td(_pct(due.rate), due.rate)
            + _td(f"[{_pct(due.low)}, {_pct(due.high)}]", due.low, "wide")
            + _td(f"{r.counts['masked']:,}", r.counts["masked"])
            + _td(f"{r.counts['benign']:,}", r.counts["benign"])
            + "</tr>"
        )
    return (
        f'<div class="scroll"><table class="sortable" id="{_e(table_id)}">'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


_PLOT_IDS = ("plot-layer", "plot-bit", "plot-mix")


def _plots(
    summary: Summary, files: Sequence[tuple[str, Path]] | None = None
) -> list[tuple[str, str, bytes]]:
    """``(id, title, png bytes)`` of the three plots (read from ``files``, ``(title, path)``,
    when they were drawn already); empty when matplotlib is missing."""
    if files is not None:
        return [(pid, t, Path(p).read_bytes()) for pid, (t, p) in zip(_PLOT_IDS, files)]
    from torchfault.analysis._report import (
        plot_outcome_mix,
        plot_rate_per_bit,
        plot_rate_per_layer,
    )

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for pid, title, fn in (
            ("plot-layer", "SDC and DUE rate per layer", plot_rate_per_layer),
            ("plot-bit", "SDC and DUE rate per bit position", plot_rate_per_bit),
            ("plot-mix", "Outcome mix", plot_outcome_mix),
        ):
            path = fn(summary, Path(tmp) / f"{pid}.png")
            out.append((pid, title, path.read_bytes()))
    return out


def _share(x: Any) -> str:
    return "n/a" if x is None or x != x else _pct(float(x))  # None and NaN: nothing to divide


def protection_section(
    store: Any, *, confidence: float = 0.95, method: str = "clopper_pearson"
) -> str | None:
    """The protection a campaign measured (``protection.json`` beside the store, written by a
    campaign with ``protection.name`` set), or ``None`` when there is none.

    Shows the figures the campaign computed (SDC and DUE with and without the protection,
    detection, false positives (with their interval over the fault-free inputs where the file
    holds their counts), accuracy cost, overhead), the outcome counts of the same runs
    without (from the store) and with it (from the file) and, with matplotlib, the plot of
    :func:`~torchfault.analysis.plot_protection` (intervals by ``confidence`` and ``method``).
    """
    path = Path(store.path).parent / "protection.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        summary, runs, spec = doc["summary"], doc["runs"], doc.get("protection") or {}
        with_counts = Counter(str(r[2]) for r in runs)
        pairs = {(int(r[0]), int(r[1])) for r in runs}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return f'<p class="note">{_e(path.name)} could not be read: {_e(exc)}.</p>'
    without = Counter(r.outcome for r in store.iter_runs() if (r.fault_id, r.input_id) in pairs)
    stored = store.count_runs()
    options = ", ".join(f"{k}: {v}" for k, v in spec.items() if k != "name") or "none"
    note = ""
    if len(pairs) != stored or sum(without.values()) != len(pairs):
        note = (
            f'<p class="note">{_e(path.name)} holds {len(pairs):,} runs and the store '
            f"{stored:,}: it was made from another state of the campaign.</p>"
        )
    figures = [
        ("SDC rate", summary.get("sdc_without"), summary.get("sdc_with")),
        ("DUE rate", summary.get("due_without"), summary.get("due_with")),
        ("detected (flagged, not corrected)", 0.0, summary.get("detected")),
        (
            "label accuracy, fault-free",
            summary.get("accuracy_without"),
            summary.get("accuracy_with"),
        ),
    ]
    head = _th("", "ascending") + _th("without") + _th("with")
    rows = "".join(
        "<tr>" + _td(name) + _td(_share(a)) + _td(_share(b)) + "</tr>" for name, a, b in figures
    )
    outcomes = RUN_OUTCOMES
    counts = "".join(
        "<tr>"
        + _td(o)
        + _td(f"{without.get(o, 0):,}", without.get(o, 0))
        + _td(f"{with_counts.get(o, 0):,}", with_counts.get(o, 0))
        + "</tr>"
        for o in outcomes
    )
    overhead = summary.get("overhead")
    from torchfault.analysis._protection import false_positive_rate

    try:  # with its interval where the file holds the counts; an older file: the rate alone
        fp = false_positive_rate(summary, confidence, method)
    except TorchFaultError:
        fp = None
    fp_text = (
        _share(summary.get("false_positive_rate"))
        if fp is None
        else f"{fp.format()} ({fp.k:,} of {fp.n:,} inputs)"
    )
    more = [
        ("faulty runs flagged (detection rate)", _share(summary.get("detection_rate"))),
        ("unprotected SDCs flagged", _share(summary.get("sdc_detection_rate"))),
        ("detected runs still correct", _share(summary.get("detected_correct"))),
        ("fault-free inputs flagged (false positives)", fp_text),
        ("fault-free inputs whose class changes", _share(summary.get("accuracy_cost"))),
        (
            "time of a fault-free pass",
            "n/a" if overhead is None else f"{100 * float(overhead):+.0f}%",
        ),
    ]
    figure = ""
    try:
        import matplotlib  # noqa: F401

        from torchfault.analysis._protection import plot_protection

        with tempfile.TemporaryDirectory() as tmp:
            png = plot_protection(
                doc, Path(tmp) / "p.png", confidence=confidence, method=method
            ).read_bytes()
        title = "SDC and DUE rate without and with the protection; detection and false positives"
        figure = (
            f'<figure id="plot-protection"><img alt="{_e(title)}" src="{_png_uri(png)}">'
            f"<figcaption>{_e(title)}</figcaption></figure>"
        )
    except ImportError:
        pass
    except TorchFaultError as exc:  # a summary without its rates: the tables still show
        figure = f'<p class="note">No plot: {_e(exc)}</p>'
    return (
        f"<p>Protection <b>{_e(spec.get('name', summary.get('protection', '?')))}</b> "
        f"({_e(options)}), measured on {len(pairs):,} runs of this campaign: each run repeated "
        "under it and compared with the unprotected golden output.</p>"
        + note
        + figure
        + '<div class="scroll"><table class="sortable" id="table-protection"><thead><tr>'
        + head
        + f"</tr></thead><tbody>{rows}</tbody></table></div>"
        + '<div class="scroll" style="margin-top:10px"><table class="sortable" '
        'id="table-protection-outcomes"><thead><tr>'
        + _th("outcome", "ascending")
        + _th("runs without")
        + _th("runs with")
        + f"</tr></thead><tbody>{counts}</tbody></table></div><ul>"
        + "".join(f"<li>{_e(name)}: {_e(value)}</li>" for name, value in more)
        + "</ul>"
    )


def _propagation_section(store: Any) -> str | None:
    from torchfault.analysis._sections import propagation_section

    return propagation_section(store)


#: Optional sections: ``(id, title, function(store) -> HTML or None)``. A function returns
#: ``None`` when the store holds no data for it, and the section is left out: the protection a
#: campaign measured (``protection.json``) and the propagation of the traces a campaign stored
#: (``trace.enabled``; :mod:`torchfault.analysis._sections`).
EXTRA_SECTIONS: list[tuple[str, str, Callable[[Any], str | None]]] = [
    ("protection", "Protection", protection_section),
    ("propagation", "Propagation", _propagation_section),
]


def check_vulnerability(vulnerability: str | None) -> None:
    """Refuse a ``vulnerability`` option other than ``None``, ``"element"`` or ``"channel"``."""
    if vulnerability not in (None, "element", "channel"):
        raise TorchFaultError(
            f"vulnerability: {vulnerability!r} is not valid; choose element, channel or None.",
            field="vulnerability",
        )


# ---------------------------------------------------------------- the page


def html_report(
    summary: Summary,
    meta: dict[str, Any],
    *,
    store_path: str | os.PathLike[str] = "",
    state: StoreState | None = None,
    plots: Sequence[tuple[str, str, bytes]] = (),
    extra: Sequence[tuple[str, str, str]] = (),
    files: dict[str, str] | None = None,
) -> str:
    """The report page as a string (one self-contained HTML document).

    Args:
        summary: the campaign's summary.
        meta: the store's ``meta()`` (config, seed, fingerprint, version, created).
        store_path: shown in the header.
        state: the store's :class:`StoreState` (a banner when the campaign is not finished).
        plots: ``(id, title, png bytes)`` embedded as data URIs.
        extra: ``(id, title, inner HTML)`` of further sections.
        files: ``{group: file name}`` of files holding every row of breakdowns cut short here.

    Example:
        >>> from torchfault.analysis import summarize
        >>> from torchfault.faults import Fault
        >>> s = summarize([{"fault_id": 0, "outcome": "sdc"}], {0: (Fault("fc", "weight", (0, 0), (30,)),)})
        >>> page = html_report(s, {"seed": 1})
        >>> page.startswith("<!DOCTYPE html>") and 'id="per-layer"' in page
        True
    """
    files = files or {}
    sections: list[tuple[str, str, str]] = []
    o = summary.overall
    cards = []
    for name, rate, cls in (("SDC rate", o.sdc, "sdc"), ("DUE rate", o.due, "due")):
        cards.append(
            f'<div class="card {cls}"><div>{name}</div><div class="v">{_e(_pct(rate.rate))}</div>'
            f'<div class="i">[{_e(_pct(rate.low))}, {_e(_pct(rate.high))}] '
            f"{_e(_interval(summary))}</div></div>"
        )
    cards.append(
        f'<div class="card"><div>runs</div><div class="v">{summary.runs:,}</div>'
        f'<div class="i">of {o.faults:,} faults ({_e(summary.design)}); recorded run time '
        f"{summary.seconds:.1f} s</div></div>"
    )
    outcome_rows = "".join(
        "<tr>"
        + _td(out)
        + _td(f"{o.rates[out].k:,}", o.rates[out].k)
        + _td(_pct(o.rates[out].rate), o.rates[out].rate)
        + _td(f"[{_pct(o.rates[out].low)}, {_pct(o.rates[out].high)}]", o.rates[out].low)
        + "</tr>"
        for out in o.rates  # the four outcomes, and detected when a run has it
    )
    outcome_table = (
        '<div class="scroll"><table class="sortable" id="table-overall"><thead><tr>'
        + _th("outcome", "ascending")
        + _th("runs")
        + _th("rate")
        + _th("interval")
        + f"</tr></thead><tbody>{outcome_rows}</tbody></table></div>"
    )
    sections.append(
        (
            "summary",
            "Summary",
            f'<div class="cards">{"".join(cards)}</div>{outcome_table}'
            '<p class="note">masked: output identical to the golden run; benign: output changed, '
            "prediction kept; SDC: silent data corruption (prediction changed); DUE: detected "
            "unrecoverable error (non-finite output or an exception).</p>",
        )
    )
    if plots:
        figs = "".join(
            f'<figure id="{_e(pid)}"><img alt="{_e(title)}" src="{_png_uri(data)}">'
            f"<figcaption>{_e(title)}</figcaption></figure>"
            for pid, title, data in plots
        )
        sections.append(("plots", "Plots", figs))
    for group, rows in summary.groups.items():
        title, label = _TITLES.get(group, (group, group))
        shown = list(rows)
        note = ""
        if len(shown) > MAX_HTML_ROWS:
            shown = sorted(shown, key=lambda r: (-r.counts["sdc"], -r.n))[:MAX_HTML_ROWS]
            where = f" every row is in {_e(files[group])}" if group in files else ""
            note = (
                f'<p class="note">{len(rows):,} rows: the {MAX_HTML_ROWS:,} with the most SDC '
                f"runs are shown;{where}.</p>"
            )
        body = note or f'<p class="note">{len(rows):,} rows.</p>'
        body = body.replace("</p>", " Click a column header to sort.</p>", 1)
        if group == "element":
            body += (
                '<input type="search" placeholder="filter elements" '
                'aria-label="filter elements" data-filter="table-element">'
            )
        body += _group_table(f"table-{group}", label, shown, numeric_key=group == "bit")
        sections.append((f"per-{group}", title, body))
    for sid, title, inner in extra:
        sections.append((sid, title, inner))
    config = json.dumps(meta.get("config", {}), indent=2, sort_keys=True, default=str)
    sections.append(("config", "Campaign config", f"<pre>{_e(config)}</pre>"))

    banner = ""
    if state is not None and state.message():
        banner = f'<div class="banner" id="state" role="status">{_e(state.message())}</div>'
    details = [
        f"store: {store_path}" if store_path else "",
        f"created {meta.get('created', '?')} with torchfault {meta.get('torchfault_version', '?')}",
        f"seed {meta.get('seed')}",
        f"fingerprint {meta.get('fingerprint', '?')}",
    ]
    nav = "".join(f'<a href="#{_e(sid)}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "".join(
        f'<section id="{_e(sid)}"><h2>{_e(title)}</h2>{inner}</section>'
        for sid, title, inner in sections
    )
    made = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # no request may leave the page: everything it shows is inline
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>torchfault report: {_e(Path(str(store_path)).name or 'campaign')}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>torchfault campaign report</h1>"
        f'<div class="meta">{" · ".join(_e(d) for d in details if d)}</div>{banner}'
        f'<nav aria-label="sections">{nav}</nav></header>'
        f"<main>{body}</main>"
        f"<footer>Made {made}. Groups named {_e(MULTIPLE)} hold runs whose faults span several "
        f"layers or bits; {_e(NONE)}, runs without faults.</footer>"
        f"<script>{_JS}</script></body></html>\n"
    )


def make_html_report(
    store_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    confidence: float = 0.95,
    method: str = "wilson",
    per_element: bool = False,
    summary: Summary | None = None,
    files: dict[str, str] | None = None,
    plots: Sequence[tuple[str, Path]] | None = None,
    vulnerability: str | None = None,
) -> Path:
    """Write ``report.html`` of a stored campaign: one self-contained file.

    Args:
        store_path: the campaign's SQLite store.
        out: the HTML file to write (default: ``report.html`` beside the store).
        confidence: confidence level of the intervals.
        method: ``"wilson"`` or ``"clopper_pearson"``.
        per_element: also break down per element (a filterable table).
        summary: a summary already computed from this store (saves reading it again).
        files: ``{group: file name}`` of files holding every row of long breakdowns.
        plots: ``(title, PNG path)`` of the three plots of :func:`make_report`, when drawn
            already (else they are drawn here).
        vulnerability: ``"element"`` or ``"channel"``: add the vulnerability maps (heatmaps
            of the SDC rate per element or channel of every stored tensor, with run counts and
            intervals, and the most vulnerable cells); ``None`` (default): none.

    Returns:
        The path written.

    Example:
        >>> import tempfile, pathlib
        >>> from torchfault.faults import Fault
        >>> from torchfault.store import ResultStore, FaultRecord, RunRecord
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with ResultStore(tmp / "c.sqlite", campaign={}, fingerprint="x") as s:
        ...     s.add_faults([FaultRecord(0, (Fault("fc", "weight", (0, 0), (30,)),))])
        ...     s.add_runs([RunRecord(0, i, "sdc" if i % 3 else "masked") for i in range(9)])
        >>> make_html_report(tmp / "c.sqlite").name
        'report.html'
    """
    check_vulnerability(vulnerability)
    store_path = Path(store_path)
    with open_store(store_path) as store:
        if summary is None:
            summary = summarize_store(store, confidence, method, per_element=per_element)
        meta = store.meta()
        state = store_state(meta, store.count_runs())
        extra = []
        for sid, title, fn in EXTRA_SECTIONS:
            if fn is protection_section:  # its plot's intervals are the report's
                inner = protection_section(
                    store, confidence=summary.confidence, method=summary.method
                )
            else:
                inner = fn(store)
            if inner:
                extra.append((sid, title, inner))
        if vulnerability is not None:
            from torchfault.analysis._sections import vulnerability_section

            extra.append(
                ("vulnerability", "Vulnerability", vulnerability_section(store, vulnerability))
            )
    page = html_report(
        summary,
        meta,
        store_path=store_path,
        state=state,
        plots=_plots(summary, plots),
        extra=extra,
        files=files,
    )
    path = Path(out) if out is not None else store_path.parent / "report.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise TorchFaultError(f"cannot write the HTML report {str(path)!r}: {exc}") from None
    return path
