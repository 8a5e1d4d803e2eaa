# SPDX-License-Identifier: MIT
"""The ``memory`` and ``nonzero`` samplers and the ``masks`` target kind, against oracles.

Memory: a hand model of 72-bit words holding two float32 elements each (data bits 0..63,
element slot ``i`` at bits ``32 i .. 32 i + 31``, eight check bits after them; one word per
row, tensors one after the other) maps each drawn physical fault's cells to element bits, and
the textbook SEC-DED of tests/faults/test_ecc.py (encode, flip, decode) gives what the decoder
leaves. Nonzero: the mask tensors ``torch.nn.utils.prune`` made, and NonzeroFaults.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from torchfault import fault_space, inject, sample_size
from torchfault.errors import ConfigError, TorchFaultError
from torchfault.faults import MemoryMap, NonzeroFaults, PatternMix
from torchfault.samplers import create_sampler

_spec = importlib.util.spec_from_file_location(
    "ecc_oracle", Path(__file__).parents[1] / "faults" / "test_ecc.py"
)
ecc_oracle = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ecc_oracle)  # type: ignore[union-attr]

LAYOUT = {"width": 72, "ecc": "secded"}
MIX = {"adjacent_bits:2": 0.25, "adjacent_bits:3": 0.15, "single": 0.6}  # labels in order


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


def _sites(model: nn.Module):
    return fault_space(model, kinds=["weights", "biases"])


def _regions(model: nn.Module) -> list[tuple[str, str, torch.Tensor, int]]:
    """(module, target, tensor, first row) in memory order: two float32 per 72-bit word."""
    out, row = [], 0
    for name, mod in model.named_modules():
        for target in ("weight", "bias"):
            t = getattr(mod, target, None) if not list(mod.children()) else None
            if isinstance(t, torch.Tensor):
                out.append((name, target, t, row))
                row += math.ceil(t.numel() / 2)
    return out


def _oracle(model: nn.Module, cells: list[tuple[int, int]], ecc: bool) -> tuple[set, str]:
    """Element bit flips ({(module, target, index, bits)}) and the decoder's verdict."""
    regions = _regions(model)
    words: dict[tuple[int, int], list[int]] = {}
    for r, c in cells:
        i = max(j for j, reg in enumerate(regions) if reg[3] <= r)
        words.setdefault((i, r - regions[i][3]), []).append(c)
    flips: dict[tuple[str, str, tuple[int, ...]], int] = {}
    status = "none"
    for (i, w), cols in words.items():
        module, target, t, _ = regions[i]
        flat = t.detach().reshape(-1).numpy().view(np.uint32)
        elems = [int(flat[2 * w + s]) if 2 * w + s < flat.size else 0 for s in (0, 1)]
        data = [(elems[b // 32] >> (b % 32)) & 1 for b in range(64)]
        if ecc:
            stored = ecc_oracle.oracle_encode(data)
            for c in cols:
                stored[c] ^= 1
            after, status = ecc_oracle.oracle_decode(stored, 64)
        else:
            after = list(data)
            for c in cols:
                if c < 64:
                    after[c] ^= 1
        for b in range(64):
            e = 2 * w + b // 32
            if after[b] != data[b] and e < flat.size:
                index = tuple(int(x) for x in np.unravel_index(e, tuple(t.shape)))
                flips[(module, target, index)] = flips.get((module, target, index), 0) | (
                    1 << (b % 32)
                )
    got = {
        (m, tg, ix, tuple(b for b in range(32) if v >> b & 1)) for (m, tg, ix), v in flips.items()
    }
    return got, status


@pytest.mark.parametrize("ecc", [False, True])
def test_fault_sets_match_a_hand_model_of_words_and_secded(ecc):
    model = _net()
    s = create_sampler(
        "memory",
        sites=_sites(model),
        model=model,
        n=150,
        seed=3,
        layout=LAYOUT,
        patterns=MIX,
        ecc=ecc,
    )
    regions = _regions(model)
    assert s.population == sum(math.ceil(t.numel() / 2) for *_, t, _r in regions) * 72
    statuses = set()
    for k in range(len(s)):
        phys = s.physical(k)
        assert phys == MemoryMap(model, LAYOUT).draw(k, 3, PatternMix(MIX), persistence="permanent")
        size = {"single": 1, "adjacent_bits:2": 2, "adjacent_bits:3": 3}[phys.pattern]
        cells = [(phys.row, phys.column + j) for j in range(size)]
        want, status = _oracle(model, cells, ecc)
        fs = s.draw(k)
        got = {(f.module, f.target, f.index, f.bits) for f in fs}
        models = {f.model for f in fs}
        if ecc and status == "detected":
            # the decoder flags it: the raw flips under the model a campaign records as detected;
            # only check bits flipped: one such fault with no bits on the word's first element
            raw = _oracle(model, cells, False)[0]
            if not raw:
                i = max(j for j, reg in enumerate(regions) if reg[3] <= phys.row)
                module, target, t, first = regions[i]
                e = 2 * (phys.row - first)
                raw = {(module, target, tuple(int(x) for x in np.unravel_index(e, t.shape)), ())}
            assert got == raw and models == {"ecc_detected"}
        else:
            assert got == want and models <= {"bit_flip"}
        statuses.add(status)
    if ecc:  # the seed reaches clean words, corrections, detections and (3 bits) miscorrections
        assert {"corrected", "detected"} <= statuses


def test_ecc_on_and_off_draw_the_same_physical_faults_and_are_pure():
    model = _net()
    kw = dict(sites=_sites(model), model=model, n=40, seed=5, layout=LAYOUT, patterns=MIX)
    on, off = create_sampler("memory", ecc=True, **kw), create_sampler("memory", ecc=False, **kw)
    assert [on.physical(k) for k in range(40)] == [off.physical(k) for k in range(40)]
    forward = [on.draw(k) for k in range(40)]
    again = pickle.loads(pickle.dumps(on))
    assert [again.draw(k) for k in reversed(range(40))][::-1] == forward == on.draws(0, 40)
    longer = create_sampler("memory", ecc=True, **{**kw, "n": 400})
    assert longer.draws(0, 40) == forward  # fault k does not depend on the sample length
    reordered = create_sampler(
        "memory", ecc=True, **{**kw, "patterns": dict(reversed(MIX.items()))}
    )
    assert reordered.draws(0, 40) == forward  # nor on the order the pattern mix is written in


def test_margin_counts_cells_and_fit_per_mbit():
    model = _net()
    s = create_sampler(
        "memory", sites=_sites(model), model=model, margin=0.05, confidence=0.95, layout=LAYOUT
    )
    cells = s.population
    assert len(s) == sample_size(cells, 0.05, 0.95)
    assert s.strata() == {"all": cells}
    assert s.mbit == cells / 2**20
    assert s.fit(1000.0, 0.25) == pytest.approx(1000.0 * cells / 2**20 * 0.25)
    d = s.to_dict()
    assert d["cells"] == cells and d["layout"]["ecc"] == "secded" and d["ecc"] is True


@pytest.mark.parametrize(
    "kw,field,word",
    [
        ({"bits": [3]}, "bits", "bits does not apply"),
        ({"fault_model": "stuck_at_1"}, "fault_model", "fault_model does not apply"),
        ({"op": "melt"}, "memory", "op"),
        ({"layout": {"width": 70}}, "memory", "width"),
        ({"patterns": {"adjacent_bits:80": 1.0}}, "memory", "adjacent_bits"),
        ({"layout": {"width": 72, "ecc": "secded", "colour": 1}}, "memory", "colour"),
    ],
)
def test_bad_settings_name_their_field(kw, field, word):
    model = _net()
    with pytest.raises(TorchFaultError, match=word) as err:
        create_sampler("memory", sites=_sites(model), model=model, n=3, **kw)
    assert err.value.field == field


def test_activation_sites_are_refused_naming_the_targets():
    model = _net()
    sites = fault_space(model, torch.zeros(1, 12), kinds=["outputs", "weights"])
    with pytest.raises(TorchFaultError, match="activations") as err:
        create_sampler("memory", sites=sites, model=model, n=3)
    assert err.value.field == "targets.kinds"


def test_config_memory_settings_are_checked():
    from torchfault.campaign import SamplerConfig

    with pytest.raises(ConfigError, match="sampler.memory.layot") as err:
        SamplerConfig(name="memory", n=3, memory={"layot": {}})
    assert "layout" in str(err.value)
    with pytest.raises(ConfigError, match="sampler.memory"):
        SamplerConfig(name="uniform", n=3, memory={"ecc": True})


# ---------------------------------------------------------------- nonzero and masks


def _pruned() -> nn.Module:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    prune.l1_unstructured(m[0], "weight", amount=0.7)  # weight_orig and a weight_mask buffer
    with torch.no_grad():
        m[2].weight[:, ::2] = 0.0  # pruned in place (prune.remove style)
    return m


def test_nonzero_sampler_draws_only_unpruned_elements_like_nonzero_faults():
    m = _pruned()
    sites = fault_space(m, kinds=["parameters"])
    s = create_sampler("nonzero", sites=sites, model=m, n=300, seed=4, bits=["exponent", "sign"])
    # population: kept elements (mask or value non-zero) x the 9 allowed bits, by hand
    kept = {
        ("0", "weight_orig"): m[0].weight_mask != 0,
        ("0", "bias"): m[0].bias != 0,
        ("2", "weight"): m[2].weight != 0,
        ("2", "bias"): m[2].bias != 0,
    }
    assert s.population == 9 * sum(int(v.sum()) for v in kept.values())
    for (f,) in s:
        assert bool(kept[(f.module, f.target)][f.index]) and f.bits[0] in range(23, 32)
    old = NonzeroFaults(m, n=300, seed=4, kinds="parameters", bits=list(range(23, 32)))
    assert [s.draw(k) for k in range(300)] == old.draws(0, 300)


def test_masks_are_a_target_kind():
    m = _pruned()
    space = fault_space(m, kinds="masks")
    assert [(x.module, x.target, x.kind) for x in space] == [("0", "weight_mask", "buffer")]
    # a stuck mask bit revives a pruned weight: bit 30 set in 0.0 makes 2.0, exactly
    mask = m[0].weight_mask
    idx = tuple(int(i) for i in (mask == 0).nonzero()[0])
    x = torch.randn(4, 10)
    want = m[0].weight.detach().clone()
    want[idx] = m[0].weight_orig.detach()[idx] * 2.0
    from torchfault import Fault

    with inject(m, [Fault("0", "weight_mask", index=idx, bits=(30,), model="stuck_at_1")]):
        out = m[0](x)  # the pruning hook recomputes weight = weight_orig * weight_mask
    assert torch.equal(out, torch.nn.functional.linear(x, want, m[0].bias))
    s = create_sampler("nonzero", sites=space, model=m, n=50)
    assert s.population == int((mask != 0).sum()) * 32
