# SPDX-License-Identifier: MIT
"""Crafted faults whose outcome is known in advance, through run_campaign (reference engine)."""

import math

import pytest
import torch
import torch.nn as nn

from torchfault import Fault, run_campaign
from torchfault.campaign import OUTCOMES, Criterion
from torchfault.campaign._outcome import classify


class Guard(nn.Module):
    """Raises on absurd values, like an assertion in a real model."""

    def forward(self, x):
        if bool((x.abs() > 1e30).any()):
            raise RuntimeError("value out of range")
        return x


def crafted_model():
    # pre = W x + b with x = ones(2): pre = [-1.0, 0.5, 0.25]; logits = relu(pre) @ I
    fc1 = nn.Linear(2, 3)
    fc2 = nn.Linear(3, 3)
    with torch.no_grad():
        fc1.weight.copy_(torch.tensor([[-0.5, -0.5], [0.25, 0.25], [0.125, 0.125]]))
        fc1.bias.zero_()
        fc2.weight.copy_(torch.eye(3))
        fc2.bias.zero_()
    return nn.Sequential(fc1, nn.ReLU(), fc2, Guard()).eval()


X = torch.ones(1, 2)


def outcome_of(fault, **kw):
    res = run_campaign(crafted_model(), X, [fault], **kw)
    assert len(res) == 1
    return res.runs[0]


def test_golden_is_what_we_think():
    out = crafted_model()(X)
    assert out.tolist() == [[0.0, 0.5, 0.25]]


def test_bit30_flip_of_a_final_logit_is_sdc():
    # logit 2 = 0.25 (0x3E800000); bit 30 set -> 0x7E800000 ~ 8.5e37: class 2 becomes top-1
    run = outcome_of(Fault("3", "output", index=(2,), bits=(30,)))
    assert run.outcome == "sdc" and run.golden_top1 == 1 and run.faulty_top1 == 2


def test_low_mantissa_flip_of_negative_pre_relu_is_masked():
    run = outcome_of(Fault("0", "output", index=(0,), bits=(0,)))
    assert run.outcome == "masked" and run.max_abs_diff == 0.0


def test_small_change_that_keeps_top1_is_benign():
    run = outcome_of(Fault("2", "output", index=(1,), bits=(0,)))
    assert run.outcome == "benign" and run.max_abs_diff > 0


def test_nan_is_due():
    run = outcome_of(
        Fault("2", "output", index=(0,), model="value", params={"value": float("nan")})
    )
    assert run.outcome == "due"
    # an exponent flip of 0.5 to all-ones gives infinity: also a DUE
    run = outcome_of(
        Fault("3", "output", index=(1,), bits=(23, 24, 25, 26, 27, 28, 29, 30), model="stuck_at_1")
    )
    assert run.outcome == "due" and run.error is None


def test_module_that_raises_under_the_fault_is_due_and_campaign_goes_on():
    # bit 30 of the 0.5 pre-activation gives ~1.7e38, which Guard refuses
    res = run_campaign(
        crafted_model(),
        X,
        [Fault("0", "output", index=(1,), bits=(30,)), Fault("0", "output", index=(0,), bits=(0,))],
    )
    assert [r.outcome for r in res.runs] == ["due", "masked"]
    assert "value out of range" in res.runs[0].error
    assert res.outcome_counts() == {"masked": 1, "benign": 0, "sdc": 0, "due": 1}


def test_topk_and_tolerance_criteria():
    g = torch.tensor([[3.0, 2.0, 1.0]])
    f = torch.tensor([[2.0, 3.0, 1.0]])
    assert OUTCOMES[int(classify(g, f)[0][0])] == "sdc"
    assert OUTCOMES[int(classify(g, f, Criterion("topk", topk=2))[0][0])] == "benign"
    assert (
        OUTCOMES[int(classify(g, g + 0.5, Criterion("tolerance", tolerance=1.0))[0][0])] == "benign"
    )
    assert OUTCOMES[int(classify(g, g + 2.0, Criterion("tolerance", tolerance=1.0))[0][0])] == "sdc"
    with pytest.raises(ValueError, match="criterion"):
        Criterion("top5")


