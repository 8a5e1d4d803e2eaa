# SPDX-License-Identifier: MIT
"""Shapes of memory upsets: which cells one event hits, around an anchor cell (a registry).

A memory is a grid of cells (physical rows = word lines, columns = bit lines; see
:mod:`torchfault.faults._layouts`). A :class:`CellPattern` lists the cells one event hits,
relative to its anchor ``(row, column)`` (its top-left cell):

- ``single``: the anchor cell;
- ``adjacent_bits``: ``size`` neighbouring cells along a row (adjacent bits of a word, or of
  interleaved words);
- ``adjacent_words``: ``size`` cells down a column (the same bit of words in adjacent rows);
- ``cluster``: a ``size`` = ``(rows, columns)`` block, ``(2, 2)`` by default;
- ``word_line``: the whole row (a failed word line);
- ``bit_line``: the whole column (a failed bit line / sense amplifier).

:class:`PatternMix` draws patterns with configurable relative frequencies (multi-cell upsets are
a few percent of events in recent SRAM nodes, more at low voltage: give the mix your technology's
figures).

Example:
    >>> CellPattern("cluster").offsets(rows=8, columns=64)
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> CellPattern.parse("adjacent_bits:3").offsets(rows=8, columns=64)
    [(0, 0), (0, 1), (0, 2)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchfault.errors import TorchFaultError, suggest
from torchfault.registry import Registry

__all__ = ["PATTERNS", "CellPattern", "PatternMix", "list_patterns", "register_pattern"]

#: ``fn(size, rows, columns) -> list of (row offset, column offset)``; ``size`` is the pattern's
#: size (an int, a pair or ``None`` for the default).
PATTERNS: Registry[Callable[..., list[tuple[int, int]]]] = Registry("cell pattern")


# register_pattern (a decorator for patterns ``fn(size, rows, columns) -> [(dr, dc), ...]``) and
# list_patterns (the registered names; tests/test_registry.py checks the built-in ones)
register_pattern, list_patterns, _, _, _ = PATTERNS.functions("pattern", "patterns")


def _n(size: Any, default: int, name: str) -> int:
    n = default if size is None else size
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise TorchFaultError(f"pattern {name!r}: size must be an integer >= 1, got {size!r}.")
    return int(n)


@register_pattern("single", description="One cell.")
def _single(size: Any, rows: int, columns: int) -> list[tuple[int, int]]:
    if size not in (None, 1):
        raise TorchFaultError(f"pattern 'single' has no size other than 1, got {size!r}.")
    return [(0, 0)]


@register_pattern("adjacent_bits", description="size cells side by side along a row (default 2).")
def _adjacent_bits(size: Any, rows: int, columns: int) -> list[tuple[int, int]]:
    return [(0, i) for i in range(_n(size, 2, "adjacent_bits"))]


@register_pattern("adjacent_words", description="size cells down a column (default 2).")
def _adjacent_words(size: Any, rows: int, columns: int) -> list[tuple[int, int]]:
    return [(i, 0) for i in range(_n(size, 2, "adjacent_words"))]


@register_pattern("cluster", description="A (rows, columns) block of cells (default 2x2).")
def _cluster(size: Any, rows: int, columns: int) -> list[tuple[int, int]]:
    h, w = (2, 2) if size is None else (size, size) if isinstance(size, int) else tuple(size)
    h, w = _n(h, 2, "cluster"), _n(w, 2, "cluster")
    return [(i, j) for i in range(h) for j in range(w)]


@register_pattern("word_line", description="Every cell of the anchor's row.")
def _word_line(size: Any, rows: int, columns: int) -> list[tuple[int, int]]:
    return [(0, j) for j in range(columns)]


@register_pattern("bit_line", description="Every cell of the anchor's column.")
def _bit_line(size: Any, rows: int, columns: int) -> list[tuple[int, int]]:
    return [(i, 0) for i in range(rows)]


def _size_of(text: str) -> Any:
    if "x" in text:
        a, b = text.split("x", 1)
        return (int(a), int(b))
    return int(text)


@dataclass(frozen=True)
class CellPattern:
    """A registered pattern with its size (see the module docstring).

    Attributes:
        name: a registered pattern (:func:`list_patterns`).
        size: its size: cells for ``adjacent_*``, ``(rows, columns)`` for ``cluster``.
    """

    name: str = "single"
    size: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not PATTERNS.is_registered(self.name):
            raise TorchFaultError(
                f"pattern must be one of {list_patterns()}, got {self.name!r}."
                f"{suggest(str(self.name), list_patterns())}"
            )
        if isinstance(self.size, list):
            object.__setattr__(self, "size", tuple(self.size))
        if self.name in ("word_line", "bit_line"):
            if self.size is not None:
                raise TorchFaultError(
                    f"pattern {self.name!r} spans a whole line and takes no size, got {self.size!r}."
                )
        else:
            PATTERNS.get(self.name)(self.size, 1, 1)  # checks the size

    @classmethod
    def parse(cls, spec: str | CellPattern | Mapping[str, Any]) -> CellPattern:
        """A pattern from ``"name"``, ``"name:size"`` (``"cluster:2x3"``) or a dict."""
        if isinstance(spec, CellPattern):
            return spec
        if isinstance(spec, Mapping):
            return cls(**dict(spec))
        if not isinstance(spec, str):
            raise TorchFaultError(f"a pattern is a name like 'adjacent_bits:2', got {spec!r}.")
        name, _, size = spec.partition(":")
        try:
            return cls(name, _size_of(size) if size else None)
        except ValueError as exc:
            if isinstance(exc, TorchFaultError):
                raise
            raise TorchFaultError(
                f"pattern {spec!r}: the size after ':' must be an integer or RxC."
            ) from None

    @property
    def label(self) -> str:
        """``name`` or ``name:size``."""
        if self.size is None:
            return self.name
        s = "x".join(map(str, self.size)) if isinstance(self.size, tuple) else str(self.size)
        return f"{self.name}:{s}"

    def offsets(self, rows: int, columns: int) -> list[tuple[int, int]]:
        """Cells hit relative to the anchor, in a memory of ``rows`` x ``columns`` cells; a
        pattern larger than the memory's row (or column) is an error naming both."""
        out = PATTERNS.get(self.name)(self.size, rows, columns)
        h = max(r for r, _ in out) + 1
        w = max(c for _, c in out) + 1
        if w > columns:
            raise TorchFaultError(
                f"pattern {self.label!r} spans {w} cells of a row but a row of this memory has "
                f"{columns} cells (the word width times the words per row): it is larger than "
                "the word (row)."
            )
        if h > rows:
            raise TorchFaultError(
                f"pattern {self.label!r} spans {h} rows but this memory has {rows} row(s)."
            )
        return out

    def anchors(self, rows: int, columns: int) -> tuple[int, int]:
        """Numbers of anchor rows and columns where the pattern fits in the memory."""
        out = self.offsets(rows, columns)
        h = max(r for r, _ in out) + 1
        w = max(c for _, c in out) + 1
        if self.name == "word_line":
            return rows, 1
        if self.name == "bit_line":
            return 1, columns
        return rows - h + 1, columns - w + 1


