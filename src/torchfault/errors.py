# SPDX-License-Identifier: MIT
"""Errors raised by torchfault.

Every error a user can cause is a :class:`TorchFaultError`, a ``ValueError`` subclass, whose
message names what was asked and what is valid. Where the error is about one setting, the error
also *carries* it: ``exc.field`` is set where the error is raised (``"seed"``,
``"sampler.margin"``, ``"dataset"``), so callers that re-address an error (a campaign naming
``model.kwargs`` for the zoo's ``options``) never parse the message back.

Example:
    >>> try:
    ...     raise ConfigError("seed: must be >= 0, got -1.", field="seed")
    ... except TorchFaultError as exc:
    ...     exc.field
    'seed'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["TorchFaultError", "ConfigError", "StoreMismatchError", "suggest"]


class TorchFaultError(ValueError):
    """A request torchfault cannot carry out; the message says what was asked and what is valid.

    Args:
        message: the whole message (it names the field itself, as users read it).
        field: the setting the error is about (dotted for nested configs), or ``None``.
    """

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def at(self, field: str | None, message: str | None = None) -> TorchFaultError:
        """A copy of this error (same class) about ``field``, with ``message`` if given."""
        return type(self)(str(self) if message is None else message, field=field)


class ConfigError(TorchFaultError):
    """A bad value in a configuration; the message names the field, ``field`` carries it."""


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
