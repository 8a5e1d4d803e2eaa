# SPDX-License-Identifier: MIT
"""Run every benchmark: each ``benchmarks/bench_*.py`` with a ``main() -> None``, in name order.

Usage: ``python -m benchmarks [NAME ...]`` where a NAME is ``inject`` or ``bench_inject``
(``stats``: the statistics against exhaustive truth, docs/statistics.md; default: all). A benchmark that raises is reported and the others still run; the exit status
is then 1.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch


def discover() -> list[str]:
    """Names of the benchmark modules (``bench_*.py`` next to this file), sorted."""
    here = Path(__file__).resolve().parent
    return sorted(p.stem for p in here.glob("bench_*.py"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = discover()
    if argv:
        wanted = [a if a.startswith("bench_") else f"bench_{a}" for a in argv]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            print(f"unknown benchmark(s) {unknown}; available: {names}", file=sys.stderr)
            return 2
        names = wanted
    print("# torchfault benchmarks\n")
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}\n"
    )
    failed = []
    for name in names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            entry = getattr(module, "main", None)
            if not callable(entry):
                raise TypeError(f"benchmarks/{name}.py has no main() function")
            entry()
        except Exception:  # noqa: BLE001 - report it and run the other benchmarks
            failed.append(name)
            traceback.print_exc()
        print(f"\n({name}: {time.perf_counter() - t0:.0f} s)\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
