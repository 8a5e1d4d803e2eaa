# SPDX-License-Identifier: MIT
"""Protections against a hand-written oracle: a Sequential run module by module with the bound
applied by hand (clamp / zero / nothing), the flags computed from those values; a leak test
over every registered protection; bad input named."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject
from torchfault.errors import TorchFaultError
from torchfault.injectors import (
    Protection,
    create_protection,
    list_protections,
    profile_ranges,
    protect,
    protect_,
)


def _net() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 6),
        nn.ReLU(),
        nn.Linear(6, 4),
    )


@pytest.fixture
def golden() -> torch.Tensor:
    return torch.randn(40, 1, 5, 5, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def odd() -> torch.Tensor:
    """Inputs outside the golden distribution (some rows far out, some in)."""
    x = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(9))
    x[::2] *= 20
    return x


def _oracle(model, x, bounds, how):
    """Run ``model`` module by module; at layer i with bounds (lo, hi) apply ``how``."""
    flags = torch.zeros(x.shape[0], dtype=torch.bool)
    h = x
    for i, m in enumerate(model):
        h = m(h)
        if str(i) in bounds:
            lo, hi = bounds[str(i)]
            out = (h < lo) | (h > hi) | torch.isnan(h)
            flags |= out.reshape(h.shape[0], -1).any(1)
            if how == "clamp":
                h = torch.maximum(
                    torch.minimum(h, torch.as_tensor(hi, dtype=h.dtype)),
                    torch.as_tensor(lo, dtype=h.dtype),
                )
            elif how == "zero":
                h = torch.where(out, torch.zeros_like(h), h)
    return h, flags


@torch.no_grad()
def test_ranger_clamps_every_layer_to_its_golden_range(golden, odd):
    model = _net()
    prof = profile_ranges(model, golden)
    bounds = {n: (r.min, r.max) for n, r in prof.layers.items()}
    want, flags = _oracle(model, odd, bounds, "clamp")
    with protect(model, "ranger", profile=prof) as p:
        got = model(odd)
    assert torch.equal(got, want)
    assert torch.equal(p.flags, flags) and flags.any() and not flags.all()
    # golden inputs, same batches as profiled: nothing flagged, output bit-identical
    with protect(model, "ranger", profile=prof) as p:
        assert torch.equal(model(golden), _oracle(model, golden, {}, "none")[0])
    assert not p.flags.any()


@torch.no_grad()
def test_detect_changes_nothing_and_flags_rows(golden, odd):
    model = _net()
    prof = profile_ranges(model, golden, ["1", "4"])
    bounds = {n: (r.min, r.max) for n, r in prof.layers.items()}
    _, flags = _oracle(model, odd, bounds, "none")
    plain = model(odd)
    with protect(model, create_protection("detect", profile=prof)) as det:
        assert torch.equal(model(odd), plain)
    assert torch.equal(det.flags, flags) and flags.any()
    assert set(det.fired) <= {"1", "4"} and det.fired


@torch.no_grad()
def test_clip_fixed_bound_and_zero_mode_per_layer(golden, odd):
    model = _net()
    prof = profile_ranges(model, golden, percentiles=(1, 99))
    # fixed bound on layer 3, percentile range zeroed on layer 4
    layers = {"3": {"bound": 0.5}, "4": {"bounds": "p1-p99", "mode": "zero"}}
    lo4, hi4 = prof.layers["4"].percentiles[1.0], prof.layers["4"].percentiles[99.0]
    h, f1 = _oracle(model[:4], odd, {"3": (-0.5, 0.5)}, "clamp")
    h = model[4](h)
    out4 = (h < lo4) | (h > hi4)
    want = model[5](torch.where(out4, torch.zeros_like(h), h))
    with protect(model, "clip", profile=prof, layers=layers) as p:
        got = model(odd)
    assert torch.equal(got, want)
    assert torch.equal(p.flags, f1 | out4.any(1))


@torch.no_grad()
def test_per_channel_ranges(golden, odd):
    model = _net()
    prof = profile_ranges(model, golden, ["0"], per_channel=True)
    r = prof.layers["0"]
    lo = torch.tensor(r.channel_min).reshape(1, 3, 1, 1)
    hi = torch.tensor(r.channel_max).reshape(1, 3, 1, 1)
    h = model[0](odd)
    want = model[1:](torch.maximum(torch.minimum(h, hi), lo))
    with protect(model, "ranger", profile=prof, per_channel=True):
        assert torch.equal(model(odd), want)
    plain = profile_ranges(model, golden, ["0"])
    with pytest.raises(TorchFaultError, match="per-channel") as e:
        protect_(model, "ranger", profile=plain, per_channel=True)
    assert e.value.field == "layers.0.per_channel"


def test_permanent_protection_until_removed(golden, odd):
    model = _net()
    prof = profile_ranges(model, golden)
    h = protect_(model, "ranger", profile=prof)
    with torch.no_grad():
        a = model(odd)
        h.remove()
        b = model(odd)
    assert not torch.equal(a, b)
    assert all(not m._forward_hooks for m in model.modules())


def test_protection_composes_with_a_fault(golden):
    """A weight fault blowing up layer 3; ranger keeps layer 3 inside its golden range."""
    model = _net()
    prof = profile_ranges(model, golden)
    fault = Fault("3", "weight", (0, 0), (30,))
    with torch.no_grad(), protect(model, "ranger", profile=prof) as p, inject(model, [fault]):
        out = model(golden)
        h = model[:4](golden)
    assert p.flags.any()
    assert torch.isfinite(out).all()
    assert h.max() <= prof.layers["3"].max


class _Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.explode = False

    def forward(self, x):
        y = self.net(x)
        if self.explode:
            raise RuntimeError("boom")
        return y


@pytest.mark.parametrize("name", list_protections())
@pytest.mark.parametrize("explode", [False, True])
def test_leaks(name, explode, golden, odd):
    model = _Boom()
    prof = profile_ranges(model, golden)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: v.data_ptr() for k, v in model.state_dict().items()}
    model.explode = explode
    try:
        with protect(model, name, profile=prof):
            model(odd)
    except RuntimeError as exc:
        assert explode and "boom" in str(exc)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.data_ptr() == params[k]


def test_bad_input_is_named(golden):
    model = _net()
    prof = profile_ranges(model, golden, percentiles=(50,))
    with pytest.raises(TorchFaultError, match=r"no module 'fc9'") as e:
        protect_(model, "ranger", profile=prof, layers=["fc9"])
    assert e.value.field == "layers"
    with pytest.raises(TorchFaultError, match=r"Unknown protection 'rangr'.*ranger"):
        create_protection("rangr")
    with pytest.raises(TorchFaultError, match="percentile 99 was not recorded"):
        protect_(model, "ranger", profile=prof, bounds="p50-p99")
    with pytest.raises(TorchFaultError, match="unknown protection option"):
        create_protection("clip", layers={"3": {"bonud": 1}})
    with pytest.raises(TorchFaultError, match="layers.3.mode"):
        create_protection("clip", layers={"3": {"bound": 1, "mode": "wrap"}})
    with pytest.raises(TorchFaultError, match="no fixed bound and no profile"):
        protect_(model, "clip", layers=["3"])
    other = _net()
    with torch.no_grad():
        other[0].weight[0, 0, 0, 0] = 7.0
    with pytest.raises(TorchFaultError, match=r"another model.*'0\.weight'"):
        protect_(other, "detect", profile=prof)
    # nothing was left behind by the refusals
    assert all(not m._forward_hooks for m in [*model.modules(), *other.modules()])
    assert issubclass(type(create_protection("detect", profile=prof)), Protection)
