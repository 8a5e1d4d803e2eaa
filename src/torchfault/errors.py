# SPDX-License-Identifier: MIT
"""Errors raised by torchfault.

Every error a user can cause is a :class:`TorchFaultError`, a ``ValueError`` subclass, whose
message names what was asked and what is valid.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["TorchFaultError", "ConfigError", "StoreMismatchError", "suggest"]


class TorchFaultError(ValueError):
    """A request torchfault cannot carry out; the message says what was asked and what is valid."""


class ConfigError(TorchFaultError):
    """A bad value in a configuration; the message names the field."""


class StoreMismatchError(TorchFaultError):
    """A results store was opened with a different campaign (config, model or inputs)."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest valid name, or ``""``.

    Example:
        >>> suggest("bitflip", ["bit_flip", "zero"])
        " Did you mean 'bit_flip'?"
    """
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
