# SPDX-License-Identifier: MIT
"""PE faults against a pure-Python systolic-array model: loops over PEs, tiles and steps, the
convolution lowered by hand (no unfold), products and partial sums faulted through ``struct``."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.injectors import (
    PEFault,
    SystolicArray,
    inject_systolic,
    pe_faults,
    pe_map,
    systolic_campaign,
)


def f32(v: float) -> float:
    """Round to float32 (overflow to infinity, as float32 arithmetic does)."""
    with np.errstate(over="ignore"):
        return float(np.float32(v))


def fault_value(v: float, bits, model: str) -> float:
    w = struct.unpack("<I", struct.pack("<f", v))[0]
    m = sum(1 << b for b in bits)
    w = w ^ m if model == "bit_flip" else (w | m if model == "stuck_at_1" else w & ~m)
    return struct.unpack("<f", struct.pack("<I", w))[0]


def lower(module: nn.Module, x: torch.Tensor):
    """A (P x K) and W (O x K) as nested lists, by loops."""
    if isinstance(module, nn.Linear):
        return x.tolist(), module.weight.tolist()
    B, Cin, H, Wd = x.shape
    kh, kw = module.kernel_size
    sh, sw = module.stride
    ph, pw = module.padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (Wd + 2 * pw - kw) // sw + 1
    xs = x.tolist()
    A = []
    for b in range(B):
        for i in range(Ho):
            for j in range(Wo):
                row = []
                for c in range(Cin):
                    for u in range(kh):
                        for v in range(kw):
                            y, z = i * sh + u - ph, j * sw + v - pw
                            row.append(xs[b][c][y][z] if 0 <= y < H and 0 <= z < Wd else 0.0)
                A.append(row)
    Wt = [[w for ch in o for r in ch for w in r] for o in module.weight.tolist()]
    return A, Wt


def simulate(module, x, array: SystolicArray, fault: PEFault | None):
    """out[p][o] (no bias) computed PE by PE."""
    A, W = lower(module, x)
    P, K, n_out = len(A), len(A[0]), len(W)
    R, C = array.rows, array.cols
    out = [[0.0] * n_out for _ in range(P)]

    def mult(r, c, a, w):
        v = f32(a * w)
        if fault and fault.unit == "multiplier" and (fault.row, fault.col) == (r, c):
            v = fault_value(v, fault.bits, fault.model)
        return v

    def acc(r, c, v):
        v = f32(v)
        if fault and fault.unit == "accumulator" and (fault.row, fault.col) == (r, c):
            v = fault_value(v, fault.bits, fault.model)
        return v

    if array.dataflow == "weight_stationary":
        tiles = math.ceil(K / R)
        for o in range(n_out):
            c = o % C
            for p in range(P):
                total = 0.0
                for t in range(tiles):
                    psum = 0.0
                    for r in range(R):
                        k = t * R + r
                        a, w = (A[p][k], W[o][k]) if k < K else (0.0, 0.0)  # zero padding
                        psum = acc(r, c, psum + mult(r, c, a, w))
                    total = f32(total + psum)
                out[p][o] = total
    else:
        for p in range(P):
            for o in range(n_out):
                r, c = p % R, o % C
                s = 0.0
                for k in range(K):
                    s = acc(r, c, s + mult(r, c, A[p][k], W[o][k]))
                out[p][o] = s
    return out


def as_gemm(module, y):
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    b, o, h, w = y.shape
    return y.permute(0, 2, 3, 1).reshape(b * h * w, o)


def _layers():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5, bias=True)
    conv = nn.Conv2d(2, 3, 3, stride=1, padding=1)
    return [("linear", lin, torch.randn(3, 7)), ("conv", conv, torch.randn(2, 2, 4, 4))]


FAULTS = [
    ("multiplier", (30,), "bit_flip"),
    ("multiplier", (31,), "bit_flip"),
    ("multiplier", (22, 23), "stuck_at_1"),
    ("accumulator", (30,), "bit_flip"),
    ("accumulator", (26,), "stuck_at_0"),
    ("accumulator", (24,), "stuck_at_1"),
]


@pytest.mark.parametrize("dataflow", ["weight_stationary", "output_stationary"])
@pytest.mark.parametrize("layer", [0, 1], ids=["linear", "conv"])
@pytest.mark.parametrize("unit,bits,model", FAULTS)
def test_pe_faults_match_a_pe_by_pe_model(dataflow, layer, unit, bits, model):
    _, mod, x = _layers()[layer]
    array = SystolicArray(3, 2, dataflow)
    with torch.no_grad():
        golden = as_gemm(mod, mod(x))
    clean = torch.tensor(simulate(mod, x, array, None))
    bias = mod.bias.detach()
    assert torch.allclose(clean + bias, golden, atol=1e-5)
    changed = 0
    for r, c in [(0, 0), (2, 1), (1, 0)]:
        f = PEFault("", r, c, unit, bits, model)
        exp = torch.tensor(simulate(mod, x, array, f))
        with torch.no_grad(), inject_systolic(mod, f, array):
            got = as_gemm(mod, mod(x)) - bias
        hit = exp != clean
        changed += int(hit.sum())
        # the PE's own outputs change as the model says; no other output changes at all
        assert torch.equal(got[~hit], (golden - bias)[~hit])
        assert torch.allclose(got, exp, rtol=1e-4, atol=1e-4, equal_nan=True), (r, c)
        if dataflow == "output_stationary":
            rows = torch.arange(len(clean)) % 3 == r
            cols = torch.arange(clean.shape[1]) % 2 == c
            assert not hit[~rows].any() and not hit[:, ~cols].any()
    assert changed > 0
    with torch.no_grad():
        assert torch.equal(as_gemm(mod, mod(x)), golden)  # hooks removed


def test_campaign_over_pes_and_bad_input():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.randn(5, 1, 6, 6)
    array = SystolicArray(4, 4, "weight_stationary")
    faults = pe_faults(array, "0", units=("multiplier",), bits=(30,))
    runs = systolic_campaign(net, x, array, faults)
    assert len(runs) == 16 and all(sum(r["outcomes"].values()) == 5 for r in runs)
    assert any(r["outcomes"].get("masked", 0) < 5 for r in runs)
    sdc = pe_map(runs, array, "sdc")
    for r in runs:  # one fault per PE here: the map is that fault's SDC fraction
        f = r["fault"]
        assert sdc[f["row"], f["col"]] == r["outcomes"].get("sdc", 0) / 5
    with pytest.raises(TorchFaultError, match="outside the 4 x 4 array"):
        inject_systolic(net, PEFault("0", 4, 0), array).__enter__()
    with pytest.raises(TorchFaultError, match="runs Linear and Conv2d layers, not ReLU"):
        inject_systolic(net, PEFault("1", 0, 0), array).__enter__()
    with pytest.raises(TorchFaultError, match="unknown module 'O'. Layers: \\['0', '3'\\]"):
        inject_systolic(net, PEFault("O", 0, 0), array).__enter__()
    with pytest.raises(
        TorchFaultError, match="dataflow must be one of.*Did you mean 'output_stationary'"
    ):
        SystolicArray(2, 2, "output_stationery")
    with pytest.raises(TorchFaultError, match="unit must be one of"):
        PEFault("0", 0, 0, "adder")
    with pytest.raises(TorchFaultError, match="bit 32 is out of range"):
        inject_systolic(net, PEFault("0", 0, 0, bits=(32,)), array).__enter__()
    grouped = nn.Conv2d(2, 2, 3, groups=2)
    with pytest.raises(TorchFaultError, match="groups=1"):
        inject_systolic(grouped, PEFault("", 0, 0), array).__enter__()


def test_no_hook_left_when_the_model_raises():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()

    class Boom(Exception):
        pass

    def explode(m, a, o):
        raise Boom

    h = net[2].register_forward_hook(explode)
    with pytest.raises(Boom), inject_systolic(net, PEFault("0", 0, 0), SystolicArray(2, 2)):
        assert len(net[0]._forward_hooks) == 1
        net(torch.randn(3, 4))
    h.remove()
    assert not net[0]._forward_hooks and not net[2]._forward_hooks
