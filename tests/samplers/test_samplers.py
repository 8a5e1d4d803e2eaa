# SPDX-License-Identifier: MIT
"""Samplers: sizes, purity in (seed, k), uniformity, strata, exhaustive order, BER counts."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from statistics import NormalDist

import numpy as np
import pytest

from torchfault.errors import TorchFaultError
from torchfault.faults._fault import Fault, FaultSite
from torchfault.samplers import (
    SAMPLERS,
    create_sampler,
    is_sampler,
    list_samplers,
    resolve_bits,
    sample_size,
)
from torchfault.samplers._samplers import _permute, _permute_one, _round_keys

SITES = [
    FaultSite("conv1", "weight", "parameter", (4, 1, 3, 3), "float32", 32),
    FaultSite("conv1", "bias", "parameter", (4,), "float32", 32),
    FaultSite("relu", "output", "activation", (4, 6, 6), "float32", 32),
    FaultSite("bn", "running_mean", "buffer", (4,), "float16", 16),
]
POP = (36 + 4 + 144) * 32 + 4 * 16


# samplers built from sites alone (those that read a model's tensors, memory and nonzero, are
# tested with a model in tests/samplers/test_memory_sampler.py)
SITE_SAMPLERS = list_samplers(needs_model=None)


def _settings(name: str) -> dict:
    if name == "exhaustive":
        return {}
    if name == "ber":
        return {"n": 20, "rate": 1e-3}
    return {"n": 50}


# ---------------------------------------------------------------- sample size


def _formula(N: int, e: float, conf: float, t: float | None = None, p: float = 0.5) -> float:
    t = NormalDist().inv_cdf(1 - (1 - conf) / 2) if t is None else t
    return N / (1 + e * e * (N - 1) / (t * t * p * (1 - p)))


def test_sample_size_leveugle_example():
    # The paper's number: 16,452 comes from t tabulated as 2.576 and rounding up;
    # the exact quantile 2.5758... gives 16,449.7 -> 16,450.
    assert sample_size(1_984_192, 0.01, 0.99) == 16_452
    assert math.ceil(_formula(1_984_192, 0.01, 0.99, t=2.576)) == 16_452
    assert (
        sample_size(1_984_192, 0.01, 0.99, exact=True)
        == math.ceil(_formula(1_984_192, 0.01, 0.99))
        == 16_450
    )


@pytest.mark.parametrize("N", [1, 2, 10, 577, 10_000, 10**7, 10**12])
@pytest.mark.parametrize("e,conf,p", [(0.01, 0.95, 0.5), (0.05, 0.9, 0.2), (0.02, 0.999, 0.5)])
def test_sample_size_matches_formula(N, e, conf, p):
    n = sample_size(N, e, conf, p, exact=True)
    assert n == max(1, min(N, math.ceil(_formula(N, e, conf, p=p) - 1e-9)))
    assert 1 <= n <= N


@pytest.mark.parametrize(
    "args,word",
    [
        ((0, 0.01, 0.95), "population"),
        ((-5, 0.01, 0.95), "population"),
        ((100, 0.0, 0.95), "margin"),
        ((100, 1.0, 0.95), "margin"),
        ((100, 0.01, 1.0), "confidence"),
        ((100, 0.01, 0.0), "confidence"),
        ((100, 0.01, 0.95, 1.5), "p"),
        (("100", 0.01, 0.95), "population"),
    ],
)
def test_sample_size_errors(args, word):
    with pytest.raises(TorchFaultError, match=word):
        sample_size(*args)


# ---------------------------------------------------------------- registry


def test_registry_helpers():
    assert list_samplers() == [
        "ber",
        "exhaustive",
        "memory",
        "nonzero",
        "per_bit",
        "per_layer",
        "stratified",
        "uniform",
    ]
    assert is_sampler("per_bit") and not is_sampler("nope")
    with pytest.raises(TorchFaultError, match="Did you mean 'per_layer'"):
        create_sampler("per_layr", sites=SITES, n=3)
    with pytest.raises(TorchFaultError, match="nonsense"):
        create_sampler("uniform", sites=SITES, n=3, nonsense=1)


@pytest.mark.parametrize("name", SITE_SAMPLERS)
def test_pure_function_of_seed_and_k(name):
    s = create_sampler(name, sites=SITES, seed=7, **_settings(name))
    assert s.population == POP
    forward = [s.draw(k) for k in range(len(s))]
    # any order, another object, another process (pickle round trip), vectorised ranges
    s2 = pickle.loads(pickle.dumps(create_sampler(name, sites=SITES, seed=7, **_settings(name))))
    backward = [s2.draw(k) for k in reversed(range(len(s2)))][::-1]
    assert forward == backward
    assert s2.draws(0, len(s2)) == forward
    assert list(s) == forward
    for faults in forward:
        assert isinstance(faults, tuple)
        for f in faults:
            assert isinstance(f, Fault)
            site = next(x for x in SITES if (x.module, x.target) == (f.module, f.target))
            assert len(f.index) == len(site.shape)
            assert all(0 <= i < d for i, d in zip(f.index, site.shape))
            assert all(0 <= b < site.bit_width for b in f.bits)
            assert f.format == site.format
            assert f.sample is None
    if name != "exhaustive":
        other = create_sampler(name, sites=SITES, seed=8, **_settings(name))
        assert [other.draw(k) for k in range(len(other))] != forward


@pytest.mark.parametrize("name", ["uniform", "ber"])
def test_fault_k_does_not_depend_on_the_sample_length(name):
    # an adaptive campaign plans max_faults faults and stops early: fault k must be the same
    # whatever the planned length, or a stopped campaign would not be a prefix of a longer one
    extra = {"rate": 1e-3} if name == "ber" else {}
    short = create_sampler(name, sites=SITES, seed=7, n=40, **extra)
    long = create_sampler(name, sites=SITES, seed=7, n=len(SITES) * 400, **extra)
    assert short.draws(0, 40) == long.draws(0, 40)


def test_draws_are_pinned():
    # fault k must stay the same across versions and machines: a resumed store holds the faults
    # an earlier run drew, and the missing runs are drawn again from (seed, k)
    def first(name, k, **kw):
        (f, *_) = create_sampler(name, sites=SITES, seed=7, **kw).draw(k)
        return f.module, f.target, f.index, f.bits

    assert first("uniform", 1, n=50) == ("bn", "running_mean", (0,), (13,))
    assert first("uniform", 49, n=50) == ("relu", "output", (2, 1, 4), (21,))
    assert first("per_layer", 1, n=5) == ("conv1", "weight", (2, 0, 0, 1), (23,))
    assert first("per_bit", 63, n=2) == ("relu", "output", (3, 0, 1), (31,))
    assert first("ber", 1, n=3, rate=1e-3) == ("conv1", "weight", (1, 0, 2, 0), (17,))


@pytest.mark.parametrize("name", SITE_SAMPLERS)
def test_out_of_range(name):
    s = create_sampler(name, sites=SITES, **_settings(name))
    with pytest.raises(TorchFaultError, match="out of range"):
        s.draw(len(s))
    with pytest.raises(TorchFaultError):
        s.draw(-1)


def test_settings_pass_through():
    s = create_sampler(
        "uniform",
        sites=SITES,
        n=5,
        fault_model="random_value",
        persistence="transient",
        params={"low": -1.0, "high": 1.0},
    )
    f = s.draw(0)[0]
    assert f.model == "random_value" and f.persistence == "transient"
    assert f.param_dict == {"high": 1.0, "low": -1.0}


@pytest.mark.parametrize(
    "kw,word",
    [
        ({"n": 0}, "n must"),
        ({"n": 1.5}, "n must"),
        ({}, "give the number"),
        ({"n": 5, "margin": 0.01}, "not both"),
        ({"margin": 1.2}, "margin"),
        ({"margin": 0.01, "confidence": 1.0}, "confidence"),
        ({"n": 5, "seed": -1}, "seed"),
        ({"n": 5, "persistence": "forever"}, "persistence"),
        ({"n": 5, "bits": [40, 50]}, "bits"),
        ({"n": 5, "bits": ["exponnt"]}, "Did you mean 'exponent'"),
    ],
)
def test_setting_errors(kw, word):
    with pytest.raises(TorchFaultError, match=word):
        create_sampler("uniform", sites=SITES, **kw)


def test_no_sites():
    with pytest.raises(TorchFaultError, match="no fault sites"):
        create_sampler("uniform", sites=[], n=3)


# ---------------------------------------------------------------- uniform


def test_permutation_is_bijection():
    for size in [1, 2, 3, 5, 17, 64, 1000, 4097]:
        perm = _permute(np.arange(size), size, _round_keys(3, 0))
        assert sorted(perm.tolist()) == list(range(size))
    # the scalar fast path is the same permutation
    for size in [2, 5, 1000, 10**12 + 3]:
        keys = _round_keys(9, 1)
        idx = np.arange(min(size, 300))
        assert _permute(idx, size, keys).tolist() == [_permute_one(int(i), size, keys) for i in idx]
    big = 10**15 + 7
    vals = _permute(np.arange(10_000), big, _round_keys(0, 0))
    assert len(set(vals.tolist())) == 10_000 and vals.min() >= 0 and vals.max() < big


def test_uniform_without_replacement_and_margin():
    s = create_sampler("uniform", sites=SITES, margin=0.05, confidence=0.95)
    assert len(s) == sample_size(POP, 0.05, 0.95)
    pairs = [(f.module, f.target, f.index, f.bits) for (f,) in s]
    assert len(set(pairs)) == len(pairs)
    full = create_sampler("uniform", sites=SITES, n=10**9)
    assert len(full) == POP  # capped at the population
    assert len({(f.module, f.target, f.index, f.bits) for (f,) in full}) == POP


def test_uniform_is_uniform():
    # chi-square over sites (proportional to population) and over bit positions
    sites = [
        FaultSite("a", "weight", "parameter", (50,), "float32", 32),
        FaultSite("b", "weight", "parameter", (150,), "float32", 32),
        FaultSite("c", "output", "activation", (300,), "float32", 32),
    ]
    s = create_sampler("uniform", sites=sites, n=12_000, seed=11)
    site, element, bit = s.locate(0, len(s))
    counts = np.bincount(site, minlength=3)
    expected = len(s) * np.array([50, 150, 300]) / 500
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # 2 dof, p = 0.001
    bc = np.bincount(bit, minlength=32)
    e = len(s) / 32
    assert float(((bc - e) ** 2 / e).sum()) < 61.1  # 31 dof, p = 0.001
    # element indices within a site uniform too
    el = np.bincount(element[site == 2] // 30, minlength=10)
    e = el.sum() / 10
    assert float(((el - e) ** 2 / e).sum()) < 27.9  # 9 dof


# ---------------------------------------------------------------- stratified


def test_per_layer_strata():
    s = create_sampler("per_layer", sites=SITES, n=100, seed=1)
    # conv1.bias has 128 pairs, bn.running_mean 64 (< 100: covered whole)
    assert s.strata_sizes.tolist() == [100, 100, 100, 64]
    assert len(s) == 364
    per_site = Counter((f.module, f.target) for (f,) in s)
    assert per_site == {
        ("conv1", "weight"): 100,
        ("conv1", "bias"): 100,
        ("relu", "output"): 100,
        ("bn", "running_mean"): 64,
    }
    # no stratum smaller than n -> site k // n
    big = create_sampler("per_layer", sites=SITES[:3], n=50)
    for k in range(len(big)):
        f = big.draw(k)[0]
        assert (f.module, f.target) == (SITES[k // 50].module, SITES[k // 50].target)
    sized = create_sampler("per_layer", sites=SITES, margin=0.1, confidence=0.9)
    assert sized.strata_sizes.tolist() == [sample_size(s.population, 0.1, 0.9) for s in SITES]


def test_per_bit_strata():
    s = create_sampler("per_bit", sites=SITES, n=30, seed=2)
    assert s.bit_strata == list(range(32))
    # bits 0..15 have 188 elements, bits 16..31 only the float32 sites' 184
    assert s.strata() == {b: 188 if b < 16 else 184 for b in range(32)}
    assert len(s) == 32 * 30
    for k in range(len(s)):
        (f,) = s.draw(k)
        assert f.bits == (k // 30,)
        if k // 30 >= 16:
            assert f.module != "bn"
    small = create_sampler("per_bit", sites=SITES, n=1000, bits=[0, 31])
    assert small.strata_sizes.tolist() == [188, 184]
    assert len({(f.module, f.target, f.index) for (f,) in small.draws(0, 188)}) == 188


def test_bits_restriction():
    s = create_sampler("uniform", sites=SITES, n=500, bits=["exponent"], seed=3)
    for (f,) in s:
        if f.format == "float16":
            assert 10 <= f.bits[0] < 15
        else:
            assert 23 <= f.bits[0] < 31
    assert s.population == 184 * 8 + 4 * 5
    assert resolve_bits(["sign", "mantissa"], "bfloat16", 16) == (0, 1, 2, 3, 4, 5, 6, 15)
    with pytest.raises(TorchFaultError, match="floating-point"):
        resolve_bits(["exponent"], "int8", 8)


# ---------------------------------------------------------------- exhaustive


def test_exhaustive_order_and_limit():
    sites = [
        FaultSite("fc", "weight", "parameter", (2, 3), "int8", 8),
        FaultSite("fc", "bias", "parameter", (2,), "int8", 8),
    ]
    s = create_sampler("exhaustive", sites=sites)
    assert len(s) == s.population == 64
    expected = [
        (sites[0].module, sites[0].target, (i, j), (b,))
        for i in range(2)
        for j in range(3)
        for b in range(8)
    ] + [("fc", "bias", (i,), (b,)) for i in range(2) for b in range(8)]
    assert [(f.module, f.target, f.index, f.bits) for (f,) in s] == expected
    assert len(create_sampler("exhaustive", sites=sites, bits=[7])) == 8
    with pytest.raises(TorchFaultError, match="limit"):
        create_sampler(
            "exhaustive", sites=[FaultSite("x", "weight", "parameter", (1000, 1000), "float32", 32)]
        )
    with pytest.raises(TorchFaultError, match="do not apply"):
        create_sampler("exhaustive", sites=sites, n=10)


# ---------------------------------------------------------------- ber


def test_ber_counts_follow_binomial():
    site = FaultSite("fc", "weight", "parameter", (100, 100), "float32", 32)
    rate = 2e-5  # mean 6.4 bits per run
    s = create_sampler("ber", sites=[site], n=2000, rate=rate, seed=5)
    counts = np.array([sum(len(f.bits) for f in faults) for faults in s])
    mean = site.population * rate
    assert abs(counts.mean() - mean) < 4 * math.sqrt(mean / len(s))
    assert abs(counts.var() - mean * (1 - rate)) < 0.25 * mean
    for faults in s.draws(0, 200):
        idx = [f.index for f in faults]
        assert len(idx) == len(set(idx))  # one Fault per element
        for f in faults:
            assert list(f.bits) == sorted(set(f.bits))


def test_ber_settings():
    with pytest.raises(TorchFaultError, match="rate"):
        create_sampler("ber", sites=SITES, n=3, rate=0.0)
    with pytest.raises(TorchFaultError, match="margin"):
        create_sampler("ber", sites=SITES, margin=0.01, rate=0.1)
    s = create_sampler("ber", sites=SITES, n=3, rate=1.0, bits=[0])
    assert sum(len(f.bits) for f in s.draw(0)) == 188  # every allowed bit flipped


def test_registry_parametrized_entries_have_info():
    for name in list_samplers():
        info = SAMPLERS.info(name)
        assert info.description
        assert "stratified" in info.capabilities
