# SPDX-License-Identifier: MIT
"""Samplers: which faults a campaign injects.

A sampler is built from the fault sites (:class:`~torchfault.FaultSite`) and its settings, and
maps a fault number ``k`` to the faults of run ``k`` as a pure function of ``(seed, k)``: the
same ``k`` gives the same faults whatever the order in which numbers are drawn, the process or
the machine, so any run can be replayed alone and workers need no shared state.

Single-fault samplers (``uniform``, ``per_layer``, ``per_bit``, ``exhaustive``) see the fault
population as a list of ``(element, bit)`` pairs: site by site (in the order given), element by
element (row-major), bit by bit (ascending). ``uniform``, ``per_layer`` and ``per_bit`` draw
without replacement -- the simple random sample Leveugle et al.'s sample size assumes -- through
a keyed pseudo-random permutation of each stratum (a 4-round Feistel network over 64-bit mixing,
with cycle walking to the stratum's size): fault ``k`` is position ``k`` of that permutation, so
no two fault numbers of one stratum give the same ``(element, bit)`` pair, and no state is kept.

The ``ber`` sampler models a bit-error rate: for every run it draws the number of flipped bits of
each site from ``Binomial(population, rate)`` with ``numpy.random.default_rng([seed, k])`` and
places them uniformly without replacement; a run may hold zero, one or many faults (one
:class:`~torchfault.Fault` per element, holding all of that element's flipped bits).

Example:
    >>> from torchfault import FaultSite
    >>> sites = [FaultSite("fc", "weight", "parameter", (4, 8), "float32", 32)]
    >>> s = create_sampler("uniform", sites=sites, n=10, seed=0)
    >>> len(s), s.population
    (10, 1024)
    >>> s.draw(3) == s.draw(3)
    True
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchfault.errors import TorchFaultError, suggest
from torchfault.faults import (
    FAULT_MODELS,
    PERSISTENCES,
    Fault,
    FaultSite,
    fault_model_capabilities,
)
from torchfault.registry import HIDE_DEFAULT, Capabilities, Registry
from torchfault.samplers._size import sample_size

__all__ = [
    "SAMPLERS",
    "SamplerCapabilities",
    "sampler_capabilities",
    "Sampler",
    "UniformSampler",
    "PerLayerSampler",
    "PerBitSampler",
    "ExhaustiveSampler",
    "BerSampler",
    "register_sampler",
    "list_samplers",
    "is_sampler",
    "create_sampler",
    "get_sampler",
    "resolve_bits",
    "EXHAUSTIVE_LIMIT",
]


@dataclass(frozen=True)
class SamplerCapabilities(Capabilities):
    """What a sampler supports (the sampler registry's typed capabilities).

    Attributes:
        stratified: the sample is drawn per stratum (site, bit, layer x bit group).
        multi_fault: a run may hold more than one fault.
        needs_model: the sampler reads the model's tensors (a campaign passes ``model=``).

    Example:
        >>> sampler_capabilities("ber").multi_fault, sampler_capabilities("uniform").stratified
        (True, False)
    """

    stratified: bool = False
    multi_fault: bool = False
    needs_model: bool = field(default=False, metadata=HIDE_DEFAULT)


SAMPLERS: Registry[type[Sampler]] = Registry("sampler", capabilities=SamplerCapabilities)


def sampler_capabilities(name: str) -> SamplerCapabilities:
    """The typed capabilities of the registered sampler ``name``.

    Example:
        >>> sampler_capabilities("per_bit").stratified
        True
    """
    return SAMPLERS.capabilities_of(name, SamplerCapabilities)


#: Largest population the ``exhaustive`` sampler accepts by default.
EXHAUSTIVE_LIMIT = 10_000_000

# (exponent bits, mantissa bits) of the floating-point formats whose field names
# ("sign", "exponent", "mantissa") the ``bits`` setting understands.
_FLOAT_FIELDS: dict[str, tuple[int, int]] = {
    "float64": (11, 52),
    "float32": (8, 23),
    "float16": (5, 10),
    "bfloat16": (8, 7),
    "tf32": (8, 10),
    "float8_e4m3fn": (4, 3),
    "float8_e4m3fnuz": (4, 3),
    "float8_e5m2": (5, 2),
    "float8_e5m2fnuz": (5, 2),
}
_FORMAT_ALIASES = {
    "fp64": "float64",
    "double": "float64",
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
}
_FIELD_NAMES = ("sign", "exponent", "mantissa")


def resolve_bits(spec: Sequence[int | str] | None, fmt: str, bit_width: int) -> tuple[int, ...]:
    """The bit positions of one site that a ``bits`` setting allows, ascending.

    Args:
        spec: ``None`` (every bit), or a list of bit positions and field names (``"sign"``,
            ``"exponent"``, ``"mantissa"``; field names need a floating-point format). Positions
            at or above the site's bit width are skipped, so ``[0, 1, ..., 31]`` works on a
            float16 site too.
        fmt: the site's number-format name (``"float32"``, ...).
        bit_width: the site's bits per element.

    Example:
        >>> resolve_bits(["exponent"], "float32", 32)
        (23, 24, 25, 26, 27, 28, 29, 30)
        >>> resolve_bits([31, 0, 40], "float16", 16)
        (0,)
        >>> resolve_bits(["sign"], "int8", 8)
        (7,)
    """
    if spec is None:
        return tuple(range(bit_width))
    if isinstance(spec, (str, int)):
        spec = [spec]
    out: set[int] = set()
    for item in spec:
        if isinstance(item, str):
            name = item.lower()
            if name not in _FIELD_NAMES:
                raise TorchFaultError(
                    f"bits: unknown field {item!r}; give bit positions or one of "
                    f"{', '.join(_FIELD_NAMES)}.{suggest(item, _FIELD_NAMES)}",
                    field="bits",
                )
            key = _FORMAT_ALIASES.get(str(fmt).lower(), str(fmt).lower())
            if name == "sign":
                out.add(bit_width - 1)
                continue
            if key not in _FLOAT_FIELDS:
                raise TorchFaultError(
                    f"bits: field {item!r} needs a floating-point format, but a site has format "
                    f"{fmt!r}; known floating-point formats: {', '.join(_FLOAT_FIELDS)}. "
                    "Give bit positions instead.",
                    field="bits",
                )
            exp, man = _FLOAT_FIELDS[key]
            if name == "mantissa":
                out.update(range(0, man))
            else:
                out.update(range(man, man + exp))
        elif isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TorchFaultError(
                f"bits: expected bit positions (integers >= 0) or field names, got {item!r}.",
                field="bits",
            )
        elif item < 0:
            raise TorchFaultError(f"bits: bit positions must be >= 0, got {item}.", field="bits")
        elif item < bit_width:
            out.add(int(item))
    return tuple(sorted(out))


# --------------------------------------------------------------------------------------------
# keyed permutation of [0, N): Feistel network with cycle walking (stateless, vectorised)
# --------------------------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, stratum: int) -> np.ndarray:
    return np.random.SeedSequence([seed, stratum, 0x5A3D]).generate_state(4, np.uint64)


_MASK64 = (1 << 64) - 1


def _mix64_int(x: int) -> int:
    """:func:`_mix64` on one Python int (the same function, without numpy's per-call cost)."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _permute_one(i: int, size: int, keys: np.ndarray) -> int:
    """:func:`_permute` of a single position, in plain Python."""
    nbits = max(2, (size - 1).bit_length())
    nbits += nbits % 2
    half = nbits // 2
    mask = (1 << half) - 1
    ks = [int(k) for k in keys]
    x = i
    while True:
        left, right = x >> half, x & mask
        for key in ks:
            left, right = right, left ^ (_mix64_int(right ^ key) & mask)
        x = (left << half) | right
        if x < size:
            return x


def _permute(idx: np.ndarray, size: int, keys: np.ndarray) -> np.ndarray:
    """Position ``idx`` of a keyed pseudo-random permutation of ``range(size)``."""
    idx = np.asarray(idx, dtype=np.int64)
    if size <= 1 or idx.size == 0:
        return idx.copy()
    if idx.size == 1:
        return np.array([_permute_one(int(idx[0]), size, keys)], dtype=np.int64).reshape(idx.shape)
    nbits = max(2, (size - 1).bit_length())
    nbits += nbits % 2
    half = np.uint64(nbits // 2)
    mask = np.uint64((1 << (nbits // 2)) - 1)

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (_mix64(right ^ key) & mask)
        return (left << half) | right

    with np.errstate(over="ignore"):
        out = encrypt(idx.astype(np.uint64))
        bad = out >= np.uint64(size)
        while bad.any():  # cycle walking: expected < 4 steps since 2**nbits < 4 * size
            out[bad] = encrypt(out[bad])
            bad = out >= np.uint64(size)
    return out.astype(np.int64)


# --------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------


def _whole_element(fault_model: str) -> bool:
    """Whether a registered fault model replaces whole elements (needs no bit positions)."""
    if not FAULT_MODELS.is_registered(fault_model):
        return False
    return not fault_model_capabilities(fault_model).needs_bits


def _as_sites(sites: Any) -> list[FaultSite]:
    if isinstance(sites, (FaultSite, Mapping)) or sites is None:
        sites = [] if sites is None else [sites]
    out = []
    for s in sites:
        if isinstance(s, Mapping):
            s = FaultSite.from_dict(s)
        if not isinstance(s, FaultSite):
            raise TorchFaultError(
                f"sites must be FaultSite objects (from torchfault.fault_space) or their dicts, "
                f"got {type(s).__name__}."
            )
        out.append(s)
    if not out:
        raise TorchFaultError(
            "sites: no fault sites to sample from; check the targets (modules and tensor kinds)."
        )
    return out


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TorchFaultError(
                f"{name} must be an integer >= {minimum}, got {value!r}.", field=name
            )
    if value < minimum:
        raise TorchFaultError(f"{name} must be an integer >= {minimum}, got {value!r}.", field=name)
    return int(value)


class Sampler(abc.ABC):
    """Base class: maps fault numbers ``0 <= k < len(self)`` to the faults of run ``k``.

    Subclasses are registered with :func:`register_sampler` and built by
    :func:`create_sampler`. Single-fault samplers implement :meth:`_locate` (vectorised: fault
    numbers to site, element and bit arrays); others override :meth:`draws`.

    Args:
        sites: the fault sites (``FaultSite`` or their dicts).
        n: number of faults (runs) -- per stratum for stratified samplers.
        margin: instead of ``n``: error margin in (0, 1); ``n`` is then
            :func:`~torchfault.sample_size` of the (stratum) population.
        confidence: confidence level for ``margin`` (default 0.95).
        seed: campaign seed (integer >= 0).
        fault_model: fault model name put in every fault (``"bit_flip"``, ...).
        bits: allowed bit positions or field names (``"exponent"``); ``None`` allows all.
        persistence: ``"permanent"`` or ``"transient"``.
        params: fault-model parameters put in every fault.
    """

    name = "sampler"
    single_fault = True
    _len: int  # set by _setup

    def __init__(
        self,
        sites: Sequence[FaultSite | Mapping[str, Any]],
        *,
        n: int | None = None,
        margin: float | None = None,
        confidence: float | None = None,
        seed: int = 0,
        fault_model: str = "bit_flip",
        bits: Sequence[int | str] | None = None,
        persistence: str = "permanent",
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.seed = _check_int(seed, "seed", 0)
        if not isinstance(fault_model, str) or not fault_model:
            raise TorchFaultError(
                f"fault_model must be a fault model name, got {fault_model!r}.", field="fault_model"
            )
        if persistence not in PERSISTENCES:
            raise TorchFaultError(
                f"persistence must be one of {', '.join(PERSISTENCES)}, got {persistence!r}."
                f"{suggest(str(persistence), PERSISTENCES)}",
                field="persistence",
            )
        self.fault_model = fault_model
        self.persistence = persistence
        self.params = dict(params or {})
        self.bits_spec = (
            None if bits is None else list(bits) if not isinstance(bits, (str, int)) else [bits]
        )
        all_sites = _as_sites(sites)
        # fault models that replace a whole element (zero, value, random_value) have no bit
        # positions: the population is the elements, and their faults name no bits
        self.whole_element = _whole_element(fault_model)
        if self.whole_element and self.bits_spec is not None:
            raise TorchFaultError(
                f"bits: fault model {fault_model!r} replaces whole elements, so a bits setting "
                f"({self.bits_spec}) does not apply; leave bits unset.",
                field="bits",
            )
        site_bits = [
            (0,) if self.whole_element else resolve_bits(self.bits_spec, s.format, s.bit_width)
            for s in all_sites
        ]
        kept = [(s, b) for s, b in zip(all_sites, site_bits) if b and s.numel > 0]
        if not kept:
            raise TorchFaultError(
                f"bits: the setting {self.bits_spec} leaves no bit of any site to fault "
                f"(bit widths: {sorted({s.bit_width for s in all_sites})}).",
                field="bits",
            )
        self.sites: list[FaultSite] = [s for s, _ in kept]
        self.site_bits: list[tuple[int, ...]] = [b for _, b in kept]
        self.site_numel = np.array([s.numel for s in self.sites], dtype=np.int64)
        self.site_nbits = np.array([len(b) for b in self.site_bits], dtype=np.int64)
        self.site_population = self.site_numel * self.site_nbits
        self._pop_offsets = np.concatenate([[0], np.cumsum(self.site_population)])
        self._bit_table = np.zeros((len(self.sites), int(self.site_nbits.max())), dtype=np.int64)
        for i, b in enumerate(self.site_bits):
            self._bit_table[i, : len(b)] = b
        self.margin = margin
        self.confidence = confidence
        self.n_requested = self._resolve_n(n, margin, confidence)
        self._setup()

    # -- settings ------------------------------------------------------------------------------

    def _resolve_n(
        self, n: int | None, margin: float | None, confidence: float | None
    ) -> int | None:
        if n is not None and margin is not None:
            raise TorchFaultError(
                f"{self.name} sampler: give either n ({n}) or margin ({margin}) and confidence, "
                "not both.",
                field="n",
            )
        if n is not None:
            return _check_int(n, "n", 1)
        if margin is None:
            raise TorchFaultError(
                f"{self.name} sampler: give the number of faults n, or margin and confidence "
                "to size the sample statistically.",
                field="n",
            )
        # validated by sample_size
        sample_size(1, margin, 0.95 if confidence is None else confidence)
        return None

    def _size(self, population: int) -> int:
        """Faults to draw from a stratum of ``population`` pairs (capped at the population)."""
        if self.n_requested is not None:
            return min(self.n_requested, population)
        conf = 0.95 if self.confidence is None else self.confidence
        return sample_size(population, float(self.margin), conf)  # type: ignore[arg-type]

    @abc.abstractmethod
    def _setup(self) -> None:
        """Compute the plan (strata and their sizes); sets ``self._len``."""

    # -- public API ----------------------------------------------------------------------------

    @property
    def population(self) -> int:
        """Total number of ``(element, bit)`` pairs of all sites (after the ``bits`` setting)."""
        return int(self._pop_offsets[-1])

    def __len__(self) -> int:
        return int(self._len)

    def __iter__(self) -> Iterator[tuple[Fault, ...]]:
        step = 4096
        for start in range(0, len(self), step):
            yield from self.draws(start, min(start + step, len(self)))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(runs={len(self)}, population={self.population}, "
            f"sites={len(self.sites)}, seed={self.seed})"
        )

    def _check_range(self, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= len(self)):
            raise TorchFaultError(
                f"{self.name} sampler: fault numbers {start}..{stop - 1} out of range; this plan "
                f"has faults 0..{len(self) - 1}."
            )

    def draw(self, k: int) -> tuple[Fault, ...]:
        """The faults of run ``k`` (a pure function of the seed and ``k``).

        Example:
            >>> from torchfault import FaultSite
            >>> s = create_sampler("exhaustive", sites=[FaultSite("fc", "bias", "parameter", (2,), "float32", 32)])
            >>> s.draw(33)
            (Fault(module='fc', target='bias', index=(1,), bits=(1,), ...),)
        """
        k = _check_int(k, "k", 0)
        self._check_range(k, k + 1)
        return self.draws(k, k + 1)[0]

    def draws(self, start: int, stop: int) -> list[tuple[Fault, ...]]:
        """The faults of runs ``start <= k < stop``, vectorised."""
        self._check_range(start, stop)
        ks = np.arange(start, stop, dtype=np.int64)
        site_idx, element, bit = self._locate(ks)
        return [
            (self._fault(int(s), int(e), (int(b),)),) for s, e, b in zip(site_idx, element, bit)
        ]

    # -- sampling design (what the analysis needs to weight and combine strata) ------------------

    def strata(self) -> dict[Any, int] | None:
        """The fault population of each stratum this sampler draws from, in faults (``None``:
        an unbounded population, as for ``ber``). One stratum ``"all"`` for unstratified
        samplers.

        Example:
            >>> from torchfault import FaultSite
            >>> sites = [FaultSite("fc", "bias", "parameter", (2,), "float32", 32)]
            >>> create_sampler("uniform", sites=sites, n=4).strata()
            {'all': 64}
        """
        return {"all": self.population}

    def stratum_of(self, faults: Sequence[Fault]) -> Any:
        """The stratum (a key of :meth:`strata`) that the faults of one run were drawn from."""
        return "all"

    def strata_index(self, start: int, stop: int) -> np.ndarray:
        """Position in :meth:`strata` of the stratum of runs ``start..stop-1`` (vectorised
        :meth:`stratum_of`)."""
        self._check_range(start, stop)
        return np.zeros(stop - start, dtype=np.int64)

    def _site_of(self, fault: Fault) -> int:
        index = getattr(self, "_site_index", None)
        if index is None:
            index = self._site_index = {(s.module, s.target): i for i, s in enumerate(self.sites)}
        try:
            return index[(fault.module, fault.target)]
        except KeyError:
            raise TorchFaultError(
                f"{self.name} sampler: fault {fault.module}:{fault.target} is in none of its sites."
            ) from None

    def locate(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Site number, flat element index and bit position of single-fault runs ``start..stop-1``."""
        if not self.single_fault:
            raise TorchFaultError(f"{self.name} sampler draws several faults per run; use draws().")
        self._check_range(start, stop)
        return self._locate(np.arange(start, stop, dtype=np.int64))

    def to_dict(self) -> dict[str, Any]:
        """The settings (JSON), enough to rebuild the sampler with the same sites."""
        return {
            "name": self.name,
            "n": self.n_requested,
            "margin": self.margin,
            "confidence": self.confidence,
            "seed": self.seed,
            "fault_model": self.fault_model,
            "bits": self.bits_spec,
            "persistence": self.persistence,
            "params": self.params,
            "runs": len(self),
            "population": self.population,
        }

    # -- helpers ---------------------------------------------------------------------------------

    def _locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fault numbers to (site, element, bit) arrays; single-fault samplers define it."""
        raise TorchFaultError(
            f"the {self.name} sampler draws fault sets, not single faults; use draw(k)."
        )

    def _pairs_to_site(self, pair: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global pair numbers (site by site, element by element, bit by bit) to site/element/bit."""
        site = np.searchsorted(self._pop_offsets, pair, side="right") - 1
        local = pair - self._pop_offsets[site]
        nbits = self.site_nbits[site]
        element = local // nbits
        slot = local % nbits
        return site, element, self._bit_table[site, slot]

    def _fault(self, site: int, element: int, bits: tuple[int, ...]) -> Fault:
        s = self.sites[site]
        index = tuple(int(i) for i in np.unravel_index(element, s.shape)) if s.shape else ()
        return s.fault(
            index,
            () if self.whole_element else bits,
            model=self.fault_model,
            persistence=self.persistence,
            params=self.params,
        )


def register_sampler(
    name: str, *, description: str | None = None, overwrite: bool = False, **capabilities: Any
):
    """Decorator registering a :class:`Sampler` subclass under ``name``.

    Example:
        >>> @register_sampler("first_bit_only", description="Bit 0 of every element, in order.")
        ... class FirstBit(ExhaustiveSampler):
        ...     pass
        >>> is_sampler("first_bit_only")
        True
        >>> SAMPLERS.remove("first_bit_only")
    """

    def deco(cls: type[Sampler]) -> type[Sampler]:
        SAMPLERS.add(name, cls, description=description, overwrite=overwrite, **capabilities)
        if cls.__dict__.get("name") is None:
            cls.name = name
        return cls

    return deco


def list_samplers(filter: str | None = None, **capabilities: Any) -> list[str]:
    """Registered sampler names, optionally filtered by wildcard and capability flags.

    Example:
        >>> list_samplers()
        ['ber', 'exhaustive', 'memory', 'nonzero', 'per_bit', 'per_layer', 'stratified', 'uniform']
        >>> list_samplers(stratified=True)
        ['per_bit', 'per_layer', 'stratified']
    """
    return SAMPLERS.list(filter, **capabilities)


def is_sampler(name: str) -> bool:
    """Whether ``name`` is a registered sampler.

    Example:
        >>> is_sampler("uniform"), is_sampler("random")
        (True, False)
    """
    return SAMPLERS.is_registered(name)


def get_sampler(name: str) -> type[Sampler]:
    """The sampler class registered as ``name``."""
    try:
        return SAMPLERS.get(name)
    except TorchFaultError:
        raise
    except ValueError as exc:
        raise TorchFaultError(str(exc), field="name") from None


def create_sampler(name: str, **kwargs: Any) -> Sampler:
    """Build the sampler ``name`` with its settings (see :class:`Sampler` for the common ones).

    Example:
        >>> from torchfault import FaultSite
        >>> sites = [FaultSite("conv", "output", "activation", (2, 3, 3), "float32", 32)]
        >>> s = create_sampler("uniform", sites=sites, margin=0.05, confidence=0.95, seed=1)
        >>> len(s), s.population
        (231, 576)
        >>> create_sampler("unifrom", sites=sites, n=1)
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: Unknown sampler 'unifrom'. Valid samplers: ber, exhaustive, memory, nonzero, per_bit, per_layer, stratified, uniform. Did you mean 'uniform'?
    """
    cls = get_sampler(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        if "argument" in str(exc):
            raise TorchFaultError(f"Bad settings for sampler {name!r}: {exc}") from None
        raise


@register_sampler(
    "uniform",
    description="Every (element, bit) pair of all sites equally likely; no pair drawn twice.",
    stratified=False,
    multi_fault=False,
)
class UniformSampler(Sampler):
    """Simple random sample (without replacement) of the whole ``(element, bit)`` population.

    Each site is hit with probability proportional to its population. ``n`` (or the sample size
    of the whole population for ``margin``) is capped at the population.
    """

    name = "uniform"

    def _setup(self) -> None:
        self._len = self._size(self.population)
        self._keys = _round_keys(self.seed, 0)

    def _locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._pairs_to_site(_permute(ks, self.population, self._keys))


@register_sampler(
    "per_layer",
    description="Stratified by site: n faults (or a sample sized by margin) in every site.",
    stratified=True,
    multi_fault=False,
)
class PerLayerSampler(Sampler):
    """Stratified sample: ``n`` faults per site (each site's own sample size for ``margin``).

    Runs are laid out site after site: when no site is smaller than ``n``, run ``k`` hits site
    ``k // n``. A site with fewer than ``n`` pairs is covered exhaustively (in random order).
    """

    name = "per_layer"

    def _setup(self) -> None:
        self.strata_sizes = np.array(
            [self._size(int(p)) for p in self.site_population], dtype=np.int64
        )
        self._offsets = np.concatenate([[0], np.cumsum(self.strata_sizes)])
        self._len = int(self._offsets[-1])
        self._keys = [_round_keys(self.seed, i + 1) for i in range(len(self.sites))]

    def strata(self) -> dict[Any, int] | None:
        """One stratum per site, ``"module:target"``."""
        return {f"{s.module}:{s.target}": int(p) for s, p in zip(self.sites, self.site_population)}

    def stratum_of(self, faults: Sequence[Fault]) -> Any:
        s = self.sites[self._site_of(faults[0])]
        return f"{s.module}:{s.target}"

    def strata_index(self, start: int, stop: int) -> np.ndarray:
        return self.locate(start, stop)[0]

    def _locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stratum = np.searchsorted(self._offsets, ks, side="right") - 1
        pair = np.empty_like(ks)
        for s in np.unique(stratum):
            sel = stratum == s
            local = _permute(
                ks[sel] - self._offsets[s], int(self.site_population[s]), self._keys[s]
            )
            pair[sel] = self._pop_offsets[s] + local
        return self._pairs_to_site(pair)


@register_sampler(
    "per_bit",
    description="Stratified by bit position: n faults (or a sample sized by margin) per bit.",
    stratified=True,
    multi_fault=False,
)
class PerBitSampler(Sampler):
    """Stratified sample: ``n`` faults per bit position, over the elements of every site.

    The strata are the allowed bit positions, ascending; the elements of stratum ``b`` are those
    of every site with bit ``b`` (so, with mixed formats, a site of 16-bit numbers is absent from
    the strata of bits 16..31). When no stratum is smaller than ``n``, run ``k`` flips bit
    ``bit_strata[k // n]`` (bit ``k // n`` when all bits are allowed).
    """

    name = "per_bit"

    def _setup(self) -> None:
        if self.whole_element:
            raise TorchFaultError(
                f"per_bit sampler: fault model {self.fault_model!r} replaces whole elements and "
                "has no bit positions to stratify by; use uniform, per_layer or stratified.",
                field="fault_model",
            )
        self.bit_strata: list[int] = sorted({b for bits in self.site_bits for b in bits})
        self._members: list[np.ndarray] = []
        self._member_offsets: list[np.ndarray] = []
        sizes = []
        for b in self.bit_strata:
            members = np.array(
                [i for i, bits in enumerate(self.site_bits) if b in bits], dtype=np.int64
            )
            self._members.append(members)
            self._member_offsets.append(np.concatenate([[0], np.cumsum(self.site_numel[members])]))
            sizes.append(self._size(int(self.site_numel[members].sum())))
        self.strata_sizes = np.array(sizes, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self.strata_sizes)])
        self._len = int(self._offsets[-1])
        self._keys = [_round_keys(self.seed, 1_000_000 + b) for b in self.bit_strata]
        self._strata_population = {
            b: int(offsets[-1]) for b, offsets in zip(self.bit_strata, self._member_offsets)
        }

    def strata(self) -> dict[Any, int] | None:
        """One stratum per bit position (its population: the elements having that bit)."""
        return dict(self._strata_population)

    def stratum_of(self, faults: Sequence[Fault]) -> Any:
        return int(faults[0].bits[0])

    def strata_index(self, start: int, stop: int) -> np.ndarray:
        self._check_range(start, stop)
        return np.searchsorted(self._offsets, np.arange(start, stop), side="right") - 1

    def _locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stratum = np.searchsorted(self._offsets, ks, side="right") - 1
        site = np.empty_like(ks)
        element = np.empty_like(ks)
        bit = np.empty_like(ks)
        for j in np.unique(stratum):
            sel = stratum == j
            offsets = self._member_offsets[j]
            g = _permute(ks[sel] - self._offsets[j], int(offsets[-1]), self._keys[j])
            m = np.searchsorted(offsets, g, side="right") - 1
            site[sel] = self._members[j][m]
            element[sel] = g - offsets[m]
            bit[sel] = self.bit_strata[j]
        return site, element, bit


@register_sampler(
    "exhaustive",
    description="Every bit of every element of the chosen sites, in order.",
    stratified=False,
    multi_fault=False,
)
class ExhaustiveSampler(Sampler):
    """Every ``(element, bit)`` pair once, site by site, element by element, bit by bit.

    Args:
        limit: the largest population accepted (default 10 million); beyond it, use ``uniform``
            with a margin instead, or raise the limit knowingly.
        **kwargs: the common settings of :class:`Sampler`, without ``n`` and ``margin``.
    """

    name = "exhaustive"

    def __init__(
        self,
        sites: Sequence[FaultSite | Mapping[str, Any]],
        *,
        limit: int = EXHAUSTIVE_LIMIT,
        **kwargs: Any,
    ) -> None:
        self.limit = _check_int(limit, "limit", 1)
        super().__init__(sites, **kwargs)

    def _resolve_n(
        self, n: int | None, margin: float | None, confidence: float | None
    ) -> int | None:
        if n is not None or margin is not None:
            raise TorchFaultError(
                "exhaustive sampler: it injects every (element, bit) pair, so n and margin do not "
                f"apply (got n={n!r}, margin={margin!r}); leave them unset or use another sampler.",
                field="n",
            )
        return None

    def _setup(self) -> None:
        if self.population > self.limit:
            raise TorchFaultError(
                f"exhaustive sampler: the population is {self.population:,} (element, bit) pairs, "
                f"more than the limit of {self.limit:,}. Narrow the targets or bits, use the "
                "'uniform' sampler with a margin and confidence, or raise 'limit'."
            )
        self._len = self.population

    def _locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._pairs_to_site(ks)


@register_sampler(
    "ber",
    description="Bit-error rate: per run, Binomial(population, rate) flipped bits in every site.",
    stratified=False,
    multi_fault=True,
)
class BerSampler(Sampler):
    """Bit-error-rate faults: each run flips ``Binomial(population, rate)`` bits of every site.

    The bits of one site are distinct and uniformly placed; the faults of one element are merged
    into one :class:`~torchfault.Fault` with several bits. A run may have no fault at all.

    Args:
        rate: bit-error rate in (0, 1].
        **kwargs: the common settings of :class:`Sampler`; ``n`` is the number of runs
            (``margin`` does not apply).
    """

    name = "ber"
    single_fault = False

    def __init__(
        self, sites: Sequence[FaultSite | Mapping[str, Any]], *, rate: float = 1e-6, **kwargs: Any
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
            raise TorchFaultError(
                f"ber sampler: rate must be a bit-error rate in (0, 1], got {rate!r}.", field="rate"
            )
        self.rate = float(rate)
        super().__init__(sites, **kwargs)

    def _resolve_n(
        self, n: int | None, margin: float | None, confidence: float | None
    ) -> int | None:
        if margin is not None:
            raise TorchFaultError(
                "ber sampler: margin does not apply (a run holds a random number of faults); "
                "give the number of runs n.",
                field="margin",
            )
        if n is None:
            raise TorchFaultError("ber sampler: give the number of runs n.", field="n")
        return _check_int(n, "n", 1)

    def _setup(self) -> None:
        self._len = int(self.n_requested)  # type: ignore[arg-type]

    def strata(self) -> dict[Any, int] | None:
        """``None``: every run draws afresh from an unbounded population of bit patterns."""
        return None

    def expected_faults(self) -> float:
        """Mean number of flipped bits per run."""
        return self.population * self.rate

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "rate": self.rate}

    def draws(self, start: int, stop: int) -> list[tuple[Fault, ...]]:
        self._check_range(start, stop)
        out = []
        for k in range(start, stop):
            rng = np.random.default_rng([self.seed, k])
            counts = rng.binomial(self.site_population, self.rate)
            faults: list[Fault] = []
            for s, count in enumerate(counts):
                if count == 0:
                    continue
                local = np.sort(
                    rng.choice(int(self.site_population[s]), size=int(count), replace=False)
                )
                nb = int(self.site_nbits[s])
                elements = local // nb
                slots = local % nb
                for e in np.unique(elements):
                    bits = tuple(self.site_bits[s][int(j)] for j in slots[elements == e])
                    faults.append(self._fault(s, int(e), bits))
            out.append(tuple(faults))
        return out
