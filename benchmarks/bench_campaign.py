# SPDX-License-Identifier: MIT
"""Campaign throughput: torchfault fast vs reference vs pytorchfi, and scaling over processes / Ray.

Run with ``make bench`` (all benchmarks) or ``python -m benchmarks.bench_campaign``.

For ResNet-20 (CIFAR shape, 3x32x32) and LeNet-5 (CIFAR shape), with fixed seeded weights and 32
seeded inputs, two campaigns of single-bit flips (float32, bit drawn uniformly from 0..31):

- activations: a random element of a random convolution's output (uniform over all elements);
- weights: a random element of a random convolution's weight (uniform over all elements).

Every fault runs on all 32 inputs (one run = one fault on one input). Each campaign is run by
torchfault ``fast`` (for activation faults also with its spatial windows switched off,
``FastOptions(window=False)``: the engine as it was before them), torchfault ``reference`` and
pytorchfi (one declared fault per forward pass
over the batch of 32, bit flips through custom functions, since pytorchfi's own bit-flip model
emulates 8-bit integers), all in this process, one intra-op thread each. One plain forward pass
over the 32 inputs per fault gives the ceiling of any tool that re-runs the whole network per
fault; it is timed as a tool, in the same rounds. The golden pass is computed once and not timed. SDC and DUE counts are checked to be the same for the
three tools. Each campaign is run ``REPEAT`` = 2 times by every tool, in rounds, and each tool's
fastest round counts.

Scaling: the ResNet-20 activation campaign through the ``serial``, ``process`` (1 and 2 workers)
and ``ray`` (local cluster, 2 workers) executors with the fast engine; worker start-up (spawn,
engine build) is excluded by a warm-up chunk.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from torchfault import Fault
from torchfault.campaign import Criterion, RunTask, create_executor
from torchfault.campaign._campaign import build_engine
from torchfault.campaign._engine import ReferenceEngine
from torchfault.campaign._fast import FastEngine, FastOptions
from torchfault.dnn import create_model

N_INPUTS = 32
FAULTS = {"resnet20": {"activation": 96, "weight": 96}, "lenet": {"activation": 400, "weight": 400}}
SEED = 0
#: multiplies the fault counts (``TORCHFAULT_BENCH_SCALE=0.25`` for a quick look)
SCALE = float(os.environ.get("TORCHFAULT_BENCH_SCALE", "1"))
#: rounds over the tools; each tool's figure is its fastest round (the first run of anything in
#: the process pays one-time costs: memory, oneDNN kernels built for each new shape)
REPEAT = 2


# ---------------------------------------------------------------------------- set-up
def build(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(SEED)
    model = create_model(name, dataset="cifar10").eval()
    x = torch.randn(N_INPUTS, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        golden = model(x)
    return model, x, golden


def conv_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Conv2d, tuple[int, ...]]]:
    """Convolutions in execution order, with their output shapes (without the batch)."""
    order: list[tuple[str, nn.Conv2d, tuple[int, ...]]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_hook(lambda m, a, o: order.append((names[m], m, tuple(o.shape[1:]))))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return order


def draw_faults(model: nn.Module, x: torch.Tensor, kind: str, n: int, seed: int) -> list[Fault]:
    rng = random.Random(seed)
    convs = conv_layers(model, x)
    if kind == "activation":
        shapes = [(name, shape) for name, _, shape in convs]
    else:
        shapes = [(name, tuple(m.weight.shape)) for name, m, _ in convs]
    sizes = [int(torch.tensor(s).prod()) for _, s in shapes]
    faults = []
    for _ in range(n):
        name, shape = rng.choices(shapes, weights=sizes)[0]
        index = tuple(rng.randrange(d) for d in shape)
        target = "output" if kind == "activation" else "weight"
        faults.append(Fault(name, target, index=index, bits=(rng.randrange(32),)))
    return faults


def flip(value: float, bit: int) -> float:
    """``value`` (float32) with one bit flipped, through its IEEE-754 word."""
    (word,) = struct.unpack("<I", struct.pack("<f", value))
    return struct.unpack("<f", struct.pack("<I", word ^ (1 << bit)))[0]


def counts(golden: torch.Tensor, outs: list[torch.Tensor]) -> dict[str, int]:
    sdc = due = 0
    g_top = golden.argmax(dim=1)
    for out in outs:
        finite = torch.isfinite(out).all(dim=1)
        top = torch.where(torch.isnan(out), torch.full_like(out, -float("inf")), out).argmax(dim=1)
        due += int((~finite).sum())
        sdc += int(((top != g_top) & finite).sum())
    return {"sdc": sdc, "due": due}


# ---------------------------------------------------------------------------- tools
def run_torchfault(
    engine: str, model, x, golden, faults, window: bool = True
) -> tuple[float, dict[str, int]]:
    tasks = [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)]
    t0 = time.perf_counter()
    if engine == "fast":
        options = FastOptions(window=window)
        records = FastEngine(model, x, golden, Criterion(), 256, options=options).run(tasks)
    else:
        records = ReferenceEngine(model, x, golden, Criterion(), 256).run(tasks)
    seconds = time.perf_counter() - t0
    return seconds, {o: sum(r.outcome == o for r in records) for o in ("sdc", "due")}


def run_pytorchfi(kind: str, model, x, golden, faults) -> tuple[float, dict[str, int]]:
    from pytorchfi.core import fault_injection

    convs = conv_layers(model, x)
    exec_index = {name: i for i, (name, _, _) in enumerate(convs)}  # neuron layers: hook order
    module_index = {
        n: i
        for i, (n, _) in enumerate(
            (n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
        )
    }
    outs = []
    t0 = time.perf_counter()
    pfi = fault_injection(
        model, N_INPUTS, input_shape=[3, 32, 32], layer_types=[nn.Conv2d], use_cuda=False
    )
    for f in faults:
        if kind == "activation":
            hook = _NeuronFlip(pfi, exec_index[f.module], f.index, f.bits[0])
            b = list(range(N_INPUTS))
            faulty = pfi.declare_neuron_fi(
                function=hook,
                layer_num=[exec_index[f.module]] * N_INPUTS,
                batch=b,
                dim1=[f.index[0]] * N_INPUTS,
                dim2=[f.index[1]] * N_INPUTS,
                dim3=[f.index[2]] * N_INPUTS,
            )
        else:
            bit = f.bits[0]
            faulty = pfi.declare_weight_fi(
                function=lambda data, loc, bit=bit: flip(float(data[loc]), bit),
                layer_num=[module_index[f.module]],
                k=[f.index[0]],
                dim1=[f.index[1]],
                dim2=[f.index[2]],
                dim3=[f.index[3]],
            )
        with torch.no_grad():
            outs.append(faulty(x))
    seconds = time.perf_counter() - t0
    return seconds, counts(golden, outs)


class _NeuronFlip:
    """A pytorchfi custom neuron function: flip one bit of one neuron in every batch row."""

    def __init__(self, pfi: Any, layer: int, index: tuple[int, ...], bit: int) -> None:
        self.pfi, self.layer, self.index, self.bit = pfi, layer, index, bit

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self.pfi.get_current_layer() == self.layer:
            c, h, w = self.index
            words = output[:, c, h, w].contiguous().view(torch.int32) ^ torch.tensor(
                (1 << self.bit) - (1 << 32 if self.bit == 31 else 0), dtype=torch.int32
            )
            output[:, c, h, w] = words.view(torch.float32)
        self.pfi.updateLayer()
        if self.pfi.get_current_layer() >= self.pfi.get_total_layers():
            self.pfi.reset_current_layer()


def plain_forward(model, x, golden, faults) -> tuple[float, dict[str, int]]:
    """Seconds of one plain forward pass over ``x`` per fault: what any tool that re-runs the
    whole network for every fault needs at least (timed like the tools, in the same rounds)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in faults:
            model(x)
    return time.perf_counter() - t0, {"sdc": 0, "due": 0}


