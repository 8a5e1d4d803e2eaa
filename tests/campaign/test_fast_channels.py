# SPDX-License-Identifier: MIT
"""Channel windows (``_fast/_channels.py``): the per-channel layers after a convolution weight
fault run on the fault's one output channel, and every record still equals the reference
engine's.

Each test also checks that the channel path was taken (``FastEngine.stats["channel_rows"]``,
``channel_steps``), so that a silent fall-back to whole values fails it.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from torchfault import Fault
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine, FastOptions
from torchfault.campaign._fast._channels import ChannelRunner

N_INPUTS = 16


def key(r):
    nan = lambda v: "nan" if isinstance(v, float) and v != v else v  # noqa: E731
    fields = (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)
    return tuple(map(nan, fields + (r.error,)))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norm statistics and parameters away from (0, 1), so each channel's map differs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


class ResidualNet(nn.Module):
    """Convolutions followed by every kind of per-channel node: batch norm (affine and not), ReLU
    (in place too), ReLU6, LeakyReLU, Hardtanh, Dropout2d, Identity, a residual ``+`` of a golden
    shortcut, arithmetic with scalars; then a flatten and a linear layer (channels mixed)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.act0 = nn.ReLU(inplace=True)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8, affine=False)
        self.drop = nn.Dropout2d(0.3)
        self.short = nn.Identity()
        self.act2 = nn.LeakyReLU(0.1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.act3 = nn.Hardtanh(-2.0, 2.0)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act0(self.bn0(self.stem(x)))
        y = self.act1(self.bn1(self.c1(h)))
        y = self.bn2(self.c2(y))
        y = self.act2(self.drop(y) + self.short(h))
        y = self.act3(self.c3(y) * 0.5 - 0.25)
        return self.head(y.flatten(1))


class MixingNext(nn.Module):
    """Channel-mixing nodes right after convolutions: a convolution straight into another, one
    batch norm before the next convolution, and a convolution straight into a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(self.c1(x))
        y = self.c3(self.bn2(y))
        return self.head(y.flatten(1))


class Conv1dNet(nn.Module):
    """A 1-d convolution with batch norm and ReLU (planes of one row each), then global
    average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(8)
        self.act = nn.ReLU()
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(self.act(self.bn1(self.c1(x))))
        return self.head(y.mean(-1))


MODELS = {
    "residual": (ResidualNet, lambda n: torch.randn(n, 3, 8, 8)),
    "mixing-next": (MixingNext, lambda n: torch.randn(n, 3, 8, 8)),
    "conv1d": (Conv1dNet, lambda n: torch.randn(n, 4, 64)),
}


def conv_weight_faults(model: nn.Module, seed: int, per_conv: int = 48) -> list[Fault]:
    """Faults on every convolution's weight and bias: every output channel, every bit of
    float32 (0-31: NaN and infinity from exponent bits 23-30 too), bit flips, stuck-at bits,
    zero and extreme values."""
    rng = random.Random(seed)
    faults = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.conv._ConvNd):
            continue
        w = m.weight
        for k in range(per_conv):
            index = (k % w.shape[0], *(rng.randrange(d) for d in w.shape[1:]))
            bit = (k * 7 + rng.randrange(32)) % 32
            fm = ("bit_flip", "bit_flip", "bit_flip", "stuck_at_1", "stuck_at_0")[k % 5]
            faults.append(Fault(name, "weight", index=index, bits=(bit,), model=fm))
        faults.append(Fault(name, "weight", index=(1, 0, *([0] * (w.dim() - 2))), model="zero"))
        for value in (float("nan"), float("inf"), -1e30):
            faults.append(
                Fault(name, "weight", index=(2, *([0] * (w.dim() - 1))), model="value",
                      params={"value": value})
            )  # fmt: skip
        if m.bias is not None:
            for o in range(m.bias.shape[0]):
                faults.append(Fault(name, "bias", index=(o,), bits=((o * 5 + 30) % 32,)))
    return faults


def run_both(model, x, faults, options=None, inputs_per_fault=N_INPUTS):
    """Both engines on the faults (each on its own inputs); returns (fast, reference, engine)."""
    golden = golden_run(model, x, 256)
    ids = tuple(range(inputs_per_fault))
    tasks = [RunTask(k, (f,), ids) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden, options=options)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    return got, want, fast


