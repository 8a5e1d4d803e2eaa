# SPDX-License-Identifier: MIT
"""confirm_plan against runs made by hand: for each of the plan's held-out faults, one forward
pass under inject with ranger (``protect``) on the plan's layers and one without, the class
compared with the fault-free one; the unprotected rate also against the traced campaign's
outcomes, and the predicted figure against the plan's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, run_campaign
from torchfault.analysis import layers_to_protect
from torchfault.campaign import PlanCheck, confirm_plan
from torchfault.errors import TorchFaultError
from torchfault.injectors import inject, profile_ranges, protect


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    ).eval()
    x = torch.randn(16, 4)
    profile = profile_ranges(model, torch.randn(128, 4))
    faults = [Fault("0", "weight", (r, c), (30,)) for r in range(8) for c in range(4)] + [
        Fault("2", "weight", (r, c), (30,)) for r in range(8) for c in range(0, 8, 2)
    ]
    traced = run_campaign(model, x, faults, trace=profile)
    outcomes = {(r.fault_id, r.input_id): r.outcome for r in traced.runs}
    plan = layers_to_protect(
        traced.traces, outcomes, traced.faults, 0.01, profile, validation=0.5, min_runs=3
    )
    return model, x, faults, profile, outcomes, plan


def _by_hand(model, x, faults, layers, profile):
    """SDC share of the runs of ``faults``: top-1 against the fault-free top-1, finite only."""
    with torch.no_grad():
        golden = model(x).argmax(1)
        sdc = 0
        for f in faults:
            if layers:
                ranger = protect(model, "ranger", profile=profile, layers=list(layers))
                with ranger, inject(model, [f]):  # protection outside, as protected campaigns
                    out = model(x)
            else:
                with inject(model, [f]):
                    out = model(x)
            finite = torch.isfinite(out).all(1)
            sdc += int((finite & (out.argmax(1) != golden)).sum())
    return sdc / (len(faults) * len(x))


def test_confirm_plan_measures_the_held_out_faults(case):
    model, x, faults, profile, outcomes, plan = case
    assert plan.layers, "the case is built so that a layer is chosen"
    check = confirm_plan(plan, model, x, faults, profile)
    held = [k for k in range(len(faults)) if plan.held_out(k)]
    assert check.split == "held_out" and check.layers == plan.layers
    assert check.faults == len(held) and check.runs == len(held) * len(x) == plan.val_runs
    assert check.predicted == plan.val_predicted
    observed = sum(outcomes[(k, i)] == "sdc" for k in held for i in range(len(x)))
    assert check.sdc_without == pytest.approx(observed / check.runs, abs=1e-12)
    assert check.sdc_without == pytest.approx(plan.val_before, abs=1e-12)
    held_faults = [faults[k] for k in held]
    assert check.sdc_without == pytest.approx(_by_hand(model, x, held_faults, (), profile))
    assert check.sdc_with == pytest.approx(_by_hand(model, x, held_faults, plan.layers, profile))
    assert check.sdc_with < check.sdc_without
    assert check.error == check.sdc_with - check.predicted
    assert check.protection is not None and len(check.protection.runs) == check.runs


def test_confirm_plan_train_split_mapping_and_no_layer(case):
    model, x, faults, profile, _, plan = case
    train = {k: f for k, f in enumerate(faults) if not plan.held_out(k)}
    check = confirm_plan(plan, model, x, train, profile, split="train")
    assert check.faults == len(train) and check.predicted == plan.predicted
    assert check.sdc_with == pytest.approx(
        _by_hand(model, x, list(train.values()), plan.layers, profile)
    )
    empty = type(plan)(**{**plan.__dict__, "layers": ()})
    check = confirm_plan(empty, model, x, faults, profile)
    assert isinstance(check, PlanCheck)
    assert check.protection is None and check.sdc_with == check.sdc_without
    assert math.isfinite(check.sdc_with)


def test_confirm_plan_bad_input(case):
    model, x, faults, profile, _, plan = case
    for kw, field in (
        ({"split": "all"}, "split"),
        ({"plan": "fc2"}, "plan"),
        ({"faults": {k: faults[k] for k in range(len(faults)) if plan.held_out(k)},
          "split": "train"}, "faults"),
    ):  # fmt: skip
        args = {"plan": plan, "model": model, "inputs": x, "faults": faults, "profile": profile}
        with pytest.raises(TorchFaultError) as e:
            confirm_plan(**{**args, **kw})
        assert e.value.field == field
