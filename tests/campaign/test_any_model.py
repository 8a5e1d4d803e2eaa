# SPDX-License-Identifier: MIT
"""Campaigns on models of any input and output structure, against an independent oracle.

The oracle re-runs each fault by hand (``inject`` around one forward pass over the same 16
inputs, the batch the reference engine runs) and classifies the run with plain torch code written
here; the campaign's records must agree with it, and both engines must give identical records.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, inject, run_campaign
from torchfault.campaign import CriterionError, evaluate, make_criterion
from torchfault.errors import ConfigError, TorchFaultError

N = 16  # the engines' smallest pass: the oracle's batch is the reference engine's batch


def oracle_outputs(model, call, faults):
    """Per fault, the model's output on all inputs under it (or the exception)."""
    outs = []
    with torch.no_grad():
        for f in faults:
            with inject(model, [f]):
                try:
                    outs.append(call())
                except Exception as exc:  # noqa: BLE001
                    outs.append(exc)
    return outs


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(
        (a.contiguous().view(torch.int32) == b.contiguous().view(torch.int32)).all()
    )


def weight_faults(model, names, bits=(30, 22, 3), per=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    params = dict(model.named_parameters())
    for name in names:
        mod, _, target = name.rpartition(".")
        shape = params[name].shape
        for _ in range(per):
            idx = tuple(int(torch.randint(s, (1,), generator=g)) for s in shape)
            for b in bits:
                out.append(Fault(mod, target, index=idx, bits=(b,)))
    return out


def same_records(a, b):
    """Run records equal in every field but the time taken."""
    return [dataclasses.replace(r, seconds=None) for r in a.runs] == [
        dataclasses.replace(r, seconds=None) for r in b.runs
    ]


def by_key(result):
    return {(r.fault_id, r.input_id): r for r in result.runs}


# ----------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 60, (N, 8))
    mask = torch.ones(N, 8, dtype=torch.int64)
    mask[::2, 5:] = 0  # half the inputs padded: the attention mask matters
    return model, {"input_ids": ids, "attention_mask": mask}


def test_bert_with_attention_mask_matches_oracle_and_both_engines(bert):
    model, inputs = bert
    faults = weight_faults(
        model, ["classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"]
    )
    faults.append(Fault("bert.pooler.dense", "output", index=(3,), bits=(30,)))
    ref = run_campaign(model, inputs, faults, criterion="top1", output="logits", batch_size=32)
    fast = run_campaign(
        model, inputs, faults, criterion="top1", output="logits", engine="fast", batch_size=32
    )
    assert same_records(ref, fast)
    with torch.no_grad():
        golden = model(**inputs).logits.detach()
    outs = oracle_outputs(model, lambda: model(**inputs).logits, faults)
    got = by_key(ref)
    counts = {"masked": 0, "sdc": 0, "benign": 0}
    for k, out in enumerate(outs):
        for i in range(N):
            if not bits_equal(out[i], golden[i]):
                want = "sdc" if int(out[i].argmax()) != int(golden[i].argmax()) else "benign"
                if not torch.isfinite(out[i]).all():
                    want = "due"
            else:
                want = "masked"
            assert got[(k, i)].outcome == want, (k, i)
            counts[want] = counts.get(want, 0) + 1
    assert counts["sdc"] > 0 and counts["masked"] > 0  # the test sees both kinds of outcome
    # the mask matters: without it the golden logits differ
    unmasked = model(input_ids=inputs["input_ids"]).logits.detach()
    assert not torch.equal(unmasked[::2], golden[::2])


def test_fast_engine_hands_structures_to_reference_and_says_why(bert, caplog):
    from torchfault.campaign import golden_run
    from torchfault.campaign._engine import make_engine
    from torchfault.campaign._structure import as_batched

    model, inputs = bert
    x = as_batched(inputs)
    golden = golden_run(model, x)
    eng = make_engine("fast", model, x, golden, make_criterion("top1", output="logits"), 32)
    assert type(eng).__name__ == "HandedOverEngine" and "inputs" in eng.reason
    from torchfault.campaign import RunTask

    eng.run([RunTask(0, (Fault("classifier", "weight", (0, 0), (30,)),), (0, 1, 2))])
    assert eng.stats == {"reference": 3, "handed_over": 3}


def test_gpt2_tokens_criterion_counts_changed_tokens(bert):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=40, n_positions=16, use_cache=False
    )
    cfg.bos_token_id = cfg.eos_token_id = 0
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 40, (N, 6))
    faults = weight_faults(
        model, ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"], per=3
    )
    res = run_campaign(model, {"input_ids": ids}, faults, criterion="tokens", output="logits")
    with torch.no_grad():
        golden = model(input_ids=ids).logits.detach()
    outs = oracle_outputs(model, lambda: model(input_ids=ids).logits, faults)
    got = by_key(res)
    sdc = 0
    for k, out in enumerate(outs):
        for i in range(N):
            changed = int((out[i].argmax(-1) != golden[i].argmax(-1)).sum())
            r = got[(k, i)]
            assert dict(r.metrics)["changed_tokens"] == changed
            if bits_equal(out[i], golden[i]):
                assert r.outcome == "masked"
            elif not torch.isfinite(out[i]).all():
                assert r.outcome == "due"
            else:
                assert r.outcome == ("sdc" if changed > 0 else "benign")
            sdc += r.outcome == "sdc"
    assert sdc > 0
    # more than k tokens: with k=2 only runs with 3+ changed tokens stay SDC
    res2 = run_campaign(
        model, {"input_ids": ids}, faults, criterion=make_criterion("tokens", k=2, output="logits")
    )
    for r in res2.runs:
        if r.outcome in ("sdc", "benign"):
            assert (r.outcome == "sdc") == (dict(r.metrics)["changed_tokens"] > 2)
    summary = res.metrics_summary()
    assert summary["changed_tokens"]["all"]["n"] == len(res.runs)
    # top1 over a T x V map is refused with a warning that names tokens
    with pytest.warns(UserWarning, match="tokens"):
        run_campaign(model, {"input_ids": ids}, faults[:1], output="logits")


