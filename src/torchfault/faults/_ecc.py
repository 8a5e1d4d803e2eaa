# SPDX-License-Identifier: MIT
"""Error-correcting codes of memory words: none, even parity, SEC-DED Hamming (a registry).

A code turns the ``d`` data bits of a word into a stored word of ``width`` bits (data bits first,
check bits after them: a systematic code) and back. Decoding a stored word that faults have
changed is *computed* by a real decoder on the bits, never assumed from the number of flips:

- ``parity``: one even-parity bit; an odd number of flipped bits is *detected*, an even number
  passes *undetected*.
- ``secded``: an extended Hamming code (single error correction, double error detection; Hamming
  (72,64) for 64 data bits). One flip is *corrected*; two are *detected*; three or more may be
  detected, pass undetected or be *mis-corrected* (the decoder flips a third, good bit), exactly as
  the syndrome says.

Words are rows of a ``numpy`` 0/1 matrix (``uint8``), so one call encodes or decodes a whole
tensor's memory. Status codes of :meth:`EccCode.decode`: :data:`CLEAN` (syndrome zero),
:data:`CORRECTED` (the decoder changed a bit), :data:`DETECTED` (uncorrectable error flagged).

Example:
    >>> import numpy as np
    >>> code = get_ecc("secded")
    >>> code.width_for(64), code.data_bits_for(72)
    (72, 64)
    >>> data = np.zeros((1, 64), dtype=np.uint8); data[0, 5] = 1
    >>> word = code.encode(data)
    >>> word[0, 3] ^= 1                         # one flipped data bit: corrected
    >>> fixed, status = code.decode(word)
    >>> bool((fixed == data).all()), int(status[0]) == CORRECTED
    (True, True)
    >>> word[0, 9] ^= 1                         # a second one: detected
    >>> int(code.decode(word)[1][0]) == DETECTED
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from torchfault.errors import TorchFaultError, suggest
from torchfault.registry import Registry

__all__ = [
    "CLEAN",
    "CORRECTED",
    "DETECTED",
    "ECC_CODES",
    "EccCode",
    "get_ecc",
    "list_ecc",
    "register_ecc",
]

CLEAN, CORRECTED, DETECTED = 0, 1, 2

ECC_CODES: Registry[Any] = Registry("ecc code", "ecc_codes")


class EccCode:
    """Base class of a systematic code on words of bits (see the module docstring)."""

    name = "none"

    def check_bits(self, data_bits: int) -> int:
        """Check bits the code adds to ``data_bits`` data bits."""
        return 0

    def width_for(self, data_bits: int) -> int:
        """Stored bits of a word holding ``data_bits`` data bits."""
        return data_bits + self.check_bits(data_bits)

    def data_bits_for(self, width: int) -> int:
        """Data bits of a stored word of ``width`` bits; an error when no word of the code is that wide."""
        for d in range(width, 0, -1):
            w = self.width_for(d)
            if w == width:
                return d
            if w < width:
                break
        near = [(self.width_for(d), d) for d in range(1, width + 2)]
        lower = [f"{w} ({d} data + {w - d} check bits)" for w, d in near if w < width][-1:]
        upper = [f"{w} ({d} data + {w - d} check bits)" for w, d in near if w > width][:1]
        raise TorchFaultError(
            f"ecc {self.name!r}: a word of width {width} has no room for its check bits; "
            f"widths near it: {', '.join(lower + upper)}."
        )

    def encode(self, data: np.ndarray) -> np.ndarray:
        """Stored words ``(n, width)`` for data words ``(n, d)`` (0/1 ``uint8``)."""
        return np.ascontiguousarray(data, dtype=np.uint8)

    def decode(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(data (n, d), status (n,))`` of stored words ``(n, width)``."""
        words = np.asarray(words, dtype=np.uint8)
        return words.copy(), np.full(len(words), CLEAN, dtype=np.int8)


