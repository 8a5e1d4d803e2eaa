# SPDX-License-Identifier: MIT
"""Confidence intervals against hand computations and SciPy; adaptive stopping."""

from __future__ import annotations

import math
import sys

import pytest

from torchfault.analysis import (
    beta_ppf,
    clopper_pearson_interval,
    interval,
    should_stop,
    wilson_interval,
)
from torchfault.errors import TorchFaultError

scipy_stats = pytest.importorskip("scipy.stats")

CASES = [
    (0, 1),
    (1, 1),
    (0, 10),
    (3, 10),
    (10, 10),
    (10, 100),
    (1, 1000),
    (500, 1000),
    (9_999, 10_000),
    (17, 16_452),
]


def test_wilson_hand_computation():
    # k = 10, n = 100, 95 %: z = 1.959963984540054
    z = 1.959963984540054
    p = 0.1
    centre = (p + z * z / 200) / (1 + z * z / 100)
    half = z / (1 + z * z / 100) * math.sqrt(p * (1 - p) / 100 + z * z / 40000)
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(centre - half, abs=1e-12)
    assert high == pytest.approx(centre + half, abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)


@pytest.mark.parametrize("k,n", CASES)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels_formula(k, n, confidence):
    z = scipy_stats.norm.ppf(1 - (1 - confidence) / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low, high = wilson_interval(k, n, confidence)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert 0.0 <= low <= p <= high <= 1.0


@pytest.mark.parametrize("k,n", CASES)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_both_paths_match_scipy(k, n, confidence):
    a = 1 - confidence
    ref_low = 0.0 if k == 0 else scipy_stats.beta.ppf(a / 2, k, n - k + 1)
    ref_high = 1.0 if k == n else scipy_stats.beta.ppf(1 - a / 2, k + 1, n - k)
    for use_scipy in (True, False):
        low, high = clopper_pearson_interval(k, n, confidence, use_scipy=use_scipy)
        assert low == pytest.approx(ref_low, abs=1e-6)
        assert high == pytest.approx(ref_high, abs=1e-6)


@pytest.mark.parametrize("q", [1e-6, 0.025, 0.5, 0.975, 0.999999])
@pytest.mark.parametrize("a,b", [(0.5, 0.5), (1, 1), (2, 50), (50, 2), (300, 7000), (1, 16452)])
def test_own_beta_ppf_matches_scipy(q, a, b):
    assert beta_ppf(q, a, b, use_scipy=False) == pytest.approx(
        scipy_stats.beta.ppf(q, a, b), abs=1e-9
    )


def test_clopper_pearson_contains_wilson_roughly():
    # Clopper-Pearson is conservative: wider than Wilson for moderate n
    cl, ch = clopper_pearson_interval(10, 100)
    wl, wh = wilson_interval(10, 100)
    assert ch - cl > wh - wl


def test_interval_dispatch_and_errors():
    assert interval(3, 10, 0.9, "clopper_pearson") == clopper_pearson_interval(3, 10, 0.9)
    assert interval(0, 0) == (0.0, 1.0)
    with pytest.raises(TorchFaultError, match="Did you mean 'wilson'"):
        interval(3, 10, method="wilsn")
    for bad in [(-1, 10), (11, 10), (1.5, 10)]:
        with pytest.raises(TorchFaultError):
            wilson_interval(*bad)
    with pytest.raises(TorchFaultError, match="confidence"):
        wilson_interval(1, 10, 1.0)


def test_should_stop():
    # half width of Wilson at p = 0.5, n = 9604 is about 1 %
    assert should_stop(4802, 9700, 0.01, method="wilson")
    assert not should_stop(4802, 9000, 0.01, method="wilson")
    assert not should_stop(0, 0, 0.5)
    # monotone: once the interval is narrow enough, more runs keep it so at the same rate
    n = next(n for n in range(10, 5000, 10) if should_stop(n // 10, n, 0.02, method="wilson"))
    assert all(should_stop(m // 10, m, 0.02, method="wilson") for m in range(n, n + 500, 10))
    low, high = wilson_interval(n // 10, n)
    assert (high - low) / 2 <= 0.02
    with pytest.raises(TorchFaultError, match="margin"):
        should_stop(1, 10, 0.0)
    assert should_stop(1, 10_000, 0.01, method="clopper_pearson")


def test_clopper_pearson_without_scipy(monkeypatch):
    with_scipy = clopper_pearson_interval(7, 180, 0.95)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    without = clopper_pearson_interval(7, 180, 0.95)
    assert without == pytest.approx(with_scipy, abs=1e-9)
    with pytest.raises(TorchFaultError, match="SciPy"):
        beta_ppf(0.5, 2, 3, use_scipy=True)