# ----------------------------------------------------------------------------- recurrent, encoder
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_recurrent_sequence_first_tuple_output(cls):
    torch.manual_seed(2)
    model = cls(input_size=5, hidden_size=6, num_layers=1).eval()  # (T, N, F): batch dim 1
    x = torch.randn(7, N, 5)
    faults = weight_faults(model, ["weight_hh_l0", "bias_ih_l0"], bits=(30, 10), per=3)
    res = run_campaign(
        model, x, faults, criterion="tolerance", tolerance=1e-3, output=0, batch_dim=1
    )
    with torch.no_grad():
        golden = model(x)
    outs = oracle_outputs(model, lambda: model(x), faults)
    got = by_key(res)
    for k, out in enumerate(outs):
        for i in range(N):
            # masked compares every tensor of the output: the sequence and the final state(s)
            g_all = [
                golden[0][:, i],
                *[t[:, i] for t in (golden[1] if cls is nn.LSTM else (golden[1],))],
            ]
            f_all = [out[0][:, i], *[t[:, i] for t in (out[1] if cls is nn.LSTM else (out[1],))]]
            if all(bits_equal(a.detach(), b.detach()) for a, b in zip(g_all, f_all)):
                want = "masked"
            elif not torch.isfinite(out[0][:, i]).all():
                want = "due"
            else:
                moved = float((out[0][:, i] - golden[0][:, i]).abs().max())
                want = "sdc" if moved > 1e-3 else "benign"
            assert got[(k, i)].outcome == want, (k, i, got[(k, i)])
    assert {r.outcome for r in res.runs} >= {"benign", "sdc"}
    fast = run_campaign(
        model,
        x,
        faults,
        criterion="tolerance",
        tolerance=1e-3,
        output=0,
        batch_dim=1,
        engine="fast",
    )
    assert same_records(fast, res)


