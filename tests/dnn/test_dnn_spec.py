# SPDX-License-Identifier: MIT
"""One builder (``dnn.build_model``/``build_dataset`` from a ModelSpec/DataSpec) for every DNN
job and for campaigns: every file the DNN jobs write loads into a campaign, and errors carry
their field.

Oracles: the weights a campaign builds are compared, tensor by tensor, with the file read
independently (``torch.load`` of the decompressed bytes, Lightning's own loader), and a quantized
model's outputs with :func:`load_quantized`'s.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import torchfault.dnn as dnn
from torchfault.campaign import Campaign, CampaignConfig
from torchfault.config import from_dict
from torchfault.dnn import DataSpec, ModelSpec, build_model
from torchfault.errors import ConfigError, TorchFaultError

ROOT = Path(__file__).resolve().parents[2]
X = dnn.create_dataset("digits", split="test").inputs[:16]


def _raw(path: Path) -> dict:
    """The file's state dict read without torchfault's loaders (decompressed by magic)."""
    import lzma

    data = Path(path).read_bytes()
    if data.startswith(b"\xfd7zXZ"):
        data = lzma.decompress(data)
    return torch.load(io.BytesIO(data), weights_only=True)


def _campaign(tmp_path: Path, **model) -> Campaign:
    cfg = from_dict(
        CampaignConfig,
        {
            "model": model,
            "sampler": {"n": 3},
            "data": {"num_inputs": 4},
            "out_dir": str(tmp_path / "run"),
            "progress": False,
            "report": False,
        },
    )
    return Campaign(cfg)


def _same_weights(model: torch.nn.Module, sd: dict) -> None:
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def test_lightning_checkpoint_keys_prefixed_with_model(tmp_path):
    """A Lightning .ckpt holds ``model.``-prefixed keys (before: a raw state-dict dump)."""
    ref = dnn.create_model("mlp", pretrained=True)
    ckpt = {
        "pytorch-lightning_version": "2.5",
        "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()},
    }
    path = tmp_path / "epoch=0.ckpt"
    torch.save(ckpt, path)
    camp = _campaign(tmp_path, name="mlp", checkpoint=str(path))
    camp.setup()
    _same_weights(camp.model, ref.state_dict())
    # and the jobs' builder (a zoo model; wrap=True) reads the same file
    _same_weights(build_model(ModelSpec("mlp", checkpoint=str(path))), ref.state_dict())


def test_factory_model_export_with_model_prefix_loads_bare(tmp_path):
    """``train`` of a factory model exports a wrapper's keys (``model.fc``); a campaign faults
    the factory's own module (``fc``) and must still read them."""
    factory = f"{ROOT}/examples/my_model.py:build"
    wrapped = dnn.create_model(factory, dataset="digits")
    torch.manual_seed(5)
    for p in wrapped.parameters():
        p.data.normal_()
    path = tmp_path / "export.pt.xz"
    dnn.export_weights(wrapped, path, model_name=factory, dataset="digits")
    assert all(k.startswith("model.") for k in _raw(path)["state_dict"])
    camp = _campaign(tmp_path, name=factory, checkpoint=str(path), pretrained=False)
    camp.setup()
    assert not isinstance(camp.model, dnn.WrappedModel)
    _same_weights(camp.model, wrapped.model.state_dict())


def test_state_dict_saved_with_pruning_masks_in_place(tmp_path):
    from torch.nn.utils import prune

    model = dnn.create_model("mlp", pretrained=True)
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    path = tmp_path / "masked.pt"
    torch.save(model.state_dict(), path)  # weight_orig / weight_mask
    camp = _campaign(tmp_path, name="mlp", checkpoint=str(path))
    camp.setup()
    assert torch.equal(camp.model.fc1.weight, model.fc1.weight_orig * model.fc1.weight_mask)
    assert int((camp.model.fc1.weight == 0).sum()) == model.fc1.weight.numel() // 2


@pytest.mark.slow
def test_quantized_export_detected_or_declared(tmp_path):
    q = dnn.quantize_model(dnn.create_model("mlp", pretrained=True), X)
    path = tmp_path / "q.pt.xz"
    dnn.save_quantized(q, path, model_name="mlp", dataset="digits")
    oracle = dnn.load_quantized(path)
    for quantized in (None, True):
        m = build_model(ModelSpec("mlp", checkpoint=str(path), quantized=quantized))
        assert dnn.is_quantized(m)
        assert torch.equal(m(X), oracle(X))
    with pytest.raises(ConfigError, match="model.quantized: false") as err:
        build_model(ModelSpec("mlp", checkpoint=str(path), quantized=False))
    assert err.value.field == "model.quantized"
    float_file = tmp_path / "f.pt"
    torch.save(dnn.create_model("mlp").state_dict(), float_file)
    with pytest.raises(ConfigError, match="holds float weights") as err:
        build_model(ModelSpec("mlp", checkpoint=str(float_file), quantized=True))
    assert err.value.field == "model.quantized"
    camp = _campaign(tmp_path, name="mlp", checkpoint=str(path))
    assert len(camp.run()) == 3
    assert torch.equal(camp.golden, oracle(camp.inputs))


