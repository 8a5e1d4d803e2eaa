# SPDX-License-Identifier: MIT
"""Memory faults through the normal campaign path (the ``memory`` sampler), against
memory_campaign (full forward passes, its own outcome rule) on the same physical faults, with
the decoder off and on: run_campaign on both engines, and the command line on the pretrained
LeNet-5 with examples/memory_ecc.yaml."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from torchfault import fault_space, run_campaign
from torchfault.campaign import Campaign, CampaignConfig
from torchfault.config import from_dict
from torchfault.faults import MemoryLayout
from torchfault.injectors import memory_campaign
from torchfault.samplers import create_sampler
from torchfault.store import open_store

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = {"width": 72, "format": "bfloat16", "ecc": "secded"}
MIX = {"adjacent_bits:2": 0.3, "adjacent_bits:3": 0.2, "single": 0.5}  # labels in order


def _per_fault(runs) -> dict[int, dict[str, int]]:
    out: dict[int, Counter] = {}
    for r in runs:
        out.setdefault(r.fault_id, Counter())[r.outcome] += 1
    return {k: dict(v) for k, v in out.items()}


@pytest.mark.parametrize("ecc", [False, True])
def test_run_campaign_on_both_engines_equals_memory_campaign(ecc):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 6)).eval()
    x = torch.randn(16, 12) * 3
    n = 60
    sampler = create_sampler(
        "memory",
        sites=fault_space(model, kinds=["weights", "biases"]),
        model=model,
        n=n,
        seed=11,
        layout=LAYOUT,
        patterns=MIX,
        ecc=ecc,
        persistence="transient",
    )
    sets = sampler.draws(0, n)
    ref = run_campaign(model, x, sets, engine="reference")
    fast = run_campaign(model, x, sets, engine="fast")
    strip = [(r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1) for r in ref.runs]
    assert strip == [
        (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1) for r in fast.runs
    ]
    oracle = memory_campaign(model, x, MemoryLayout(**LAYOUT), n=n, seed=11, patterns=MIX)
    key = "ecc" if ecc else "no_ecc"
    assert _per_fault(ref.runs) == {k: r[key] for k, r in enumerate(oracle.runs)}
    counts = ref.outcome_counts()
    if ecc:
        assert counts["detected"] == 16 * sum(r["status"] == "detected" for r in oracle.runs) > 0
    else:
        assert "detected" not in counts and counts["sdc"] > 0
    # the fault sets are the resolved (element, bit) pairs the oracle injected
    for k, r in enumerate(oracle.runs):
        raw = [(f.module, f.target, f.index, f.bits) for f in sets[k]]
        if ecc and r["status"] == "detected" and r["raw"]:
            assert raw == [
                (d["module"], d["target"], tuple(d["index"]), tuple(d["bits"])) for d in r["raw"]
            ]
        elif not (ecc and r["status"] == "detected"):
            want = r["decoded"] if ecc else r["raw"]
            assert [f.to_dict() for f in sets[k]] == want


def _config(tmp_path: Path, ecc: bool, n: int = 12) -> dict:
    d = yaml.safe_load((ROOT / "examples/memory_ecc.yaml").read_text())
    d["sampler"]["n"] = n
    d["sampler"]["memory"]["ecc"] = ecc
    d["data"]["num_inputs"] = 10
    d["out_dir"] = str(tmp_path / ("ecc" if ecc else "raw"))
    d["report"] = False
    return d


def test_example_config_from_the_command_line_with_and_without_secded(tmp_path):
    from torchfault.cli import main

    stored = {}
    for ecc in (True, False):
        d = _config(tmp_path, ecc)
        path = tmp_path / f"memory_{ecc}.yaml"
        path.write_text(yaml.safe_dump(d))
        assert main(["campaign", "--config", str(path)]) == 0
        cfg = from_dict(CampaignConfig, d)
        with open_store(cfg.store_path) as store:
            stored[ecc] = (store.runs(), store.faults())
        # the log reports the memory's size and the SDC FIT per Mbit
        text = (Path(cfg.run_dir) / "campaign.log").read_text()
        sdc = sum(r.outcome == "sdc" for r in stored[ecc][0]) / len(stored[ecc][0])
        mbit = 711_144 / 2**20  # 72 x sum(ceil(numel / 2)) over LeNet-5's 10 float32 tensors
        assert f"memory: 711,144 cells, {mbit:.4f} Mbit; SDC per upset {sdc:.4g}" in text
        assert f"(at 1000 FIT/Mbit: {1000 * mbit * sdc:.4g}" in text
    # the oracle: memory_campaign on the campaign's own model and inputs, same seed and layout
    camp = Campaign(from_dict(CampaignConfig, _config(tmp_path / "oracle", True)))
    camp.setup()
    x = camp.inputs[list(camp.input_ids)]
    mem = _config(tmp_path, True)["sampler"]["memory"]
    oracle = memory_campaign(
        camp.model,
        x,
        MemoryLayout(**mem["layout"]),
        n=12,
        seed=0,
        patterns=dict(sorted(mem["patterns"].items())),  # the sampler reads labels in order
    )
    for ecc, key in ((True, "ecc"), (False, "no_ecc")):
        runs, faults = stored[ecc]
        assert _per_fault(runs) == {k: r[key] for k, r in enumerate(oracle.runs)}
        # the stored fault sets are the resolved (element, bit) pairs, fault k = f(seed, k)
        for k in range(12):
            want = camp.sampler.memory.fault_set(camp.sampler.resolve(k), ecc)
            assert tuple(faults.get(k, ())) == want
    assert sum(r.outcome == "detected" for r in stored[True][0]) == 10 * oracle.statuses().get(
        "detected", 0
    )


def test_memory_sampler_errors_name_their_fields(tmp_path):
    from torchfault.errors import ConfigError

    d = _config(tmp_path, True)
    d["targets"]["kinds"] = ["outputs", "weights"]
    with pytest.raises(ConfigError, match="targets.kinds") as err:
        Campaign(from_dict(CampaignConfig, d)).setup()
    assert err.value.field == "targets.kinds"
    d = _config(tmp_path, True)
    d["sampler"]["memory"]["layout"] = {"width": 70, "format": "bfloat16", "ecc": "secded"}
    with pytest.raises(ConfigError, match="sampler.memory") as err:
        Campaign(from_dict(CampaignConfig, d)).setup()
    assert not Path(d["out_dir"]).exists() or not any(Path(d["out_dir"]).iterdir())


def test_nonzero_sampler_and_masks_kind_from_a_config(tmp_path):
    from torchfault.campaign import TargetsConfig
    from torchfault.faults import NonzeroFaults

    d = {
        "name": "nonzero",
        "model": {"name": "lenet", "dataset": "digits", "pretrained": True},
        "data": {"dataset": "digits", "split": "test", "num_inputs": 4},
        "targets": {"modules": ["fc1"], "kinds": ["weights"]},
        "sampler": {"name": "nonzero", "n": 6, "bits": ["exponent"]},
        "engine": {"name": "reference"},
        "inputs_per_fault": 0,
        "out_dir": str(tmp_path / "nz"),
    }
    camp = Campaign(from_dict(CampaignConfig, yaml.safe_load(yaml.safe_dump(d))))
    result = camp.run()
    assert len(result.runs) == 6 * 4
    want = NonzeroFaults(camp.model, n=6, seed=0, modules=["fc1"], bits=list(range(23, 31)))
    with open_store(camp.config.store_path) as store:
        stored = store.faults()
    assert [stored[k] for k in range(6)] == want.draws(0, 6)
    for (f,) in want.draws(0, 6):
        assert camp.model.fc1.weight[f.index] != 0 and 23 <= f.bits[0] <= 30
    assert TargetsConfig(kinds=["mask"]).kinds == ["masks"]


def test_a_memory_campaign_resumes_from_its_store(tmp_path):
    # the resume check draws fault k again and compares it with the stored fault set: empty sets
    # (corrected upsets) and ecc_detected sets must round-trip through the store
    d = _config(tmp_path, True, n=8)
    d["engine"] = {"name": "reference"}
    first = Campaign(from_dict(CampaignConfig, d)).run()
    with open_store(from_dict(CampaignConfig, d).store_path) as store:
        faults = store.faults()
    assert any(f.model == "ecc_detected" for fs in faults.values() for f in fs)
    # a campaign killed before input 0's runs: every fault has a missing run, so every fault is
    # drawn again and compared with its stored set before its missing run is made
    import sqlite3

    conn = sqlite3.connect(from_dict(CampaignConfig, d).store_path)
    with conn:
        assert conn.execute("DELETE FROM runs WHERE input_id = 0").rowcount == 8
    conn.close()
    again = Campaign(from_dict(CampaignConfig, d)).run()

    def key(r):
        return (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1)

    assert sorted(map(key, again.runs)) == sorted(map(key, first.runs))
    assert len(first.runs) == 8 * 10
    # the report lists the detected runs: the markdown and HTML overall tables, counted by hand
    from torchfault.analysis import make_report

    n_detected = sum(r.outcome == "detected" for r in first.runs)
    assert n_detected > 0
    cfg = from_dict(CampaignConfig, d)
    make_report(cfg.store_path, tmp_path / "report", html=True)
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"| detected | {n_detected} |" in md
    html = (tmp_path / "report" / "report.html").read_text()
    assert f'<tr><td>detected</td><td data-v="{n_detected}">{n_detected:,}</td>' in html
