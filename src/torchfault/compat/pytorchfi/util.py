# SPDX-License-Identifier: MIT
"""pytorchfi 0.6's ``util``: :func:`random_value` from Python's ``random`` module.

pytorchfi draws every random choice from Python's global ``random`` generator, so
``random.seed(s)`` before a call reproduces it here exactly as in pytorchfi.

Example:
    >>> import random
    >>> from torchfault.compat.pytorchfi.util import random_value
    >>> random.seed(3); a = random_value(-2, 2)
    >>> random.seed(3); a == random_value(-2, 2) and -2 <= a <= 2
    True
"""

from __future__ import annotations

import random

__all__ = ["random", "random_value"]


def random_value(min_val: float = -1, max_val: float = 1) -> float:
    """A uniform number in ``[min_val, max_val]`` (``random.uniform``), as in pytorchfi."""
    return random.uniform(min_val, max_val)
