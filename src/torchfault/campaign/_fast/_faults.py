# SPDX-License-Identifier: MIT
"""Fault application: a site's faulty value for every row of a batch, as ``inject`` would make it.

An activation fault is its rows' golden module output with the fault applied (vectorised over
the rows, one call per fault model and format). A parameter fault is the module's output
recomputed from its cached golden inputs with the faulted tensor
(``torch.func.functional_call``); for a convolution only the one output channel a fault can
change is recomputed, all faults of a site stacked in one call, checked by a golden canary (the
same convolution with the golden kernels of those channels in the same places); the same for
the packed int8 weights of static quantized linear and convolution layers (one packed product of
the faulty output channels). Other packed weights are written by ``inject``, one fault a call.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_arg

from torchfault import numerics
from torchfault.campaign._fast._golden import GoldenValues
from torchfault.campaign._fast._operations import hooked
from torchfault.campaign._fast._planning import Site, Unsupported
from torchfault.campaign._fast._rows import pad
from torchfault.campaign._outcome import output_words_equal
from torchfault.errors import TorchFaultError
from torchfault.faults import Fault, unpack
from torchfault.injectors import (
    apply_fault,
    apply_masks,
    apply_model,
    bitwise_op,
    flat_index,
    inject,
)

#: static quantized linear layers (a packed int8 weight; the dynamic one takes float inputs)
QuantizedLinear: type = torch.ao.nn.quantized.Linear
#: the operator each static quantized layer type runs (its ``forward``), by exact type, for
#: the layers whose weight and bias faults are stacked one output channel each
#: (:func:`_stacked_quantized`)
QUANTIZED_OPS: dict[type, Any] = {
    QuantizedLinear: torch.ops.quantized.linear,
    torch.ao.nn.intrinsic.quantized.LinearReLU: torch.ops.quantized.linear_relu,
    torch.ao.nn.quantized.Conv2d: torch.ops.quantized.conv2d,
    torch.ao.nn.intrinsic.quantized.ConvReLU2d: torch.ops.quantized.conv2d_relu,
}

__all__ = [
    "RowsApart",
    "activation_faults",
    "channel_faults",
    "faulty_tensor",
    "fits",
    "injected_output",
    "inner_activation_faults",
    "layer_output",
    "on_rows",
    "parameter_faults",
    "same_storage_kind",
    "site_output",
]


class RowsApart(Exception):
    """The faulty rows of a batch cannot share one tensor (another dtype or quantizer); the
    batch's runs go to the reference engine (the site stays on the fast path)."""


def same_storage_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether rows of ``a`` can be written into ``b`` word for word: the same dtype and, for
    quantized tensors, the same quantizer (scheme, scales, zero points, axis).

    Example:
        >>> import warnings
        >>> x = torch.ones(2, 3)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     q1 = torch.quantize_per_tensor(x, 0.1, 0, torch.quint8)
        ...     q2 = torch.quantize_per_tensor(x, 0.2, 0, torch.quint8)
        >>> same_storage_kind(q1, q1.clone()), same_storage_kind(q1, q2), same_storage_kind(x, q1)
        (True, False, False)
    """
    if a.dtype != b.dtype or a.is_quantized != b.is_quantized:
        return False
    if not a.is_quantized:
        return True
    scheme = a.qscheme()
    if scheme != b.qscheme():
        return False
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()
    return (
        a.q_per_channel_axis() == b.q_per_channel_axis()
        and torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
        and torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
    )


def fits(index: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether ``index`` is a valid index into ``shape`` (the injectors' one check)."""
    try:
        flat_index(index, shape)
    except TorchFaultError:
        return False
    return True


def site_tensor(site: Site) -> torch.Tensor:
    """The faulted parameter or buffer of a parameter site; ``site.target`` may be a dotted path
    into the site's module (a tensor of a submodule of a module traced whole)."""
    obj: Any = site.module
    for part in site.target.split("."):
        obj = getattr(obj, part)
    return obj


def faulty_tensor(f: Fault, t: torch.Tensor) -> torch.Tensor:
    """``t`` with fault ``f`` applied, as :func:`torchfault.inject` writes it."""
    return apply_fault(t, f)