def test_only_correct_filters_inputs():
    model = crafted_model()
    x = torch.ones(3, 2)
    labels = torch.tensor([1, 0, 1])  # golden top-1 is 1 for every row
    res = run_campaign(
        model, x, [Fault("3", "output", index=(2,), bits=(30,))], labels, only_correct=True
    )
    assert sorted(r.input_id for r in res.runs) == [0, 2]
    with pytest.raises(ValueError, match="labels"):
        run_campaign(model, x, [Fault("2", "output", index=(2,), bits=(30,))], only_correct=True)


@pytest.mark.parametrize("only_correct", [False, True])
def test_labels_must_match_the_inputs(only_correct):
    fault = Fault("3", "output", index=(2,), bits=(30,))
    with pytest.raises(ValueError, match="2 labels for 3 inputs"):
        run_campaign(
            crafted_model(),
            torch.ones(3, 2),
            [fault],
            torch.tensor([1, 1]),
            only_correct=only_correct,
        )
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        run_campaign(crafted_model(), torch.ones(3, 2), [fault], batch_size=0)
    with pytest.raises(ValueError, match="no inputs"):
        run_campaign(crafted_model(), torch.ones(0, 2), [fault])
    with pytest.raises(ValueError, match="got a 0-d tensor"):
        run_campaign(crafted_model(), torch.tensor(1.0), [fault])


@pytest.mark.filterwarnings("ignore:torchfault.inject.*never applied")
def test_a_model_that_modifies_its_input_in_place_leaves_the_inputs_golden():
    class Doubles(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x.mul_(2.0)
            return self.fc(x)

    torch.manual_seed(0)
    model = Doubles().eval()
    never = Fault("fc", "output", index=(0,), bits=(0,), call=5)  # a call that never happens
    for n in (10, 20):
        x = torch.randn(n, 8)
        before = x.clone()
        for engine in ("reference", "fast"):
            result = run_campaign(model, x, [never], engine=engine, batch_size=32)
            assert result.outcome_counts()["masked"] == n, (n, engine)
            assert torch.equal(x, before)


def test_every_fault_on_every_input_and_model_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 4)
    faults = [
        Fault("0", "weight", index=(i % 8, i % 4), bits=(b,))
        for i, b in enumerate((0, 10, 23, 30, 31))
    ]
    faults.append(Fault("1", "output", index=(3,), bits=(30,)))
    res = run_campaign(model, x, faults)
    assert len(res) == len(faults) * 6
    assert {(r.fault_id, r.input_id) for r in res.runs} == {
        (k, i) for k in range(len(faults)) for i in range(6)
    }
    assert sum(res.outcome_counts().values()) == len(res)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # independent oracle: re-run each weight fault by editing a copy of the model by hand
    import copy
    import struct

    for k, f in enumerate(faults[:-1]):
        m2 = copy.deepcopy(model)
        w = m2[0].weight.data
        v = float(w[f.index])
        (word,) = struct.unpack("<I", struct.pack("<f", v))
        (w[f.index],) = struct.unpack("<f", struct.pack("<I", word ^ (1 << f.bits[0])))
        out = m2(x)
        golden = model(x)
        for r in (r for r in res.runs if r.fault_id == k):
            same = torch.equal(out[r.input_id], golden[r.input_id])
            finite = bool(torch.isfinite(out[r.input_id]).all())
            expected = (
                "masked"
                if same
                else "due"
                if not finite
                else "sdc"
                if int(out[r.input_id].argmax()) != int(golden[r.input_id].argmax())
                else "benign"
            )
            assert r.outcome == expected
            if r.outcome not in ("masked", "due"):
                assert math.isclose(
                    r.max_abs_diff,
                    float((out[r.input_id] - golden[r.input_id]).detach().abs().max()),
                    rel_tol=1e-6,
                )