#: per model, the convolutions that a per-channel node follows (their rows take channel windows)
CHANNEL_SITES = {
    "residual": {"stem", "c1", "c2", "c3"},  # c3: then ``* 0.5``
    "mixing-next": {"c2"},  # c1 goes straight into c2, c3 into the flatten
    "conv1d": {"c1"},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_conv_weight_faults_on_channel_windows_equal_the_reference(name):
    """Weight and bias faults in every output channel, every bit: every record equals the
    reference engine's, the rows of convolutions followed by per-channel nodes all start on
    channel windows, and no canary fails."""
    torch.manual_seed(3)
    build, make = MODELS[name]
    model = randomize_norms(build())
    x = make(N_INPUTS)
    faults = conv_weight_faults(model, seed=len(name))
    got, want, fast = run_both(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["reference"] == 0
    on_channels = sum(f.module in CHANNEL_SITES[name] for f in faults) * N_INPUTS
    assert fast.stats["channel_rows"] == on_channels > 0
    assert fast.stats["channel_steps"] > 0 and fast.stats["channel_fallback"] == 0
    outcomes = {r.outcome for r in want}
    assert {"masked", "due"} <= outcomes  # masked rows and non-finite outputs are both covered


def test_masked_rows_are_dropped_on_one_channel():
    """Low mantissa flips in a channel whose batch norm output is negative on every input stay
    negative, so the ReLU after it makes the rows golden again: they are dropped there (by
    comparing that one channel) as masked, and every record equals the reference engine's."""
    torch.manual_seed(4)
    model = randomize_norms(ResidualNet())
    with torch.no_grad():
        model.bn1.bias[:3] = -50.0  # channels 0..2 of bn1 are about -50 on every input
    x = torch.randn(N_INPUTS, 3, 8, 8)
    faults = [
        Fault("c1", "weight", index=(o, 1, 1, 1), bits=(b,)) for o in range(3) for b in (0, 4)
    ]
    got, want, fast = run_both(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert all(r.outcome == "masked" for r in want)
    assert fast.stats["channel_rows"] == len(want)
    assert fast.stats["masked_early"] == len(want)


def test_switched_off_or_unaligned_planes_run_on_whole_values():
    """``FastOptions(channels=False)``, and planes that do not fill whole ``row_alignment``
    bytes (6x6 float32 maps: 144 bytes), run on whole values, with the same records; with a
    smaller ``row_alignment`` the unaligned planes take channel windows, still exact."""
    torch.manual_seed(5)
    model = randomize_norms(ResidualNet())
    model.head = nn.Linear(8 * 6 * 6, 10)
    x = torch.randn(N_INPUTS, 3, 6, 6)
    faults = conv_weight_faults(model, seed=5, per_conv=12)
    got, want, fast = run_both(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["channel_rows"] == 0 and fast.stats["fast"] == len(want)
    got, _, fast = run_both(model, x, faults, options=FastOptions(row_alignment=4))
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["channel_rows"] > 0 and fast.stats["channel_fallback"] == 0
    x8 = torch.randn(N_INPUTS, 3, 8, 8)
    model8 = randomize_norms(ResidualNet())
    got, want, fast = run_both(model8, x8, faults, options=FastOptions(channels=False))
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["channel_rows"] == 0 and fast.stats["fast"] == len(want)


def test_one_input_per_fault_on_channel_windows():
    """One input per fault (every row a fault of its own, many channels in a batch)."""
    torch.manual_seed(6)
    model = randomize_norms(ResidualNet())
    x = torch.randn(N_INPUTS, 3, 8, 8)
    faults = conv_weight_faults(model, seed=6, per_conv=24)
    got, want, fast = run_both(model, x, faults, inputs_per_fault=1)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["channel_rows"] > 0 and fast.stats["channel_fallback"] == 0


def test_channel_canary_failure_falls_back_exactly(monkeypatch):
    """A per-channel batch norm one ulp off golden fails its canaries: that computation is
    done on whole values from then on (``channel_fallback`` counts it), and every record still
    equals the reference engine's."""
    real = ChannelRunner._norm

    def off(m, x, c):
        y = real(m, x, c)
        return torch.nextafter(y, torch.full_like(y, float("inf")))

    monkeypatch.setattr(ChannelRunner, "_norm", staticmethod(off))
    torch.manual_seed(7)
    model = randomize_norms(ResidualNet())
    x = torch.randn(N_INPUTS, 3, 8, 8)
    faults = conv_weight_faults(model, seed=7, per_conv=16)
    got, want, fast = run_both(model, x, faults)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["channel_rows"] > 0 and fast.stats["channel_fallback"] > 0
    # every batch norm run on channel windows failed once, then ran whole
    norms = {"bn0", "bn1", "bn2"}
    assert {name for name, _ in fast._channels.failed} == norms
    assert fast.stats["channel_fallback"] == len(fast._channels.failed)