class PatternMix:
    """Patterns with relative frequencies; :meth:`choose` draws one from a ``numpy`` generator.

    Args:
        mix: ``{pattern spec: relative frequency}``, e.g.
            ``{"single": 0.9, "adjacent_bits:2": 0.07, "cluster": 0.03}``; a single spec or
            pattern means that pattern always.

    Example:
        >>> mix = PatternMix({"single": 3, "adjacent_bits": 1})
        >>> mix.probabilities
        {'single': 0.75, 'adjacent_bits': 0.25}
    """

    def __init__(self, mix: Mapping[Any, float] | str | CellPattern = "single") -> None:
        if isinstance(mix, (str, CellPattern)):
            mix = {mix: 1.0}
        if not isinstance(mix, Mapping) or not mix:
            raise TorchFaultError(
                f"patterns must be a dict {{pattern: relative frequency}}, got {mix!r}."
            )
        self.patterns = [CellPattern.parse(k) for k in mix]
        w = []
        for k, v in mix.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise TorchFaultError(
                    f"patterns: the frequency of {k!r} must be a number >= 0, got {v!r}."
                )
            w.append(float(v))
        total = sum(w)
        if not total > 0 or total == float("inf"):
            raise TorchFaultError(f"patterns: frequencies must add up to a number > 0, got {w}.")
        self.weights = np.array(w) / total

    @property
    def probabilities(self) -> dict[str, float]:
        """``{label: probability}``."""
        return {p.label: float(q) for p, q in zip(self.patterns, self.weights)}

    def choose(self, rng: np.random.Generator) -> CellPattern:
        """One pattern, drawn by frequency."""
        return self.patterns[int(rng.choice(len(self.patterns), p=self.weights))]

    def to_dict(self) -> dict[str, float]:
        return self.probabilities