def test_masked_is_exact_whatever_the_batch_composition():
    # channel 0 of the conv output is negative everywhere (bias -100): a low-mantissa flip there is
    # swallowed by the ReLU, so every run is masked, although a batch of 8 and a batch of 1 give
    # outputs that differ in the last bits on CPU.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    ).eval()
    with torch.no_grad():
        model[0].bias[0] = -100.0
    x = torch.randn(8, 1, 8, 8)
    res = run_campaign(model, x, [Fault("0", "output", index=(0, 2, 2), bits=(0,))])
    assert res.outcome_counts()["masked"] == 8


# ------------------------------------------------------------------ the criteria registry
def test_every_registered_criterion_leaves_golden_masked():
    """Parametrised over the registry: golden against itself is masked for every criterion."""
    from torchfault.campaign import evaluate, list_criteria, make_criterion

    scores = torch.randn(3, 4, 5, 5)
    dets = [
        {
            "boxes": torch.tensor([[0.0, 0, 4, 4]]),
            "labels": torch.tensor([1]),
            "scores": torch.tensor([0.9]),
        }
    ] * 3
    for name in list_criteria():
        g = dets if name == "detection" else scores
        if name == "tokens":
            g = scores[:, :, 0, :]
        ev = evaluate(g, g, make_criterion(name))
        assert ev.outcomes == ["masked"] * 3, name


def test_tolerance_absolute_and_relative():
    from torchfault.campaign import evaluate, make_criterion

    g = torch.tensor([[100.0, 1.0], [100.0, 1.0]])
    f = torch.tensor([[101.0, 1.0], [100.0, 1.5]])
    crit = make_criterion("tolerance", tolerance=0.1, rtol=0.02)  # bounds 2.1 and 0.12
    assert evaluate(g, f, crit).outcomes == ["benign", "sdc"]
    assert evaluate(g, f, make_criterion("tolerance", tolerance=0.1)).outcomes == ["sdc", "sdc"]


def test_regression_relative_error_and_zero_golden():
    from torchfault.campaign import evaluate, make_criterion

    g = torch.tensor([[3.0, 4.0], [0.0, 0.0], [3.0, 4.0]])
    f = torch.tensor([[3.0, 4.05], [0.0, 1e-30], [6.0, 8.0]])
    ev = evaluate(g, f, make_criterion("regression", threshold=0.02))
    assert ev.outcomes == ["benign", "sdc", "sdc"]
    assert ev.metrics[0]["rel_error"] == pytest.approx(0.05 / 5.0, rel=1e-5)
    assert ev.metrics[1]["rel_error"] == math.inf and ev.metrics[2]["rel_error"] == pytest.approx(
        1.0
    )


def test_segmentation_on_label_maps_and_tokens_on_ids():
    from torchfault.campaign import evaluate, make_criterion

    g = torch.zeros(2, 4, 4, dtype=torch.int64)
    f = g.clone()
    f[0, 0, 0] = 1  # 1 of 16 pixels
    f[1, :2] = 2  # 8 of 16 pixels
    ev = evaluate(g, f, make_criterion("segmentation", fraction=0.1))
    assert ev.outcomes == ["benign", "sdc"]
    assert ev.metrics[0]["changed_pixels"] == pytest.approx(1 / 16)
    # mIoU of row 1: class 0 IoU 8/16, class 2 IoU 0/8 -> 0.25; drop 0.75
    assert ev.metrics[1]["miou_drop"] == pytest.approx(0.75)
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    fids = torch.tensor([[1, 2, 3, 5], [9, 9, 3, 4]])
    ev = evaluate(ids, fids, make_criterion("tokens", k=1))
    assert ev.outcomes == ["benign", "sdc"] and [m["changed_tokens"] for m in ev.metrics] == [1, 2]


