# SPDX-License-Identifier: MIT
"""The fast engine's notices: why runs go to the reference engine (:data:`REASONS`, counted in
``FastEngine.handed_over``), and one log warning per model and reason."""

from __future__ import annotations

import logging

__all__ = ["REASONS", "first_line", "log", "warn_once"]

log = logging.getLogger("torchfault.campaign")
_WARNED: set[str] = set()

#: why runs go to the reference engine: the values are the keys of ``FastEngine.handed_over``
REASONS = {
    "trace": "model not traceable by torch.fx",
    "run": "traced graph does not run",
    "output": "outputs the traced graph cannot flatten as the golden ones (tensors of several "
    "dtypes, values without a batch dimension)",
    "several": "several faults in one run",
    "kind": "fault on an input, or with sample or element set",
    "random": "random fault model (one seeded run per input)",
    "calls": "module called more than once (no call given, or a call that never happens)",
    "hidden": "module not in the traced graph (inside a module traced whole, or not called)",
    "tensor": "parameter shared, read by the graph, or module not found",
    "position": "transcendental element-wise function: the row sits where the kernel rounds "
    "by position, or a function not computed position-free on unaligned rows or several threads",
    "batch": "rows depend on the batch composition",
    "undecided": "row check not made yet (no input of the block reproduces golden)",
    "golden": "traced graph does not reproduce the input's golden output",
    "site": "site's golden values cannot stand in (in-place changes, not row-indexed, "
    "module output not reproduced)",
    "index": "activation index does not fit the tensor",
    "unsupported": "operation after the site not supported",
    "apart": "faulty rows with another dtype or quantizer (a QuantStub scale fault)",
    "raised": "the batch raised (each run rerun for its own outcome)",
}


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
