# SPDX-License-Identifier: MIT
"""inject_ber: flip counts follow the rate, positions are distinct and uniform, masks combine the
bits of one element, and the model comes back bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import inject_ber
from torchfault.errors import TorchFaultError
from torchfault.injectors import draw_flips


def popcount(words: np.ndarray) -> int:
    """Set bits of integer words (numpy, independent of torchfault)."""
    u = words.astype(np.int64).view(np.uint64)
    return int(np.unpackbits(u.view(np.uint8)).sum())


def changed_bits(a: torch.Tensor, b: torch.Tensor) -> int:
    view = {torch.float32: np.int32, torch.float16: np.int16, torch.int8: np.int8}[a.dtype]
    x = a.detach().contiguous().numpy().view(view).astype(np.int64)
    y = b.detach().contiguous().numpy().view(view).astype(np.int64)
    width = np.dtype(view).itemsize * 8
    return popcount((x ^ y) & ((1 << width) - 1))


@pytest.mark.parametrize(
    ("numel", "width", "rate"), [(1000, 32, 1e-3), (64, 16, 0.3), (50, 8, 0.9), (10**6, 32, 1e-6)]
)
def test_flip_counts_follow_the_rate(numel, width, rate):
    rng = np.random.default_rng(0)
    draws = 400
    counts = []
    for _ in range(draws):
        idx, masks = draw_flips(numel, width, rate, rng)
        assert idx.numel() == masks.numel()
        if idx.numel():
            assert bool((idx.diff() > 0).all())  # distinct, sorted elements
            assert int(idx.min()) >= 0 and int(idx.max()) < numel
            assert bool((masks != 0).all())
            assert width == 64 or bool(((masks >> width) == 0).all())
        counts.append(popcount(masks.numpy()))
    n = numel * width
    mean, sigma = n * rate, math.sqrt(n * rate * (1 - rate))
    assert abs(np.mean(counts) - mean) < 5 * sigma / math.sqrt(draws)
    # the spread is the binomial one too (loose: the sample variance of 400 draws)
    assert 0.7 * sigma**2 < np.var(counts) < 1.3 * sigma**2


def test_flip_positions_are_uniform_over_elements_and_bits():
    rng = np.random.default_rng(1)
    per_bit = np.zeros(16)
    per_elem = np.zeros(20)
    for _ in range(2000):
        idx, masks = draw_flips(20, 16, 0.05, rng)
        for i, m in zip(idx.tolist(), masks.tolist()):
            bits = [b for b in range(16) if m >> b & 1]
            per_elem[i] += len(bits)
            per_bit[bits] += 1
    total = per_bit.sum()
    for hist, k in ((per_bit, 16), (per_elem, 20)):
        expected = total / k
        sigma = math.sqrt(expected * (1 - 1 / k))
        assert np.all(np.abs(hist - expected) < 5 * sigma), hist


def test_masks_combine_the_bits_of_one_element():
    idx, masks = draw_flips(4, 64, 0.5, np.random.default_rng(2))
    assert idx.tolist() == [0, 1, 2, 3]
    assert all(popcount(np.array([m])) > 1 for m in masks.tolist())
    assert any(m < 0 for m in masks.tolist())  # bit 63 lands in the sign of the int64 mask
    every = draw_flips(3, 8, 1.0, np.random.default_rng(0))
    assert every[1].tolist() == [255, 255, 255]
    assert draw_flips(3, 8, 0.0, np.random.default_rng(0))[0].numel() == 0
    with pytest.raises(TorchFaultError, match="rate"):
        draw_flips(3, 8, 1.5, np.random.default_rng(0))


def test_weight_flips_match_the_count_and_restore_exactly():
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = [p.data_ptr() for p in model.parameters()]
    with inject_ber(model, 2e-3, kinds="weights", seed=3) as ber:
        flipped = sum(changed_bits(model.state_dict()[k], before[k]) for k in before)
        assert ber.flips == flipped > 0
        assert torch.equal(model[0].bias, before["0.bias"])  # biases not targeted
    for k, v in model.state_dict().items():
        assert torch.equal(v.view(torch.int32), before[k].view(torch.int32))
    assert ptrs == [p.data_ptr() for p in model.parameters()]


def test_activation_flips_are_fresh_every_pass_and_counted():
    model = nn.Sequential(nn.Linear(30, 30), nn.Linear(30, 30)).eval()
    x = torch.randn(8, 30)
    with torch.no_grad():
        golden0 = model[0](x)
        seen = []
        with inject_ber(model, 1e-3, modules="0", kinds="outputs", seed=4) as ber:
            h = model[0].register_forward_hook(lambda m, a, o: seen.append(o.clone()))
            for _ in range(3):
                model(x)
                assert ber.last_flips == changed_bits(seen[-1], golden0)
            h.remove()
        assert ber.flips == sum(changed_bits(s, golden0) for s in seen) > 0
        assert not torch.equal(seen[0], seen[1])  # new draws each pass
        assert torch.equal(model[0](x), golden0)


def test_transient_ber_hits_the_next_pass_only():
    model = nn.Sequential(nn.Linear(20, 20)).eval()
    x = torch.randn(4, 20)
    with torch.no_grad():
        golden = model(x)
        with inject_ber(
            model, 0.01, kinds=("outputs", "weights"), seed=5, persistence="transient"
        ) as ber:
            first = model(x)
            flips = ber.flips
            second = model(x)
        assert not torch.equal(first, golden) and torch.equal(second, golden) and ber.flips == flips


def test_ber_in_other_dtypes_and_formats():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 16).half()
            self.register_buffer("codes", torch.arange(-64, 64, dtype=torch.int8))

        def forward(self, x):
            return self.lin(x)

    m = M()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with inject_ber(m, 0.02, kinds=("weights", "buffers"), seed=6) as ber:
        n = changed_bits(m.lin.weight, before["lin.weight"]) + changed_bits(
            m.codes, before["codes"]
        )
        assert ber.flips == n > 0
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    # float32 weights seen as bfloat16: only the 16 bits of the bfloat16 word are flipped
    lin = nn.Linear(32, 32)
    w = lin.weight.detach().clone()
    with inject_ber(lin, 0.05, kinds="weights", format="bfloat16", seed=7):
        changed = lin.weight != w
        assert changed.any()
        # a changed element is a bfloat16 word widened to float32: its low 16 bits are zero
        assert bool(((lin.weight.detach()[changed].view(torch.int32) & 0xFFFF) == 0).all())
    assert torch.equal(lin.weight, w)


def test_ber_on_a_packed_quantized_weight(quantized_linear):
    m = quantized_linear(8, 8)
    w0 = m.fc.weight()
    with inject_ber(m, 0.05, kinds="weights", seed=8) as ber:
        w1 = m.fc.weight()
        assert ber.flips == changed_bits(w1.int_repr(), w0.int_repr()) > 0
        assert torch.equal(w1.q_per_channel_scales(), w0.q_per_channel_scales())
    assert torch.equal(m.fc.weight().int_repr(), w0.int_repr())


def test_ber_is_reproducible_with_a_seed():
    model = nn.Linear(40, 40)
    x = torch.randn(3, 40)
    outs = []
    for _ in range(2):
        with torch.no_grad(), inject_ber(model, 1e-3, kinds=("outputs", "weights"), seed=9):
            outs.append(model(x).view(torch.int32).clone())
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rate": -0.1}, r"rate must be in \[0, 1\], got -0.1"),
        ({"rate": 0.1, "persistence": "forever"}, "persistence must be 'transient' or 'permanent'"),
        ({"rate": 0.1, "kinds": "weigths"}, "Unknown target kind 'weigths'"),
        ({"rate": 0.1, "modules": "lin"}, r"Unknown module 'lin'"),
        ({"rate": 0.1, "format": "float33"}, "Unknown number format"),
        (
            {"rate": 0.1, "format": "int8", "kinds": "weights"},
            "Format 'int8' cannot see a torch.float32",
        ),
    ],
)
def test_bad_ber_arguments_fail_before_anything_changes(kwargs, words):
    model = nn.Sequential(nn.Linear(4, 4))
    w = model[0].weight.detach().clone()
    with pytest.raises(TorchFaultError, match=words), inject_ber(model, **kwargs):
        model(torch.zeros(1, 4))
    assert torch.equal(model[0].weight, w) and not model[0]._forward_hooks