def test_transformer_encoder_regression_relative_error():
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False).eval()
    x = torch.randn(N, 5, 8)
    faults = weight_faults(model, ["layers.0.linear2.weight", "layers.0.norm1.weight"], per=3)
    res = run_campaign(model, x, faults, criterion=make_criterion("regression", threshold=0.05))
    with torch.no_grad():
        golden = model(x).detach()
    outs = oracle_outputs(model, lambda: model(x), faults)
    got = by_key(res)
    for k, out in enumerate(outs):
        for i in range(N):
            rel = float((out[i].double() - golden[i].double()).norm() / golden[i].double().norm())
            r = got[(k, i)]
            if bits_equal(out[i], golden[i]):
                assert r.outcome == "masked"
            elif torch.isfinite(out[i]).all():
                assert dict(r.metrics)["rel_error"] == pytest.approx(rel, rel=1e-9)
                assert r.outcome == ("sdc" if rel > 0.05 else "benign")
    fast = run_campaign(
        model, x, faults, criterion=make_criterion("regression", threshold=0.05), engine="fast"
    )
    assert same_records(fast, res)


# ----------------------------------------------------------------------------- segmentation
class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def test_segmentation_fraction_and_miou_drop():
    torch.manual_seed(4)
    model = TinySeg().eval()
    x = torch.randn(N, 3, 6, 6)
    faults = weight_faults(model, ["conv2.weight", "conv1.bias"], bits=(30, 26), per=3)
    crit = make_criterion("segmentation", fraction=0.1)
    res = run_campaign(model, x, faults, criterion=crit)
    with torch.no_grad():
        golden = model(x).detach()
    outs = oracle_outputs(model, lambda: model(x), faults)
    got = by_key(res)
    for k, out in enumerate(outs):
        for i in range(N):
            gc, fc = golden[i].argmax(0), out[i].argmax(0)
            frac = float((gc != fc).float().mean())
            ious = []
            for c in range(4):
                u = int(((gc == c) | (fc == c)).sum())
                if u:
                    ious.append(int(((gc == c) & (fc == c)).sum()) / u)
            r = got[(k, i)]
            m = dict(r.metrics)
            assert m["changed_pixels"] == pytest.approx(frac)
            assert m["miou_drop"] == pytest.approx(1 - sum(ious) / len(ious))
            if not bits_equal(out[i], golden[i]) and torch.isfinite(out[i]).all():
                assert r.outcome == ("sdc" if frac > 0.1 else "benign")
    assert any(r.outcome == "sdc" for r in res.runs)
    assert any(r.outcome == "benign" and dict(r.metrics)["changed_pixels"] > 0 for r in res.runs)
    with pytest.warns(UserWarning, match="segmentation"):
        run_campaign(model, x, faults[:1])  # top1 over a flattened map


