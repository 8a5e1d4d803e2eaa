# SPDX-License-Identifier: MIT
"""An injection changes the faulted words and nothing else: not the memory layout, not the
aliasing of a module's inputs, not the dtype.

The oracles are outside torchfault: a self-cancelling pair of flips must leave the output the
golden bits (a changed layout or a broken alias makes PyTorch take other kernels that round
differently), and a single input fault on ``attn(x, x, x)`` must equal running the module on a
copy of ``x`` corrupted by hand (numpy's integer view of the words).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject
from torchfault.numerics import apply_bits, set_values


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block (7x7 depthwise conv, channels-last layer norm, MLP, residual) run in
    channels-last memory format, as torchvision's convnext is run for speed."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * c, c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        y = self.stem(x)
        z = self.dw(y).permute(0, 2, 3, 1)
        z = self.fc2(self.act(self.fc1(self.ln(z)))).permute(0, 3, 1, 2)
        return self.head((y + z).mean((2, 3)))


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def flip(x: torch.Tensor, index: tuple, bit: int) -> torch.Tensor:
    """``x`` (batch first) with ``bit`` of ``x[:, *index]`` flipped in every row, by numpy."""
    out = x.detach().clone().numpy()
    words = out.view(np.int32)
    words[(slice(None), *index)] ^= np.int32(np.uint32(1 << bit).view(np.int32))
    return torch.from_numpy(out)


@torch.no_grad()
def test_cancelling_pair_on_channels_last_activation_is_masked():
    torch.manual_seed(0)
    model = ConvNeXtBlock().eval().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    golden = model(x)
    for c in range(0, 32, 4):
        f = Fault("stem", "output", index=(c, 3, 5), bits=(30,))
        with inject(model, [f, f]):
            out = model(x)
        assert torch.equal(out.view(torch.int32), golden.view(torch.int32)), c


@pytest.mark.parametrize("model", ["bit_flip", "stuck_at_1", "zero", "value"])
def test_out_of_place_faults_keep_the_memory_layout(model):
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([7, 40])
    if model == "bit_flip":
        out = apply_bits(x, index, 1 << 30)
    elif model == "stuck_at_1":
        out = apply_bits(x, index, 1 << 30, "stuck_at_1")
    else:
        out = set_values(x, index, 0.0 if model == "zero" else 5.0)
    assert out.stride() == x.stride() and out.dtype == x.dtype
    changed = (out.flatten() != x.flatten()).nonzero().flatten().tolist()
    assert set(changed) <= {7, 40}
    # a transposed (dense) view keeps its strides too; a view with gaps becomes row-major
    t = torch.randn(4, 6).t()
    assert apply_bits(t, [0], 1 << 31).stride() == t.stride()
    gaps = torch.randn(4, 6)[:, ::2]
    assert apply_bits(gaps, [0], 1 << 31).is_contiguous()


@torch.no_grad()
def test_cancelling_pair_on_attention_input_is_masked():
    torch.manual_seed(0)
    model = SelfAttention().eval()
    x = torch.randn(16, 9, 32)
    golden = model(x)
    for j in range(8):
        f = Fault("attn", "input", index=(j, 3 * j), bits=(30,))
        with inject(model, [f, f]):
            out = model(x)
        assert torch.equal(out.view(torch.int32), golden.view(torch.int32)), j


@torch.no_grad()
def test_attention_input_fault_corrupts_the_one_shared_tensor():
    """q, k and v are one tensor: the fault corrupts it once, for all three, and they stay one
    object (PyTorch's self-attention path tests ``query is key``)."""
    torch.manual_seed(1)
    model = SelfAttention().eval()
    x = torch.randn(16, 9, 32)
    seen = []
    for index, bit in [((2, 7), 22), ((0, 0), 30), ((8, 31), 31)]:
        seen.clear()
        with inject(model, Fault("attn", "input", index=index, bits=(bit,))):
            # registered after the injector's hook: sees what the module receives
            handle = model.attn.register_forward_pre_hook(lambda m, args: seen.append(args))
            try:
                out = model(x)
            finally:
                handle.remove()
        q, k, v = seen[0][:3]
        assert q is k and k is v and q is not x
        want = model(flip(x, index, bit))
        assert torch.equal(out.view(torch.int32), want.view(torch.int32)), index


class InplaceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU(inplace=True)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = self.c1(x)
        z = self.r1(y)  # y is z: the residual below reads the ReLU's output
        return self.head((z + y).flatten(1))


@torch.no_grad()
def test_input_fault_of_an_in_place_module_reaches_its_other_readers():
    """ReLU(inplace=True) writes its input tensor: a fault on its input lands in that tensor,
    and the residual that reads it after the ReLU sees ReLU(faulty), as in eager PyTorch with the
    input's memory corrupted. (A copy left the residual reading the golden pre-ReLU value, and a
    cancelling pair was not masked.)"""
    torch.manual_seed(2)
    model = InplaceResidual().eval()
    x = torch.randn(4, 3, 6, 6)
    golden = model(x)
    for index, bit in [((1, 2, 2), 31), ((0, 0, 5), 30), ((3, 5, 0), 14)]:
        f = Fault("r1", "input", index=index, bits=(bit,))
        with inject(model, f):
            out = model(x)
        y = torch.relu(flip(model.c1(x), index, bit))  # the oracle, by hand
        want = model.head((y + y).flatten(1))
        assert torch.equal(out.view(torch.int32), want.view(torch.int32)), index
        with inject(model, [f, f]):
            assert torch.equal(model(x).view(torch.int32), golden.view(torch.int32))