def test_hub_entry_in_a_local_repository(tmp_path):
    """``model.hub: repo:entry``: the repository's own hubconf.py (nothing downloaded)."""
    m = build_model(ModelSpec(hub=f"{ROOT}:lenet_digits"))
    ref = dnn.create_model("lenet", pretrained=True)
    assert torch.equal(m(X), ref(X))
    camp = _campaign(tmp_path, hub=f"{ROOT}:mlp_digits")
    camp.setup()
    _same_weights(camp.model, dnn.create_model("mlp", pretrained=True).state_dict())
    with pytest.raises(ConfigError, match="no 'lenet_digit'.*Did you mean 'lenet_digits'") as err:
        build_model(ModelSpec(hub=f"{ROOT}:lenet_digit"))
    assert err.value.field == "model.hub"
    with pytest.raises(ConfigError, match="not a directory holding hubconf.py") as err:
        build_model(ModelSpec(hub=f"{tmp_path}:lenet_digits"))
    assert err.value.field == "model.hub"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ModelSpec("lenet", dataset="digitz"), "model.dataset"),
        (ModelSpec("lenett"), "model.name"),
        (ModelSpec("lenet", kwargs={"nonsense": 1}), "model.kwargs"),
        (ModelSpec("lenet", kwargs={"num_classes": 3}), "model.kwargs"),
        (ModelSpec("mlp", dataset="cifar10"), "model.pretrained"),
        (ModelSpec("mlp", checkpoint="/nonexistent.pt"), "model.checkpoint"),
    ],
)
def test_errors_carry_their_field(spec, field):
    with pytest.raises(ConfigError) as err:
        build_model(spec, DataSpec("digits"))
    assert err.value.field == field and str(err.value).startswith(field)


def test_zoo_errors_carry_the_field_where_raised_not_in_the_text():
    """The field is an attribute set where the zoo raises; the message may say anything."""
    with pytest.raises(TorchFaultError) as err:
        dnn.create_model("lenet", dataset="digits", nonsense=1)
    assert err.value.field == "options"
    with pytest.raises(TorchFaultError) as err:
        dnn.create_dataset("digits", split="test", nonsense=1)
    assert err.value.field == "options"
    with pytest.raises(ConfigError) as err:
        dnn.build_dataset(DataSpec("digits", kwargs={"nonsense": 1}))
    assert err.value.field == "data.kwargs"


def test_sampler_errors_are_read_by_field_not_by_message():
    from torchfault.campaign._campaign import _sampler_error

    reworded = TorchFaultError("anything at all, no field name in it", field="n")
    assert _sampler_error(reworded).field == "sampler.n"
    assert str(_sampler_error(reworded)) == "sampler.n: anything at all, no field name in it"
    assert _sampler_error(TorchFaultError("n: something")).field == "sampler"


@pytest.mark.slow
def test_train_prune_quantize_files_all_run_in_a_campaign(tmp_path, capsys):
    """``train -> campaign`` with every file the jobs write: the Lightning .ckpt, the export,
    the pruned export and the quantized export; each campaign's model holds the file's weights
    (compared with the file read by another path)."""
    from torchfault.cli import main
    from torchfault.dnn import ClassifierModule

    out = tmp_path / "train"
    assert (
        main(
            [
                "train", "mlp", "--out_dir", str(out), "--trainer.max_epochs", "1",
                "--export", str(tmp_path / "export.pt.xz"), "--test", "false",
            ]
        )
        == 0
    )  # fmt: skip
    ckpt = next(out.rglob("*.ckpt"))
    assert (
        main(["prune", "mlp", "--model.checkpoint", str(ckpt), "--out", str(tmp_path / "p.pt.xz")])
        == 0
    )
    assert (
        main(
            ["quantize", "mlp", "--model.checkpoint", str(ckpt), "--out", str(tmp_path / "q.pt.xz")]
        )
        == 0
    )
    trained = ClassifierModule.load_from_checkpoint(ckpt).model.state_dict()
    oracles = {
        ckpt: trained,
        tmp_path / "export.pt.xz": _raw(tmp_path / "export.pt.xz")["state_dict"],
        tmp_path / "p.pt.xz": _raw(tmp_path / "p.pt.xz")["state_dict"],
    }
    for i, (path, sd) in enumerate(oracles.items()):
        camp = _campaign(tmp_path / str(i), name="mlp", checkpoint=str(path))
        assert len(camp.run()) == 3
        _same_weights(camp.model, sd)
    assert torch.equal(oracles[tmp_path / "export.pt.xz"]["fc1.weight"], trained["fc1.weight"])
    camp = _campaign(tmp_path / "q", name="mlp", checkpoint=str(tmp_path / "q.pt.xz"))
    assert len(camp.run()) == 3
    assert torch.equal(camp.golden, dnn.load_quantized(tmp_path / "q.pt.xz")(camp.inputs))


def test_jobs_build_with_the_same_builder_and_name_their_own_fields(tmp_path):
    """Every DNN job builds its model with build_job_model (the campaign's builder): the same
    files load, and errors name the job's settings (``model.checkpoint``, ``model.kwargs``)."""
    from torchfault.cli._dnn import PruneConfig, SummaryConfig
    from torchfault.dnn import (
        JobModelSpec,
        TestConfig,
        TrainConfig,
        TrainModelSpec,
        build_job_model,
    )

    ref = dnn.create_model("mlp", pretrained=True)
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.5",
            "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()},
        },
        ckpt,
    )
    spec = JobModelSpec("mlp", checkpoint=str(ckpt))
    for cfg in (
        TestConfig(model=spec),
        PruneConfig(model=spec, out=""),
        SummaryConfig(model=spec),
    ):
        _same_weights(build_job_model(cfg), ref.state_dict())
    _same_weights(
        build_job_model(TrainConfig(model=TrainModelSpec("mlp", checkpoint=str(ckpt)))),
        ref.state_dict(),
    )
    with pytest.raises(ConfigError) as err:
        build_job_model(TestConfig(model=JobModelSpec("mlp", checkpoint=str(tmp_path / "no.pt"))))
    assert err.value.field == "model.checkpoint"
    assert str(err.value).startswith("model.checkpoint: ")
    with pytest.raises(ConfigError) as err:
        build_job_model(TestConfig(model=JobModelSpec("mlp", kwargs={"nonsense": 1})))
    assert err.value.field == "model.kwargs"