def activation_faults(
    value: torch.Tensor,
    faults: list[Fault],
    spans: list[tuple[int, int]],
    inner: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply each fault to its rows of ``value`` (rows ``spans[k]`` for ``faults[k]``), as the
    reference hooks do.

    ``inner``: each fault's flat element index within a row (default: from its index).
    Returns the new tensor and, per row, whether the faulted element kept its word.
    """
    per = value[0].numel()
    shape = value.shape[1:]
    groups: dict[tuple[str, str | None], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    others = []
    every = []
    for k, (f, (r0, r1)) in enumerate(zip(faults, spans)):
        at = flat_index(f.index, shape) if inner is None else inner[k]
        flat = torch.arange(r0, r1, dtype=torch.int64) * per + at
        every.append(flat)
        op = bitwise_op(f.model)
        if op is None:
            others.append((f, flat))
            continue
        fmt = numerics.get_format(f.format, value)
        mask = numerics.bit_mask(f.bits, fmt)
        flats, masks = groups.setdefault((op, f.format), ([], []))
        flats.append(flat)
        masks.append(torch.full((r1 - r0,), mask, dtype=torch.int64))
    out = value
    for (op, fmt_name), (flats, masks) in groups.items():
        fmt = numerics.get_format(fmt_name, value)
        out = apply_masks(out, torch.cat(flats), torch.cat(masks), op, fmt)
    for f, flat in others:
        out = apply_model(out, flat, f, numerics.get_format(f.format, out))
    if out is value:
        out = value.clone()
    try:
        flat_all = torch.cat(every)
        same = output_words_equal(
            value.reshape(-1)[flat_all][:, None], out.reshape(-1)[flat_all][:, None]
        )
    except Exception:  # noqa: BLE001 - e.g. quantized tensors: compare whole rows instead
        same = None
    return out, same


def _site_inputs(
    site: Site, values: GoldenValues, golden: dict[fx.Node, Any], pos: torch.Tensor
) -> tuple[Any, Any]:
    # one gathered tensor per node: a module called as ``attn(x, x, x)`` must get the same
    # tensor three times (nn.MultiheadAttention takes another path when query is key)
    seen: dict[fx.Node, Any] = {}

    def get(a: fx.Node) -> Any:
        if a not in seen:
            seen[a] = values.gather(golden, a, pos)
        return seen[a]

    return map_arg(site.node.args, get), map_arg(site.node.kwargs, get)


def layer_output(
    site: Site,
    tensor: torch.Tensor | None,
    values: GoldenValues,
    golden: dict[fx.Node, Any],
    pos: torch.Tensor,
    structured: bool = False,
) -> Any:
    """The site module's output over block rows ``pos`` with ``tensor`` as its faulted parameter
    (``None``: the module as it is); ``structured``: any output (a tuple...), else a tensor."""
    args, kwargs = _site_inputs(site, values, golden, pos)
    if tensor is None:
        out = site.module(*args, **kwargs)
    else:
        out = torch.func.functional_call(
            site.module, {site.target: tensor}, tuple(args), dict(kwargs)
        )
    if not structured and not isinstance(out, torch.Tensor):
        raise Unsupported("the module output is not a tensor")
    return out


def injected_output(
    site: Site,
    model: nn.Module,
    faults: Sequence[Fault],
    values: GoldenValues,
    golden: dict[fx.Node, Any],
    pos: torch.Tensor,
    structured: bool = False,
) -> Any:
    """The site module's output over block rows ``pos`` under :func:`torchfault.inject` of
    ``faults`` on ``model``: activation faults inside the module, packed weights (inject packs
    the faulty words as the reference engine's passes see them). A fresh injection per call
    counts module calls from zero, as one forward pass of the model does."""
    with inject(model, list(faults)):
        return layer_output(site, None, values, golden, pos, structured)


def on_rows(faults: Sequence[Fault], spans: Sequence[tuple[int, int]]) -> list[Fault]:
    """Each activation fault on its own rows of a batch (``sample``): rows ``spans[k]`` for
    ``faults[k]``."""
    out = []
    for f, (r0, r1) in zip(faults, spans):
        for r in range(r0, r1):  # a copy with another row: its other fields are checked already
            g = copy.copy(f)
            object.__setattr__(g, "sample", r)
            out.append(g)
    return out


def site_output(
    site: Site,
    model: nn.Module | None,
    fault: Fault | None,
    rows: int,
    values: GoldenValues,
    golden: dict[fx.Node, Any],
    pos: torch.Tensor,
    structured: bool = False,
) -> Any:
    """The site module's output over block rows ``pos`` with one ``fault`` (``None``: golden):
    injected inside the module on the first ``rows`` rows (an inner site), injected into a
    packed weight, or in the faulted tensor (``functional_call``)."""
    if fault is None:
        return layer_output(site, None, values, golden, pos, structured)
    if site.inner or site.packed:
        if model is None:
            raise Unsupported("an inner or packed site needs the model")
        faults = on_rows([fault], [(0, rows)]) if site.inner else [fault]
        return injected_output(site, model, faults, values, golden, pos, structured)
    tensor = faulty_tensor(fault, site_tensor(site))
    return layer_output(site, tensor, values, golden, pos, structured)


#: rows per call of a site module run under injection (:func:`inner_activation_faults`)
INNER_ROWS = 16


def inner_activation_faults(
    site: Site,
    model: nn.Module,
    faults: list[Fault],
    spans: list[tuple[int, int]],
    values: GoldenValues,
    golden: dict[fx.Node, Any],
    pos: torch.Tensor,
    base: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The site module's output for every row with its fault injected inside the module
    (:func:`injected_output`), each fault on its own rows (:func:`on_rows`). Returns the faulty
    output and, per row, whether it equals golden.

    A batch of more than ``INNER_ROWS`` rows is computed in calls of about that many rows (a
    fault's rows in one call, each call padded to ``min_rows`` rows as every pass is): a module
    such as ``nn.TransformerEncoderLayer`` takes longer per row on a tall batch than on a few
    short ones (its attention scores outgrow the CPU's caches). The calls' outputs are joined
    when they are contiguous (the join is contiguous too, as one call's output is); quantized or
    otherwise laid out outputs are computed by one call over the batch.
    """
    n = spans[-1][1]
    out = None
    if n > max(INNER_ROWS, values.min_rows) and not base.is_quantized:
        out = _inner_in_parts(site, model, faults, spans, values, golden, pos, base)
    if out is None:
        out = injected_output(site, model, on_rows(faults, spans), values, golden, pos)
    if not isinstance(out, torch.Tensor) or not same_storage_kind(out, base):
        raise RowsApart(f"{site.node.name}: the faulty output is stored apart")
    # all rows, padding included (golden there): the rest of the network runs on as many rows
    # as the reference engine's passes (a 1-row GEMM rounds differently from a 16-row one)
    return out, output_words_equal(base[:n], out[:n])


def _inner_in_parts(
    site: Site,
    model: nn.Module,
    faults: list[Fault],
    spans: list[tuple[int, int]],
    values: GoldenValues,
    golden: dict[fx.Node, Any],
    pos: torch.Tensor,
    base: torch.Tensor,
) -> torch.Tensor | None:
    """:func:`inner_activation_faults`' output computed in calls of about ``INNER_ROWS`` rows,
    joined; ``None`` when a call's output is not a contiguous tensor of ``base``'s kind. The
    batch has no padding rows (it has more than ``INNER_ROWS`` >= ``min_rows`` real rows)."""
    parts: list[torch.Tensor] = []
    k = 0
    while k < len(spans):
        j, r0 = k + 1, spans[k][0]
        while j < len(spans) and spans[j][1] - r0 <= INNER_ROWS:
            j += 1
        r1 = spans[j - 1][1]
        # one fault: on every row of its call (its padding rows are dropped); several: each on
        # its own rows
        here = [(a - r0, b - r0) for a, b in spans[k:j]]
        hits = faults[k:j] if j == k + 1 else on_rows(faults[k:j], here)
        p = pad(pos[r0:r1], values.min_rows)
        out = injected_output(site, model, hits, values, golden, p)
        if (
            not isinstance(out, torch.Tensor)
            or not out.is_contiguous()
            or not same_storage_kind(out, base)
        ):
            return None
        parts.append(out[: r1 - r0])
        k = j
    return torch.cat(parts)


def _one_channel(site: Site, f: Fault) -> bool:
    """Whether fault ``f`` changes one output channel of a convolution, or of a static quantized
    linear or convolution layer (:data:`QUANTIZED_OPS`) through its packed weight or bias, that
    may be stacked."""
    m = site.module
    if (
        site.conv_trick is False
        or hooked(m)
        or site.target not in ("weight", "bias")
        or len(f.index) < 1
    ):
        return False
    if site.packed:
        if type(m) not in QUANTIZED_OPS:
            return False
        # a convolution: each output channel reads every input channel, no padding of its own
        return getattr(m, "groups", 1) == 1 and getattr(m, "padding_mode", "zeros") == "zeros"
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1


#: the faults of a batch computed by one stacked convolution: (first row, output channel,
#: faulty tensor) each
Stack = list[tuple[int, int, torch.Tensor]]


def _stacks(
    site: Site, faults: list[Fault], spans: list[tuple[int, int]], pos: torch.Tensor
) -> tuple[dict[tuple[int, ...], Stack], list[tuple[int, int, Fault]]]:
    """The faults that change one output channel of a convolution, by their rows' block
    positions: (first row, channel, faulty tensor) each; and the others: (rows, fault)."""
    stacks: dict[tuple[int, ...], Stack] = defaultdict(list)
    full: list[tuple[int, int, Fault]] = []
    for f, (r0, r1) in zip(faults, spans):
        if _one_channel(site, f):
            t = unpack(site.module)[site.target == "bias"] if site.packed else site_tensor(site)
            rows = tuple(pos[r0:r1].tolist())
            stacks[rows].append((r0, int(f.index[0]) % t.shape[0], faulty_tensor(f, t)))
        else:
            full.append((r0, r1, f))
    return stacks, full


def parameter_faults(
    site: Site,
    faults: list[Fault],
    spans: list[tuple[int, int]],
    values: GoldenValues,
    golden: dict[fx.Node, Any],
    pos: torch.Tensor,
    base: torch.Tensor,
    model: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The site output for every row: its fault's layer output, from the cached layer inputs.

    ``base`` is the golden site output of the rows. Returns the faulty output and, per row,
    whether the row equals golden there. A packed site (``site.packed``) calls the module under
    :func:`torchfault.inject` on ``model``, one fault at a time (:func:`site_output`).
    """
    value = base.clone()
    n = spans[-1][1]
    same = torch.zeros(n, dtype=torch.bool)
    stacks, full = _stacks(site, faults, spans, pos)
    for rows, items in stacks.items():
        y = _stacked_conv(site, rows, items, values, golden)
        if y is not None:
            k = len(rows)
            for j, (r0, o, _) in enumerate(items):
                value[r0 : r0 + k, o] = y[:k, j]
                same[r0 : r0 + k] = output_words_equal(base[r0 : r0 + k, o], y[:k, j])
        else:
            site.conv_trick = False  # each fault alone (its tensor made again, once per site)
            at = dict(zip((r0 for r0, _ in spans), faults))
            full.extend((r0, r0 + len(rows), at[r0]) for r0, _, _ in items)
    for r0, r1, f in full:
        rows_pos = pad(pos[r0:r1], values.min_rows)
        out = site_output(site, model, f, r1 - r0, values, golden, rows_pos)
        if not same_storage_kind(out, base):
            # e.g. a fault on a QuantStub's scale: the faulty rows carry another quantizer, which
            # rows of one quantized tensor cannot hold (writing them in would keep the golden
            # scale and copy the integers); the batch goes to the reference engine
            raise RowsApart(f"{site.node.name}:{site.target}: the faulty output is stored apart")
        value[r0:r1] = out[: r1 - r0]
        same[r0:r1] = output_words_equal(base[r0:r1], value[r0:r1])
    return value, same


def channel_faults(
    site: Site,
    faults: list[Fault],
    spans: list[tuple[int, int]],
    values: GoldenValues,
    golden: dict[fx.Node, Any],
    pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The one output channel each row's fault changes, for a batch whose every fault changes
    one output channel of a convolution (stacked, :func:`_stacked_conv`): per row, the channel's
    plane (rows, 1, ...) and its number; ``None`` when a fault of the batch does not, or the
    stacked convolution's canary fails (the batch then takes :func:`parameter_faults`)."""
    if site.conv_trick is False or site.packed:  # channel planes of convolutions only
        return None
    stacks, full = _stacks(site, faults, spans, pos)
    if full:
        return None
    g = golden[site.node]
    n = spans[-1][1]
    data = torch.empty((n, 1, *g.shape[2:]), dtype=g.dtype)
    ch = torch.empty(n, dtype=torch.int64)
    for rows, items in stacks.items():
        y = _stacked_conv(site, rows, items, values, golden)
        if y is None:
            site.conv_trick = False
            return None
        k = len(rows)
        for j, (r0, o, _) in enumerate(items):
            data[r0 : r0 + k, 0] = y[:k, j]
            ch[r0 : r0 + k] = o
    return data, ch


def _stacked_conv(
    site: Site,
    rows: tuple[int, ...],
    items: Stack,
    values: GoldenValues,
    golden: dict[fx.Node, Any],
) -> torch.Tensor | None:
    """One convolution computing each fault's one changed output channel (``items``: first
    row, channel, faulty tensor) over block rows ``rows``, plus a golden canary: the output
    (at least ``min_rows`` rows, channel ``j`` for ``items[j]``) when the canary reproduces
    golden, else ``None``. A static quantized layer: :func:`_stacked_quantized`."""
    idx = pad(torch.tensor(rows, dtype=torch.int64), values.min_rows)
    args, kwargs = _site_inputs(site, values, golden, idx)
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    if site.packed:
        return _stacked_quantized(site, rows, items, args[0], golden)
    m = site.module
    assert isinstance(m, nn.modules.conv._ConvNd)
    w, b = m.weight, m.bias
    ws, bs = [], []
    for _, o, faulty in items:
        ws.append((faulty if site.target == "weight" else w)[o])
        if b is not None:
            bs.append((faulty if site.target == "bias" else b)[o])
    conv: Any = m._conv_forward  # type: ignore[operator]
    y = conv(args[0], torch.stack(ws), torch.stack(bs) if b is not None else None)
    # the canary: the same convolution with each channel's golden kernel at the same place
    # (a kernel may round a channel differently by where it sits in its block of channels)
    outs = [o for _, o, _ in items]
    canary = conv(args[0], w[outs], b[outs] if b is not None else None)
    n = len(rows)
    g = golden[site.node][idx[:n, None], torch.tensor(outs)[None, :]]  # those channels only
    if not bool(output_words_equal(g, canary[:n]).all()):
        return None
    if site.conv_trick is None:
        site.conv_trick = True
    return y


def _stacked_quantized(
    site: Site,
    rows: tuple[int, ...],
    items: Stack,
    x: torch.Tensor,
    golden: dict[fx.Node, Any],
) -> torch.Tensor | None:
    """:func:`_stacked_conv` for a static quantized layer (:data:`QUANTIZED_OPS`: ``Linear``,
    ``LinearReLU``, ``Conv2d``, ``ConvReLU2d``): one packed weight holding each fault's faulty
    output channel (its int8 words, its channel's scale and zero point) and bias entry, one call
    of the layer's operator over the rows' inputs ``x`` with the layer's output scale and zero
    point. Each output is an integer sum of products requantized on its own, so a channel is the
    same words as in the layer's full product; the golden canary (the golden channels in the
    same places, packed the same way) checks it for this layer and quantized engine. ``None``
    when the canary fails or the weight's quantizer is not per tensor or per output channel."""
    m: Any = site.module
    w, b = unpack(m)
    if not (isinstance(w, torch.Tensor) and w.is_quantized and x.is_quantized):
        return None
    scheme = w.qscheme()
    if scheme != torch.per_tensor_affine and not (
        scheme == torch.per_channel_affine and w.q_per_channel_axis() == 0
    ):
        return None
    faulty_w = [f if site.target == "weight" else w for _, _, f in items]
    faulty_b = [f if site.target == "bias" else b for _, _, f in items]
    if any(not same_storage_kind(t, w) for t in faulty_w):
        return None
    outs = [o for _, o, _ in items]
    chans = torch.tensor(outs, dtype=torch.int64)

    def product(ints: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if scheme == torch.per_tensor_affine:
            qw = torch._make_per_tensor_quantized_tensor(ints, w.q_scale(), w.q_zero_point())
        else:
            qw = torch._make_per_channel_quantized_tensor(
                ints,
                w.q_per_channel_scales()[chans],
                w.q_per_channel_zero_points()[chans],
                0,
            )
        if isinstance(m, QuantizedLinear):
            packed = torch.ops.quantized.linear_prepack(qw, bias)
        else:
            packed = torch.ops.quantized.conv2d_prepack(
                qw, bias, list(m.stride), list(m.padding), list(m.dilation), m.groups
            )
        return QUANTIZED_OPS[type(m)](x, packed, m.scale, m.zero_point)

    ints = torch.stack([t.int_repr()[o] for t, o in zip(faulty_w, outs)])
    bias = None if b is None else torch.stack([t[o] for t, o in zip(faulty_b, outs)])
    y = product(ints, bias)
    canary = product(w.int_repr()[chans], None if b is None else b[chans])
    n = len(rows)
    idx = torch.tensor(rows, dtype=torch.int64)
    g = golden[site.node][idx[:, None], chans[None, :]]
    if not (same_storage_kind(canary, g) and bool(output_words_equal(g, canary[:n]).all())):
        return None
    if site.conv_trick is None:
        site.conv_trick = True
    return y
