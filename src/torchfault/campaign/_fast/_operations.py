# SPDX-License-Identifier: MIT
"""Which graph operations mask faults, which may round by position, and which run on windows.

Three tables of modules, functions and tensor methods, and the predicates over fx nodes that read
them. ``module`` arguments are the submodule a ``call_module`` node calls (``None`` for others).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module_globals
from torch.nn.modules.utils import _pair

__all__ = ["channel_kind", "hooked", "is_inexact", "is_masking", "window_kind"]

#: operations after which a row whose value is golden again is finished as masked
MASKING_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Threshold,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
MASKING_FUNCTIONS = {
    torch.relu,
    torch.clamp,
    torch.clip,
    torch.maximum,
    torch.minimum,
    torch.amax,
    torch.max,
    F.relu,
    F.relu6,
    F.hardtanh,
    F.threshold,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
MASKING_METHODS = {
    "relu",
    "relu_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "clip",
    "amax",
    "max",
}


# Spatial windows (activation faults): operations whose output at one position reads a bounded
# neighbourhood of their inputs, computed on crops around a fault (see window_kind). Transcendental
# element-wise functions (INEXACT_MODULES below) are not among them: their bits may depend on
# where a value sits in its buffer, so they are computed on whole maps.
WINDOW_UNARY_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Threshold,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
)
WINDOW_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.relu,
    torch.clamp,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
}
WINDOW_METHODS = {
    "add",
    "sub",
    "mul",
    "div",
    "relu",
    "clamp",
    "clamp_min",
    "clamp_max",
}


#: element-wise operations whose CPU kernels round differently on their vectorised path and on
#: the scalar path for the tail of a buffer (transcendental functions): a value's bits then
#: depend on where it sits in its buffer, which the fast engine changes (rows in other batches,
#: windows cropped from maps)
INEXACT_MODULES: tuple[type, ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.LogSigmoid,
    nn.Tanhshrink,
)
INEXACT_FUNCTIONS = {
    torch.sigmoid,
    torch.tanh,
    torch.exp,
    torch.exp2,
    torch.expm1,
    torch.log,
    torch.log2,
    torch.log10,
    torch.log1p,
    torch.sin,
    torch.cos,
    torch.tan,
    torch.erf,
    torch.erfc,
    torch.pow,
    torch.special.expit,
    operator.pow,
    F.gelu,
    F.silu,
    F.elu,
    F.celu,
    F.selu,
    F.softplus,
    F.mish,
    F.logsigmoid,
    F.tanhshrink,
}
INEXACT_METHODS = {
    "sigmoid",
    "tanh",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log2",
    "log10",
    "log1p",
    "sin",
    "cos",
    "tan",
    "erf",
    "erfc",
    "pow",
    "sigmoid_",
    "tanh_",
    "exp_",
    "log_",
}


def _node_in(
    node: fx.Node, module: nn.Module | None, modules: tuple[type, ...], functions: Any, methods: Any
) -> bool:
    """Whether ``node`` calls a module of one of the types ``modules``, or one of the
    ``functions``, or a tensor method named in ``methods``."""
    if node.op == "call_module":
        return isinstance(module, modules)
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def is_masking(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether ``node`` may make a faulty value golden again (ReLU-like, max-pooling)."""
    return _node_in(node, module, MASKING_MODULES, MASKING_FUNCTIONS, MASKING_METHODS)


def is_inexact(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether ``node`` is an element-wise operation whose bits may depend on its position in
    the buffer (see ``INEXACT_MODULES``)."""
    return _node_in(node, module, INEXACT_MODULES, INEXACT_FUNCTIONS, INEXACT_METHODS)


def hooked(module: nn.Module | None) -> bool:
    """Whether calling ``module`` runs hooks: its own forward or forward-pre hooks, or global
    ones (a user's clamp, a detector). The shortcuts that compute a module's work with its
    kernels directly (spatial and channel windows, stacked convolutions, in-place steps) would
    skip them, so they leave such a module to its own call.

    Example:
        >>> import torch.nn as nn
        >>> relu = nn.ReLU()
        >>> hooked(relu), hooked(None)
        (False, False)
        >>> h = relu.register_forward_hook(lambda m, a, o: o.clamp(max=1.0))
        >>> hooked(relu)
        True
        >>> h.remove()
    """
    if module is None:
        return False
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(_module_globals, "_global_forward_hooks", None)
        or getattr(_module_globals, "_global_forward_pre_hooks", None)
    )


def _elementwise_kind(node: fx.Node) -> str | None:
    """``ew`` for an element-wise function or method of the windows' tables, else ``None``."""
    if node.op == "call_function" and node.target in WINDOW_FUNCTIONS:
        return "ew"
    if node.op == "call_method" and node.target in WINDOW_METHODS:
        return "ew"
    return None


def window_kind(node: fx.Node, module: nn.Module | None) -> str | None:
    """How ``node`` can run on a spatial window of its 4-d inputs: ``conv``, ``maxpool``,
    ``avgpool`` (a bounded neighbourhood, its halo read from golden values), ``unary`` (one module
    input, element by element) or ``ew`` (an element-wise function or method); ``None``: it cannot.
    """
    if node.op == "call_module":
        m = module
        if hooked(m):
            return None
        kind = type(m)
        if isinstance(m, nn.Conv2d) and kind is nn.Conv2d:
            ok = m.padding_mode == "zeros" and isinstance(m.padding, tuple)
            return "conv" if ok else None
        if isinstance(m, nn.MaxPool2d) and kind is nn.MaxPool2d:
            return "maxpool" if not (m.ceil_mode or m.return_indices) else None
        if isinstance(m, nn.AvgPool2d) and kind is nn.AvgPool2d:
            ok = not m.ceil_mode and (m.count_include_pad or _pair(m.padding) == (0, 0))
            return "avgpool" if ok else None
        if m is not None and kind in WINDOW_UNARY_MODULES:
            if m.training:
                return None
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is None:
                return None
            return "unary"
        return None
    return _elementwise_kind(node)


#: normalisations that, in eval mode with running statistics, map each channel on its own
CHANNEL_NORMS: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def channel_kind(node: fx.Node, module: nn.Module | None) -> str | None:
    """How ``node`` can run on one channel of its inputs (a channel window, :mod:`._channels`):
    ``norm`` (batch norm in eval mode with running statistics: an affine map per channel),
    ``unary`` (an element-wise module) or ``ew`` (an element-wise function or method, the
    windows' table); ``None``: it cannot (it mixes channels, or is not known to keep them apart).
    """
    if node.op == "call_module":
        m = module
        if m is None or m.training or hooked(m):
            return None
        kind = type(m)
        if kind in CHANNEL_NORMS:
            ok = getattr(m, "running_mean", None) is not None and m.running_var is not None
            return "norm" if ok else None
        # PReLU has a weight per channel; batch norm is above
        if kind in WINDOW_UNARY_MODULES and kind not in (nn.PReLU, nn.BatchNorm2d):
            return "unary"
        return None
    return _elementwise_kind(node)
