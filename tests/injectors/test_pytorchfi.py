# SPDX-License-Identifier: MIT
"""Differential test against pytorchfi: the same single-bit flip at the same activation (a
convolution's output element in one batch row) or the same weight element of a small CNN gives a
bit-identical model output in both tools.

pytorchfi names layers by an integer over its injectable layer types (here Conv2d and Linear):
in execution order for neurons, in ``model.modules()`` order for weights; both are mapped to our
module names below. Its own bit-flip error models emulate 8-bit integers, so IEEE single-bit
flips are declared with custom functions (``function=``), as its documentation suggests for new
error models.
"""

from __future__ import annotations

import struct

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject

pfi_core = pytest.importorskip("pytorchfi.core")

BATCH = 4


def flip(value: float, bit: int) -> float:
    (w,) = struct.unpack("<I", struct.pack("<f", value))
    return struct.unpack("<f", struct.pack("<I", w ^ (1 << bit)))[0]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    ).eval()


X = torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(1))
LAYERS = ["0", "2", "5", "8"]  # pytorchfi layer i <-> our module name


def make_pfi(model):
    return pfi_core.fault_injection(
        model, BATCH, input_shape=[3, 8, 8], layer_types=[nn.Conv2d, nn.Linear], use_cuda=False
    )


class NeuronFlip:
    """pytorchfi custom neuron function: flip one bit of one element of one batch row."""

    def __init__(self, pfi, layer: int, batch: int, index: tuple[int, ...], bit: int) -> None:
        self.pfi, self.layer, self.batch, self.index, self.bit = pfi, layer, batch, index, bit

    def __call__(self, module, inputs, output):
        if self.pfi.get_current_layer() == self.layer:
            loc = (self.batch, *self.index)
            output[loc] = flip(float(output[loc]), self.bit)
        self.pfi.updateLayer()
        if self.pfi.get_current_layer() >= self.pfi.get_total_layers():
            self.pfi.reset_current_layer()


NEURONS = [
    (0, 1, (3, 4, 5), 30),
    (1, 0, (7, 0, 0), 31),
    (2, 3, (2, 3, 1), 22),
    (0, 2, (0, 7, 7), 23),
    (3, 1, (9,), 29),
]
WEIGHTS = [
    (0, (1, 2, 0, 1), 30),
    (1, (7, 7, 2, 2), 31),
    (2, (3, 0, 1, 1), 26),
    (3, (5, 17), 30),
    (1, (0, 3, 1, 0), 0),
]


@pytest.mark.parametrize(("layer", "batch", "index", "bit"), NEURONS)
def test_activation_bit_flip_matches_pytorchfi(layer, batch, index, bit):
    model = small_cnn()
    pfi = make_pfi(model)
    dims = dict(zip(("dim1", "dim2", "dim3"), ([i] for i in index)))
    dims.update({d: [None] for d in ("dim1", "dim2", "dim3") if d not in dims})
    corrupted = pfi.declare_neuron_fi(
        function=NeuronFlip(pfi, layer, batch, index, bit), layer_num=[layer], batch=[batch], **dims
    )
    with torch.no_grad():
        theirs = corrupted(X)
        with inject(model, Fault(LAYERS[layer], index=index, bits=(bit,), sample=batch)):
            ours = model(X)
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))


def test_the_differential_cases_are_not_vacuous():
    """Most of the faults above change the output (a few vanish behind a ReLU or max-pool)."""
    model = small_cnn()
    with torch.no_grad():
        golden = model(X)
        changed = 0
        for layer, batch, index, bit in NEURONS:
            with inject(model, Fault(LAYERS[layer], index=index, bits=(bit,), sample=batch)):
                changed += not torch.equal(model(X), golden)
        for layer, index, bit in WEIGHTS:
            with inject(model, Fault(LAYERS[layer], "weight", index=index, bits=(bit,))):
                changed += not torch.equal(model(X), golden)
    assert changed >= 6


@pytest.mark.parametrize(("layer", "index", "bit"), WEIGHTS)
def test_weight_bit_flip_matches_pytorchfi(layer, index, bit):
    model = small_cnn()
    pfi = make_pfi(model)
    dims = dict(zip(("k", "dim1", "dim2", "dim3"), ([i] for i in index)))
    dims.update({d: [None] for d in ("dim2", "dim3") if d not in dims})
    if len(index) == 2:  # pytorchfi indexes Linear weights as (k, dim1)
        corrupted = _declare_linear_weight(pfi, layer, index, bit)
    else:
        corrupted = pfi.declare_weight_fi(
            function=lambda data, loc: flip(float(data[loc]), bit), layer_num=[layer], **dims
        )
    with torch.no_grad():
        theirs = corrupted(X)
        with inject(model, Fault(LAYERS[layer], "weight", index=index, bits=(bit,))):
            ours = model(X)
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))


def _declare_linear_weight(pfi, layer, index, bit):
    """pytorchfi 0.6 builds a 4-element weight index for every layer; for a Linear weight the
    custom function receives (k, dim1, None, None) and must index the 2-D weight itself."""
    return pfi.declare_weight_fi(
        function=lambda data, loc: flip(float(data[loc[0], loc[1]]), bit),
        layer_num=[layer],
        k=[index[0]],
        dim1=[index[1]],
        dim2=[None],
        dim3=[None],
    )
