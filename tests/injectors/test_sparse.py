# SPDX-License-Identifier: MIT
"""Faults in the values and indices of sparse weights, against a dense re-computation.

The oracle rebuilds the weight from Python lists of its components (a flipped value through
``struct``, a flipped index as an integer), decides validity from the layout's documented
invariants with loops, and multiplies densely; the model under ``inject`` must give the same
output, or refuse the forward pass with ``InvalidSparseTensorError`` exactly when the oracle says
the tensor is invalid.
"""

from __future__ import annotations

import random
import struct
import warnings

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, fault_space, inject, inject_ber
from torchfault.errors import TorchFaultError
from torchfault.faults import InvalidSparseTensorError, MemoryFault, MemoryLayout
from torchfault.injectors import inject_memory

LAYOUTS = ["coo", "csr", "csc", "bsr", "bsc"]


def _sparse(w: torch.Tensor, layout: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "coo": lambda: w.to_sparse(),
            "csr": lambda: w.to_sparse_csr(),
            "csc": lambda: w.to_sparse_csc(),
            "bsr": lambda: w.to_sparse_bsr((2, 2)),
            "bsc": lambda: w.to_sparse_bsc((2, 2)),
        }[layout]()


class SparseLinear(nn.Module):
    def __init__(self, layout: str, out_f: int = 6, in_f: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(out_f, in_f, generator=g)
        w[torch.rand(out_f, in_f, generator=g) < 0.6] = 0.0
        self.weight = nn.Parameter(_sparse(w, layout), requires_grad=False)
        self.bias = nn.Parameter(torch.randn(out_f, generator=g), requires_grad=False)

    def forward(self, x):
        w = self.weight
        if w.layout == torch.sparse_bsc:  # no BSC product on the CPU in torch 2.13
            w = w.to_dense()
        return (w @ x.T).T + self.bias


def _flip_float(v: float, bits: tuple[int, ...]) -> float:
    w = struct.unpack("<I", struct.pack("<f", v))[0]
    for b in bits:
        w ^= 1 << b
    return struct.unpack("<f", struct.pack("<I", w))[0]


def _flip_int(v: int, bits: tuple[int, ...]) -> int:
    w = v & (2**64 - 1)
    for b in bits:
        w ^= 1 << b
    return w - 2**64 if w >= 2**63 else w


def oracle(model: SparseLinear, layout: str, comp: str, pos: tuple[int, ...], bits):
    """The dense weight after the fault, or None when the sparse tensor is invalid."""
    s = model.weight.detach()
    rows, cols = s.shape
    if layout == "coo":
        idx = s._indices().tolist()
        vals = s._values().tolist()
    else:
        vals = s.values().tolist()
        if layout in ("csr", "bsr"):
            comp_idx, plain = s.crow_indices().tolist(), s.col_indices().tolist()
        else:
            comp_idx, plain = s.ccol_indices().tolist(), s.row_indices().tolist()
    if comp == "values":
        if layout in ("bsr", "bsc"):
            vals[pos[0]][pos[1]][pos[2]] = _flip_float(vals[pos[0]][pos[1]][pos[2]], bits)
        else:
            vals[pos[0]] = _flip_float(vals[pos[0]], bits)
    elif comp == "indices":
        idx[pos[0]][pos[1]] = _flip_int(idx[pos[0]][pos[1]], bits)
    elif comp in ("crow_indices", "ccol_indices"):
        comp_idx[pos[0]] = _flip_int(comp_idx[pos[0]], bits)
    else:
        plain[pos[0]] = _flip_int(plain[pos[0]], bits)
    dense = [[0.0] * cols for _ in range(rows)]
    if layout == "coo":
        for r, c, v in zip(idx[0], idx[1], vals):
            if not (0 <= r < rows and 0 <= c < cols):
                return None
            dense[r][c] += v
        return torch.tensor(dense)
    bh, bw = (2, 2) if layout in ("bsr", "bsc") else (1, 1)
    n_comp = (rows // bh) if layout in ("csr", "bsr") else cols // bw
    n_plain = (cols // bw) if layout in ("csr", "bsr") else rows // bh
    nnz = len(plain)
    if comp_idx[0] != 0 or comp_idx[-1] != nnz or len(comp_idx) != n_comp + 1:
        return None
    for i in range(n_comp):
        a, b = comp_idx[i], comp_idx[i + 1]
        if not 0 <= b - a <= n_plain:
            return None
        seg = plain[a:b]
        if any(not 0 <= p < n_plain for p in seg) or any(x >= y for x, y in zip(seg, seg[1:])):
            return None
        for k in range(a, b):
            if layout == "csr":
                dense[i][plain[k]] += vals[k]
            elif layout == "csc":
                dense[plain[k]][i] += vals[k]
            elif layout == "bsr":  # block row i, block column plain[k]
                for u in range(bh):
                    for v in range(bw):
                        dense[i * bh + u][plain[k] * bw + v] += vals[k][u][v]
            else:  # bsc: block column i, block row plain[k]
                for u in range(bh):
                    for v in range(bw):
                        dense[plain[k] * bh + u][i * bw + v] += vals[k][u][v]
    return torch.tensor(dense)


def _components(layout: str) -> list[str]:
    return {
        "coo": ["values", "indices"],
        "csr": ["values", "crow_indices", "col_indices"],
        "csc": ["values", "ccol_indices", "row_indices"],
        "bsr": ["values", "crow_indices", "col_indices"],
        "bsc": ["values", "ccol_indices", "row_indices"],
    }[layout]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_faults_match_dense_recomputation(layout):
    model = SparseLinear(layout)
    x = torch.randn(5, 8)
    golden = model(x)
    before = {k: v.clone() for k, v in _comps(model).items()}
    rng = random.Random(layout)
    outcomes = {"moved_or_changed": 0, "invalid": 0}
    for comp in _components(layout):
        t = _comps(model)[comp]
        width = 32 if comp == "values" else 64
        for _ in range(14):
            pos = tuple(rng.randrange(n) for n in t.shape)
            bits = (
                rng.choice([0, 1, 2, 3, 22, 30, 31] if width == 32 else [0, 1, 2, 3, 5, 40, 63]),
            )
            fault = Fault("", f"weight.{comp}", index=pos, bits=bits)
            dense = oracle(model, layout, comp, pos, bits)
            with inject(model, fault):
                if dense is None:
                    with pytest.raises(
                        InvalidSparseTensorError, match=f"after a fault on its {comp}"
                    ):
                        model(x)
                    outcomes["invalid"] += 1
                else:
                    got = model(x)
                    exp = x @ dense.T + model.bias
                    assert torch.allclose(got, exp, rtol=1e-4, atol=1e-4, equal_nan=True), (
                        comp,
                        pos,
                        bits,
                    )
                    outcomes["moved_or_changed"] += not torch.equal(got, golden)
            for k, v in _comps(model).items():
                assert torch.equal(v, before[k])  # restored in place, bit for bit
        assert torch.equal(model(x), golden)
    assert outcomes["invalid"] > 0 and outcomes["moved_or_changed"] > 0


def _comps(model: SparseLinear) -> dict[str, torch.Tensor]:
    from torchfault.faults import stored_tensors

    return {
        k.split(".")[1]: v
        for k, (_, v) in stored_tensors(model, sparse_indices=True).items()
        if "." in k
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fault_space_sees_sparse_components(layout):
    model = SparseLinear(layout)
    sites = {s.target: s for s in fault_space(model, kinds="weights")}
    assert set(sites) == {f"weight.{c}" for c in _components(layout)}
    s = model.weight.detach()
    nnz = s._nnz() if layout == "coo" else s.values().shape[0]
    assert sites["weight.values"].format == "float32"
    assert sites["weight.values"].shape[0] == nnz
    for c in _components(layout)[1:]:
        assert sites[f"weight.{c}"].format == "int64" and sites[f"weight.{c}"].bit_width == 64
    # a fault on the whole sparse tensor names its components
    whole = Fault("", "weight", index=(0, 0), bits=(1,))
    with pytest.raises(TorchFaultError, match="weight.values"), inject(model, whole):
        pass


def test_ber_and_memory_faults_on_sparse_weights_leave_no_trace():
    model = SparseLinear("csr")
    x = torch.randn(3, 8)
    golden = model(x)
    with inject_ber(model, 0.05, kinds="weights", seed=1) as ber:
        model(x)
    assert ber.flips > 0 and torch.equal(model(x), golden)
    # an index word in memory: a memory fault on col_indices goes through the guard
    hit = MemoryFault(module="", target="weight.col_indices", word=0, bit=62)
    with inject_memory(model, hit, MemoryLayout(64), ecc=False) as mi:
        assert mi.resolution.raw[0].target == "weight.col_indices"
        with pytest.raises(InvalidSparseTensorError, match="out of bounds|ncols|col_indices"):
            model(x)
    assert torch.equal(model(x), golden)
