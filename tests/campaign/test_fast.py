# SPDX-License-Identifier: MIT
"""The fast engine gives the same runs as the reference engine (full re-execution with inject).

The oracle is :class:`ReferenceEngine`. Its tasks run each fault on 16 inputs at once, a batch
large enough that CPU kernels reproduce the golden pass bit for bit (see docs/engine.md); the
test with one input per fault compares against the reference at that composition.
"""

from __future__ import annotations

import logging
import random
import time

import pytest
import torch
import torch.fx
import torch.nn as nn

from torchfault import Fault, run_campaign
from torchfault.campaign import ENGINES, RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine, FastOptions, _windows
from torchfault.campaign._fast._windows import WindowRunner
from torchfault.dnn import create_model, list_models
from torchfault.faults import fault_space

BITS = (0, 3, 11, 20, 22, 23, 25, 28, 29, 30, 31)
N_INPUTS = 16


def key(r):
    return (
        r.fault_id,
        r.input_id,
        r.outcome,
        r.golden_top1,
        r.faulty_top1,
        r.max_abs_diff,
        r.error,
    )


def randomize_buffers(model, seed=0):
    """Batch-norm statistics away from (0, 1), so faults on them matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def random_faults(
    model, x, n, seed=0, kinds=("outputs", "weights", "biases"), models=("bit_flip",)
):
    rng = random.Random(seed)
    sites = fault_space(model, x[:2], kinds=kinds)
    faults = []
    for _ in range(n):
        s = rng.choice(sites)
        index = tuple(rng.randrange(d) for d in s.shape)
        fm = rng.choice(models)
        params = {"value": 1e4} if fm == "value" else {}
        bits = () if fm in ("zero", "value") else (rng.choice(BITS),)
        faults.append(Fault(s.module, s.target, index=index, bits=bits, model=fm, params=params))
    return faults


def compare(model, x, faults, inputs_per_fault=N_INPUTS, **engine_kw):
    """Run the faults through both engines; return (fast records, reference records, engine)."""
    golden = golden_run(model, x, 256)
    ids = tuple(range(inputs_per_fault))
    tasks = [
        RunTask(k, (f,) if isinstance(f, Fault) else tuple(f), ids) for k, f in enumerate(faults)
    ]
    fast = FastEngine(model, x, golden, **engine_kw)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    return got, want, fast


def run_fast(model, x, faults):
    """The fast engine alone, on the tasks of :func:`compare`."""
    tasks = [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden_run(model, x, 256))
    return fast.run(tasks), fast


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_fast_equals_reference_on_every_zoo_model(name):
    torch.manual_seed(0)
    model = randomize_buffers(create_model(name, dataset="digits")).eval()
    x = model.example_inputs(N_INPUTS)
    faults = random_faults(model, x, 50, seed=1)
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["fast"] == len(want) and fast.stats["reference"] == 0
    outcomes = {r.outcome for r in want}
    assert "masked" in outcomes and len(outcomes) >= 2  # the faults do different things


def test_fast_equals_reference_for_every_fault_model_and_formats():
    model = create_model("lenet", dataset="digits").eval()
    x = model.example_inputs(N_INPUTS)
    faults = random_faults(
        model, x, 40, seed=2, models=("bit_flip", "stuck_at_0", "stuck_at_1", "zero", "value")
    )
    # another number format: float32 elements seen as bfloat16 words, and a multi-bit upset
    faults += [
        f.replace(format="bfloat16", bits=(b % 16,)) for f, b in zip(faults[:10], BITS) if f.bits
    ]
    faults += [
        Fault("conv2", "output", index=(1, 1, 1), bits=(30, 29, 3)),
        Fault("fc1", "weight", (3, 5), (30, 22)),
    ]
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == 0


class Residual(nn.Module):
    """A residual block, a module used twice (shared) and a functional op (torch.relu)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()  # called twice
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        y = self.act(self.stem(x))
        y = self.act(y + self.body(y))
        y = torch.relu(self.pool(y))
        return self.head(y.flatten(1))


