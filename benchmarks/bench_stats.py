# SPDX-License-Identifier: MIT
"""Statistics against exhaustive truth: runs needed for a +-0.5 % SDC interval, and its coverage.

The truth: every ``(element, bit)`` pair of LeNet-5's (pretrained, digits) ``conv1.weight`` and
``fc3.weight`` flipped on each of 8 test inputs with torchfault's fast engine (28,608 faults,
228,864 runs), built once. Then, for each of ``SEEDS`` seeds, an adaptive campaign is *replayed*
from the truth table with torchfault's own samplers and estimator (the same code a campaign uses:
``SamplingDesign``, ``estimate_groups``, ``stratum_sd``, ``StratifiedSampler.allocate``): faults are
drawn in rounds of ``STEP`` and the campaign stops once the 95 % Clopper-Pearson interval of the
overall SDC rate has a half-width <= 0.5 % (absolute). Reported per design and inputs per fault:
the runs used (mean, median), and the coverage of the final interval, overall and per stratum
(layer x bit group), over the seeds.

Designs: ``uniform`` (simple random sample of faults) and ``stratified`` with Neyman allocation
(pilot of 10 faults per stratum, the rest allocated from the pilot's spread).

Usage: ``python -m benchmarks stats`` (part of ``make bench``). Set ``TORCHFAULT_BENCH_TRUTH`` to a
file name to keep the truth table between runs (it is rebuilt when the file is missing).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from torchfault import TargetSpec, dnn, fault_space, run_campaign
from torchfault.analysis import estimate, estimate_groups, stratum_sd
from torchfault.samplers import create_sampler

SEEDS = int(os.environ.get("TORCHFAULT_BENCH_SEEDS", 200))
STEP = 50
MARGIN = 0.005
CONFIDENCE = 0.95
METHOD = "clopper_pearson"
INPUTS = 8
MODULES = ("conv1", "fc3")


def build_truth() -> tuple[np.ndarray, list, float]:
    """SDC outcome of every (fault, input): ``truth[f, i]`` in the exhaustive sampler's order."""
    torch.manual_seed(0)
    model = dnn.create_model("lenet", dataset="digits", pretrained=True).eval()
    ds = dnn.create_dataset("digits", split="test")
    xs = torch.stack([torch.as_tensor(ds[i][0]) for i in range(INPUTS)])
    sites = [
        s for s in fault_space(model, xs[:2], TargetSpec(kinds=("weights",))) if s.module in MODULES
    ]
    ex = create_sampler("exhaustive", sites=sites)
    cache = os.environ.get("TORCHFAULT_BENCH_TRUTH")
    if cache and Path(cache).is_file():
        data = np.load(cache)
        if data["truth"].shape == (ex.population, INPUTS):
            return data["truth"], sites, float(data["seconds"])
    t0 = time.perf_counter()
    result = run_campaign(model, xs, ex.draws(0, len(ex)), engine="fast", batch_size=512)
    seconds = time.perf_counter() - t0
    truth = np.zeros((ex.population, INPUTS), dtype=bool)
    for r in result.runs:
        truth[r.fault_id, r.input_id] = r.outcome == "sdc"
    if cache:
        np.savez_compressed(cache, truth=truth, seconds=seconds)
    return truth, sites, seconds


def _pair_index(sampler, start: int, stop: int, sites) -> np.ndarray:
    """Exhaustive-order index of the faults ``start..stop-1`` of a single-fault sampler."""
    site, element, bit = sampler.locate(start, stop)
    offsets = np.concatenate([[0], np.cumsum([s.numel * s.bit_width for s in sites])])
    width = np.array([s.bit_width for s in sites])
    return offsets[site] + element * width[site] + bit


def _fractions(truth: np.ndarray, pairs: np.ndarray, ks: np.ndarray, per: int) -> np.ndarray:
    """Per-fault SDC fraction when fault k runs on inputs (k * per + j) % INPUTS (as a campaign)."""
    cols = (ks[:, None] * per + np.arange(per)[None, :]) % INPUTS
    return truth[pairs[:, None], cols].mean(axis=1)


