# SPDX-License-Identifier: MIT
"""The ``nonzero`` sampler: single-bit faults over the unpruned elements of a pruned model.

The registered, configurable form of :class:`~torchfault.faults.NonzeroFaults`: the population
is the (unpruned element, allowed bit) pairs of the sites (stored tensors), where an element is
unpruned when its pruning mask is non-zero (``<name>_orig`` with a ``<name>_mask`` buffer), else
when it is non-zero itself (:func:`~torchfault.faults.unpruned_index`, read once when the
sampler is built). Fault ``k`` is drawn as :class:`~torchfault.faults.NonzeroFaults` draws it
(``numpy.random.default_rng([seed, k])``, with replacement), a pure function of ``(seed, k)``,
so the two give the same faults for the same tensors and seed. ``bits`` takes positions and
field names as every sampler does; ``margin`` sizes the sample over the unpruned pairs.

The pruning masks themselves are a target kind (``masks``: buffers named ``*_mask``); on them,
``nonzero`` draws over the kept mask entries.

Example:
    >>> import torch, torch.nn as nn
    >>> from torchfault import fault_space
    >>> from torchfault.samplers import create_sampler
    >>> m = nn.Linear(4, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 3.0]]))
    >>> s = create_sampler("nonzero", sites=fault_space(m, kinds="weights"), model=m, n=5)
    >>> s.population, all(f.index in {(0, 1), (1, 0), (1, 3)} for (f,) in s)
    (96, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.faults import FaultSite, unpruned_index
from torchfault.samplers._samplers import Sampler, register_sampler

__all__ = ["NonzeroSampler"]


@register_sampler(
    "nonzero",
    description="Single-bit faults over the unpruned (non-zero or mask-kept) elements only.",
    stratified=False,
    multi_fault=False,
    needs_model=True,
)
class NonzeroSampler(Sampler):
    """Single-bit faults over the unpruned elements of stored tensors (module docstring).

    Args:
        sites: stored-tensor sites (activations are refused; sparse index components skipped).
        model: the model whose tensors the sites name.
        **kwargs: the common settings of :class:`~torchfault.samplers.Sampler`.
    """

    name = "nonzero"

    def __init__(
        self,
        sites: Sequence[FaultSite | Mapping[str, Any]],
        *,
        model: nn.Module,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TorchFaultError(
                f"nonzero sampler: model must be the nn.Module the sites belong to, got "
                f"{type(model).__name__}.",
                field="model",
            )
        self.model = model
        super().__init__(sites, **kwargs)

    def _setup(self) -> None:
        acts = [s.name for s in self.sites if s.kind not in ("parameter", "buffer")]
        if acts:
            raise TorchFaultError(
                f"nonzero sampler: the sites {acts[:5]} are activations; only stored tensors "
                "are pruned: set the targets' kinds to weights, biases, masks, buffers or "
                "parameters.",
                field="targets.kinds",
            )
        keep, index = [], []
        for i, s in enumerate(self.sites):
            comp = s.target.partition(".")[2]
            if comp and comp != "values":
                continue  # a sparse tensor's indices: not weights
            idx = unpruned_index(self.model, s.module, s.target)
            if idx.size:
                keep.append(i)
                index.append(idx)
        if not keep:
            raise TorchFaultError(
                f"nonzero sampler: no unpruned element in the sites "
                f"{[s.name for s in self.sites][:5]}.",
                field="targets.kinds",
            )
        self.sites = [self.sites[i] for i in keep]
        self.site_bits = [self.site_bits[i] for i in keep]
        self.index = index
        self.site_nbits = np.array([len(b) for b in self.site_bits], dtype=np.int64)
        sizes = np.array([i.size for i in index], dtype=np.int64) * self.site_nbits
        self._nz_offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._len = self._size(self.population)

    @property
    def population(self) -> int:
        """Number of (unpruned element, allowed bit) pairs."""
        offsets = getattr(self, "_nz_offsets", None)
        return super().population if offsets is None else int(offsets[-1])

    def _locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pop = self.population
        pair = np.array(
            [int(np.random.default_rng([self.seed, int(k)]).integers(pop)) for k in ks],
            dtype=np.int64,
        )
        site = np.searchsorted(self._nz_offsets, pair, side="right") - 1
        local = pair - self._nz_offsets[site]
        nb = self.site_nbits[site]
        element = np.array(
            [int(self.index[s][j]) for s, j in zip(site.tolist(), (local // nb).tolist())],
            dtype=np.int64,
        )
        bit = np.array(
            [self.site_bits[s][j] for s, j in zip(site.tolist(), (local % nb).tolist())],
            dtype=np.int64,
        )
        return site, element, bit
