# SPDX-License-Identifier: MIT
"""FaultInjectionCallback against a hand-run oracle: the same faults injected around plain
forward passes over the same batches; the model is bit-identical afterwards."""

from __future__ import annotations

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

import torchfault.dnn as dnn  # noqa: E402
from torchfault import Fault, fault_space, inject  # noqa: E402
from torchfault.errors import TorchFaultError  # noqa: E402
from torchfault.samplers import create_sampler  # noqa: E402

BATCH = 120  # digits test: 360 inputs, 3 batches


@pytest.fixture(scope="module")
def lenet_module():
    return dnn.ClassifierModule(dnn.create_model("lenet", pretrained=True)).eval()


def _trainer():
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def _batches(ds):
    xs = torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))])
    ys = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    return [(xs[i : i + BATCH], ys[i : i + BATCH]) for i in range(0, len(ds), BATCH)]


def _oracle(module, batches, faults_of):
    """Faulty accuracy and SDC fraction, by hand: faults_of(k) are the faults of batch k."""
    correct = changed = due = n = 0
    with torch.no_grad():
        for k, (x, y) in enumerate(batches):
            clean = module(x).argmax(1)
            with inject(module, faults_of(k)):
                out = module(x)
            finite = torch.isfinite(out).all(1)
            pred = torch.where(finite, out.argmax(1), torch.full_like(clean, -1))
            correct += int((pred == y).sum())
            changed += int(((pred != clean) & finite).sum())
            due += int((~finite).sum())
            n += len(y)
    return correct / n, changed / n, due / n


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _run(cb, module, digits_test, stage="test"):
    dm = dnn.ClassificationDataModule(
        None, batch_size=BATCH, test_set=digits_test, val_set=digits_test
    )
    trainer = _trainer()
    trainer.callbacks.append(cb)
    before = _state(module)
    out = getattr(trainer, stage)(module, datamodule=dm, verbose=False)[0]
    after = _state(module)
    assert all(torch.equal(before[k], after[k]) for k in before)  # restored exactly
    return out


def test_fault_list_matches_oracle_and_clean_metrics_untouched(lenet_module, digits_test):
    faults = [
        Fault("model.fc3", "weight", index=(3, 10), bits=(30,)),
        Fault("model.conv1", "weight", index=(0, 0, 1, 1), bits=(30,)),
    ]
    cb = dnn.FaultInjectionCallback(faults=faults)
    out = _run(cb, lenet_module, digits_test)
    acc, sdc, due = _oracle(lenet_module, _batches(digits_test), lambda k: faults)
    assert out["test_faulty_acc"] == pytest.approx(acc)
    assert out["test_faulty_sdc"] == pytest.approx(sdc)
    assert cb.results["faults"]["acc"] == pytest.approx(acc) and sdc > 0.05
    clean = dnn.evaluate(lenet_module.model, digits_test)["acc"]
    assert out["test_acc"] == pytest.approx(clean)  # the module's own metric, fault-free


def test_ber_sweep_per_batch_matches_oracle(lenet_module, digits_test):
    rates = [1e-5, 1e-3]
    cb = dnn.FaultInjectionCallback(ber=rates, seed=3)
    out = _run(cb, lenet_module, digits_test)
    sites = fault_space(lenet_module, None, kinds=["weights", "biases"])
    for rate in rates:
        s = create_sampler("ber", sites=list(sites), seed=3, rate=rate, n=1 << 30)
        acc, sdc, due = _oracle(lenet_module, _batches(digits_test), s.draw)
        key = f"{rate:.0e}".replace("e-0", "e-")
        assert out[f"test_acc@ber={key}"] == pytest.approx(acc)
        assert cb.results[rate]["acc"] == pytest.approx(acc)
        assert cb.results[rate]["sdc"] == pytest.approx(sdc)
        assert cb.results[rate]["due"] == pytest.approx(due)
        assert out[f"test_due@ber={key}"] == pytest.approx(due)
    assert cb.results[1e-3]["acc"] < cb.results[1e-5]["acc"]
    assert cb.results[1e-3]["faults"] > 0 and cb.results[1e-3]["due"] > 0


def test_permanent_and_epoch_modes(lenet_module, digits_test):
    sites = fault_space(lenet_module, None, kinds=["weights"])
    sampler = create_sampler("uniform", sites=list(sites), seed=5, n=50, bits=[30])
    perm = dnn.FaultInjectionCallback(sampler=sampler, per="permanent")
    _run(perm, lenet_module, digits_test)
    first = dict(perm.results["faults"])
    _run(perm, lenet_module, digits_test)
    assert perm.results["faults"] == first
    acc, _, _ = _oracle(lenet_module, _batches(digits_test), lambda k: sampler.draw(0))
    assert first["acc"] == pytest.approx(acc)
    ep = dnn.FaultInjectionCallback(sampler=sampler, per="epoch")
    _run(ep, lenet_module, digits_test)  # epoch 0: fault 0 on every batch
    assert ep.results["faults"]["acc"] == pytest.approx(acc)
    _run(ep, lenet_module, digits_test)  # epoch 1: fault 1
    acc1, _, _ = _oracle(lenet_module, _batches(digits_test), lambda k: sampler.draw(1))
    assert ep.results["faults"]["acc"] == pytest.approx(acc1)


def test_validate_stage(lenet_module, digits_test):
    cb = dnn.FaultInjectionCallback(
        faults=[Fault("model.fc3", "bias", (2,), (30,))], stages="validate"
    )
    out = _run(cb, lenet_module, digits_test, stage="validate")
    acc, _, _ = _oracle(lenet_module, _batches(digits_test), lambda k: cb.faults)
    assert out["val_faulty_acc"] == pytest.approx(acc)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TorchFaultError, match="exactly one of faults, sampler and ber"):
        dnn.FaultInjectionCallback(faults=[], ber=1e-6)
    with pytest.raises(TorchFaultError, match="per must be one of"):
        dnn.FaultInjectionCallback(ber=1e-6, per="step")
    with pytest.raises(TorchFaultError, match=r"ber must hold bit-error rates in \(0, 1\]"):
        dnn.FaultInjectionCallback(ber=[1e-6, 2.0])
    with pytest.raises(TorchFaultError, match="stages"):
        dnn.FaultInjectionCallback(ber=1e-6, stages=["fit"])


def test_plot_accuracy_vs_ber(tmp_path):
    pytest.importorskip("matplotlib")
    path = dnn.plot_accuracy_vs_ber(
        {1e-6: {"acc": 0.97, "sdc": 0.0}, 1e-4: {"acc": 0.5, "sdc": 0.45}}, tmp_path / "b.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_test_with_ber_sweep_writes_metrics_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from torchfault.cli import main

    assert main(["test", "--ber", "1e-6,1e-3", "--out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test_acc@ber=1e-6" in out and "test_due@ber=1e-3" in out
    assert (tmp_path / "accuracy_vs_ber.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["test", "--ber", "1e-6,2", "--out_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ber: '2' is not a bit-error rate" in err


@pytest.mark.parametrize(
    "argv, field",
    [
        (["test", "--accelerator", "tpu"], "accelerator: 'tpu'"),
        (
            ["train", "--trainer.accelerator", "tpu", "--trainer.max_epochs", "1"],
            "trainer.accelerator: 'tpu'",
        ),
        (
            ["train", "--trainer.accelerator", "cuda", "--trainer.max_epochs", "1"],
            "trainer.accelerator",
        ),
    ],
)
def test_accelerator_errors_are_one_line_naming_the_field(argv, field, tmp_path, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from torchfault.cli import main

    assert main([*argv, "--out_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing trained or written