# ---------------------------------------------------------------------------- scaling
def scaling(model, x, golden, faults) -> list[tuple[str, float]]:
    setup = functools.partial(build_engine, "fast", model, x, golden, Criterion(), 256)
    tasks = [RunTask(k, (f,), tuple(range(N_INPUTS))) for k, f in enumerate(faults)]
    chunks = [tasks[i : i + 8] for i in range(0, len(tasks), 8)]
    warm = [tasks[:1]]
    out = []
    options: list[tuple[str, Callable[[], Any]]] = [
        ("serial", lambda: create_executor("serial")),
        ("process x1", lambda: create_executor("process", workers=1)),
        ("process x2", lambda: create_executor("process", workers=2)),
    ]
    try:
        import ray  # noqa: F401

        options.append(
            ("ray x2 (local)", lambda: create_executor("ray", workers=2, address="local"))
        )
    except ImportError:
        pass
    for label, make in options:
        with make() as ex:
            for _ in ex.map(setup, warm):
                pass
            t0 = time.perf_counter()
            n = sum(len(r) for r in ex.map(setup, chunks))
            out.append((label, n / (time.perf_counter() - t0)))
    return out


# ---------------------------------------------------------------------------- real models
# torchvision is not a dependency: equivalent architectures, small (32x32 inputs), seeded weights
def _conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class _Basic(nn.Module):
    """ResNet-18's basic block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout)
        )
        self.short = (
            nn.Sequential(*_conv_bn(cin, cout, 1, stride))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.short(x))


def _resnet18_like() -> nn.Module:
    layers: list[nn.Module] = [*_conv_bn(3, 32), nn.ReLU(inplace=True)]
    for cin, cout, s in [(32, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2)]:
        layers.append(_Basic(cin, cout, s))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


class _Inverted(nn.Module):
    """MobileNetV2's inverted residual (ReLU6) or, with ``silu``, EfficientNet's MBConv with
    squeeze-and-excitation (SiLU, sigmoid)."""

    def __init__(self, cin: int, cout: int, stride: int, silu: bool) -> None:
        super().__init__()
        mid = cin * 4
        act = nn.SiLU if silu else nn.ReLU6
        self.expand = nn.Sequential(*_conv_bn(cin, mid, 1), act())
        self.dw = nn.Sequential(*_conv_bn(mid, mid, 3, stride, groups=mid), act())
        self.se = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(mid, mid // 4, 1),
                nn.SiLU(),
                nn.Conv2d(mid // 4, mid, 1),
                nn.Sigmoid(),
            )
            if silu
            else None
        )
        self.project = nn.Sequential(*_conv_bn(mid, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        if self.se is not None:
            h = h * self.se(h)
        h = self.project(h)
        return x + h if self.residual else h


def _mobile_like(silu: bool) -> nn.Module:
    act = nn.SiLU() if silu else nn.ReLU6()
    blocks = [
        _Inverted(c, d, s, silu) for c, d, s in [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2)]
    ]
    return nn.Sequential(
        *_conv_bn(3, 16, 3, 2),
        act,
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class _ViT(nn.Module):
    """A small vision transformer: 4x4 patches, two encoder layers (GELU), class token."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 64, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 64) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 65, 64) * 0.02)
        layer = nn.TransformerEncoderLayer(64, 4, 128, 0.0, "gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.encoder(t)[:, 0])


class _ConvNeXt(nn.Module):
    """Two ConvNeXt blocks (7x7 depthwise conv, layer norm, GELU MLP), run channels-last."""

    def __init__(self, c: int = 48) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.dw = nn.ModuleList(nn.Conv2d(c, c, 7, padding=3, groups=c) for _ in range(2))
        self.ln = nn.ModuleList(nn.LayerNorm(c) for _ in range(2))
        self.fc1 = nn.ModuleList(nn.Linear(c, 4 * c) for _ in range(2))
        self.fc2 = nn.ModuleList(nn.Linear(4 * c, c) for _ in range(2))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        for dw, ln, fc1, fc2 in zip(self.dw, self.ln, self.fc1, self.fc2):
            z = ln(dw(y).permute(0, 2, 3, 1))
            y = y + fc2(nn.functional.gelu(fc1(z))).permute(0, 3, 1, 2)
        return self.head(y.mean((2, 3)))


class _LSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def _int8_eager() -> tuple[nn.Module, torch.Tensor]:
    import warnings

    from torch.ao.quantization import DeQuantStub, QuantStub, convert, get_default_qconfig, prepare

    model = nn.Sequential(
        QuantStub(),
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 32 * 32, 10),
        DeQuantStub(),
    ).eval()
    model.qconfig = get_default_qconfig("x86")
    x = torch.randn(REAL_INPUTS, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(model, inplace=True)
        model(x)
        convert(model, inplace=True)
    return model, x


def real_models() -> dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]]:
    """The real-model families of the table: (model in eval mode, seeded inputs)."""
    image = lambda: torch.randn(REAL_INPUTS, 3, 32, 32)  # noqa: E731
    cl = lambda: image().contiguous(memory_format=torch.channels_last)  # noqa: E731
    return {
        "resnet18-like": lambda: (_resnet18_like(), image()),
        "mobilenet_v2-like": lambda: (_mobile_like(silu=False), image()),
        "efficientnet-like (SiLU, SE)": lambda: (_mobile_like(silu=True), image()),
        "small ViT (TransformerEncoder)": lambda: (_ViT(), image()),
        "convnext-like (channels-last)": lambda: (
            _ConvNeXt().to(memory_format=torch.channels_last),
            cl(),
        ),
        "LSTM": lambda: (_LSTM(), torch.randn(REAL_INPUTS, 12, 16)),
        "eager int8 (QuantStub)": _int8_eager,
    }


