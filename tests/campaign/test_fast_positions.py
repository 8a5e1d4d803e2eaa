# SPDX-License-Identifier: MIT
"""Transcendental element-wise functions on the fast path, at any thread count.

CPU kernels of sigmoid, SiLU, ELU, softplus, mish compute the tail of each thread's share of a
buffer with scalar code that rounds some values differently from the vectorised body, so a
value's bits depend on its place in the batch and on the number of threads. The oracle is the
reference engine (full forward passes at the reference engine's own batch compositions): every
record must be equal, on models whose rows are not vector-aligned, with one and two threads,
batch sizes that put real rows in tails, one input per fault and shuffled input orders.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchfault import Fault
from torchfault.campaign import RunTask, golden_run
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine
from torchfault.campaign._fast._notices import REASONS
from torchfault.faults import fault_space


def key(r):
    nan = lambda v: "nan" if isinstance(v, float) and v != v else v  # noqa: E731
    fields = (r.fault_id, r.input_id, r.outcome, r.golden_top1, r.faulty_top1, r.max_abs_diff)
    return tuple(map(nan, fields)) + (r.error,)


class EffNetLike(nn.Module):
    """MBConv-like: SiLU (in place), a depthwise convolution, squeeze-and-excitation with a
    sigmoid gate, then ELU, softplus and mish; 6 channels of 9x9 (rows of 486 floats)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.SiLU(inplace=True)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.se1 = nn.Linear(6, 3)
        self.se2 = nn.Linear(3, 6)
        self.pw = nn.Conv2d(6, 5, 1)
        self.head = nn.Linear(5, 7)

    def forward(self, x):
        y = self.act(self.bn(self.stem(x)))
        y = F.silu(self.dw(y))
        g = torch.sigmoid(self.se2(F.silu(self.se1(y.mean((2, 3))))))
        y = F.elu(self.pw(y * g[:, :, None, None]))
        y = F.mish(F.softplus(y))
        return self.head(y.mean((2, 3)))


class NarrowMLP(nn.Module):
    """Rows of 7, 9 and 5 floats through sigmoid, SiLU, ELU and log-sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 7)
        self.b = nn.Linear(7, 9)
        self.c = nn.Linear(9, 5)
        self.d = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.sigmoid(self.a(x))
        h = F.elu(nn.functional.silu(self.b(h)))
        return self.d(F.logsigmoid(self.c(h)))


class WideSiLU(nn.Module):
    """SiLU on 5x15x15 maps: 33 rows make a buffer above ATen's threading grain (32768), so two
    threads split it in the middle of row 16, at a place that is not a multiple of a vector."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(F.silu(self.c(x)).mean((2, 3)))


MODELS = {
    "effnet": (EffNetLike, lambda n: torch.randn(n, 3, 9, 9)),
    "mlp": (NarrowMLP, lambda n: torch.randn(n, 4)),
    "effnet-channels-last": (
        lambda: EffNetLike().to(memory_format=torch.channels_last),
        lambda n: torch.randn(n, 3, 9, 9).contiguous(memory_format=torch.channels_last),
    ),
    "wide": (WideSiLU, lambda n: torch.randn(n, 2, 15, 15)),
}


