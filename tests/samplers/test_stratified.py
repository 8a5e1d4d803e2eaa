# SPDX-License-Identifier: MIT
"""The stratified sampler: strata and populations, allocations, the Neyman pilot, purity, errors."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from torchfault.errors import TorchFaultError
from torchfault.faults._fault import FaultSite
from torchfault.samplers import STRATA, create_sampler, default_bit_groups

SITES = [
    FaultSite("conv", "weight", "parameter", (6, 1, 3, 3), "float32", 32),
    FaultSite("fc", "weight", "parameter", (10, 20), "float32", 32),
    FaultSite("half", "weight", "parameter", (5,), "float16", 16),
]
POP = 54 * 32 + 200 * 32 + 5 * 16


def test_strata_partition_the_population():
    for strata in STRATA:
        s = create_sampler(
            "stratified", sites=SITES, n=100, strata=strata, allocation="proportional"
        )
        assert sum(s.strata().values()) == s.population == POP
    s = create_sampler("stratified", sites=SITES, n=100, allocation="proportional")
    pops = s.strata()
    # float32: sign 1 bit, exponent_msb 1, exponent 7, mantissa_high 12, mantissa_low 11
    assert pops[("fc:weight", "exponent_msb")] == 200 and pops[("fc:weight", "exponent")] == 1400
    assert pops[("half:weight", "mantissa_low")] == 5 * 5
    assert default_bit_groups("float16", 16)["exponent"] == (10, 11, 12, 13)
    # every (element, bit) pair of the population lies in exactly one stratum: an exhaustive
    # stratified sample (n = population) draws each pair once
    full = create_sampler("stratified", sites=SITES, n=POP, allocation="proportional", seed=1)
    pairs = {(f.module, f.index, f.bits) for (f,) in full.draws(0, len(full))}
    assert len(full) == len(pairs) == POP


@pytest.mark.parametrize("allocation", ["proportional", "equal"])
def test_allocation_and_prefixes(allocation):
    s = create_sampler("stratified", sites=SITES, n=600, allocation=allocation, seed=2)
    pops = np.array(list(s.strata().values()), dtype=float)
    sizes = s.strata_sizes
    assert sizes.sum() == 600 and (sizes <= pops).all()
    if allocation == "proportional":
        assert np.abs(sizes - 600 * pops / pops.sum()).max() <= 1
    else:  # equal, capped at small strata
        assert sizes.max() - sizes[sizes < pops].min() <= 1
    # every prefix follows the allocation (what adaptive stopping relies on)
    idx = s.strata_index(0, 600)
    for n in (50, 200, 433):
        got = np.bincount(idx[:n], minlength=len(sizes))
        assert np.abs(got - n * sizes / 600).max() <= 1.01
    # strata_index agrees with stratum_of, and draws are without replacement
    keys = list(s.strata())
    faults = s.draws(0, 600)
    assert [keys[i] for i in idx] == [s.stratum_of(f) for f in faults]
    assert len(set(faults)) == 600


def test_pure_function_of_seed_and_k():
    a = create_sampler("stratified", sites=SITES, n=300, allocation="proportional", seed=5)
    b = pickle.loads(pickle.dumps(a))
    forward = a.draws(0, 300)
    assert [b.draw(k) for k in reversed(range(300))][::-1] == forward
    c = create_sampler("stratified", sites=SITES, n=300, allocation="proportional", seed=6)
    assert c.draws(0, 300) != forward


def test_neyman_pilot_then_allocation():
    s = create_sampler("stratified", sites=SITES, n=1000, seed=3)
    keys = list(s.strata())
    assert not s.allocated and len(s) == s.pilot_faults == 10 * len(keys)
    pilot = s.draws(0, s.pilot_faults)
    got = Counter(s.stratum_of(f) for f in pilot)
    # 10 per stratum; the float16 site's 5-element strata are taken whole, their rest spread
    assert all(min(10, n) <= got[k] <= min(11, n) for k, n in s.strata().items())
    with pytest.raises(TorchFaultError, match="out of range before the Neyman allocation"):
        s.draw(s.pilot_faults)
    # two strata with spread (exponent top bits), the others without (pooled)
    sd = {k: {"exponent_msb": 0.45, "exponent": 0.1}.get(k[1], 0.0) for k in keys}
    s.allocate(sd)
    assert s.allocated and len(s) == 1000
    assert s.draws(0, s.pilot_faults) == pilot  # the pilot faults are unchanged
    pops = s.strata()
    extra = {k: int(n) - int(p) for k, n, p in zip(keys, s.strata_sizes, s.pilot_sizes)}
    assert all(int(n) <= pops[k] for k, n in zip(keys, s.strata_sizes))
    full = {k for k, n in zip(keys, s.strata_sizes) if n == pops[k]}
    spread = [k for k in keys if sd[k] > 0 and k not in full]
    flat = [k for k in keys if sd[k] == 0 and k not in full]
    # Neyman among the strata with spread: extra faults in proportion to N_h S_h
    ratio = [extra[k] / (pops[k] * sd[k]) for k in spread]
    assert max(ratio) - min(ratio) <= 2 / min(pops[k] * sd[k] for k in spread) + 1e-9
    # the pool without spread: in proportion to N_h
    ratio = [extra[k] / pops[k] for k in flat]
    assert max(ratio) - min(ratio) <= 2 / min(pops[k] for k in flat) + 1e-9
    # the same pilot outcomes give the same faults (a resumed campaign redraws them)
    t = create_sampler("stratified", sites=SITES, n=1000, seed=3)
    t.allocate(sd)
    assert t.draws(0, 1000) == s.draws(0, 1000)


def test_neyman_margin_plan_meets_the_margin():
    """With a margin, the plan is the smallest found whose variance (Neyman part plus the pool
    of strata without spread) meets (margin / z)^2; a larger budget continues in its shares."""
    m = create_sampler("stratified", sites=SITES, margin=0.01, seed=3)
    keys = list(m.strata())
    sd = {k: {"exponent_msb": 0.45, "exponent": 0.1}.get(k[1], 0.0) for k in keys}
    m.allocate(sd)
    pops = np.array([m.strata()[k] for k in keys], dtype=float)
    w = pops / POP
    s = np.array([sd[k] for k in keys])
    n = m.strata_sizes.astype(float)
    flat = s == 0
    n_f = n[flat].sum()
    q = 0.5 / (n_f + 1)
    var = (w[~flat] ** 2 * s[~flat] ** 2 / n[~flat]).sum() + w[flat].sum() ** 2 * q * (1 - q) / n_f
    assert var <= (0.01 / 1.959963984540054) ** 2 * 1.02  # integer rounding of the shares
    assert len(m) < 0.5 * create_sampler("uniform", sites=SITES, margin=0.01).__len__()
    big = create_sampler("stratified", sites=SITES, n=3000, seed=3)
    big.allocate(sd, target_margin=0.01)
    assert len(big) == 3000
    assert big.draws(0, len(m)) == m.draws(0, len(m))  # the plan first, then the rest


def test_bad_settings_name_the_field():
    cases = [
        (
            {"allocation": "neymann"},
            "allocation: unknown allocation 'neymann'.*Did you mean 'neyman'",
        ),
        ({"strata": "layers"}, "strata: unknown strata 'layers'.*Did you mean 'layer'"),
        (
            {"pilot": 5000},
            "pilot: the pilot round \\(5000 faults\\) is larger than the budget n = 300",
        ),
        ({"pilot": 3}, "pilot: 3 faults cannot give each of the"),
        ({"allocation": "equal", "pilot": 20}, "pilot: only Neyman allocation"),
        ({"bit_groups": {"top": [40]}}, "bit_groups: group\\(s\\) 'top' hold no allowed bit"),
        ({"bit_groups": {"a": [30], "b": [30, 29]}}, "bit_groups: bit 30 is in groups"),
        ({"bit_groups": [30]}, "bit_groups: give a mapping"),
    ]
    for settings, message in cases:
        with pytest.raises(TorchFaultError, match=message):
            create_sampler("stratified", sites=SITES, n=300, **settings)
    s = create_sampler("stratified", sites=SITES, n=300, allocation="equal")
    with pytest.raises(TorchFaultError, match="allocate\\(\\) is for Neyman"):
        s.allocate({})
    n = create_sampler("stratified", sites=SITES, n=300)
    with pytest.raises(TorchFaultError, match="no standard deviation"):
        n.allocate({})


def test_custom_bit_groups_and_other():
    s = create_sampler(
        "stratified",
        sites=SITES[:2],
        n=100,
        allocation="proportional",
        strata="bit_group",
        bit_groups={"top": [30], "exp": [23, 24, 25, 26, 27, 28, 29]},
    )
    pops = s.strata()
    # the allowed bits in no group form "other"
    assert pops == {"top": 254, "exp": 254 * 7, "other": 254 * 24}


@pytest.mark.parametrize("model", ["zero", "value", "random_value"])
def test_whole_element_models_count_elements_not_bits(model):
    """zero, value and random_value replace an element: the population is the elements (not
    elements x bits), a margin sizes a sample of elements, and the faults name no bits."""
    from torchfault.samplers import sample_size

    params = {"value": {"value": 1.0}}.get(model, {})
    elements = 54 + 200 + 5
    u = create_sampler("uniform", sites=SITES, n=elements, fault_model=model, params=params)
    assert u.population == elements
    faults = u.draws(0, elements)
    assert {f.bits for (f,) in faults} == {()}
    assert len({(f.module, f.index) for (f,) in faults}) == elements  # every element once
    sized = create_sampler("uniform", sites=SITES, margin=0.05, fault_model=model, params=params)
    assert len(sized) == sample_size(elements, 0.05, 0.95)
    st = create_sampler(
        "stratified", sites=SITES, n=50, allocation="proportional", fault_model=model, params=params
    )
    assert st.strata() == {
        ("conv:weight", "element"): 54,
        ("fc:weight", "element"): 200,
        ("half:weight", "element"): 5,
    }
    with pytest.raises(TorchFaultError, match="no bit positions"):
        create_sampler("per_bit", sites=SITES, n=5, fault_model=model, params=params)
    with pytest.raises(TorchFaultError, match="replaces whole elements") as info:
        create_sampler("uniform", sites=SITES, n=5, fault_model=model, params=params, bits=[30])
    assert info.value.field == "bits"