#: inputs per fault and faults per model of the real-model table
REAL_INPUTS = 16
REAL_FAULTS = 48


def real_model_table(threads: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    """Fast vs reference engine on each real model: runs/s, the share of runs the fast path ran,
    whether every record is identical. Faults: single-bit flips (bit uniform over 0..31) on a
    uniformly drawn element of the outputs, weights and biases (``fault_space``)."""
    from torchfault.campaign import golden_run
    from torchfault.faults import fault_space

    rows = []
    before = torch.get_num_threads()
    try:
        for name, make in real_models().items():
            torch.manual_seed(SEED)
            model, x = make()
            model.eval()
            rng = random.Random(SEED)
            sites = [
                s
                for s in fault_space(model, x[:2], kinds=("outputs", "weights", "biases"))
                if s.shape
            ]
            weights = [math.prod(s.shape) for s in sites]
            faults = []
            for s in rng.choices(sites, weights=weights, k=max(4, int(REAL_FAULTS * SCALE))):
                index = tuple(rng.randrange(d) for d in s.shape)
                faults.append(
                    Fault(s.module, s.target, index, (rng.randrange(min(32, s.bit_width)),))
                )
            tasks = [RunTask(k, (f,), tuple(range(REAL_INPUTS))) for k, f in enumerate(faults)]
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                golden = golden_run(model, x, 256)
                best: dict[str, float] = {}
                records: dict[str, list[Any]] = {}
                share = 0.0
                for _ in range(REPEAT):
                    for engine in ("fast", "reference"):
                        t0 = time.perf_counter()
                        if engine == "fast":
                            eng: Any = FastEngine(model, x, golden, Criterion(), 256)
                        else:
                            eng = ReferenceEngine(model, x, golden, Criterion(), 256)
                        got = eng.run(tasks)
                        sec = time.perf_counter() - t0
                        best[engine] = min(sec, best.get(engine, sec))
                        records[engine] = [
                            (r.fault_id, r.input_id, r.outcome, r.faulty_top1) for r in got
                        ]
                        if engine == "fast":
                            share = eng.stats["fast"] / max(len(got), 1)
                            why = eng.handed_over.most_common(1)
                runs = len(tasks) * REAL_INPUTS
                rows.append(
                    {
                        "model": name,
                        "threads": n_threads,
                        "fast": runs / best["fast"],
                        "reference": runs / best["reference"],
                        "share": share,
                        "identical": records["fast"] == records["reference"],
                        "why": why[0][0] if why else "",
                    }
                )
    finally:
        torch.set_num_threads(before)
    return rows


def print_real_model_table() -> None:
    rows = real_model_table()
    print("\n### Real models: fast vs reference engine\n")
    print(
        "| model | threads | fast runs/s | reference runs/s | fast / reference | runs on the fast path | identical records | main reason for the reference |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['threads']} | {r['fast']:,.0f} | {r['reference']:,.0f} | "
            f"{r['fast'] / r['reference']:.2f}x | {r['share']:.0%} | "
            f"{'yes' if r['identical'] else 'NO'} | {r['why']} |"
        )
    for t in sorted({r["threads"] for r in rows}):
        ratios = [r["fast"] / r["reference"] for r in rows if r["threads"] == t]
        gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        print(
            f"\n- {t} thread(s): geometric mean fast / reference {gm:.2f}x over {len(ratios)} models"
        )


# ---------------------------------------------------------------------------- main
def main() -> None:
    """Print the campaign benchmark as Markdown tables."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _main()
    finally:
        torch.set_num_threads(threads)


def _main() -> None:
    print("## Campaigns\n")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}; 1 intra-op thread; {N_INPUTS} inputs per fault\n"
    )
    print("| model | faults | tool | runs/s | vs pytorchfi | vs plain forward | SDC | DUE |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    goals = []
    for name in ("resnet20", "lenet"):
        model, x, golden = build(name)
        for kind in ("activation", "weight"):
            n = max(4, int(FAULTS[name][kind] * SCALE))
            faults = draw_faults(model, x, kind, n, seed=len(name) * 10 + len(kind))
            runs = n * N_INPUTS
            args = (model, x, golden, faults)
            tools: dict[str, Callable[[], tuple[float, dict[str, int]]]] = {
                "torchfault fast": functools.partial(run_torchfault, "fast", *args)
            }
            if kind == "activation":
                tools["torchfault fast, no windows"] = functools.partial(
                    run_torchfault, "fast", *args, window=False
                )
            tools["torchfault reference"] = functools.partial(run_torchfault, "reference", *args)
            tools["pytorchfi"] = functools.partial(run_pytorchfi, kind, *args)
            tools["plain forward"] = functools.partial(plain_forward, *args)
            results: dict[str, tuple[float, dict[str, int]]] = {}
            for _ in range(REPEAT):  # rounds over all tools; each keeps its fastest round
                for tool, fn in tools.items():
                    sec, c = fn()
                    results[tool] = (min(sec, results.get(tool, (sec, c))[0]), c)
            ceiling = runs / results.pop("plain forward")[0]
            base = runs / results["pytorchfi"][0]
            for tool, (sec, c) in results.items():
                rate = runs / sec
                print(
                    f"| {name} | {kind} x{n} | {tool} | {rate:,.0f} | {rate / base:.1f}x | "
                    f"{rate / ceiling:.2f}x | {c['sdc']} | {c['due']} |"
                )
            print(
                f"| {name} | | plain forward (ceiling) | {ceiling:,.0f} | {ceiling / base:.1f}x | 1.00x | | |"
            )
            fast_rate = runs / results["torchfault fast"][0]
            same = all(c == results["pytorchfi"][1] for _, c in results.values())
            need = 5.0 if kind == "activation" else 20.0
            ratio = fast_rate / base
            line = f"{name} {kind}: fast = {ratio:.1f}x pytorchfi (goal {need:.0f}x: {'met' if ratio >= need else 'NOT met'})"
            if kind == "activation":
                above = fast_rate >= ceiling
                line += f"; {fast_rate / ceiling:.2f}x the plain forward (goal > 1: {'met' if above else 'NOT met'})"
                plain = results["torchfault fast, no windows"][0]
                line += f"; windows: {plain / results['torchfault fast'][0]:.2f}x fast without them"
            line += f"; same SDC/DUE counts as pytorchfi and reference: {'yes' if same else 'NO'}"
            goals.append(line)
    print()
    for g in goals:
        print(f"- {g}")
    print("\n### Scaling (ResNet-20 activation campaign, fast engine)\n")
    model, x, golden = build("resnet20")
    faults = draw_faults(model, x, "activation", 96, seed=7)
    print("| executor | runs/s |")
    print("|---|---:|")
    for label, rate in scaling(model, x, golden, faults):
        print(f"| {label} | {rate:,.0f} |")
    print_real_model_table()


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--real"]:  # the real-model table alone
        print_real_model_table()
    else:
        main()
