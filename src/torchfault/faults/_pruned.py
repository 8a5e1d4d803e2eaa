# SPDX-License-Identifier: MIT
"""Faults on the weights a pruned model still uses: :class:`NonzeroFaults`.

A pruned model keeps its pruned weights as zeros (``prune.remove``), or as ``weight_orig`` times a
``weight_mask`` buffer (``torch.nn.utils.prune`` before ``remove``). A uniform sample over every
element spends most faults on weights that hardware which skips zeros never stores.
:class:`NonzeroFaults` draws single-bit faults uniformly over the (unpruned element, bit) pairs
of the chosen tensors: an element is unpruned when its mask is non-zero (``<name>_orig`` with a
``<name>_mask`` buffer), else when it is non-zero itself; a sparse tensor's ``values`` are all
stored, so all count. Fault ``k`` is a pure function of ``(seed, k)`` (drawn with replacement).
The masks themselves are buffers (``kinds="buffers"``), a target like any other.

Example:
    >>> import torch, torch.nn as nn
    >>> m = nn.Linear(4, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 3.0]]))
    >>> s = NonzeroFaults(m, n=5, seed=0)
    >>> s.population, len(s)   # 3 unpruned weights x 32 bits
    (96, 5)
    >>> all(f.index in {(0, 1), (1, 0), (1, 3)} for (f,) in s.draws(0, 5))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.faults._access import get_stored
from torchfault.faults._fault import PERSISTENCES, Fault, FaultSite
from torchfault.faults._space import TargetSpec, fault_space

__all__ = ["NonzeroFaults", "unpruned_index"]


def unpruned_index(model: nn.Module, module: str, target: str) -> np.ndarray:
    """Flat (row-major) indices of the unpruned elements of ``module``:``target``.

    Example:
        >>> m = nn.Linear(3, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = m.weight.copy_(torch.tensor([[0.0, 5.0, -1.0]]))
        >>> unpruned_index(m, "", "weight").tolist()
        [1, 2]
    """
    mod = dict(model.named_modules())[module]
    t = get_stored(mod, target)
    if t is None:
        raise TorchFaultError(f"unpruned_index: {module}:{target} is not a stored tensor.")
    mask = None
    if target.endswith("_orig"):
        mask = getattr(mod, target[: -len("_orig")] + "_mask", None)
    ref = mask if isinstance(mask, torch.Tensor) else t
    if ref.is_quantized:
        ref = ref.dequantize()  # zero exactly where the integer is the zero point
    return torch.nonzero(ref.detach().reshape(-1) != 0).reshape(-1).cpu().numpy()


class NonzeroFaults:
    """Single-bit faults over the unpruned elements of a model's stored tensors.

    Args:
        model: the (pruned) model.
        n: number of faults (runs).
        seed: campaign seed.
        modules, kinds: which tensors, as :func:`torchfault.fault_space` selects them (stored
            tensors; sparse index components are left out: they are not weights).
        bits: allowed bit positions (default: every bit of the format).
        fault_model, persistence: put in every fault.
    """

    single_fault = True

    def __init__(
        self,
        model: nn.Module,
        *,
        n: int,
        seed: int = 0,
        modules: Any = None,
        kinds: Sequence[str] | str = ("weights",),
        bits: Sequence[int] | None = None,
        fault_model: str = "bit_flip",
        persistence: str = "permanent",
    ) -> None:
        for name, v, low in (("n", n, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TorchFaultError(
                    f"NonzeroFaults {name} must be an integer >= {low}, got {v!r}."
                )
        if persistence not in PERSISTENCES:
            raise TorchFaultError(
                f"NonzeroFaults persistence must be one of {PERSISTENCES}, got {persistence!r}."
            )
        spec = TargetSpec(
            modules=modules, kinds=(kinds,) if isinstance(kinds, str) else tuple(kinds)
        )
        if any(k in ("outputs", "inputs") for k in spec.kinds):
            raise TorchFaultError(
                f"NonzeroFaults kinds {spec.kinds}: only stored tensors (weights, biases, "
                "buffers, parameters) can be pruned."
            )
        self.n, self.seed, self.fault_model, self.persistence = n, seed, fault_model, persistence
        self.sites: list[FaultSite] = []
        self.index: list[np.ndarray] = []
        self.bits: list[np.ndarray] = []
        for site in fault_space(model, targets=spec):
            comp = site.target.partition(".")[2]
            if comp and comp != "values":
                continue  # a sparse tensor's indices
            idx = unpruned_index(model, site.module, site.target)
            allowed = np.arange(site.bit_width) if bits is None else np.array(sorted(set(bits)))
            if allowed.size and (allowed.min() < 0 or allowed.max() >= site.bit_width):
                raise TorchFaultError(
                    f"NonzeroFaults bits {list(bits or [])} are outside {site.name}'s "
                    f"{site.bit_width}-bit format {site.format!r} (0..{site.bit_width - 1})."
                )
            if idx.size:
                self.sites.append(site)
                self.index.append(idx)
                self.bits.append(allowed)
        if not self.sites:
            raise TorchFaultError(
                f"NonzeroFaults: no unpruned element in the tensors selected by modules="
                f"{modules!r}, kinds={spec.kinds}."
            )
        sizes = np.array([i.size * b.size for i, b in zip(self.index, self.bits)], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])

    @property
    def population(self) -> int:
        """Number of (unpruned element, bit) pairs."""
        return int(self._offsets[-1])

    def __len__(self) -> int:
        return self.n

    def draw(self, k: int) -> tuple[Fault, ...]:
        """The fault of run ``k`` (pure function of the seed and ``k``)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.n:
            raise TorchFaultError(f"NonzeroFaults: fault number {k!r} is outside 0..{self.n - 1}.")
        rng = np.random.default_rng([self.seed, k])
        pair = int(rng.integers(self.population))
        s = int(np.searchsorted(self._offsets, pair, side="right") - 1)
        local = pair - int(self._offsets[s])
        nb = self.bits[s].size
        site = self.sites[s]
        flat = int(self.index[s][local // nb])
        index = tuple(int(i) for i in np.unravel_index(flat, site.shape)) if site.shape else ()
        bit = int(self.bits[s][local % nb])
        return (site.fault(index, (bit,), model=self.fault_model, persistence=self.persistence),)

    def draws(self, start: int, stop: int) -> list[tuple[Fault, ...]]:
        """The faults of runs ``start <= k < stop``."""
        return [self.draw(k) for k in range(start, stop)]
