# SPDX-License-Identifier: MIT
"""Exactness checks: may the fast path be trusted to compute a row to the same bits as a full
forward pass of the reference engine?

Three checks, each run once and remembered by the engine:

- :func:`rows_independent` (once per engine, on the first block with golden inputs): every node's
  value of a few rows is the same bits in a batch of their own and at the end of taller,
  odd-sized batches (:func:`same_in_any_batch`), with position-dependent functions computed
  canonically, and those not covered meet the old alignment rule
  (:meth:`~._positions.Positions.model_ok`).
- :func:`site_reproduces` (once per parameter site): the module, called from its cached golden
  inputs, reproduces its golden output.
- windowed computations are checked by canary rows as they run (:mod:`._windows`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from torchfault.campaign._fast._faults import layer_output, site_tensor
from torchfault.campaign._fast._golden import NOT_ROW_INDEXED, GoldenValues
from torchfault.campaign._fast._notices import log, warn_once
from torchfault.campaign._fast._options import FastOptions
from torchfault.campaign._fast._planning import Program, Site
from torchfault.campaign._fast._positions import Positions
from torchfault.campaign._fast._rows import pad, take
from torchfault.campaign._outcome import output_words_equal, words_equal

__all__ = ["refused", "rows_independent", "same_in_any_batch", "site_reproduces"]


def same_in_any_batch(
    prog: Program,
    inputs: torch.Tensor,
    batch: torch.Tensor,
    checked_rows: int,
    heights: tuple[int, ...],
    run_node: Any = None,
) -> tuple[bool, Any]:
    """Run the graph on ``inputs[batch]`` (at least ``min_rows`` row numbers); are its first
    ``checked_rows`` rows computed to the same bits, at every node of the graph, there and after
    ``heights`` other rows in taller batches? Returns ``(same, output of batch)``.

    The reference engine computes a row in a batch of its fault's inputs; the fast engine in
    a batch of many faults' rows. Small layers are not always row-wise exact on CPU (a GEMM
    with a few columns treats the last rows of a tall batch apart; element-wise kernels
    round the tail of a buffer that does not fill a vector differently), so the fast path
    needs every node's value of a row to be the same wherever the row sits.
    """
    rows = batch[:checked_rows]
    k = len(rows)
    run = run_node or prog.run_node

    def others(m: int) -> torch.Tensor:
        return rows.repeat(m // k + 1)[:m].flip(0)

    # (row indices of the batch, where the checked rows start): the batch itself, and the
    # checked rows at the end of taller batches of a few odd heights (the tails of blocked
    # kernels); with checked_rows = min_rows every batch has at least min_rows rows (the
    # engine pads every batch to it: smaller ones may take other kernels on purpose)
    layouts = [(batch, 0)]
    layouts += [(torch.cat([others(e), rows]), e) for e in heights]
    envs: list[dict[fx.Node, Any]] = [{} for _ in layouts]
    for i, node in enumerate(prog.nodes):
        if node.op == "output":
            break
        vals = []
        for env, (idx, _) in zip(envs, layouts):
            v = inputs[idx] if node is prog.placeholder else run(node, env)
            env[node] = v
            vals.append(v)
        first = vals[0]
        if (
            node in prog.dynamic
            and isinstance(first, torch.Tensor)
            and first.dim() > 0
            and first.shape[0] == batch.numel()
        ):
            for v, (idx, at) in zip(vals[1:], layouts[1:]):
                if not (
                    isinstance(v, torch.Tensor)
                    and v.shape[0] == idx.numel()
                    and words_equal(first[:k], v[at : at + k])
                ):
                    log.info("fast engine: %s differs with the batch composition", node.name)
                    return False, None
        for a in node.all_input_nodes:
            if prog.last_use[a] == i and a is not prog.result:
                for env in envs:
                    env.pop(a, None)
    return True, envs[0].get(prog.result)


def rows_independent(
    values: GoldenValues, block: int, options: FastOptions, positions: Positions
) -> bool | None:
    """Does the graph, run on ``block``'s rows reversed and duplicated, give each row its golden
    output, with every value the same bits in taller batches? ``None``: no golden input in this
    block to check with (decided on a later block).

    The fast path relies on it: a row's values never depend on the other rows of its batch.
    """
    prog, min_rows = values.prog, values.min_rows
    name = type(prog.model).__name__
    ids = values.block_ids(block)
    if not ids:
        return None
    ids = ids[::-1][: min_rows - 1]
    ids = ids + ids[:1]
    if not positions.model_ok(values.row_bytes, options.row_alignment):
        warn_once(
            f"rows:{name}",
            f"fast engine: {name} applies a transcendental element-wise function (sigmoid, "
            "tanh, exp...) that the engine cannot compute position-free (its kernel gives the "
            "same bits on both paths for the values tried, or it reads a non-contiguous or a "
            "second computed value) on rows whose bits may depend on their place in a batch "
            "(unaligned rows, several threads); running its faults with the reference engine.",
        )
        return False
    try:
        batch = pad(torch.tensor(ids, dtype=torch.int64), min_rows)
        ok, res = same_in_any_batch(
            prog,
            values.inputs,
            batch,
            options.row_check_rows,
            options.row_check_heights,
            positions.run_node,
        )
        ok = (
            ok
            and isinstance(res, torch.Tensor)
            and bool(output_words_equal(values.outputs[ids], res[: len(ids)]).all())
        )
    except Exception:  # noqa: BLE001 - a model that fails on another batch: reference
        ok = False
    if not ok:
        warn_once(
            f"rows:{name}",
            f"fast engine: {name} does not compute each batch row on its own "
            "(outputs change with the batch composition); running its faults with the reference engine.",
        )
    return ok


def site_reproduces(
    site: Site, values: GoldenValues, block: int, golden: dict[fx.Node, Any]
) -> bool:
    """May the site run fast? Its golden values must be row-indexed; a parameter site's module,
    called from its cached inputs, must reproduce its golden output bit for bit."""
    if site.masked_all:
        return True
    if any(dict.get(golden, n) is NOT_ROW_INDEXED for n in site.need):
        return False
    if site.target == "output":
        return True
    ids = values.block_ids(block)
    if not ids:
        return False
    start = block * values.block
    pos = pad(
        torch.tensor(ids[::-1][: values.min_rows], dtype=torch.int64) - start, values.min_rows
    )
    try:
        tensor = None if site.inner or site.packed else site_tensor(site)
        value = layer_output(site, tensor, values, golden, pos)
        return bool(output_words_equal(take(golden[site.node], pos), value).all())
    except Exception as exc:  # noqa: BLE001 - anything odd: the reference engine runs it
        return refused(site, exc)


def refused(site: Site, exc: BaseException) -> bool:
    """Log why a site's check failed (it runs on the reference engine); ``False``."""
    log.info(
        "fast engine: %s:%s runs on the reference engine (%s)", site.node.name, site.target, exc
    )
    return False