def replay(truth, sites, design: str, per: int, seed: int, strata_truth):
    """One adaptive campaign replayed from the truth: (faults used, covered?, per-stratum covered)."""
    population = truth.shape[0]
    if design == "uniform":
        s = create_sampler("uniform", sites=sites, n=population, seed=seed)
    else:
        s = create_sampler("stratified", sites=sites, n=population, seed=seed)
    keys = list(s.strata())
    pops = [float(v) for v in s.strata().values()]

    y = np.zeros(0)
    h = np.zeros(0, dtype=np.int64)

    def extend(start: int, stop: int) -> None:
        nonlocal y, h
        ks = np.arange(start, stop)
        y = np.concatenate([y, _fractions(truth, _pair_index(s, start, stop, sites), ks, per)])
        h = np.concatenate([h, s.strata_index(start, stop)])

    done = 0
    if design == "stratified":
        extend(0, s.pilot_faults)
        done = s.pilot_faults
        sd = stratum_sd(y, h, len(keys))
        s.allocate({k: float(x) for k, x in zip(keys, sd)}, target_margin=MARGIN)
    while True:
        est = estimate(y, np.full(len(y), per), h, pops, INPUTS, CONFIDENCE, METHOD)
        if done and (est.high - est.low) / 2 <= MARGIN:
            break
        if done >= len(s):
            break
        stop = min(done + STEP, len(s))
        extend(done, stop)
        done = stop
    covered = est.low <= strata_truth["all"] <= est.high
    per_stratum = None
    if len(keys) > 1:
        groups = estimate_groups(
            y, np.full(len(y), per), h, len(keys), h, pops, INPUTS, CONFIDENCE, METHOD
        )
        per_stratum = [g.low <= strata_truth[k] <= g.high for g, k in zip(groups, keys)]
    return done, covered, per_stratum, keys


def main() -> None:
    truth, sites, seconds = build_truth()
    print("## Statistics: runs for a +-0.5 % SDC interval and its coverage (exhaustive truth)\n")
    print(
        f"truth: LeNet-5 (digits) {' + '.join(f'{m}.weight' for m in MODULES)}, "
        f"{truth.shape[0]:,} faults x {INPUTS} inputs = {truth.size:,} runs "
        f"({seconds:.0f} s with the fast engine); SDC rate {truth.mean():.4%}\n"
    )
    probe = create_sampler("stratified", sites=sites, n=truth.shape[0], seed=0)
    keys = list(probe.strata())
    order = {k: j for j, k in enumerate(keys)}
    all_faults = create_sampler("exhaustive", sites=sites)
    stratum = np.array([order[probe.stratum_of(f)] for f in all_faults.draws(0, len(all_faults))])
    rate = truth.mean(axis=1)
    strata_truth = {k: float(rate[stratum == j].mean()) for j, k in enumerate(keys)}
    strata_truth["all"] = float(rate.mean())
    print(
        f"{SEEDS} seeds per row; rounds of {STEP} faults; stop at a 95 % {METHOD} half-width "
        f"<= {MARGIN:.1%}; stratified: {len(keys)} strata (layer x bit group), Neyman allocation "
        "after a pilot of 10 faults per stratum\n"
    )
    print(
        "| design | inputs/fault | runs (mean) | runs (median) | coverage | per-stratum coverage (mean, min) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    results = {}
    for per in (1, 8):
        for design in ("uniform", "stratified"):
            runs, cover, strata_cover = [], [], []
            for seed in range(SEEDS):
                faults, ok, per_stratum, _ = replay(truth, sites, design, per, seed, strata_truth)
                runs.append(faults * per)
                cover.append(ok)
                if per_stratum is not None:
                    strata_cover.append(per_stratum)
            results[(design, per)] = statistics.mean(runs)
            if strata_cover:
                arr = np.array(strata_cover, dtype=float).mean(axis=0)
                strata_text = f"{arr.mean():.1%}, {arr.min():.1%}"
            else:
                strata_text = "-"
            print(
                f"| {design} | {per} | {statistics.mean(runs):,.0f} | {statistics.median(runs):,.0f} "
                f"| {np.mean(cover):.1%} | {strata_text} |",
                flush=True,
            )
    for per in (1, 8):
        ratio = results[("uniform", per)] / results[("stratified", per)]
        print(
            f"\n{per} input(s) per fault: stratified Neyman uses {ratio:.1f}x fewer runs than uniform"
        )


if __name__ == "__main__":
    main()
