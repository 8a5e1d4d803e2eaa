# SPDX-License-Identifier: MIT
"""Injection overhead: a forward pass with an injector attached vs the plain forward pass.

Run with ``make bench`` (all benchmarks) or ``python -m benchmarks.bench_inject``.

Model: ResNet-20 for CIFAR-10 (``torchfault.dnn.create_model("resnet20", dataset="cifar10")``,
seeded random weights), a batch of 32 seeded 3x32x32 inputs, ``torch.no_grad()``, eval mode, a
fixed number of intra-op threads (``TORCHFAULT_BENCH_THREADS``, default 1; printed).

Cases, each against the plain forward pass of the same model and batch:

1. *attached, not firing*: a permanent activation fault on every convolution's output with
   ``call=1``, a call that never happens (each convolution runs once per pass): every hook is in
   place and runs, no fault is applied. Goal: within 2 %.
2. *a permanent weight fault*: parameters are patched in place on entry; no hook runs per pass.
3. *BER, 100k flips per pass*: ``inject_ber`` over the outputs of every leaf module (the
   activations: 71 tensors, 21 million float32 elements per pass) at the rate that gives 100,000
   flipped bits per pass in expectation, fresh flips at every pass. Goal: within 10 %.
4. *100k listed faults*: 100,000 ``Fault`` bit flips spread uniformly over the elements of the
   same activations (random bit, random batch row), all active at every pass. Goal: within 10 %.

Timing: the injected model enters its context once; after warm-up (which includes the first
pass, where listed faults build their cached indices), passes of the injected model alternate
with passes of an identical copy without injector (so a busy machine slows both alike); the
figure is the median over the repeats of the ratio injected / plain of neighbouring passes, with
its quartiles, and, as a second estimate that other jobs on the machine disturb less, the ratio
of the fastest injected pass to the fastest plain pass. The one-time cost of entering the
context (checking and grouping 100k faults) is shown apart.
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn as nn

from torchfault import Fault, fault_space, inject, inject_ber
from torchfault.dnn import create_model

BATCH = 32
FLIPS = 100_000
SEED = 0
THREADS = int(os.environ.get("TORCHFAULT_BENCH_THREADS", "1"))
#: multiplies the number of timed repeats (``TORCHFAULT_BENCH_SCALE=0.25`` for a quick look)
SCALE = float(os.environ.get("TORCHFAULT_BENCH_SCALE", "1"))
REPEATS = max(5, int(41 * SCALE))
WARMUP = 3


def build() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(SEED)
    model = create_model("resnet20", dataset="cifar10").eval()
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 1))
    return model, x


def paired_ratio(
    model: nn.Module,
    x: torch.Tensor,
    make: Callable[[], AbstractContextManager],
    after: Callable[[object], None] | None = None,
) -> tuple[float, float, float, tuple[float, float], float]:
    """``(plain s, injected s, median ratio, (first, third quartile) of the ratios, ratio of minima)``.

    The injected model stays inside one context for all its passes (as in use: the context is
    entered once, then the model runs); the plain passes run on a copy of the model with the
    same weights, so the two kinds of pass can alternate. ``after(ctx)`` runs after each
    injected pass.
    """
    plain_model = copy.deepcopy(model)
    plain, faulty, ratios = [], [], []
    # the idle case's faults never fire by design: its "never applied" warning is expected
    with warnings.catch_warnings(), torch.no_grad(), make() as ctx:
        warnings.filterwarnings("ignore", message="torchfault.inject: .* never applied")
        for i in range(WARMUP + REPEATS):
            t0 = time.perf_counter()
            plain_model(x)
            t1 = time.perf_counter()
            model(x)
            t2 = time.perf_counter()
            if after is not None:
                after(ctx)
            if i >= WARMUP:
                plain.append(t1 - t0)
                faulty.append(t2 - t1)
                ratios.append((t2 - t1) / (t1 - t0))
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return (
        statistics.median(plain),
        statistics.median(faulty),
        statistics.median(ratios),
        (q1, q3),
        min(faulty) / min(plain),
    )


def entry_seconds(model: nn.Module, make: Callable[[], AbstractContextManager]) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with make():
            times.append(time.perf_counter() - t0)
    return min(times)


def activation_sites(model: nn.Module, x: torch.Tensor):
    return fault_space(model, x[:1], kinds="outputs")


def listed_faults(sites, n: int, seed: int) -> list[Fault]:
    """``n`` single-bit flips uniform over the activation elements of ``sites`` (and batch rows)."""
    rng = random.Random(seed)
    weights = [s.numel for s in sites]
    faults = []
    for site in rng.choices(sites, weights=weights, k=n):
        index = tuple(rng.randrange(d) for d in site.shape)
        faults.append(
            Fault(
                site.module,
                "output",
                index=index,
                bits=(rng.randrange(32),),
                sample=rng.randrange(BATCH),
            )
        )
    return faults


def main() -> None:
    """Print the injection-overhead table (Markdown)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        _main()
    finally:
        torch.set_num_threads(threads)


