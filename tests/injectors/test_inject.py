# SPDX-License-Identifier: MIT
"""inject(): where faults land (outputs, inputs, structures, calls, samples), how long they last,
how they compose, how bad faults fail, and that in-place writes never reach a shared tensor."""

from __future__ import annotations

import struct

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject
from torchfault.errors import TorchFaultError
from torchfault.injectors import Injection


def flip(value: float, bit: int) -> float:
    """Oracle: a float32 with one bit inverted, through struct."""
    (w,) = struct.unpack("<I", struct.pack("<f", value))
    return struct.unpack("<f", struct.pack("<I", w ^ (1 << bit)))[0]


class Recorder:
    """Records a module's output (after the injector's hook) on every call."""

    def __init__(self, module: nn.Module, inputs: bool = False) -> None:
        self.seen: list = []
        if inputs:
            self.h = module.register_forward_pre_hook(lambda m, a: self.seen.append(a[0].clone()))
        else:
            self.h = module.register_forward_hook(lambda m, a, o: self.seen.append(_clone(o)))

    def __enter__(self):
        return self.seen

    def __exit__(self, *exc):
        self.h.remove()


def _clone(o):
    if isinstance(o, torch.Tensor):
        return o.clone()
    if isinstance(o, tuple):
        return tuple(_clone(v) for v in o)
    if isinstance(o, dict):
        return {k: _clone(v) for k, v in o.items()}
    return o


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture
def cnn():
    return CNN().eval()


X = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def conv_out(model, x=X):
    with torch.no_grad():
        return model.conv(x)


# ----------------------------------------------------------------------------- where
def test_output_fault_hits_one_element_of_one_row(cnn):
    golden = conv_out(cnn)
    with (
        inject(cnn, Fault("conv", index=(2, 1, 4), bits=(30,), sample=1)),
        Recorder(cnn.conv) as seen,
    ):
        cnn(X)
    want = golden.clone()
    want[1, 2, 1, 4] = flip(float(golden[1, 2, 1, 4]), 30)
    assert torch.equal(seen[0], want)


def test_sample_none_hits_every_row(cnn):
    golden = conv_out(cnn)
    with inject(cnn, Fault("conv", index=(0, 0, 0), bits=(31,))), Recorder(cnn.conv) as seen:
        cnn(X)
    diff = (seen[0] != golden).nonzero().tolist()
    assert diff == [[0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0]]
    assert torch.equal(seen[0][:, 0, 0, 0], -golden[:, 0, 0, 0])


def test_input_fault(cnn):
    with (
        inject(cnn, Fault("fc", "input", index=(7,), bits=(31,), sample=2)),
        Recorder(cnn.fc, inputs=True) as seen,
    ):
        out = cnn(X)
    with torch.no_grad():
        flat = cnn.relu(cnn.bn(cnn.conv(X))).flatten(1)
        want_in = flat.clone()
        want_in[2, 7] = -want_in[2, 7]
        assert torch.equal(seen[0], want_in)
        assert torch.equal(out, cnn.fc(want_in))


def test_input_fault_never_changes_the_producers_tensor():
    """A residual block: the block input feeds conv and the shortcut; a fault on conv's input
    must not reach the shortcut."""

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Linear(4, 4)

        def forward(self, x):
            return self.conv(x) + x

    m = Res()
    x = torch.ones(1, 4)
    with torch.no_grad(), inject(m, Fault("conv", "input", index=(1,), bits=(31,))):
        out = m(x)
    with torch.no_grad():
        assert torch.equal(out, m.conv(torch.tensor([[1.0, -1.0, 1.0, 1.0]])) + 1.0)
    assert torch.equal(x, torch.ones(1, 4))


