# SPDX-License-Identifier: MIT
"""The fast engine's tuning knobs, one frozen value (``engine.fast`` in a campaign config)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torchfault.errors import ConfigError

__all__ = ["FastOptions"]


@dataclass(frozen=True)
class FastOptions:
    """How the ``fast`` engine trades memory and checks for speed; none of them changes a record.

    Attributes:
        cache_bytes: memory budget of the golden values (per engine, i.e. per worker): the
            cache keeps it less a reserve for the batches (two values of ``batch_size`` rows of
            the largest value per row, at most half), and blocks of inputs are cut below
            ``batch_size`` so that one block's golden values take at most half the cache.
        max_checks: masking checks per site after the site itself (where rows that are golden
            again are dropped as masked).
        window: compute the layers after an activation fault on the spatial window the fault can
            reach (checked by golden canary rows).
        window_area: the windowed computation stops (the whole maps are computed) at the first
            layer whose window would cover more than this fraction of its output map.
        window_min_rows: fewest rows of one site in a batch for windows to be used (below it,
            the fixed cost of the windowed steps outweighs what they save).
        channels: compute the per-channel layers after a convolution weight fault (batch norm,
            ReLU, a residual sum) on the one channel the fault changes (checked by golden canary
            rows).
        row_check_rows: inputs whose every value is compared in a batch of the engine's
            ``min_rows`` rows and at the end of taller batches before the fast path is trusted.
        row_check_heights: the taller batches: the checked rows after this many other rows.
        row_alignment: bytes per row that keep every row of a buffer on the same lanes of
            vectorised kernels (transcendental element-wise functions are trusted only on such
            rows).

    Example:
        >>> from torchfault.campaign import FastOptions
        >>> FastOptions(window=False).window_area
        0.5
        >>> FastOptions(window_area=2.0)
        Traceback (most recent call last):
        ...
        torchfault.errors.ConfigError: engine.fast.window_area: must be in (0, 1], got 2.0.
    """

    cache_bytes: int = 512 * 2**20
    max_checks: int = 4
    window: bool = True
    window_area: float = 0.5
    window_min_rows: int = 32
    channels: bool = True
    row_check_rows: int = 16
    row_check_heights: tuple[int, ...] = (1, 3, 33)
    row_alignment: int = 256

    def __post_init__(self) -> None:
        def bad(name: str, what: str) -> ConfigError:
            where = f"engine.fast.{name}"
            return ConfigError(f"{where}: {what}, got {getattr(self, name)!r}.", field=where)

        for name, low in (
            ("cache_bytes", 0),
            ("max_checks", 0),
            ("window_min_rows", 1),
            ("row_check_rows", 1),
            ("row_alignment", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"must be an integer >= {low}")
        for name in ("window", "channels"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        area = self.window_area
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not 0 < area <= 1:
            raise bad("window_area", "must be in (0, 1]")
        heights = self.row_check_heights
        if (
            not isinstance(heights, tuple)
            or not heights
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in heights)
        ):
            raise bad("row_check_heights", "must be a non-empty tuple of integers >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FastOptions:
        """Options from a plain dict; an unknown key is a ConfigError naming it."""
        from torchfault.config import from_dict

        return from_dict(cls, data, "engine.fast")

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (YAML/JSON)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["row_check_heights"] = list(self.row_check_heights)
        return out
