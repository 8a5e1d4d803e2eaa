# SPDX-License-Identifier: MIT
"""pytorchfi 0.6's API on torchfault's injection: replace ``from pytorchfi...`` with
``from torchfault.compat.pytorchfi...`` and get the same outputs.

Modules, as in pytorchfi: :mod:`~torchfault.compat.pytorchfi.core` (``fault_injection``, also
named ``FaultInjection``), :mod:`~torchfault.compat.pytorchfi.neuron_error_models`,
:mod:`~torchfault.compat.pytorchfi.weight_error_models` and :mod:`~torchfault.compat.pytorchfi.util`.
The model is never deep-copied and never left faulty; docs/from-pytorchfi.md lists what differs.

Example:
    >>> from torchfault.compat.pytorchfi import core
    >>> core.FaultInjection is core.fault_injection
    True
"""

from torchfault.compat.pytorchfi import core, neuron_error_models, util, weight_error_models

__all__ = ["core", "neuron_error_models", "weight_error_models", "util"]
