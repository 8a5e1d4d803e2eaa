# SPDX-License-Identifier: MIT
"""Soak: long campaigns checked for memory growth, store consistency and progress/ETA accuracy.

Usage: ``python -m benchmarks.soak [--fast-runs N] [--process-runs N] [--out DIR]`` (``make soak``
runs this with 10^6 fast-engine runs and 10^5 process-executor runs, then the chaos test with more
kills). Each stage is one LeNet/digits campaign; while it runs, the resident memory of this
process (and, for ``process``, of its workers) is sampled every half second and every progress
update is recorded. A stage passes when

* memory does not grow: the resident set at the last progress update exceeds the one at 20 % of
  the runs by less than ``--max-growth-mib`` (runs are streamed to the store, nothing per run is
  kept in memory while the campaign runs);
* the store is consistent: :func:`torchfault.store.check_store` finds it sound, and it holds
  exactly the planned runs (each fault on each of its inputs, once);
* progress is right: the count shown reaches the total and equals the stored runs, and the ETA
  shown at 25 %, 50 % and 75 % (rich's: the runs left over the speed of the last 30 s of
  updates) is compared with the time that was really left; the error must be within
  ``--max-eta-error`` of the stage's run time (or 5 s).

It prints one line per stage (runs, seconds, runs/s, memory, ETA errors) and exits 1 if a check
failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def rss_mib(pids: list[int]) -> float:
    """Resident memory of ``pids`` (from /proc), in MiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def stage(name: str, runs: int, executor: str, out: Path, args: argparse.Namespace) -> bool:
    from torchfault import Campaign
    from torchfault.campaign import _campaign
    from torchfault.store import check_store

    per = 10
    faults = runs // per
    cfg = {
        "name": f"soak-{name}",
        "seed": 7,
        "model": {"name": "lenet", "dataset": "digits", "pretrained": True},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 200},
        "targets": {"kinds": ["outputs", "weights", "biases"]},
        "sampler": {"name": "uniform", "n": faults},
        "inputs_per_fault": per,
        "out_dir": str(out / name),
        "progress": False,
        "report": False,
        "store": {"overwrite": True, "export": []},
        "engine": {"name": "fast", "batch_size": 256},
        "executor": {"name": executor, "workers": args.workers, "chunk_faults": 32},
    }
    updates: list[tuple[float, int, int | None, float]] = []  # (t, done, total, rss)
    samples: list[tuple[float, float]] = []
    me = os.getpid()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mib([me, *children(me)])))
            stop.wait(0.5)

    original = _campaign._Progress.advance

    def advance(self: Any, n: int) -> None:
        original(self, n)
        updates.append(
            (time.perf_counter(), self.done, self.total, samples[-1][1] if samples else 0)
        )

    _campaign._Progress.advance = advance  # type: ignore[method-assign]
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        Campaign(cfg).run()
    finally:
        _campaign._Progress.advance = original  # type: ignore[method-assign]
        stop.set()
        watcher.join()
    seconds = time.perf_counter() - t0
    ok = True
    problems = []
    # memory: between 20 % of the runs and the last progress update
    run_t0, run_t1 = updates[0][0], updates[-1][0]
    at20 = next(u for u in updates if u[1] >= 0.2 * runs)[0]
    mem = [m for t, m in samples if run_t0 <= t <= run_t1]
    m20 = [m for t, m in samples if t >= at20][:1] or [0.0]
    last = [m for t, m in samples if t <= run_t1][-1:] or [0.0]
    growth = last[0] - m20[0]
    if growth > args.max_growth_mib:
        problems.append(f"memory grew {growth:.0f} MiB after 20 % of the runs")
    # store
    report = check_store(Path(cfg["out_dir"]) / "campaign.sqlite")
    if not report.ok or report.counts.get("runs") != faults * per:
        problems.append(f"store: {report.text()}")
    # progress and ETA
    done_final, total = updates[-1][1], updates[-1][2]
    if done_final != faults * per or total != faults * per:
        problems.append(f"progress ended at {done_final}/{total}, store holds {faults * per}")
    eta_err = []
    span = run_t1 - t0
    for frac in (0.25, 0.5, 0.75):
        i, (t, done, _, _) = next((i, u) for i, u in enumerate(updates) if u[1] >= frac * runs)
        # rich's ETA column (Task.speed): the runs of the updates of the last 30 s
        # (speed_estimate_period) after the first of them, over the time since that first one
        window = [u for u in updates[: i + 1] if u[0] >= t - 30.0]
        rate = (done - window[0][1]) / max(t - window[0][0], 1e-9) if len(window) > 1 else 0.0
        if not rate:
            continue
        eta = (runs - done) / rate
        real = run_t1 - t
        eta_err.append((frac, eta, real))
        if abs(eta - real) > max(args.max_eta_error * span, 5.0):
            problems.append(f"ETA at {frac:.0%}: {eta:.0f} s shown, {real:.0f} s left")
    ok = not problems
    peak = max(mem) if mem else 0.0
    after = max((m for t, m in samples if t > run_t1), default=0.0)
    print(
        f"soak {name}: {faults * per:,} runs ({executor}, fast engine, LeNet) in {seconds:,.0f} s "
        f"({faults * per / seconds:,.0f} runs/s); RSS (this process + workers) {m20[0]:.0f} MiB "
        f"at 20 %, {last[0]:.0f} MiB at the end of the runs, peak {peak:.0f} MiB "
        f"(growth {growth:+.0f} MiB), {after:.0f} MiB after them (the returned result holds "
        f"every run); store {report.counts.get('runs', 0):,} runs, "
        f"{'sound' if report.ok else 'DAMAGED'}; ETA shown vs real: "
        + ", ".join(f"{f:.0%}: {e:.0f}/{r:.0f} s" for f, e, r in eta_err)
        + ("" if ok else "\n  FAILED: " + "; ".join(problems)),
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast-runs", type=int, default=1_000_000)
    p.add_argument("--process-runs", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/soak")
    p.add_argument("--max-growth-mib", type=float, default=64.0)
    p.add_argument("--max-eta-error", type=float, default=0.2)
    args = p.parse_args(argv)
    out = Path(args.out)
    ok = True
    if args.process_runs:
        ok &= stage("process", args.process_runs, "process", out, args)
    if args.fast_runs:
        ok &= stage("fast", args.fast_runs, "serial", out, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
