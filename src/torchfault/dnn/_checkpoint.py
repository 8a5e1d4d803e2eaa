# SPDX-License-Identifier: MIT
"""Compressed checkpoints: ``torch.save`` bytes in an xz (lzma), gzip or bzip2 stream.

Files are the standard container of their compressor (``xz -d model.pt.xz`` gives back the
``torch.save`` file), so :func:`load_checkpoint` recognises the compression by its magic bytes
and needs no side information; an uncompressed ``torch.save`` file loads too. Loading always uses
``torch.load(..., weights_only=True)``: a checkpoint can hold tensors, containers and plain
values, never arbitrary pickled objects. Before that, the CRC-32 of every record of the
``torch.save`` zip container is checked (xz, gzip and bzip2 carry checksums of their own), so a
flipped bit in an uncompressed file is found too. A truncated, corrupted or foreign file raises a
:class:`~torchfault.errors.TorchFaultError` that says which file and what is wrong.

Example:
    >>> import os, tempfile, torch
    >>> from torchfault.dnn import save_checkpoint, load_checkpoint
    >>> sd = {"w": torch.arange(1000.0)}
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt.xz")
    >>> info = save_checkpoint(sd, path)
    >>> info.compression, info.compressed_bytes < info.raw_bytes
    ('lzma', True)
    >>> torch.equal(load_checkpoint(path)["w"], sd["w"])
    True
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchfault.errors import TorchFaultError, suggest

__all__ = [
    "COMPRESSIONS",
    "CheckpointInfo",
    "compress_file",
    "detect_compression",
    "load_checkpoint",
    "permanent_state_dict",
    "read_checkpoint_bytes",
    "save_checkpoint",
    "torch_load",
]

COMPRESSIONS = ("lzma", "gzip", "bz2", "none")
_SUFFIX = {"lzma": ".xz", "gzip": ".gz", "bz2": ".bz2", "none": ""}
_MAGIC = {
    "lzma": b"\xfd7zXZ\x00",
    "gzip": b"\x1f\x8b",
    "bz2": b"BZh",
    "none": b"PK\x03\x04",  # torch.save's zip container
}


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`save_checkpoint` wrote.

    Attributes:
        path: the file.
        compression: lzma, gzip, bz2 or none.
        raw_bytes: size of the uncompressed ``torch.save`` bytes.
        compressed_bytes: size of the file.
    """

    path: str
    compression: str
    raw_bytes: int
    compressed_bytes: int

    @property
    def ratio(self) -> float:
        """Uncompressed over compressed size (above 1 when compression helped)."""
        return self.raw_bytes / max(self.compressed_bytes, 1)

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.compressed_bytes:,} bytes ({self.compression}; "
            f"{self.raw_bytes:,} uncompressed, ratio {self.ratio:.2f})"
        )


