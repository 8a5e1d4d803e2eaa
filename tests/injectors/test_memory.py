# SPDX-License-Identifier: MIT
"""inject_memory and memory_campaign: replayed against a deep copy faulted with numpy bit views."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.faults import Fault, MemoryFault, MemoryLayout, MemoryMap
from torchfault.injectors import inject_memory, memory_campaign


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


def _apply_by_hand(model: nn.Module, faults: list[dict]) -> nn.Module:
    """A copy of ``model`` with the element bit flips written through numpy views."""
    faulty = copy.deepcopy(model)
    mods = dict(faulty.named_modules())
    for d in faults:
        f = Fault.from_dict(d)
        t = getattr(mods[f.module], f.target)
        assert f.format in ("float32", "bfloat16") and f.model == "bit_flip"
        with torch.no_grad():
            if f.format == "float32":
                words = t.data.numpy().view(np.uint32)
                words[f.index] ^= np.uint32(sum(1 << b for b in f.bits))
            else:  # stored as bf16: flip the bf16 word, widen back (the value is exact in float32)
                x = t.data[f.index].to(torch.bfloat16).view(torch.int16).item() & 0xFFFF
                x ^= sum(1 << b for b in f.bits)
                v = torch.tensor([x if x < 0x8000 else x - 0x10000], dtype=torch.int16)
                t.data[f.index] = v.view(torch.bfloat16).float()[0]
    return faulty


def _outcome(golden: torch.Tensor, out: torch.Tensor) -> list[str]:
    res = []
    for g, o in zip(golden, out):
        if torch.equal(g.view(torch.int32), o.view(torch.int32)):
            res.append("masked")
        elif not torch.isfinite(o).all():
            res.append("due")
        elif g.argmax() != o.argmax():
            res.append("sdc")
        else:
            res.append("benign")
    return res


@pytest.mark.parametrize("fmt", [None, "bfloat16"])
def test_memory_campaign_matches_replay_on_a_copy(fmt):
    model = _net()
    x = torch.randn(24, 12)
    mix = {"single": 0.5, "adjacent_bits:2": 0.2, "adjacent_bits:3": 0.2, "cluster": 0.1}
    layout = MemoryLayout(72, format=fmt, ecc="secded")
    r = memory_campaign(model, x, layout, n=40, seed=7, patterns=mix)
    golden = model(x)
    statuses = set()
    for run in r.runs:
        statuses.add(run["status"])
        for key, faults in (("no_ecc", run["raw"]), ("ecc", run["decoded"])):
            if key == "ecc" and run["status"] == "detected":
                assert run[key] == {"detected": len(x)}
                continue
            with torch.no_grad():
                exp = _outcome(golden, _apply_by_hand(model, faults)(x))
            assert run[key] == {o: exp.count(o) for o in set(exp)}, run
        if run["status"] == "corrected":
            assert run["ecc"] == {"masked": len(x)}
    assert {"corrected", "detected"} <= statuses
    c0, c1 = r.counts(ecc=False), r.counts(ecc=True)
    assert sum(c0.values()) == sum(c1.values()) == 40 * len(x)
    assert c1["detected"] > 0 and c0["detected"] == 0
    assert r.rate("sdc", ecc=False) == c0["sdc"] / (40 * len(x))
    assert r.fit("sdc", False, 1000.0) == pytest.approx(
        1000.0 * r.memory.mbit * r.rate("sdc", False)
    )


def test_inject_memory_leaves_no_trace_when_the_model_raises():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class Boom(Exception):
        pass

    def explode(m, a, o):
        raise Boom

    h = model[2].register_forward_hook(explode)
    mm = MemoryMap(model, MemoryLayout(64))
    with pytest.raises(Boom), inject_memory(model, MemoryFault(0, 30, "word_line"), mm, ecc=False):
        changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert changed
        model(torch.randn(2, 12))
    h.remove()
    for k, v in model.state_dict().items():
        assert torch.equal(v.view(torch.int32), before[k].view(torch.int32))


def test_several_faults_in_one_word_are_decoded_together():
    model = _net()
    mm = MemoryMap(model, MemoryLayout(72, ecc="secded"))
    a = MemoryFault(module="0", target="weight", word=0, bit=3)
    b = MemoryFault(module="0", target="weight", word=0, bit=40)
    assert mm.resolve(a).status == mm.resolve(b).status == "corrected"
    with inject_memory(model, [a, b], mm) as mi:
        assert mi.detected and mi.resolution.status == "detected"


def test_bad_input():
    model = _net()
    other = MemoryMap(model, MemoryLayout(64))
    with (
        pytest.raises(TorchFaultError, match="another model"),
        inject_memory(_net(), MemoryFault(0, 0), other),
    ):
        pass
    with pytest.raises(TorchFaultError, match="n must be an integer >= 1"):
        memory_campaign(model, torch.zeros(2, 12), MemoryLayout(64), n=0)
    with pytest.raises(TorchFaultError, match="share one persistence"):
        MemoryMap(model, MemoryLayout(64)).resolve(
            [MemoryFault(0, 0), MemoryFault(0, 1, persistence="permanent")]
        )


@pytest.mark.filterwarnings("ignore:.*quantize.*:UserWarning")
def test_per_channel_qint8_weights_in_memory_match_their_integers():
    qlin = torch.ao.nn.quantized.Linear(6, 3)
    scales = torch.rand(3) / 20 + 0.01
    qw = torch.quantize_per_channel(
        torch.randn(3, 6), scales, torch.zeros(3, dtype=torch.long), 0, torch.qint8
    )
    qlin.set_weight_bias(qw, torch.zeros(3))
    model = nn.Sequential(qlin)
    mm = MemoryMap(model, MemoryLayout(72, ecc="secded"), kinds="weights")
    assert mm.regions[0].memory.per_word == 8 and mm.regions[0].memory.fmt.name == "qint8"
    before = qlin.weight().int_repr().reshape(-1).tolist()
    # word 1, bits 8..10: element slot 1 of word 1 = flat element 9, bits 0..2
    fault = MemoryFault(module="0", target="weight", word=1, bit=8, pattern="adjacent_bits:3")
    with inject_memory(model, fault, mm, ecc=False) as mi:
        after = qlin.weight().int_repr().reshape(-1).tolist()
    expected = list(before)
    flipped = (expected[9] & 0xFF) ^ 0b111
    expected[9] = flipped - 256 if flipped > 127 else flipped
    assert after == expected and mi.resolution.raw[0].format == "qint8"
    assert qlin.weight().int_repr().reshape(-1).tolist() == before


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_resolved_fault_sets_run_in_the_campaign_engines_with_the_same_outcomes(engine):
    from collections import Counter

    from torchfault import run_campaign

    model = _net()
    x = torch.randn(16, 12)
    mm = MemoryMap(model, MemoryLayout(72, ecc="secded"))
    mix = {"single": 0.6, "adjacent_bits:2": 0.2, "adjacent_bits:3": 0.2}
    mine = memory_campaign(model, x, mm, n=60, seed=2, patterns=mix)
    for ecc in (False, True):
        resolved = [mm.resolve(mm.draw(k, 2, mix)) for k in range(60)]
        sets = [r.faults(ecc) for r in resolved if not r.detected(ecc)]
        runs = run_campaign(model, x, sets, engine=engine).runs
        counts = Counter(r.outcome for r in runs)
        detected = sum(r.detected(ecc) for r in resolved) * len(x)
        assert {
            **dict.fromkeys(("masked", "benign", "sdc", "due"), 0),
            **counts,
            "detected": detected,
        } == mine.counts(ecc)


def test_interval_covers_the_true_rate_and_bounds_the_zero_case():
    import random

    from torchfault.injectors import MemoryCampaignResult

    rng = random.Random(0)
    true, hits, reps = 0.3, 0, 400
    for _ in range(reps):  # each fault: 4 inputs, each an SDC with probability 0.3
        r = MemoryCampaignResult(None, inputs=4)  # type: ignore[arg-type]
        for _ in range(80):
            k = sum(rng.random() < true for _ in range(4))
            r.runs.append({"no_ecc": {"sdc": k, "masked": 4 - k}})
        lo, hi = r.interval("sdc", False)
        assert lo <= r.rate("sdc", False) <= hi
        hits += lo <= true <= hi
    assert 0.92 <= hits / reps <= 0.98  # 95% nominal
    zero = MemoryCampaignResult(None, inputs=4)  # type: ignore[arg-type]
    zero.runs = [{"ecc": {"masked": 4}}] * 100
    assert zero.interval("sdc", True) == (0.0, pytest.approx(1 - 0.025 ** (1 / 100)))
    with pytest.raises(TorchFaultError, match="confidence must be in"):
        zero.interval("sdc", True, confidence=1.5)


def test_outcomes_by_region_pattern_and_status():
    model = _net()  # Linear(12, 16), ReLU, Linear(16, 5): float32, 2 per 64-bit data word
    x = torch.randn(8, 12)
    mix = {"single": 0.7, "adjacent_bits:2": 0.3}
    r = memory_campaign(model, x, MemoryLayout(72, ecc="secded"), n=80, seed=4, patterns=mix)
    # rows by hand: 0.weight 96, 0.bias 8, 2.weight 40, 2.bias 3 (5 elements in 3 words)
    bounds = [
        (0, 96, "0:weight"),
        (96, 104, "0:bias"),
        (104, 144, "2:weight"),
        (144, 147, "2:bias"),
    ]
    assert r.memory.rows == 147
    for run in r.runs:
        row = run["fault"]["row"]
        assert run["region"] == next(n for lo, hi, n in bounds if lo <= row < hi)
    for key in ("region", "pattern", "status"):
        for ecc in (False, True):
            parts = r.by(key, ecc)
            total = {o: sum(p[o] for p in parts.values()) for o in r.counts(ecc)}
            assert total == r.counts(ecc)
    assert set(r.by("pattern", True)) == {"single", "adjacent_bits:2"}
    assert r.by("status", True)["detected"]["detected"] == 8 * r.statuses()["detected"]
    with pytest.raises(TorchFaultError, match="key must be 'region'"):
        r.by("layer", True)
