# SPDX-License-Identifier: MIT
"""Golden range profiles against an independent oracle: every layer output collected by hand
(a plain forward over all inputs with a hook that keeps the tensors), statistics computed by
NumPy; bad input is an error naming the field, the file or the mismatch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.injectors import RangeProfile, load_profile, profile_ranges


def _net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)
    )


def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> dict[str, list[torch.Tensor]]:
    """Every leaf module's outputs, batch by batch (the oracle)."""
    outs: dict[str, list[torch.Tensor]] = {}
    hs = [
        m.register_forward_hook(lambda m, a, o, n=n: outs.setdefault(n, []).append(o.detach()))
        for n, m in model.named_modules()
        if n
    ]
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    for h in hs:
        h.remove()
    return outs


@pytest.fixture
def data() -> torch.Tensor:
    return torch.randn(70, 2, 4, 4, generator=torch.Generator().manual_seed(1))


def test_statistics_equal_numpy_over_every_value(data):
    model = _net()
    ps = (0.0, 0.1, 25.0, 50.0, 99.9, 100.0)
    prof = profile_ranges(model, data, percentiles=ps, per_channel=True, batch_size=16)
    oracle = _outputs(model, data, 16)
    assert list(prof.layers) == ["0", "1", "2", "3"]
    for name, chunks in oracle.items():
        full = torch.cat(chunks)
        v = full.double().numpy().reshape(-1)
        r = prof.layers[name]
        assert r.shape == tuple(full.shape[1:])
        assert r.count == v.size and r.nonfinite == 0 and r.exact_percentiles
        assert r.min == float(v.min()) and r.max == float(v.max())
        assert r.mean == pytest.approx(float(v.mean()), rel=1e-12, abs=1e-12)
        assert r.std == pytest.approx(float(v.std()), rel=1e-10)
        for p in ps:
            assert r.percentiles[p] == pytest.approx(
                float(np.percentile(v, p)), rel=1e-12, abs=1e-12
            )
        ch = full.transpose(0, 1).reshape(full.shape[1], -1).double().numpy()
        assert r.channel_min == tuple(ch.min(1).tolist())
        assert r.channel_max == tuple(ch.max(1).tolist())
        sha = hashlib.sha256()
        for c in chunks:
            sha.update(c.contiguous().numpy().tobytes())
        assert r.digest == sha.hexdigest()


def test_batch_size_changes_only_rounding_and_inputs_may_be_datasets(data):
    model = _net()
    a = profile_ranges(model, data, batch_size=7)
    b = profile_ranges(model, data, batch_size=70)
    ds = torch.utils.data.TensorDataset(data, torch.zeros(len(data)))
    c = profile_ranges(model, ds, batch_size=7)
    d = profile_ranges(model, [(data[i : i + 7], None) for i in range(0, 70, 7)])
    for name in a.layers:
        assert a.layers[name].mean == pytest.approx(b.layers[name].mean, rel=1e-6, abs=1e-9)
        assert a.layers[name].std == pytest.approx(b.layers[name].std, rel=1e-6)
        assert a.layers[name] == c.layers[name] == d.layers[name]
    assert a.num_inputs == c.num_inputs == d.num_inputs == 70


def test_sampled_percentiles_are_close_and_flagged_inexact():
    model = nn.Sequential(nn.Identity())
    x = torch.rand(20000, 1, generator=torch.Generator().manual_seed(0))
    prof = profile_ranges(model, x, percentiles=(5, 50, 95), sample_size=4000, batch_size=1000)
    r = prof.layers["0"]
    assert not r.exact_percentiles
    truth = np.percentile(x.double().numpy(), [5, 50, 95])
    for p, t in zip((5.0, 50.0, 95.0), truth):
        assert abs(r.percentiles[p] - t) < 0.03  # a uniform sample of 4000: sd ~ 0.008
    assert r.min == float(x.min()) and r.max == float(x.max())
    again = profile_ranges(model, x, percentiles=(5, 50, 95), sample_size=4000, batch_size=1000)
    assert again.layers["0"] == r


def test_nonfinite_values_counted_not_ranged():
    x = torch.tensor([[1.0], [float("nan")], [float("inf")], [-2.0]])
    r = profile_ranges(nn.Sequential(nn.Identity()), x, percentiles=(50,)).layers["0"]
    assert (r.count, r.nonfinite, r.min, r.max) == (4, 2, -2.0, 1.0)


def test_layers_selected_by_name_and_pattern(data):
    model = _net()
    assert list(profile_ranges(model, data, "re:[13]").layers) == ["1", "3"]
    with pytest.raises(TorchFaultError, match=r"no module '4'") as e:
        profile_ranges(model, data, ["4"])
    assert e.value.field == "layers"


@pytest.mark.parametrize("p", [-0.1, 100.5, float("nan"), "50", True])
def test_percentile_outside_0_100_refused(data, p, tmp_path):
    model = _net()
    with pytest.raises(TorchFaultError, match="percentiles") as e:
        profile_ranges(model, data, percentiles=(50, p))
    assert e.value.field == "percentiles"


def test_save_load_round_trip_and_model_binding(data, tmp_path):
    model = _net()
    prof = profile_ranges(model, data, per_channel=True)
    path = prof.save(tmp_path / "r.json")
    back = load_profile(path, model)
    assert back == prof and isinstance(back, RangeProfile)
    # other weights: the tensor is named
    other = _net()
    with torch.no_grad():
        other[3].bias[0] += 1
    with pytest.raises(TorchFaultError, match=r"another model.*'3\.bias': other values") as e:
        load_profile(path, other)
    assert e.value.field == "profile"
    # another architecture: the layer is named
    arch = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh())
    with pytest.raises(TorchFaultError, match=r"layer '1' is a Tanh here, a ReLU"):
        load_profile(path, arch)
    shape = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1))
    with pytest.raises(TorchFaultError, match=r"'0.weight': torch.float32:\(4, 2, 3, 3\) here"):
        prof.check(shape, ["0"])


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"format": "something-else"}', b"\xff\xfe\x00", b"[1, 2]"],
)
def test_corrupt_profile_names_the_file(tmp_path, content):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(TorchFaultError, match=r"bad\.json") as e:
        load_profile(p)
    assert e.value.field == "profile"


def test_tampered_digests_and_missing_file(tmp_path, data):
    model = _net()
    path = profile_ranges(model, data).save(tmp_path / "r.json")
    d = json.loads(path.read_text())
    d["digests"]["0.weight"] = "x"
    path.write_text(json.dumps(d))
    with pytest.raises(TorchFaultError, match=r"r\.json.*fingerprint"):
        load_profile(path)
    with pytest.raises(TorchFaultError, match=r"nope\.json"):
        load_profile(tmp_path / "nope.json")


class _Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        self.lin(x)
        raise RuntimeError("boom")


def test_no_hooks_left_and_parameters_unchanged_even_when_forward_raises():
    model = _Boom()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        profile_ranges(model, torch.randn(4, 2))
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_progress_bar_runs(data, capsys):
    prof = profile_ranges(_net(), data, progress=True, batch_size=10)
    assert prof.num_inputs == 70
