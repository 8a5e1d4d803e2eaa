# SPDX-License-Identifier: MIT
"""ECC codes against a pure-Python textbook oracle (extended Hamming code on positions, parity)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from torchfault.errors import TorchFaultError
from torchfault.faults import get_ecc, list_ecc
from torchfault.faults._ecc import CLEAN, CORRECTED, DETECTED


def _r(d: int) -> int:
    r = 0
    while 2**r < d + r + 1:
        r += 1
    return r


def oracle_encode(data: list[int]) -> list[int]:
    """Textbook extended Hamming: code positions 1..n (check bits at powers of two), overall
    parity at position 0; returned in the documented stored order: data bits, check bits for
    positions 1, 2, 4, ..., overall parity."""
    d = len(data)
    r = _r(d)
    n = d + r
    code = [0] * (n + 1)
    data_pos = [p for p in range(1, n + 1) if p & (p - 1) != 0]
    for p, bit in zip(data_pos, data):
        code[p] = bit
    for k in range(r):
        p = 1 << k
        code[p] = sum(code[i] for i in range(1, n + 1) if i & p and i != p) % 2
    code[0] = sum(code[1:]) % 2
    return [code[p] for p in data_pos] + [code[1 << k] for k in range(r)] + [code[0]]


def oracle_decode(stored: list[int], d: int) -> tuple[list[int], str]:
    r = _r(d)
    n = d + r
    data_pos = [p for p in range(1, n + 1) if p & (p - 1) != 0]
    code = [0] * (n + 1)
    for p, bit in zip(data_pos + [1 << k for k in range(r)] + [0], stored):
        code[p] = bit
    syndrome = 0
    for i in range(1, n + 1):
        if code[i]:
            syndrome ^= i
    overall = sum(code) % 2
    if syndrome == 0 and overall == 0:
        status = "clean"
    elif overall == 1:
        if syndrome == 0:
            code[0] ^= 1
            status = "corrected"
        elif syndrome <= n:
            code[syndrome] ^= 1
            status = "corrected"
        else:
            status = "detected"
    else:
        status = "detected"
    return [code[p] for p in data_pos], status


_NAMES = {CLEAN: "clean", CORRECTED: "corrected", DETECTED: "detected"}


@pytest.mark.parametrize("d", [4, 8, 16, 26, 32, 57, 64, 128])
def test_secded_matches_textbook_oracle(d):
    code = get_ecc("secded")
    rng = random.Random(d)
    data = [[rng.randrange(2) for _ in range(d)] for _ in range(40)]
    enc = code.encode(np.array(data, dtype=np.uint8))
    width = code.width_for(d)
    assert enc.shape == (40, width) and code.data_bits_for(width) == d
    for row, word in zip(data, enc):
        assert word.tolist() == oracle_encode(row)
    # flips of 1..5 bits: the decoder's data and status are the oracle's
    words, expected = [], []
    for row in data:
        for nflip in range(1, 6):
            stored = oracle_encode(row)
            for b in rng.sample(range(width), nflip):
                stored[b] ^= 1
            words.append(stored)
            expected.append(oracle_decode(stored, d))
    got, status = code.decode(np.array(words, dtype=np.uint8))
    for g, s, (exp_data, exp_status) in zip(got, status, expected):
        assert g.tolist() == exp_data
        assert _NAMES[int(s)] == exp_status


def test_hamming_72_64_every_single_corrected_every_double_detected():
    code = get_ecc("secded")
    assert code.width_for(64) == 72
    rng = np.random.default_rng(0)
    data = rng.integers(0, 2, (1, 64), dtype=np.uint8)
    clean = code.encode(data)
    singles = np.repeat(clean, 72, axis=0)
    singles[np.arange(72), np.arange(72)] ^= 1
    out, status = code.decode(singles)
    assert (status == CORRECTED).all() and (out == data).all()
    pairs = list(itertools.combinations(range(72), 2))
    doubles = np.repeat(clean, len(pairs), axis=0)
    a, b = np.array(pairs).T
    doubles[np.arange(len(pairs)), a] ^= 1
    doubles[np.arange(len(pairs)), b] ^= 1
    assert (code.decode(doubles)[1] == DETECTED).all()
    # triples: the decoder mis-corrects some (computed): it never reports them clean
    triples = np.repeat(clean, 500, axis=0)
    for i in range(500):
        triples[i, rng.choice(72, 3, replace=False)] ^= 1
    out, status = code.decode(triples)
    assert not (status == CLEAN).any()
    assert (status == CORRECTED).sum() > 0  # mis-corrections exist
    assert not (out[status == CORRECTED] == data).all(axis=1).any()


def test_parity_matches_oracle():
    code = get_ecc("parity")
    rng = random.Random(1)
    for d in (1, 8, 32, 64):
        data = [rng.randrange(2) for _ in range(d)]
        word = code.encode(np.array([data], dtype=np.uint8))[0].tolist()
        assert word == data + [sum(data) % 2]
        for nflip in range(1, 5):
            w = list(word)
            for b in rng.sample(range(d + 1), min(nflip, d + 1)):
                w[b] ^= 1
            _, status = code.decode(np.array([w], dtype=np.uint8))
            assert _NAMES[int(status[0])] == ("detected" if sum(w) % 2 else "clean")


def test_registry_and_bad_input():
    assert list_ecc() == ["none", "parity", "secded"]
    with pytest.raises(TorchFaultError, match="secdd.*Did you mean 'secded'"):
        get_ecc("secdd")
    with pytest.raises(TorchFaultError, match="width 9 has no room"):
        get_ecc("secded").data_bits_for(9)
    with pytest.raises(TorchFaultError, match="no room"):
        get_ecc("secded").data_bits_for(3)