# ----------------------------------------------------------------------------- detection
class TinyDetector(nn.Module):
    """Four anchor boxes per image; a linear head scores 3 classes per anchor; detections are
    the anchors whose best score passes 0.5, shifted by a regressed offset (torchvision style:
    one dict of boxes/labels/scores per image)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(8, 16)
        self.cls = nn.Linear(16, 4 * 3)
        self.reg = nn.Linear(16, 4 * 4)
        self.register_buffer(
            "anchors",
            torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20.0]]),
        )

    def forward(self, x):
        h = torch.relu(self.features(x))
        scores = torch.sigmoid(self.cls(h)).reshape(-1, 4, 3)
        offsets = self.reg(h).reshape(-1, 4, 4)
        out = []
        for s, o in zip(scores, offsets):
            best, label = s.max(dim=1)
            keep = best > 0.5
            out.append(
                {"boxes": (self.anchors + o)[keep], "labels": label[keep], "scores": best[keep]}
            )
        return out


def oracle_match(g, f, iou_t=0.5):
    """Greedy matching by golden score, written independently of the library."""

    def iou(a, b):
        x1, y1 = max(a[0], b[0]), max(a[1], b[1])
        x2, y2 = min(a[2], b[2]), min(a[3], b[3])
        inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
        u = area(a) + area(b) - inter
        return inter / u if u > 0 else 0.0

    gb, fb = g["boxes"].tolist(), f["boxes"].tolist()
    order = sorted(range(len(gb)), key=lambda j: -float(g["scores"][j]))
    used, pairs = set(), []
    for gi in order:
        cands = [(iou(gb[gi], fb[fj]), fj) for fj in range(len(fb)) if fj not in used]
        cands = [c for c in cands if c[0] >= iou_t]
        if cands:
            best = max(cands, key=lambda c: (c[0], -c[1]))
            used.add(best[1])
            pairs.append((gi, best[1]))
    changed = sum(int(g["labels"][a]) != int(f["labels"][b]) for a, b in pairs)
    return len(fb) - len(pairs), len(gb) - len(pairs), changed


def test_detector_list_of_dicts_matches_oracle():
    torch.manual_seed(5)
    model = TinyDetector().eval()
    x = torch.randn(N, 8)
    faults = weight_faults(
        model, ["cls.weight", "reg.bias", "features.weight"], bits=(30, 24), per=3
    )
    res = run_campaign(model, x, faults, criterion="detection")
    with torch.no_grad():
        golden = model(x)
    outs = oracle_outputs(model, lambda: model(x), faults)
    got = by_key(res)
    seen = set()
    for k, out in enumerate(outs):
        for i in range(N):
            r = got[(k, i)]
            same = all(
                golden[i][key].shape == out[i][key].shape
                and torch.equal(golden[i][key], out[i][key])
                for key in ("boxes", "labels", "scores")
            )
            if same:
                assert r.outcome == "masked"
                continue
            if not all(torch.isfinite(out[i][key]).all() for key in ("boxes", "scores")):
                assert r.outcome == "due"
                continue
            want = oracle_match(golden[i], out[i])
            m = dict(r.metrics)
            assert (m["appeared"], m["disappeared"], m["class_changed"]) == want
            assert r.outcome == ("sdc" if any(want) else "benign")
            seen.add(r.outcome)
    assert seen == {"sdc", "benign"}
    with pytest.raises(TorchFaultError, match="detection"):
        run_campaign(model, x, faults[:1], criterion="top1")
    # the reference engine runs it for the fast engine, with the same records
    assert same_records(run_campaign(model, x, faults, criterion="detection", engine="fast"), res)


# ----------------------------------------------------------------------------- criteria misfits
def test_one_output_regression_model_with_top1_names_regression():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(N, 4)
    faults = [Fault("2", "weight", index=(0, 0), bits=(30,))]
    with pytest.raises(TorchFaultError, match="regression"):
        run_campaign(model, x, faults)
    res = run_campaign(model, x, faults, criterion="regression")
    assert res.outcome_counts()["sdc"] > 0


def test_callable_criterion_with_metrics_and_a_raising_one():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(N, 4)
    faults = [Fault("0", "weight", index=(0, j), bits=(b,)) for j in range(4) for b in (30, 2)]

    def crit(golden, faulty):
        assert golden.shape == (3,)  # one input's output, batch dim removed
        err = float((faulty - golden).abs().sum())
        return err > 1.0, {"l1": err}

    res = run_campaign(model, x, faults, criterion=crit)
    with torch.no_grad():
        golden = model(x).detach()
    outs = oracle_outputs(model, lambda: model(x), faults)
    for r in res.runs:
        out = outs[r.fault_id][r.input_id]
        err = float((out - golden[r.input_id]).abs().sum())
        if r.outcome == "masked":
            assert err == 0 and not getattr(r, "metrics", ())
        else:
            assert dict(r.metrics)["l1"] == pytest.approx(err)
            assert r.outcome == ("sdc" if err > 1.0 else "benign")
    assert set(res.metrics_summary()["l1"]) >= {"all", "sdc"}

    def broken(golden, faulty):
        if not torch.equal(golden, faulty):
            raise KeyError("oops")
        return "benign"

    with pytest.raises(CriterionError, match="broken.*raised.*not an outcome"):
        run_campaign(model, x, faults, criterion=broken)

    def raises_on_golden(golden, faulty):
        raise ValueError("no")

    with pytest.raises(TorchFaultError, match="outcome.criterion.*golden output"):
        run_campaign(model, x, faults, criterion=raises_on_golden)

    with pytest.raises(CriterionError, match="returned 'maybe'"):
        run_campaign(
            model, x, faults, criterion=lambda g, f: "maybe" if not torch.equal(g, f) else "benign"
        )


def test_criterion_from_file_and_registry_plugin(tmp_path):
    from torchfault.campaign import CRITERIA, Verdict, register_criterion

    path = tmp_path / "crit.py"
    path.write_text(
        "def big(golden, faulty):\n    return float((faulty - golden).abs().max()) > 1.0\n"
    )
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(N, 4)
    faults = [Fault("0", "weight", index=(1, j), bits=(30,)) for j in range(4)]
    by_file = run_campaign(model, x, faults, criterion=f"{path}:big")
    by_fn = run_campaign(model, x, faults, criterion=lambda g, f: float((f - g).abs().max()) > 1.0)
    assert [r.outcome for r in by_file.runs] == [r.outcome for r in by_fn.runs]

    @register_criterion("any_change_test", description="Any element changed.")
    def any_change(g, f, crit):
        return Verdict((g != f).reshape(len(g), -1).any(dim=1))

    try:
        res = run_campaign(model, x, faults, criterion="any_change_test")
        assert all(r.outcome in ("masked", "sdc", "due") for r in res.runs)
    finally:
        CRITERIA.remove("any_change_test")


def test_bad_structures_are_clear_errors(bert):
    bmodel, binputs = bert
    with pytest.raises(TorchFaultError, match=r"set outcome.output.*'logits'"):
        run_campaign(bmodel, binputs, [Fault("classifier", "weight", (0, 0), (30,))])
    model = nn.Sequential(nn.Linear(4, 3))
    faults = [Fault("0", "weight", index=(0, 0), bits=(30,))]
    with pytest.raises(TorchFaultError, match="do not batch.*a: 4.*b: 3"):
        run_campaign(model, {"a": torch.zeros(4, 4), "b": torch.zeros(3, 4)}, faults)

    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.fc(x)}

    with pytest.raises(TorchFaultError, match="outcome.output.*no key 'logit'.*logits"):
        run_campaign(
            Dict(), torch.zeros(N, 4), [Fault("fc", "weight", (0, 0), (30,))], output="logit"
        )
    with pytest.raises(TorchFaultError, match="outcome.output"):
        run_campaign(model, torch.zeros(N, 4), faults, output="logits")
    with pytest.raises(ConfigError, match="device.*cuda:7"):
        run_campaign(model, torch.zeros(N, 4), faults, device="cuda:7")
    with pytest.raises(ConfigError, match="not a device"):
        run_campaign(model, torch.zeros(N, 4), faults, device="gpu0")


def test_evaluate_masked_compares_every_tensor_of_the_output():
    g = [{"logits": torch.tensor([1.0, 0.0]), "hidden": torch.zeros(2)}]
    f = [{"logits": torch.tensor([1.0, 0.0]), "hidden": torch.tensor([0.0, 1e-9])}]
    ev = evaluate(g, f, make_criterion("top1", output="logits"))
    assert ev.outcomes == ["benign"] and ev.max_abs_diff[0] == pytest.approx(1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_campaign_gives_the_cpu_records():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(N, 6)
    faults = weight_faults(model, ["0.weight", "2.weight"], per=3)
    cpu = run_campaign(model, x, faults)
    gpu = run_campaign(model, x, faults, device="cuda")
    assert [r.outcome for r in gpu.runs] == [r.outcome for r in cpu.runs]
    assert next(model.parameters()).device.type == "cpu"  # moved back


def test_handed_over_engine_logs_once(caplog, bert):
    from torchfault.campaign import _engine

    _engine._HANDED_OVER_WARNED.clear()
    model, inputs = bert
    faults = [Fault("classifier", "weight", (0, 0), (30,))]
    with caplog.at_level(logging.WARNING, logger="torchfault.campaign"):
        run_campaign(model, inputs, faults, output="logits", engine="fast")
        run_campaign(model, inputs, faults, output="logits", engine="fast")
    msgs = [r.message for r in caplog.records if "reference engine" in r.message]
    assert len(msgs) == 1 and "fast" in msgs[0]


# ----------------------------------------------------------------------------- stored campaigns
DATA_PY = """
import torch


