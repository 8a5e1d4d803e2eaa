# SPDX-License-Identifier: MIT
"""The fast engine computes a ReLU or a ``+`` into the buffer of an operand that nothing reads
any more (``_fast/_rows.in_place``): the same bits as the model's out-of-place calls, and never
into a buffer another live value still refers to."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchfault import Fault
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine, FastOptions

N_INPUTS = 16
SPECIAL = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45, 3.4e38, -1.0]


def words(t: torch.Tensor) -> torch.Tensor:
    view = {8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()]
    return t.view(view)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_in_place_kernels_give_the_same_bits(dtype, threads):
    """``x.relu_()`` and ``x.add_(y)`` equal ``torch.relu(x)`` and ``x + y`` word for word, on
    buffers of every length up to a few vectors (the scalar tails) and long ones, with NaN
    payloads, signed zeros, infinities and subnormals."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        nan = torch.tensor([0x7FC00001, -0x3E000000, 0x7F800001], dtype=torch.int32)
        special = torch.cat([torch.tensor(SPECIAL), nan.view(torch.float32)])
        for n in [*range(1, 70), 255, 257, 4096, 70001]:
            g = torch.Generator().manual_seed(n)
            x, y = torch.randn(n, generator=g) * 10, torch.randn(n, generator=g)
            for t in (x, y):
                at = torch.randint(0, n, (min(n, 12),), generator=g)
                t[at] = special[torch.randint(0, special.numel(), (at.numel(),), generator=g)]
            a, b = x.to(dtype), y.to(dtype)
            assert torch.equal(words(torch.relu(a)), words(a.clone().relu_()))
            assert torch.equal(words(a + b), words(a.clone().add_(b)))
    finally:
        torch.set_num_threads(before)


class Aliases(nn.Module):
    """ReLUs and sums whose first operand is read again (through an ``Identity``, a view, the
    same value twice) beside ones whose operand is dead: only the latter may run in place."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.short = nn.Identity()
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.r2 = nn.ReLU()
        self.r3 = nn.ReLU()
        self.head = nn.Linear(6 * 8 * 8, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        s = self.short(y)  # the same tensor as y, read below
        z = self.r1(y)  # y is dead here, but its buffer is s's: not in place
        u = self.c2(z) + s  # c2's output is dead: in place
        w = u + u  # the same value twice: not in place
        t = self.r2(w)
        flat = t.flatten(1)  # a view of t's whole buffer; t is dead after it
        v = flat[:, :192]  # a view of part of it, read below
        q = self.r3(flat)  # its buffer is v's: not in place
        return self.head(q) + v.sum(1, keepdim=True)


@pytest.mark.parametrize(
    "options", [FastOptions(), FastOptions(window=False, channels=False)], ids=["windows", "whole"]
)
def test_in_place_only_where_nothing_else_refers_to_the_buffer(options):
    """Weight and activation faults on a model with aliasing values, with and without windows
    (without them, every node after the site runs on whole values): every record equals the
    reference engine's, and some nodes did run in place."""
    torch.manual_seed(8)
    model = Aliases().eval()
    x = torch.randn(N_INPUTS, 3, 8, 8)
    faults = [
        Fault("c1", "weight", index=(o, 1, 1, 1), bits=(b,)) for o in range(6) for b in (3, 30)
    ]
    faults += [
        Fault("c1", "output", index=(o, 2, 3), bits=(b,)) for o in range(6) for b in (20, 31)
    ]
    faults += [Fault("c2", "bias", index=(o,), bits=(29,)) for o in range(6)]
    golden = golden_run(model, x, 256)
    tasks = [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden, options=options)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    nan = lambda v: "nan" if isinstance(v, float) and v != v else v  # noqa: E731
    fields = lambda r: tuple(map(nan, (r.outcome, r.faulty_top1, r.max_abs_diff, r.error)))  # noqa: E731
    assert [fields(r) for r in got] == [fields(r) for r in want]
    assert fast.stats["reference"] == 0 and fast.stats["in_place"] > 0
