# SPDX-License-Identifier: MIT
"""Golden range profiles: what each layer's output looks like on fault-free inputs.

:func:`profile_ranges` streams a dataset through a model once (forward hooks, removed on exit,
the model's parameters untouched) and records, per profiled layer (module output):

- ``min`` / ``max`` over every finite value (and per channel, dim 1 of the output, with
  ``per_channel=True``), and how many values were not finite;
- ``mean`` / ``std`` (population standard deviation), merged batch by batch in float64 with
  Chan's parallel update, so they do not depend on the batch size beyond float64 rounding;
- the requested percentiles. These are **exact** while a layer has produced at most
  ``sample_size`` values; beyond that they are the percentiles of a uniform random sample of
  ``sample_size`` of its values (bottom-k of seeded random keys: one pass, bounded memory,
  the same sample for the same seed and batches);
- ``digest``: SHA-256 of the exact bytes of every output, in input order (the values as
  computed with this batch size: CPU kernels may round differently for another batch size).

A :class:`RangeProfile` is bound to the model it was made on: it keeps the profiled layers'
names, types and per-input output shapes, and a digest of every parameter and buffer.
:meth:`RangeProfile.check` (run by :func:`load_profile` when given a model, and by every
protection) names what differs: a layer missing or of another type, a tensor of other values,
shape or dtype. Profiles are saved as JSON (no pickle, nothing executed when read); a file that
is not a profile is an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError, suggest

__all__ = [
    "FORMAT",
    "LayerRange",
    "RangeProfile",
    "load_profile",
    "model_digests",
    "profile_ranges",
    "select_layers",
]

#: The ``format`` tag of a saved profile (and its version).
FORMAT = "torchfault-range-profile/1"


def model_digests(model: nn.Module) -> dict[str, str]:
    """A short SHA-256 per parameter and buffer: ``name -> "dtype:shape:hex16"``.

    Example:
        >>> d = model_digests(nn.Linear(2, 1))
        >>> sorted(d), d["weight"].split(":")[:2]
        (['bias', 'weight'], ['torch.float32', '(1, 2)'])
    """
    out: dict[str, str] = {}
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            out[name] = "obj:" + hashlib.sha256(repr(t).encode()).hexdigest()[:16]
            continue
        if t.is_quantized:
            t = t.int_repr()
        if t.is_sparse or t.layout != torch.strided:
            t = t.to_dense()
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out[name] = f"{t.dtype}:{tuple(t.shape)}:{hashlib.sha256(raw).hexdigest()[:16]}"
    return out


def _fingerprint(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def select_layers(
    model: nn.Module, layers: str | Sequence[str] | None, field: str = "layers"
) -> list[str]:
    """Names of the modules ``layers`` selects: exact names or ``re:`` regular expressions
    (full match); ``None``: every leaf module. An unmatched name is an error naming it.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> select_layers(m, None), select_layers(m, ["re:[02]"])
        (['0', '1', '2'], ['0', '2'])
    """
    names = [n for n, _ in model.named_modules()]
    if layers is None:
        return [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    if isinstance(layers, str):
        layers = [layers]
    chosen: list[str] = []
    for sel in layers:
        if not isinstance(sel, str) or not sel:
            raise TorchFaultError(
                f"{field}: expected module names or 're:' patterns, got {sel!r}.", field=field
            )
        if sel.startswith("re:"):
            try:
                pat = re.compile(sel[3:])
            except re.error as exc:
                raise TorchFaultError(
                    f"{field}: bad pattern {sel!r}: {exc}.", field=field
                ) from None
            hit = [n for n in names if n and pat.fullmatch(n)]
            if not hit:
                raise TorchFaultError(
                    f"{field}: pattern {sel!r} matches no module of the model.", field=field
                )
        elif sel in names and sel:
            hit = [sel]
        else:
            raise TorchFaultError(
                f"{field}: the model has no module {sel!r}.{suggest(sel, names)} "
                f"Modules: {', '.join(n for n in names if n)}.",
                field=field,
            )
        chosen.extend(h for h in hit if h not in chosen)
    return chosen


@dataclass(frozen=True)
class LayerRange:
    """The golden range of one layer's output.

    Attributes:
        name: the module's qualified name.
        type: the module's class name.
        shape: the output's shape without the batch dimension.
        count: values seen (finite or not).
        nonfinite: values seen that were NaN or infinite.
        min, max: smallest and largest finite value (``nan`` when there was none).
        mean, std: mean and population standard deviation of the finite values.
        percentiles: ``{p: value}`` (see the module docstring for when they are exact).
        exact_percentiles: whether the percentiles were computed from every value.
        channel_min, channel_max: per channel (dim 1 of the output), or ``None``.
        digest: SHA-256 of the exact output bytes, in input order.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    count: int
    nonfinite: int
    min: float
    max: float
    mean: float
    std: float
    percentiles: dict[float, float]
    exact_percentiles: bool
    channel_min: tuple[float, ...] | None = None
    channel_max: tuple[float, ...] | None = None
    digest: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shape"] = list(self.shape)
        d["percentiles"] = [[float(p), float(v)] for p, v in self.percentiles.items()]
        for k in ("channel_min", "channel_max"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRange:
        d = dict(d)
        d["shape"] = tuple(int(s) for s in d["shape"])
        d["percentiles"] = {float(p): float(v) for p, v in d["percentiles"]}
        for k in ("channel_min", "channel_max"):
            d[k] = None if d.get(k) is None else tuple(float(v) for v in d[k])
        for k in ("min", "max", "mean", "std"):
            d[k] = float(d[k])
        return cls(**d)


@dataclass(frozen=True)
class RangeProfile:
    """Golden ranges of a model's layers (see :func:`profile_ranges`).

    Attributes:
        layers: name -> :class:`LayerRange`, in the model's module order.
        fingerprint: SHA-256 over ``digests``.
        digests: per parameter/buffer digest of the profiled model (:func:`model_digests`).
        num_inputs: inputs streamed through the model.
        percentiles: the percentiles recorded.
        sample_size: the most values per layer the percentiles were computed from.
    """

    layers: dict[str, LayerRange]
    fingerprint: str
    digests: dict[str, str]
    num_inputs: int
    percentiles: tuple[float, ...]
    sample_size: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerRange:
        if name not in self.layers:
            raise TorchFaultError(
                f"range profile: no layer {name!r}.{suggest(name, self.layers)} "
                f"Profiled layers: {', '.join(self.layers)}.",
                field="layers",
            )
        return self.layers[name]

    def bounds(self, name: str, source: str = "minmax") -> tuple[float, float]:
        """The ``(low, high)`` bound of layer ``name``: ``"minmax"`` or ``"pP-pQ"`` (two
        recorded percentiles, e.g. ``"p0.1-p99.9"``)."""
        r = self[name]
        if source == "minmax":
            return r.min, r.max
        m = re.fullmatch(r"p([0-9.]+)-p([0-9.]+)", source)
        if m is None:
            raise TorchFaultError(
                f"bounds: {source!r} is neither 'minmax' nor 'pLOW-pHIGH' (recorded percentiles: "
                f"{', '.join(f'p{p:g}' for p in self.percentiles)}).",
                field="bounds",
            )
        lo, hi = float(m.group(1)), float(m.group(2))
        for p in (lo, hi):
            if p not in r.percentiles:
                raise TorchFaultError(
                    f"bounds: percentile {p:g} was not recorded; recorded: "
                    f"{', '.join(f'{q:g}' for q in self.percentiles)}.",
                    field="bounds",
                )
        return r.percentiles[lo], r.percentiles[hi]

    def check(self, model: nn.Module, layers: Iterable[str] | None = None) -> None:
        """Raise a :class:`TorchFaultError` naming the first difference between ``model`` and
        the model profiled: missing layer, another module type, other parameters or buffers.

        Args:
            model: the model the profile is about to be used with.
            layers: only these layers must be in the profile (default: every profiled layer).
        """
        modules = dict(model.named_modules())
        for name in list(layers) if layers is not None else list(self.layers):
            r = self[name]
            if name not in modules:
                raise TorchFaultError(
                    f"range profile made on another model: layer {name!r} is not a module of "
                    f"this model.{suggest(name, modules)}",
                    field="profile",
                )
            if type(modules[name]).__name__ != r.type:
                raise TorchFaultError(
                    f"range profile made on another model: layer {name!r} is a "
                    f"{type(modules[name]).__name__} here, a {r.type} in the profile.",
                    field="profile",
                )
        mine = model_digests(model)
        if mine == self.digests:
            return
        missing = sorted(set(self.digests) - set(mine))
        extra = sorted(set(mine) - set(self.digests))
        changed = sorted(k for k in set(mine) & set(self.digests) if mine[k] != self.digests[k])
        parts = []
        if missing:
            parts.append(f"tensors missing here: {', '.join(missing[:5])}")
        if extra:
            parts.append(f"tensors not in the profile: {', '.join(extra[:5])}")
        for k in changed[:5]:
            was, now = self.digests[k].rsplit(":", 1)[0], mine[k].rsplit(":", 1)[0]
            what = "other values" if was == now else f"{now} here, {was} in the profile"
            parts.append(f"{k!r}: {what}")
        raise TorchFaultError(
            "range profile made on another model (fingerprint "
            f"{self.fingerprint[:12]}, this model {_fingerprint(mine)[:12]}): " + "; ".join(parts),
            field="profile",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "digests": self.digests,
            "num_inputs": self.num_inputs,
            "percentiles": list(self.percentiles),
            "sample_size": self.sample_size,
            "meta": self.meta,
            "layers": [r.to_dict() for r in self.layers.values()],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RangeProfile:
        layers = [LayerRange.from_dict(x) for x in d["layers"]]
        digests = {str(k): str(v) for k, v in d["digests"].items()}
        if _fingerprint(digests) != d["fingerprint"]:
            raise ValueError("fingerprint does not match the stored tensor digests")
        return cls(
            layers={r.name: r for r in layers},
            fingerprint=str(d["fingerprint"]),
            digests=digests,
            num_inputs=int(d["num_inputs"]),
            percentiles=tuple(float(p) for p in d["percentiles"]),
            sample_size=int(d["sample_size"]),
            meta=dict(d.get("meta") or {}),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON (atomically: a temporary file renamed over ``path``).

        Example:
            >>> import tempfile
            >>> m = nn.Sequential(nn.Linear(3, 2))
            >>> prof = profile_ranges(m, torch.randn(8, 3))
            >>> p = prof.save(Path(tempfile.mkdtemp()) / "ranges.json")
            >>> load_profile(p, m).layers["0"].max == prof.layers["0"].max
            True
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True))
        os.replace(tmp, path)
        return path


def load_profile(path: str | os.PathLike[str], model: nn.Module | None = None) -> RangeProfile:
    """Read a profile saved by :meth:`RangeProfile.save`; with ``model``, check it was made on
    that model (:meth:`RangeProfile.check`).

    Raises:
        TorchFaultError: the file is missing, is not a profile or is damaged (the message names
            the file), or the profile was made on another model (the message names the
            difference).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TorchFaultError(
            f"range profile {str(path)!r}: cannot read it ({exc.strerror or exc}).", field="profile"
        ) from None
    except UnicodeDecodeError:
        raise TorchFaultError(
            f"range profile {str(path)!r}: not a range profile (not UTF-8 text).", field="profile"
        ) from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"format is {got!r}, expected {FORMAT!r}")
        prof = RangeProfile.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TorchFaultError(
            f"range profile {str(path)!r} is damaged or not a range profile ({type(exc).__name__}: "
            f"{exc}). Make it again with torchfault profile-ranges.",
            field="profile",
        ) from None
    if model is not None:
        prof.check(model)
    return prof


class _Stats:
    """Streaming statistics of one layer's output."""

    def __init__(self, name: str, mod: nn.Module, per_channel: bool, sample_size: int, seed: int):
        self.name = name
        self.type = type(mod).__name__
        self.shape: tuple[int, ...] | None = None
        self.count = 0
        self.nonfinite = 0
        self.n = 0  # finite values
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.per_channel = per_channel
        self.ch_lo: torch.Tensor | None = None
        self.ch_hi: torch.Tensor | None = None
        self.sample_size = sample_size
        self.keys = torch.empty(0, dtype=torch.float64)
        self.vals = torch.empty(0, dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)
        self.sha = hashlib.sha256()

    def update(self, out: Any) -> None:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() < 1:
            raise TorchFaultError(
                f"layers: module {self.name!r} gives "
                f"{type(out).__name__ if not isinstance(out, torch.Tensor) else f'a {out.dtype} tensor of {out.dim()} dims'}"
                "; range profiles need floating-point tensor outputs with a batch dimension.",
                field="layers",
            )
        out = out.detach()
        shape = tuple(out.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise TorchFaultError(
                f"layers: module {self.name!r} gave outputs of shape {shape} and {self.shape}; "
                "range profiles need one output shape per layer.",
                field="layers",
            )
        self.sha.update(out.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        x = out.to(torch.float64)
        flat = x.reshape(-1)
        self.count += flat.numel()
        fin = torch.isfinite(flat)
        vals = flat[fin]
        self.nonfinite += int(flat.numel() - vals.numel())
        if vals.numel():
            nb = vals.numel()
            mb = float(vals.mean())
            m2b = float(((vals - mb) ** 2).sum())
            tot = self.n + nb
            delta = mb - self.mean
            self.mean += delta * nb / tot
            self.m2 += m2b + delta * delta * self.n * nb / tot
            self.n = tot
            self.lo = min(self.lo, float(vals.min()))
            self.hi = max(self.hi, float(vals.max()))
            keys = torch.rand(nb, generator=self.gen, dtype=torch.float64)
            allk = torch.cat([self.keys, keys])
            allv = torch.cat([self.vals, vals])
            if allk.numel() > self.sample_size:
                idx = torch.topk(allk, self.sample_size, largest=False).indices
                allk, allv = allk[idx], allv[idx]
            self.keys, self.vals = allk, allv
        if self.per_channel and x.dim() >= 2:
            c = x.transpose(0, 1).reshape(x.shape[1], -1)
            ok = torch.isfinite(c)
            lo = torch.where(ok, c, torch.inf).amin(1)
            hi = torch.where(ok, c, -torch.inf).amax(1)
            self.ch_lo = lo if self.ch_lo is None else torch.minimum(self.ch_lo, lo)
            self.ch_hi = hi if self.ch_hi is None else torch.maximum(self.ch_hi, hi)

    def result(self, percentiles: Sequence[float]) -> LayerRange:
        if self.n:
            q = torch.tensor([p / 100 for p in percentiles], dtype=torch.float64)
            pv = torch.quantile(self.vals, q).tolist() if len(percentiles) else []
        else:
            pv = [math.nan] * len(percentiles)

        def tup(t: torch.Tensor | None) -> tuple[float, ...] | None:
            if t is None:
                return None
            return tuple(math.nan if not math.isfinite(v) else v for v in t.tolist())

        return LayerRange(
            name=self.name,
            type=self.type,
            shape=self.shape or (),
            count=self.count,
            nonfinite=self.nonfinite,
            min=self.lo if self.n else math.nan,
            max=self.hi if self.n else math.nan,
            mean=self.mean if self.n else math.nan,
            std=math.sqrt(self.m2 / self.n) if self.n else math.nan,
            percentiles=dict(zip((float(p) for p in percentiles), (float(v) for v in pv))),
            exact_percentiles=self.n <= self.sample_size,
            channel_min=tup(self.ch_lo),
            channel_max=tup(self.ch_hi),
            digest=self.sha.hexdigest(),
        )


def _batches(data: Any, batch_size: int) -> tuple[Iterator[Any], int | None]:
    """Batches of inputs from a tensor, a dataset of ``(x, y)`` items or an iterable of batches
    (each a tensor, or a tuple/list whose first item is the inputs)."""
    if isinstance(data, torch.Tensor):
        if data.dim() < 1 or data.shape[0] == 0:
            raise TorchFaultError(
                f"data: expected a tensor with one input per row, got shape {tuple(data.shape)}.",
                field="data",
            )
        n = data.shape[0]
        return (data[i : i + batch_size] for i in range(0, n, batch_size)), -(-n // batch_size)
    if (
        hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
        and not isinstance(data, (list, tuple))
    ):
        from torch.utils.data import DataLoader

        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return iter(loader), len(loader)
    if isinstance(data, Iterable):
        total = len(data) if isinstance(data, Sized) else None
        return iter(data), total
    raise TorchFaultError(
        f"data: expected a tensor of inputs, a dataset or an iterable of batches, got "
        f"{type(data).__name__}.",
        field="data",
    )


def profile_ranges(
    model: nn.Module,
    data: Any,
    layers: str | Sequence[str] | None = None,
    *,
    percentiles: Sequence[float] = (0.1, 1.0, 50.0, 99.0, 99.9),
    per_channel: bool = False,
    batch_size: int = 256,
    sample_size: int = 100_000,
    seed: int = 0,
    progress: bool = False,
) -> RangeProfile:
    """Stream ``data`` through ``model`` once and record each layer's golden range.

    Args:
        model: the model (run in eval mode under ``torch.no_grad``; its mode is restored and
            its hooks removed, also when a forward pass raises).
        data: a tensor (one input per row), a dataset of ``(input, label)`` items, or an
            iterable of batches (tensors, or tuples whose first item is the inputs).
        layers: module names or ``re:`` patterns; default: every leaf module.
        percentiles: percentiles to record, each in ``[0, 100]``.
        per_channel: also record min/max per channel (dim 1 of each output).
        batch_size: rows per forward pass when ``data`` is a tensor or a dataset.
        sample_size: values per layer kept for the percentiles (exact below it).
        seed: seed of the percentile sample.
        progress: show a progress bar (rich) on stderr.

    Returns:
        A :class:`RangeProfile`, to :meth:`~RangeProfile.save` or give to a protection.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> prof = profile_ranges(m, torch.randn(100, 4), percentiles=(50,))
        >>> list(prof.layers), prof.layers["1"].min >= 0, prof.num_inputs
        (['0', '1'], True, 100)
    """
    if isinstance(percentiles, (int, float)):
        percentiles = (percentiles,)
    ps: list[float] = []
    for p in percentiles:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 <= float(p) <= 100):
            raise TorchFaultError(
                f"percentiles: {p!r} is not a percentile; each must be a number in [0, 100].",
                field="percentiles",
            )
        if float(p) not in ps:
            ps.append(float(p))
    for name, v, lo in (("batch_size", batch_size, 1), ("sample_size", sample_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise TorchFaultError(f"{name}: must be an integer >= {lo}, got {v!r}.", field=name)
    names = select_layers(model, layers)
    modules = dict(model.named_modules())
    stats = {
        n: _Stats(n, modules[n], per_channel, sample_size, seed * 1_000_003 + i)
        for i, n in enumerate(names)
    }
    batches, total = _batches(data, batch_size)
    skipped: set[str] = set()
    explicit = layers is not None

    def hook_for(name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            if name in skipped:
                return
            if not explicit and (
                not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() < 1
            ):
                skipped.add(name)  # default selection: layers without a float tensor output
                return
            stats[name].update(out)

        return hook

    handles = []
    was_training = model.training
    bar = None
    n_inputs = 0
    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(hook_for(n)))
        model.eval()
        if progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            bar = Progress(
                TextColumn("[bold]profile-ranges"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            bar.__enter__()
            task = bar.add_task("batches", total=total)
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x)
                n_inputs += int(x.shape[0]) if isinstance(x, torch.Tensor) else 1
                if bar is not None:
                    bar.update(task, advance=1)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if bar is not None:
            bar.__exit__(None, None, None)
    if n_inputs == 0:
        raise TorchFaultError("data: no inputs to profile (0 batches).", field="data")
    results = {n: stats[n].result(ps) for n in names if n not in skipped and stats[n].count}
    if not results:
        raise TorchFaultError(
            f"layers: none of {', '.join(names)} produced a floating-point tensor output.",
            field="layers",
        )
    digests = model_digests(model)
    return RangeProfile(
        layers=results,
        fingerprint=_fingerprint(digests),
        digests=digests,
        num_inputs=n_inputs,
        percentiles=tuple(ps),
        sample_size=sample_size,
    )