def test_detection_greedy_and_hungarian_matching_differ_where_they_should():
    from torchfault.campaign import make_criterion
    from torchfault.campaign._outcome import match_detections

    # golden A (score .9) overlaps faulty X best and faulty Y a little; golden B overlaps only X.
    # greedy (by score) gives X to A and leaves B unmatched; hungarian pairs A-Y and B-X.
    g = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [2.0, 0, 12, 10]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.9, 0.8]),
    }
    f = {
        "boxes": torch.tensor([[1.0, 0, 11, 10], [0.0, 3, 10, 13]]),
        "labels": torch.tensor([1, 1]),
    }
    assert match_detections(g, f, make_criterion("detection", iou=0.5)) == (1, 1, 0)
    assert match_detections(g, f, make_criterion("detection", iou=0.5, matching="hungarian")) == (
        0,
        0,
        0,
    )
    # low-scoring detections are ignored
    low = {**g, "scores": torch.tensor([0.9, 0.1])}
    assert match_detections(low, low, make_criterion("detection", score_threshold=0.5)) == (0, 0, 0)


def test_a_fault_that_changes_the_shape_of_the_part_read_is_an_sdc():
    from torchfault.campaign import evaluate, make_criterion

    g = [{"seq": torch.zeros(3, 2)}, {"seq": torch.zeros(3, 2)}]
    f = [{"seq": torch.zeros(3, 2)}, {"seq": torch.zeros(4, 2)}]
    ev = evaluate(g, f, make_criterion("regression", output="seq"))
    assert ev.outcomes == ["masked", "sdc"] and ev.metrics[1] is None and ev.max_abs_diff[1] is None


def test_callable_criterion_outcomes():
    from torchfault.campaign import CriterionError, evaluate, make_criterion

    g = torch.zeros(3, 2)
    f = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, float("nan")]])
    ev = evaluate(g, f, make_criterion(lambda a, b: bool(b.abs().max() > 1.5)))
    assert ev.outcomes == ["benign", "sdc", "due"]  # NaN: DUE before the callable is asked
    with pytest.raises(CriterionError, match="returned 3"):
        evaluate(g[:2], f[:2], make_criterion(lambda a, b: 3))
    with pytest.raises(CriterionError, match="metrics that are not numbers"):
        evaluate(g[:2], f[:2], make_criterion(lambda a, b: ("sdc", {"x": "high"})))


@pytest.mark.parametrize("side", [5, 40])  # 5: torch.equal; 40: large enough for NumPy's loop
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_words_equal_compares_bits_as_numpy_does(dtype, side):
    """``words_equal`` (the fast engine's one-call comparison) against NumPy's byte comparison:
    NaN payloads, signed zeros, any memory layout."""
    from torchfault.campaign._outcome import output_words_equal, words_equal

    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 3, side, side, generator=g).to(dtype)
    a[0, 0, 0, 0] = float("nan")
    a[1, 1, 1, 1] = 0.0
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]

    def numpy_same(x, y):
        xb = x.contiguous().view(ints).numpy().tobytes()
        return x.shape == y.shape and xb == y.contiguous().view(ints).numpy().tobytes()

    other_nan = a.clone()
    other_nan.view(ints)[0, 0, 0, 0] ^= 1  # another NaN payload
    neg_zero = a.clone()
    neg_zero[1, 1, 1, 1] = -0.0
    last = a.contiguous(memory_format=torch.channels_last)
    for b in (a.clone(), other_nan, neg_zero, last, a[:, :, :, :4]):
        assert words_equal(a, b) is numpy_same(a, b)
        if b.shape == a.shape:
            assert words_equal(a, b) is bool(output_words_equal(a, b).all())
    assert words_equal(a, last) and not words_equal(a, other_nan) and not words_equal(a, neg_zero)
    # flat views that start one word in (not on an 8-byte boundary) and their copies
    for x, y in ((a, a.clone()), (a, other_nan), (a, neg_zero)):
        u, v = x.reshape(-1)[1:], y.reshape(-1)[1:]
        assert words_equal(u, v) is words_equal(u, v.clone()) is numpy_same(u, v)
    assert not words_equal(a, a.double() if dtype != torch.float64 else a.float())
