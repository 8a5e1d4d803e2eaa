# SPDX-License-Identifier: MIT
"""NonzeroFaults on pruned models (zeros folded in, or weight_orig x weight_mask), and faults on
the masks, against loops over the tensors and a dense re-computation."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune

from torchfault import Fault, inject
from torchfault.errors import TorchFaultError
from torchfault.faults import NonzeroFaults


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def _nonzero_pairs(model: nn.Module, reparam: bool) -> set[tuple[str, str, tuple[int, ...]]]:
    """Unpruned (module, target, index) by loops over the tensors."""
    out = set()
    for name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if "weight" not in pname:
                continue
            ref = mod.weight_mask if reparam else p
            flat = ref.detach().reshape(-1).tolist()
            for i, v in enumerate(flat):
                if v != 0:
                    idx, rest = [], i
                    for n in reversed(ref.shape):
                        idx.append(rest % n)
                        rest //= n
                    out.add((name, pname, tuple(reversed(idx))))
    return out


@pytest.mark.parametrize("reparam", [False, True], ids=["folded", "masked"])
def test_nonzero_faults_hit_only_unpruned_weights(reparam):
    model = _net()
    for m in (model[0], model[3]):
        prune.l1_unstructured(m, "weight", amount=0.7)
        if not reparam:
            prune.remove(m, "weight")
    truth = _nonzero_pairs(model, reparam)
    s = NonzeroFaults(model, n=4000, seed=3)
    assert s.population == 32 * len(truth)
    seen = Counter()
    for (f,) in s.draws(0, len(s)):
        assert (f.module, f.target, f.index) in truth
        assert f.target == ("weight_orig" if reparam else "weight") and 0 <= f.bits[0] < 32
        seen[(f.module, f.index)] += 1
    assert len(seen) > 0.9 * len(truth)  # 4000 draws over ~50 elements reach nearly all
    assert s.draw(17) == NonzeroFaults(model, n=4000, seed=3).draw(17)
    # bits restrict the draw
    assert {f.bits for (f,) in NonzeroFaults(model, n=50, bits=[30]).draws(0, 50)} == {(30,)}


def test_a_fault_on_a_mask_revives_a_pruned_weight():
    model = _net()
    prune.l1_unstructured(model[3], "weight", amount=0.7)
    x = torch.randn(2, 1, 6, 6)
    mask = model[3].weight_mask
    pruned = tuple(int(i) for i in (mask == 0).nonzero()[0])
    # 0.0 with bit 30 set is 2.0: the pruned weight comes back, doubled
    assert struct.unpack("<f", struct.pack("<I", 1 << 30))[0] == 2.0
    with inject(model, Fault("3", "weight_mask", index=pruned, bits=(30,))):
        got = model(x)
    w = (model[3].weight_orig * model[3].weight_mask).detach().clone()
    w[pruned] = 2.0 * model[3].weight_orig[pruned]
    h = torch.flatten(torch.relu(model[0](x)), 1)
    assert torch.allclose(got, h @ w.T + model[3].bias, atol=1e-6)
    assert not torch.allclose(got, model(x))


def test_bad_input():
    with pytest.raises(TorchFaultError, match="only stored tensors"):
        NonzeroFaults(_net(), n=1, kinds=("outputs",))
    with pytest.raises(TorchFaultError, match="bits \\[40\\] are outside"):
        NonzeroFaults(_net(), n=1, bits=[40])
    zero = nn.Linear(2, 2)
    with torch.no_grad():
        zero.weight.zero_()
    with pytest.raises(TorchFaultError, match="no unpruned element"):
        NonzeroFaults(zero, n=1, kinds="weights")
    with pytest.raises(TorchFaultError, match="fault number 5 is outside 0..4"):
        NonzeroFaults(_net(), n=5).draw(5)
