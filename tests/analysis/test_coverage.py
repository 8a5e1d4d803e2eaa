# SPDX-License-Identifier: MIT
"""Coverage of torchfault's intervals against an exhaustive truth table built here.

The truth: a small two-layer perceptron (16 -> 12 -> 5, weights seeded) in float64 whose float32
weights get every single-bit flip, each on 8 inputs, evaluated in closed form with numpy (a flip
of ``W2[i, j]`` moves logit ``i`` by ``delta * h_j``; a flip of ``W1[i, j]`` moves hidden unit
``i`` and, through the ReLU, every logit): 8,064 faults x 8 inputs, exhaustively, in a few ms.
Samples are drawn with torchfault's own samplers and estimated with the functions summaries use
(``estimate``/``estimate_groups`` on per-fault fractions; ``test_arrays_are_what_summaries_give``
checks that ``summarize`` and ``OutcomeAccumulator`` give the same numbers); a 95 % interval must
contain the true rate in about 95 % of the seeds. The run-count intervals the code used before
(Wilson over runs, strata pooled) are computed beside them and fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from torchfault.analysis import (
    INTERVAL_METHODS,
    OutcomeAccumulator,
    SamplingDesign,
    estimate,
    estimate_groups,
    stratum_sd,
    summarize,
    wilson_interval,
)
from torchfault.faults._fault import FaultSite
from torchfault.samplers import create_sampler

INPUTS = 8
SITES = [
    FaultSite("fc1", "weight", "parameter", (12, 16), "float32", 32),
    FaultSite("fc2", "weight", "parameter", (5, 12), "float32", 32),
]
SEEDS = 300
#: seeds of the slower tests (a sampler per seed with many small strata)
FEW_SEEDS = 150


def _flip(w: np.ndarray, bit: int) -> np.ndarray:
    u = w.astype(np.float32).view(np.uint32) ^ np.uint32(1 << bit)
    return u.view(np.float32).astype(np.float64)


def _truth() -> np.ndarray:
    """``truth[f, i]``: fault f (the exhaustive sampler's order) on input i is an SDC."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (12, 16)).astype(np.float32).astype(np.float64)
    w2 = rng.normal(0, 0.5, (5, 12)).astype(np.float32).astype(np.float64)
    x = rng.normal(0, 1, (INPUTS, 16))
    pre = x @ w1.T
    h = np.maximum(pre, 0)
    logits = h @ w2.T
    top = logits.argmax(axis=1)
    out = []
    with np.errstate(over="ignore", invalid="ignore"):
        # fc1 faults, element (i, j) row-major, bits ascending
        for i in range(12):
            for j in range(16):
                delta = np.array([_flip(np.array([w1[i, j]]), b)[0] for b in range(32)]) - w1[i, j]
                hi = np.maximum(pre[None, :, i] + delta[:, None] * x[None, :, j], 0)  # (32, n)
                new = logits[None] + (hi - h[None, :, i])[..., None] * w2[None, None, :, i]
                out.append(_sdc(new, top))
        for i in range(5):
            for j in range(12):
                delta = np.array([_flip(np.array([w2[i, j]]), b)[0] for b in range(32)]) - w2[i, j]
                new = np.repeat(logits[None], 32, axis=0)
                new[:, :, i] += delta[:, None] * h[None, :, j]
                out.append(_sdc(new, top))
    return np.concatenate(out)


def _sdc(new: np.ndarray, top: np.ndarray) -> np.ndarray:
    finite = np.isfinite(new).all(axis=-1)
    return finite & (new.argmax(axis=-1) != top[None, :])


TRUTH = _truth()
RATE = float(TRUTH.mean())


def _pairs(sampler, start: int, stop: int) -> np.ndarray:
    site, element, bit = sampler.locate(start, stop)
    offsets = np.array([0, 12 * 16 * 32])
    return offsets[site] + element * 32 + bit


def _sample(sampler, n: int, per: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-fault SDC fractions, runs and strata of faults 0..n-1 when fault k runs on inputs
    (k * per + j) % INPUTS, as a campaign does."""
    ks = np.arange(n)
    cols = (ks[:, None] * per + np.arange(per)[None, :]) % INPUTS
    y = TRUTH[_pairs(sampler, 0, n)[:, None], cols].mean(axis=1)
    return y, np.full(n, per), sampler.strata_index(0, n)


def _pops(sampler) -> list[float]:
    return [float(v) for v in sampler.strata().values()]


def _runs(sampler, n: int, per: int) -> tuple[list[dict], dict]:
    """The run records of the same faults (for summarize)."""
    pairs = _pairs(sampler, 0, n)
    faults = dict(enumerate(sampler.draws(0, n)))
    runs = [
        {
            "fault_id": k,
            "input_id": (k * per + j) % INPUTS,
            "outcome": "sdc" if TRUTH[pairs[k], (k * per + j) % INPUTS] else "masked",
        }
        for k in range(n)
        for j in range(per)
    ]
    return runs, faults


def test_truth_table_is_plausible():
    # exponent bits make SDCs, low mantissa bits never: a rate near the boundary per bit
    per_bit = TRUTH.reshape(-1, 32, INPUTS).mean(axis=(0, 2))
    assert 0.005 < RATE < 0.1
    assert per_bit[30] > 0.25 and per_bit[:12].max() == 0.0
    # the closed form agrees with a plain forward pass of the flipped model for a few faults
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (12, 16)).astype(np.float32).astype(np.float64)
    w2 = rng.normal(0, 0.5, (5, 12)).astype(np.float32).astype(np.float64)
    x = rng.normal(0, 1, (INPUTS, 16))
    golden = (np.maximum(x @ w1.T, 0) @ w2.T).argmax(axis=1)
    for f in (30, 5 * 32 + 29, 191 * 32 + 30, 192 * 32 + 7 * 32 + 30, 8063):
        a, b = w1.copy(), w2.copy()
        w, g = (a, f) if f < 192 * 32 else (b, f - 192 * 32)
        cols = w.shape[1]
        w[g // 32 // cols, g // 32 % cols] = _flip(
            np.array([w[g // 32 // cols, g // 32 % cols]]), g % 32
        )[0]
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.maximum(x @ a.T, 0) @ b.T
        want = np.isfinite(out).all(axis=1) & (out.argmax(axis=1) != golden)
        assert (want == TRUTH[f]).all()


def _covered(low: float, high: float, truth: float) -> bool:
    return low <= truth <= high


def test_arrays_are_what_summaries_give():
    """The array path of these tests is the summaries' own: summarize and the accumulator give
    the same rate and interval, overall and per stratum-crossing group."""
    s = create_sampler("stratified", sites=SITES, n=300, allocation="equal", seed=3)
    design = SamplingDesign.from_sampler(s, inputs=INPUTS)
    y, m, h = _sample(s, 300, 2)
    runs, faults = _runs(s, 300, 2)
    summary = summarize(runs, faults, design=design)
    est = estimate(y, m, h, _pops(s), INPUTS)
    sdc = summary.overall.sdc
    assert (sdc.rate, sdc.low, sdc.high) == pytest.approx((est.rate, est.low, est.high), abs=1e-12)
    acc = OutcomeAccumulator(faults, design=design)
    acc.update(runs)
    assert acc.estimate("sdc").low == pytest.approx(est.low, abs=1e-12)
    site = s.locate(0, 300)[0]
    by_layer = estimate_groups(y, m, site, 2, h, _pops(s), INPUTS)
    rows = {r.key: r.sdc for r in summary.by_layer}
    assert rows["fc2"].high == pytest.approx(by_layer[1].high, abs=1e-12)


def test_each_method_one_input_per_fault():
    """150 faults of a ~1 % rate, one input each: Clopper-Pearson and the modified Wilson keep
    95 %; plain Wilson (the old default) is reported and undercovers here."""
    hits: dict[str, list[bool]] = {m: [] for m in INTERVAL_METHODS}
    for seed in range(SEEDS):
        s = create_sampler("uniform", sites=SITES, n=150, seed=seed)
        y, m, h = _sample(s, 150, 1)
        for method in INTERVAL_METHODS:
            est = estimate(y, m, h, None, INPUTS, 0.95, method)
            hits[method].append(_covered(est.low, est.high, RATE))
    cover = {m: float(np.mean(v)) for m, v in hits.items()}
    assert cover["clopper_pearson"] >= 0.94, cover
    assert cover["wilson_modified"] >= 0.93, cover
    assert cover["wilson"] >= 0.85, cover


def test_per_bit_rates_near_zero():
    """Per-bit intervals (per_bit sampler, 40 faults per bit, 100 seeds) at bits whose true rate is
    0.3-15 %: the default (Clopper-Pearson) and the modified Wilson cover; plain Wilson's lower
    bound jumps over small rates after one SDC and covers less."""
    per_bit = TRUTH.reshape(-1, 32, INPUTS).mean(axis=(0, 2))
    low_bits = [b for b in range(32) if 0.003 <= per_bit[b] <= 0.15]
    assert len(low_bits) >= 3
    hits: dict[str, list[bool]] = {m: [] for m in INTERVAL_METHODS}
    for seed in range(100):
        s = create_sampler("per_bit", sites=SITES, n=40, seed=seed)
        y, m, h = _sample(s, len(s), 1)
        for method in INTERVAL_METHODS:
            rows = estimate_groups(y, m, h, 32, h, _pops(s), INPUTS, 0.95, method)
            hits[method] += [_covered(rows[b].low, rows[b].high, per_bit[b]) for b in low_bits]
    cover = {m: float(np.mean(v)) for m, v in hits.items()}
    assert cover["clopper_pearson"] >= 0.94, cover
    assert cover["wilson_modified"] >= 0.93, cover
    assert cover["wilson"] < cover["clopper_pearson"], cover


def test_clustered_runs_cover_and_run_counts_do_not():
    """Eight inputs per fault: runs of one fault are correlated. The per-fault interval covers;
    Wilson over the 1,200 runs as independent trials (the old summary) does not."""
    new, old = [], []
    for seed in range(SEEDS):
        s = create_sampler("uniform", sites=SITES, n=150, seed=seed)
        y, m, h = _sample(s, 150, INPUTS)
        est = estimate(y, m, h, _pops(s), INPUTS)
        new.append(_covered(est.low, est.high, RATE))
        k = int(round((y * m).sum()))
        old.append(_covered(*wilson_interval(k, int(m.sum())), RATE))
        assert est.faults == 150 and est.runs == 1200
    assert np.mean(new) >= 0.93, np.mean(new)
    assert np.mean(old) < 0.85, np.mean(old)


def test_stratified_estimator_weights_strata():
    """Equal allocation draws as many faults from a 1-bit stratum (exponent_msb, SDC-prone) as
    from an 11-bit one: the population-weighted estimate covers, pooling the runs (the old
    summary of per_layer/per_bit campaigns) is biased far off."""
    new, pooled = [], []
    for seed in range(FEW_SEEDS):
        s = create_sampler("stratified", sites=SITES, n=300, allocation="equal", seed=seed)
        y, m, h = _sample(s, 300, 1)
        est = estimate(y, m, h, _pops(s), INPUTS)
        new.append(_covered(est.low, est.high, RATE))
        pooled.append(_covered(*wilson_interval(int(y.sum()), 300), RATE))
    assert np.mean(new) >= 0.93, np.mean(new)
    assert np.mean(pooled) < 0.5, np.mean(pooled)


@pytest.mark.slow
@pytest.mark.parametrize("per", [1, INPUTS])
def test_stratified_neyman_sampler_covers(per):
    """The stratified sampler: Neyman allocation from a pilot round (stratum_sd, allocate), then
    the stratified interval, overall and per stratum."""
    ok, strata_ok = [], []
    rate = TRUTH.mean(axis=1)
    for seed in range(FEW_SEEDS):
        s = create_sampler("stratified", sites=SITES, n=300, seed=seed)
        y, m, h = _sample(s, s.pilot_faults, per)
        keys = list(s.strata())
        sd = stratum_sd(y, h, len(keys))
        s.allocate({k: float(v) for k, v in zip(keys, sd)})
        assert len(s) == 300
        y, m, h = _sample(s, 300, per)
        est = estimate(y, m, h, _pops(s), INPUTS)
        ok.append(_covered(est.low, est.high, RATE))
        if seed == 0:
            full = create_sampler("exhaustive", sites=SITES)
            stratum = np.array([keys.index(s.stratum_of(f)) for f in full.draws(0, len(full))])
            truth_h = [float(rate[stratum == j].mean()) for j in range(len(keys))]
        rows = estimate_groups(y, m, h, len(keys), h, _pops(s), INPUTS)
        strata_ok += [_covered(r.low, r.high, t) for r, t in zip(rows, truth_h)]
    assert np.mean(ok) >= 0.93, np.mean(ok)
    assert np.mean(strata_ok) >= 0.93, np.mean(strata_ok)


def test_exhaustive_is_exact():
    s = create_sampler("exhaustive", sites=SITES)
    runs, faults = _runs(s, len(s), INPUTS)
    summary = summarize(runs, faults, design=SamplingDesign.from_sampler(s))
    sdc = summary.overall.sdc
    assert sdc.exact and sdc.low == sdc.high == pytest.approx(RATE, abs=1e-12)
    layer = {r.key: r.sdc for r in summary.by_layer}
    assert layer["fc2"].exact and layer["fc2"].rate == pytest.approx(TRUTH[192 * 32 :].mean())


def test_zero_strata_are_pooled_not_certain():
    """A stratum with only zeros has spread 0 for the allocation, but the estimate still gives
    the pool of such strata a variance: the interval of an all-zero stratified sample is not
    a point, and one stratum's zeros do not shrink another's interval to nothing."""
    assert stratum_sd(np.zeros(10), np.zeros(10, dtype=np.int64), 1)[0] == 0.0
    y = np.array([0.0] * 20 + [1.0, 0.0, 0.0, 0.0])
    h = np.array([0] * 20 + [1] * 4)
    est = estimate(y, np.ones(24), h, [1000.0, 100.0], inputs=1)  # one input: no second stage
    w = np.array([1000, 100]) / 1100
    q = 0.5 / 21
    # stratum 1: the variance of [1, 0, 0, 0] over 4 faults; the zero stratum: the pool's floor;
    # both with their finite-population corrections
    var = w[1] ** 2 * (1 - 4 / 100) * 0.25 / 4 + w[0] ** 2 * (1 - 20 / 1000) * q * (1 - q) / 20
    assert est.rate == pytest.approx(w[1] * 0.25)
    assert est.n_eff == pytest.approx(est.rate * (1 - est.rate) / var * 24 / 23)