def faults_for(model, x, n, rng):
    sites = [s for s in fault_space(model, x[:2], kinds=("outputs", "parameters")) if s.shape]
    out = []
    for _ in range(n):
        s = rng.choice(sites)
        index = tuple(rng.randrange(d) for d in s.shape)
        out.append(Fault(s.module, s.target, index, (rng.choice((20, 22, 25, 29, 30, 31)),)))
    return out


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_equals_reference_with_transcendental_functions(name, n_threads, threads):
    threads(n_threads)
    rng = random.Random(f"positions-{name}")
    build, make = MODELS[name]
    torch.manual_seed(rng.randrange(1000))
    model = build().eval()
    n = 33 if name == "wide" else 23
    x = make(n)
    faults = faults_for(model, x, 16, rng)
    golden = golden_run(model, x, 256)
    ids = list(range(n))
    shuffled = ids[:]
    rng.shuffle(shuffled)
    tasks = [RunTask(k, (f,), tuple(ids)) for k, f in enumerate(faults)]
    tasks += [RunTask(100 + k, (f,), tuple(shuffled[: 5 + k])) for k, f in enumerate(faults)]
    tasks += [RunTask(200 + k, (f,), (rng.randrange(n),)) for k, f in enumerate(faults)]
    runs = sum(len(t.input_ids) for t in tasks)
    for batch_size in (256, 5):
        fast = FastEngine(model, x, golden, batch_size=batch_size)
        want = ReferenceEngine(model, x, golden, batch_size=batch_size).run(tasks)
        got = fast.run(tasks)
        assert [key(r) for r in got] == [key(r) for r in want], (name, n_threads, batch_size)
        assert fast.stats["fast"] >= runs // 2, (dict(fast.stats), dict(fast.handed_over))
        assert set(fast.handed_over) <= {REASONS["position"], REASONS["golden"]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_analysis_made_in_the_tracing_probe_equals_a_pass_of_its_own(name):
    """The engine finds the functions' operands in trace's probing pass (Positions.watch): the
    same functions covered, with the same operands, layouts and probe values, as in a pass of
    the analysis' own over the same inputs (EffNetLike's SiLU writes its operand in place: its
    values are those it reads, not those after it)."""
    from torchfault.campaign._fast._positions import Positions

    build, make = MODELS[name]
    torch.manual_seed(5)
    model = build().eval()
    x = make(20)
    engine = FastEngine(model, x, golden_run(model, x, 256))
    prog = engine._program()
    assert prog is not None
    got, want = engine._positions, Positions(prog, x[: engine.min_rows])
    assert got is not None and got.ops and list(got.ops) == list(want.ops)
    assert got.others == want.others
    for node, op in got.ops.items():
        other = want.ops[node]
        assert (op.operand, op.inplace, op.perm, op.row_shape, op.dtype) == (
            other.operand,
            other.inplace,
            other.perm,
            other.row_shape,
            other.dtype,
        )
        assert torch.equal(op.probe, other.probe), node.name


def test_rows_in_a_kernel_tail_go_to_the_reference_engine(threads):
    """33 rows of 1125 floats: the buffer's last values form a scalar tail (37125 is not a
    multiple of a vector), and with two threads so do the last values of the first thread's
    share (18563 values): those rows run on the reference engine, the rest fast."""
    torch.manual_seed(5)
    model = WideSiLU().eval()
    x = torch.randn(33, 2, 15, 15)
    golden = golden_run(model, x, 256)
    faults = [Fault("c", "weight", (1, 0, 1, 1), (b,)) for b in (22, 25, 29, 30)]
    tasks = [RunTask(k, (f,), tuple(range(33))) for k, f in enumerate(faults)]
    for n_threads in (1, 2):
        threads(n_threads)
        fast = FastEngine(model, x, golden)
        got = fast.run(tasks)
        assert [key(r) for r in got] == [
            key(r) for r in ReferenceEngine(model, x, golden).run(tasks)
        ]
        handed = fast.handed_over[REASONS["position"]]
        assert 0 < handed <= len(tasks) * 2 * n_threads, (n_threads, dict(fast.handed_over))
        assert fast.stats["fast"] >= len(tasks) * 29


class StridedSigmoid(nn.Module):
    """sigmoid of every other value of a row: a non-contiguous operand, which the engine does not
    compute position-free."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 14)
        self.b = nn.Linear(7, 3)

    def forward(self, x):
        return self.b(torch.sigmoid(self.a(x)[:, ::2]))


def test_functions_not_covered_keep_the_alignment_rule(threads):
    """A non-contiguous operand keeps the old rule (one thread, aligned rows): on 7-float rows
    under two threads the model runs on the reference engine, with the same records."""
    threads(2)
    torch.manual_seed(2)
    model = StridedSigmoid().eval()
    x = torch.randn(17, 4)
    golden = golden_run(model, x, 256)
    fast = FastEngine(model, x, golden)
    tasks = [RunTask(0, (Fault("a", "output", (3,), (30,)),), tuple(range(17)))]
    got = fast.run(tasks)
    assert [key(r) for r in got] == [key(r) for r in ReferenceEngine(model, x, golden).run(tasks)]
    assert [n.name for n in fast._positions.others] == ["sigmoid"]
    assert fast.handed_over == {REASONS["position"]: 17}


def test_tanh_and_log_sigmoid_run_fast_under_two_threads(threads):
    """tanh and log-sigmoid: no value told their two kernel paths apart here; rows are probed
    with the values tried, and every record equals the reference engine's."""
    threads(2)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 5), nn.LogSigmoid()).eval()
    x = torch.randn(19, 4)
    golden = golden_run(model, x, 256)
    fast = FastEngine(model, x, golden)
    rng = random.Random(0)
    faults = faults_for(model, x, 12, rng)
    tasks = [RunTask(k, (f,), tuple(range(19))) for k, f in enumerate(faults)]
    got = fast.run(tasks)
    assert [key(r) for r in got] == [key(r) for r in ReferenceEngine(model, x, golden).run(tasks)]
    assert not fast._positions.others
    assert fast.stats["fast"] >= 12 * 15


