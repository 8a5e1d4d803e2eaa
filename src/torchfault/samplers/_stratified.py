# SPDX-License-Identifier: MIT
"""The ``stratified`` sampler: strata by layer x bit group, proportional, equal or Neyman allocation.

Strata. ``strata`` chooses how the ``(element, bit)`` population is cut (:data:`STRATA`):
``layer_bit_group`` (the default: one stratum per site and bit group), ``layer`` (per site),
``bit_group`` (per bit group, across sites), ``layer_bit`` (per site and bit position) or ``bit``
(per bit position). Bit groups (``bit_groups``) default, for floating-point formats, to ``sign``,
``exponent_msb`` (the exponent's top bit), ``exponent`` (its other bits), ``mantissa_high`` (the
upper half of the mantissa) and ``mantissa_low``; for other formats ``msb``, ``high`` (the next
three bits) and ``low``. Most SDCs of a float come from a few exponent bits: the strata separate
the bits that are almost never SDC from those that often are, which is what lets Neyman allocation
spend its runs where the variance is.

Allocation of the ``n`` faults (the whole budget, not per stratum):

- ``proportional``: stratum ``h`` gets ``n N_h / N`` faults (as many as a uniform sample would,
  without its randomness in the split), ``equal``: ``n / H`` each (capped at ``N_h``, the rest
  spread over the others), both a pure function of ``(seed, k)``;
- ``neyman``: a *pilot* round of ``pilot`` faults spread equally over the strata runs first; the
  campaign then calls :meth:`StratifiedSampler.allocate` with each stratum's standard deviation
  (from the pilot's per-fault SDC fractions) and the rest of the budget goes ``∝ N_h S_h``. Fault
  ``k`` is a pure function of ``(seed, k)`` for the pilot faults; for ``k >= pilot`` it is a pure
  function of ``(seed, k)`` *and the pilot's outcomes* (which a resumed campaign reads back from its
  store, so a resume redraws the same faults).

Faults are laid out so that every prefix of fault numbers follows the allocation (stratum ``h``'s
``j``-th fault comes at "time" ``(j + 1/2) / n_h``, ties by stratum): an adaptive campaign that
stops after any round has a stratified sample, and its stopping rule uses the stratified interval.
Within a stratum, faults are drawn without replacement through the keyed permutation of
:mod:`torchfault.samplers._samplers` (keys from ``(seed, 2_000_000 + h)``).

Example:
    >>> from torchfault import FaultSite
    >>> from torchfault.samplers import create_sampler
    >>> sites = [FaultSite("fc", "weight", "parameter", (4, 8), "float32", 32)]
    >>> s = create_sampler("stratified", sites=sites, n=100, allocation="proportional", seed=0)
    >>> len(s), sorted(s.strata().items())[:2]
    (100, [(('fc:weight', 'exponent'), 224), (('fc:weight', 'exponent_msb'), 32)])
    >>> s.stratum_of(s.draw(7)) in s.strata()
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from torchfault.errors import TorchFaultError, suggest
from torchfault.faults import Fault, FaultSite
from torchfault.samplers._samplers import (
    _FLOAT_FIELDS,
    _FORMAT_ALIASES,
    Sampler,
    _check_int,
    _permute,
    _round_keys,
    register_sampler,
    resolve_bits,
)
from torchfault.samplers._size import normal_quantile

__all__ = ["StratifiedSampler", "STRATA", "ALLOCATIONS", "default_bit_groups"]

#: Ways to cut the population into strata.
STRATA = ("layer_bit_group", "layer", "bit_group", "layer_bit", "bit")
#: Allocations of the budget over the strata.
ALLOCATIONS = ("neyman", "proportional", "equal")
#: Pilot faults per stratum when ``pilot`` is not given (Neyman allocation).
PILOT_PER_STRATUM = 10


def default_bit_groups(fmt: str, bit_width: int) -> dict[str, tuple[int, ...]]:
    """The default bit groups of a number format (see the module docstring).

    Example:
        >>> default_bit_groups("float32", 32)["exponent_msb"]
        (30,)
        >>> sorted(default_bit_groups("int8", 8).items())
        [('high', (4, 5, 6)), ('low', (0, 1, 2, 3)), ('msb', (7,))]
    """
    key = _FORMAT_ALIASES.get(str(fmt).lower(), str(fmt).lower())
    top = bit_width - 1
    if key in _FLOAT_FIELDS and sum(_FLOAT_FIELDS[key]) + 1 == bit_width:
        exp, man = _FLOAT_FIELDS[key]
        half = man // 2
        groups = {
            "sign": (top,),
            "exponent_msb": (top - 1,),
            "exponent": tuple(range(man, man + exp - 1)),
            "mantissa_high": tuple(range(half, man)),
            "mantissa_low": tuple(range(0, half)),
        }
    else:
        groups = {
            "msb": (top,),
            "high": tuple(range(max(0, top - 3), top)),
            "low": tuple(range(0, max(0, top - 3))),
        }
    return {g: b for g, b in groups.items() if b}


def _apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Integers ``<= caps`` summing to ``min(total, caps.sum())``, proportional to ``weights``:
    real shares with the capped strata fixed at their caps (water filling), then floors and the
    largest remainders. Strata of weight 0 get faults only when all the others are full."""
    caps = np.maximum(np.asarray(caps, dtype=np.int64), 0)
    total = int(min(total, int(caps.sum())))
    w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    out = np.zeros(len(caps), dtype=np.int64)
    if total <= 0:
        return out
    if w[caps > 0].sum() <= 0 or total >= int(caps[w > 0].sum()):
        # the weighted strata are filled; the rest goes to the others, evenly
        first = np.where(w > 0, caps, 0)
        out = np.minimum(first, caps)
        left = total - int(out.sum())
        if left < 0:
            return _apportion(total, np.where(w > 0, 1.0, 0.0) * caps, caps)
        if left:
            out += _apportion(left, np.where(w > 0, 0.0, 1.0), caps - out)
        return out
    share = np.zeros(len(caps))
    fixed = np.zeros(len(caps), dtype=bool)
    while True:
        left = total - share[fixed].sum()
        free = ~fixed & (w > 0)
        share[free] = left * w[free] / w[free].sum()
        over = free & (share > caps)
        if not over.any():
            break
        share[over] = caps[over]
        fixed |= over
    out = np.minimum(np.floor(share + 1e-9).astype(np.int64), caps)
    rest = total - int(out.sum())
    if rest > 0:
        frac = np.where(out < caps, share - out, -1.0)
        order = np.argsort(-frac, kind="stable")
        for h in order[:rest]:
            out[h] += 1
    return out


