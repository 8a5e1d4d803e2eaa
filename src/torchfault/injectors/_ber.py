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
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchfault import numerics
from torchfault.errors import TorchFaultError
from torchfault.faults import (
    ModuleSelector,
    is_packed,
    iter_tensors,
    normalize_kinds,
    replace_element,
    select_modules,
    set_packed,
    stored_tensors,
    tensor_kind,
)
from torchfault.injectors._apply import apply_masks
from torchfault.injectors._words import may_write

__all__ = ["inject_ber", "BERInjection", "draw_flips"]


def _positions(total: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted distinct positions in ``0..total-1``, each present independently with ``rate``.

    A Bernoulli process drawn by its gaps: a gap is geometric, ``floor(E / -log(1 - rate)) + 1``
    with ``E`` standard exponential. The count is then exactly ``Binomial(total, rate)``, the
    positions are sorted and distinct by construction, and the cost grows with the number of
    flips, not with ``total``. Dense rates draw one uniform number per position instead.
    """
    if total <= 0 or rate <= 0.0:
        return np.empty(0, dtype=np.int64)
    if rate >= 1.0:
        return np.arange(total, dtype=np.int64)
    if rate >= 0.25:
        return np.flatnonzero(rng.random(total) < rate).astype(np.int64)
    scale = -1.0 / math.log1p(-rate)
    mean = total * rate
    chunks: list[np.ndarray] = []
    start = -1  # the position before the next gap
    while True:
        size = (
            int(mean + 6.0 * math.sqrt(mean) + 16)
            if not chunks
            else int(6.0 * math.sqrt(mean) + 16)
        )
        gaps = rng.standard_exponential(size)
        gaps *= scale
        pos = gaps.astype(np.int64)
        pos += 1
        np.cumsum(pos, out=pos)
        pos += start
        if pos[-1] >= total:
            chunks.append(pos[: int(np.searchsorted(pos, total))])
            break
        chunks.append(pos)
        start = int(pos[-1])
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _draw(
    numel: int, width: int, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(sorted unique element indices, int64 masks, number of flipped bits)``, as numpy arrays."""
    pos = _positions(numel * width, rate, rng)
    if pos.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, 0
    if width & (width - 1) == 0:  # a power of two: shift and mask
        shift = width.bit_length() - 1
        elem, bit = pos >> shift, pos & (width - 1)
    else:
        elem, bit = np.divmod(pos, width)
    masks = np.left_shift(np.int64(1), bit)
    # positions are sorted, so the bits of one element are neighbours; a repeat is rare at low
    # rates, so fold each repeat into the first position of its element
    rep = np.flatnonzero(elem[1:] == elem[:-1])
    if rep.size == 0:
        return elem, masks, int(pos.size)
    rep += 1
    keep = np.ones(elem.size, dtype=bool)
    keep[rep] = False
    head = rep - 1
    while True:  # a third bit of one element points at a repeat: walk back to the first
        back = ~keep[head]
        if not back.any():
            break
        head[back] -= 1
    # distinct bits of one element: their sum is their OR (int64 wraps at bit 63)
    np.add.at(masks, head, masks[rep])
    return elem[keep], masks[keep], int(pos.size)


def draw_flips(
    numel: int, width: int, rate: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw flips for one tensor: ``(sorted unique flat element indices, int64 XOR masks)``.

    Every one of the ``numel * width`` bits flips independently with probability ``rate``, so
    the number of flipped bits is ``Binomial(numel * width, rate)`` and the flipped (element,
    bit) positions are distinct; the bits flipped in one element are combined into its mask.
    The cost grows with the number of flips, not with the size of the tensor.

    Example:
        >>> idx, masks = draw_flips(1000, 32, 0.01, np.random.default_rng(0))
        >>> bool((idx.diff() > 0).all()), masks.dtype
        (True, torch.int64)
    """
    if not 0.0 <= float(rate) <= 1.0:
        raise TorchFaultError(f"draw_flips: rate must be in [0, 1], got {rate!r}.")
    idx, masks, _ = _draw(int(numel), int(width), float(rate), rng)
    return torch.from_numpy(idx), torch.from_numpy(masks)


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
            raise TorchFaultError(
                f"inject_ber: persistence must be 'transient' or 'permanent', got {persistence!r}."
            )
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
        self._ptrs: dict[nn.Module, set[int]] = {}
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
                    wanted = any(k in self.kinds for k in tensor_kind(pname, pkind))
                    if not wanted or t.dtype == torch.bool or t.numel() == 0:
                        continue
                    fmt = self._fmt(t)
                    idx, masks, count = _draw(t.numel(), fmt.width, self.rate, self.rng)
                    if count == 0:
                        continue
                    self.flips += count
                    new = apply_masks(t.detach(), idx, masks, "xor", fmt, merged=True)
                    if is_packed(mod, pname):
                        self._saved.append(("packed", mod, pname, t))
                        set_packed(mod, pname, new)
                    else:
                        own = numerics.format_of(t)
                        at = torch.from_numpy(idx)
                        self._saved.append(
                            ("words", t, at, numerics.read_elements(t.data, at, own), own)
                        )
                        numerics.apply_bits_(
                            t.data, at, numerics.read_elements(new, at, own), "set", own
                        )
                if "outputs" in self.kinds:
                    self._handles.append(
                        mod.register_forward_hook(lambda m, a, o: self._flip_all(o, m, a))
                    )
                if "inputs" in self.kinds:
                    # an input belongs to whoever produced it (a residual branch may read it too)
                    self._handles.append(
                        mod.register_forward_pre_hook(lambda m, a: self._flip_all(a))
                    )
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

    def _flip_all(self, obj: Any, module: nn.Module | None = None, inputs: Any = None) -> Any:
        """Flip bits in every tensor of a module's output (``module`` given) or input."""
        if self._spent:
            return None
        changed = False
        for element, t in iter_tensors(obj):
            if t.dtype == torch.bool or t.numel() == 0 or t.is_complex():
                continue
            fmt = self._fmt(t)
            idx, masks, count = _draw(t.numel(), fmt.width, self.rate, self.rng)
            if count == 0:
                continue
            self.flips += count
            self.last_flips += count
            own = module is not None and may_write(t, module, inputs, self._ptrs)
            # the positions are distinct and sorted: already merged
            new = apply_masks(t, idx, masks, "xor", fmt, merged=True, inplace=own)
            if new is not t:
                obj = replace_element(obj, element, new)
                changed = True
        return obj if changed else None

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
    inj = BERInjection(
        model, rate, modules=modules, kinds=kinds, format=format, seed=seed, persistence=persistence
    )
    inj.attach()
    try:
        yield inj
    finally:
        inj.remove()