@pytest.mark.parametrize("module", [nn.Identity(), nn.Flatten(), nn.ReLU(inplace=True)], ids=str)
def test_output_faults_on_aliasing_modules_leave_their_input_alone(module):
    """Identity, Flatten and in-place ReLU return (a view of) their input: the fault goes on a copy."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Linear(4, 4)
            self.alias = module

        def forward(self, x):
            h = self.pre(x).abs()
            return self.alias(h), h

    m = Net()
    x = torch.randn(2, 4)
    with torch.no_grad():
        out, h = m(x)
        with inject(m, Fault("alias", index=(1,), bits=(31,))):
            fout, fh = m(x)
    assert torch.equal(fh, h)  # the shortcut is untouched
    assert torch.equal(fout[:, 1], -out[:, 1]) and torch.equal(fout[:, 0], out[:, 0])


def test_output_that_is_a_buffer_is_never_written():
    class Const(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.arange(6.0).reshape(2, 3))

        def forward(self, x):
            return self.table

    m = Const()
    with torch.no_grad(), inject(m, Fault("", index=(1,), bits=(31,), sample=0)):
        out = m(torch.zeros(1))
    assert out[0, 1] == -1.0 and torch.equal(m.table, torch.arange(6.0).reshape(2, 3))


def test_lstm_output_elements():
    lstm = nn.LSTM(4, 3, batch_first=True)
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        out, (h, c) = lstm(x)
        with inject(lstm, Fault("", index=(4, 1), bits=(31,), element=0, sample=0)):
            fout, (fh, fc) = lstm(x)
        assert (fout != out).nonzero().tolist() == [[0, 4, 1]] and torch.equal(fh, h)
        with inject(lstm, Fault("", index=(0, 2), bits=(31,), element="1.0")):  # h_n
            fout, (fh, fc) = lstm(x)
        assert torch.equal(fout, out) and torch.equal(fc, c)
        assert torch.equal(fh[0, 0, 2], -h[0, 0, 2]) and (fh != h).sum() == 1


def test_multihead_attention_output_element_zero():
    class Att(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, q, k):
            out, weights = self.att(q, k, k)
            return out.sum(-1), weights

    m = Att().eval()
    q, k = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    with torch.no_grad():
        out, w = m(q, k)
        with (
            inject(m, Fault("att", index=(1, 5), bits=(30,), element=0, sample=1)),
            Recorder(m.att) as seen,
        ):
            fout, fw = m(q, k)
    assert torch.equal(fw, w)
    diff = (fout != out).nonzero().tolist()
    assert diff == [[1, 1]]
    with torch.no_grad():
        assert seen[0][0][1, 1, 5] == flip(float(m.att(q, k, k)[0][1, 1, 5]), 30)


def test_dict_output_element():
    class D(nn.Module):
        def forward(self, x):
            return {"a": x + 1, "b": x * 2}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d = D()

        def forward(self, x):
            o = self.d(x)
            return o["a"], o["b"]

    m, x = Net(), torch.ones(2, 3)
    with inject(m, Fault("d", index=(2,), bits=(31,), element="b", sample=1)):
        a, b = m(x)
    assert torch.equal(a, x + 1)
    assert b.tolist() == [[2.0, 2.0, 2.0], [2.0, 2.0, -2.0]]
    bad = Fault("d", index=(2,), bits=(31,), element="c")
    msg = r"Element 'c' is not in the module's output/input; its tensors are \['a', 'b'\]"
    with pytest.raises(TorchFaultError, match=msg), inject(m, bad):
        m(x)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        nn.init.eye_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, x):
        return self.lin(self.lin(x))


@pytest.mark.parametrize(("call", "expected"), [(0, -2.0), (1, -2.0), (None, 2.0)])
def test_module_called_twice_takes_a_call_number(call, expected):
    m, x = Twice(), torch.full((1, 3), 2.0)
    with torch.no_grad(), inject(m, Fault("lin", index=(0,), bits=(31,), call=call)) as inj:
        out = m(x)
        assert out[0, 0] == expected and out[0, 1] == 2.0
        assert inj.fired == (2 if call is None else 1)
        out = m(x)  # permanent: again on the next pass, same call
        assert out[0, 0] == expected


def test_transient_faults_act_on_the_next_pass_only(cnn):
    golden = cnn(X)
    faults = [
        Fault("conv", index=(0, 0, 0), bits=(30,), persistence="transient"),
        Fault("fc", "weight", index=(1, 2), bits=(30,), persistence="transient"),
    ]
    w = cnn.fc.weight.detach().clone()
    with inject(cnn, faults) as inj:
        assert not torch.equal(cnn.fc.weight, w)
        first = cnn(X)
        assert torch.equal(cnn.fc.weight, w)  # restored after the pass
        second = cnn(X)
        assert inj.passes == 2
    assert not torch.equal(first, golden) and torch.equal(second, golden)


def test_permanent_faults_last_until_exit(cnn):
    golden = cnn(X)
    fault = [
        Fault("conv", index=(0, 0, 0), bits=(30,)),
        Fault("fc", "bias", index=(1,), bits=(30,)),
    ]
    with inject(cnn, fault):
        outs = [cnn(X) for _ in range(3)]
    assert all(torch.equal(o, outs[0]) for o in outs) and not torch.equal(outs[0], golden)
    assert torch.equal(cnn(X), golden)


def test_transient_and_permanent_on_the_same_weight_element(cnn):
    w = cnn.fc.weight.detach().clone()
    faults = [
        Fault("fc", "weight", index=(0, 0), bits=(31,)),
        Fault("fc", "weight", index=(0, 0), bits=(30,), persistence="transient"),
    ]
    with inject(cnn, faults):
        assert cnn.fc.weight[0, 0] == flip(flip(float(w[0, 0]), 31), 30)
        cnn(X)
        assert cnn.fc.weight[0, 0] == -w[0, 0]
    assert torch.equal(cnn.fc.weight, w)


def test_faults_on_one_tensor_compose(cnn):
    w = cnn.conv.weight.detach().clone()
    golden = conv_out(cnn)
    same_bit = [Fault("conv", "weight", index=(1, 1, 1, 1), bits=(29,))] * 2
    with inject(cnn, same_bit):
        assert torch.equal(cnn.conv.weight, w)
    with (
        inject(cnn, [Fault("conv", index=(1, 1, 1), bits=(29,), sample=0)] * 2),
        Recorder(cnn.conv) as seen,
    ):
        cnn(X)
    assert torch.equal(seen[0], golden)
    ordered = [
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(31,)),
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(31,), model="stuck_at_1"),
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(30,), model="stuck_at_0"),
        Fault("conv", "weight", index=(0, 0, 0, 0), model="value", params={"value": 0.25}),
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(22,)),
    ]
    with inject(cnn, ordered):
        assert cnn.conv.weight[0, 0, 0, 0] == 0.375  # 0.25 with mantissa bit 22 set
    with inject(cnn, ordered[:3]):
        (v,) = struct.unpack("<I", struct.pack("<f", float(w[0, 0, 0, 0])))
        want = struct.unpack("<f", struct.pack("<I", (v ^ (1 << 31) | (1 << 31)) & ~(1 << 30)))[0]
        assert cnn.conv.weight[0, 0, 0, 0] == want
    assert torch.equal(cnn.conv.weight, w)


def test_mixed_activation_weight_bias_and_buffer_faults_in_one_context(cnn):
    faults = [
        Fault("conv", index=(1, 2, 3), bits=(30,), sample=0),
        Fault("conv", "weight", index=(0, 1, 2, 2), bits=(29,)),
        Fault("fc", "bias", index=(4,), bits=(31,)),
        Fault("bn", "running_mean", index=(2,), bits=(30,)),
        Fault("fc", "input", index=(3,), bits=(31,), sample=2),
    ]
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    golden = cnn(X)
    with torch.no_grad(), inject(cnn, faults):
        faulty = cnn(X)
        assert cnn.fc.bias[4] == -state["fc.bias"][4]
        assert cnn.bn.running_mean[2] == flip(float(state["bn.running_mean"][2]), 30)
        # oracle: the same faults by hand on a copy
        ref = CNN().eval()
        ref.load_state_dict(state)
        ref.conv.weight[0, 1, 2, 2] = flip(float(state["conv.weight"][0, 1, 2, 2]), 29)
        ref.fc.bias[4] = -ref.fc.bias[4]
        ref.bn.running_mean[2] = flip(float(state["bn.running_mean"][2]), 30)
        h = ref.conv(X)
        h[0, 1, 2, 3] = flip(float(h[0, 1, 2, 3]), 30)
        h = ref.relu(ref.bn(h)).flatten(1)
        h[2, 3] = -h[2, 3]
        assert torch.equal(faulty, ref.fc(h))
    assert torch.equal(cnn(X), golden)
    for k, v in cnn.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_grad_mode_keeps_the_graph_and_autograd_state(cnn):
    x = X.clone().requires_grad_(True)
    with inject(cnn, Fault("conv", index=(0, 0, 0), bits=(31,))):
        out = cnn(x)
        out.sum().backward()  # no in-place write spoiled a tensor autograd saved
    assert x.grad is not None and cnn.conv.weight.grad is not None


def test_other_formats_and_fault_models_on_activations(cnn):
    golden = conv_out(cnn)
    faults = [
        Fault("conv", index=(0, 0, 0), bits=(14,), format="bfloat16", sample=0),
        Fault("conv", index=(0, 0, 1), model="zero", sample=0),
        Fault("conv", index=(0, 0, 2), model="value", params={"value": 3.0}),
    ]
    with inject(cnn, faults), Recorder(cnn.conv) as seen:
        cnn(X)
    got = seen[0]
    assert got[0, 0, 0, 1] == 0 and (got[:, 0, 0, 2] == 3.0).all()
    bf = golden[0, 0, 0, 0].to(torch.bfloat16).view(torch.int16) ^ (1 << 14)
    assert got[0, 0, 0, 0] == bf.view(torch.bfloat16).float()
    assert torch.equal(got[1:, :, :, :2], golden[1:, :, :, :2])


def test_injection_counts_and_idempotent_remove(cnn):
    inj = Injection(
        cnn,
        [Fault("conv", index=(0, 0, 0), bits=(1,)), Fault("fc", "weight", index=(0, 0), bits=(1,))],
    )
    w = cnn.fc.weight.detach().clone()
    with inj:
        cnn(X)
        cnn(X)
    assert inj.passes == 2 and inj.fired == 2
    inj.remove()
    inj.remove()
    assert torch.equal(cnn.fc.weight, w) and not cnn.conv._forward_hooks


def test_inject_takes_a_single_fault_and_rejects_other_objects(cnn):
    with inject(cnn, Fault("fc", "weight", index=(0, 0), bits=(31,))) as inj:
        assert len(inj.faults) == 1
    with (
        pytest.raises(TorchFaultError, match="takes Fault objects"),
        inject(cnn, [{"module": "fc"}]),
    ):
        pass


def test_random_value_is_reproducible_with_a_seed(cnn):
    f = Fault("conv", index=(0, 0, 0), model="random_value")
    outs = []
    for _ in range(2):
        with inject(cnn, f, seed=7), Recorder(cnn.conv) as seen:
            cnn(X)
        outs.append(seen[0])
    assert torch.equal(outs[0].view(torch.int32), outs[1].view(torch.int32))


# ----------------------------------------------------------------------------- errors
ERRORS = [
    (
        Fault("cnv", "weight", index=(0, 0, 0, 0), bits=(1,)),
        [r"unknown module 'cnv'", r"Did you mean 'conv'", r"'fc'"],
    ),
    (
        Fault("conv", "wieght", index=(0,), bits=(1,)),
        [r"no parameter or buffer 'wieght'", r"'weight', 'bias'", r"Did you mean 'weight'"],
    ),
    (
        Fault("bn", "running_men", index=(0,), bits=(1,)),
        [r"'running_mean', 'running_var', 'num_batches_tracked'"],
    ),
    (Fault("conv", "weight", index=(0, 0), bits=(1,)), [r"rank 2", r"shape \(4, 3, 3, 3\)"]),
    (
        Fault("conv", "weight", index=(4, 0, 0, 0), bits=(1,)),
        [r"out of range in dimension 0", r"\(4, 3, 3, 3\)"],
    ),
    (
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(32,)),
        [r"conv:weight", r"bit 32 is out of range for float32 \(32 bits: 0..31\)"],
    ),
    (
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(16,), format="float16"),
        [r"16 bits: 0..15"],
    ),
    (
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(1,), model="bitflip"),
        [r"Unknown fault model 'bitflip'", r"stuck_at_0", r"Did you mean 'bit_flip'"],
    ),
    (
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(1,), format="int8"),
        [r"Format 'int8' cannot see a torch.float32"],
    ),
    (Fault("conv", "weight", index=(0, 0, 0, 0)), [r"needs at least one bit"]),
    (
        Fault("conv", index=(0, 0, 0), bits=(1,), format="float12"),
        [r"Unknown number format 'float12'"],
    ),
    (Fault("conv", index=(0, 0, 0), bits=(40,), format="float32"), [r"bit 40", r"32 bits"]),
    (Fault("conv", index=(0, 0, 0), bits=(64,)), [r"conv:output", r"bit 64", r"0..63"]),
    # fault-model parameters are checked before anything runs, activations included
    (
        Fault("conv", index=(0, 0, 0), model="value", params={"valeu": 1.0}),
        [r"conv:output", r"unknown parameter\(s\) \['valeu'\]", r"Did you mean 'value'"],
    ),
    (Fault("conv", index=(0, 0, 0), model="value"), [r"needs params=\{'value'"]),
    (
        Fault("conv", index=(0, 0, 0), model="value", params={"value": "abc"}),
        [r"needs a number in params\['value'\], got 'abc'"],
    ),
    (
        Fault("conv", index=(0, 0, 0), model="random_value", params={"low": 2.0, "high": 1.0}),
        [r"low < high", r"low=2.0, high=1.0"],
    ),
    (
        Fault("conv", index=(0, 0, 0), model="random_value", params={"high": 1.0}),
        [r"low=None, high=1.0"],
    ),
    (
        Fault("conv", "weight", index=(0, 0, 0, 0), bits=(1,), params={"value": 1.0}),
        [r"conv:weight", r"'bit_flip' got unknown parameter\(s\) \['value'\]", r"no parameters"],
    ),
]


@pytest.mark.parametrize(
    ("fault", "patterns"),
    ERRORS,
    ids=[f"{f.module}:{f.target}:{i}" for i, (f, _) in enumerate(ERRORS)],
)
def test_bad_faults_fail_before_the_model_runs(cnn, fault, patterns):
    calls = []
    pre = cnn.register_forward_pre_hook(lambda m, a: calls.append(1))
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    good = Fault("fc", "weight", index=(0, 0), bits=(31,))
    with pytest.raises(TorchFaultError) as info, inject(cnn, [good, fault]):
        cnn(X)
    pre.remove()
    for p in patterns:
        assert info.match(p), (p, str(info.value))
    assert calls == []  # the model never ran
    assert all(torch.equal(v, state[k]) for k, v in cnn.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cnn.modules())


ACT_ERRORS = [
    (Fault("conv", index=(0, 0), bits=(1,)), [r"conv:output", r"rank 2", r"shape \(4, 6, 6\)"]),
    (
        Fault("conv", index=(0, 6, 0), bits=(1,)),
        [r"out of range in dimension 1 for shape \(4, 6, 6\)"],
    ),
    (Fault("conv", index=(0, 0, 0), bits=(32,)), [r"bit 32 is out of range for float32 \(32 bits"]),
    (
        Fault("conv", index=(0, 0, 0), bits=(1,), sample=3),
        [r"sample 3 is out of range for a batch of 3"],
    ),
    (
        Fault("conv", index=(0, 0, 0), bits=(1,), call=1),
        [r"call 1 is out of range", r"runs 1 time"],
    ),
    (Fault("fc", "input", index=(0, 0), bits=(1,)), [r"fc:input", r"shape \(144,\)"]),
]


@pytest.mark.parametrize(
    ("fault", "patterns"), ACT_ERRORS, ids=[str(i) for i in range(len(ACT_ERRORS))]
)
def test_bad_activation_faults_fail_before_the_faulty_pass_with_example_inputs(
    cnn, fault, patterns
):
    """With example_inputs, activation faults are checked on a probing pass that changes nothing."""
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    outs = []
    with pytest.raises(TorchFaultError) as info, inject(cnn, fault, example_inputs=X):
        outs.append(cnn(X))
    assert outs == []
    for p in patterns:
        assert info.match(p), (p, str(info.value))
    assert all(torch.equal(v, state[k]) for k, v in cnn.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cnn.modules())


@pytest.mark.parametrize(("fault", "patterns"), ACT_ERRORS[:4], ids=[str(i) for i in range(4)])
def test_bad_activation_faults_without_example_inputs_fail_at_the_module(cnn, fault, patterns):
    """Without example_inputs the shape is known when the module runs: the pass stops there."""
    golden = cnn(X)
    with pytest.raises(TorchFaultError) as info, inject(cnn, fault):
        cnn(X)
    for p in patterns:
        assert info.match(p)
    assert torch.equal(cnn(X), golden)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cnn.modules())


def test_example_inputs_probe_leaves_a_training_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    with inject(model, Fault("1", index=(0, 0, 0), bits=(3,)), example_inputs=X):
        pass
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.filterwarnings("ignore:torch.quantize_per:UserWarning")
def test_scalar_and_quantized_activations_are_checked_on_the_probe():
    class Q(nn.Module):
        def forward(self, x):
            return torch.quantize_per_tensor(x, 0.05, 3, torch.qint8)

    class Total(nn.Module):
        def forward(self, x):
            return x.sum()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.total = Q(), Total()

        def forward(self, x):
            self.total(x)
            return self.q(x)

    m, x = Net(), torch.randn(2, 5)
    golden = m(x).int_repr()
    with inject(m, Fault("q", index=(1,), bits=(3,), sample=1), example_inputs=x):
        out = m(x).int_repr()
    assert int(out[1, 1]) == int(golden[1, 1]) ^ 8 and torch.equal(out[0], golden[0])
    scalar = Fault("total", index=(), bits=(3,))
    msg = "scalar; activation faults need a batch dimension"
    with pytest.raises(TorchFaultError, match=msg), inject(m, scalar, example_inputs=x):
        pass


def test_faults_that_never_fire_are_reported_not_silently_masked():
    m, x = Twice(), torch.full((1, 3), 2.0)
    never = Fault("lin", index=(0,), bits=(31,), call=5)  # lin runs twice per pass
    pattern = r"1 activation fault\(s\) never applied in 2 forward pass.*lin:output call=5"
    faults = [never, Fault("lin", index=(1,), bits=(31,), call=0)]
    with pytest.warns(UserWarning, match=pattern), torch.no_grad(), inject(m, faults) as inj:
        m(x)
        m(x)
        assert inj.unfired() == [never]
    # a fault that fired, or a context without any forward pass, says nothing
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad(), inject(m, Fault("lin", index=(0,), bits=(31,), call=1)):
            m(x)
        with inject(m, never):
            pass
        # the Injection object used as a context manager reports the same way
    with pytest.warns(UserWarning, match="never applied"), torch.no_grad(), Injection(m, never):
        m(x)
    # a forward pass that raised is not reported (the error is what matters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError), torch.no_grad(), inject(m, never):
            m(torch.ones(1, 4))


def test_a_missing_element_names_the_fault_and_what_the_structure_holds():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, {"h": x + 1}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            a, d = self.pair(x)
            return a + d["h"]

    model, x = Net(), torch.ones(2, 3)
    fault = Fault("pair", index=(0,), bits=(31,), element="1.g")
    for kw in ({"example_inputs": x}, {}):
        with (
            pytest.raises(TorchFaultError, match=r"fault on pair:output\[1.g\]: .*\[0, '1.h'\]"),
            inject(model, fault, **kw),
        ):
            model(x)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "model, params",
    [("value", {"value": 10**400}), ("random_value", {"low": 0, "high": 10**400})],
)
def test_huge_parameter_values_are_clear_errors(model, params):
    net = torch.nn.Linear(2, 2)
    fault = Fault("", "output", index=(0,), model=model, params=params)
    with pytest.raises(TorchFaultError, match=model), inject(net, fault):
        pass
