# SPDX-License-Identifier: MIT
"""torchfault's benchmarks: ``python -m benchmarks`` (``make bench``) runs every one of them.

Convention: each ``benchmarks/bench_<name>.py`` defines ``main() -> None`` that prints its own
Markdown tables; ``python -m benchmarks`` finds them by that file name, runs them in name order
in one process and prints what each printed. ``python -m benchmarks inject`` runs only
``bench_inject.py``; ``python -m benchmarks.bench_inject`` does the same directly.
"""