def _main() -> None:
    model, x = build()
    sites = activation_sites(model, x)
    elements = sum(s.numel for s in sites) * BATCH
    rate = FLIPS / (elements * 32)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    idle = [Fault(n, index=(0, 0, 0), bits=(30,), call=1) for n in convs]
    weight = [Fault(convs[3], "weight", index=(0, 0, 1, 1), bits=(30,))]
    faults = listed_faults(sites, FLIPS, SEED + 2)
    flips_seen: list[int] = []

    def count_flips(ctx) -> None:
        flips_seen.append(ctx.last_flips)

    cases = [
        (
            "injector attached, no fault firing",
            f"{len(idle)} hooked convolutions",
            lambda: inject(model, idle),
            None,
            0.02,
        ),
        ("one permanent weight fault", "1 bit", lambda: inject(model, weight), None, None),
        (
            "inject_ber over all activations",
            f"~{FLIPS:,} bits/pass (rate {rate:.3g})",
            lambda: inject_ber(model, rate, kinds="outputs", seed=SEED + 3),
            count_flips,
            0.10,
        ),
        (
            "listed Faults over all activations",
            f"{FLIPS:,} faults",
            lambda: inject(model, faults),
            None,
            0.10,
        ),
    ]
    print("## Injection overhead\n")
    print(
        f"ResNet-20 (CIFAR-10 shape), batch {BATCH}, torch.no_grad, eval; "
        f"torch.set_num_threads({torch.get_num_threads()}); {REPEATS} timed repeats after "
        f"{WARMUP} warm-up, plain and injected passes interleaved; activations = outputs of "
        f"{len(sites)} leaf modules, {elements:,} float32 elements per pass.\n"
    )
    print(
        "| case | faults | plain ms | injected ms | ratio (median) | ratio quartiles "
        "| ratio of fastest passes | goal |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    goals = []
    for label, what, make, after, goal in cases:
        plain, faulty, ratio, (q1, q3), fastest = paired_ratio(model, x, make, after)
        verdict = ""
        if goal is not None:
            ok = ratio <= 1 + goal
            verdict = f"<= {1 + goal:.2f}: {'met' if ok else '**not met**'}"
            goals.append((label, ratio, goal, ok))
        print(
            f"| {label} | {what} | {plain * 1e3:.1f} | {faulty * 1e3:.1f} | {ratio:.3f} | "
            f"{q1:.3f}..{q3:.3f} | {fastest:.3f} | {verdict} |"
        )
    if flips_seen:
        print(
            f"\ninject_ber flipped {statistics.mean(flips_seen):,.0f} bits per pass on average "
            f"(min {min(flips_seen):,}, max {max(flips_seen):,})."
        )
    entry = entry_seconds(model, lambda: inject(model, faults))
    print(
        f"Entering `inject` with {FLIPS:,} listed faults (checks, grouping) takes {entry:.2f} s once; "
        "their flat indices and masks are built at the first pass and cached."
    )
    print()
    for label, ratio, goal, ok in goals:
        print(
            f"- {label}: {ratio:.3f}x the plain pass (goal within {goal:.0%}): {'met' if ok else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