def _interleave(counts: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratum and within-stratum position of each fault when stratum ``h`` contributes
    ``counts[h]`` faults from position ``first[h]``: its ``j``-th at time ``(j + 1/2) / counts[h]``."""
    hs = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    js = np.concatenate([np.arange(c, dtype=np.int64) for c in counts]) if len(counts) else hs
    times = (js + 0.5) / np.maximum(counts[hs], 1)
    order = np.lexsort((hs, times))
    return hs[order], (js + first[hs])[order]


@register_sampler(
    "stratified",
    description="Strata by layer x bit group; proportional, equal or Neyman (pilot) allocation.",
    stratified=True,
    multi_fault=False,
)
class StratifiedSampler(Sampler):
    """Stratified sample of the ``(element, bit)`` population with a chosen allocation.

    Args:
        sites: the fault sites.
        allocation: ``neyman`` (default), ``proportional`` or ``equal``.
        strata: how to cut the population, one of :data:`STRATA`.
        bit_groups: ``{group name: [bit positions or field names]}`` instead of the defaults;
            allowed bits in no group form the group ``other``.
        pilot: faults of the Neyman pilot round, spread equally over the strata (default 10 per
            stratum, at most half of ``n``, at least one per stratum); must not exceed ``n``.
        **kwargs: the common settings of :class:`Sampler`; ``n`` is the whole budget, ``margin``
            sizes it (worst case ``p = 0.5`` for proportional and equal allocation, from the pilot
            for Neyman).
    """

    name = "stratified"

    def __init__(
        self,
        sites: Sequence[FaultSite | Mapping[str, Any]],
        *,
        allocation: str = "neyman",
        strata: str = "layer_bit_group",
        bit_groups: Mapping[str, Sequence[int | str]] | None = None,
        pilot: int | None = None,
        **kwargs: Any,
    ) -> None:
        if allocation not in ALLOCATIONS:
            raise TorchFaultError(
                f"stratified sampler: allocation: unknown allocation {allocation!r}; choose one of "
                f"{', '.join(ALLOCATIONS)}.{suggest(str(allocation), ALLOCATIONS)}",
                field="allocation",
            )
        if strata not in STRATA:
            raise TorchFaultError(
                f"stratified sampler: strata: unknown strata {strata!r}; choose one of "
                f"{', '.join(STRATA)}.{suggest(str(strata), STRATA)}",
                field="strata",
            )
        if bit_groups is not None and not isinstance(bit_groups, Mapping):
            raise TorchFaultError(
                "stratified sampler: bit_groups: give a mapping {group name: [bits or field "
                f"names]}}, got {bit_groups!r}.",
                field="bit_groups",
            )
        self.allocation = allocation
        self.strata_spec = strata
        self.bit_groups_spec = (
            None
            if bit_groups is None
            else {
                str(k): list(v) if not isinstance(v, (str, int)) else [v]
                for k, v in bit_groups.items()
            }
        )
        self.pilot_requested = None if pilot is None else _check_int(pilot, "pilot", 1)
        super().__init__(sites, **kwargs)

    # -- strata ----------------------------------------------------------------------------------

    def _groups_of(self, site: int) -> dict[int, str]:
        s, allowed = self.sites[site], set(self.site_bits[site])
        if self.whole_element:
            return {0: "element"}
        if self.bit_groups_spec is None:
            groups = default_bit_groups(s.format, s.bit_width)
        else:
            groups = {
                g: resolve_bits(spec, s.format, s.bit_width)
                for g, spec in self.bit_groups_spec.items()
            }
        out: dict[int, str] = {}
        for g, bits in groups.items():
            for b in bits:
                if b in out and self.bit_groups_spec is not None:
                    raise TorchFaultError(
                        f"stratified sampler: bit_groups: bit {b} is in groups {out[b]!r} and "
                        f"{g!r}; a bit belongs to one group.",
                        field="bit_groups",
                    )
                if b in allowed:
                    out[b] = g
        for b in allowed:
            out.setdefault(b, "other")
        return out

    def _key(self, site: int, bit: int, group: str) -> Any:
        s = self.sites[site]
        layer = f"{s.module}:{s.target}"
        return {
            "layer_bit_group": (layer, group),
            "layer": layer,
            "bit_group": group,
            "layer_bit": (layer, bit),
            "bit": bit,
        }[self.strata_spec]

    def _setup(self) -> None:
        members: dict[Any, list[tuple[int, list[int]]]] = {}
        self._key_of: dict[tuple[int, int], Any] = {}
        seen_groups: set[str] = set()
        for site in range(len(self.sites)):
            groups = self._groups_of(site)
            seen_groups.update(groups.values())
            for bit in self.site_bits[site]:
                key = self._key(site, bit, groups[bit])
                self._key_of[(site, bit)] = key
                entry = members.setdefault(key, [])
                if entry and entry[-1][0] == site:
                    entry[-1][1].append(bit)
                else:
                    entry.append((site, [bit]))
        if self.bit_groups_spec is not None:
            empty = [g for g in self.bit_groups_spec if g not in seen_groups]
            if empty:
                raise TorchFaultError(
                    f"stratified sampler: bit_groups: group(s) {', '.join(map(repr, empty))} hold "
                    "no allowed bit of any site: a stratum with no population. Remove them, or "
                    f"check the bits setting ({self.bits_spec}).",
                    field="bit_groups",
                )
        self.strata_keys: list[Any] = list(members)
        self._members = [
            [(site, np.array(bits, dtype=np.int64)) for site, bits in members[key]]
            for key in self.strata_keys
        ]
        self.strata_population = np.array(
            [sum(int(self.site_numel[s]) * len(b) for s, b in m) for m in self._members],
            dtype=np.int64,
        )
        self._member_offsets = [
            np.concatenate([[0], np.cumsum([int(self.site_numel[s]) * len(b) for s, b in m])])
            for m in self._members
        ]
        self._keys = [_round_keys(self.seed, 2_000_000 + h) for h in range(len(self.strata_keys))]
        n_strata = len(self.strata_keys)
        if self.allocation == "neyman":
            pilot = self.pilot_requested
            if pilot is None:  # 10 per stratum, at most half the budget, at least 1 per stratum
                pilot = PILOT_PER_STRATUM * n_strata
                if self.n_requested is not None:
                    pilot = max(n_strata, min(pilot, self.n_requested // 2))
            if pilot < n_strata:
                raise TorchFaultError(
                    f"stratified sampler: pilot: {pilot} faults cannot give each of the "
                    f"{n_strata} strata one; give pilot >= {n_strata} (2 or more per stratum "
                    "estimate its spread).",
                    field="pilot",
                )
            pilot = min(pilot, self.population)
            if self.n_requested is not None and pilot > self.n_requested:
                raise TorchFaultError(
                    f"stratified sampler: pilot: the pilot round ({pilot} faults) is larger than "
                    f"the budget n = {self.n_requested}; lower pilot or raise n.",
                    field="pilot",
                )
            self.pilot_sizes = _apportion(pilot, np.ones(n_strata), self.strata_population)
        else:
            if self.pilot_requested is not None:
                raise TorchFaultError(
                    f"stratified sampler: pilot: only Neyman allocation has a pilot round (got "
                    f"pilot={self.pilot_requested} with allocation {self.allocation!r}).",
                    field="pilot",
                )
            self.pilot_sizes = np.zeros(n_strata, dtype=np.int64)
        self.pilot_faults = int(self.pilot_sizes.sum())
        self.allocated = False
        self.stratum_sd: dict[Any, float] | None = None
        if self.allocation == "neyman":
            self._layout([self.pilot_sizes])
        else:
            weights = (
                self.strata_population.astype(np.float64)
                if self.allocation == "proportional"
                else np.ones(n_strata)
            )
            total = (
                self.n_requested if self.n_requested is not None else self._size(self.population)
            )
            self._layout([_apportion(total, weights, self.strata_population)])
            self.allocated = True

    def _layout(self, blocks: Sequence[np.ndarray]) -> None:
        """Fault numbers: block after block (the pilot first), each interleaved by its counts;
        positions within a stratum continue from block to block."""
        first = np.zeros(len(self.strata_keys), dtype=np.int64)
        hs, idx = [], []
        for counts in blocks:
            counts = np.asarray(counts, dtype=np.int64)
            h, i = _interleave(counts, first)
            hs.append(h)
            idx.append(i)
            first = first + counts
        self._layout_h = np.concatenate(hs) if hs else np.zeros(0, dtype=np.int64)
        self._layout_i = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
        self.strata_sizes = np.bincount(self._layout_h, minlength=len(self.strata_keys))
        self._len = len(self._layout_h)

    def allocate(self, sd: Mapping[Any, float], target_margin: float | None = None) -> None:
        """Neyman allocation of the budget after the pilot round.

        Args:
            sd: each stratum's standard deviation ``S_h`` of the per-fault outcome, from the
                pilot faults (:func:`torchfault.analysis.stratum_sd`); 0 for a stratum whose pilot
                faults all agreed (no SDC among the mantissa bits, say).
            target_margin: plan for this half-width (an adaptive campaign's margin); default the
                sampler's ``margin`` when it was sized by margin.

        Strata with spread get ``n_h ∝ N_h S_h`` (Neyman). Strata without spread are one pool,
        spread over ∝ ``N_h``, whose size minimises the variance the estimator uses for them,
        ``W^2 q (1 - q) / n`` with ``q = 1/2 / (n + 1)`` (:mod:`torchfault.analysis._design`): a
        pool with no SDC still needs enough faults to bound its rate, but not a Neyman share
        each. With a target margin the plan is the smallest one whose variance meets
        ``(margin / z)^2``, and the rest of a larger budget follows the same shares.
        """
        if self.allocation != "neyman":
            raise TorchFaultError(
                f"stratified sampler: allocate() is for Neyman allocation, not {self.allocation!r}."
            )
        missing = [k for k in self.strata_keys if k not in sd]
        if missing:
            raise TorchFaultError(
                f"stratified sampler: allocate(): no standard deviation for strata {missing[:5]}."
            )
        s = np.array([max(0.0, float(sd[k])) for k in self.strata_keys])
        cap = self.strata_population.astype(np.int64)
        pilot = self.pilot_sizes
        w = cap / cap.sum()
        flat = s <= 0.0
        a = float((w[~flat] * s[~flat]).sum())
        w_f = float(w[flat].sum())
        pilot_f, pilot_p = int(pilot[flat].sum()), int(pilot[~flat].sum())
        cap_f, cap_p = int(cap[flat].sum()), int(cap[~flat].sum())
        budget = self.n_requested
        margin = target_margin
        if margin is None and budget is None:
            margin = float(self.margin)  # type: ignore[arg-type]

        def pool_var(n_f: np.ndarray) -> np.ndarray:
            q = 0.5 / (n_f + 1.0)
            return np.where(n_f > 0, w_f * w_f * q * (1 - q) / np.maximum(n_f, 1), 0.0)

        n_f = np.arange(max(pilot_f, 1), cap_f + 1) if w_f > 0 else np.array([0])
        if margin is not None:
            z = normal_quantile(0.95 if self.confidence is None else self.confidence)
            target = (margin / z) ** 2
            rem = target - pool_var(n_f)
            with np.errstate(divide="ignore"):
                n_p = np.where(rem > 0, a * a / np.where(rem > 0, rem, 1.0), np.inf)
            n_p = np.minimum(np.maximum(np.ceil(n_p), pilot_p), np.inf)
            total = n_f + n_p
            j = int(np.argmin(total))
            plan_f, plan_p = int(n_f[j]), (int(n_p[j]) if np.isfinite(n_p[j]) else cap_p)
        else:
            assert budget is not None
            room = budget - pilot_f - pilot_p
            cand = n_f[(n_f >= pilot_f) & (n_f - pilot_f <= max(room, 0))]
            if not len(cand):
                cand = np.array([pilot_f])
            with np.errstate(divide="ignore"):
                n_p = budget - cand
                v = np.where(n_p > 0, a * a / np.maximum(n_p, 1), np.inf) + pool_var(cand)
            plan_f = int(cand[int(np.argmin(v))])
            plan_p = budget - plan_f
        plan_f = min(max(plan_f, pilot_f), cap_f)
        plan_p = min(max(plan_p, pilot_p), cap_p)

        def shares(plan_f: int, plan_p: int) -> np.ndarray:
            main = np.zeros(len(cap), dtype=np.int64)
            if plan_f > pilot_f:
                main += _apportion(
                    plan_f - pilot_f, np.where(flat, cap, 0.0), np.where(flat, cap - pilot, 0)
                )
            if plan_p > pilot_p:
                main += _apportion(
                    plan_p - pilot_p, np.where(flat, 0.0, cap * s), np.where(flat, 0, cap - pilot)
                )
            return main

        main = shares(plan_f, plan_p)
        if margin is not None:
            # the plan ignored the caps and the pilot's shares: grow it until the variance the
            # estimator will use (with the finite-population correction) meets the target
            while True:
                n_h = (pilot + main).astype(np.float64)
                fpc = 1.0 - n_h / cap
                v = float(
                    (w[~flat] ** 2 * s[~flat] ** 2 * fpc[~flat] / np.maximum(n_h[~flat], 1)).sum()
                ) + float(pool_var(np.array([n_h[flat].sum()]))[0])
                if v <= target or (plan_p >= cap_p and plan_f >= cap_f):
                    break
                plan_p = min(cap_p, plan_p + max(1, plan_p // 20))
                plan_f = min(cap_f, plan_f + max(1, plan_f // 20))
                main = shares(plan_f, plan_p)
        blocks = [pilot, main]
        if budget is not None and budget > int(pilot.sum() + main.sum()):
            rest = _apportion(
                budget - int(pilot.sum() + main.sum()),
                (pilot + main).astype(np.float64),
                cap - pilot - main,
            )
            blocks.append(rest)
        elif budget is not None and budget < int(pilot.sum() + main.sum()):
            blocks[1] = _apportion(budget - int(pilot.sum()), main.astype(np.float64), main)
        self.stratum_sd = {k: float(x) for k, x in zip(self.strata_keys, s)}
        self._layout(blocks)
        self.allocated = True

    # -- design ----------------------------------------------------------------------------------

    def strata(self) -> dict[Any, int] | None:
        """Population of every stratum (in faults), in stratum order."""
        return {k: int(n) for k, n in zip(self.strata_keys, self.strata_population)}

    def stratum_of(self, faults: Sequence[Fault]) -> Any:
        f = faults[0]
        return self._key_of[(self._site_of(f), int(f.bits[0]))]

    def strata_index(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        return self._layout_h[start:stop].copy()

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "allocation": self.allocation,
            "strata": self.strata_spec,
            "bit_groups": self.bit_groups_spec,
            "pilot": self.pilot_requested,
            "pilot_faults": self.pilot_faults,
            "allocated": self.allocated,
        }

    def _check_range(self, start: int, stop: int) -> None:
        if not self.allocated and stop > len(self):
            raise TorchFaultError(
                f"stratified sampler: fault numbers {start}..{stop - 1} out of range before the "
                f"Neyman allocation: run the {self.pilot_faults} pilot faults and call allocate() "
                "first."
            )
        super()._check_range(start, stop)

    def _locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hs, idx = self._layout_h[ks], self._layout_i[ks]
        site = np.empty_like(ks)
        element = np.empty_like(ks)
        bit = np.empty_like(ks)
        for h in np.unique(hs):
            sel = hs == h
            x = _permute(idx[sel], int(self.strata_population[h]), self._keys[h])
            offsets = self._member_offsets[h]
            m = np.searchsorted(offsets, x, side="right") - 1
            local = x - offsets[m]
            for j in np.unique(m):
                part = m == j
                s, bits = self._members[h][j]
                pos = np.flatnonzero(sel)[part]
                site[pos] = s
                element[pos] = local[part] // len(bits)
                bit[pos] = bits[local[part] % len(bits)]
        return site, element, bit
