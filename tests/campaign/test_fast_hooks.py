# SPDX-License-Identifier: MIT
"""A model with its own forward hooks (a user's clamp, a pre-hook that scales an input) gives the
fast engine's shortcuts no licence to skip them: spatial windows, channel windows and in-place
steps run only where no hook is on the module, so every record equals the reference engine's
(whose full passes call every hook)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from torchfault import Fault
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine


class Net(nn.Module):
    """Conv, BN, ReLU, a residual block and a head, on 16x16 maps (channel planes of 256 floats:
    channel windows apply) with room for spatial windows."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.r2 = nn.ReLU()
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.r3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.r1(self.b1(self.c1(x)))
        y = self.r2(self.b2(self.c2(y)) + y)
        y = self.r3(self.c3(y))
        return self.fc(self.pool(y).flatten(1))


def clamp_hook(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
    return out.clamp(-0.5, 0.5)  # changes golden values too (it is part of the model)


def ranger_hook(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
    return out.clamp(-20.0, 20.0)  # Ranger-style: golden values never reach the bounds


def scale_pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
    return (args[0] * 0.5,)


def build(hooked: tuple[str, ...], kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    for name in hooked:
        m = model.get_submodule(name)
        if kind == "pre":
            m.register_forward_pre_hook(scale_pre_hook)
        else:
            m.register_forward_hook(clamp_hook if kind == "clamp" else ranger_hook)
    return model


def faults_for(model: nn.Module) -> list[Fault]:
    rng = random.Random(1)
    faults = []
    for name in ("c1", "c2", "b1", "r1"):  # every activation here is 8 x 16 x 16
        for _ in range(12):
            index = tuple(rng.randrange(d) for d in (8, 16, 16))
            faults.append(Fault(name, "output", index=index, bits=(rng.choice((22, 26, 30, 31)),)))
    for name in ("c1", "c2"):
        w = model.get_submodule(name).weight
        for _ in range(12):
            index = tuple(rng.randrange(d) for d in w.shape)
            faults.append(Fault(name, "weight", index=index, bits=(rng.choice((22, 26, 30, 31)),)))
    return faults


def key(r):
    return (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)


@pytest.mark.parametrize("kind", ["clamp", "ranger", "pre"])
@pytest.mark.parametrize(
    "hooked", [("c2",), ("b1",), ("r1",), ("b2", "r2"), ("c3",)], ids=lambda h: "+".join(h)
)
def test_hooked_modules_give_the_reference_records(hooked, kind):
    model = build(hooked, kind)
    x = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    golden = golden_run(model, x, 256)
    faults = faults_for(model)
    tasks = [RunTask(k, (f,), tuple(range(x.shape[0]))) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert fast.stats["fast"] == len(got)  # run fast, not handed over
    if kind == "ranger":  # golden untouched by the hook: the bounds are reached by faulty rows
        with torch.no_grad():
            plain = Net()
            plain.load_state_dict(model.state_dict())
            assert torch.equal(plain.eval()(x), golden)
        assert any(
            r.outcome != w.outcome
            for r, w in zip(got, ReferenceEngine(plain, x, golden).run(tasks))
        )
