# SPDX-License-Identifier: MIT
"""Pruning: requested sparsity per layer, structured channels, global scope, model still runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchfault.dnn as dnn
from torchfault.errors import TorchFaultError


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }


@pytest.mark.parametrize("name", ["lenet", "mlp", "resnet8", "vgg8"])
@pytest.mark.parametrize("amount", [0.3, 0.8])
def test_l1_unstructured_exact_sparsity_per_layer(name: str, amount: float) -> None:
    model = dnn.create_model(name).eval()
    before = _weights(model)
    dnn.prune_model(model, "l1_unstructured", amount=amount)
    report = dnn.sparsity_report(model)
    for layer, w in before.items():
        numel = w.numel()
        expected = round(amount * numel)  # torch.nn.utils.prune rounds the count
        assert report[f"{layer}.weight"]["zeros"] == expected, layer
        # oracle: exactly the smallest-magnitude weights were zeroed
        after = dict(model.named_modules())[layer].weight
        kept = after != 0
        assert float(w.abs()[~kept].max()) <= float(w.abs()[kept].min())
        assert torch.equal(after[kept], w[kept])
    # masks are permanent: plain parameters, no forward pre-hooks
    assert not any(hasattr(m, "weight_orig") for m in model.modules())
    assert not any(m._forward_pre_hooks for m in model.modules())
    y = model(model.example_inputs(4))
    assert y.shape == (4, 10) and torch.isfinite(y).all()


def test_random_unstructured_and_seed() -> None:
    a, b = dnn.create_model("mlp"), dnn.create_model("mlp")
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    dnn.prune_model(a, "random_unstructured", amount=0.4)
    torch.manual_seed(1)
    dnn.prune_model(b, "random_unstructured", amount=0.4)
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    assert dnn.sparsity_report(a)["fc1.weight"]["zeros"] == round(0.4 * a.fc1.weight.numel())


def test_global_scope_hits_total_sparsity() -> None:
    model = dnn.create_model("lenet")
    weights = torch.cat([w.flatten() for w in _weights(model).values()])
    dnn.prune_model(model, "l1_unstructured", amount=0.6, scope="global")
    total = dnn.sparsity_report(model)["total"]
    assert total["zeros"] == round(0.6 * weights.numel())
    # global: layers differ in sparsity, the threshold is shared
    per_layer = {k: v["sparsity"] for k, v in dnn.sparsity_report(model).items() if k != "total"}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05
    threshold = weights.abs().sort().values[total["zeros"] - 1]
    for w in _weights(model).values():
        assert float(w[w != 0].abs().min()) >= float(threshold)


def test_ln_structured_prunes_whole_channels_spares_classifier() -> None:
    model = dnn.create_model("lenet")
    norms = model.conv2.weight.detach().flatten(1).norm(p=1, dim=1)
    dnn.prune_model(model, "ln_structured", amount=0.5, n=1)
    rep = dnn.sparsity_report(model)
    assert rep["conv2.weight"]["zero_channels"] == 8
    assert rep["fc1.weight"]["zero_channels"] == 60
    assert rep["fc3.weight"]["zeros"] == 0  # the classifier keeps all classes
    zero_rows = (model.conv2.weight.flatten(1) == 0).all(dim=1)
    assert set(torch.nonzero(zero_rows).flatten().tolist()) == set(norms.argsort()[:8].tolist())
    # asking for the classifier by name prunes it too
    dnn.prune_model(model, "random_structured", amount=0.2, modules=["fc3"])
    assert dnn.sparsity_report(model)["fc3.weight"]["zero_channels"] == 2


def test_module_selection() -> None:
    model = dnn.create_model("resnet8")
    dnn.prune_model(model, amount=0.5, modules=["re:layer2\\..*conv[12]"])
    rep = dnn.sparsity_report(model)
    assert rep["layer2.0.conv1.weight"]["sparsity"] == 0.5
    assert rep["layer1.0.conv1.weight"]["zeros"] == 0
    with pytest.raises(TorchFaultError, match="no prunable module matches"):
        dnn.prune_model(model, modules=["nothing*"])


def test_iterative_pruning_reaches_target_with_finetune_calls() -> None:
    model = dnn.create_model("mlp")
    calls = []

    def finetune(m, step):
        # pruned weights must stay zero while masks are in place
        assert hasattr(m.fc1, "weight_orig")
        with torch.no_grad():
            m.fc1.weight_orig.add_(1.0)
        calls.append(step)

    dnn.iterative_prune(model, amount=0.875, steps=3, finetune=finetune)
    assert calls == [0, 1, 2]
    rep = dnn.sparsity_report(model)
    for layer in ("fc1", "fc2", "fc3"):
        numel = rep[f"{layer}.weight"]["numel"]
        # per step, torch rounds the count of still-unpruned weights to prune
        left = numel
        for _ in range(3):
            left -= round((1 - 0.5) * left)
        assert rep[f"{layer}.weight"]["zeros"] == numel - left
        assert math.isclose(rep[f"{layer}.weight"]["sparsity"], 0.875, abs_tol=0.01)
    assert not hasattr(model.fc1, "weight_orig")


def test_errors() -> None:
    model = dnn.create_model("mlp")
    with pytest.raises(TorchFaultError, match="Did you mean 'l1_unstructured'"):
        dnn.prune_model(model, "l1_unstructure")
    with pytest.raises(TorchFaultError, match="fraction"):
        dnn.prune_model(model, amount=1.5)
    with pytest.raises(TorchFaultError, match="global"):
        dnn.prune_model(model, "ln_structured", scope="global")
    with pytest.raises(TorchFaultError, match="no linear or convolution"):
        dnn.prune_model(nn.Sequential(nn.ReLU()))


def test_prune_job(tmp_path, capsys, digits_test) -> None:
    from torchfault.cli import main

    out = tmp_path / "pruned.pt.xz"
    assert main(["prune", "lenet", "--amount", "0.4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "after pruning" in text
    model = dnn.create_model("lenet", weights=out)
    rep = dnn.sparsity_report(model)
    assert rep["fc1.weight"]["zeros"] == round(0.4 * 7680)
    payload = dnn.load_checkpoint(out)
    assert dnn.evaluate(model, digits_test)["acc"] == pytest.approx(payload["metrics"]["test_acc"])
    assert main(["prune", "lenet", "--scope", "global", "--method", "ln_structured"]) == 2
    assert "scope" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_job_with_finetuning(tmp_path, capsys) -> None:
    from torchfault.cli import main

    args = [
        "prune",
        "lenet",
        "--amount",
        "0.7",
        "--steps",
        "2",
        "--finetune_epochs",
        "1",
        "--out",
        str(tmp_path / "p.pt.xz"),
    ]
    assert main(args) == 0
    payload = dnn.load_checkpoint(tmp_path / "p.pt.xz")
    assert payload["metrics"]["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert payload["metrics"]["test_acc"] > 0.8


def test_masks_made_permanent_on_save(tmp_path) -> None:
    """A model saved with its pruning masks still in place is written as plain pruned weights
    (``weight``, not ``weight_orig`` / ``weight_mask``) and loads into the unpruned model."""
    from torch.nn.utils import prune

    from torchfault.dnn._prune import prunable_modules

    model = dnn.create_model("lenet", pretrained=True)
    dnn.prune_model(model, "l1_unstructured", amount=0.5, make_permanent=False)
    assert hasattr(model.fc1, "weight_mask")
    x = model.example_inputs(4)
    y = model(x)
    info = dnn.save_checkpoint(model, tmp_path / "masked.pt.xz")
    sd = dnn.load_checkpoint(info.path)
    assert set(sd) == set(dnn.create_model("lenet").state_dict())
    assert int((sd["fc1.weight"] == 0).sum()) == round(0.5 * sd["fc1.weight"].numel())
    # the model keeps its masks: saving does not change it
    assert hasattr(model.fc1, "weight_mask") and model.fc1._forward_pre_hooks
    for path in (info.path, tmp_path / "export.pt.xz"):
        if path != info.path:
            dnn.export_weights(model, path, model_name="lenet", dataset="digits")
        back = dnn.create_model("lenet", weights=path)
        assert torch.equal(back(x), y)
        assert dnn.sparsity_report(back)["total"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # a state dict written with masks in place (as Lightning writes one while fine-tuning,
    # keys prefixed "model.") loads too, masks applied
    raw = {f"model.{k}": v for k, v in model.state_dict().items()}
    assert "model.fc1.weight_orig" in raw
    dnn.save_checkpoint({"state_dict": raw}, tmp_path / "lightning.ckpt")
    assert torch.equal(dnn.create_model("lenet", weights=tmp_path / "lightning.ckpt")(x), y)
    for _, m in prunable_modules(model):
        prune.remove(m, "weight")
    assert torch.equal(model(x), y)
