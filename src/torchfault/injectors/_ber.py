# SPDX-License-Identifier: MIT
"""Many faults at once: bit flips at a bit-error rate, one vectorised operation per tensor.

For each targeted tensor of ``N`` elements of ``w`` bits, the number of flipped bits is drawn from
``Binomial(N * w, rate)``, the flipped (element, bit) positions uniformly without repetition, and
the flips are applied with one XOR scatter. Parameters and buffers are flipped once on entry
(restored bit for bit on exit, or after the next forward pass when ``transient``); activations
get fresh flips at every forward pass (only the next one when ``transient``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchfault import numerics
from torchfault.errors import TorchFaultError
from torchfault.faults import iter_tensors, replace_element
from torchfault.faults._access import is_packed, set_packed, stored_tensors
from torchfault.faults._targets import ModuleSelector, normalize_kinds, select_modules

__all__ = ["inject_ber", "BERInjection", "draw_flips"]


def draw_flips(
    numel: int, width: int, rate: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw flips for one tensor: ``(unique flat element indices, int64 XOR masks)``.

    The count is ``Binomial(numel * width, rate)``; positions are distinct (element, bit) pairs.

    Example:
        >>> idx, masks = draw_flips(1000, 32, 0.01, np.random.default_rng(0))
        >>> bool((idx.diff() > 0).all()), masks.dtype
        (True, torch.int64)
    """
    total = numel * width
    count = int(rng.binomial(total, rate)) if total else 0
    if count == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    if count * 4 < total:
        # sparse: draw with replacement, then top up the few duplicates
        pos = np.unique(rng.integers(0, total, size=count))
        while pos.size < count:
            pos = np.unique(np.concatenate([pos, rng.integers(0, total, size=count - pos.size)]))
    else:
        pos = rng.choice(total, size=count, replace=False)
    pos_t = torch.from_numpy(np.asarray(pos, dtype=np.int64))
    elem, bit = pos_t // width, pos_t % width
    uniq, inv = torch.unique(elem, return_inverse=True)
    masks = torch.zeros(uniq.numel(), dtype=torch.int64)
    # distinct bits of one element: their sum is their OR (two's complement wrap covers bit 63)
    masks.scatter_add_(0, inv, torch.ones_like(bit) << bit)
    return uniq, masks


