# SPDX-License-Identifier: MIT
"""A fitted model of P(SDC | deviation at a layer), per layer and bit, from deviation traces.

For each (layer, bit) group — runs whose single fault flips ``bit`` (the fault's first bit) and
whose trace deviates at ``layer`` — :func:`fit_sdc_model` fits a logistic regression

    P(SDC) = 1 / (1 + exp(-(a + b * x))),   x = log10(max_abs deviation at the layer)

(``x`` clipped to [-40, 40]; an infinite deviation is 40) by iteratively reweighted least
squares with an L2 penalty ``ridge`` on ``b`` only (the intercept is not penalised, as in
scikit-learn's ``LogisticRegression``). Runs are split by fault, not by run (the fault is the
sampling unit): faults whose seeded hash falls in the ``validation`` fraction are held out. Each
fit reports its held-out Brier score beside that of the constant predictor (the training SDC
rate), so a user sees whether the deviation at that layer says more than the base rate.
Groups with fewer than ``min_runs`` training runs get no fit.

:meth:`SDCModel.predict` answers "if the deviation at this layer were d, how likely is an
SDC?" without re-running, e.g. to compare how far each layer's golden range (a protection)
would cut the deviations seen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchfault.analysis._propagation import Trace
from torchfault.errors import TorchFaultError

__all__ = ["LayerFit", "SDCModel", "fit_sdc_model"]


def _x(dev: float) -> float:
    if math.isnan(dev):
        return 40.0
    if dev <= 0:
        return -40.0
    return max(-40.0, min(40.0, math.log10(dev)))


def _logistic(x: np.ndarray, y: np.ndarray, ridge: float, iters: int = 100) -> tuple[float, float]:
    """IRLS for P(y) = sigmoid(a + b x) with penalty ridge * b^2 / 2."""
    X = np.stack([np.ones_like(x), x], 1)
    w = np.zeros(2)
    pen = np.diag([0.0, ridge])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -500, 500)))
        grad = X.T @ (p - y) + pen @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + pen + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-12:
            break
    return float(w[0]), float(w[1])


@dataclass(frozen=True)
class LayerFit:
    """One (layer, bit) fit.

    Attributes:
        layer, bit: the group.
        a, b: intercept and slope of the logistic model in ``log10(deviation)``.
        train_runs, val_runs: runs fitted on and held out.
        train_sdc: SDC rate of the training runs.
        brier_val: Brier score of the model on the held-out runs (``nan`` without any).
        brier_base: Brier score of the constant ``train_sdc`` on the same runs.
    """

    layer: str
    bit: int
    a: float
    b: float
    train_runs: int
    val_runs: int
    train_sdc: float
    brier_val: float
    brier_base: float

    def predict(self, deviation: float) -> float:
        """P(SDC) at a largest absolute deviation ``deviation`` at this layer."""
        z = self.a + self.b * _x(deviation)
        return 1 / (1 + math.exp(-max(-500.0, min(500.0, z))))


@dataclass
class SDCModel:
    """The fits, ``(layer, bit) -> LayerFit``."""

    fits: dict[tuple[str, int], LayerFit] = field(default_factory=dict)

    def predict(self, layer: str, bit: int, deviation: float) -> float:
        """P(SDC) for a fault on ``bit`` whose deviation at ``layer`` is ``deviation``."""
        try:
            return self.fits[(layer, int(bit))].predict(deviation)
        except KeyError:
            raise TorchFaultError(
                f"no fit for layer {layer!r}, bit {bit} (fits: {len(self.fits)}; a group needs "
                "min_runs training runs).",
                field="layer",
            ) from None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per fit (the :class:`LayerFit` fields)."""
        return [dict(f.__dict__) for f in self.fits.values()]


def _held_out(fault_id: int, seed: int, fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{fault_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


def fit_sdc_model(
    traces: Sequence[Trace],
    outcomes: Mapping[tuple[int, int], str],
    faults: Mapping[int, Sequence[Any]],
    *,
    validation: float = 0.2,
    seed: int = 0,
    ridge: float = 1e-3,
    min_runs: int = 10,
) -> SDCModel:
    """Fit P(SDC | deviation) per layer and bit (see the module docstring).

    Args:
        traces: deviation traces (``run_campaign(..., trace=...)``).
        outcomes: ``(fault_id, input_id) -> outcome`` of the same runs.
        faults: fault id -> its faults (single-fault runs are used).
        validation: fraction of faults held out, in [0, 1).
        seed: seed of the split.
        ridge: L2 penalty on the slope (> 0 keeps separable groups finite).
        min_runs: fewest training runs (with both outcomes or not) a group needs.

    Example:
        >>> from torchfault import Fault
        >>> from torchfault.analysis import LayerDeviation
        >>> tr = [Trace(k, 0, (LayerDeviation("fc", 10.0 ** (k % 9 - 4), 0, 1),), None, None) for k in range(200)]
        >>> out = {(k, 0): "sdc" if k % 9 - 4 > 0 else "masked" for k in range(200)}
        >>> fs = {k: (Fault("fc", "weight", (0,), (30,)),) for k in range(200)}
        >>> m = fit_sdc_model(tr, out, fs)
        >>> m.predict("fc", 30, 1e3) > 0.99, m.predict("fc", 30, 1e-3) < 0.01
        (True, True)
    """
    if not (0 <= validation < 1):
        raise TorchFaultError(
            f"validation: must be in [0, 1), got {validation!r}.", field="validation"
        )
    groups: dict[tuple[str, int], list[tuple[float, float, bool]]] = {}
    for t in traces:
        fs = faults.get(t.fault_id, ())
        if len(fs) != 1 or not fs[0].bits:
            continue
        y = outcomes.get((t.fault_id, t.input_id))
        if y is None or y == "due":
            continue
        held = _held_out(t.fault_id, seed, validation)
        for d in t.layers:
            if d.changed:
                groups.setdefault((d.layer, int(fs[0].bits[0])), []).append(
                    (_x(d.max_abs), float(y == "sdc"), held)
                )
    model = SDCModel()
    for (layer, bit), rows in groups.items():
        train = np.array([(x, y) for x, y, h in rows if not h]).reshape(-1, 2)
        val = np.array([(x, y) for x, y, h in rows if h]).reshape(-1, 2)
        if len(train) < min_runs:
            continue
        a, b = _logistic(train[:, 0], train[:, 1], ridge)
        base = float(train[:, 1].mean())
        if len(val):
            p = 1 / (1 + np.exp(-np.clip(a + b * val[:, 0], -500, 500)))
            brier = float(((p - val[:, 1]) ** 2).mean())
            brier_base = float(((base - val[:, 1]) ** 2).mean())
        else:
            brier = brier_base = math.nan
        model.fits[(layer, bit)] = LayerFit(
            layer, bit, a, b, len(train), len(val), base, brier, brier_base
        )
    return model
