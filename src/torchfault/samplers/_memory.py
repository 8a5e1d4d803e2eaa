# SPDX-License-Identifier: MIT
"""The ``memory`` sampler: physical faults drawn over a model's memory cells.

The chosen stored tensors (weights, biases, buffers: the campaign's sites) are laid out in one
memory by a :class:`~torchfault.faults.MemoryLayout` (:class:`~torchfault.faults.MemoryMap`).
Fault ``k`` is :meth:`MemoryMap.draw(k, seed) <torchfault.faults.MemoryMap.draw>`: a pattern
drawn from the pattern mix by frequency, its anchor uniform over the cells where it fits (with
replacement), a pure function of ``(seed, k)``. It is resolved on the model's current tensors to
its fault set (:meth:`~torchfault.faults.MemoryMap.fault_set`): the element bit flips,
with the word's ECC decoder on (``ecc=True``) or off. A fault the decoder corrected is an empty
fault set (the run is ``masked``); one it detected but could not correct is its raw flips under
the ``ecc_detected`` fault model (no bits when only check bits flipped), which a campaign
records as ``detected`` without running; a fault in cells that hold no data (the end of a tensor's last row) is empty too.

The population is the memory's cells (``rows x columns``, check bits and unused cells
included), so ``margin`` sizes the sample over cells and a rate is a probability per upset:
the model's FIT is ``fit_per_mbit x mbit x rate`` (:meth:`MemorySampler.fit`). The same seed
and layout with ``ecc`` true and false draw the same physical faults, so two campaigns give
the rates with and without the decoder on the same faults.

Example:
    >>> import torch.nn as nn
    >>> from torchfault import fault_space
    >>> from torchfault.samplers import create_sampler
    >>> m = nn.Linear(4, 2)
    >>> sites = fault_space(m, kinds=["weights", "biases"])
    >>> s = create_sampler("memory", sites=sites, model=m, n=10, seed=0,
    ...                    layout={"width": 72, "ecc": "secded"}, patterns="adjacent_bits:2")
    >>> s.population, len(s), s.resolve(3).status
    (360, 10, 'detected')
    >>> {f.model for f in s.draw(3)}
    {'ecc_detected'}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.faults import (
    Fault,
    FaultSite,
    MemoryFault,
    MemoryLayout,
    MemoryMap,
    MemoryResolution,
    PatternMix,
)
from torchfault.samplers._samplers import Sampler, _check_int, register_sampler

__all__ = ["MemorySampler"]


@register_sampler(
    "memory",
    description="Physical memory faults (pattern mix, layout, ECC) uniform over memory cells.",
    stratified=False,
    multi_fault=True,
    needs_model=True,
)
class MemorySampler(Sampler):
    """Physical memory faults over the cells of the sites' memory (see the module docstring).

    Args:
        sites: stored-tensor sites (``fault_space`` with kinds ``weights``, ``biases``,
            ``buffers`` or ``parameters``); activations are refused.
        model: the model whose tensors the sites name (read when a fault is resolved).
        layout: a :class:`~torchfault.faults.MemoryLayout` or a dict of its fields (``width``,
            ``format``, ``order``, ``ecc``, ``interleave``, ``row_words``, ``tile``).
        patterns: a pattern spec or ``{pattern: relative frequency}`` (read in the order of the
            pattern labels, so the faults do not depend on the order the mapping is written in;
            :func:`~torchfault.injectors.memory_campaign` takes them in the order given).
        op: what the cells do: ``flip``, ``stuck_at_0`` or ``stuck_at_1``.
        ecc: decode the words with the layout's code (``False``: the check bits are ignored).
        **kwargs: ``n`` or ``margin``/``confidence`` (over cells), ``seed``, ``persistence``.
            ``fault_model``, ``bits`` and ``params`` do not apply (the op and the layout decide).
    """

    name = "memory"
    single_fault = False

    def __init__(
        self,
        sites: Sequence[FaultSite | Mapping[str, Any]],
        *,
        model: nn.Module,
        layout: MemoryLayout | Mapping[str, Any] | None = None,
        patterns: PatternMix | Mapping[Any, float] | str = "single",
        op: str = "flip",
        ecc: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TorchFaultError(
                f"memory sampler: model must be the nn.Module the sites belong to, got "
                f"{type(model).__name__}.",
                field="model",
            )
        for key, default in (("fault_model", "bit_flip"), ("bits", None), ("params", None)):
            if kwargs.get(key, default) not in (default, {}):
                raise TorchFaultError(
                    f"memory sampler: {key} does not apply ({kwargs[key]!r}): the memory's op "
                    f"(flip, stuck_at_0, stuck_at_1) and layout decide which bits a fault "
                    f"flips; leave {key} unset.",
                    field=key,
                )
        try:
            MemoryFault(0, 0, op=op)  # checks op, naming the valid ones
        except TorchFaultError as exc:
            raise TorchFaultError(f"memory sampler: {exc}", field="memory") from None
        if not isinstance(ecc, bool):
            raise TorchFaultError(
                f"memory sampler: ecc must be true or false, got {ecc!r}.", field="memory"
            )
        self.model, self.op, self.ecc = model, op, ecc
        try:
            self.layout = (
                layout
                if isinstance(layout, MemoryLayout)
                else MemoryLayout.from_dict(dict(layout or {}))
            )
            mix = patterns if isinstance(patterns, PatternMix) else PatternMix(patterns)
            # in the order of the labels: fault k must not depend on how a mapping is written
            # (a YAML round trip or --print_config sorts its keys)
            self.mix = PatternMix(dict(sorted(mix.probabilities.items())))
        except (TypeError, ValueError) as exc:
            raise TorchFaultError(f"memory sampler: {exc}", field="memory") from None
        super().__init__(sites, **kwargs)

    def _setup(self) -> None:
        acts = [s.name for s in self.sites if s.kind not in ("parameter", "buffer")]
        if acts:
            raise TorchFaultError(
                f"memory sampler: the sites {acts[:5]} are activations; a memory holds stored "
                "tensors: set the targets' kinds to weights, biases, buffers or parameters.",
                field="targets.kinds",
            )
        try:
            self.memory = MemoryMap(self.model, self.layout, sites=self.sites)
            for p in self.mix.patterns:  # a pattern that cannot fit: an error now, not at draw k
                if min(p.anchors(self.memory.rows, self.memory.columns)) < 1:
                    raise TorchFaultError(
                        f"pattern {p.label!r} does not fit in the memory ({self.memory.rows} "
                        f"rows x {self.memory.columns} columns)."
                    )
        except (TypeError, ValueError) as exc:
            raise TorchFaultError(f"memory sampler: {exc}", field="memory") from None
        for site, region in zip(self.sites, self.memory.regions):
            # the layout's format is the storage format; without one, each tensor's dtype is,
            # and a targets format that differs from it has no memory to live in
            if self.layout.format is None and site.format != region.memory.fmt.name:
                raise TorchFaultError(
                    f"memory sampler: site {site.name} is seen as {site.format!r} but stored "
                    f"as {region.memory.fmt.name!r}; give the storage format as the layout's "
                    "format (memory.layout.format), not as the targets' format.",
                    field="memory",
                )
        self._len = self._size(self.population)

    @property
    def population(self) -> int:
        """Cells of the memory (rows x columns: data, check bits and unused cells)."""
        memory = getattr(self, "memory", None)
        return super().population if memory is None else memory.cells

    @property
    def mbit(self) -> float:
        """The memory's size in Mbit (2**20 cells)."""
        return self.memory.mbit

    def fit(self, fit_per_mbit: float, rate: float) -> float:
        """The model's FIT for an outcome of probability ``rate`` per upset at a raw upset rate
        of ``fit_per_mbit`` (FIT per Mbit): ``fit_per_mbit x mbit x rate``."""
        return self.memory.fit(fit_per_mbit, rate)

    def physical(self, k: int) -> MemoryFault:
        """Physical fault number ``k`` (pure function of the seed and ``k``)."""
        k = _check_int(k, "k", 0)
        self._check_range(k, k + 1)
        persistence = self.persistence
        return self.memory.draw(k, self.seed, self.mix, op=self.op, persistence=persistence)

    def resolve(self, k: int) -> MemoryResolution:
        """Fault ``k`` resolved on the model's current tensors: cells, element faults with the
        decoder off and on, and the decoder's status."""
        return self.memory.resolve(self.physical(k))

    def draws(self, start: int, stop: int) -> list[tuple[Fault, ...]]:
        """The fault sets of runs ``start <= k < stop`` (see the module docstring)."""
        self._check_range(start, stop)
        return [self.memory.fault_set(self.resolve(k), self.ecc) for k in range(start, stop)]

    def to_dict(self) -> dict[str, Any]:
        """The settings (JSON), with the memory's size."""
        return {
            **super().to_dict(),
            "layout": self.layout.to_dict(),
            "patterns": self.mix.probabilities,
            "op": self.op,
            "ecc": self.ecc,
            "cells": self.population,
            "mbit": self.mbit,
        }
