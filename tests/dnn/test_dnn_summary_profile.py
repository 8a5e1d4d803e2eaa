# SPDX-License-Identifier: MIT
"""Summaries (FLOPs against a hand count) and profiling (tables and a Chrome trace)."""

from __future__ import annotations

import json

import torch
from torch import nn

import torchfault.dnn as dnn


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)  # 3x10x10 -> 8x10x10
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # -> 8x5x5
        self.conv2 = nn.Conv2d(8, 4, kernel_size=3, bias=False)  # -> 4x3x3
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(36, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.conv2(self.pool(self.relu(self.conv(x))))))


def test_flops_match_hand_count() -> None:
    batch = 2
    s = dnn.summarize_model(SmallConvNet(), input_shape=(3, 10, 10), batch=batch)
    rows = {r.name: r for r in s.rows}
    # MACs = output elements x (input channels x kernel area); linear: in x out
    conv_macs = 8 * 10 * 10 * (3 * 3 * 3)
    conv2_macs = 4 * 3 * 3 * (8 * 3 * 3)
    fc_macs = 36 * 5
    assert rows["conv"].macs == batch * conv_macs
    assert rows["conv2"].macs == batch * conv2_macs
    assert rows["fc"].macs == batch * fc_macs
    assert rows["relu"].flops == rows["pool"].flops == 0
    assert s.total_macs == batch * (conv_macs + conv2_macs + fc_macs)
    assert s.total_flops == 2 * s.total_macs
    # shapes, parameters, memory
    assert rows["conv"].output_shape == (2, 8, 10, 10)
    assert rows["pool"].output_shape == (2, 8, 5, 5)
    assert rows["conv2"].output_shape == (2, 4, 3, 3)
    assert rows["conv"].params == 8 * 3 * 9 + 8
    assert rows["conv2"].params == 4 * 8 * 9
    assert s.total_params == 224 + 288 + 185
    assert s.param_bytes == 4 * s.total_params
    assert rows["conv"].activation_bytes == 4 * 2 * 8 * 10 * 10
    assert s.activation_bytes == sum(r.activation_bytes for r in s.rows)
    assert s.input_bytes == 4 * 2 * 3 * 10 * 10


def test_zoo_summary_totals() -> None:
    for name in dnn.list_models():
        model = dnn.create_model(name)
        s = dnn.summarize_model(model)
        assert s.total_params == sum(p.numel() for p in model.parameters())
        assert s.total_macs > 0
        assert s.rows[-1].output_shape == (1, 10)
        assert s.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())
    assert "total params" in str(s)
    json.dumps(s.to_dict())


def test_summary_of_quantized_model_counts_int8_weights() -> None:
    q = dnn.quantize_model(dnn.create_model("lenet"), torch.randn(16, 1, 8, 8))
    s = dnn.summarize_model(q, input_shape=(1, 8, 8))
    rows = {r.name: r for r in s.rows}
    assert rows["fc1"].params == 64 * 120 + 120
    assert s.total_params == sum(p.numel() for p in dnn.create_model("lenet").parameters())


def test_summary_job(tmp_path, capsys) -> None:
    from torchfault.cli import main

    out = tmp_path / "s.json"
    assert main(["summary", "lenet", "--batch", "4", "--json", str(out)]) == 0
    assert "MACs" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["total_params"] == 19754 and data["input_shape"] == [4, 1, 8, 8]


def test_profile_tables_and_chrome_trace(tmp_path) -> None:
    model = dnn.create_model("resnet8")
    trace = tmp_path / "trace.json"
    r = dnn.profile_model(model, model.example_inputs(4), warmup=1, steps=2, trace_path=trace)
    names = [m["name"] for m in r.modules]
    assert names[0] == "(model)" and "layer1.0.conv1" in names and "fc" in names
    assert all(m["calls"] == 2 for m in r.modules)
    root = r.modules[0]["cpu_us"]
    assert all(m["cpu_us"] <= root * 1.001 for m in r.modules)
    ops = {o["name"] for o in r.operators}
    assert any("conv" in o for o in ops) and any("addmm" in o or "linear" in o for o in ops)
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name") == "module::layer1.0.conv1" for e in events)
    # hooks are gone afterwards
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_profile_job(tmp_path, capsys) -> None:
    from torchfault.cli import main

    trace = tmp_path / "t.json"
    assert main(["profile", "mlp", "--steps", "2", "--batch", "8", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "per module" in out and "per operator" in out and trace.is_file()
    assert main(["profile", "mlp", "--steps", "0"]) == 2


def test_model_summaries_and_campaign_summaries_have_distinct_names():
    """dnn.summarize_model summarises a model; analysis.summarize summarises campaign runs;
    dnn.summarize stays the model one (its former name, taught by docs/dnn.md before)."""
    import torchfault.analysis

    assert dnn.summarize is dnn.summarize_model
    assert dnn.summarize_model is not torchfault.analysis.summarize
    assert "summarize_model" in dnn.__all__
