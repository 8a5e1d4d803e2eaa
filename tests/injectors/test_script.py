# SPDX-License-Identifier: MIT
"""inject on torch.jit.script / torch.jit.trace modules and torch.export programs.

Oracle: the same compiled module with the parameter's word flipped by hand through a numpy view
(then flipped back), and the eager model under the same fault."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault import Fault, fault_space, inject
from torchfault.errors import TorchFaultError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def _model() -> Net:
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
    return m


X = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
FAULTS = [
    Fault("conv", "weight", index=(1, 0, 2, 2), bits=(30,)),
    Fault("fc", "bias", index=(2,), bits=(27, 31)),
    Fault("bn", "running_mean", index=(0,), bits=(29,)),
    Fault("fc", "weight", index=(3, 1), bits=(30,), model="stuck_at_1"),
]


def _by_hand(model: nn.Module, f: Fault) -> torch.Tensor:
    """Output of ``model`` with ``f``'s bits changed through a numpy view, then restored."""
    t = getattr(dict(model.named_modules())[f.module], f.target)
    words = t.data.numpy().view(np.uint32)
    old = words[f.index].copy()
    mask = np.uint32(sum(1 << b for b in f.bits))
    words[f.index] = words[f.index] | mask if f.model == "stuck_at_1" else words[f.index] ^ mask
    try:
        with torch.no_grad():
            return model(X)
    finally:
        words[f.index] = old


@pytest.mark.parametrize("compile_", ["script", "trace"])
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.module}.{f.target}")
def test_parameter_and_buffer_faults_on_torchscript(compile_, fault):
    eager = _model()
    sm = torch.jit.script(eager) if compile_ == "script" else torch.jit.trace(eager, X)
    with torch.no_grad():
        golden = sm(X)
    expected = _by_hand(sm, fault)
    with torch.no_grad(), inject(sm, fault):
        got = sm(X)
        again = sm(X)  # permanent: still there
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    assert torch.equal(again.view(torch.int32), expected.view(torch.int32))
    assert not torch.equal(got, golden)
    with torch.no_grad(), inject(eager, fault):
        assert torch.allclose(eager(X), got, rtol=1e-5, atol=1e-5, equal_nan=True)
    with torch.no_grad():
        assert torch.equal(sm(X).view(torch.int32), golden.view(torch.int32))  # restored
    for (name, p), (_, q) in zip(sm.state_dict().items(), _model().state_dict().items()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("compile_", ["script", "trace"])
def test_what_torchscript_cannot_do_is_a_clear_error(compile_):
    eager = _model()
    sm = torch.jit.script(eager) if compile_ == "script" else torch.jit.trace(eager, X)
    before = copy.deepcopy(sm.state_dict())
    kind = "scripted" if compile_ == "script" else "traced"
    act = Fault("conv", "output", index=(0, 0, 0), bits=(30,))
    with pytest.raises(
        TorchFaultError, match=f"activation faults need forward hooks, which a {kind}"
    ):
        inject(sm, [FAULTS[0], act]).__enter__()
    trans = FAULTS[0].replace(persistence="transient")
    with pytest.raises(TorchFaultError, match="transient fault.*persistence='permanent'"):
        inject(sm, trans).__enter__()
    for k, v in sm.state_dict().items():
        assert torch.equal(v, before[k])  # nothing was touched
    with pytest.raises(TorchFaultError, match="activation sites.*TorchScript module"):
        fault_space(sm, X)
    sites = fault_space(sm, kinds=("weights", "biases", "buffers"))
    assert {s.name for s in sites} >= {"conv:weight", "fc:bias", "bn:running_mean"}


def test_exported_programs_fault_through_their_module():
    eager = _model()
    ep = torch.export.export(eager, (X,))
    with pytest.raises(TorchFaultError, match="ExportedProgram: pass torch.export.unflatten"):
        inject(ep, FAULTS[0]).__enter__()
    act = Fault("conv", "output", index=(2, 1, 1), bits=(30,))
    gm, un = ep.module(), torch.export.unflatten(ep)
    with pytest.raises(TorchFaultError, match="'conv' is not called as a module"):
        inject(gm, [FAULTS[0], act]).__enter__()
    with torch.no_grad():
        golden = eager(X)
    for model, faults in ((gm, FAULTS[:3]), (un, [*FAULTS[:3], act])):
        for fault in faults:
            with torch.no_grad(), inject(model, fault) as inj:
                got = model(X)
            with torch.no_grad(), inject(eager, fault):
                exp = eager(X)
            assert torch.allclose(got, exp, rtol=1e-5, atol=1e-5, equal_nan=True), fault
            assert not torch.equal(got, golden)
            if fault.is_activation:
                assert inj.fired == 1
        with torch.no_grad():
            assert torch.equal(model(X), golden)