def tokens(split="test", n=16, vocab=60, length=8):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    items = []
    for i in range(n):
        mask = torch.ones(length, dtype=torch.int64)
        if i % 2 == 0:
            mask[5:] = 0
        items.append(({"input_ids": ids[i], "attention_mask": mask}, i % 3))
    return items


def images(split="test", n=16):
    g = torch.Generator().manual_seed(12)
    return [(torch.randn(3, 6, 6, generator=g), None) for _ in range(n)]


def seg_model():
    import torch.nn as nn

    torch.manual_seed(4)

    class TinySeg(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 4, 1)

        def forward(self, x):
            return self.conv2(torch.relu(self.conv1(x)))

    return TinySeg()
"""

BERT_KW = {
    "vocab_size": 60,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 16,
    "num_labels": 3,
}


def _config(tmp_path, **over):
    from torchfault.campaign import CampaignConfig
    from torchfault.config import from_dict

    d = {
        "name": "any",
        "out_dir": str(tmp_path / "run"),
        "report": False,
        "progress": False,
        "sampler": {"n": 12},
        "inputs_per_fault": 2,
        "store": {"export": []},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return from_dict(CampaignConfig, d)


def test_stored_hugging_face_campaign_with_dict_inputs_from_a_dataset(tmp_path):
    pytest.importorskip("transformers")
    from torchfault.campaign import Campaign

    data = tmp_path / "data.py"
    data.write_text(DATA_PY)
    over = {
        "model": {"name": "transformers:BertForSequenceClassification", "kwargs": BERT_KW},
        "data": {"dataset": f"{data}:tokens", "num_inputs": 16},
        "targets": {"kinds": ["weights"], "modules": ["re:.*(query|classifier)"]},
        "outcome": {"criterion": "top1", "output": "logits"},
    }
    camp = Campaign(_config(tmp_path, **over))
    res = camp.run()
    assert len(res) == 24 and camp.accuracy is not None
    # the fast engine hands the campaign to the reference engine: identical rows
    fast = Campaign(_config(tmp_path / "f", **over, engine={"name": "fast"})).run()
    assert same_records(res, fast)
    # the runs equal run_campaign's on the same model, inputs and faults
    direct = run_campaign(
        camp.model,
        camp.inputs,
        [res.faults[k] for k in sorted(res.faults)],
        output="logits",
    )
    d = by_key(direct)
    for r in res.runs:
        assert d[(r.fault_id, r.input_id)].outcome == r.outcome
    # resume: a second run finds every run stored
    again = Campaign(_config(tmp_path, **over)).run()
    assert same_records(res, again)


def test_stored_segmentation_campaign_stores_metrics(tmp_path, caplog):
    from torchfault.campaign import Campaign
    from torchfault.store import ResultStore

    data = tmp_path / "data.py"
    data.write_text(DATA_PY)
    over = {
        "model": {"name": f"{data}:seg_model"},
        "data": {"dataset": f"{data}:images", "num_inputs": 16},
        "targets": {"kinds": ["weights", "biases"]},
        "outcome": {"criterion": "segmentation", "fraction": 0.05},
    }
    camp = Campaign(_config(tmp_path, **over))
    with caplog.at_level(logging.INFO, logger="torchfault.campaign"):
        res = camp.run()
    want = f"criterion metric miou_drop over {len(res)} runs"
    assert any(want in r.message for r in caplog.records)
    assert camp.accuracy is None and camp.labels is None
    assert len(res.metrics) == len(res)
    # the stored metrics equal a fresh run's, and the oracle's pixel fraction
    model = camp.model
    with torch.no_grad():
        golden = model(camp.inputs)
    x = camp.inputs
    for r in res.runs[:8]:
        with torch.no_grad(), inject(model, res.faults[r.fault_id]):
            out = model(x)
        frac = float((out[r.input_id].argmax(0) != golden[r.input_id].argmax(0)).float().mean())
        assert res.metrics[(r.fault_id, r.input_id)]["changed_pixels"] == pytest.approx(frac)
    with ResultStore(tmp_path / "run" / "campaign.sqlite", mode="r") as store:
        from torchfault.campaign._campaign import read_metrics

        assert read_metrics(store) == res.metrics
    assert "miou_drop" in res.metrics_summary()


def test_config_errors_name_their_field(tmp_path):
    from torchfault.campaign import Campaign

    data = tmp_path / "data.py"
    data.write_text(DATA_PY)
    seg = {
        "model": {"name": f"{data}:seg_model"},
        "data": {"dataset": f"{data}:images", "num_inputs": 16},
    }
    with pytest.raises(ConfigError, match="engine.device") as e:
        Campaign(_config(tmp_path, **seg, engine={"device": "cuda:3"})).setup()
    assert e.value.field == "engine.device"
    with pytest.raises(ConfigError, match="outcome.output") as e:
        Campaign(
            _config(tmp_path, **seg, outcome={"criterion": "segmentation", "output": "x"})
        ).setup()
    with pytest.raises(ConfigError, match="segmentation"):
        Campaign(_config(tmp_path, **seg, outcome={"criterion": "tokens"})).setup()
    with pytest.raises(ConfigError, match="outcome.criterion.*Did you mean 'detection'"):
        _config(tmp_path, outcome={"criterion": "detections"})
    with pytest.raises(ConfigError, match="outcome.fraction"):
        _config(tmp_path, outcome={"criterion": "segmentation", "fraction": 1.5})
    assert not (tmp_path / "run").exists()  # nothing written


def test_cli_campaign_on_a_hugging_face_model_class(tmp_path):
    pytest.importorskip("transformers")
    import yaml

    from torchfault.cli import main
    from torchfault.store import ResultStore

    data = tmp_path / "data.py"
    data.write_text(DATA_PY)
    cfg = {
        "name": "hf",
        "out_dir": str(tmp_path / "run"),
        "report": False,
        "progress": False,
        "model": {"name": "transformers:BertForSequenceClassification", "kwargs": BERT_KW},
        "data": {"dataset": f"{data}:tokens", "num_inputs": 16},
        "targets": {"kinds": ["weights"], "modules": ["classifier"]},
        "sampler": {"n": 5},
        "outcome": {"criterion": "topk", "topk": 2, "output": "logits"},
        "store": {"export": []},
    }
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["campaign", "--config", str(path)]) == 0
    with ResultStore(tmp_path / "run" / "campaign.sqlite", mode="r") as store:
        assert store.count_runs() == 5


def _rows(path):
    import sqlite3

    con = sqlite3.connect(path)
    try:
        runs = con.execute(
            "SELECT fault_id, input_id, outcome, golden_top1, faulty_top1, max_abs_diff, error "
            "FROM runs ORDER BY fault_id, input_id"
        ).fetchall()
        metrics = con.execute(
            "SELECT fault_id, input_id, name, value FROM run_metrics ORDER BY 1, 2, 3"
        ).fetchall()
    finally:
        con.close()
    return runs, metrics


@pytest.mark.slow
def test_dict_inputs_and_metrics_through_the_process_executor_and_a_resume(tmp_path, monkeypatch):
    """A keyword-input model with a metrics criterion: process workers and a resume after half
    the runs were lost store exactly the serial rows and metrics."""
    import sqlite3

    from torchfault.campaign import Campaign

    # the model module is importable (process workers unpickle it by name)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "kwmod.py"
    data.write_text(
        DATA_PY
        + """

