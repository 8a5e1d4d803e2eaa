# SPDX-License-Identifier: MIT
"""Post-training static int8 quantization: real quantized modules, agreement with float."""

from __future__ import annotations

import pytest
import torch

import torchfault
import torchfault.dnn as dnn
from torchfault.errors import TorchFaultError


@pytest.fixture(scope="module")
def lenet_pair():
    float_model = dnn.create_model("lenet", pretrained=True)
    train = dnn.create_dataset("digits", split="train")
    return float_model, dnn.quantize_model(float_model, train)


def test_quantized_model_agrees_with_float(lenet_pair, digits_test) -> None:
    float_model, qmodel = lenet_pair
    f = dnn.evaluate(float_model, digits_test)
    q = dnn.evaluate(qmodel, digits_test)
    agreement = float((f["predictions"] == q["predictions"]).float().mean())
    assert agreement >= 0.95
    assert q["acc"] >= 0.95


def test_quantized_modules_hold_quantized_tensors(lenet_pair) -> None:
    float_model, qmodel = lenet_pair
    assert dnn.is_quantized(qmodel) and not dnn.is_quantized(float_model)
    qtypes = {
        name: m
        for name, m in qmodel.named_modules()
        if type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized")
        or type(m).__module__.startswith("torch.ao.nn.quantized")
    }
    assert {"conv1", "conv2", "fc1", "fc2", "fc3"} <= set(qtypes)
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        w = qtypes[name].weight()
        assert w.is_quantized and w.dtype == torch.qint8
        # the int8 weights reproduce the float weights to within one quantization step
        ref = dict(float_model.named_modules())[name].weight
        scales = w.q_per_channel_scales().to(ref.dtype)
        err = (w.dequantize() - ref).abs().flatten(1).max(dim=1).values
        assert bool((err <= scales * 0.5 + 1e-6).all()), name
    # the float model is untouched
    assert not float_model.conv1.weight.is_quantized


@pytest.mark.parametrize("name", ["mlp", "resnet8", "vgg8"])
def test_every_zoo_architecture_quantizes(name: str) -> None:
    model = dnn.create_model(name).eval()
    calib = dnn.create_dataset("synthetic", size=64, seed=1)
    q = dnn.quantize_model(model, calib, num_batches=2)
    x = model.example_inputs(8)
    y, yq = model(x), q(x)
    assert yq.shape == y.shape and yq.dtype == torch.float32
    assert dnn.is_quantized(q)


def test_save_and_load_quantized(lenet_pair, tmp_path, digits_test) -> None:
    _, qmodel = lenet_pair
    path = tmp_path / "q.pt.xz"
    info = dnn.save_quantized(qmodel, path, model_name="lenet", dataset="digits")
    assert info.compressed_bytes < 100_000
    q2 = dnn.load_quantized(path)
    x = digits_test.inputs[:64]
    assert torch.equal(qmodel(x), q2(x))
    assert torch.equal(q2.conv1.weight().int_repr(), qmodel.conv1.weight().int_repr())
    with pytest.raises(TorchFaultError, match="not a torchfault quantized"):
        dnn.load_quantized(dnn.pretrained_path("lenet", "digits"))


def test_errors() -> None:
    model = dnn.create_model("mlp")
    with pytest.raises(TorchFaultError, match="backend 'x87'.*Did you mean 'x86'"):
        dnn.quantize_model(model, torch.zeros(2, 1, 8, 8), backend="x87")
    with pytest.raises(TorchFaultError, match="calibration data is empty"):
        dnn.quantize_model(model, torch.zeros(0, 1, 8, 8))


def test_quantize_job(tmp_path, capsys) -> None:
    from torchfault.cli import main

    out = tmp_path / "q.pt.xz"
    assert main(["quantize", "lenet", "--out", str(out), "--calibration_batches", "4"]) == 0
    text = capsys.readouterr().out
    assert "int8_acc" in text and "agreement" in text
    metrics = dnn.load_checkpoint(out)["metrics"]
    assert metrics["agreement"] >= 0.95 and metrics["int8_acc"] >= 0.95


def test_quantized_lenet_takes_faults_and_is_restored(lenet_pair, digits_test) -> None:
    """The int8 LeNet from quantize_model is a fault target: its weights are qint8 sites, a
    flipped high bit changes the output, and the weight comes back bit for bit."""
    _, qmodel = lenet_pair
    x = digits_test.inputs[:32]
    space = torchfault.fault_space(qmodel, x).by_name()
    qint8 = {name for name, site in space.items() if site.format == "qint8"}
    assert {f"{m}:weight" for m in ("conv1", "conv2", "fc1", "fc2", "fc3")} <= qint8
    site = space["conv1:weight"]
    assert (site.bit_width, site.shape) == (8, tuple(qmodel.conv1.weight().shape))
    w0 = qmodel.conv1.weight()
    golden = qmodel(x)
    index = (0, 0, 2, 2)
    with torchfault.inject(qmodel, site.fault(index, (6,))):
        w1 = qmodel.conv1.weight()
        faulty = qmodel(x)
    assert int(w1.int_repr()[index]) == int(w0.int_repr()[index]) ^ 64
    assert not torch.equal(faulty, golden)
    after = qmodel.conv1.weight()
    assert after.int_repr().numpy().tobytes() == w0.int_repr().numpy().tobytes()
    assert torch.equal(after.q_per_channel_scales(), w0.q_per_channel_scales())
    assert torch.equal(qmodel(x), golden)
