# SPDX-License-Identifier: MIT
"""Compressed checkpoints: bit-exact round trips, clear errors on bad files."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma

import pytest
import torch

import torchfault.dnn as dnn
from torchfault.errors import TorchFaultError

DECOMPRESS = {
    "lzma": lzma.decompress,
    "gzip": gzip.decompress,
    "bz2": bz2.decompress,
    "none": lambda b: b,
}


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "w": torch.randn(64, 32, generator=g),
        "b": torch.randn(32, generator=g).double(),
        "i": torch.randint(-100, 100, (50,), generator=g, dtype=torch.int8),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
        "h": torch.randn(10, generator=g).half(),
    }


@pytest.mark.parametrize("compression", dnn.COMPRESSIONS)
def test_round_trip_bit_exact(tmp_path, compression: str) -> None:
    sd = _state()
    path = tmp_path / f"sd.pt.{compression}"
    info = dnn.save_checkpoint(sd, path, compression=compression)
    assert info.compressed_bytes == path.stat().st_size
    assert info.ratio == pytest.approx(info.raw_bytes / info.compressed_bytes)
    back = dnn.load_checkpoint(path)
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].dtype == sd[k].dtype
        # compare the stored bits, so NaN and -0.0 count too
        assert back[k].numpy().tobytes() == sd[k].numpy().tobytes()
    # the file is the standard container of its compressor around torch.save's bytes
    raw = DECOMPRESS[compression](path.read_bytes())
    buf = io.BytesIO()
    torch.save(sd, buf)
    assert len(raw) == info.raw_bytes == len(buf.getvalue())
    assert torch.equal(torch.load(io.BytesIO(raw), weights_only=True)["w"], sd["w"])


def test_module_is_saved_as_state_dict(tmp_path) -> None:
    model = dnn.create_model("lenet")
    dnn.save_checkpoint(model, tmp_path / "m.pt.xz")
    other = dnn.create_model("lenet")
    other.load_state_dict(dnn.load_checkpoint(tmp_path / "m.pt.xz"))
    x = model.example_inputs()
    assert torch.equal(model(x), other(x))


def test_lzma_compresses_redundant_data(tmp_path) -> None:
    info = dnn.save_checkpoint({"z": torch.zeros(100_000)}, tmp_path / "z.pt.xz")
    assert info.ratio > 50


@pytest.mark.parametrize("compression", ["lzma", "gzip", "bz2", "none"])
def test_truncated_file_fails_clearly(tmp_path, compression: str) -> None:
    path = tmp_path / "t.pt"
    dnn.save_checkpoint(_state(), path, compression=compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchFaultError, match="truncated or corrupted") as err:
        dnn.load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("compression", [*dnn.COMPRESSIONS, "torch.save"])
def test_corrupted_file_fails_clearly(tmp_path, compression: str) -> None:
    path = tmp_path / "c.pt"
    if compression == "torch.save":
        torch.save(_state(), path)
    else:
        dnn.save_checkpoint(_state(), path, compression=compression)
    data = bytearray(path.read_bytes())
    # xz, gzip and bzip2 carry checksums; the torch.save zip has a CRC-32 per record, which
    # torch.load does not check: without our check this file loads with a changed weight
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TorchFaultError, match="truncated or corrupted") as err:
        dnn.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_every_flipped_byte_of_an_uncompressed_file_is_caught_or_harmless(tmp_path) -> None:
    """A byte flipped anywhere in a plain torch.save file is an error or changes nothing."""
    path = tmp_path / "p.pt"
    sd = {"w": torch.randn(8, 4, generator=torch.Generator().manual_seed(1))}
    torch.save(sd, path)
    data = path.read_bytes()
    changed = []
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        path.write_bytes(bytes(flipped))
        try:
            back = dnn.load_checkpoint(path)
        except TorchFaultError:
            continue
        if back.keys() != sd.keys() or not torch.equal(back["w"], sd["w"]):
            changed.append(i)
    assert changed == []


def test_foreign_and_missing_files(tmp_path) -> None:
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello, not a checkpoint")
    with pytest.raises(TorchFaultError, match="not a torchfault or PyTorch checkpoint"):
        dnn.load_checkpoint(foreign)
    xz_text = tmp_path / "text.xz"
    xz_text.write_bytes(lzma.compress(b"plain text"))
    with pytest.raises(TorchFaultError, match="not a torch.save file"):
        dnn.load_checkpoint(xz_text)
    with pytest.raises(TorchFaultError, match="does not exist"):
        dnn.load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(TorchFaultError, match="is a directory, not a file"):
        dnn.load_checkpoint(tmp_path)
    with pytest.raises(TorchFaultError, match="is a directory, not a file"):
        dnn.compress_file(tmp_path)
    with pytest.raises(TorchFaultError, match="unknown compression 'zip'"):
        dnn.save_checkpoint({}, tmp_path / "x", compression="zip")


class _Custom:
    pass


def test_weights_only_refuses_arbitrary_objects(tmp_path) -> None:
    path = tmp_path / "evil.pt.xz"
    dnn.save_checkpoint({"obj": _Custom()}, path)
    with pytest.raises(
        TorchFaultError, match=r"evil.pt.xz.*code.*_Custom.*weights_only=True"
    ) as err:
        dnn.load_checkpoint(path)
    # PyTorch's own message advises re-running with weights_only=False: not passed on
    msg = str(err.value)
    assert "False" not in msg and "Re-running" not in msg and "safe_globals" not in msg
    assert "\x1b" not in msg  # nor its terminal colour codes


def test_compress_file_in_place_and_recompress(tmp_path) -> None:
    path = tmp_path / "plain.ckpt"
    sd = _state()
    torch.save(sd, path)
    info = dnn.compress_file(path, "bz2")
    assert path.read_bytes().startswith(b"BZh") and info.compression == "bz2"
    dnn.compress_file(path, "lzma")
    assert path.read_bytes().startswith(b"\xfd7zXZ\x00")
    assert torch.equal(dnn.load_checkpoint(path)["w"], sd["w"])


def test_permanent_state_dict_folds_every_name_of_a_shared_pruned_module(tmp_path) -> None:
    from torch import nn
    from torch.nn.utils import prune

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a  # one module, two names

    m = Twice()
    prune.l1_unstructured(m.a, "weight", amount=0.5)
    from torchfault.dnn._checkpoint import permanent_state_dict

    sd = permanent_state_dict(m)
    assert sorted(sd) == ["a.bias", "a.weight", "b.bias", "b.weight"]
    assert int((sd["b.weight"] == 0).sum()) == 8
    Twice().load_state_dict(sd)


def test_wrapped_model_whose_every_key_is_pruned_loads(tmp_path) -> None:
    """A wrapper's own checkpoint whose keys are all weight_orig/weight_mask pairs."""
    from torch import nn
    from torch.nn.utils import prune

    def wrapped():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
        return dnn.wrap_model(net, (1, 8, 8), 10)

    w = wrapped()
    prune.l1_unstructured(w.model[1], "weight", amount=0.5)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in w.state_dict().items()}}, path)
    fresh = dnn.load_weights(wrapped(), path)
    assert int((fresh.model[1].weight == 0).sum()) == 320


