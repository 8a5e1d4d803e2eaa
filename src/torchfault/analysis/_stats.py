# SPDX-License-Identifier: MIT
"""Confidence intervals for a proportion (an SDC or DUE rate) and adaptive stopping.

Two intervals for ``k`` successes in ``n`` trials:

- Wilson score interval (Wilson 1927): good coverage at every ``n`` and rate, closed form.
- Clopper-Pearson "exact" interval (1934): the beta-quantile interval; conservative (coverage at
  least the confidence). It uses ``scipy.stats.beta.ppf`` when SciPy is installed, otherwise our
  own inverse of the regularized incomplete beta function (continued fraction, bisection), which
  agrees with SciPy to better than 1e-9.

Example:
    >>> low, high = wilson_interval(10, 100)
    >>> round(low, 4), round(high, 4)
    (0.0552, 0.1744)
"""

from __future__ import annotations

import math
from statistics import NormalDist

from torchfault.errors import TorchFaultError, suggest

__all__ = [
    "INTERVAL_METHODS",
    "wilson_interval",
    "clopper_pearson_interval",
    "interval",
    "should_stop",
    "beta_ppf",
]

INTERVAL_METHODS = ("wilson", "clopper_pearson")


def _check(k: int, n: int, confidence: float) -> tuple[int, int, float]:
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int):
            if hasattr(v, "__index__"):
                continue
            raise TorchFaultError(f"{name} must be an integer >= 0, got {v!r}.")
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise TorchFaultError(f"need 0 <= k <= n, got k={k}, n={n}.")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0 < confidence < 1
    ):
        raise TorchFaultError(f"confidence must be in (0, 1), got {confidence!r}.")
    return k, n, float(confidence)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n``.

    ``(c - h, c + h)`` with ``c = (k + z^2/2) / (n + z^2)`` and
    ``h = z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)``, ``z`` the two-sided normal quantile.
    With ``n = 0`` nothing is known: ``(0, 1)``.

    Example:
        >>> wilson_interval(0, 0)
        (0.0, 1.0)
        >>> [round(x, 4) for x in wilson_interval(0, 50)]
        [0.0, 0.0713]
    """
    k, n, confidence = _check(k, n, confidence)
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    z2 = z * z
    centre = (k + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4.0)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


# ---------------------------------------------------------------- regularized incomplete beta


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float, *, use_scipy: bool | None = None) -> float:
    """Quantile ``q`` of the Beta(a, b) distribution.

    Args:
        q: probability in [0, 1].
        a, b: shape parameters (> 0).
        use_scipy: True: ``scipy.stats.beta.ppf`` (error if SciPy is missing); False: our
            bisection on the regularized incomplete beta; None: SciPy when importable.

    Example:
        >>> round(beta_ppf(0.5, 2.0, 2.0, use_scipy=False), 12)
        0.5
    """
    if use_scipy is None or use_scipy:
        try:
            from scipy.stats import beta as _beta
        except ImportError:
            if use_scipy:
                raise TorchFaultError(
                    "beta_ppf(use_scipy=True) needs SciPy, which is not installed."
                ) from None
        else:
            return float(_beta.ppf(q, a, b))
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):  # bisection to machine precision
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def clopper_pearson_interval(
    k: int, n: int, confidence: float = 0.95, *, use_scipy: bool | None = None
) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of the proportion ``k / n``.

    ``low = Beta(alpha/2; k, n - k + 1)`` (0 when ``k = 0``), ``high = Beta(1 - alpha/2; k + 1,
    n - k)`` (1 when ``k = n``), with ``alpha = 1 - confidence``. ``use_scipy`` as in
    :func:`beta_ppf`.

    Example:
        >>> [round(x, 4) for x in clopper_pearson_interval(0, 50)]
        [0.0, 0.0711]
        >>> [round(x, 4) for x in clopper_pearson_interval(10, 100, use_scipy=False)]
        [0.049, 0.1762]
    """
    k, n, confidence = _check(k, n, confidence)
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else beta_ppf(alpha / 2.0, k, n - k + 1, use_scipy=use_scipy)
    high = 1.0 if k == n else beta_ppf(1.0 - alpha / 2.0, k + 1, n - k, use_scipy=use_scipy)
    return low, high


def interval(
    k: int, n: int, confidence: float = 0.95, method: str = "wilson"
) -> tuple[float, float]:
    """Confidence interval of ``k / n`` by ``method`` (``"wilson"`` or ``"clopper_pearson"``).

    Example:
        >>> interval(5, 10, method="wilson") == wilson_interval(5, 10)
        True
    """
    if method == "wilson":
        return wilson_interval(k, n, confidence)
    if method == "clopper_pearson":
        return clopper_pearson_interval(k, n, confidence)
    raise TorchFaultError(
        f"Unknown interval method {method!r}; choose one of {', '.join(INTERVAL_METHODS)}."
        f"{suggest(str(method), INTERVAL_METHODS)}"
    )


def should_stop(
    k: int, n: int, margin: float, confidence: float = 0.95, method: str = "wilson"
) -> bool:
    """Adaptive stopping: True when the interval's half width is at most ``margin``.

    Args:
        k: events seen so far (SDCs, say).
        n: runs so far.
        margin: wanted half width of the interval, in (0, 1).
        confidence: confidence level.
        method: interval method.

    Example:
        >>> should_stop(50, 1000, margin=0.02)
        True
        >>> should_stop(500, 1000, margin=0.02)
        False
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < 1:
        raise TorchFaultError(f"margin must be in (0, 1), got {margin!r}.")
    if n == 0:
        return False
    low, high = interval(k, n, confidence, method)
    return (high - low) / 2.0 <= margin
