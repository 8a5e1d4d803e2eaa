# SPDX-License-Identifier: MIT
"""Generated leak tests: every injector and target kind, run normally and with a forward pass
that raises inside the context. Afterwards no module has a hook left, every parameter and buffer
is bit-identical to before, and nothing was deep-copied (same objects, same storage)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject, inject_ber
from torchfault.injectors import create_injector, list_injectors


class Boom(RuntimeError):
    pass


class Net(nn.Module):
    """A small CNN whose forward pass raises (after the faulted layers ran) when asked to."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 5 * 5, 3)
        self.explode = False
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        h = self.relu(self.bn(self.conv(x)))
        y = self.fc(h.flatten(1))
        if self.explode:
            raise Boom("forward failed")
        return y


X = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))

FAULT_CASES = {
    "output": [
        Fault("conv", index=(1, 2, 2), bits=(30,)),
        Fault("relu", index=(0, 0, 0), bits=(31,), sample=1),
    ],
    "input": [Fault("fc", "input", index=(5,), bits=(31,))],
    "weight": [Fault("conv", "weight", index=(0, 1, 2, 2), bits=(30,))],
    "bias": [
        Fault("fc", "bias", index=(2,), bits=(31,)),
        Fault("conv", "bias", index=(0,), model="zero"),
    ],
    "buffer": [
        Fault("bn", "running_mean", index=(1,), bits=(30,)),
        Fault("bn", "running_var", index=(3,), bits=(29,)),
    ],
    "transient": [
        Fault("conv", "weight", index=(1, 1, 1, 1), bits=(30,), persistence="transient"),
        Fault("conv", index=(1, 2, 2), bits=(30,), persistence="transient"),
    ],
    "mixed": [
        Fault("conv", index=(1, 2, 2), bits=(30,)),
        Fault("conv", "weight", index=(0, 1, 2, 2), bits=(30,)),
        Fault("bn", "running_mean", index=(1,), model="value", params={"value": 5.0}),
        Fault("fc", "input", index=(5,), model="random_value"),
    ],
}
BER_CASES = {
    "ber-outputs": {"rate": 0.01, "kinds": "outputs"},
    "ber-inputs": {"rate": 0.01, "kinds": "inputs"},
    "ber-weights": {"rate": 0.05, "kinds": ("weights", "biases")},
    "ber-buffers": {"rate": 0.05, "kinds": "buffers"},
    "ber-all-transient": {
        "rate": 0.05,
        "kinds": ("outputs", "parameters", "buffers"),
        "persistence": "transient",
    },
}


def snapshot(model: nn.Module) -> dict[str, tuple[int, int, torch.Tensor]]:
    """id, data_ptr and integer words of every parameter and buffer."""
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        words = t.detach().view(torch.int32) if t.dtype == torch.float32 else t.detach()
        out[name] = (id(t), t.data_ptr(), words.clone())
    return out


def assert_clean(model: nn.Module, before) -> None:
    for name, mod in model.named_modules():
        assert not mod._forward_hooks, f"forward hook left on {name!r}"
        assert not mod._forward_pre_hooks, f"forward pre-hook left on {name!r}"
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, (ident, ptr, words) in before.items():
        assert after[name][0] == ident, f"{name} was replaced (a copy)"
        assert after[name][1] == ptr, f"{name} moved to new storage"
        assert torch.equal(after[name][2], words), f"{name} is not bit-identical"


def contexts() -> list:
    out = []
    for name, faults in FAULT_CASES.items():
        out.append(pytest.param(lambda m, f=faults: inject(m, f, seed=0), id=f"inject-{name}"))
        out.append(
            pytest.param(
                lambda m, f=faults: inject(m, f, seed=0, example_inputs=X),
                id=f"inject-{name}-probed",
            )
        )
    for name, kw in BER_CASES.items():
        out.append(pytest.param(lambda m, kw=kw: inject_ber(m, seed=0, **kw), id=name))
    return out


@pytest.mark.parametrize("make", contexts())
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("raises", [False, True], ids=["runs", "raises"])
def test_no_leaks(make, mode, raises):
    model = Net().train(mode == "train")
    for p in model.parameters():
        p.requires_grad_(mode == "train")
    before = snapshot(model)
    golden = model.eval()(X) if mode == "eval" else None
    model.train(mode == "train")
    model.explode = raises
    if raises:
        with pytest.raises(Boom), make(model):
            model(X)
    else:
        with make(model):
            model(X)
            model(X)
    model.explode = False
    # a training pass updates BatchNorm statistics by itself: compare the rest
    if mode == "train":
        before = {
            k: v
            for k, v in before.items()
            if not k.startswith("bn.running") and "num_batches" not in k
        }
        after = snapshot(model)
        for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
            before[name] = after[name]
    assert_clean(model, before)
    if golden is not None:
        assert torch.equal(model(X), golden)


@pytest.mark.parametrize("name", list_injectors())
def test_every_registered_injector_leaves_no_trace(name):
    kwargs = {"faults": FAULT_CASES["mixed"]} if name == "faults" else {"rate": 0.01}
    model = Net().eval()
    before = snapshot(model)
    model.explode = True
    with pytest.raises(Boom), create_injector(name, model=model, **kwargs):
        model(X)
    assert_clean(model, before)


def test_user_hooks_are_kept():
    model = Net().eval()
    mine = model.conv.register_forward_hook(lambda m, a, o: None)
    with inject(model, FAULT_CASES["output"]):
        assert len(model.conv._forward_hooks) == 2
        model(X)
    assert list(model.conv._forward_hooks) == [mine.id]
    mine.remove()
