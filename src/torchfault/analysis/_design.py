# SPDX-License-Identifier: MIT
"""Design-based estimates: the fault is the sampling unit, strata are weighted, populations are finite.

A campaign draws *faults* (single faults, or fault sets for ``ber``) and runs each on ``m``
inputs. Runs of one fault are strongly correlated (a fault that flips an exponent's top bit is
an SDC on most inputs; a low mantissa bit on none), so counting every run as an independent trial
understates the error by the design effect (5.6x in the spread on LeNet-5 with 40 inputs per
fault). Here every estimate is made from the per-fault fractions ``y_i = k_i / m_i`` (``k_i`` runs
of fault ``i`` with the outcome, of its ``m_i`` runs):

- **Rate**: in each cell ``c`` (a stratum ``h`` within the group asked for: a layer, a bit, ...)
  the mean ``ybar_c`` of the fractions; cells are combined with their estimated population
  weights ``W_c ∝ N_h n_c / n_h`` (``N_h`` the stratum's population of faults, ``n_h`` its
  sampled faults, ``n_c`` those in the group), never by pooling run counts. With one stratum and
  the same ``m`` for every fault this is ``k / n`` of the runs: one input per fault gives the
  same rates as counting runs.
- **Variance** (two-stage, Cochran 1977, chapters 5 and 10, with strata): ``V = sum_c W_c^2
  [(1 - f_h) s_c^2 / n_c + f_h w_c / n_c^2]`` with ``s_c^2`` the sample variance of the
  fractions, ``f_h = n_h / N_h`` the sampling fraction of the stratum (the finite-population
  correction) and ``w_c = sum_i (1 - m_i / M) s_i^2 / m_i`` the within-fault term (``M`` inputs in
  the campaign; ``s_i^2 = y_i (1 - y_i) m_i / (m_i - 1)``, and ``ybar_c (1 - ybar_c)`` for faults
  run once).
- **A fault counts as one trial**: ``s_c^2`` is at least the Bernoulli variance
  ``ybar_c (1 - ybar_c) n_c / (n_c - 1)`` of the cell's mean. Averaging a fault's inputs sharpens
  the estimate but gets no credit in the interval: a design effect from the spread of the
  fractions covered 84 % under adaptive stopping with 8 inputs per fault on LeNet-5 (one fault
  with one SDC in 8 runs made the spread look small); one trial per fault covered 99.5 %.
- **Cells without spread** (every fault of the cell gave the same fraction: a stratum of mantissa
  bits with no SDC) are pooled, and the pool gets the variance of ``(n ybar + 1/2) / (n + 1)``
  over its ``n`` faults instead of 0, so a few lucky zeros never make strata look certain.
- **Interval**: the chosen method (:data:`~torchfault.analysis.INTERVAL_METHODS`) on the
  effective sample size ``n_eff = p (1 - p) / V * n / (n - 1)`` (``n`` faults; Korn and Graubard
  1998), with ``k_eff = p n_eff``. With one stratum and no finite-population correction,
  ``n_eff = n`` exactly: the interval is the method's over the faults (over the runs when each
  fault has one). At ``p = 0`` or 1, ``n_eff`` is the number of faults (divided by ``1 - f`` when
  every fault ran on every input). When every fault of the population ran on every input the rate
  is **exact**: ``n_eff = inf`` and the interval is ``[p, p]``.

Coverage of these intervals was measured against exhaustive truth (``tests/analysis/
test_coverage.py``, ``benchmarks/bench_stats.py``, docs/statistics.md).

Example:
    >>> import numpy as np
    >>> est = estimate(np.array([0.0, 0.5, 1.0, 0.0]), np.array([2, 2, 2, 2]))
    >>> round(est.rate, 3), est.faults, est.runs
    (0.375, 4, 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchfault.analysis._stats import DEFAULT_INTERVAL, check_method, intervals_from_rates
from torchfault.errors import TorchFaultError

__all__ = ["SamplingDesign", "Estimate", "estimate", "estimate_groups", "stratum_sd"]


@dataclass(frozen=True)
class SamplingDesign:
    """How the faults of a campaign were drawn: strata, their populations, a fault's stratum.

    Attributes:
        populations: ``{stratum: population in faults}``; ``None``: one stratum of unbounded
            population (no finite-population correction), as for ``ber`` or faults given by hand.
        stratum_of: the stratum of one run's faults (needed with several strata).
        inputs: how many inputs the campaign's runs are drawn from (``M``); ``None``: the
            number of distinct inputs among the runs.
        name: the sampler's name (for the summary's header).

    Example:
        >>> from torchfault import FaultSite
        >>> from torchfault.samplers import create_sampler
        >>> sites = [FaultSite("fc", "bias", "parameter", (4,), "float32", 32)]
        >>> d = SamplingDesign.from_sampler(create_sampler("per_bit", sites=sites, n=2))
        >>> len(d.populations), d.populations[30]
        (32, 4)
    """

    populations: Mapping[Any, int] | None = None
    stratum_of: Callable[[Sequence[Any]], Any] | None = None
    inputs: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.populations is not None:
            if not self.populations:
                raise TorchFaultError("design: populations must name at least one stratum.")
            for key, n in self.populations.items():
                if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                    raise TorchFaultError(
                        f"design: stratum {key!r} has population {n!r}; a stratum needs a "
                        "population of at least 1 fault."
                    )
            if len(self.populations) > 1 and self.stratum_of is None:
                raise TorchFaultError("design: several strata need stratum_of.")
        if self.inputs is not None and (
            isinstance(self.inputs, bool) or not isinstance(self.inputs, int) or self.inputs < 1
        ):
            raise TorchFaultError(f"design: inputs must be an integer >= 1, got {self.inputs!r}.")

    @property
    def stratified(self) -> bool:
        return self.populations is not None and len(self.populations) > 1

    @classmethod
    def from_sampler(cls, sampler: Any, inputs: int | None = None) -> SamplingDesign:
        """The design of a :class:`~torchfault.samplers.Sampler` (its strata and populations)."""
        pops = sampler.strata()
        return cls(pops, sampler.stratum_of if pops is not None else None, inputs, sampler.name)

    @classmethod
    def from_config(
        cls, sampler_config: Mapping[str, Any], sites: Sequence[Any], inputs: int | None = None
    ) -> SamplingDesign | None:
        """The design of a stored campaign, from its ``sampler`` config and fault sites (``None``
        when the sampler cannot be rebuilt, e.g. a plugin that is not installed)."""
        from torchfault.samplers import create_sampler, is_sampler

        name = sampler_config.get("name", "uniform")
        if not sites or not is_sampler(name):
            return None
        kw: dict[str, Any] = {"sites": list(sites)}
        for key in ("seed", "bits", "fault_model", "persistence", "params"):
            if sampler_config.get(key) is not None:
                kw[key] = sampler_config[key]
        if name == "ber":
            kw["rate"], kw["n"] = sampler_config.get("rate") or 1e-6, 1
        elif name == "stratified":
            for key in ("strata", "bit_groups"):
                if sampler_config.get(key) is not None:
                    kw[key] = sampler_config[key]
            kw["allocation"], kw["n"] = "proportional", 1  # populations do not depend on it
        elif name != "exhaustive":
            kw["n"] = 1
        try:
            sampler = create_sampler(name, **kw)
        except (TorchFaultError, ValueError, TypeError):
            return None
        return cls.from_sampler(sampler, inputs)


@dataclass(frozen=True)
class Estimate:
    """A design-based rate with its interval (see the module docstring)."""

    rate: float
    low: float
    high: float
    n_eff: float
    faults: int
    runs: int
    exact: bool = False


def estimate_groups(
    y: np.ndarray,
    m: np.ndarray,
    key: np.ndarray,
    n_keys: int,
    stratum: np.ndarray | None = None,
    populations: Sequence[float] | None = None,
    inputs: float | None = None,
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
) -> list[Estimate]:
    """Estimates of the mean fraction in each of ``n_keys`` groups (domains) of faults.

    Vectorised over the groups (a per-element summary has one group per element): only the
    cells (group x stratum) that hold faults are formed.

    Args:
        y: per-fault fraction of runs with the outcome.
        m: per-fault number of runs.
        key: per-fault group index in ``[0, n_keys)``.
        n_keys: number of groups.
        stratum: per-fault stratum index (default: one stratum).
        populations: population of each stratum in faults (``inf``: unbounded). The sampled
            faults of stratum ``h``, ``n_h``, are counted over *all* the faults given.
        inputs: the campaign's number of inputs ``M`` (``None``/``inf``: unbounded).
        confidence: confidence level.
        method: interval method.

    Example:
        >>> import numpy as np
        >>> a, b = estimate_groups(np.array([0, 1, 0, 0.0]), np.ones(4), np.array([0, 0, 1, 1]), 2)
        >>> a.rate, a.faults, b.rate, round(b.high, 4)
        (0.5, 2, 0.0, 0.8419)
    """
    method = check_method(method)
    y = np.asarray(y, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    key = np.asarray(key, dtype=np.int64)
    stratum = np.zeros(len(y), dtype=np.int64) if stratum is None else np.asarray(stratum, np.int64)
    pops = np.array([math.inf] if populations is None else list(populations), dtype=np.float64)
    big_m = math.inf if inputs is None else float(inputs)
    n_strata = len(pops)
    n_h = np.bincount(stratum, minlength=n_strata).astype(np.float64)
    finite = np.isfinite(pops)
    f_h = np.minimum(np.where(finite, n_h / np.where(finite, pops, 1.0), 0.0), 1.0)
    # cells (group x stratum) holding faults
    cell_ids, cell = np.unique(key * n_strata + stratum, return_inverse=True)
    ck, ch = cell_ids // n_strata, cell_ids % n_strata
    size = len(cell_ids)
    n_c = np.bincount(cell, minlength=size).astype(np.float64)
    s1 = np.bincount(cell, y, minlength=size)
    s2 = np.bincount(cell, y * y, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        ybar = s1 / np.maximum(n_c, 1)
        var = np.where(n_c > 1, (s2 - n_c * ybar * ybar) / np.maximum(n_c - 1, 1), 0.0)
        several = m >= 2
        within_i = np.where(several, (1.0 - m / big_m) * y * (1 - y) / np.maximum(m - 1, 1), 0.0)
    var = np.maximum(var, 0.0)
    once_fpc = np.bincount(cell, np.where(several, 0.0, 1.0 - 1.0 / big_m), minlength=size)
    within = np.bincount(cell, within_i, minlength=size) + once_fpc * ybar * (1 - ybar)
    partial = np.bincount(cell, (m < big_m).astype(np.float64), minlength=size)
    runs_c = np.bincount(cell, m, minlength=size)
    # population weights of the cells within their group
    pop_c = np.where(finite[ch], pops[ch] * n_c / np.maximum(n_h[ch], 1), n_c)
    wsum = np.bincount(ck, pop_c, minlength=n_keys)
    w = pop_c / np.maximum(wsum[ck], 1e-300)
    units = np.bincount(ck, n_c, minlength=n_keys)
    runs = np.bincount(ck, runs_c, minlength=n_keys)
    p = np.clip(np.bincount(ck, w * ybar, minlength=n_keys), 0.0, 1.0)
    fh_c = f_h[ch]
    full_c = (fh_c >= 1.0) & (partial == 0)
    exact = (np.bincount(ck, (~full_c).astype(np.float64), minlength=n_keys) == 0) & (units > 0)
    # a fault counts as one trial: at least the Bernoulli variance of the cell's mean
    with np.errstate(invalid="ignore", divide="ignore"):
        bern = np.where(n_c > 1, ybar * (1 - ybar) * n_c / np.maximum(n_c - 1, 1), 0.0)
    var = np.maximum(var, bern)
    flat = (var <= 1e-15) | (n_c < 2)
    term = (1.0 - fh_c) * var / np.maximum(n_c, 1) + fh_c * within / np.maximum(n_c * n_c, 1)
    v = np.bincount(ck, np.where(flat, 0.0, w * w * term), minlength=n_keys)
    # cells without spread, pooled per group: the variance of (n y + 1/2) / (n + 1)
    wf = np.bincount(ck, np.where(flat, w, 0.0), minlength=n_keys)
    nf = np.bincount(ck, np.where(flat, n_c, 0.0), minlength=n_keys)
    with np.errstate(invalid="ignore", divide="ignore"):
        yf = np.bincount(ck, np.where(flat, w * ybar, 0.0), minlength=n_keys) / np.maximum(
            wf, 1e-300
        )
        ff = np.bincount(ck, np.where(flat, w * fh_c, 0.0), minlength=n_keys) / np.maximum(
            wf, 1e-300
        )
    pt = (nf * yf + 0.5) / (nf + 1.0)
    v = v + np.where(wf > 0, wf * wf * (1.0 - ff) * pt * (1.0 - pt) / np.maximum(nf, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_eff = np.where(
            v > 0, p * (1 - p) / np.maximum(v, 1e-300) * units / np.maximum(units - 1, 1), units
        )
    # at 0 or 1: the faults, over 1 - f when every fault ran on every input
    dom_pop = np.bincount(ck, pop_c, minlength=n_keys)
    has_partial = np.bincount(ck, partial, minlength=n_keys) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f_dom = np.where(np.isfinite(dom_pop) & (dom_pop > 0), units / dom_pop, 0.0)
    n_edge = np.where(~has_partial & (f_dom < 1.0), units / np.maximum(1.0 - f_dom, 1e-300), units)
    edge = (p <= 0.0) | (p >= 1.0)
    n_eff = np.where(edge, n_edge, n_eff)
    n_eff = np.where(exact, np.inf, n_eff)
    low, high = intervals_from_rates(p, n_eff, confidence, method)
    out = []
    for g in range(n_keys):
        if units[g] == 0:
            out.append(Estimate(0.0, 0.0, 1.0, 0.0, 0, 0))
        else:
            out.append(
                Estimate(
                    float(p[g]),
                    float(low[g]),
                    float(high[g]),
                    float(n_eff[g]),
                    int(units[g]),
                    int(round(runs[g])),
                    bool(exact[g]),
                )
            )
    return out


def estimate(
    y: np.ndarray,
    m: np.ndarray,
    stratum: np.ndarray | None = None,
    populations: Sequence[float] | None = None,
    inputs: float | None = None,
    confidence: float = 0.95,
    method: str = DEFAULT_INTERVAL,
) -> Estimate:
    """The estimate over all the faults given (:func:`estimate_groups` with one group)."""
    key = np.zeros(len(np.asarray(y)), dtype=np.int64)
    return estimate_groups(y, m, key, 1, stratum, populations, inputs, confidence, method)[0]


def stratum_sd(y: np.ndarray, stratum: np.ndarray, n_strata: int) -> np.ndarray:
    """Each stratum's standard deviation of the per-fault fraction, for Neyman allocation.

    As in the variance of the estimate, a fault counts as one trial: the spread is at least the
    Bernoulli spread of the stratum's mean. A stratum whose faults all gave the same fraction
    (no SDC at all) gets 0: the sampler pools such strata (``StratifiedSampler.allocate``), as
    the estimator does; a stratum without faults gets 1/2, the largest a fraction can have.

    Example:
        >>> import numpy as np
        >>> y, h = np.array([0, 0, 1, 0.0]), np.array([0, 0, 1, 1])
        >>> [round(float(x), 3) for x in stratum_sd(y, h, 3)]
        [0.0, 0.707, 0.5]
    """
    y = np.asarray(y, dtype=np.float64)
    stratum = np.asarray(stratum, dtype=np.int64)
    n = np.bincount(stratum, minlength=n_strata).astype(np.float64)
    s1 = np.bincount(stratum, y, minlength=n_strata)
    s2 = np.bincount(stratum, y * y, minlength=n_strata)
    with np.errstate(invalid="ignore", divide="ignore"):
        ybar = np.where(n > 0, s1 / np.maximum(n, 1), 0.5)
        var = np.where(n > 1, (s2 - n * ybar * ybar) / np.maximum(n - 1, 1), 0.0)
        bern = np.where(n > 1, ybar * (1 - ybar) * n / np.maximum(n - 1, 1), 0.0)
    var = np.maximum(np.maximum(var, bern), 0.0)
    var = np.where(var <= 1e-15, 0.0, var)
    var = np.where(n == 0, 0.25, var)
    return np.sqrt(var)
