# SPDX-License-Identifier: MIT
"""The P(SDC | deviation) fit: coefficients against scikit-learn's LogisticRegression (same
penalty, unpenalised intercept), the split by fault, the held-out Brier scores by hand, and a
fit on real LeNet traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchfault import Fault, create_sampler, fault_space, run_campaign
from torchfault.analysis import LayerDeviation, Trace, fit_sdc_model
from torchfault.analysis._sdc_model import _held_out, _x
from torchfault.errors import TorchFaultError


def _synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    dev = 10.0 ** rng.uniform(-3, 3, n)
    p = 1 / (1 + np.exp(-(0.5 + 1.3 * np.log10(dev))))
    sdc = rng.uniform(size=n) < p
    traces = [
        Trace(k, 0, (LayerDeviation("fc", float(d), 0.0, 1),), None, None)
        for k, d in enumerate(dev)
    ]
    outcomes = {(k, 0): "sdc" if s else "benign" for k, s in enumerate(sdc)}
    faults = {k: (Fault("fc", "weight", (0,), (27,)),) for k in range(n)}
    return traces, outcomes, faults, dev, sdc


def test_coefficients_equal_sklearn():
    pytest.importorskip("sklearn")  # the 'train' extra
    from sklearn.linear_model import LogisticRegression

    traces, outcomes, faults, dev, sdc = _synthetic()
    ridge = 0.5
    fit = fit_sdc_model(traces, outcomes, faults, validation=0.0, ridge=ridge).fits[("fc", 27)]
    lr = LogisticRegression(C=1 / ridge, tol=1e-12, max_iter=10_000)
    lr.fit(np.log10(dev)[:, None], sdc)
    assert fit.a == pytest.approx(float(lr.intercept_[0]), abs=1e-5)
    assert fit.b == pytest.approx(float(lr.coef_[0, 0]), abs=1e-5)
    assert fit.train_runs == 400 and math.isnan(fit.brier_val)


def test_split_by_fault_and_held_out_brier_by_hand():
    traces, outcomes, faults, dev, sdc = _synthetic(600, seed=1)
    # two inputs per fault: both runs of a fault fall on the same side
    traces = traces + [Trace(t.fault_id, 1, t.layers, None, None) for t in traces]
    outcomes.update({(k, 1): o for (k, _), o in list(outcomes.items())})
    model = fit_sdc_model(traces, outcomes, faults, validation=0.25, seed=7)
    fit = model.fits[("fc", 27)]
    held = [k for k in range(600) if _held_out(k, 7, 0.25)]
    assert fit.val_runs == 2 * len(held) and fit.train_runs == 2 * (600 - len(held))
    assert 0.15 < len(held) / 600 < 0.35
    p = np.array([fit.predict(dev[k]) for k in held])
    y = np.array([float(sdc[k]) for k in held])
    train_rate = np.mean([float(sdc[k]) for k in range(600) if k not in set(held)])
    assert fit.brier_val == pytest.approx(float(((p - y) ** 2).mean()), rel=1e-9)
    assert fit.brier_base == pytest.approx(float(((train_rate - y) ** 2).mean()), rel=1e-9)
    assert fit.brier_val < fit.brier_base  # the deviation says more than the base rate
    with pytest.raises(TorchFaultError, match="validation"):
        fit_sdc_model(traces, outcomes, faults, validation=1.0)
    with pytest.raises(TorchFaultError, match="no fit"):
        model.predict("fc", 3, 1.0)
    assert _x(float("inf")) == 40.0 and _x(0.0) == -40.0


def test_fit_on_lenet_traces():
    from torchfault.dnn import create_model

    model = create_model("lenet", dataset="digits", pretrained=True).eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sites = [s for s in fault_space(model, x) if s.target == "weight"]
    sampler = create_sampler("uniform", sites=sites, n=60, seed=0, bits=[30, 27])
    res = run_campaign(model, x, [sampler.draw(k) for k in range(60)], trace=True)
    outcomes = {(r.fault_id, r.input_id): r.outcome for r in res.runs}
    m = fit_sdc_model(res.traces, outcomes, res.faults, min_runs=20)
    assert m.fits
    for f in m.fits.values():
        assert f.train_runs >= 20 and 0 <= f.train_sdc <= 1
        assert 0 <= f.predict(1e6) <= 1
