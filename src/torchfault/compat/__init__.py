# SPDX-License-Identifier: MIT
"""Drop-in layers for other fault injectors' APIs, built on torchfault's injection core.

- :mod:`torchfault.compat.pytorchfi`: pytorchfi 0.6 (``core``, ``neuron_error_models``,
  ``weight_error_models``, ``util``). Changing ``from pytorchfi...`` to
  ``from torchfault.compat.pytorchfi...`` gives the same outputs, without pytorchfi's deep copy of
  the model per declared fault; see docs/from-pytorchfi.md for the differences.

This package sits at the top of the import layers (beside ``torchfault.cli``): it uses
``torchfault.faults``, ``torchfault.injectors`` and ``torchfault.numerics`` and nothing imports it.
"""

__all__ = ["pytorchfi"]
