# SPDX-License-Identifier: MIT
"""The model ``declare_neuron_fi``/``declare_weight_fi`` return, without pytorchfi's deep copy.

pytorchfi returns a deep copy of the model with hooks on it (neurons) or with changed weights
(weights). :class:`CorruptedModel` instead wraps the user's own model: each call runs it inside
:func:`torchfault.inject` with the declared faults (and, for a custom ``function=``, with that
function as a forward hook on pytorchfi's layers), so on return every hook is gone and every
weight is bit for bit what it was, even when the forward pass raises. The original model is
therefore never faulty outside a call of the corrupted one, and declaring a fault copies nothing.

Guarantees kept from pytorchfi: the faulty outputs are bit-identical (the same elements get the
same values in the same order); ``state_dict()`` holds the faulty weights (copies).
Differences: ``parameters()`` and submodules are the original model's (clean between calls);
``train()``/``eval()``/``to()`` act on the original model, which the wrapper shares.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from torchfault.faults import Fault
from torchfault.injectors import inject

__all__ = ["CorruptedModel"]

_MODEL = "_pfi_model"


class CorruptedModel(nn.Module):
    """The user's model with declared faults, applied during each call and removed after it.

    Attributes:
        faults: the declared faults as :class:`torchfault.Fault` objects (empty for a custom
            neuron ``function=``, whose effect is the function's own); they can be given to
            :func:`torchfault.inject` or a campaign directly.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchfault import Fault
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> bad = CorruptedModel(model, [Fault("0", index=(1,), model="value", params={"value": 9.0})])
        >>> x = torch.ones(1, 2)
        >>> golden = model(x)
        >>> float(bad(x)[0, 1])
        9.0
        >>> torch.equal(model(x), golden)  # the model itself is untouched
        True
    """

    def __init__(
        self,
        model: nn.Module,
        faults: Sequence[Fault],
        hooks: Sequence[tuple[nn.Module, Callable[..., Any]]] = (),
        before: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.add_module(_MODEL, model)
        self.faults: tuple[Fault, ...] = tuple(faults)
        self._hooks = list(hooks)
        self._before = before
        self._active = True

    def deactivate(self) -> None:
        """Stop applying the faults (pytorchfi removes a neuron declaration's hooks on reset)."""
        self._active = False

    def remove(self) -> None:
        """Handle protocol for pytorchfi's ``handles`` list: same as :meth:`deactivate`."""
        self.deactivate()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model = self._modules[_MODEL]
        assert model is not None
        if not self._active:
            return model(*args, **kwargs)
        if self._before is not None:
            self._before()
        handles = []
        try:
            for module, fn in self._hooks:
                handles.append(module.register_forward_hook(fn))
            with inject(model, self.faults):
                return model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The original model's state dict with the declared weight faults in it (copies)."""
        model = self._modules[_MODEL]
        assert model is not None
        stored = [f for f in self.faults if not f.is_activation] if self._active else []
        with inject(model, stored):
            sd = model.state_dict(*args, **kwargs)
            return OrderedDict(
                (k, v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()
            )

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if _MODEL in modules:
                return getattr(modules[_MODEL], name)
            raise
