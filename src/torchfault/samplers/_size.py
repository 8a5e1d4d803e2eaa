# SPDX-License-Identifier: MIT
"""Statistical sample size for fault-injection campaigns (Leveugle et al., DATE 2009).

Leveugle, Calvez, Maistri and Vanhauwaert, "Statistical fault injection: quantified error and
confidence", DATE 2009, size a simple random sample (without replacement) drawn from a finite
fault population of ``N`` faults so that the estimated proportion (of SDCs, say) lies within a
margin ``e`` of the true one with the given confidence:

    n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))

where ``t`` is the two-sided standard-normal quantile of the confidence and ``p`` the a-priori
proportion (0.5, the worst case, when nothing is known).

Rounding. The paper tabulates ``t`` to three decimals (2.576 for 99 %, 1.960 for 95 %) and rounds
``n`` up. With the exact quantile (2.5758293...) the paper's example (N = 1,984,192, e = 1 %,
99 %) gives 16,449.7, i.e. 16,450; with the tabulated 2.576 it gives 16,451.9, i.e. 16,452 --
the number the paper reports. :func:`sample_size` therefore rounds ``t`` to three decimals by
default (``exact=False``) so it reproduces the published numbers, then rounds ``n`` up;
``exact=True`` uses the unrounded quantile.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from torchfault.errors import TorchFaultError

__all__ = ["sample_size", "normal_quantile"]


def _check_open_unit(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TorchFaultError(f"{name} must be a number in (0, 1), got {value!r}.")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise TorchFaultError(f"{name} must be in (0, 1) (exclusive), got {value!r}.")
    return value


def normal_quantile(confidence: float, *, exact: bool = True) -> float:
    """Two-sided standard-normal quantile ``t`` of a confidence level.

    Args:
        confidence: confidence level in (0, 1), e.g. 0.95.
        exact: if False, round to three decimals as published tables do.

    Example:
        >>> round(normal_quantile(0.95), 4)
        1.96
        >>> normal_quantile(0.99, exact=False)
        2.576
    """
    confidence = _check_open_unit(confidence, "confidence")
    t = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    return t if exact else round(t, 3)


def sample_size(
    population: int,
    margin: float,
    confidence: float,
    p: float = 0.5,
    *,
    exact: bool = False,
) -> int:
    """Number of faults to inject for a given error margin and confidence (Leveugle et al. 2009).

    Args:
        population: size ``N`` of the fault population (>= 1).
        margin: error margin ``e`` in (0, 1), e.g. 0.01 for 1 %.
        confidence: confidence level in (0, 1), e.g. 0.99.
        p: a-priori proportion in (0, 1); 0.5 (the default) is the worst case.
        exact: use the exact normal quantile instead of the three-decimal tabulated one that the
            paper uses (see the module docstring; the difference is a few faults).

    Returns:
        ``ceil(N / (1 + e^2 (N - 1) / (t^2 p (1 - p))))``, between 1 and ``N``.

    Raises:
        TorchFaultError: for a population below 1 or a margin, confidence or ``p`` outside (0, 1).

    Example:
        >>> sample_size(1_984_192, 0.01, 0.99)
        16452
        >>> sample_size(1_984_192, 0.01, 0.99, exact=True)
        16450
        >>> sample_size(10**9, 0.01, 0.95)
        9604
    """
    if isinstance(population, bool) or not isinstance(population, int):
        if isinstance(population, float) and float.is_integer(population):
            population = int(population)
        elif hasattr(population, "__index__"):
            population = int(population)  # numpy integers
        else:
            raise TorchFaultError(f"population must be an integer >= 1, got {population!r}.")
    if population < 1:
        raise TorchFaultError(f"population must be an integer >= 1, got {population!r}.")
    margin = _check_open_unit(margin, "margin")
    p = _check_open_unit(p, "p")
    t = normal_quantile(confidence, exact=exact)
    n = population / (1.0 + margin * margin * (population - 1) / (t * t * p * (1.0 - p)))
    # round(., 9) keeps float noise (x.0000000001) from adding a whole fault
    return max(1, min(population, math.ceil(round(n, 9))))