def _check_compression(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise TorchFaultError(
            f"unknown compression {compression!r}; valid: {', '.join(COMPRESSIONS)}."
            f"{suggest(str(compression), COMPRESSIONS)}"
        )
    return compression


def _compress(raw: bytes, compression: str) -> bytes:
    if compression == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    if compression == "gzip":
        return gzip.compress(raw, compresslevel=9, mtime=0)
    if compression == "bz2":
        return bz2.compress(raw, compresslevel=9)
    return raw


def detect_compression(data: bytes) -> str | None:
    """The compression of file contents by magic bytes, or ``None`` if unknown.

    Example:
        >>> detect_compression(b"\\x1f\\x8b...")
        'gzip'
    """
    for name, magic in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(obj: Any, path: str | Path, compression: str = "lzma") -> CheckpointInfo:
    """Save ``obj`` (a module's state dict, or any ``torch.save``-able value) compressed.

    Args:
        obj: an ``nn.Module`` (its ``state_dict()`` is saved, with the masks of pruned
            parameters applied: see :func:`permanent_state_dict`) or tensors / containers /
            plain values (what ``torch.load(weights_only=True)`` can read back).
        path: the file; written atomically (a temporary file, then a rename).
        compression: lzma (default), gzip, bz2 or none.

    Returns:
        The sizes written.

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "m.pt.gz")
        >>> save_checkpoint(torch.nn.Linear(2, 2), p, compression="gzip").compression
        'gzip'
    """
    _check_compression(compression)
    if isinstance(obj, nn.Module):
        obj = permanent_state_dict(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    data = _compress(raw, compression)
    p = Path(path)
    _write_atomic(p, data)
    return CheckpointInfo(str(p), compression, len(raw), len(data))


def _decompress(data: bytes, path: Path) -> tuple[bytes, str]:
    kind = detect_compression(data)
    if kind is None:
        head = data[:8]
        raise TorchFaultError(
            f"{path} is not a torchfault or PyTorch checkpoint (it starts with {head!r}; "
            f"expected an xz, gzip or bzip2 stream or a torch.save zip file)."
        )
    try:
        if kind == "lzma":
            return lzma.decompress(data), kind
        if kind == "gzip":
            return gzip.decompress(data), kind
        if kind == "bz2":
            return bz2.decompress(data), kind
    except (lzma.LZMAError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise TorchFaultError(
            f"{path} is truncated or corrupted ({kind} stream: {exc}); save it again."
        ) from None
    return data, kind


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise TorchFaultError(f"checkpoint {str(path)!r} is a directory, not a file.")
    if not path.is_file():
        raise TorchFaultError(f"checkpoint {str(path)!r} does not exist.")


def _check_zip(raw: bytes, path: Path) -> None:
    """Check the CRC-32 of every record of a ``torch.save`` zip container (``torch.load`` does
    not, so a flipped bit in an uncompressed file would load as a changed weight)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            bad = zf.testzip()
            # a record flagged as a directory (MS-DOS attribute 0x10) reads back as no data
            if bad is None:
                bad = next((i.filename for i in zf.infolist() if i.external_attr & 0x10), None)
    except (
        zipfile.BadZipFile,
        NotImplementedError,
        EOFError,
        OSError,
        ValueError,
        OverflowError,
        struct.error,
    ) as exc:
        raise TorchFaultError(
            f"{path} is truncated or corrupted (torch.save zip container: {exc}); save it again."
        ) from None
    if bad is not None:
        raise TorchFaultError(
            f"{path} is truncated or corrupted (record {bad!r} of the torch.save zip container "
            "fails its CRC or header check); save it again."
        )


def _pickle_globals(raw: bytes) -> list[str]:
    """``module.name`` of every global a ``torch.save`` file's pickle refers to, in order, read
    with :mod:`pickletools` (no object is built: nothing in the file runs)."""
    import pickletools

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return []
            data = zf.read(name)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return []
    found: list[str] = []
    strings: list[str] = []  # recent string pushes, for STACK_GLOBAL
    memo: dict[Any, Any] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "GLOBAL" and isinstance(arg, str):
                found.append(arg.replace(" ", ".", 1))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(arg))
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                memo[arg] = strings[-1]
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(arg), str):
                strings.append(memo[arg])
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was read so far
        pass
    return list(dict.fromkeys(found))


def _blocked_globals(raw: bytes) -> list[str]:
    """The globals of a ``torch.save`` file that ``weights_only`` loading refuses: code that
    unpickling would import and call (``posix.system``, a class of your own...)."""
    names = _pickle_globals(raw)
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - torch's private table moved: keep the torch.* names
        allowed = set()
    for obj in torch.serialization.get_safe_globals():
        target = obj[0] if isinstance(obj, tuple) else obj
        allowed.add(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
    return [
        n
        for n in names
        if n not in allowed and not (not allowed and n.startswith(("torch.", "collections.")))
    ]


def _refusal(exc: BaseException, raw: bytes, path: Any) -> TorchFaultError:
    """The error for a file that ``weights_only`` loading refused: it names the file and the
    code it holds (the blocked globals), and never suggests loading it with
    ``weights_only=False`` (which would run that code)."""
    blocked = _blocked_globals(raw)
    if not blocked:  # torch's message names the global (2.6 to 2.13 wordings); nothing else
        import re

        blocked = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    what = (
        f"references code, not just tensors: {', '.join(blocked)}"
        if blocked
        else "holds objects that are not tensors, containers or plain values"
    )
    return TorchFaultError(
        f"checkpoint {_name(path)} {what}. torchfault loads checkpoints with "
        "torch.load(weights_only=True) and refuses this file: unpickling it would import and "
        "call that code. Load the weights in trusted code of your own and save a plain state "
        "dict (torch.save(model.state_dict(), path)).",
        field="checkpoint",
    )


def _name(path: Any) -> str:
    """A file name for a message, quoted (undecodable bytes escaped)."""
    from torchfault.config import safe_text

    return safe_text(repr(str(path)))


def torch_load(raw: bytes, path: Any, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of checked ``torch.save`` bytes; a refused file (one
    that holds code) or a corrupted one is a :class:`TorchFaultError` naming ``path``. Every
    loader of torchfault goes through here.

    Example:
        >>> import io, torch
        >>> buf = io.BytesIO()
        >>> torch.save({"w": torch.ones(2)}, buf)
        >>> torch_load(buf.getvalue(), "w.pt")["w"]
        tensor([1., 1.])
    """
    try:
        return torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(exc, raw, path) from None
    except (RuntimeError, EOFError, ValueError, AttributeError, ImportError, TypeError) as exc:
        raise TorchFaultError(
            f"checkpoint {_name(path)} is truncated or corrupted: {str(exc).splitlines()[0]}",
            field="checkpoint",
        ) from None


def read_checkpoint_bytes(path: Any) -> bytes:
    """The ``torch.save`` bytes of a (compressed) checkpoint file, decompressed and checked (zip
    CRCs), for code that reads checkpoints itself (Lightning's ``load_from_checkpoint``).
    ``path`` is a file path or a binary file object.

    Raises:
        TorchFaultError: as :func:`load_checkpoint` does for a missing, truncated, corrupted or
            foreign file.

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "r.pt.gz")
        >>> _ = save_checkpoint({"a": torch.ones(2)}, p, compression="gzip")
        >>> read_checkpoint_bytes(p)[:4]
        b'PK\\x03\\x04'
    """
    if hasattr(path, "read"):  # a binary file object
        p = Path(str(getattr(path, "name", "<file object>")))
        data = path.read()
    else:
        p = Path(path)
        _check_file(p)
        data = p.read_bytes()
    raw, kind = _decompress(data, p)
    if not raw.startswith(_MAGIC["none"]):
        raise TorchFaultError(
            f"{p} decompresses ({kind}) to something that is not a torch.save file."
        )
    _check_zip(raw, p)
    return raw


def permanent_state_dict(module: nn.Module) -> dict[str, Any]:
    """``module.state_dict()`` with every ``torch.nn.utils.prune`` mask applied: for a pruned
    parameter ``weight`` the pair ``weight_orig`` / ``weight_mask`` becomes the plain
    ``weight = weight_orig * weight_mask``, so the file loads into an unpruned model of the same
    architecture. The module itself is left as it is (its masks stay in place).

    Example:
        >>> import torch
        >>> from torch.nn.utils import prune
        >>> lin = prune.l1_unstructured(torch.nn.Linear(4, 2), "weight", amount=0.5)
        >>> sd = permanent_state_dict(lin)
        >>> sorted(sd), int((sd["weight"] == 0).sum())
        (['bias', 'weight'], 4)
    """
    from torch.nn.utils import prune

    sd = module.state_dict()
    folded: dict[str, torch.Tensor] = {}
    for prefix, m in module.named_modules(remove_duplicate=False):  # every name a module has
        for hook in m._forward_pre_hooks.values():
            if not isinstance(hook, prune.BasePruningMethod):
                continue
            name = hook._tensor_name
            key = f"{prefix}.{name}" if prefix else name
            folded[key] = hook.apply_mask(m).detach()
    if not folded:
        return sd
    out: dict[str, Any] = {}
    for key, value in sd.items():
        for suffix in ("_orig", "_mask"):
            base = key.removesuffix(suffix)
            if key.endswith(suffix) and base in folded:
                if suffix == "_orig":
                    out[base] = folded[base]
                break
        else:
            out[key] = value
    return out


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a (compressed) checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: a file written by :func:`save_checkpoint`, by ``torch.save`` or by Lightning.
        map_location: where tensors go.

    Raises:
        TorchFaultError: a missing, truncated, corrupted (zip CRC or stream checksum) or foreign
            file, a directory, or one holding objects that ``weights_only`` loading refuses.

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "x.pt")
        >>> _ = save_checkpoint({"a": torch.ones(2)}, p, compression="none")
        >>> load_checkpoint(p)["a"]
        tensor([1., 1.])
    """
    p = Path(path)
    return torch_load(read_checkpoint_bytes(p), p, map_location)


def compress_file(
    path: str | Path, compression: str = "lzma", out: str | Path | None = None
) -> CheckpointInfo:
    """Compress an existing ``torch.save`` file (in place unless ``out`` is given).

    A file that is already compressed is recompressed with ``compression``.

    Example:
        >>> import os, tempfile, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "c.ckpt")
        >>> torch.save({"w": torch.zeros(500)}, p)
        >>> info = compress_file(p)
        >>> info.ratio > 1, float(load_checkpoint(p)["w"].sum())
        (True, 0.0)
    """
    _check_compression(compression)
    src = Path(path)
    _check_file(src)
    raw, _ = _decompress(src.read_bytes(), src)
    data = _compress(raw, compression)
    dst = Path(out) if out is not None else src
    _write_atomic(dst, data)
    return CheckpointInfo(str(dst), compression, len(raw), len(data))


def default_suffix(compression: str) -> str:
    """The usual file suffix of a compression (``.xz`` for lzma)."""
    return _SUFFIX[_check_compression(compression)]
