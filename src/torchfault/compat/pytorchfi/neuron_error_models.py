# SPDX-License-Identifier: MIT
"""pytorchfi 0.6's ``neuron_error_models`` on torchfault: random neuron faults and the 8-bit
single-bit-flip model.

Every function makes the same calls to Python's ``random`` module, in the same order, as
pytorchfi's, so after ``random.seed(s)`` the same locations, values and bits are drawn and the
corrupted outputs are bit-identical. The one change in drawing: a layer with 5-d outputs
(``Conv3d``) also draws its last coordinate (``random_neuron_location`` then returns 5 values),
where pytorchfi draws 3 and injects nothing.

:class:`single_bit_flip_func` keeps pytorchfi's error model: the value is seen as a signed
``bits``-bit integer scaled by the layer's range (``set_conv_max``), one random bit of it is
flipped and the result scaled back. It is not an IEEE bit flip; for those, declare
``flip_bits=[...]`` (see :mod:`torchfault.compat.pytorchfi.core`). pytorchfi fails
(``AssertionError``) or wraps around for a value beyond the layer's range; here it saturates to
the integer range first, as a quantizer does.

Example:
    >>> import random, torch, torch.nn as nn
    >>> from torchfault.compat.pytorchfi import core, neuron_error_models as nem
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()
    >>> pfi = core.fault_injection(model, 2, input_shape=[1, 5, 5], use_cuda=False)
    >>> random.seed(1)
    >>> bad = nem.random_neuron_inj(pfi, min_val=5, max_val=6)
    >>> [pfi.corrupt_batch, pfi.corrupt_layer, pfi.corrupt_dim1, pfi.corrupt_dim2, pfi.corrupt_dim3]
    [[0], [0], [1], [0], [1]]
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from torchfault.compat.pytorchfi import core
from torchfault.compat.pytorchfi._corrupted import CorruptedModel
from torchfault.compat.pytorchfi.util import random, random_value

__all__ = [
    "random_batch_element",
    "random_inj_per_layer",
    "random_inj_per_layer_batched",
    "random_neuron_inj",
    "random_neuron_inj_batched",
    "random_neuron_location",
    "random_neuron_single_bit_inj",
    "random_neuron_single_bit_inj_batched",
    "random_value",
    "single_bit_flip_func",
]

log = logging.getLogger(__name__)


def random_batch_element(pfi: core.fault_injection) -> int:
    """A random batch row: ``random.randint(0, batch_size - 1)``."""
    return random.randint(0, pfi.get_total_batches() - 1)


def random_neuron_location(pfi: core.fault_injection, layer: int = -1) -> tuple[Any, ...]:
    """``(layer, dim1, dim2, dim3)`` of a random neuron (``None`` past the layer's dimensions);
    a random layer when ``layer == -1``. A 5-d layer gives ``(layer, dim1, dim2, dim3, dim4)``."""
    if layer == -1:
        layer = random.randint(0, pfi.get_total_layers() - 1)
    dim = pfi.get_layer_dim(layer)
    shape = pfi.get_layer_shape(layer)
    coords: list[int | None] = [random.randint(0, shape[1] - 1)]
    for d in (2, 3):
        coords.append(random.randint(0, shape[d] - 1) if dim > d else None)
    if dim > 4:
        coords.append(random.randint(0, shape[4] - 1))
    return (layer, *coords)


def _split(location: tuple[Any, ...]) -> tuple[Any, ...]:
    """``(layer, C, H, W, D4)`` from a 4- or 5-value location."""
    return (*location, None) if len(location) == 4 else location


def _declare(
    pfi: core.fault_injection, batch: list[int], locations: list[tuple[Any, ...]], **kw: Any
) -> CorruptedModel:
    parts = [_split(loc) for loc in locations]
    dims: dict[str, Any] = {
        "layer_num": [p[0] for p in parts],
        "dim1": [p[1] for p in parts],
        "dim2": [p[2] for p in parts],
        "dim3": [p[3] for p in parts],
    }
    if any(p[4] is not None for p in parts):
        dims["dim4"] = [p[4] for p in parts]
    return pfi.declare_neuron_fi(batch=batch, **dims, **kw)


def random_neuron_inj(
    pfi: core.fault_injection, min_val: float = -1, max_val: float = 1
) -> CorruptedModel:
    """One neuron of one random batch row set to a random value in ``[min_val, max_val]``."""
    b = random_batch_element(pfi)
    location = random_neuron_location(pfi)
    err_val = random_value(min_val=min_val, max_val=max_val)
    return _declare(pfi, [b], [location], value=[err_val])


def random_neuron_inj_batched(
    pfi: core.fault_injection,
    min_val: float = -1,
    max_val: float = 1,
    rand_loc: bool = True,
    rand_val: bool = True,
) -> CorruptedModel:
    """One random neuron per batch row (the same location and/or value in each when
    ``rand_loc``/``rand_val`` is false)."""
    if not rand_loc:
        location = random_neuron_location(pfi)
    if not rand_val:
        err_val = random_value(min_val=min_val, max_val=max_val)
    batch, locations, values = [], [], []
    for i in range(pfi.get_total_batches()):
        if rand_loc:
            location = random_neuron_location(pfi)
        if rand_val:
            err_val = random_value(min_val=min_val, max_val=max_val)
        batch.append(i)
        locations.append(location)
        values.append(err_val)
    return _declare(pfi, batch, locations, value=values)


def random_inj_per_layer(
    pfi: core.fault_injection, min_val: float = -1, max_val: float = 1
) -> CorruptedModel:
    """One random neuron in every layer, all in one random batch row."""
    b = random_batch_element(pfi)
    batch, locations, values = [], [], []
    for i in range(pfi.get_total_layers()):
        locations.append(random_neuron_location(pfi, layer=i))
        batch.append(b)
        values.append(random_value(min_val=min_val, max_val=max_val))
    return _declare(pfi, batch, locations, value=values)


def random_inj_per_layer_batched(
    pfi: core.fault_injection,
    min_val: float = -1,
    max_val: float = 1,
    rand_loc: bool = True,
    rand_val: bool = True,
) -> CorruptedModel:
    """One random neuron in every layer of every batch row."""
    batch, locations, values = [], [], []
    for i in range(pfi.get_total_layers()):
        if not rand_loc:
            location = random_neuron_location(pfi, layer=i)
        if not rand_val:
            err_val = random_value(min_val=min_val, max_val=max_val)
        for b in range(pfi.get_total_batches()):
            if rand_loc:
                location = random_neuron_location(pfi, layer=i)
            if rand_val:
                err_val = random_value(min_val=min_val, max_val=max_val)
            batch.append(b)
            locations.append(location)
            values.append(err_val)
    return _declare(pfi, batch, locations, value=values)


class single_bit_flip_func(core.fault_injection):  # noqa: N801 - pytorchfi's name
    """pytorchfi's injector with its signed-integer single-bit-flip error model.

    Args:
        model, batch_size, input_shape: as :class:`~torchfault.compat.pytorchfi.core.fault_injection`.
        **kwargs: ``bits`` (integer width, default 8), ``layer_types``, ``use_cuda``.

    Example:
        >>> import torch.nn as nn
        >>> pfi = single_bit_flip_func(nn.Sequential(nn.Conv2d(1, 1, 1)), 1, [1, 2, 2], bits=4)
        >>> pfi.bits, float(pfi._flip_bit_signed(torch.tensor(0.5), 1.0, 3))  # 4 = 0b0100 -> 0b1100
        (4, -0.5)
    """

    _ARGS = ("use_cuda", "bits", "layer_types")

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        input_shape: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if input_shape is None:
            input_shape = [3, 224, 224]
        rest = {k: v for k, v in kwargs.items() if k != "bits"}
        super().__init__(model, batch_size, input_shape=input_shape, **rest)
        self.bits = kwargs.get("bits", 8)
        self.LayerRanges: Any = []

    def set_conv_max(self, data: Any) -> None:
        self.LayerRanges = data

    def reset_conv_max(self, data: Any) -> None:
        self.LayerRanges = []

    def get_conv_max(self, layer: int) -> Any:
        return self.LayerRanges[layer]

    @staticmethod
    def _twos_comp(val: int, bits: int) -> int:
        if (val & (1 << (bits - 1))) != 0:
            val = val - (1 << bits)
        return val

    def _twos_comp_shifted(self, val: int, nbits: int) -> int:
        return (1 << nbits) + val if val < 0 else self._twos_comp(val, nbits)

    def _flip_bit_signed(
        self, orig_value: torch.Tensor, max_value: Any, bit_pos: int
    ) -> torch.Tensor:
        """Flip bit ``bit_pos`` (0 = least significant) of ``orig_value`` seen as a signed
        ``self.bits``-bit integer of range ``max_value``; pytorchfi's arithmetic, on integers."""
        save_type = orig_value.dtype
        total_bits = self.bits
        if bit_pos >= total_bits:
            raise AssertionError(f"bit {bit_pos} is out of range for {total_bits}-bit values.")
        quantum = int((orig_value / max_value) * (2.0 ** (total_bits - 1)))
        # pytorchfi fails or wraps around past the range; a quantizer saturates
        quantum = max(-(1 << (total_bits - 1)), min((1 << (total_bits - 1)) - 1, quantum))
        word = (quantum & ((1 << total_bits) - 1)) ^ (1 << bit_pos)
        out = self._twos_comp(word, total_bits)
        new_value = out * ((2.0 ** (-1 * (total_bits - 1))) * max_value)
        log.info("Flip bit %d: %s -> %s", bit_pos, orig_value, new_value)
        return torch.tensor(new_value, dtype=save_type)

    def _location(self, i: int | None) -> tuple[int, ...]:
        if i is not None:
            return (self.corrupt_batch[i], *self._neuron_index(i))
        layer = self.corrupt_layer
        coords = (self.corrupt_dim1, self.corrupt_dim2, self.corrupt_dim3, self.corrupt_dim4)
        return (self.corrupt_batch, *coords[: self.layers_dim[layer] - 1])

    def single_bit_flip_signed_across_batch(
        self, module: nn.Module, input_val: Any, output: torch.Tensor
    ) -> None:
        """pytorchfi's forward hook: flip one random bit of each declared neuron of this layer."""
        corrupt_conv_set = self.get_corrupt_layer()
        range_max = self.get_conv_max(self.get_current_layer())
        if type(corrupt_conv_set) is list:
            targets = [i for i, layer in enumerate(corrupt_conv_set) if layer == self.current_layer]
            for i in targets:
                self.assert_inj_bounds(index=i)
                self._flip(output, self._location(i), range_max)
        elif self.get_current_layer() == corrupt_conv_set:
            self._flip(output, self._location(None), range_max)
        self.updateLayer()
        if self.get_current_layer() >= self.get_total_layers():
            self.reset_current_layer()

    def _flip(self, output: torch.Tensor, location: tuple[int, ...], range_max: Any) -> None:
        rand_bit = random.randint(0, self.bits - 1)
        output[location] = self._flip_bit_signed(output[location], range_max, rand_bit)


def random_neuron_single_bit_inj_batched(
    pfi: single_bit_flip_func, layer_ranges: Any, rand_loc: bool = True
) -> CorruptedModel:
    """One neuron per batch row gets a random bit flipped (``layer_ranges``: each layer's range)."""
    pfi.set_conv_max(layer_ranges)
    if not rand_loc:
        location = random_neuron_location(pfi)
    batch, locations = [], []
    for i in range(pfi.get_total_batches()):
        if rand_loc:
            location = random_neuron_location(pfi)
        batch.append(i)
        locations.append(location)
    return _declare(pfi, batch, locations, function=pfi.single_bit_flip_signed_across_batch)


def random_neuron_single_bit_inj(pfi: single_bit_flip_func, layer_ranges: Any) -> CorruptedModel:
    """One random neuron of one random batch row gets a random bit flipped."""
    pfi.set_conv_max(layer_ranges)
    batch = random_batch_element(pfi)
    location = random_neuron_location(pfi)
    return _declare(pfi, [batch], [location], function=pfi.single_bit_flip_signed_across_batch)
