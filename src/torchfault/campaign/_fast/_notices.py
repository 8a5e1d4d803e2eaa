# SPDX-License-Identifier: MIT
"""The fast engine's log: one warning per model and reason when runs go to the reference engine."""

from __future__ import annotations

import logging

__all__ = ["first_line", "log", "warn_once"]

log = logging.getLogger("torchfault.campaign")
_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