class WideFn(nn.Module):
    """A covered function on 5x15x15 maps (33 rows: 37125 values, above one canonical block)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.c = nn.Conv2d(2, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(self.fn(self.c(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "fn",
    [torch.sigmoid, F.silu, F.elu, F.softplus, F.mish, F.gelu, torch.tanh],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_one_call_over_a_whole_value_equals_reference(fn, n_threads, threads):
    """A covered function is computed canonically in one call over the whole value, every
    thread's share padded to a multiple of ALIGN (not block by block), when that was measured to
    give the blocks' bits; the records still equal the reference engine's, and the blocks'
    result is the same words."""
    threads(n_threads)
    torch.manual_seed(5)
    model = WideFn(fn).eval()
    x = torch.randn(33, 2, 15, 15) * 3
    rng = random.Random(7)
    faults = faults_for(model, x, 12, rng)
    golden = golden_run(model, x, 256)
    tasks = [RunTask(k, (f,), tuple(range(33))) for k, f in enumerate(faults)]
    fast = FastEngine(model, x, golden)
    got = fast.run(tasks)
    want = ReferenceEngine(model, x, golden).run(tasks)
    assert [key(r) for r in got] == [key(r) for r in want]
    positions = fast._positions
    assert positions is not None and positions.ops
    node = next(iter(positions.ops))
    assert positions._whole[(node, n_threads)] is True  # the one-call path ran
    op = positions.ops[node]
    v = torch.randn(33, 5, 15, 15, dtype=op.dtype) * 4
    one = positions._canonical(node, op.operand, v)
    positions._whole[(node, n_threads)] = False  # the same value block by block
    blocks = positions._canonical(node, op.operand, v)
    assert torch.equal(one.view(torch.int32), blocks.view(torch.int32))


@pytest.mark.parametrize(
    "fn", [torch.sigmoid, F.silu, F.elu, F.softplus, F.mish], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("n_threads", [2, 3])
def test_one_aligned_call_under_threads_gives_the_blocks_words_where_a_plain_call_does_not(
    fn, n_threads, threads
):
    """Under two and three threads, values of 17 to 231 rows (19,125 to 259,875 floats: one
    share, several, a share cut anywhere) computed in one call padded to aligned shares give the
    words of the canonical blocks, for random values and the function's probe values. The same
    values in one unpadded call (the real kernel's own split) differ from the blocks somewhere:
    what the padding prevents is there to be seen. (Three threads on a 2-CPU machine still
    split the loop three ways: a share of a third of a multiple of ALIGN has a tail.)"""
    threads(n_threads)
    torch.manual_seed(5)
    model = WideFn(fn).eval()
    x = torch.randn(33, 2, 15, 15) * 3
    fast = FastEngine(model, x, golden_run(model, x, 256))
    fast.run([RunTask(0, (Fault("c", "output", (0, 0, 0), (30,)),), (0,))])
    positions = fast._positions
    assert positions is not None and positions.ops
    node = next(iter(positions.ops))
    op = positions.ops[node]
    assert positions._one_call(node, op)
    g = torch.Generator().manual_seed(1)
    plain_differs = 0
    for rows in (17, 29, 33, 58, 59, 97, 130, 231):
        n = rows * 5 * 15 * 15
        for fill in ("random", "probe"):
            if fill == "random":
                flat = torch.randn(n, generator=g) * 4
            else:
                flat = op.probe.repeat(n // op.probe.numel() + 1)[:n].clone()
            v = flat.reshape(rows, 5, 15, 15)
            one = positions._canonical(node, op.operand, v)
            positions._whole[(node, n_threads)] = False
            blocks = positions._canonical(node, op.operand, v)
            positions._whole[(node, n_threads)] = True
            assert torch.equal(one.view(torch.int32), blocks.view(torch.int32)), (rows, fill)
            plain = fn(v)
            plain_differs += not torch.equal(plain.view(torch.int32), blocks.view(torch.int32))
    assert plain_differs > 0