class _Parity(EccCode):
    name = "parity"

    def check_bits(self, data_bits: int) -> int:
        return 1

    def encode(self, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data, dtype=np.uint8)
        p = data.sum(axis=1, dtype=np.int64) & 1
        return np.concatenate([data, p[:, None].astype(np.uint8)], axis=1)

    def decode(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        words = np.asarray(words, dtype=np.uint8)
        bad = (words.sum(axis=1, dtype=np.int64) & 1).astype(bool)
        status = np.where(bad, DETECTED, CLEAN).astype(np.int8)
        return words[:, :-1].copy(), status


class _SecDed(EccCode):
    """Extended Hamming code: ``r`` Hamming check bits (``2**r >= d + r + 1``) and one overall
    parity bit. Stored word: data bits ``0..d-1``, Hamming check bits ``d..d+r-1`` (check bit
    ``k`` covers Hamming positions with bit ``k`` set), overall parity bit ``d+r``. Data bit ``i``
    sits at the ``i``-th Hamming position that is not a power of two."""

    name = "secded"

    def check_bits(self, data_bits: int) -> int:
        r = 1
        while (1 << r) < data_bits + r + 1:
            r += 1
        return r + 1

    def _tables(self, d: int) -> tuple[np.ndarray, np.ndarray, int]:
        cache = self.__dict__.setdefault("_cache", {})
        if d in cache:
            return cache[d]
        r = self.check_bits(d) - 1
        positions = [p for p in range(1, d + r + 1) if p & (p - 1)][:d]
        # Hamming position of every stored bit but the overall parity bit
        pos = np.array(positions + [1 << k for k in range(r)], dtype=np.int64)
        h = ((pos[None, :] >> np.arange(r)[:, None]) & 1).astype(np.int64)  # (r, d + r)
        # syndrome -> stored bit to flip (-1: points at no bit of the word)
        where = np.full(1 << r, -1, dtype=np.int64)
        where[pos] = np.arange(d + r)
        cache[d] = (h, where, r)
        return cache[d]

    def encode(self, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data, dtype=np.uint8)
        n, d = data.shape
        h, _, r = self._tables(d)
        checks = (data.astype(np.int64) @ h[:, :d].T) & 1
        body = np.concatenate([data, checks.astype(np.uint8)], axis=1)
        overall = body.sum(axis=1, dtype=np.int64) & 1
        return np.concatenate([body, overall[:, None].astype(np.uint8)], axis=1)

    def decode(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        words = np.array(words, dtype=np.uint8)
        n, width = words.shape
        d = self.data_bits_for(width)
        h, where, r = self._tables(d)
        syn = ((words[:, :-1].astype(np.int64) @ h.T) & 1) @ (1 << np.arange(r))
        odd = (words.sum(axis=1, dtype=np.int64) & 1).astype(bool)
        status = np.full(n, CLEAN, dtype=np.int8)
        # odd parity: a single error (or an odd number the decoder takes for one)
        single = odd & (syn != 0)
        target = where[syn]
        fix = single & (target >= 0)
        rows = np.nonzero(fix)[0]
        words[rows, target[rows]] ^= 1
        status[fix] = CORRECTED
        status[odd & (syn == 0)] = CORRECTED  # the overall parity bit itself
        status[single & (target < 0)] = DETECTED
        status[~odd & (syn != 0)] = DETECTED  # even number of errors
        return words[:, :d].copy(), status


ECC_CODES.add("none", EccCode(), description="No check bits: every flip reaches the data.")
ECC_CODES.add("parity", _Parity(), description="One even-parity bit per word: odd flips detected.")
ECC_CODES.add(
    "secded",
    _SecDed(),
    description="Extended Hamming SEC-DED (72,64 for 64 data bits): 1 corrected, 2 detected.",
)


def get_ecc(name: str | None | EccCode) -> EccCode:
    """The registered code ``name`` (``None`` is ``"none"``).

    Example:
        >>> get_ecc("secded").check_bits(64), get_ecc(None).check_bits(64)
        (8, 0)
    """
    if isinstance(name, EccCode):
        return name
    if name is None:
        name = "none"
    if not isinstance(name, str) or not ECC_CODES.is_registered(name):
        valid = ECC_CODES.list()
        raise TorchFaultError(
            f"ecc must be one of {valid} (or None), got {name!r}.{suggest(str(name), valid)}"
        )
    return ECC_CODES.get(name)


def list_ecc(filter: str | None = None) -> list[str]:
    """Registered code names.

    Example:
        >>> list_ecc()
        ['none', 'parity', 'secded']
    """
    return ECC_CODES.list(filter)


def register_ecc(name: str, code: EccCode, **kw: Any) -> None:
    """Register an :class:`EccCode` instance under ``name``."""
    if not isinstance(code, EccCode):
        raise TorchFaultError(f"register_ecc needs an EccCode instance, got {code!r}.")
    ECC_CODES.add(name, code, **kw)