def test_residual_and_shared_modules():
    model = Residual().eval()
    x = torch.randn(N_INPUTS, 1, 8, 8)
    faults = random_faults(model, x, 40, seed=3)
    # the shared module's outputs: every call (reference path) and one call (fast path)
    faults += [
        Fault("act", "output", index=(c, 2, 3), bits=(b,)) for c, b in [(0, 30), (1, 31), (2, 22)]
    ]
    faults += [
        Fault("act", "output", index=(c, 2, 3), bits=(b,), call=k)
        for c, b in [(0, 30), (3, 31)]
        for k in (0, 1)
    ]
    faults += [
        Fault("act", "output", index=(0, 1, 1), bits=(31,), call=5)
    ]  # a call that never happens
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    slow = sum(f.module == "act" and f.call in (None, 5) for f in faults)  # every call, or none
    assert slow >= 4 and fast.stats["reference"] == slow * N_INPUTS
    assert fast.stats["fast"] == len(want) - slow * N_INPUTS


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def test_untraceable_model_falls_back_with_one_notice(caplog):
    model = Branchy().eval()
    x = torch.randn(N_INPUTS, 6)
    faults = random_faults(model, x, 30, seed=4)
    with caplog.at_level(logging.WARNING, logger="torchfault.campaign"):
        got, want, fast = compare(model, x, faults)
        compare(model, x, faults)  # a second engine: no second notice
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == len(want) and fast.stats["fast"] == 0
    notices = [r for r in caplog.records if "cannot trace Branchy" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()


@torch.fx.wrap
def check_finite(x):
    if not torch.isfinite(x).all():
        raise RuntimeError("non-finite activation")
    return x


class Checked(nn.Module):
    """Raises under faults that make an activation non-finite (a DUE by exception)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(check_finite(self.a(x)))


def test_exceptions_are_due_for_their_own_rows():
    model = Checked().eval()
    x = torch.randn(N_INPUTS, 6)
    faults = [Fault("a", "output", index=(j,), bits=(b,)) for j in range(8) for b in (3, 30, 31)]
    faults += [Fault("a", "weight", index=(j, 1), bits=(30,)) for j in range(3)]
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    dues = [r for r in got if r.error]
    assert dues and all("non-finite activation" in r.error for r in dues)
    assert any(r.outcome != "due" for r in got)


def test_one_input_per_fault():
    model = create_model("mlp", dataset="digits").eval()
    x = model.example_inputs(N_INPUTS)
    faults = random_faults(model, x, 40, seed=5)
    golden = golden_run(model, x, 256)
    single = [
        RunTask(k * N_INPUTS + i, (f,), (i,)) for k, f in enumerate(faults) for i in range(N_INPUTS)
    ]
    got = FastEngine(model, x, golden).run(single)
    assert [r.fault_id for r in got] == [t.fault_id for t in single]
    # (1) bit for bit the reference engine run at a batch of 16 inputs per fault
    want = ReferenceEngine(model, x, golden).run(
        [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)]
    )
    strip = lambda r: (r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in want]
    # (2) the reference engine's own batches of one input (padded to MIN_ROWS rows, like every
    # engine's passes) give exactly the same records
    ref1 = ReferenceEngine(model, x, golden).run(single)
    assert [strip(r) for r in got] == [strip(r) for r in ref1]


def test_invalid_activation_index_is_reported_like_the_reference():
    model = create_model("mlp", dataset="digits").eval()
    x = model.example_inputs(N_INPUTS)
    faults = [
        Fault("fc1", "output", index=(500,), bits=(3,)),
        Fault("fc1", "output", index=(5,), bits=(30,)),
    ]
    got, want, _ = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert got[0].outcome == "due" and "out of range" in got[0].error


@pytest.mark.parametrize(
    "bad",
    [
        Fault("conv1", "weight", index=(0, 0, 9, 0), bits=(3,)),  # index out of range
        Fault("conv1", "weight", index=(0, 0, 1, 1), bits=(40,)),  # bit too wide for float32
        Fault("conv1", "wieght", index=(0, 0, 1, 1), bits=(3,)),  # no such tensor
    ],
)
def test_a_bad_fault_after_good_ones_on_its_module_raises_the_reference_error(bad):
    """Every task's faults are checked, as the reference engine checks them, though the checks of
    one call share one walk of the model's modules: a bad fault after good ones on the same
    module and tensor (planned, checked and run fast) raises the reference engine's error."""
    from torchfault.errors import TorchFaultError

    model = create_model("lenet", dataset="digits").eval()
    x = model.example_inputs(N_INPUTS)
    golden = golden_run(model, x, 256)
    good = [Fault("conv1", "weight", index=(0, 0, 1, j), bits=(30,)) for j in range(3)]
    tasks = [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate([*good, bad])]
    engine = FastEngine(model, x, golden)
    assert same_records(engine.run(tasks[:-1]), ReferenceEngine(model, x, golden).run(tasks[:-1]))
    assert engine.stats["fast"] == 3 * N_INPUTS
    errors = []
    for e in (engine, FastEngine(model, x, golden), ReferenceEngine(model, x, golden)):
        with pytest.raises(TorchFaultError) as info:
            e.run(tasks)
        errors.append(str(info.value))
    assert errors[0] == errors[1] == errors[2]


def test_several_faults_per_run_and_input_faults_use_the_reference_path():
    model = create_model("lenet", dataset="digits").eval()
    x = model.example_inputs(N_INPUTS)
    faults = [
        (Fault("conv1", "weight", (0, 0, 1, 1), (30,)), Fault("fc2", "output", (3,), (31,))),
        Fault("fc1", "input", index=(7,), bits=(30,)),
        Fault("fc2", "output", index=(7,), bits=(30,), sample=3),
    ]
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == len(want)


def test_tiny_cache_and_small_batches_give_the_same_runs():
    model = create_model("resnet8", dataset="digits").eval()
    x = model.example_inputs(N_INPUTS)
    faults = random_faults(model, x, 30, seed=6)
    got, want, fast = compare(model, x, faults, batch_size=20)
    fast2 = FastEngine(model, x, golden_run(model, x, 256), batch_size=3)
    fast2.cache.budget = 1
    got2 = fast2.run([RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)])
    assert [key(r) for r in got] == [key(r) for r in want] == [key(r) for r in got2]


def test_registered_and_reachable_from_run_campaign():
    assert "fast" in ENGINES.list()
    model = create_model("lenet", dataset="digits").eval()
    x = model.example_inputs(N_INPUTS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    faults = random_faults(model, x, 20, seed=7)
    fast = run_campaign(model, x, faults, engine="fast")
    ref = run_campaign(model, x, faults, engine="reference")
    assert [key(r) for r in fast.runs] == [key(r) for r in ref.runs]
    # the fast engine leaves the model bit for bit as it was
    after = model.state_dict()
    assert all(torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8)) for k in before)


