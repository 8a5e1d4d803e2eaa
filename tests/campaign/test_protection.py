# SPDX-License-Identifier: MIT
"""run_campaign(..., protection=...): every protected run against a hand-written oracle (inject,
one forward pass of the whole batch, the protection's flags, the outcome classified by hand
against the unprotected golden output), the same records from the fast and reference engines,
the summary's figures against counts made here, and bad input refused before anything runs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from torchfault import create_sampler, fault_space, run_campaign
from torchfault.errors import TorchFaultError
from torchfault.injectors import create_protection, inject, profile_ranges, protect

N = 20  # >= MIN_ROWS: one unpadded pass over all inputs, the same arithmetic as the oracle's


def _net() -> nn.Sequential:
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.ReLU(),
        nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def setup():
    model = _net()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(N, 1, 6, 6, generator=g)
    labels = torch.randint(0, 5, (N,), generator=g)
    prof = profile_ranges(model, torch.randn(200, 1, 6, 6, generator=g))
    space = fault_space(model, x)
    sampler = create_sampler("uniform", sites=space, n=40, seed=2, bits=[30, 29, 27, 23, 5])
    faults = [sampler.draw(k) for k in range(len(sampler))]
    return model, x, labels, prof, faults


def _classify(golden: torch.Tensor, out: torch.Tensor) -> str:
    if not torch.isfinite(out).all():
        return "due"
    if torch.equal(golden, out):
        return "masked"
    return "sdc" if int(out.argmax()) != int(golden.argmax()) else "benign"


def _oracle(model, x, faults, prot):
    """``(fault, input) -> (outcome, flagged, correct)`` by hand."""
    with torch.no_grad():
        golden = model(x)
        want = {}
        with protect(model, prot) as p:
            for k, f in enumerate(faults):
                p.reset()
                with inject(model, f if isinstance(f, tuple) else [f]):
                    out = model(x)
                for i in range(x.shape[0]):
                    o = _classify(golden[i], out[i])
                    flagged = bool(p.flags[i])
                    outcome = "detected" if flagged and not p.corrects else o
                    want[(k, i)] = (outcome, flagged, o in ("masked", "benign"))
    return want


@pytest.mark.parametrize("name", ["ranger", "detect", "clip"])
def test_protected_runs_equal_the_hand_oracle_for_both_engines(setup, name):
    model, x, labels, prof, faults = setup
    opts = {"name": name, "profile": prof}
    if name == "clip":
        opts.update(mode="zero", bounds="minmax")
    ref = run_campaign(model, x, faults, labels, protection=opts, engine="reference")
    fast = run_campaign(model, x, faults, labels, protection=opts, engine="fast")
    want = _oracle(model, x, faults, _make(opts))
    got = {(r.fault_id, r.input_id): (r.outcome, r.flagged, r.correct) for r in ref.protection.runs}
    assert got == want
    assert ref.protection.runs == fast.protection.runs
    assert [r.outcome for r in ref.runs] == [r.outcome for r in fast.runs]
    assert ref.protection.baseline == {(r.fault_id, r.input_id): r.outcome for r in ref.runs}
    outcomes = {o for o, _, _ in want.values()}
    assert ("detected" in outcomes) == (name == "detect")
    assert any(f for _, f, _ in want.values())


def _make(opts):
    o = dict(opts)
    return create_protection(o.pop("name"), **o)


def test_summary_figures_against_counts(setup):
    model, x, labels, prof, faults = setup
    res = run_campaign(model, x, faults, labels, protection={"name": "detect", "profile": prof})
    p = res.protection
    s = p.summary()
    n = len(faults) * N
    base = [r.outcome for r in res.runs]
    prot = [r.outcome for r in p.runs]
    assert s["runs"] == n
    assert s["sdc_without"] == base.count("sdc") / n and s["sdc_with"] == prot.count("sdc") / n
    assert s["due_without"] == base.count("due") / n and s["due_with"] == prot.count("due") / n
    assert s["detected"] == prot.count("detected") / n == s["detection_rate"]
    flagged_sdc = [r.flagged for r, b in zip(p.runs, base) if b == "sdc"]
    assert s["sdc_detection_rate"] == sum(flagged_sdc) / len(flagged_sdc)
    # golden inputs by hand: flagged rows, classes, label accuracy
    with torch.no_grad(), protect(model, _make({"name": "detect", "profile": prof})) as d:
        model(x)
    assert s["false_positive_rate"] == float(d.flags.float().mean())
    # the counts behind it (the interval's k and n), one trial per fault-free input
    assert (s["false_positives"], s["fault_free_inputs"]) == (int(d.flags.sum()), x.shape[0])
    assert s["accuracy_cost"] == 0.0  # detect changes no output
    acc = float((model(x).argmax(1) == labels).float().mean())
    assert s["accuracy_without"] == pytest.approx(acc) == s["accuracy_with"]
    assert math.isfinite(s["overhead"])


def test_ranger_on_its_own_profiling_inputs_costs_nothing(setup):
    model, x, labels, _, faults = setup
    prof = profile_ranges(model, x, batch_size=256)  # the campaign's own batches
    s = run_campaign(model, x, faults, labels, protection={"name": "ranger", "profile": prof})
    s = s.protection.summary()
    assert s["false_positive_rate"] == 0.0 and s["accuracy_cost"] == 0.0
    assert s["sdc_with"] <= s["sdc_without"]


def test_bad_protection_refused_before_anything_runs(setup):
    model, x, labels, prof, faults = setup
    calls = []
    h = model[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(TorchFaultError, match=r"no module 'conv9'") as e:
            run_campaign(
                model,
                x,
                faults,
                protection={"name": "ranger", "profile": prof, "layers": ["conv9"]},
            )
        assert e.value.field == "layers"
        other = _net()
        with torch.no_grad():
            other[3].bias[0] += 1
        with pytest.raises(TorchFaultError, match=r"another model.*'3\.bias'"):
            run_campaign(other, x, faults, protection={"name": "detect", "profile": prof})
        with pytest.raises(TorchFaultError, match="Unknown protection"):
            run_campaign(model, x, faults, protection="rangr")
        with pytest.raises(TorchFaultError, match="protection.name"):
            run_campaign(model, x, faults, protection={"profile": prof})
    finally:
        h.remove()
    assert calls == []
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def _config(tmp_path, **protection):
    return {
        "name": "prot",
        "out_dir": str(tmp_path / "run"),
        "sampler": {"name": "uniform", "n": 12, "bits": [30, 29, 23]},
        "data": {"num_inputs": 16},
        "inputs_per_fault": 0,
        "report": False,
        "progress": False,
        "protection": protection,
    }


def test_config_protection_equals_run_campaign_on_the_stored_faults(tmp_path):
    import json

    from torchfault import Campaign
    from torchfault.dnn import create_model

    model = create_model("lenet", dataset="digits", pretrained=True).eval()
    camp = Campaign(_config(tmp_path))
    camp.setup()
    prof_path = profile_ranges(model, camp.inputs[:8]).save(tmp_path / "r.json")
    # a store made without protection resumes with it: the protection is not in the identity
    Campaign(_config(tmp_path)).run()
    camp = Campaign(_config(tmp_path, name="detect", profile=str(prof_path)))
    result = camp.run()
    doc = json.loads((tmp_path / "run" / "protection.json").read_text())
    faults = [result.faults[k] for k in sorted(result.faults)]
    want = run_campaign(
        model, camp.inputs, faults, camp.labels, protection={"name": "detect", "profile": prof_path}
    ).protection
    assert doc["runs"] == [
        [r.fault_id, r.input_id, r.outcome, r.flagged, r.correct] for r in want.runs
    ]
    s = want.summary()
    for key in (
        "sdc_without", "sdc_with", "detection_rate", "false_positive_rate", "false_positives",
        "fault_free_inputs",
    ):  # fmt: skip
        assert doc["summary"][key] == s[key]
    assert doc["summary"]["false_positive_rate"] > 0  # profiled on 8 of the 16 inputs
    assert result.protection.runs == want.runs


def test_config_protection_errors_name_the_field_and_store_nothing(tmp_path):
    from torchfault import Campaign
    from torchfault.errors import ConfigError

    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match=r"bad\.json") as e:
        Campaign(_config(tmp_path, name="ranger", profile=str(bad))).run()
    assert e.value.field == "protection.profile"
    with pytest.raises(ConfigError, match="conv9") as e:
        Campaign(_config(tmp_path, name="clip", layers={"conv9": {"bound": 1}})).run()
    assert e.value.field == "protection.layers"
    with pytest.raises(ConfigError, match="rangr") as e:
        Campaign(_config(tmp_path, name="rangr")).run()
    assert e.value.field == "protection.name"
    assert not (tmp_path / "run" / "campaign.sqlite").exists()


def test_protection_with_structured_inputs_or_outputs_is_a_clear_error(setup):
    model, x, labels, prof, faults = setup

    class TupleOut(nn.Sequential):
        def forward(self, x):
            return super().forward(x), x.sum()

    with pytest.raises(TorchFaultError, match=r"one input tensor, not a tuple or dict"):
        run_campaign(model, {"x": x}, faults, protection={"name": "detect", "profile": prof})
    wrapped = TupleOut(*model)  # the same layers under the same names: the profile fits
    with pytest.raises(TorchFaultError, match=r"returning one tensor, not a tuple"):
        run_campaign(
            wrapped, x, faults[:3], output=0, protection={"name": "detect", "profile": prof}
        )
