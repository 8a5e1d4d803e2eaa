# SPDX-License-Identifier: MIT
"""Fixtures shared by every test folder."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one intra-op thread (tiny models run faster so, and share the CPU well)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quantized_linear(in_features: int, out_features: int, seed: int = 0) -> nn.Module:
    """A tiny eager-mode quantized model (fbgemm) whose ``fc`` Linear weight is packed qint8."""
    import torch.ao.quantization as tq

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant, self.fc, self.dequant = (
                tq.QuantStub(),
                nn.Linear(in_features, out_features),
                tq.DeQuantStub(),
            )

        def forward(self, x):
            return self.dequant(self.fc(self.quant(x)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = Tiny().eval()
        m.qconfig = tq.get_default_qconfig("fbgemm")
        tq.prepare(m, inplace=True)
        m(torch.randn(16, in_features, generator=torch.Generator().manual_seed(seed)))
        tq.convert(m, inplace=True)
    return m


@pytest.fixture
def quantized_linear() -> Callable[..., nn.Module]:
    """Factory ``f(in_features, out_features, seed=0)`` of tiny quantized models (``model.fc``)."""
    return _quantized_linear
