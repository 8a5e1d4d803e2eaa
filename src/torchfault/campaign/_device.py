# SPDX-License-Identifier: MIT
"""Which device a campaign runs on: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.

A device that does not exist on this machine is a :class:`~torchfault.errors.ConfigError`
naming the field, raised before anything runs. ``auto`` takes the first CUDA GPU, else Apple's
``mps``, else the CPU. Nothing of this module has been run on a GPU in torchfault's own tests
(the CI machines have none); the GPU tests are marked ``gpu`` and skipped without one.
"""

from __future__ import annotations

import re

import torch

from torchfault.errors import ConfigError, suggest

__all__ = ["resolve_device", "DEVICE_CHOICES"]

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "mps", "auto")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def _error(field: str, message: str) -> ConfigError:
    return ConfigError(message, field=field)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device | None, field: str = "engine.device") -> torch.device:
    """The :class:`torch.device` ``spec`` names, checked to exist here.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        torchfault.errors.ConfigError: engine.device: 'tpu' is not a device; choose cpu, cuda, cuda:N, mps or auto...
    """
    if spec is None:
        return torch.device("cpu")
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise _error(
                field,
                f"{field}: 'mps' is not available on this machine (no Apple GPU, or torch "
                "built without MPS); choose cpu or auto.",
            )
        return torch.device("mps")
    m = _CUDA.match(text)
    if m:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m.group(1) or 0)
        if n == 0:
            raise _error(
                field,
                f"{field}: {str(spec)!r} does not exist: this machine has no CUDA GPU (or torch "
                f"{torch.__version__} was built without CUDA); choose cpu or auto.",
            )
        if index >= n:
            raise _error(
                field,
                f"{field}: {str(spec)!r} does not exist: this machine has {n} CUDA GPU(s), "
                f"cuda:0 to cuda:{n - 1}.",
            )
        return torch.device("cuda", index)
    raise _error(
        field,
        f"{field}: {str(spec)!r} is not a device; choose {', '.join(DEVICE_CHOICES[:-1])} or "
        f"auto.{suggest(text, ['cpu', 'cuda', 'mps', 'auto'])}",
    )
