# SPDX-License-Identifier: MIT
"""Physical memory faults in a running model: :func:`inject_memory` and :func:`memory_campaign`.

A :class:`~torchfault.faults.MemoryFault` is resolved by a :class:`~torchfault.faults.MemoryMap`
into element faults (bit flips, exact for the tensors' current values) with the words' ECC
decoder off and on; those go through :func:`torchfault.inject`, the one fault-application path,
so everything :func:`~torchfault.inject` guarantees holds (checked before anything is touched,
restored bit for bit on exit).

:func:`memory_campaign` is a small, exact campaign over physical faults: every fault is drawn
from the seed and its number (:meth:`MemoryMap.draw`), resolved once, and run on the same
inputs twice, without and with the decoder, so the two rates are on the same physical faults.
Each run is a full forward pass (no shortcuts). Outcomes per (fault, input): ``masked``
(output bit-identical), ``benign`` (output changed, top-1 class kept), ``sdc`` (top-1 class
changed), ``due`` (non-finite output or an exception), ``detected`` (the decoder flagged an
uncorrectable word: a detected unrecoverable error, the model does not run). The campaign core
(:mod:`torchfault.campaign`) does not know memory faults yet; this is their Python API.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError, suggest
from torchfault.faults import (
    RUN_OUTCOMES,
    MemoryFault,
    MemoryLayout,
    MemoryMap,
    MemoryResolution,
    PatternMix,
)
from torchfault.injectors._inject import Injection, inject

__all__ = ["MemoryInjection", "MemoryCampaignResult", "inject_memory", "memory_campaign"]

MEMORY_OUTCOMES = RUN_OUTCOMES


@dataclass
class MemoryInjection:
    """What :func:`inject_memory` did.

    Attributes:
        resolution: the faults' cells, element faults and decoder status.
        ecc: whether the decoder was on.
        detected: the decoder flagged an uncorrectable word (then nothing was injected: a real
            system stops, or retries, rather than compute on data it knows is bad).
        injection: the :class:`~torchfault.injectors.Injection` of the element faults.
    """

    resolution: MemoryResolution
    ecc: bool
    detected: bool
    injection: Injection


def _memory_map(
    model: nn.Module, memory: MemoryMap | MemoryLayout | Mapping[str, Any]
) -> MemoryMap:
    if isinstance(memory, MemoryMap):
        if memory.model is not model:
            raise TorchFaultError("inject_memory: the MemoryMap was built for another model.")
        return memory
    return MemoryMap(model, memory)


@contextlib.contextmanager
def inject_memory(
    model: nn.Module,
    faults: MemoryFault | Sequence[MemoryFault],
    memory: MemoryMap | MemoryLayout | Mapping[str, Any],
    *,
    ecc: bool = True,
) -> Iterator[MemoryInjection]:
    """Make physical memory faults active in ``model`` inside a ``with`` block.

    Args:
        model: the model whose parameters the memory holds.
        faults: one :class:`MemoryFault` or several (resolved together: faults in one word are
            decoded together).
        memory: a :class:`MemoryMap` of ``model``, or a :class:`MemoryLayout` (every weight and
            bias in it).
        ecc: decode the words with the layout's code (``False``: the check bits are ignored).

    Yields:
        A :class:`MemoryInjection`; when ``detected`` is true nothing is injected.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault.faults import MemoryFault, MemoryLayout
        >>> m = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = m.weight.copy_(torch.tensor([[1.0, 2.0]]))
        >>> layout = MemoryLayout(width=72, ecc="secded")
        >>> hit = MemoryFault(module="", target="weight", word=0, bit=62)  # bit 30 of element 1
        >>> with inject_memory(m, hit, layout, ecc=False):
        ...     m.weight.tolist()
        [[1.0, 0.0]]
        >>> with inject_memory(m, hit, layout) as mi:   # SEC-DED corrects it
        ...     m.weight.tolist(), mi.resolution.status
        ([[1.0, 2.0]], 'corrected')
    """
    mm = _memory_map(model, memory)
    res = mm.resolve(faults)
    detected = res.detected(ecc)
    element_faults = () if detected else res.faults(ecc)
    with inject(model, element_faults) as inj:
        yield MemoryInjection(res, ecc, detected, inj)


def _outcomes(golden: torch.Tensor, out: Any) -> list[str]:
    if not isinstance(out, torch.Tensor) or out.shape != golden.shape:
        return ["due"] * golden.shape[0]
    g = golden.reshape(golden.shape[0], -1)
    o = out.reshape(out.shape[0], -1)
    res = []
    for i in range(len(g)):
        if _bits_equal(g[i], o[i]):
            res.append("masked")
        elif o.is_floating_point() and not bool(torch.isfinite(o[i]).all()):
            res.append("due")
        elif int(g[i].argmax()) != int(o[i].argmax()):
            res.append("sdc")
        else:
            res.append("benign")
    return res


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    idt = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if idt is None or not a.is_floating_point() or a.dtype != b.dtype:
        return bool(torch.equal(a, b))
    return bool(torch.equal(a.contiguous().view(idt), b.contiguous().view(idt)))


@dataclass
class MemoryCampaignResult:
    """Outcomes of :func:`memory_campaign`.

    Attributes:
        memory: the :class:`MemoryMap` (size in Mbit, layout).
        runs: one dict per physical fault: ``fault`` (its dict), ``status`` (the decoder's),
            ``raw`` and ``decoded`` (element faults, as dicts), ``no_ecc`` and ``ecc`` (outcome
            counts over the inputs).
        inputs: inputs per fault.
    """

    memory: MemoryMap
    runs: list[dict[str, Any]] = field(default_factory=list)
    inputs: int = 0

    def counts(self, ecc: bool) -> dict[str, int]:
        """Outcome counts over every (fault, input) run, decoder on (``ecc``) or off."""
        key = "ecc" if ecc else "no_ecc"
        out = dict.fromkeys(MEMORY_OUTCOMES, 0)
        for r in self.runs:
            for k, v in r[key].items():
                out[k] += v
        return out

    def rate(self, outcome: str, ecc: bool) -> float:
        """Fraction of (fault, input) runs with ``outcome``: the probability per upset."""
        if outcome not in MEMORY_OUTCOMES:
            raise TorchFaultError(f"outcome must be one of {MEMORY_OUTCOMES}, got {outcome!r}.")
        c = self.counts(ecc)
        total = sum(c.values())
        return c[outcome] / total if total else math.nan

    def interval(self, outcome: str, ecc: bool, confidence: float = 0.95) -> tuple[float, float]:
        """A confidence interval of :meth:`rate`.

        The runs of one fault share that fault, so they are not independent draws: the sample
        is the faults, each contributing its fraction of inputs with ``outcome``; the interval is
        the normal approximation of their mean, clipped to [0, 1]. When no fault gave the
        outcome, the upper end is the exact (Clopper-Pearson) bound on the share of faults that
        could give it, ``1 - ((1 - confidence) / 2) ** (1 / n)``.

        Example:
            >>> r = MemoryCampaignResult(None, inputs=2)  # type: ignore[arg-type]
            >>> r.runs = [{"ecc": {"sdc": 1, "masked": 1}}, {"ecc": {"masked": 2}}] * 50
            >>> r.rate("sdc", True), [round(v, 3) for v in r.interval("sdc", True)]
            (0.25, [0.201, 0.299])
        """
        if not 0 < confidence < 1:
            raise TorchFaultError(f"confidence must be in (0, 1), got {confidence!r}.")
        key = "ecc" if ecc else "no_ecc"
        n = len(self.runs)
        if n == 0 or not self.inputs:
            return (math.nan, math.nan)
        frac = [r[key].get(outcome, 0) / self.inputs for r in self.runs]
        mean = sum(frac) / n
        if mean == 0:
            return (0.0, 1.0 - ((1.0 - confidence) / 2) ** (1.0 / n))
        sd = statistics.stdev(frac) if n > 1 else 0.0
        half = statistics.NormalDist().inv_cdf(0.5 + confidence / 2) * sd / math.sqrt(n)
        return (max(0.0, mean - half), min(1.0, mean + half))

    def fit(self, outcome: str, ecc: bool, fit_per_mbit: float) -> float:
        """The model's FIT for ``outcome`` at a raw upset rate of ``fit_per_mbit``."""
        return self.memory.fit(fit_per_mbit, self.rate(outcome, ecc))

    def by(self, key: str, ecc: bool) -> dict[str, dict[str, int]]:
        """Outcome counts per stratum: ``key`` is ``"region"`` (the tensor whose rows hold the
        fault's anchor cell), ``"pattern"`` or ``"status"`` (the decoder's verdict).

        Example:
            >>> r = MemoryCampaignResult(None, inputs=1)  # type: ignore[arg-type]
            >>> r.runs = [{"region": "fc:weight", "ecc": {"sdc": 1}}, {"region": "fc:bias", "ecc": {"masked": 1}}]
            >>> r.by("region", ecc=True)["fc:weight"]["sdc"]
            1
        """
        if key not in ("region", "pattern", "status"):
            raise TorchFaultError(
                f"by: key must be 'region', 'pattern' or 'status', got {key!r}."
                f"{suggest(str(key), ['region', 'pattern', 'status'])}"
            )
        col = "ecc" if ecc else "no_ecc"
        out: dict[str, dict[str, int]] = {}
        for r in self.runs:
            name = r["fault"]["pattern"] if key == "pattern" else r[key]
            acc = out.setdefault(name, dict.fromkeys(MEMORY_OUTCOMES, 0))
            for k, v in r[col].items():
                acc[k] += v
        return out

    def statuses(self) -> dict[str, int]:
        """How many physical faults the decoder saw as each status."""
        out: dict[str, int] = {}
        for r in self.runs:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


@torch.no_grad()
def memory_campaign(
    model: nn.Module,
    inputs: torch.Tensor,
    memory: MemoryMap | MemoryLayout | Mapping[str, Any],
    *,
    n: int,
    seed: int = 0,
    patterns: PatternMix | Mapping[Any, float] | str = "single",
    op: str = "flip",
) -> MemoryCampaignResult:
    """Run ``n`` physical faults on ``inputs``, without and with the decoder (see the module
    docstring); every fault is transient (one forward pass) unless ``op`` is a stuck-at.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault.faults import MemoryLayout
        >>> torch.manual_seed(0); m = nn.Linear(8, 4).eval()  # doctest: +ELLIPSIS
        <torch._C.Generator ...>
        >>> r = memory_campaign(m, torch.randn(16, 8), MemoryLayout(width=72, ecc="secded"), n=20)
        >>> r.counts(ecc=True)["sdc"], r.statuses()["corrected"] > 0
        (0, True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TorchFaultError(f"memory_campaign: n must be an integer >= 1, got {n!r}.")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or len(inputs) == 0:
        raise TorchFaultError("memory_campaign: inputs must be a non-empty batch tensor.")
    mm = _memory_map(model, memory)
    mix = patterns if isinstance(patterns, PatternMix) else PatternMix(patterns)
    persistence = "transient" if op == "flip" else "permanent"
    golden = model(inputs)
    result = MemoryCampaignResult(mm, inputs=len(inputs))
    for k in range(n):
        fault = mm.draw(k, seed, mix, op=op, persistence=persistence)
        res = mm.resolve(fault)
        row: dict[str, Any] = {
            "fault": fault.to_dict(),
            "region": mm.region_at(int(fault.row)).name,  # type: ignore[arg-type]
            "status": res.status,
            "raw": [f.to_dict() for f in res.raw],
            "decoded": [f.to_dict() for f in res.decoded],
        }
        for key, ecc in (("no_ecc", False), ("ecc", True)):
            counts: dict[str, int] = {}
            if res.detected(ecc):
                counts["detected"] = len(inputs)
            elif not res.faults(ecc):
                counts["masked"] = len(inputs)
            else:
                try:
                    with inject(model, res.faults(ecc)):
                        outs = _outcomes(golden, model(inputs))
                except Exception:  # noqa: BLE001 - an exception under a fault is a DUE
                    outs = ["due"] * len(inputs)
                for o in outs:
                    counts[o] = counts.get(o, 0) + 1
            row[key] = counts
        result.runs.append(row)
    return result
