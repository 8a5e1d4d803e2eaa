# SPDX-License-Identifier: MIT
"""Protections: forward hooks that bound or check layer outputs against golden ranges.

A protection is an object built from a registry (:data:`PROTECTIONS`, plugins through the
``torchfault.plugins`` entry points) and put on a model with :func:`protect` (a context
manager: on exit, whatever happened inside, every hook it added is removed) or
:func:`protect_` (permanently, until the returned handle's ``remove()``). Protections only add
forward hooks that return a new output tensor: parameters and buffers are never touched, so the
model is bit-for-bit what it was once the hooks are gone.

Built in:

- ``ranger``: clamp each protected layer's output to its golden range (Chen et al., "Ranger",
  DSN 2021); needs a :class:`~torchfault.injectors.RangeProfile`.
- ``clip``: a fixed bound (``bound=B`` for ``[-B, B]``, or ``low``/``high``) or, given a
  profile, the golden range; ``mode="clamp"`` clamps, ``mode="zero"`` sets values outside the
  range to zero.
- ``detect``: changes nothing; flags the batch rows with a value outside the range.

Every protection flags a row when one of its values at a protected layer is outside the range
(NaN included), before any correction. :attr:`Protection.flags` holds the rows flagged since
:meth:`Protection.reset` (a bool tensor, one per batch row); :attr:`Protection.fired` counts
firings per layer. Options are per layer: ``layers`` may be a mapping ``name -> options``
(``bounds``, ``per_channel``, ``margin``, ``bound``/``low``/``high``, ``mode``) overriding the
protection's own.

Bounds: ``bounds="minmax"`` (the profile's min and max) or ``"pLOW-pHIGH"`` (two recorded
percentiles); ``per_channel=True`` uses per-channel min/max (profiles made with
``per_channel=True``); ``margin`` widens the range by that fraction of its width on each side.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError, suggest
from torchfault.injectors._ranges import RangeProfile, select_layers
from torchfault.registry import Registry

__all__ = [
    "PROTECTIONS",
    "Protection",
    "ProtectionHandle",
    "create_protection",
    "is_protection",
    "list_protections",
    "protect",
    "protect_",
    "register_protection",
]

PROTECTIONS: Registry[type] = Registry("protection")

_OPTIONS = ("bounds", "per_channel", "margin", "bound", "low", "high", "mode")
_MODES = ("clamp", "zero")


class Protection:
    """Base of the protections (see the module docstring).

    Args:
        profile: golden ranges (a :class:`RangeProfile`); needed unless every layer has a fixed
            bound.
        layers: module names or ``re:`` patterns, or a mapping ``name -> options``; default:
            every layer of the profile.
        bounds: ``"minmax"`` or ``"pLOW-pHIGH"``.
        per_channel: per-channel min/max from the profile.
        margin: widen each range by this fraction of its width on both sides (>= 0).
        bound: fixed symmetric bound ``[-bound, bound]`` (instead of the profile).
        low, high: fixed bounds (instead of the profile).
        mode: ``"clamp"`` or ``"zero"`` (what a correcting protection does to values outside).
        check: check that the profile was made on the model it is applied to.

    Attributes:
        corrects: whether the protection changes outputs (``detect`` does not).
        flags: rows flagged since :meth:`reset` (``None`` before any forward pass).
        fired: layer name -> forward passes in which the layer flagged a row.
    """

    name = "base"
    corrects = True
    default_mode = "clamp"

    def __init__(
        self,
        profile: RangeProfile | None = None,
        layers: str | Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
        *,
        bounds: str = "minmax",
        per_channel: bool = False,
        margin: float = 0.0,
        bound: float | None = None,
        low: float | None = None,
        high: float | None = None,
        mode: str | None = None,
        check: bool = True,
    ) -> None:
        if profile is not None and not isinstance(profile, RangeProfile):
            raise TorchFaultError(
                f"profile: expected a RangeProfile (profile_ranges or load_profile), got "
                f"{type(profile).__name__}.",
                field="profile",
            )
        self.profile = profile
        self.check = bool(check)
        self.defaults = self._options(
            {
                "bounds": bounds,
                "per_channel": per_channel,
                "margin": margin,
                "bound": bound,
                "low": low,
                "high": high,
                "mode": mode or self.default_mode,
            },
            "",
        )
        self.per_layer: dict[str, dict[str, Any]] = {}
        if isinstance(layers, Mapping):
            for name, opts in layers.items():
                if opts is None:
                    opts = {}
                if not isinstance(opts, Mapping):
                    raise TorchFaultError(
                        f"layers.{name}: expected a mapping of options, got {opts!r}.",
                        field=f"layers.{name}",
                    )
                self.per_layer[str(name)] = self._options(
                    {**self.defaults, **dict(opts)}, f"layers.{name}."
                )
            self.layers: list[str] | None = list(self.per_layer)
        elif layers is None:
            self.layers = None
        else:
            self.layers = [layers] if isinstance(layers, str) else list(layers)
        self.flags: torch.Tensor | None = None
        self.fired: dict[str, int] = {}
        self._bounds: dict[str, tuple[Any, Any, dict[str, Any]]] = {}

    # -- options -----------------------------------------------------------------------------
    def _options(self, opts: dict[str, Any], where: str) -> dict[str, Any]:
        unknown = sorted(set(opts) - set(_OPTIONS))
        if unknown:
            raise TorchFaultError(
                f"{where}{unknown[0]}: unknown protection option; valid: {', '.join(_OPTIONS)}."
                f"{suggest(unknown[0], _OPTIONS)}",
                field=f"{where}{unknown[0]}",
            )
        if opts["mode"] not in _MODES:
            raise TorchFaultError(
                f"{where}mode: {opts['mode']!r} is not a mode; valid: {', '.join(_MODES)}.",
                field=f"{where}mode",
            )
        m = opts["margin"]
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (m >= 0):
            raise TorchFaultError(
                f"{where}margin: must be a number >= 0, got {m!r}.", field=f"{where}margin"
            )
        for k in ("bound", "low", "high"):
            v = opts[k]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TorchFaultError(
                    f"{where}{k}: must be a number or null, got {v!r}.", field=f"{where}{k}"
                )
        if opts["bound"] is not None and opts["bound"] < 0:
            raise TorchFaultError(
                f"{where}bound: must be >= 0, got {opts['bound']!r}.", field=f"{where}bound"
            )
        if opts["bound"] is not None and (opts["low"] is not None or opts["high"] is not None):
            raise TorchFaultError(
                f"{where}bound: give bound or low/high, not both.", field=f"{where}bound"
            )
        return opts

    def _fixed(self, opts: dict[str, Any]) -> bool:
        return opts["bound"] is not None or opts["low"] is not None or opts["high"] is not None

    # -- binding to a model --------------------------------------------------------------------
    def bind(self, model: nn.Module) -> list[str]:
        """Resolve the protected layers on ``model`` and their bounds; return the layer names.

        Raises:
            TorchFaultError: a layer that is not a module of the model (named), a layer not in
                the profile, a profile made on another model, bad bounds.
        """
        if self.layers is None:
            if self.profile is None:
                raise TorchFaultError(
                    f"protection {self.name!r}: give layers (with fixed bounds) or a profile.",
                    field="layers",
                )
            names = list(self.profile.layers)
            mods = dict(model.named_modules())
            missing = [n for n in names if n not in mods]
            if missing:
                raise TorchFaultError(
                    f"layers: the profile's layer {missing[0]!r} is not a module of this model."
                    f"{suggest(missing[0], mods)}",
                    field="layers",
                )
        elif self.per_layer:
            names = select_layers(
                model, [n for n in self.per_layer if not n.startswith("re:")], "layers"
            ) + [
                n
                for p in self.per_layer
                if p.startswith("re:")
                for n in select_layers(model, [p], "layers")
            ]
        else:
            names = select_layers(model, self.layers, "layers")
        need_profile = []
        bounds: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
        for name in names:
            opts = self._layer_options(name)
            if self._fixed(opts):
                lo = -opts["bound"] if opts["bound"] is not None else opts["low"]
                hi = opts["bound"] if opts["bound"] is not None else opts["high"]
                lo = -float("inf") if lo is None else float(lo)
                hi = float("inf") if hi is None else float(hi)
                if lo > hi:
                    raise TorchFaultError(
                        f"layers.{name}: low {lo} is above high {hi}.", field=f"layers.{name}"
                    )
                bounds[name] = (lo, hi, opts)
                continue
            if self.profile is None:
                raise TorchFaultError(
                    f"protection {self.name!r}: layer {name!r} has no fixed bound and no profile "
                    "was given (profile_ranges / load_profile).",
                    field="profile",
                )
            need_profile.append(name)
            r = self.profile[name]
            if opts["per_channel"]:
                if r.channel_min is None or r.channel_max is None:
                    raise TorchFaultError(
                        f"layers.{name}.per_channel: the profile has no per-channel ranges; make "
                        "it with per_channel=True.",
                        field=f"layers.{name}.per_channel",
                    )
                lo_t = torch.tensor(r.channel_min, dtype=torch.float64)
                hi_t = torch.tensor(r.channel_max, dtype=torch.float64)
                w = (hi_t - lo_t) * float(opts["margin"])
                bounds[name] = (lo_t - w, hi_t + w, opts)
            else:
                plo, phi = self.profile.bounds(name, opts["bounds"])
                pw = (phi - plo) * float(opts["margin"])
                bounds[name] = (plo - pw, phi + pw, opts)
        if need_profile and self.check and self.profile is not None:
            self.profile.check(model, need_profile)
        self._bounds = bounds
        return names

    def _layer_options(self, name: str) -> dict[str, Any]:
        if name in self.per_layer:
            return self.per_layer[name]
        for pat, opts in self.per_layer.items():
            if pat.startswith("re:"):
                import re

                if re.fullmatch(pat[3:], name):
                    return opts
        return self.defaults

    # -- running -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the rows flagged so far."""
        self.flags = None

    def _range(self, name: str, out: torch.Tensor) -> tuple[Any, Any]:
        lo, hi, opts = self._bounds[name]
        if isinstance(lo, torch.Tensor):
            if out.dim() < 2 or out.shape[1] != lo.numel():
                raise TorchFaultError(
                    f"layers.{name}.per_channel: output of shape {tuple(out.shape)} has no "
                    f"{lo.numel()} channels on dim 1 as in the profile.",
                    field=f"layers.{name}.per_channel",
                )
            view = (1, -1) + (1,) * (out.dim() - 2)
            return lo.to(out.dtype).reshape(view), hi.to(out.dtype).reshape(view)
        return lo, hi

    def hook(self, name: str) -> Any:
        """The forward hook protecting layer ``name``."""
        shape = None
        if self.profile is not None and name in self.profile.layers:
            shape = self.profile.layers[name].shape

        def fn(mod: nn.Module, args: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                raise TorchFaultError(
                    f"layers: protected module {name!r} does not give a floating-point tensor.",
                    field="layers",
                )
            if shape is not None and tuple(out.shape[1:]) != shape:
                raise TorchFaultError(
                    f"range profile made on another model: layer {name!r} gives outputs of shape "
                    f"{tuple(out.shape[1:])}, the profile {shape}.",
                    field="profile",
                )
            lo, hi = self._range(name, out)
            opts = self._bounds[name][2]
            outside = None
            if isinstance(lo, torch.Tensor) or out.dim() < 1 or out.numel() == 0:
                outside = ~((out >= lo) & (out <= hi))  # NaN is outside
                rows = outside.reshape(out.shape[0], -1).any(1) if out.dim() else outside.reshape(1)
            else:
                # one pass over the output: each row's smallest and largest value (a NaN makes
                # both NaN, and NaN fails both comparisons: outside)
                mn, mx = out.reshape(out.shape[0], -1).aminmax(dim=1)
                rows = ~((mn >= lo) & (mx <= hi))
            self.flags = (
                rows if self.flags is None or self.flags.shape != rows.shape else self.flags | rows
            )
            if not bool(rows.any()):
                return None  # every value inside: nothing to flag or correct
            self.fired[name] = self.fired.get(name, 0) + 1
            if not self.corrects:
                return None
            if outside is None and opts["mode"] == "zero":
                outside = ~((out >= lo) & (out <= hi))
            return self.correct(out, outside, lo, hi, opts)

        return fn

    def correct(
        self,
        out: torch.Tensor,
        outside: torch.Tensor | None,
        lo: Any,
        hi: Any,
        opts: dict[str, Any],
    ) -> torch.Tensor:
        """The corrected output (a new tensor; ``out`` is never changed). ``outside``: where
        values are out of range (``None`` when only clamping needs no mask)."""
        if opts["mode"] == "zero":
            assert outside is not None
            return out.masked_fill(outside, 0.0)
        res = (
            torch.clamp(out, min=lo, max=hi) if isinstance(lo, torch.Tensor) else out.clamp(lo, hi)
        )
        return res


@PROTECTIONS.register(
    "ranger", description="Clamp each protected layer's output to its golden range.", corrects=True
)
class Ranger(Protection):
    """Clamp outputs to their golden ranges (Ranger, DSN 2021)."""

    name = "ranger"

    def __init__(self, profile: RangeProfile | None = None, layers: Any = None, **kw: Any) -> None:
        super().__init__(profile, layers, **kw)
        if self.defaults["mode"] != "clamp" or any(
            o["mode"] != "clamp" for o in self.per_layer.values()
        ):
            raise TorchFaultError(
                "mode: ranger clamps; use clip with mode='zero' to zero values.", field="mode"
            )


@PROTECTIONS.register(
    "clip", description="Clamp to a fixed bound, or zero values outside the range.", corrects=True
)
class Clip(Protection):
    """Clamp to a fixed bound (``bound``/``low``/``high``) or the golden range; ``mode="zero"``
    zeroes values outside it instead."""

    name = "clip"


@PROTECTIONS.register(
    "detect",
    description="Flag rows with values outside the golden range; change nothing.",
    corrects=False,
)
class Detect(Protection):
    """Flag out-of-range rows without changing the output."""

    name = "detect"
    corrects = False


class ProtectionHandle:
    """What :func:`protect_` returns: the protection and its hooks (``remove()`` takes them
    off)."""

    def __init__(self, protection: Protection, handles: list[Any], layers: list[str]) -> None:
        self.protection = protection
        self.layers = layers
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Protection:
        return self.protection

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _resolve(protection: Protection | str, kwargs: dict[str, Any]) -> Protection:
    if isinstance(protection, str):
        return create_protection(protection, **kwargs)
    if kwargs:
        raise TorchFaultError(
            f"protect: options {sorted(kwargs)} are for a protection given by name.",
            field="protection",
        )
    if not isinstance(protection, Protection):
        raise TorchFaultError(
            f"protection: expected a Protection or a registered name ({', '.join(list_protections())}), "
            f"got {type(protection).__name__}.",
            field="protection",
        )
    return protection


def protect_(model: nn.Module, protection: Protection | str, **kwargs: Any) -> ProtectionHandle:
    """Put ``protection`` on ``model`` until the returned handle's ``remove()``.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> h = protect_(m, "clip", layers=["0"], bound=0.0)
        >>> bool((m(torch.ones(1, 2)) == 0).all())
        True
        >>> h.remove(); len(m[0]._forward_hooks)
        0
    """
    prot = _resolve(protection, kwargs)
    layers = prot.bind(model)
    mods = dict(model.named_modules())
    handles: list[Any] = []
    try:
        for name in layers:
            handles.append(mods[name].register_forward_hook(prot.hook(name)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    prot.reset()
    return ProtectionHandle(prot, handles, layers)


@contextlib.contextmanager
def protect(model: nn.Module, protection: Protection | str, **kwargs: Any) -> Iterator[Protection]:
    """Context manager: ``protection`` is on ``model`` inside, and every hook it added is
    removed on exit (exceptions included).

    Args:
        model: the model.
        protection: a :class:`Protection`, or a registered name built with ``kwargs``.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> from torchfault.injectors import profile_ranges
        >>> m = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
        >>> prof = profile_ranges(m, torch.randn(64, 4))
        >>> with protect(m, "detect", profile=prof) as det:
        ...     _ = m(torch.full((2, 4), 100.0))
        >>> det.flags.tolist()
        [True, True]
    """
    handle = protect_(model, protection, **kwargs)
    try:
        yield handle.protection
    finally:
        handle.remove()


# register_protection (a decorator for Protection subclasses), list_protections, is_protection
# (tests/test_registry.py checks the built-in ones); create_protection below names its field
register_protection, list_protections, is_protection, _, _ = PROTECTIONS.functions()


def create_protection(name: str, **kwargs: Any) -> Protection:
    """Build the protection ``name`` with ``kwargs``; an unknown name is an error listing the
    valid ones."""
    try:
        cls = PROTECTIONS.get(name)
    except ValueError as exc:
        raise TorchFaultError(str(exc), field="protection") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TorchFaultError(f"protection {name!r}: {exc}.", field="protection") from None


def _copy(p: Protection) -> Protection:
    """A fresh copy of a protection (no flags) for another process."""
    q = copy.copy(p)
    q.flags = None
    q.fired = {}
    return q
