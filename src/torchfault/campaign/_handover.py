# SPDX-License-Identifier: MIT
"""Runs an engine handed to the reference engine, by reason: read from the engines
(``FastEngine.handed_over``, :class:`HandedOverEngine`), summed over the engines a campaign built
in this process, for :class:`CampaignResult` and the campaign log."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from torchfault.campaign._engine import Engine, HandedOverEngine

__all__ = ["EngineTap", "handed_over", "handed_over_line"]


def handed_over(engines: Iterable[Engine]) -> dict[str, int]:
    """Runs ``engines`` handed to the reference engine, per reason (reasons with runs only).

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault.campaign import make_criterion
        >>> from torchfault.campaign._engine import ReferenceEngine
        >>> e = ReferenceEngine(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, 2), make_criterion(), 8)
        >>> handed_over([e])
        {}
    """
    out: Counter[str] = Counter()
    for engine in engines:
        if isinstance(engine, HandedOverEngine):
            out[engine.reason] += engine.stats["handed_over"]
        else:
            out.update(getattr(engine, "handed_over", {}))
    return {reason: n for reason, n in sorted(out.items()) if n}


def handed_over_line(engine: str, counts: dict[str, int] | None) -> str | None:
    """The campaign log's line about ``counts`` (``None``: engines ran in other processes and
    their counts do not come back). ``None`` when there is nothing to say (reference engine)."""
    if engine == "reference":
        return None
    if counts is None:
        return (
            f"engine {engine!r}: runs handed to the reference engine are not counted "
            "(engines in worker processes; counted with executor serial or threads)"
        )
    total = sum(counts.values())
    per = "; ".join(f"{reason}: {n}" for reason, n in counts.items())
    return f"engine {engine!r}: {total} runs handed to the reference engine" + (
        f" ({per})" if per else ""
    )


class EngineTap:
    """An engine setup that keeps every engine it builds in this process (threads' deep copies
    share the list); once pickled (worker processes, Ray) the counts are incomplete and
    :meth:`counts` is ``None``.

    Args:
        setup: builds an engine.
    """

    def __init__(self, setup: Callable[[], Engine]) -> None:
        self.setup = setup
        self.engines: list[Engine] | None = []
        self._state = {"pickled": False, "counts": Counter[str]()}

    def __call__(self) -> Engine:
        engine = self.setup()
        if self.engines is not None:
            self.engines.append(engine)
        return engine

    def drain(self) -> None:
        """Add the counts of the engines built so far (finished) and let them go."""
        if self.engines:
            self._state["counts"].update(handed_over(self.engines))  # type: ignore[attr-defined]
            self.engines.clear()

    def counts(self) -> dict[str, int] | None:
        """Runs handed over per reason so far, or ``None`` when engines ran elsewhere."""
        self.drain()
        if self._state["pickled"]:
            return None
        return dict(sorted(self._state["counts"].items()))  # type: ignore[attr-defined]

    def __deepcopy__(self, memo: dict[int, Any]) -> EngineTap:
        twin = EngineTap(copy.deepcopy(self.setup, memo))
        twin.engines, twin._state = self.engines, self._state  # one list, one count
        return twin

    def __getstate__(self) -> dict[str, Any]:
        self._state["pickled"] = True  # an engine will be built in another process
        return {"setup": self.setup}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.setup = state["setup"]
        self.engines = None
        self._state = {"pickled": True, "counts": Counter()}
