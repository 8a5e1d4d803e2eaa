# SPDX-License-Identifier: MIT
"""fault_space: sites, shapes, bit widths, populations, target selection, kinds, structures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, TargetSpec, fault_space, inject
from torchfault.errors import TorchFaultError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.block(x)).flatten(1))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def names(space) -> list[str]:
    return [s.name for s in space]


def test_sites_of_a_small_cnn():
    space = fault_space(SmallCNN(), X)
    by = space.by_name()
    assert names(space) == [
        "conv1:output", "conv1:weight", "conv1:bias",
        "bn1:output", "bn1:weight", "bn1:bias",
        "relu:output",
        "block.0:output", "block.0:weight", "block.0:bias",
        "block.1:output",
        "pool:output",
        "fc:output", "fc:weight", "fc:bias",
    ]  # fmt: skip
    assert by["conv1:output"].shape == (4, 8, 8) and by["conv1:output"].kind == "activation"
    assert by["block.0:output"].shape == (6, 4, 4)
    assert by["conv1:weight"].shape == (4, 3, 3, 3) and by["conv1:weight"].kind == "parameter"
    assert by["fc:output"].module_type == "Linear" and by["fc:output"].calls == 1
    assert all(s.format == "float32" and s.bit_width == 32 for s in space)
    assert space.population == sum(math.prod(s.shape) * 32 for s in space)
    assert by["pool:output"].population == 6 * 32


def test_kinds_buffers_inputs_parameters():
    model = SmallCNN()
    bufs = fault_space(model, X, kinds="buffers")
    assert names(bufs) == ["bn1:running_mean", "bn1:running_var", "bn1:num_batches_tracked"]
    assert bufs.by_name()["bn1:num_batches_tracked"].format == "int64"
    assert bufs.by_name()["bn1:num_batches_tracked"].bit_width == 64
    ins = fault_space(model, X, kinds=["inputs"], modules="fc")
    assert [(s.name, s.shape, s.element) for s in ins] == [("fc:input", (6,), None)]
    params = fault_space(model, kinds="parameters", modules="bn1")
    assert names(params) == ["bn1:weight", "bn1:bias"]
    # no example inputs needed without activations; with them asked for, a clear error
    with pytest.raises(TorchFaultError, match="example_inputs"):
        fault_space(model, kinds="outputs")
    with pytest.raises(TorchFaultError, match=r"Unknown target kind 'weigths'.*Did you mean"):
        fault_space(model, X, kinds="weigths")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("conv1", ["conv1"]),
        ("re:block\\..*", ["block.0", "block.1"]),
        ("re:.*conv.*|fc", ["conv1", "fc"]),
        (nn.Conv2d, ["conv1", "block.0"]),
        ("type:ReLU", ["relu", "block.1"]),
        (lambda m, n: isinstance(m, nn.Linear) or n == "pool", ["pool", "fc"]),
        (["fc", nn.BatchNorm2d], ["bn1", "fc"]),
    ],
    ids=["exact", "regex", "regex-alt", "type", "type-name", "function", "list"],
)
def test_target_selection(selector, expected):
    space = fault_space(SmallCNN(), X, modules=selector, kinds="outputs")
    assert [s.module for s in space] == expected


def test_selection_errors_name_what_is_valid():
    with pytest.raises(TorchFaultError, match=r"Unknown module 'conv'.*Did you mean 'conv1'"):
        fault_space(SmallCNN(), X, modules="conv")
    with pytest.raises(TorchFaultError, match="No module of the model matches"):
        fault_space(SmallCNN(), X, modules="re:nothing.*")
    with pytest.raises(TorchFaultError, match="module selector"):
        fault_space(SmallCNN(), X, modules=3)
    with pytest.raises(TorchFaultError, match="TargetSpec"):
        fault_space(SmallCNN(), X, targets=["conv1"])


def test_target_spec_and_format_override():
    spec = TargetSpec(modules=nn.Linear, kinds=("weight", "bias"), format="bfloat16")
    space = fault_space(SmallCNN(), X, spec)
    assert [(s.name, s.format, s.bit_width) for s in space] == [
        ("fc:weight", "bfloat16", 16), ("fc:bias", "bfloat16", 16),
    ]  # fmt: skip
    same = fault_space(
        SmallCNN(), X, {"modules": nn.Linear, "kinds": ["weights", "biases"], "format": "bf16"}
    )
    assert same == space
    assert (
        fault_space(SmallCNN(), X, modules="fc", kinds="weights", format="Q3.12")[0].bit_width == 16
    )
    with pytest.raises(TorchFaultError, match="Unknown number format"):
        TargetSpec(format="float33")


def test_lstm_outputs_and_weights():
    lstm = nn.LSTM(4, 3, num_layers=1, batch_first=True)
    space = fault_space(lstm, torch.randn(2, 5, 4), kinds=("outputs", "weights", "biases"))
    assert [(s.name, s.shape, s.element) for s in space] == [
        (":output[0]", (5, 3), 0),
        (":output[1.0]", (2, 3), "1.0"),  # h_n is (layers, batch, hidden): batch is not first
        (":output[1.1]", (2, 3), "1.1"),
        (":weight_ih_l0", (12, 4), None),
        (":weight_hh_l0", (12, 3), None),
        (":bias_ih_l0", (12,), None),
        (":bias_hh_l0", (12,), None),
    ]


def test_multihead_attention_is_a_site_with_its_own_projection_weights():
    class Att(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, q):
            return self.att(q, q, q)[0]

    space = fault_space(Att(), torch.randn(2, 3, 8))
    assert [(s.name, s.shape) for s in space] == [
        ("att:output[0]", (3, 8)),
        ("att:output[1]", (3, 3)),
        ("att:in_proj_weight", (24, 8)),
        ("att:in_proj_bias", (24,)),
        ("att.out_proj:weight", (8, 8)),
        ("att.out_proj:bias", (8,)),
    ]
    # out_proj is read by the attention's functional code, never called as a module
    assert space.by_name()["att.out_proj:weight"].calls == 0


def test_a_module_returning_a_dict_and_a_module_called_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return {"y": self.lin(self.lin(x)), "x": x}

    space = fault_space(Twice(), torch.randn(2, 3), modules=["", "lin"], kinds="outputs")
    assert [(s.name, s.calls) for s in space] == [
        (":output[y]", 1),
        (":output[x]", 1),
        ("lin:output", 2),
    ]


def test_probing_pass_leaves_a_training_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    fault_space(model, X)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and not any(
        m._forward_hooks or m._forward_pre_hooks for m in model.modules()
    )


def test_quantized_model_weights_are_qint8_sites_and_take_faults(quantized_linear):
    model = quantized_linear(4, 3, seed=1)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    space = fault_space(model, x).by_name()
    w = space["fc:weight"]
    assert (w.format, w.bit_width, w.shape, w.kind) == ("qint8", 8, (3, 4), "parameter")
    assert space["fc:output"].format == "quint8" and space["fc:bias"].format == "float32"
    golden = model(x)
    w0 = model.fc.weight()
    with inject(model, w.fault((1, 2), (6,))):
        w1 = model.fc.weight()
        faulty = model(x)
    assert int(w1.int_repr()[1, 2]) == int(w0.int_repr()[1, 2]) ^ 64
    assert torch.equal(w1.q_per_channel_scales(), w0.q_per_channel_scales())
    assert not torch.equal(faulty, golden)
    assert torch.equal(model.fc.weight().int_repr(), w0.int_repr())
    assert torch.equal(model(x), golden)


def test_sites_make_faults_that_inject_accepts():
    model = SmallCNN().eval()
    for site in fault_space(model, X, kinds=("outputs", "inputs", "weights", "biases", "buffers")):
        index = tuple(n - 1 for n in site.shape)
        with inject(model, site.fault(index, (site.bit_width - 1,)), example_inputs=X):
            model(X)
    assert Fault("fc", "weight", index=(0, 0), bits=(0,)) in {
        s.fault((0, 0), (0,), format=None)
        for s in fault_space(model, X, modules="fc", kinds="weights")
    }


def test_a_format_override_that_does_not_fit_names_the_target():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    x = torch.randn(2, 1, 5, 5)
    space = fault_space(model, x, kinds="buffers")
    assert {(s.target, s.format) for s in space} == {
        ("running_mean", "float32"),
        ("running_var", "float32"),
        ("num_batches_tracked", "int64"),
    }
    # BatchNorm's int64 num_batches_tracked cannot be seen as float16: the error says which
    with pytest.raises(
        TorchFaultError, match=r"1:num_batches_tracked: .*int64.*Narrow the targets"
    ):
        fault_space(model, x, kinds="buffers", format="float16")
