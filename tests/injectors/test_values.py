# SPDX-License-Identifier: MIT
"""injected_values against independent oracles: the golden value computed by hand (the weight
itself, the Sequential's prefix run by hand), the faulty value by a NumPy bit flip of it; random
fault models against the tensor read inside inject with the same seed; nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject
from torchfault.errors import TorchFaultError
from torchfault.injectors import injected_pass, injected_values


def _flip(v: float, bits) -> float:
    w = np.array([v], dtype=np.float32).view(np.uint32)
    for b in bits:
        w ^= np.uint32(1 << b)
    return float(w.view(np.float32)[0])


def _same(pair, want) -> bool:
    """Pairs equal as float32 words (NaN equals the same NaN)."""
    bits = [np.array(v, dtype=np.float32).view(np.uint32).item() for v in (*pair, *want)]
    return bits[:2] == bits[2:]


def _net() -> nn.Sequential:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("bits", [(30,), (31,), (2, 22), (23,)])
def test_bit_flips_equal_numpy_on_every_target(x, bits):
    model = _net()
    faults = [
        Fault("0", "weight", (2, 1), bits),
        Fault("2", "bias", (1,), bits),
        Fault("0", "output", (3,), bits),  # ReLU(inplace=True) rewrites this tensor afterwards
        Fault("2", "input", (4,), bits),
    ]
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    got = injected_values(model, faults, x)
    with torch.no_grad():
        h0 = model[0](x)
        h1 = torch.relu(h0)
    w, b = before_state["0.weight"][2, 1].item(), before_state["2.bias"][1].item()
    assert len(got) == 6
    # by hand, the whole batch as the model runs it: the weight fault changes layer 0's output,
    # the output fault then flips its element 3, ReLU, and layer 2 reads element 4
    wf = before_state["0.weight"].clone()
    wf[2, 1] = _flip(w, bits)
    with torch.no_grad():
        h0w = torch.nn.functional.linear(x, wf, before_state["0.bias"])
    for r, pairs in enumerate(got):
        assert _same(pairs[0], (w, _flip(w, bits)))
        assert _same(pairs[1], (b, _flip(b, bits)))
        assert _same(pairs[2], (h0w[r, 3].item(), _flip(h0w[r, 3].item(), bits)))
        h = h0w[r].clone()
        h[3] = _flip(h0w[r, 3].item(), bits)
        h2_in = torch.relu(h)[4].item()
        assert _same(pairs[3], (h2_in, _flip(h2_in, bits)))
    # the activation pair of a fault alone: before is the golden value by hand
    alone = injected_values(model, [Fault("0", "output", (3,), bits)], x)
    assert [p[0] for (p,) in alone] == [h0[r, 3].item() for r in range(6)]
    assert all(
        _same(p, (h0[r, 3].item(), _flip(h0[r, 3].item(), bits))) for r, (p,) in enumerate(alone)
    )
    assert h1.shape == h0.shape
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_state[k])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_sample_hits_one_row_and_parameter_faults_need_no_inputs(x):
    model = _net()
    got = injected_values(model, [Fault("0", "output", (1,), (31,), sample=2)], x)
    assert [p[0] is None for (p,) in got] == [r != 2 for r in range(6)]
    ((pair,),) = injected_values(model, Fault("2", "weight", (0, 0), (31,)))
    assert pair[1] == -pair[0]
    with pytest.raises(ValueError, match="inputs are needed"):
        injected_values(model, [Fault("0", "output", (1,), (31,))])


@pytest.mark.parametrize("fm", ["zero", "stuck_at_1", "random_value"])
def test_other_fault_models_equal_what_inject_wrote(x, fm):
    model = _net()
    f = Fault("0", "weight", (1, 1), (29,) if fm == "stuck_at_1" else (), model=fm)
    ((pair,),) = injected_values(model, [f], seed=123)
    before = model[0].weight[1, 1].item()
    with inject(model, [f], seed=123):
        after = model[0].weight[1, 1].item()
    assert pair == (before, after)
    if fm == "zero":
        assert after == 0.0


def test_injected_pass_keeps_a_pass_error_and_injected_values_raises_it(x):
    model = _net()

    def boom(mod, args, out):
        raise RuntimeError("boom")

    first = Fault("0", "output", (1,), (31,), sample=4)  # read before the raise
    later = Fault("2", "output", (0,), (31,))  # its module raises: never read
    weight = Fault("2", "weight", (0, 0), (31,))
    h = model[2].register_forward_hook(boom, prepend=True)
    try:
        got = injected_pass(model, [first, later, weight], lambda: model(x))
        with pytest.raises(RuntimeError, match="boom"):
            injected_values(model, [first], x)
    finally:
        h.remove()
    with torch.no_grad():
        v = model[0](x)[4, 1].item()
    w = model[2].weight[0, 0].item()
    assert isinstance(got.error, RuntimeError) and got.batch_sizes == frozenset({6})
    assert got.pairs == ({4: (v, -v)}, {}, {-1: (w, -w)})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_an_unknown_module_is_the_error_inject_gives(x):
    with pytest.raises(TorchFaultError, match="unknown module"):
        injected_values(_net(), [Fault("nope", "output", (0,), (1,))], x)
