# SPDX-License-Identifier: MIT
"""Report sections on why faults matter: propagation by depth and vulnerability maps.

Both ``report.html`` (:func:`~torchfault.analysis.make_html_report`) and ``report.md``
(:func:`~torchfault.analysis.make_report`) show them; this module only lays out what the
analysis functions compute:

- **Propagation** (when the store holds traces, a campaign run with ``trace.enabled``): the table
  of :func:`~torchfault.analysis.propagation_by_depth` over every traced run (per layer in
  execution order: runs deviating there, median and largest absolute deviation, runs masked there,
  runs first out of their golden range there), the layers that mask, the same table per fault
  kind and bit (:func:`~torchfault.analysis.propagation_by_group`) and a plot of the share of
  runs deviating by depth per group.
- **Vulnerability** (when asked, ``vulnerability="element"`` or ``"channel"``): per stored tensor
  hit by single-fault runs, the SDC rate of each cell with its runs and interval
  (:func:`~torchfault.analysis.vulnerability_maps`) as a heatmap and the most vulnerable cells
  as a table.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchfault.analysis._propagation import (
    Trace,
    propagation_by_depth,
    propagation_by_group,
    read_traces,
)
from torchfault.analysis._summary import _pct
from torchfault.analysis._vulnerability import VulnerabilityMap, plot_heatmap, vulnerability_maps

__all__ = [
    "TOP_CELLS",
    "propagation_markdown",
    "propagation_section",
    "vulnerability_markdown",
    "vulnerability_section",
]

#: Cells per tensor listed in the vulnerability tables (the heatmap shows every cell).
TOP_CELLS = 20


def _dev(x: float) -> str:
    return f"{x:.3g}"


def _share(k: int, n: int) -> str:
    return _pct(k / n) if n else "n/a"


def masking_layers(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """``(layer, runs masked there)`` of the layers that masked any run, most first."""
    return sorted(
        ((r["layer"], r["masked_here"]) for r in rows if r["masked_here"]),
        key=lambda t: -t[1],
    )


def _group_label(key: tuple[str, str]) -> str:
    return f"{key[0]}, bit {key[1]}"


def _html_helpers() -> Any:
    from torchfault.analysis import _html

    return _html


def _depth_table(table_id: str, rows: Sequence[dict[str, Any]], group: str | None = None) -> str:
    h = _html_helpers()
    head = ([h._th("fault kind, bit", "ascending")] if group is not None else []) + [
        h._th("depth", "ascending"),
        h._th("layer", "ascending"),
        h._th("runs"),
        h._th("deviating"),
        h._th("share deviating"),
        h._th("median |deviation|"),
        h._th("max |deviation|"),
        h._th("masked here"),
        h._th("first out of range here"),
    ]
    body = []
    for depth, r in enumerate(rows):
        body.append(
            "<tr>"
            + (h._td(group) if group is not None else "")
            + h._td(str(depth), depth)
            + h._td(r["layer"])
            + h._td(f"{r['runs']:,}", r["runs"])
            + h._td(f"{r['deviating']:,}", r["deviating"])
            + h._td(_share(r["deviating"], r["runs"]), r["deviating"] / (r["runs"] or 1))
            + h._td(_dev(r["median_abs"]), r["median_abs"])
            + h._td(_dev(r["max_abs"]), r["max_abs"])
            + h._td(f"{r['masked_here']:,}", r["masked_here"])
            + h._td(f"{r['out_of_range_here']:,}", r["out_of_range_here"])
            + "</tr>"
        )
    return "".join(body) if group is not None else _wrap(table_id, head, body)


def _wrap(table_id: str, head: Sequence[str], body: Sequence[str]) -> str:
    return (
        f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>'
        f"{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def plot_propagation(groups: dict[tuple[str, str], list[dict[str, Any]]], path: str | Path) -> Path:
    """Share of runs deviating at each depth, one line per (fault kind, bit) group; returns the
    path (PNG)."""
    from torchfault.analysis._report import _figure

    layers: list[str] = []
    for rows in groups.values():
        for r in rows:
            if r["layer"] not in layers:
                layers.append(r["layer"])
    fig = _figure(max(6.0, 0.45 * len(layers) + 3.0), 4.5)
    ax = fig.subplots()
    for key, rows in groups.items():
        by = {r["layer"]: r for r in rows}
        xs = [i for i, n in enumerate(layers) if n in by]
        ys = [by[layers[i]]["deviating"] / (by[layers[i]]["runs"] or 1) for i in xs]
        ax.plot(xs, ys, marker="o", label=_group_label(key))
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of runs deviating from golden")
    ax.set_xlabel("layer (execution order)")
    ax.legend(fontsize="small", ncols=2)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _traces_and_groups(store: Any) -> tuple[list[Trace], dict[tuple[str, str], list[Any]]]:
    traces = read_traces(store)
    if not traces:
        return [], {}
    kinds = {(s.module, s.target): s.kind for s in store.sites()}
    return traces, propagation_by_group(traces, store.faults(), kinds)


def propagation_section(store: Any) -> str | None:
    """The propagation section of ``report.html`` (``None`` when the store holds no traces)."""
    traces, groups = _traces_and_groups(store)
    if not traces:
        return None
    h = _html_helpers()
    rows = propagation_by_depth(traces)
    masks = masking_layers(rows)
    mask_text = (
        ", ".join(f"{n} ({k:,} runs)" for n, k in masks) if masks else "no layer masked a run"
    )
    out = [
        f"<p>{len(traces):,} traced runs: at every layer (execution order) the runs whose output "
        "differs from golden, how far, where the deviation vanished again (masked) and where it "
        f'first left the golden range.</p><p id="masking-layers">Layers that mask: '
        f"{h._e(mask_text)}.</p>",
        _depth_table("table-propagation", rows),
    ]
    head = [
        h._th("fault kind, bit", "ascending"),
        h._th("depth", "ascending"),
        h._th("layer", "ascending"),
        h._th("runs"),
        h._th("deviating"),
        h._th("share deviating"),
        h._th("median |deviation|"),
        h._th("max |deviation|"),
        h._th("masked here"),
        h._th("first out of range here"),
    ]
    body = [_depth_table("", g, _group_label(key)) for key, g in groups.items()]
    out.append(
        '<p class="note">Per fault kind and bit (single-fault runs; the bit is the '
        "fault's most significant flipped bit).</p>"
    )
    out.append(_wrap("table-propagation-groups", head, body))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "".join(out)
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_propagation(groups, Path(tmp) / "p.png").read_bytes()
    title = "Share of runs deviating by depth, per fault kind and bit"
    out.insert(
        1,
        f'<figure id="plot-propagation"><img alt="{title}" src="{h._png_uri(png)}">'
        f"<figcaption>{title}</figcaption></figure>",
    )
    return "".join(out)


def _md_depth(rows: Sequence[dict[str, Any]], group: str | None = None) -> list[str]:
    lines = []
    for depth, r in enumerate(rows):
        lines.append(
            "| "
            + (f"{group} | " if group is not None else "")
            + f"{depth} | {r['layer']} | {r['runs']:,} | {r['deviating']:,} | "
            f"{_share(r['deviating'], r['runs'])} | {_dev(r['median_abs'])} | "
            f"{_dev(r['max_abs'])} | {r['masked_here']:,} | {r['out_of_range_here']:,} |"
        )
    return lines


_MD_HEAD = (
    "depth | layer | runs | deviating | share deviating | median abs deviation | "
    "max abs deviation | masked here | first out of range here |"
)


def propagation_markdown(store: Any, out_dir: Path | None = None) -> list[str]:
    """The propagation section of ``report.md`` (no lines without traces); with ``out_dir`` and
    matplotlib, ``propagation.png`` is drawn there and linked."""
    traces, groups = _traces_and_groups(store)
    if not traces:
        return []
    rows = propagation_by_depth(traces)
    masks = masking_layers(rows)
    lines = [
        "## Propagation",
        "",
        f"{len(traces):,} traced runs. Layers that mask: "
        + (", ".join(f"{n} ({k:,} runs)" for n, k in masks) if masks else "none")
        + ".",
        "",
        "| " + _MD_HEAD,
        "|" + "---|" * 9,
        *_md_depth(rows),
        "",
        "### Per fault kind and bit",
        "",
        "| fault kind, bit | " + _MD_HEAD,
        "|" + "---|" * 10,
    ]
    for key, g in groups.items():
        lines += _md_depth(g, _group_label(key))
    lines.append("")
    if out_dir is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return lines
        p = plot_propagation(groups, Path(out_dir) / "propagation.png")
        lines += [f"![Share of runs deviating by depth]({p.name})", ""]
    return lines


def _maps(store: Any, by: str) -> dict[tuple[str, str], VulnerabilityMap]:
    shapes = {(s.module, s.target): s.shape for s in store.sites()}
    return vulnerability_maps(store, by=by, shapes=shapes)


def _slug(module: str, target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{module}-{target}")


def vulnerability_section(store: Any, by: str) -> str:
    """The vulnerability section of ``report.html``: per tensor a heatmap of the SDC rate per
    ``by`` (element or channel) and its :data:`TOP_CELLS` most vulnerable cells."""
    h = _html_helpers()
    maps = _maps(store, by)
    if not maps:
        return '<p class="note">No single-fault run hit a stored tensor: no map to draw.</p>'
    try:
        import matplotlib  # noqa: F401

        draw = True
    except ImportError:
        draw = False
    head = [
        h._th("tensor", "ascending"),
        h._th(by, "ascending"),
        h._th("runs"),
        h._th("faults"),
        h._th("SDC runs"),
        h._th("SDC rate"),
        h._th("interval", cls="wide"),
    ]
    out = [
        f"<p>SDC rate per {h._e(by)} of every stored tensor that single-fault runs hit; each "
        "table lists the cells with the highest rate (ties: more runs first) with their runs "
        "and interval; in the heatmaps cells without runs are grey.</p>"
    ]
    for (module, target), vm in maps.items():
        slug = _slug(module, target)
        runs = sum(c.runs for c in vm.cells.values())
        out.append(
            f'<h3>{h._e(module)}.{h._e(target)}</h3><p class="note">{len(vm.cells):,} cells hit '
            f"by {runs:,} runs.</p>"
        )
        if draw:
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_heatmap(vm, Path(tmp) / "h.png").read_bytes()
            title = f"SDC rate per {by} of {module}.{target}"
            out.append(
                f'<figure id="heatmap-{slug}"><img alt="{h._e(title)}" src="{h._png_uri(png)}">'
                f"<figcaption>{h._e(title)}</figcaption></figure>"
            )
        body = [
            "<tr>"
            + h._td(f"{module}.{target}")
            + h._td(" ".join(map(str, c.index)))
            + h._td(f"{c.runs:,}", c.runs)
            + h._td(f"{c.faults:,}", c.faults)
            + h._td(f"{c.hits:,}", c.hits)
            + h._td(_pct(c.rate), c.rate)
            + h._td(f"[{_pct(c.low)}, {_pct(c.high)}]", c.low, "wide")
            + "</tr>"
            for c in vm.top(TOP_CELLS)
        ]
        out.append(_wrap(f"table-vulnerability-{slug}", head, body))
    return "".join(out)


def vulnerability_markdown(store: Any, by: str, out_dir: Path | None = None) -> list[str]:
    """The vulnerability section of ``report.md`` (heatmaps ``heatmap_<tensor>.png`` drawn in
    ``out_dir`` when given and matplotlib is installed)."""
    maps = _maps(store, by)
    lines = ["## Vulnerability", ""]
    if not maps:
        return lines + ["No single-fault run hit a stored tensor: no map to draw.", ""]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out_dir = None
    for (module, target), vm in maps.items():
        runs = sum(c.runs for c in vm.cells.values())
        lines += [
            f"### {module}.{target} per {by}",
            "",
            f"{len(vm.cells):,} cells hit by {runs:,} runs; the {TOP_CELLS} with the highest "
            "SDC rate:",
            "",
            f"| {by} | runs | faults | SDC runs | SDC rate | interval |",
            "|---|---|---|---|---|---|",
        ]
        for c in vm.top(TOP_CELLS):
            lines.append(
                f"| {' '.join(map(str, c.index))} | {c.runs:,} | {c.faults:,} | {c.hits:,} | "
                f"{_pct(c.rate)} | [{_pct(c.low)}, {_pct(c.high)}] |"
            )
        lines.append("")
        if out_dir is not None:
            p = plot_heatmap(vm, Path(out_dir) / f"heatmap_{_slug(module, target)}.png")
            lines += [f"![SDC rate per {by} of {module}.{target}]({p.name})", ""]
    return lines