class _Payload:
    """Unpickling it would create the file ``marker`` (a stand-in for any program)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _loaders(tmp_path):
    """Every way torchfault reads a checkpoint file."""
    from torchfault.dnn import ClassifierModule, load_quantized
    from torchfault.dnn._lightning import CompressedCheckpointIO

    return {
        "load_checkpoint": dnn.load_checkpoint,
        "load_weights": lambda p: dnn.load_weights(dnn.create_model("mlp"), p),
        "create_model": lambda p: dnn.create_model("mlp", weights=p),
        "load_quantized": load_quantized,
        "ClassifierModule.load_from_checkpoint": ClassifierModule.load_from_checkpoint,
        "CompressedCheckpointIO": lambda p: CompressedCheckpointIO().load_checkpoint(p),
    }


@pytest.mark.parametrize("compression", ["none", "lzma"])
@pytest.mark.parametrize(
    "loader",
    [
        "load_checkpoint",
        "load_weights",
        "create_model",
        "load_quantized",
        "ClassifierModule.load_from_checkpoint",
        "CompressedCheckpointIO",
    ],
)
def test_every_loader_refuses_a_pickle_payload_naming_file_and_code(tmp_path, loader, compression):
    """A checkpoint whose pickle calls code: no loader runs it; each names the file and the
    blocked global, and none suggests weights_only=False (ClassifierModule's mask folding had
    an unguarded torch.load that passed torch's advice on)."""
    pytest.importorskip("lightning")
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"model.fc1.weight": torch.ones(2)}, "x": _Payload(marker)}
    dnn.save_checkpoint(payload, path, compression=compression)
    before = path.read_bytes()
    with pytest.raises(TorchFaultError) as err:
        _loaders(tmp_path)[loader](path)
    msg = str(err.value)
    assert "evil.ckpt" in msg and "pathlib" in msg and "code" in msg, msg
    assert "weights_only=False" not in msg and "Re-running" not in msg
    assert not marker.exists()
    assert path.read_bytes() == before
