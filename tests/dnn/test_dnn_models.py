# SPDX-License-Identifier: MIT
"""The zoo: every model on every dataset family builds, runs, traces with torch.fx."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchfault.dnn as dnn
from torchfault.errors import TorchFaultError

FAMILIES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@pytest.mark.parametrize("dataset", sorted(FAMILIES))
@pytest.mark.parametrize("name", dnn.list_models())
def test_model_runs_and_traces(name: str, dataset: str) -> None:
    model = dnn.create_model(name, dataset=dataset).eval()
    assert model.input_shape == FAMILIES[dataset]
    x = model.example_inputs(batch=3)
    assert tuple(x.shape) == (3, *FAMILIES[dataset])
    y = model(x)
    assert tuple(y.shape) == (3, 10)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), y, rtol=0, atol=0)
    # faults name modules by their qualified names: every leaf has one
    names = [n for n, m in model.named_modules() if not list(m.children())]
    assert names and all(n for n in names)


def test_example_inputs_reproducible() -> None:
    model = dnn.create_model("lenet")
    assert torch.equal(model.example_inputs(4), model.example_inputs(4))
    assert tuple(model.example_inputs()) and model.example_inputs().shape[0] == 2


def test_registration_by_subclassing() -> None:
    class Tiny(dnn.ZooModel, name="tiny_test_model"):
        dataset_configs = {"digits": {"width": 3}}

        def __init__(self, input_shape, num_classes, width=1):
            super().__init__(input_shape, num_classes)
            self.width = width
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.fc(self.flatten(x))

    try:
        assert "tiny_test_model" in dnn.list_models()
        m = dnn.create_model("tiny_test_model", dataset="digits")
        assert m.width == 3  # the digits configuration was applied
        assert dnn.create_model("tiny_test_model", width=5).width == 5  # options override it
        assert dnn.MODELS.info("tiny_test_model").capabilities["datasets"] == ("digits",)
    finally:
        dnn.MODELS.remove("tiny_test_model")


def test_per_dataset_configuration() -> None:
    assert dnn.create_model("lenet", dataset="digits").conv1.kernel_size == (3, 3)
    assert dnn.create_model("lenet", dataset="mnist").conv1.kernel_size == (5, 5)
    # a dataset without its own entry takes the nearest image size: fashion_mnist -> mnist
    assert dnn.create_model("lenet", dataset="fashion_mnist").conv1.kernel_size == (5, 5)
    assert dnn.create_model("resnet8", dataset="cifar100").fc.out_features == 100
    # ResNet depth 6n+2: count the 3x3 convolutions + the final linear layer
    for name, depth in (("resnet8", 8), ("resnet20", 20)):
        m = dnn.create_model(name)
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
        assert len(convs) + 1 == depth
    vgg = dnn.create_model("vgg8")
    n_conv = sum(isinstance(c, nn.Conv2d) for c in vgg.modules())
    n_lin = sum(isinstance(c, nn.Linear) for c in vgg.modules())
    assert n_conv + n_lin == 8


def test_shapes_without_dataset() -> None:
    m = dnn.create_model("mlp", dataset=None, input_shape=(20,), num_classes=4, hidden=(8,))
    assert tuple(m(torch.zeros(2, 20)).shape) == (2, 4)
    with pytest.raises(TorchFaultError, match="input_shape and num_classes"):
        dnn.create_model("mlp", dataset=None)


def test_errors_name_what_is_valid() -> None:
    with pytest.raises(TorchFaultError, match="Did you mean 'lenet'"):
        dnn.create_model("lenett")
    with pytest.raises(TorchFaultError, match="Did you mean 'digits'"):
        dnn.create_model("lenet", dataset="digit")
    with pytest.raises(TorchFaultError, match="no pretrained weights.*lenet on digits"):
        dnn.create_model("vgg8", pretrained=True)
    with pytest.raises(TorchFaultError, match="bad option"):
        dnn.create_model("mlp", nonsense=1)
    with pytest.raises(TorchFaultError, match="too small"):
        dnn.create_model(
            "lenet",
            dataset=None,
            input_shape=(1, 4, 4),
            num_classes=2,
            kernel_size=5,
            padding=(0, 0),
        )
    with pytest.raises(TorchFaultError, match="image inputs"):
        dnn.create_model("lenet", dataset=None, input_shape=(64,), num_classes=2)


def test_wrap_model_external_module() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 10))
    model = dnn.wrap_model(net, input_shape=(1, 8, 8), num_classes=10, dataset="digits")
    x = model.example_inputs(5)
    assert torch.equal(model(x), net(x))
    assert model.model is net and model.dataset == "digits"
    assert "model.0" in dict(model.named_modules())
    torch.fx.symbolic_trace(model)
    with pytest.raises(TorchFaultError, match="nn.Module"):
        dnn.wrap_model(lambda x: x, input_shape=(1,), num_classes=1)


def test_pretrained_listing() -> None:
    assert set(dnn.list_pretrained()) >= {("lenet", "digits"), ("mlp", "digits")}
    assert dnn.list_models(pretrained=True, dataset="digits") == ["lenet", "mlp"]
    assert "vgg8" in dnn.list_models(pretrained=False)


def test_synthetic_dataset_options_configure_the_model() -> None:
    """synthetic inputs of any shape and class count: the model is built for them."""
    opts = {"input_shape": (3, 32, 32), "num_classes": 4, "size": 8}
    info = dnn.dataset_info("synthetic", **opts)
    assert info["input_shape"] == (3, 32, 32) and info["num_classes"] == 4
    assert dnn.dataset_info("synthetic")["input_shape"] == (1, 8, 8)
    ds = dnn.create_dataset("synthetic", **opts)
    for name in dnn.list_models():
        model = dnn.create_model(name, dataset="synthetic", dataset_options=opts).eval()
        assert model.input_shape == (3, 32, 32) and model.num_classes == 4
        assert tuple(model(ds.inputs).shape) == (8, 4)


def test_layer_sizes_below_one_are_errors() -> None:
    for name, option in (
        ("mlp", {"hidden": (16, 0)}),
        ("lenet", {"channels": (6, 0)}),
        ("resnet8", {"width": 0}),
        ("vgg8", {"hidden": 0}),
    ):
        with pytest.raises(TorchFaultError, match=f"{next(iter(option))} must hold sizes >= 1"):
            dnn.create_model(name, **option)