def kw_images(split="test", n=16):
    return [({"image": x, "scale": torch.tensor(2.0)}, None) for x, _ in images(split, n)]


class KwSeg(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 4, 1)

    def forward(self, image, scale):
        x = image * scale[:, None, None, None]
        return {"masks": self.conv2(torch.relu(self.conv1(x)))}


def kw_model():
    return KwSeg()
"""
    )
    over = {
        "model": {"name": "kwmod:kw_model"},
        "data": {"dataset": f"{data}:kw_images", "num_inputs": 16},
        "targets": {"kinds": ["weights", "outputs"]},
        "outcome": {"criterion": "segmentation", "output": "masks", "fraction": 0.05},
        "sampler": {"n": 10},
        "executor": {"chunk_faults": 3},
    }
    serial = Campaign(_config(tmp_path / "s", **over))
    serial.run()
    want = _rows(tmp_path / "s" / "run" / "campaign.sqlite")
    assert len(want[0]) == 20 and len(want[1]) == 40  # 2 metrics per run
    proc_over = {**over, "executor": {"name": "process", "workers": 2, "chunk_faults": 3}}
    proc = Campaign(_config(tmp_path / "p", **proc_over))

    proc.run()
    assert _rows(tmp_path / "p" / "run" / "campaign.sqlite") == want
    # lose half of the runs (and a metric row of a kept one stays): a resume redoes exactly them
    db = tmp_path / "s" / "run" / "campaign.sqlite"
    con = sqlite3.connect(db)
    con.execute("DELETE FROM runs WHERE fault_id >= 5")
    con.execute("DELETE FROM run_metrics WHERE fault_id >= 7")
    con.commit()
    con.close()
    Campaign(_config(tmp_path / "s", **over)).run()
    assert _rows(db) == want


def test_engine_deterministic_sets_the_flag_during_the_campaign_only(tmp_path):
    from torchfault.campaign import Campaign

    data = tmp_path / "detprobe.py"
    data.write_text(
        DATA_PY
        + """

