# SPDX-License-Identifier: MIT
"""Number formats and vectorised bit operations on tensors (pure functions, no ``nn.Module``).

Bit 0 is the least significant bit of the stored word; for float32, bit 31 is the sign, bits
30..23 the exponent and bits 22..0 the mantissa. Elements are addressed by flat indices in
logical row-major order, whatever the tensor's strides.

Example:
    >>> import torch
    >>> from torchfault.numerics import apply_bits, bit_mask, get_format
    >>> x = torch.tensor([1.0, 2.0])
    >>> apply_bits(x, torch.tensor([1]), bit_mask([31], "float32"))
    tensor([ 1., -2.])
    >>> get_format("float32").bit_names()[23:31] == ["exponent"] * 8
    True
"""

from torchfault.numerics._bits import (
    OPS,
    apply_bits,
    apply_bits_,
    from_words,
    random_words,
    read_elements,
    set_values,
    to_words,
    wrap_words,
)
from torchfault.numerics._formats import (
    KINDS,
    NumberFormat,
    bit_mask,
    check_compatible,
    fixed_format,
    format_of,
    get_format,
    list_formats,
    wrap_int,
)

__all__ = [
    "KINDS",
    "OPS",
    "NumberFormat",
    "apply_bits",
    "apply_bits_",
    "bit_mask",
    "check_compatible",
    "fixed_format",
    "format_of",
    "from_words",
    "get_format",
    "list_formats",
    "random_words",
    "read_elements",
    "set_values",
    "to_words",
    "wrap_int",
    "wrap_words",
]