class BERInjection:
    """Bit flips at a bit-error rate in chosen tensors of a model; ``remove()`` undoes them.

    Attributes:
        flips: bits flipped so far (parameters at entry plus activations per pass).
        last_flips: bits flipped in activations during the last forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        rate: float,
        *,
        modules: ModuleSelector | Sequence[ModuleSelector] | None = None,
        kinds: Sequence[str] | str | None = None,
        format: str | None = None,
        seed: int | None = None,
        persistence: str = "permanent",
    ) -> None:
        if not 0.0 <= float(rate) <= 1.0:
            raise TorchFaultError(f"inject_ber: rate must be in [0, 1], got {rate!r}.")
        if persistence not in ("transient", "permanent"):
            raise TorchFaultError(f"inject_ber: persistence must be 'transient' or 'permanent', got {persistence!r}.")
        self.model, self.rate, self.format = model, float(rate), format
        self.transient = persistence == "transient"
        self.kinds = normalize_kinds(kinds)
        self.modules = select_modules(model, modules)
        if format is not None:
            numerics.get_format(format)
        self.rng = np.random.default_rng(seed)
        self.flips = 0
        self.last_flips = 0
        self._handles: list[Any] = []
        self._saved: list[tuple[Any, ...]] = []
        self._spent = False

    def _fmt(self, t: torch.Tensor) -> numerics.NumberFormat:
        fmt = numerics.get_format(self.format, t)
        numerics.check_compatible(fmt, t)
        return fmt

    @torch.no_grad()
    def attach(self) -> BERInjection:
        try:
            for _name, mod in self.modules:
                for pname, (pkind, t) in stored_tensors(mod).items():
                    wanted = (
                        (pkind == "buffer" and "buffers" in self.kinds)
                        or (pkind == "parameter" and "parameters" in self.kinds)
                        or (pname == "weight" and pkind == "parameter" and "weights" in self.kinds)
                        or (pname == "bias" and pkind == "parameter" and "biases" in self.kinds)
                    )
                    if not wanted or t.dtype == torch.bool or t.numel() == 0:
                        continue
                    fmt = self._fmt(t)
                    idx, masks = draw_flips(t.numel(), fmt.width, self.rate, self.rng)
                    if idx.numel() == 0:
                        continue
                    self.flips += int(_popcount(masks))
                    new = numerics.apply_bits(t.detach(), idx, masks, "xor", fmt)
                    if is_packed(mod, pname):
                        self._saved.append(("packed", mod, pname, t))
                        set_packed(mod, pname, new)
                    else:
                        own = numerics.format_of(t)
                        self._saved.append(("words", t, idx, numerics.read_elements(t.data, idx, own), own))
                        numerics.apply_bits_(t.data, idx, numerics.read_elements(new, idx, own), "set", own)
                if "outputs" in self.kinds:
                    self._handles.append(mod.register_forward_hook(lambda m, a, o: self._flip_all(o)))
                if "inputs" in self.kinds:
                    self._handles.append(mod.register_forward_pre_hook(lambda m, a: self._flip_all(a)))
            self._handles.insert(0, self.model.register_forward_pre_hook(self._begin, prepend=True))
            self._handles.append(self.model.register_forward_hook(self._end))
        except BaseException:
            self.remove()
            raise
        return self

    def _begin(self, module: nn.Module, args: Any) -> None:
        self.last_flips = 0

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.transient:
            self._spent = True
            self._restore()

    def _flip_all(self, obj: Any) -> Any:
        if self._spent:
            return None
        for element, t in iter_tensors(obj):
            if t.dtype == torch.bool or t.numel() == 0 or t.is_complex():
                continue
            fmt = self._fmt(t)
            idx, masks = draw_flips(t.numel(), fmt.width, self.rate, self.rng)
            if idx.numel():
                n = int(_popcount(masks))
                self.flips += n
                self.last_flips += n
                obj = replace_element(obj, element, numerics.apply_bits(t, idx, masks, "xor", fmt))
        return obj

    @torch.no_grad()
    def _restore(self) -> None:
        for item in reversed(self._saved):
            if item[0] == "packed":
                set_packed(item[1], item[2], item[3])
            else:
                _, t, idx, saved, own = item
                numerics.apply_bits_(t.data, idx, saved, "set", own)
        self._saved.clear()

    def remove(self) -> None:
        """Remove every hook and restore every parameter and buffer bit for bit."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._restore()

    def __enter__(self) -> BERInjection:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _popcount(masks: torch.Tensor) -> torch.Tensor:
    m = masks.clone()
    count = torch.zeros((), dtype=torch.int64)
    for _ in range(64):
        count += (m & 1).sum()
        m = m >> 1
        m &= (1 << 63) - 1  # arithmetic shift: clear the sign copies
    return count


@contextlib.contextmanager
def inject_ber(
    model: nn.Module,
    rate: float,
    *,
    modules: ModuleSelector | Sequence[ModuleSelector] | None = None,
    kinds: Sequence[str] | str | None = None,
    format: str | None = None,
    seed: int | None = None,
    persistence: str = "permanent",
) -> Iterator[BERInjection]:
    """Flip bits at bit-error rate ``rate`` in the chosen tensors inside a ``with`` block.

    Args:
        model: any ``nn.Module``.
        rate: probability that any one stored bit flips.
        modules: module selectors (names, ``re:`` regexes, types, functions); default every leaf.
        kinds: tensor kinds (``outputs``, ``inputs``, ``weights``, ``biases``, ``buffers``,
            ``parameters``); default outputs, weights and biases.
        format: number format to see elements in (default: each tensor's dtype).
        seed: seed of the flip positions.
        persistence: ``permanent`` (until the block ends) or ``transient`` (next forward pass).

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Linear(100, 100)
        >>> before = model.weight.detach().clone()
        >>> with inject_ber(model, 1e-3, kinds="weights", seed=0) as ber:
        ...     changed = int((model.weight != before).sum())
        >>> ber.flips > 0 and changed > 0, torch.equal(model.weight, before)
        (True, True)
    """
    inj = BERInjection(model, rate, modules=modules, kinds=kinds, format=format, seed=seed, persistence=persistence)
    inj.attach()
    try:
        yield inj
    finally:
        inj.remove()