# ---------------------------------------------------------------------------- spatial windows
def window_faults(model, x, modules, seed, n_random=6):
    """Activation faults on ``modules``: the four corners, edge middles and random elements."""
    rng = random.Random(seed)
    shapes = {s.module: s.shape for s in fault_space(model, x[:2], kinds=("outputs",))}
    faults = []
    for m in modules:
        c, h, w = shapes[m]
        places = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 0), (0, w // 2)]
        places += [(rng.randrange(h), rng.randrange(w)) for _ in range(n_random)]
        for y, z in places:
            bits = (rng.choice(BITS),)
            faults.append(Fault(m, "output", index=(rng.randrange(c), y, z), bits=bits))
    return faults


MID_NETWORK = {
    "resnet20": ["layer1.1.conv1", "layer1.2.bn2", "layer2.0.conv2", "layer2.0.shortcut.0"],
    "lenet": ["conv1", "relu1", "pool1", "conv2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MID_NETWORK))
def test_windowed_activation_faults_mid_network(name):
    """CIFAR-shaped maps (32x32): the layers after a fault run on windows; every record equals
    the reference engine's."""
    model = randomize_buffers(create_model(name, dataset="cifar10")).eval()
    x = model.example_inputs(N_INPUTS)
    faults = window_faults(model, x, MID_NETWORK[name], seed=8)
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == 0
    assert fast.stats["window_rows"] > 0 and fast.stats["window_steps"] > 0
    assert {"masked", "benign"} <= {r.outcome for r in want}


@pytest.mark.parametrize(
    ("name", "modules"),
    [("lenet", ["conv1", "pool1", "conv2"]), ("resnet8", ["conv1", "layer1.0.relu1"])],
)
def test_windowed_one_input_per_fault(name, modules):
    """One input per fault: every row of a batch has its own window position (and the regions
    that overhang the map are shifted per row)."""
    model = randomize_buffers(create_model(name, dataset="cifar10")).eval()
    x = model.example_inputs(N_INPUTS)
    faults = window_faults(model, x, modules, seed=9, n_random=2)
    golden = golden_run(model, x, 256)
    single = [
        RunTask(k * N_INPUTS + i, (f,), (i,)) for k, f in enumerate(faults) for i in range(N_INPUTS)
    ]
    fast = FastEngine(model, x, golden)
    got = fast.run(single)
    want = ReferenceEngine(model, x, golden).run(
        [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)]
    )
    strip = lambda r: (r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in want]
    assert fast.stats["window_rows"] == len(single) and fast.stats["reference"] == 0


class Windowy(nn.Module):
    """Every operation the windows handle: dilated and grouped convolutions, a 1x1 stride-2
    convolution (windows that overhang what it reads), padded max- and average-pooling, an
    in-place ReLU, batch norm, element-wise sums and products of different windows, scalars."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.p1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1, stride=2, bias=False)
        self.c4 = nn.Conv2d(8, 8, (3, 1), padding=(1, 0))
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.Hardswish()
        self.p2 = nn.AvgPool2d(3, stride=1, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        y = self.r1(self.c1(x))
        z = self.p1(self.c2(y) + y)
        u = self.c3(z)
        w = self.act(torch.sigmoid(self.bn(self.c4(u))) * u)
        w = self.p2(w) * 0.5 + 1.0
        return self.head(w.flatten(1))


def test_windowed_operations():
    model = randomize_buffers(Windowy()).eval()
    x = torch.randn(N_INPUTS, 3, 32, 32)
    faults = window_faults(model, x, ["c1", "r1", "c2", "p1", "c3", "bn", "act"], seed=10)
    faults += random_faults(model, x, 20, seed=11, kinds=("outputs",))
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == 0 and fast.stats["window_steps"] > 0


def test_window_canary_failure_falls_back_exactly(monkeypatch):
    """A failed canary makes that layer, at that window shape, run whole for good; a windowed
    computation that is wrong is caught by the canaries, and would change the records without."""
    model = randomize_buffers(create_model("resnet8", dataset="cifar10")).eval()
    x = model.example_inputs(N_INPUTS)
    faults = window_faults(model, x, ["conv1", "layer1.0.conv1", "layer2.0.bn1"], seed=12)
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["window_steps"] > 0
    canary_ok = WindowRunner.canary_ok
    # (1) the canaries of every convolution fail
    failed = []

    def no_conv(self, k, golden, computed):
        if "conv" in k[0]:
            failed.append(k)
            return False
        return canary_ok(self, k, golden, computed)

    monkeypatch.setattr(WindowRunner, "canary_ok", no_conv)
    got, fast = run_fast(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == 0 and fast.stats["window_steps"] > 0
    assert failed and len(set(failed)) == len(failed)  # each (layer, shape) is tried once
    assert fast.stats["window_fallback"] == len(failed) == len(fast.windows.failed)
    # (2) every windowed region one ulp off: the canaries see it (the geometry itself is tested
    # directly in test_fast_geometry.py)
    region = _windows.region

    def off(*args, **kwargs):
        reg = region(*args, **kwargs)
        return torch.nextafter(reg, torch.full_like(reg, float("inf")))

    monkeypatch.setattr(WindowRunner, "canary_ok", canary_ok)
    monkeypatch.setattr(_windows, "region", off)
    got, fast = run_fast(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["window_fallback"] > 0
    # ... which, unchecked, would change records
    monkeypatch.setattr(WindowRunner, "canary_ok", lambda self, k, golden, computed: True)
    got, fast = run_fast(model, x, faults)
    assert [key(r) for r in got] != [key(r) for r in want]


# ---------------------------------------------------------------------------- masked rows, windows
def test_masked_rows_are_dropped_early():
    """Low-mantissa flips of clearly negative pre-ReLU activations stay negative, so the ReLU
    makes their rows golden again: the engine drops them there as masked, and the records still
    equal the reference engine's."""
    model = create_model("mlp", dataset="digits").eval()
    with torch.no_grad():
        model.fc1.bias[:4] = -50.0  # units 0..3 of fc1 are about -50 on every input
    x = model.example_inputs(N_INPUTS)
    pre = model.fc1(model.flatten(x)).detach()
    assert float(pre[:, :4].max()) < -10
    negative = [Fault("fc1", "output", index=(j,), bits=(b,)) for j in range(4) for b in (0, 3, 9)]
    # controls: an exponent flip of other units, which reaches the output
    control = [Fault("fc1", "output", index=(j,), bits=(30,)) for j in range(4, 10)]
    got, want, fast = compare(model, x, negative + control)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == 0 and fast.stats["fast"] == len(want)
    n_negative = len(negative) * N_INPUTS
    assert all(r.outcome == "masked" for r in want[:n_negative])
    assert fast.stats["masked_early"] >= n_negative
    assert {r.outcome for r in want[n_negative:]} - {"masked"}


def test_activation_faults_on_a_conv_model_use_windows():
    """Faults on early feature maps of a conv model start on spatial windows: ``window_rows``
    and ``window_steps`` count them, and every record equals the reference engine's."""
    model = create_model("lenet", dataset="cifar10").eval()
    x = model.example_inputs(N_INPUTS)
    faults = window_faults(model, x, ["conv1", "relu1"], seed=13, n_random=3)
    got, want, fast = compare(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == 0
    assert fast.stats["window_rows"] > 0 and fast.stats["window_steps"] > 0


# ---------------------------------------------------------------------------- fuzz regressions
def same_records(got, want):
    """Records equal field by field (NaN differences equal)."""
    nan = lambda v: "nan" if isinstance(v, float) and v != v else v  # noqa: E731
    return [tuple(map(nan, key(r))) for r in got] == [tuple(map(nan, key(r))) for r in want]


class ReadAfterInplace(nn.Module):
    """An in-place ReLU modifies a value that is read again afterwards, and an in-place method
    whose result is unused (``h.relu_()``) modifies a value the output depends on."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = self.c1(x)
        z = self.r1(y)  # y is modified too
        u = self.c2(z) + y  # reads y after the in-place ReLU
        u.relu_()  # result unused: only its effect on u counts
        return self.head(u.flatten(1))


def test_in_place_modifications_are_exact():
    """Golden copies of values modified in place later are not what the model reads: such sites
    run on the reference engine; in-place nodes with unused results are not dropped."""
    model = ReadAfterInplace().eval()
    x = torch.randn(N_INPUTS, 3, 6, 6)
    faults = random_faults(model, x, 30, seed=20, kinds=("outputs", "weights", "biases"))
    got, want, fast = compare(model, x, faults)
    assert same_records(got, want)
    assert fast.stats["fast"] > 0 and fast.stats["reference"] > 0


class TinyHead(nn.Module):
    """A 6-wide linear layer: oneDNN rounds the last rows of some batch heights differently."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.sigmoid(self.a(x)))


def test_rows_that_depend_on_their_place_in_the_batch_use_the_reference():
    model = TinyHead().eval()
    x = torch.randn(17, 6)
    faults = random_faults(model, x, 40, seed=0, kinds=("outputs", "weights", "biases"))
    got, want, fast = compare(model, x, faults, inputs_per_fault=17)
    assert same_records(got, want)


class ResBN(nn.Module):
    """Convolutions, batch norm, an in-place ReLU, a residual sum, max-pooling, a strided
    shortcut and global average pooling."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.r1, self.r2 = nn.ReLU(inplace=True), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.c3, self.short = (
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.Conv2d(8, 16, 1, stride=2),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.r1(self.b1(self.c1(x)))
        y = self.pool(self.r2(self.b2(self.c2(y)) + y))
        y = torch.relu(self.c3(y)) + self.short(y)
        return self.fc(self.gap(y).flatten(1))


def test_channels_last_inputs():
    """Channels-last inputs take the fast path (gathered rows keep their strides, activation
    faults keep the layout): every record equals the reference engine's."""
    model = randomize_buffers(ResBN()).eval()
    x = torch.randn(N_INPUTS, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    faults = random_faults(model, x, 25, seed=22, kinds=("outputs", "weights", "buffers"))
    got, want, fast = compare(model, x, faults)
    assert same_records(got, want)
    assert fast.stats["fast"] == len(faults) * N_INPUTS  # every run


# a compact differential fuzz over model families (seeded, a few seconds)
class FuzzNet(nn.Module):
    """Unusual structure: concatenation and chunks, broadcasting residuals, a shared module,
    grouped, dilated and strided convolutions, pooling with stride != kernel, norms, in-place
    ReLU, a transpose, element-wise activations and a softmax at the end."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
        self.gc = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.ReLU(inplace=True)  # called twice
        self.gn = nn.GroupNorm(4, 16)
        self.se = nn.Linear(16, 16)
        self.head = nn.Linear(16 * 3 * 3, 10)
        self.sm = nn.Softmax(dim=1)

    def forward(self, x):
        y = torch.cat([self.c1(x), self.c2(x)], 1)
        y = self.act(self.bn(self.dw(y))) + y
        a, b = torch.chunk(self.gc(y), 2, dim=1)
        y = self.act(torch.cat([b, torch.nn.functional.silu(a)], 1))
        g = torch.sigmoid(self.se(y.mean((2, 3))))[:, :, None, None]
        y = self.gn(y * g).transpose(2, 3)
        y = torch.nn.functional.max_pool2d(y, 3, stride=2, padding=1)
        return self.sm(self.head(y.flatten(1)))


class FuzzSeq(nn.Module):
    """Sequences: conv1d, layer norm, an embedding-free MLP with GELU and dropout (eval)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 8, 3, padding=1, stride=2)
        self.ln = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 6)

    def forward(self, x):
        h = self.c(x).transpose(1, 2)
        h = self.drop(nn.functional.gelu(self.fc1(self.ln(h))))
        return self.fc2(h).mean(1)


class FuzzConvNeXt(nn.Module):
    """A ConvNeXt block run in channels-last memory format: 7x7 depthwise convolution, layer norm
    over channels after a permute, GELU MLP, residual."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)
        self.head = nn.Linear(c, 6)

    def forward(self, x):
        y = self.stem(x)
        z = self.dw(y).permute(0, 2, 3, 1)
        z = self.fc2(nn.functional.gelu(self.fc1(self.ln(z)))).permute(0, 3, 1, 2)
        return self.head((y + z).mean((2, 3)))


class FuzzAttention(nn.Module):
    """Self-attention ``attn(x, x, x)`` (one tensor as query, key and value), layer norm, MLP."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = self.attn(x, x, x, need_weights=False)[0]
        return self.fc(self.ln(h + x).mean(1))


class FuzzEncoder(nn.Module):
    """``nn.TransformerEncoder`` (traced as its layers, one node each; the layers take
    PyTorch's fused fast path in eval mode): faults on a layer's weights run from that layer's
    node with the faulty tensor."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


class FuzzDecoder(nn.Module):
    """``nn.TransformerDecoder`` (one traced node; no fused path, so its submodules run and
    activation faults inside it fire)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerDecoderLayer(16, 2, 24, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.decoder(h, h).mean(1))


class FuzzLSTM(nn.Module):
    """An ``nn.LSTM`` (batch first, two layers) returns ``(output, (h, c))``, a structure whose
    ``h`` and ``c`` hold the batch on dim 1; a GRU reads the last step; a linear head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
        self.gru = nn.GRU(8, 7, batch_first=True)
        self.head = nn.Linear(7 + 8, 4)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        y, _ = self.gru(out)
        return self.head(torch.cat([y[:, -1], h[-1]], 1))


FUZZ_FAMILIES = {
    "net": (FuzzNet, lambda n: torch.randn(n, 3, 12, 12)),
    "net-float64": (lambda: FuzzNet().double(), lambda n: torch.randn(n, 3, 12, 12).double()),
    "seq": (FuzzSeq, lambda n: torch.randn(n, 4, 10)),
    "inplace": (ReadAfterInplace, lambda n: torch.randn(n, 3, 6, 6)),
    "net-channels-last": (
        lambda: FuzzNet().to(memory_format=torch.channels_last),
        lambda n: torch.randn(n, 3, 12, 12).contiguous(memory_format=torch.channels_last),
    ),
    "convnext-channels-last": (
        lambda: FuzzConvNeXt().to(memory_format=torch.channels_last),
        lambda n: torch.randn(n, 3, 16, 16).contiguous(memory_format=torch.channels_last),
    ),
    "attention": (FuzzAttention, lambda n: torch.randn(n, 6, 16)),
    "encoder": (FuzzEncoder, lambda n: torch.randn(n, 5, 8)),
    "decoder": (FuzzDecoder, lambda n: torch.randn(n, 5, 8)),
    "lstm": (FuzzLSTM, lambda n: torch.randn(n, 5, 6)),
}


def test_recurrent_layers_take_the_fast_path():
    """Weight and output faults of an ``nn.LSTM`` and a ``nn.GRU`` (structured outputs): each
    fault's rows run from the recurrent layer (with the faulty tensor, or called under inject),
    to the end; every record equals the
    reference engine's and every run is on the fast path."""
    torch.manual_seed(6)
    model = FuzzLSTM().eval()
    x = torch.randn(N_INPUTS, 5, 6)
    faults = [
        Fault(m, t, i, (b,))
        for m, t, i in (
            ("lstm", "weight_ih_l0", (3, 2)),
            ("lstm", "weight_hh_l1", (20, 5)),
            ("lstm", "bias_hh_l0", (7,)),
            ("gru", "weight_ih_l0", (4, 1)),
            ("lstm", "output", (2, 3)),
            ("gru", "output", (4, 6)),
        )
        for b in (22, 29, 30, 31)
    ]
    got, want, fast = compare(model, x, faults)
    assert same_records(got, want)
    assert fast.stats["fast"] == len(got)
    assert {r.outcome for r in got} - {"masked"}


def test_activation_faults_inside_a_module_traced_whole():
    """Activation faults on the linear layers inside an ``nn.TransformerDecoder`` (one traced
    node): the decoder runs once per batch with each fault injected on its own rows; every
    record equals the reference engine's, the runs take the fast path and some change the
    output."""
    torch.manual_seed(4)
    model = FuzzDecoder().eval()
    x = torch.randn(N_INPUTS, 5, 8)
    faults = [
        Fault(f"decoder.layers.0.{m}", "output", (t, j), (b,))
        for m in ("linear1", "linear2")
        for t, j, b in ((0, 3, 30), (4, 1, 29), (2, 7, 22))
    ]
    got, want, fast = compare(model, x, faults)
    assert same_records(got, want)
    assert fast.stats["fast"] == len(got)
    assert {r.outcome for r in got} - {"masked"}
    # one input per fault: the batch is padded to 16 rows, and the rest of the network must run
    # on all of them (a stress run found max_abs_diff off in the last bits when it ran on one)
    small = [
        Fault(f"decoder.layers.0.{m}", "output", (t, j), (b,), "stuck_at_1")
        for m in ("dropout1", "linear1", "norm1")
        for t, j, b in ((2, 15, 20), (1, 4, 12), (3, 9, 21))
    ]
    golden = golden_run(model, x, 256)
    tasks = [
        RunTask(k * N_INPUTS + i, (f,), (i,))
        for k, f in enumerate(faults + small)
        for i in range(N_INPUTS)
    ]
    fast = FastEngine(model, x, golden)
    got = fast.run(tasks)
    assert same_records(got, ReferenceEngine(model, x, golden).run(tasks))
    assert fast.stats["fast"] == len(got)
    # the case a stress run found (seeded as it was): one input, batch_size 7
    rng = random.Random("stress-decoder-1")
    torch.manual_seed(rng.randrange(10000))
    model = randomize_buffers(FuzzDecoder()).eval()
    x = torch.randn(rng.choice((9, 17, 23, 33)), 5, 8)
    golden = golden_run(model, x, 256)
    f = Fault("decoder.layers.0.dropout1", "output", (2, 15), (20,), "stuck_at_1")
    tasks = [RunTask(0, (f,), (3,))]
    got = FastEngine(model, x, golden, batch_size=7).run(tasks)
    assert same_records(got, ReferenceEngine(model, x, golden, batch_size=7).run(tasks))


class EncoderWithNorm(nn.Module):
    """Three encoder layers and a final norm, called on the input alone (traced as its layers)
    and, with ``masked``, a second encoder called with a mask (traced whole)."""

    def __init__(self, masked: bool = False):
        super().__init__()
        self.masked = masked
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(
            layer, 3, norm=nn.LayerNorm(16), enable_nested_tensor=False
        )
        self.other = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = self.encoder(self.embed(x))
        if self.masked:
            h = self.other(h, mask=torch.zeros(5, 5))
        return self.head(h.mean(1))


@pytest.mark.parametrize("masked", [False, True])
def test_an_encoder_called_on_its_input_alone_is_traced_as_its_layers(masked):
    """Each layer is a node of its own (a fault in layer k runs from layer k), a fault on the
    encoder's own output is a fault on its norm's output, an encoder called with a mask stays
    one node; every record equals the reference engine's."""
    torch.manual_seed(11)
    model = EncoderWithNorm(masked).eval()
    x = torch.randn(19, 5, 8)
    golden = golden_run(model, x, 256)
    rng = random.Random(f"encoder-layers-{masked}")
    faults = [
        Fault("encoder", "output", (2, 3), (30,)),
        Fault("encoder.norm", "weight", (4,), (30,)),
        Fault("encoder.layers.2.linear1", "weight", (1, 2), (29,)),
        Fault("encoder.layers.0.self_attn", "in_proj_weight", (7, 3), (30,)),
    ]
    faults += fuzz_faults(model, x, 20, rng)
    ids = tuple(range(19))
    tasks = [RunTask(k, (f,), ids) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden)
    assert same_records(fast.run(tasks), ReferenceEngine(model, x, golden).run(tasks))
    prog = fast._prog
    assert prog is not None
    assert all(len(prog.calls[f"encoder.layers.{k}"]) == 1 for k in range(3))
    assert prog.outputs_of["encoder"] == prog.calls["encoder.norm"]  # its output: the norm's
    assert "encoder" not in prog.calls  # so no fault inside it is one of the whole encoder
    if masked:  # called with a mask: one node, its layers inside it
        assert len(prog.calls["other"]) == 1 and "other.layers.0" not in prog.calls
    # every run takes the fast path but those of faults in a module never called
    unused = sum(19 for f in faults if not masked and f.module.startswith("other."))
    assert fast.stats["fast"] == len(tasks) * 19 - unused, dict(fast.handed_over)


def fuzz_faults(model, x, n, rng):
    sites = [s for s in fault_space(model, x[:2], kinds=("outputs", "parameters", "buffers"))]
    faults = []
    while len(faults) < n:
        s = rng.choice(sites)
        if not s.shape:
            continue
        index = tuple(rng.randrange(d) for d in s.shape)
        call = rng.randrange(s.calls) if s.kind == "activation" and s.calls > 1 else None
        fm = rng.choice(("bit_flip", "bit_flip", "stuck_at_0", "stuck_at_1", "zero", "value"))
        bits = (rng.randrange(s.bit_width),) if fm not in ("zero", "value") else ()
        params = {"value": rng.choice((1e4, float("nan"), float("inf")))} if fm == "value" else {}
        faults.append(Fault(s.module, s.target, index, bits, fm, call=call, params=params))
    return faults


@pytest.mark.parametrize("family", sorted(FUZZ_FAMILIES))
def test_differential_fuzz(family):
    """Random faults on activations, parameters and buffers (every bit of the format, stuck-at,
    zero, value; ``call`` of a module used twice), several inputs per fault and one input per
    fault, default and small-batch/tiny-cache/window settings: every record equals the
    reference engine's."""
    rng = random.Random(f"fuzz-{family}")
    build, make = FUZZ_FAMILIES[family]
    torch.manual_seed(rng.randrange(1000))
    model = randomize_buffers(build()).eval()
    x = make(17)
    faults = fuzz_faults(model, x, 24, rng)
    golden = golden_run(model, x, 256)
    ids = tuple(range(x.shape[0]))
    tasks = [RunTask(k, (f,), ids) for k, f in enumerate(faults)]
    tasks += [RunTask(len(faults) + k, (f,), (rng.randrange(17),)) for k, f in enumerate(faults)]
    small = FastOptions(window_min_rows=1, window_area=0.9)
    for kw, options in [({}, None), ({"batch_size": 5}, small)]:
        fast = FastEngine(model, x, golden, options=options, **kw)
        if kw:
            fast.cache.budget = 1
        want = ReferenceEngine(model, x, golden, **kw).run(tasks)
        assert same_records(fast.run(tasks), want), (family, kw)


def test_random_fault_models_give_the_same_runs_however_they_are_batched():
    """A random_value run draws from a generator seeded by its fault and its input, so its record
    does not depend on the engine, the batch size, or which other inputs share its task (as
    after a resume)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)
    ).eval()
    x = torch.randn(12, 3, 8, 8)
    golden = golden_run(model, x, 256)
    faults = [
        Fault("0", "output", index=(1, 2, 3), model="random_value", params={"low": -4, "high": 4}),
        Fault(
            "0", "weight", index=(2, 1, 0, 1), model="random_value", params={"low": -4, "high": 4}
        ),
        Fault("3", "output", index=(2,), model="random_value"),  # a random bit pattern
    ]
    whole = [RunTask(k, (f,), tuple(range(12))) for k, f in enumerate(faults)]
    split = [
        RunTask(k, (f,), ids)
        for k, f in enumerate(faults)
        for ids in ((3, 0, 7), (1, 2, 4, 5, 6, 8, 9, 10, 11))
    ]

    def by_run(records):
        return {(r.fault_id, r.input_id): r for r in records}

    ref = by_run(ReferenceEngine(model, x, golden).run(whole))
    assert len({r.max_abs_diff for r in ref.values()}) > 3  # the values really are random
    for engine in (
        ReferenceEngine(model, x, golden, batch_size=5),
        FastEngine(model, x, golden),
        FastEngine(model, x, golden, batch_size=4),
    ):
        for tasks in (whole, split):
            got = by_run(engine.run(tasks))
            assert same_records([got[k] for k in sorted(got)], [ref[k] for k in sorted(ref)]), (
                type(engine).__name__,
                engine.batch_size,
                tasks is split,
            )


class _NarrowSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 7)
        self.b = nn.Linear(7, 3)

    def forward(self, x):
        return self.b(torch.sigmoid(self.a(x)))


class _SigmoidCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Sigmoid()
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.tanh(self.c2(self.act(self.c1(x)))).flatten(1))


def test_transcendental_functions_on_unaligned_rows_stay_exact():
    """sigmoid's vectorised and scalar-tail kernels round some values differently, so on rows of
    7 floats a value's bits depend on its place in the batch (the row check on golden values
    alone once let a `masked` vs `benign` through). The engine computes sigmoid position-free
    and runs only rows the reference engine computes the same way: every record equals the
    reference engine's, and the runs take the fast path."""
    torch.manual_seed(704)
    model = _NarrowSigmoid().eval()
    x = torch.randn(40, 4)
    golden = golden_run(model, x, 256)
    faults = random_faults(model, x, 30, seed=11)
    tasks = [RunTask(k, (f,), tuple(range(40))) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden, batch_size=4)
    assert same_records(fast.run(tasks), ReferenceEngine(model, x, golden, batch_size=4).run(tasks))
    assert fast.stats["fast"] > len(tasks) * 30


def test_transcendental_functions_on_aligned_rows_stay_fast():
    """Rows of 16x8x8 floats start on the same vector lanes in any batch: with one thread the
    fast path stays exact (windows stop before a sigmoid, which is computed on whole maps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1)
        model = _SigmoidCNN().eval()
        x = torch.randn(N_INPUTS, 3, 8, 8)
        got, want, fast = compare(model, x, random_faults(model, x, 40, seed=3))
    finally:
        torch.set_num_threads(threads)
    assert same_records(got, want)
    assert fast.stats["fast"] == len(got) and fast.stats["reference"] == 0


# ---------------------------------------------------------------------------- an injection
# changes the faulted words and nothing else (layout, aliasing, dtype, quantizer)
def eager_int8(model: nn.Module, x: torch.Tensor, per_channel: bool = True) -> nn.Module:
    """``model`` (QuantStub ... DeQuantStub, eval mode) prepared, calibrated on ``x`` and
    converted in place (eager mode: torchfault's own ``quantize_model`` is FX mode); int8
    weights per channel (the x86 default qconfig) or per tensor."""
    import warnings

    from torch.ao.quantization import (
        QConfig,
        convert,
        default_observer,
        default_weight_observer,
        get_default_qconfig,
        prepare,
    )

    model.qconfig = (
        get_default_qconfig("x86")
        if per_channel
        else QConfig(activation=default_observer, weight=default_weight_observer)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(model, inplace=True)
        model(x)
        convert(model, inplace=True)
    return model


def eager_quantize(*layers, x):
    """QuantStub -> ``layers`` -> DeQuantStub, x86 qconfig (:func:`eager_int8`)."""
    from torch.ao.quantization import DeQuantStub, QuantStub

    return eager_int8(nn.Sequential(QuantStub(), *layers, DeQuantStub()).eval(), x)


def eager_quantized_linear():
    """QuantStub -> Linear -> DeQuantStub (:func:`eager_quantize`)."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 10)
    x = torch.randn(N_INPUTS, 8)
    return eager_quantize(layer, x=x), x


def test_quantstub_scale_and_zero_point_faults_equal_the_reference():
    """A fault on a QuantStub's scale or zero point gives its rows another quantizer: the fast
    engine wrote them into a copy of the golden quantized output, which kept the golden scale
    (reference: masked 7 / benign 1 on bit 31 of the scale; fast: sdc 8)."""
    model, x = eager_quantized_linear()
    faults = [Fault("0", "scale", index=(0,), bits=(b,)) for b in (31, 30, 23, 20, 3)]
    faults += [Fault("0", "zero_point", index=(0,), bits=(b,)) for b in (0, 2, 6)]
    got, want, fast = compare(model, x, faults)
    assert same_records(got, want)
    assert {r.outcome for r in want} - {"masked"}  # the faults do something


def test_packed_quantized_weights_take_the_fast_path():
    """Faults on the packed int8 weights and biases of an eager-quantized convolution and linear
    layer: the module is called on its cached inputs under inject (which repacks the faulty
    words); every record equals the reference engine's, every run on the fast path."""
    torch.manual_seed(8)
    layers = (nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(N_INPUTS, 2, 6, 6)
    model = eager_quantize(*layers, x=x)
    faults = [
        Fault(m, t, i, (b,))
        for m, t, i in (("1", "weight", (2, 1, 0, 1)), ("1", "bias", (3,)), ("4", "weight", (1, 7)))
        for b in (0, 5, 6, 7)
    ]
    got, want, fast = compare(model, x, faults)
    assert same_records(got, want)
    assert fast.stats["fast"] == len(got)
    assert {r.outcome for r in got} - {"masked"}


@pytest.mark.parametrize("family", sorted(FUZZ_FAMILIES))
def test_cancelling_pair_is_masked(family):
    """An outside oracle for every fuzz family: a bit flipped twice (the pair [f, f]) leaves every
    output the golden bits, on every engine, for activations (outputs and inputs), parameters
    and buffers; a changed memory layout, a broken alias or a changed dtype would show."""
    rng = random.Random(f"pair-{family}")
    build, make = FUZZ_FAMILIES[family]
    torch.manual_seed(rng.randrange(1000))
    model = randomize_buffers(build()).eval()
    x = make(17)
    golden = golden_run(model, x, 256)
    kinds = ("outputs", "inputs", "parameters", "buffers")
    sites = [s for s in fault_space(model, x[:2], kinds=kinds) if s.shape]
    faults = []
    for _ in range(16):
        s = rng.choice(sites)
        index = tuple(rng.randrange(d) for d in s.shape)
        call = 0 if s.kind == "activation" and s.calls > 1 else None  # shape: of call 0
        bits = (rng.randrange(s.bit_width),)
        faults.append(Fault(s.module, s.target, index, bits, call=call))
    ids = tuple(range(x.shape[0]))
    tasks = [RunTask(k, (f, f), ids) for k, f in enumerate(faults)]
    for engine in (ReferenceEngine(model, x, golden), FastEngine(model, x, golden)):
        records = engine.run(tasks)
        bad = [(faults[r.fault_id], r.outcome) for r in records if r.outcome != "masked"]
        assert not bad, (family, type(engine).__name__, bad[:3])
        assert all(r.max_abs_diff == 0 for r in records)


def test_runs_handed_to_the_reference_engine_are_counted_by_reason():
    """``FastEngine.handed_over`` says how many runs went to the reference engine and why; the
    counts add up to ``stats["reference"]``."""
    from torchfault.campaign._fast._notices import REASONS

    def handed(model, x, faults, **kw):
        golden = golden_run(model, x, 256)
        tasks = [
            RunTask(k, f if isinstance(f, tuple) else (f,), tuple(range(x.shape[0])))
            for k, f in enumerate(faults)
        ]
        engine = FastEngine(model, x, golden, **kw)
        engine.run(tasks)
        assert sum(engine.handed_over.values()) == engine.stats["reference"]
        return dict(engine.handed_over)

    n = N_INPUTS
    x = torch.randn(n, 6)
    assert handed(Branchy().eval(), x, [Fault("a", "output", (1,), (30,))]) == {REASONS["trace"]: n}
    model = create_model("lenet", dataset="digits").eval()
    x = model.example_inputs(n)
    f = Fault("fc1", "output", (3,), (30,))
    got = handed(
        model,
        x,
        [(f, f), Fault("fc1", "input", (7,), (30,)), f.replace(index=(500,)), f],
    )
    assert got == {REASONS["several"]: n, REASONS["kind"]: n, REASONS["index"]: n}
    res = Residual().eval()
    got = handed(res, torch.randn(n, 1, 8, 8), [Fault("act", "output", (0, 2, 3), (30,))])
    assert got == {REASONS["calls"]: n}
    torch.manual_seed(704)
    narrow = _NarrowSigmoid().eval()  # 17 rows of 7 floats: the buffer's tail holds rows 13-16
    got = handed(narrow, torch.randn(17, 4), [Fault("a", "output", (2,), (30,))])
    assert set(got) == {REASONS["position"]} and 0 < got[REASONS["position"]] <= 4
    att = FuzzAttention().eval()  # MultiheadAttention is one traced node: out_proj is inside
    # a weight or an activation inside it: the site is the attention node, whose value is a
    # tuple (a structured site: each fault's rows from the node to the end), on the fast path
    for f in (
        Fault("attn.out_proj", "weight", (0, 0), (30,)),
        Fault("attn", "in_proj_weight", (3, 1), (30,)),
    ):
        assert handed(att, torch.randn(n, 6, 16), [f]) == {}
    qmodel, qx = eager_quantized_linear()
    got = handed(qmodel, qx, [Fault("0", "scale", index=(0,), bits=(31,))])
    assert got == {REASONS["apart"]: n}


def test_seconds_by_phase_add_up_to_no_more_than_the_run():
    """``FastEngine.seconds``: the one-time work (tracing, golden pass, row check, site checks)
    and the batches each got time, and together they took no longer than the call."""
    model = ResBN().eval()
    x = torch.randn(N_INPUTS, 3, 12, 12)
    faults = random_faults(model, x, 12, seed=5, kinds=("outputs", "weights"))
    tasks = [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden_run(model, x, 256))
    t0 = time.perf_counter()
    fast.run(tasks)
    elapsed = time.perf_counter() - t0
    for phase in ("trace", "golden", "row_check", "site_checks", "batches"):
        assert fast.seconds[phase] > 0, phase
    assert sum(fast.seconds.values()) <= elapsed
    before = dict(fast.seconds)
    fast.run(tasks)  # the one-time work is not done again
    for phase in ("trace", "row_check", "site_checks"):
        assert fast.seconds[phase] == before[phase], phase
    assert fast.seconds["batches"] > before["batches"]
