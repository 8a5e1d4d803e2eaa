# SPDX-License-Identifier: MIT
"""One model/data vocabulary in every DNN job and in ``torchfault campaign`` (issue 11 item 3):
the same ``model:``/``data:`` block builds the same model everywhere; the jobs' old flat keys
still read, with a DeprecationWarning naming the new key; old and new together are an error."""

from __future__ import annotations

import pytest
import torch

from torchfault import dnn
from torchfault.campaign import CampaignConfig
from torchfault.campaign._campaign import build_model
from torchfault.cli._dnn import ProfileConfig, PruneConfig, QuantizeConfig, SummaryConfig
from torchfault.config import from_dict
from torchfault.errors import ConfigError

JOBS = [dnn.TrainConfig, dnn.TestConfig, PruneConfig, QuantizeConfig, SummaryConfig, ProfileConfig]

#: each job's old flat keys, with a value and where the value must land
OLD = {
    "model": ("mlp", "model.name"),
    "dataset": ("synthetic", "data.dataset"),
    "model_options": ({"hidden": [8]}, "model.kwargs"),
    "dataset_options": ({"size": 40}, "data.kwargs"),
    "pretrained": (False, "model.pretrained"),
    "checkpoint": ("w.pt", "model.checkpoint"),
    "weights": ("w.pt", "model.checkpoint"),
    "split": ("val", "data.split"),
}
HAD = {  # the old keys each job had (train's ``checkpoint`` is its Lightning checkpoint section)
    dnn.TrainConfig: [
        "model",
        "dataset",
        "model_options",
        "dataset_options",
        "pretrained",
        "weights",
    ],
    dnn.TestConfig: ["model", "dataset", "model_options", "dataset_options", "checkpoint", "split"],
    PruneConfig: [
        "model",
        "dataset",
        "model_options",
        "dataset_options",
        "pretrained",
        "checkpoint",
    ],
    QuantizeConfig: [
        "model",
        "dataset",
        "model_options",
        "dataset_options",
        "pretrained",
        "checkpoint",
        "split",
    ],
    SummaryConfig: ["model", "dataset", "model_options", "dataset_options", "checkpoint"],
    ProfileConfig: ["model", "dataset", "model_options", "dataset_options", "checkpoint"],
}


def _get(cfg, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def test_one_block_builds_the_same_model_in_every_job_and_in_campaign(tmp_path):
    """A model/data block with a checkpoint file: every job and a campaign read the same
    settings and build models with the very weights of the file (compared tensor by tensor
    with the file read by torch.load)."""
    ref = dnn.create_model("mlp", pretrained=False, hidden=[12])
    torch.manual_seed(3)
    for p in ref.parameters():
        p.data.normal_()
    path = tmp_path / "w.pt"
    torch.save(ref.state_dict(), path)
    block = {
        "model": {"name": "mlp", "kwargs": {"hidden": [12]}, "checkpoint": str(path)},
        "data": {"dataset": "digits", "split": "val"},
    }
    saved = torch.load(path, weights_only=True)
    camp = from_dict(CampaignConfig, {**block, "out_dir": str(tmp_path / "c")})
    models = [build_model(camp)]
    for job in JOBS:
        cfg = from_dict(job, block)
        assert cfg.model.name == camp.model.name and cfg.model.kwargs == camp.model.kwargs
        assert cfg.model.checkpoint == camp.model.checkpoint == str(path)
        assert (cfg.data.dataset, cfg.data.split, cfg.data.kwargs) == ("digits", "val", {})
        models.append(dnn.build_job_model(cfg))
    for model in models:
        got = model.state_dict()
        assert set(got) == set(saved)
        for k, v in saved.items():
            assert torch.equal(got[k], v), k


@pytest.mark.parametrize("job", JOBS, ids=lambda c: c.__name__)
def test_old_keys_warn_name_the_new_key_and_map(job):
    """From YAML (a mapping) and from Python keywords: each old key lands on its new key."""
    for old in HAD[job]:
        value, new = OLD[old]
        data = {old: value}
        if old != "dataset":
            data["data"] = {"dataset": "digits"}
        for how in ("yaml", "python"):
            with pytest.warns(DeprecationWarning, match=rf"{old}: deprecated key.*write {new}"):
                if how == "yaml":
                    cfg = from_dict(job, data)
                else:
                    cfg = job(**{old: value})
            assert _get(cfg, new) == value, (old, how)


@pytest.mark.parametrize("job", JOBS, ids=lambda c: c.__name__)
def test_old_and_new_key_together_are_an_error_naming_both(job):
    for old in HAD[job]:
        if old == "model":  # ``model: NAME`` and ``model.name`` are one key in YAML
            continue
        value, new = OLD[old]
        section, key = new.split(".")
        data = {old: value, section: {key: value}}
        with pytest.raises(ConfigError) as err:
            from_dict(job, data)
        assert err.value.field == new
        assert f"{old} and {new} both given" in str(err.value)
        with pytest.raises(ConfigError) as err, pytest.warns(DeprecationWarning):
            job(**{old: value, section: from_dict(type(getattr(job(), section)), {})})
        assert err.value.field == section and old in str(err.value) and new in str(err.value)


def test_cli_reads_the_block_and_the_old_flags(tmp_path, capsys):
    """``torchfault summary`` with the new sections, and with the old flags (warned on stderr)."""
    from torchfault.cli import main

    assert main(["summary", "--model.name", "mlp", "--data.dataset", "digits"]) == 0
    new = capsys.readouterr()
    assert "deprecated" not in new.err
    with pytest.warns(DeprecationWarning):
        assert main(["summary", "--model", "mlp", "--dataset", "digits"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out
    assert "dataset: deprecated key, read as data.dataset" in old.err