SEEN = []


class Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        SEEN.append(torch.are_deterministic_algorithms_enabled())
        return self.fc(x)


def probe():
    return Probe()


def vectors(split="test", n=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, generator=g), i % 3) for i in range(n)]
"""
    )
    over = {
        "model": {"name": f"{data}:probe"},
        "data": {"dataset": f"{data}:vectors", "num_inputs": 16},
        # the reference engine: the probe sees the flag in the model's own forward, which the
        # fast engine's traced graph does not call
        "engine": {"name": "reference", "deterministic": True},
        "sampler": {"n": 2},
    }
    before = torch.are_deterministic_algorithms_enabled()
    Campaign(_config(tmp_path, **over)).run()
    import sys

    seen = sys.modules["detprobe"].SEEN
    # the golden pass and the injection runs (the fault-space probe in between only reads shapes)
    assert len(seen) == 4 and seen[0] and seen[2] and seen[3]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_stored_campaign_criterion_raising_mid_run_is_an_error_not_an_outcome(tmp_path):
    from torchfault.campaign import Campaign, CriterionError
    from torchfault.store import ResultStore

    data = tmp_path / "rdata.py"
    data.write_text(
        DATA_PY
        + """

def picky(golden, faulty):
    if float((faulty - golden).abs().max()) > 1.0:
        raise ZeroDivisionError("picky")
    return "benign", {"err": float((faulty - golden).abs().max())}
"""
    )
    over = {
        "model": {"name": f"{data}:seg_model"},
        "data": {"dataset": f"{data}:images", "num_inputs": 16},
        "targets": {"kinds": ["weights"]},
        "sampler": {"n": 30, "bits": [30]},
        "outcome": {"criterion": f"{data}:picky"},
    }
    camp = Campaign(_config(tmp_path, **over))
    with pytest.raises(CriterionError, match="picky.*raised.*ZeroDivisionError.*not an outcome"):
        camp.run()
    with ResultStore(tmp_path / "run" / "campaign.sqlite", mode="r") as store:
        outcomes = {r.outcome for r in store.runs()}
    assert "sdc" not in outcomes and "due" not in outcomes
    # low mantissa bits: the criterion never raises; its metrics are summarised from the store
    ok = Campaign(_config(tmp_path / "ok", **{**over, "sampler": {"n": 6, "bits": [3]}}))
    runs = ok.run().runs
    summary = ok.metrics_summary()
    assert summary["err"]["all"]["n"] == sum(1 for r in runs if r.outcome != "masked") > 0
