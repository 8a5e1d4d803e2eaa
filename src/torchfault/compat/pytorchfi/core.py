# SPDX-License-Identifier: MIT
"""pytorchfi 0.6's ``core`` on torchfault: :class:`fault_injection` (also ``FaultInjection``).

The class, its methods, arguments, defaults, attributes and layer numbering are pytorchfi 0.6's
(see ``_layers`` for the numbering), and a declared fault gives bit-identical outputs. What is
done differently, and why:

- No deep copy: ``declare_neuron_fi``/``declare_weight_fi`` return a :class:`CorruptedModel`
  that runs the user's model inside :func:`torchfault.inject`; weights are restored bit for bit
  after every call, hooks removed even when the forward pass raises.
- A corrupted model can be called any number of times (pytorchfi's raises ``IndexError`` on its
  second call: its layer counter is never reset).
- 5-d outputs and weights (``Conv3d``) take a fifth coordinate ``dim4`` (pytorchfi silently
  injects nothing into a 5-d output and fails on a 5-d weight); quantized models work (pytorchfi
  raises ``StopIteration`` before looking at them) and their quantized layers count as the
  float layer types they came from.
- ``flip_bits=[...]`` declares IEEE bit flips of the tensor's own number format (bit 0 the least
  significant), instead of a value or a custom function.
- Arguments are checked when declared: an unknown name, lists of different lengths, a layer or
  weight index out of range raise :class:`PytorchfiArgumentError` (an ``AssertionError``, like
  pytorchfi's own checks, and a ``TypeError``) naming the argument, where pytorchfi ignores the
  name or injects nothing.
- Building the injector profiles the model under ``torch.no_grad()`` and puts its buffers back
  (pytorchfi's profiling pass updates BatchNorm statistics of a model in training mode), and
  ``logging.basicConfig`` is not called (pytorchfi's format breaks other loggers' records).

Example:
    >>> import torch, torch.nn as nn
    >>> from torchfault.compat.pytorchfi import core
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    >>> pfi = core.fault_injection(model, 2, input_shape=[3, 8, 8], use_cuda=False)
    >>> pfi.get_total_layers(), pfi.get_layer_shape(1)
    (2, [1, 2, 4, 4])
    >>> bad = pfi.declare_neuron_fi(batch=[1], layer_num=[1], dim1=[0], dim2=[2], dim3=[3], value=[1e4])
    >>> x = torch.randn(2, 3, 8, 8)
    >>> with torch.no_grad():
    ...     golden, first, second = model(x), bad(x), bad(x)  # twice: no IndexError
    >>> float(first[1, 0, 2, 3]), float(second[1, 0, 2, 3])
    (10000.0, 10000.0)
    >>> torch.equal(model(x).detach(), golden)  # the model itself is untouched
    True
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from torchfault import numerics
from torchfault.compat.pytorchfi._corrupted import CorruptedModel
from torchfault.compat.pytorchfi._layers import (
    PytorchfiArgumentError,
    check_arguments,
    model_device_dtype,
    traverse_leaves,
    weight_layers,
    weight_of,
)
from torchfault.errors import TorchFaultError
from torchfault.faults import Fault
from torchfault.injectors import Injection

__all__ = ["CorruptedModel", "FaultInjection", "PytorchfiArgumentError", "fault_injection"]

log = logging.getLogger(__name__)

#: keyword arguments of the declarations; ``dim4`` and ``flip_bits`` are torchfault's additions
NEURON_ARGS = (
    "layer_num",
    "batch",
    "dim1",
    "dim2",
    "dim3",
    "dim4",
    "value",
    "function",
    "flip_bits",
)
WEIGHT_ARGS = ("layer_num", "k", "dim1", "dim2", "dim3", "dim4", "value", "function", "flip_bits")


def _as_list(name: str, value: Any, n: int | None = None) -> list[Any]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise PytorchfiArgumentError(
            f"{name} must be a list (one entry per fault), got {type(value).__name__}: {value!r}."
        )
    if n is not None and len(value) != n:
        raise PytorchfiArgumentError(
            f"{name} has {len(value)} entries but layer_num has {n}: give one entry per fault "
            f"({name}={list(value)!r})."
        )
    return list(value)


def _bits(entry: Any, where: str) -> tuple[int, ...]:
    bits = (entry,) if isinstance(entry, int) else tuple(entry)
    if not bits or not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
        raise PytorchfiArgumentError(
            f"{where}: flip_bits entries must be a bit position or a tuple of them, got {entry!r}."
        )
    return bits


def _one_mode(where: str, kwargs: dict[str, Any]) -> str:
    modes = [m for m in ("value", "function", "flip_bits") if m in kwargs]
    if len(modes) > 1:
        raise PytorchfiArgumentError(
            f"{where}() got {' and '.join(modes)}: give one of value, function or flip_bits."
        )
    return modes[0] if modes else "value"


class fault_injection:  # noqa: N801 - pytorchfi's name
    """pytorchfi's fault injector for ``model``: profile its layers once, then declare faults.

    Args:
        model: the ``nn.Module``; it is never copied, and never left faulty.
        batch_size: batch size the declared faults address (``batch=`` entries below it).
        input_shape: shape of one input without the batch dimension (default ``[3, 224, 224]``).
        layer_types: module types whose outputs and weights are layers (default ``[nn.Conv2d]``),
            or ``["all"]`` for every leaf module.
        **kwargs: ``use_cuda`` (default: whether the model's first parameter is on CUDA). Any
            other name raises :class:`PytorchfiArgumentError`.

    Example:
        >>> import torch.nn as nn
        >>> pfi = fault_injection(nn.Sequential(nn.Linear(4, 3)), 1, [4], [nn.Linear])
        >>> pfi.get_layer_shape(0), pfi.get_weights_size(0)
        ([1, 3], torch.Size([3, 4]))
    """

    _ARGS: tuple[str, ...] = ("use_cuda",)

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        input_shape: list[int] | None = None,
        layer_types: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        check_arguments(type(self).__name__, kwargs, self._ARGS)
        if input_shape is None:
            input_shape = [3, 224, 224]
        if layer_types is None:
            layer_types = [nn.Conv2d]

        self.original_model = model
        self.output_size: list[list[int]] = []
        self.layers_type: list[type] = []
        self.layers_dim: list[int] = []
        self.weights_size: list[torch.Size | None] = []

        self._input_shape = input_shape
        self._batch_size = batch_size
        self._inj_layer_types = layer_types

        self.corrupted_model: CorruptedModel | None = None
        self.current_layer = 0
        self.handles: list[Any] = []
        self.corrupt_batch: Any = []
        self.corrupt_layer: Any = []
        self.corrupt_dim1: Any = []  # C
        self.corrupt_dim2: Any = []  # H
        self.corrupt_dim3: Any = []  # W
        self.corrupt_dim4: Any = []  # the last dimension of a 5-d output (torchfault's addition)
        self.corrupt_value: Any = []

        is_cuda, dtype = model_device_dtype(model)
        self.use_cuda = kwargs.get("use_cuda", is_cuda)

        if not isinstance(input_shape, list):
            raise PytorchfiArgumentError(
                "Error: Input shape must be provided as a list (one input's shape, without the "
                f"batch dimension), got {input_shape!r}."
            )
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise PytorchfiArgumentError(
                f"Error: Batch size must be an integer >= 1, got batch_size={batch_size!r}."
            )
        if not isinstance(layer_types, (list, tuple)) or not all(
            t == "all" or isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types
        ):
            raise PytorchfiArgumentError(
                f"layer_types must be a list of nn.Module subclasses or ['all'], got {layer_types!r}."
            )

        #: (module name, module) per pytorchfi hook, and (module name, call) per neuron layer
        self._leaves = traverse_leaves(model, layer_types)
        self._sites: list[tuple[str, int]] = []
        self._layer_weights: list[torch.Size | None] = []  # each neuron layer's own weight
        self._layer_outputs: list[torch.Tensor] = []  # an empty tensor of each layer's output kind
        for _, layer in self._leaves:
            w = weight_of(layer)
            self.weights_size.append(None if w is None else w.shape)

        dummy_shape = (1, *self._input_shape)  # profiling only needs one batch element
        device = "cuda" if self.use_cuda else None
        self._profile(torch.randn(dummy_shape, dtype=dtype, device=device))
        log.info("Input shape: %s; model layer sizes: %s", dummy_shape[1:], self.output_size)

    def _profile(self, dummy: torch.Tensor) -> None:
        """One forward pass recording each layer's output shape and (module, call) in order."""
        model = self.original_model
        calls: dict[nn.Module, int] = {}

        def count(module: nn.Module, args: Any) -> None:
            calls[module] = calls.get(module, 0) + 1

        def record(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if not isinstance(output, torch.Tensor):
                    raise PytorchfiArgumentError(
                        f"layer {len(self.output_size)} ({name}: {type(module).__name__}) returns "
                        f"{type(output).__name__}, not a tensor: pytorchfi's layers have one "
                        "output tensor; leave this type out of layer_types."
                    )
                shape = list(output.size())
                self.layers_type.append(type(module))
                self.layers_dim.append(len(shape))
                self.output_size.append(shape)
                self._sites.append((name, calls[module] - 1))
                w = weight_of(module)
                self._layer_weights.append(None if w is None else w.shape)
                self._layer_outputs.append(output.flatten()[:0])  # dtype and quantizer

            return hook

        handles = []
        saved = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            for layer in dict.fromkeys(m for _, m in self._leaves):
                handles.append(layer.register_forward_pre_hook(count))
            for name, layer in self._leaves:
                handles.append(layer.register_forward_hook(record(name)))
            with torch.no_grad():
                model(dummy)
        finally:
            for h in handles:
                h.remove()
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)

    # ------------------------------------------------------------------ declarations
    def fi_reset(self) -> None:
        """Forget the declared faults; earlier neuron-corrupted models run clean from now on."""
        self._fi_state_reset()
        self.corrupted_model = None
        log.info("Reset fault injector")

    reset_fault_injection = fi_reset

    def _fi_state_reset(self) -> None:
        (
            self.current_layer,
            self.corrupt_batch,
            self.corrupt_layer,
            self.corrupt_dim1,
            self.corrupt_dim2,
            self.corrupt_dim3,
            self.corrupt_dim4,
            self.corrupt_value,
        ) = (0, [], [], [], [], [], [], [])
        for handle in self.handles:
            handle.remove()

    def declare_weight_fi(self, **kwargs: Any) -> CorruptedModel:
        """A model whose weights hold the declared faults while it runs.

        Args:
            **kwargs: ``layer_num`` (weight layers, numbered in ``model.modules()`` order),
                ``k``, ``dim1``, ``dim2``, ``dim3`` (and ``dim4`` for 5-d weights): lists with one
                entry per fault (``None`` for a dimension the weight lacks; missing lists are all
                ``None``), and one of ``value`` (list of new values), ``function``
                (``function(weight, index) -> value``, called once per fault here) or
                ``flip_bits`` (list of bit positions, or tuples of them, flipped in the
                weight's own format: torchfault's addition).

        Returns:
            A :class:`CorruptedModel`; its ``faults`` are the declared faults as torchfault
            ``Fault`` objects.

        Example:
            >>> import torch, torch.nn as nn
            >>> model = nn.Sequential(nn.Linear(2, 2))
            >>> pfi = fault_injection(model, 1, [2], [nn.Linear])
            >>> bad = pfi.declare_weight_fi(layer_num=[0], k=[1], dim1=[0], value=[4.0])
            >>> bad.faults[0].index, bad.state_dict()["0.weight"][1, 0].item()
            ((1, 0), 4.0)
            >>> model[0].weight[1, 0].item() != 4.0
            True
        """
        self._fi_state_reset()
        if not kwargs:
            raise ValueError("Please specify an injection or injection function")
        check_arguments("declare_weight_fi", kwargs, WEIGHT_ARGS)
        mode = _one_mode("declare_weight_fi", kwargs)
        if "layer_num" not in kwargs or "k" not in kwargs:
            raise PytorchfiArgumentError(
                "declare_weight_fi() needs layer_num=[...] and k=[...] (one entry per fault), got "
                f"only {sorted(kwargs)}."
            )
        layers = _as_list("layer_num", kwargs["layer_num"])
        n = len(layers)
        k = _as_list("k", kwargs["k"], n)
        dims = [_as_list(d, kwargs.get(d, [None] * n), n) for d in ("dim1", "dim2", "dim3")]
        dim4 = _as_list("dim4", kwargs.get("dim4", [None] * n), n)
        if mode == "value":
            values = _as_list("value", kwargs.get("value", []), n)
        elif mode == "flip_bits":
            values = _as_list("flip_bits", kwargs["flip_bits"], n)
        function = kwargs.get("function")
        if mode == "function" and not callable(function):
            raise PytorchfiArgumentError(
                f"declare_weight_fi() function must be callable, got {function!r}."
            )

        candidates = weight_layers(self.original_model, self._inj_layer_types)
        for i, layer in enumerate(layers):
            if not _is_index(layer) or not 0 <= layer < len(candidates):
                raise PytorchfiArgumentError(
                    f"declare_weight_fi() layer_num[{i}] = {layer!r} is not a weight layer: valid "
                    f"0..{len(candidates) - 1} ({len(candidates)} layers of types "
                    f"{self._inj_layer_types})."
                )
        faults = []
        for number, (name, module) in enumerate(candidates):
            for inj in (i for i in range(n) if layers[i] == number):
                weight = weight_of(module)
                if weight is None:
                    raise PytorchfiArgumentError(
                        f"declare_weight_fi() layer_num[{inj}] = {number} ({name}: "
                        f"{type(module).__name__}) has no weight."
                    )
                idx: tuple[Any, ...] = (k[inj], dims[0][inj], dims[1][inj], dims[2][inj])
                if dim4[inj] is not None:
                    idx = (*idx, dim4[inj])
                index = _weight_index(weight, idx, f"fault {inj} on layer {number} ({name})")
                if mode == "flip_bits":
                    faults.append(
                        Fault(name, "weight", index, bits=_bits(values[inj], f"flip_bits[{inj}]"))
                    )
                    continue
                if mode == "function":
                    assert function is not None
                    new = function(_readonly_copy(weight), idx)
                else:
                    new = values[inj]
                faults.append(
                    Fault(
                        name,
                        "weight",
                        index,
                        model="value",
                        params=(("value", _stored_value(weight, idx, new)),),
                    )
                )
                log.info("Weight injection: layer %d (%s) %s -> %s", number, name, idx, new)
        try:  # every fault checked against its tensor now, not at the first call
            Injection(self.original_model, faults)
        except TorchFaultError as exc:
            raise PytorchfiArgumentError(f"declare_weight_fi(): {exc}") from None
        self.corrupted_model = CorruptedModel(self.original_model, faults)
        return self.corrupted_model

    def declare_neuron_fi(self, **kwargs: Any) -> CorruptedModel:
        """A model whose layer outputs get the declared faults in every call.

        Args:
            **kwargs: ``layer_num`` (neuron layers: the order pytorchfi's hooks fire in),
                ``batch``, ``dim1``, ``dim2``, ``dim3`` (and ``dim4`` for 5-d outputs): lists
                with one entry per fault (missing ``dim2``/``dim3``/``dim4`` lists are all
                ``None``), and one of ``value`` (list of new values), ``function`` (a forward
                hook ``function(module, input, output)`` on every layer, as in pytorchfi) or
                ``flip_bits`` (list of bit positions, or tuples of them: torchfault's addition).

        Returns:
            A :class:`CorruptedModel`.

        Example:
            >>> import torch, torch.nn as nn
            >>> model = nn.Sequential(nn.Linear(2, 2))
            >>> pfi = fault_injection(model, 1, [2], [nn.Linear])
            >>> bad = pfi.declare_neuron_fi(batch=[0], layer_num=[0], dim1=[1], flip_bits=[31])
            >>> x = torch.ones(1, 2)
            >>> bad(x).detach()[0, 1] == -model(x).detach()[0, 1]  # bit 31: the sign
            tensor(True)
        """
        self._fi_state_reset()
        if not kwargs:
            raise ValueError("Please specify an injection or injection function")
        check_arguments("declare_neuron_fi", kwargs, NEURON_ARGS)
        mode = _one_mode("declare_neuron_fi", kwargs)
        function = kwargs.get("function")
        if mode == "function" and not callable(function):
            raise PytorchfiArgumentError(
                f"declare_neuron_fi() function must be callable, got {function!r}."
            )
        self.corrupt_layer = kwargs.get("layer_num", [])
        n = len(_as_list("layer_num", self.corrupt_layer))
        self.corrupt_batch = kwargs.get("batch", [])
        self.corrupt_dim1 = kwargs.get("dim1", [])
        self.corrupt_dim2 = kwargs.get("dim2", [None] * n)
        self.corrupt_dim3 = kwargs.get("dim3", [None] * n)
        self.corrupt_dim4 = kwargs.get("dim4", [None] * n)
        if mode == "value":
            self.corrupt_value = _as_list("value", kwargs.get("value", []), n)
        log.info(
            "Declaring neuron faults: layers %s; batch, dim1, dim2, dim3: %s, %s, %s, %s",
            self.corrupt_layer,
            self.corrupt_batch,
            self.corrupt_dim1,
            self.corrupt_dim2,
            self.corrupt_dim3,
        )
        self.check_bounds(
            self.corrupt_batch,
            self.corrupt_layer,
            self.corrupt_dim1,
            self.corrupt_dim2,
            self.corrupt_dim3,
            self.corrupt_dim4,
        )

        if mode == "function":
            assert function is not None
            hooks = [(module, function) for _, module in self._leaves]
            corrupted = CorruptedModel(self.original_model, [], hooks, self.reset_current_layer)
        else:
            flips = _as_list("flip_bits", kwargs["flip_bits"], n) if mode == "flip_bits" else []
            faults = []
            for i in range(n):
                name, call = self._sites[self.corrupt_layer[i]]
                index = self._neuron_index(i)
                if mode == "flip_bits":
                    bits = _bits(flips[i], f"flip_bits[{i}]")
                    self._check_bits(i, bits)
                    faults.append(
                        Fault(
                            name,
                            index=index,
                            bits=bits,
                            sample=operator.index(self.corrupt_batch[i]),
                            call=call,
                        )
                    )
                else:
                    value = self._checked_value(i)
                    faults.append(
                        Fault(
                            name,
                            index=index,
                            model="value",
                            params=(("value", value),),
                            sample=operator.index(self.corrupt_batch[i]),
                            call=call,
                        )
                    )
            corrupted = CorruptedModel(self.original_model, faults)
        self.handles.append(corrupted)  # a reset deactivates it, as pytorchfi removes its hooks
        self.corrupted_model = corrupted
        return corrupted

    # pytorchfi 0.7's names for the same methods (update_layer and reset_fault_injection below)
    declare_weight_fault_injection = declare_weight_fi
    declare_neuron_fault_injection = declare_neuron_fi

    def _checked_value(self, i: int) -> float:
        """Value ``i`` as a float, refused (``RuntimeError``, as torch's assignment in pytorchfi)
        when the layer's output dtype cannot hold it."""
        value = _number(self.corrupt_value[i], f"value[{i}]")
        out = self._layer_outputs[self.corrupt_layer[i]]
        if not out.is_quantized:  # quantized outputs saturate
            try:
                torch.empty(1, dtype=out.dtype)[0] = value
            except RuntimeError as exc:
                raise RuntimeError(
                    f"declare_neuron_fi() value[{i}] = {value!r} does not fit layer "
                    f"{self.corrupt_layer[i]}'s {out.dtype} outputs: {exc}"
                ) from None
        return value

    def _check_bits(self, i: int, bits: tuple[int, ...]) -> None:
        """Refuse a bit outside the number format of fault ``i``'s layer output."""
        layer = self.corrupt_layer[i]
        try:
            numerics.bit_mask(bits, numerics.get_format(None, self._layer_outputs[layer]))
        except TorchFaultError as exc:
            raise PytorchfiArgumentError(
                f"declare_neuron_fi() flip_bits[{i}] = {bits} on layer {layer}: {exc}"
            ) from None

    def _neuron_index(self, i: int) -> tuple[int, ...]:
        dim = self.layers_dim[self.corrupt_layer[i]]
        coords = (self.corrupt_dim1[i], self.corrupt_dim2[i], self.corrupt_dim3[i])
        return tuple(operator.index(c) for c in (*coords, self.corrupt_dim4[i])[: dim - 1])

    def check_bounds(
        self,
        b: Any,
        l: Any,  # noqa: E741 - pytorchfi's argument name
        dim1: Any,
        dim2: Any,
        dim3: Any,
        dim4: Any = None,
    ) -> None:
        """pytorchfi's check that every location list has one entry per fault, each in range."""
        lists = {"layer_num": l, "dim1": dim1, "dim2": dim2, "dim3": dim3}
        if dim4 is not None:
            lists["dim4"] = dim4
        n = len(_as_list("batch", b))
        for name, values in lists.items():
            if len(_as_list(name, values)) != n:
                raise PytorchfiArgumentError(
                    f"Injection location missing values: batch has {n} entries, {name} has "
                    f"{len(values)} ({name}={list(values)!r})."
                )
        log.info("Checking bounds before runtime")
        for i in range(n):
            self.assert_inj_bounds(i)

    def assert_inj_bounds(self, index: int) -> None:
        """Check fault ``index`` of the declared lists against the layer it names."""
        if index < 0:
            raise AssertionError(f"Invalid injection index: {index}")
        batch, layer = self.corrupt_batch[index], self.corrupt_layer[index]
        if not _is_index(batch) or not 0 <= batch < self.get_total_batches():
            raise PytorchfiArgumentError(
                f"batch[{index}] = {batch!r}: Invalid batch element! valid: 0..{self.get_total_batches() - 1}."
            )
        if not _is_index(layer) or not 0 <= layer < self.get_total_layers():
            raise PytorchfiArgumentError(
                f"layer_num[{index}] = {layer!r}: Invalid layer! valid: 0..{self.get_total_layers() - 1}."
            )
        layer_type = self.layers_type[layer]
        layer_dim = self.layers_dim[layer]
        layer_shape = self.output_size[layer]
        dims = [self.corrupt_dim1, self.corrupt_dim2, self.corrupt_dim3, self.corrupt_dim4]
        if not 2 <= layer_dim <= 5:
            raise PytorchfiArgumentError(
                f"layer {layer} ({layer_type.__name__}) has output shape {layer_shape}: neuron "
                "faults address outputs of 2 to 5 dimensions (batch first)."
            )
        for d in range(1, layer_dim):
            value = dims[d - 1][index] if index < len(dims[d - 1]) else None
            if not _is_index(value) or not -layer_shape[d] <= value < layer_shape[d]:
                hint = " (5-d outputs take dim4: torchfault's addition)" if value is None else ""
                raise PytorchfiArgumentError(
                    f"dim{d}[{index}] = {value!r}: Out of bounds error in Dimension {d}! layer "
                    f"{layer} ({layer_type.__name__}) has output shape {layer_shape}{hint}."
                )
        if layer_dim <= 2 and (
            self.corrupt_dim2[index] is not None or self.corrupt_dim3[index] is not None
        ):
            warnings.warn(
                f"Values in Dim2 and Dim3 ignored, since layer is {layer_type}", stacklevel=3
            )
        if layer_dim <= 3 and self.corrupt_dim3[index] is not None:
            warnings.warn(f"Values Dim3 ignored, since layer is {layer_type}", stacklevel=3)
        log.info("Finished checking bounds on inj '%d'", index)

    # ------------------------------------------------------------------ pytorchfi's accessors
    def get_original_model(self) -> nn.Module:
        return self.original_model

    def get_corrupted_model(self) -> CorruptedModel | None:
        return self.corrupted_model

    def get_output_size(self) -> list[list[int]]:
        return self.output_size

    def get_weights_size(self, layer_num: int) -> torch.Size | None:
        return self.weights_size[layer_num]

    def get_weights_dim(self, layer_num: int) -> int:
        size = self.weights_size[layer_num]
        if size is None:
            raise PytorchfiArgumentError(
                f"layer {layer_num} ({self._leaves[layer_num][0]}: "
                f"{type(self._leaves[layer_num][1]).__name__}) has no weight."
            )
        return len(size)

    def get_layer_type(self, layer_num: int) -> type:
        return self.layers_type[layer_num]

    def get_layer_dim(self, layer_num: int) -> int:
        return self.layers_dim[layer_num]

    def get_layer_shape(self, layer_num: int) -> list[int]:
        return self.output_size[layer_num]

    def get_inj_layer_types(self) -> list[Any]:
        return self._inj_layer_types

    def updateLayer(self, value: int = 1) -> None:  # noqa: N802 - pytorchfi's name
        self.current_layer += value

    update_layer = updateLayer

    def reset_current_layer(self) -> None:
        self.current_layer = 0

    def set_corrupt_layer(self, value: Any) -> None:
        self.corrupt_layer = value

    def get_current_layer(self) -> int:
        return self.current_layer

    def get_corrupt_layer(self) -> Any:
        return self.corrupt_layer

    def get_total_batches(self) -> int:
        return self._batch_size

    def get_total_layers(self) -> int:
        return len(self.output_size)

    def get_fmaps_num(self, layer: int) -> int:
        return self.output_size[layer][1]

    def get_fmaps_H(self, layer: int) -> int:  # noqa: N802 - pytorchfi's name
        return self.output_size[layer][2]

    def get_fmaps_W(self, layer: int) -> int:  # noqa: N802 - pytorchfi's name
        return self.output_size[layer][3]

    def get_fmap_HW(self, layer: int) -> tuple[int, int]:  # noqa: N802 - pytorchfi's name
        return (self.get_fmaps_H(layer), self.get_fmaps_W(layer))

    def print_pytorchfi_layer_summary(self) -> str:
        """Print and return pytorchfi's layer table.

        Each row shows its own layer's weight shape (``-`` for none); pytorchfi takes the shapes
        in registration order, which is another layer's when the forward pass runs layers in
        another order, and fails with ``["all"]``.
        """
        rule = "-" * 82 + "\n"
        s = "============================ PYTORCHFI INIT SUMMARY ==============================\n\n"
        s += "Layer types allowing injections:\n" + rule
        for l_type in self._inj_layer_types:
            s += "{:>5}".format("- ") + str(l_type).split(".")[-1].split("'")[0] + "\n"
        s += "\nModel Info:\n" + rule
        s += "   - Shape of input into the model: ("
        for dim in self._input_shape:
            s += str(dim) + " "
        s += ")\n"
        s += "   - Batch Size: " + str(self._batch_size) + "\n"
        s += "   - CUDA Enabled: " + str(self.use_cuda) + "\n\n"
        s += "Layer Info:\n" + rule
        line = "{:>5}  {:>15}  {:>10} {:>20} {:>20}"
        s += line.format("Layer #", "Layer type", "Dimensions", "Weight Shape", "Output Shape")
        s += "\n" + rule
        for layer in range(len(self.output_size)):
            size = self._layer_weights[layer]
            s += line.format(
                layer,
                str(self.layers_type[layer]).split(".")[-1].split("'")[0],
                str(self.layers_dim[layer]),
                "-" if size is None else str(list(size)),
                str(self.output_size[layer]),
            )
            s += "\n"
        s += "=" * 82 + "\n"
        print(s)
        return s


#: pytorchfi 0.7's name of the class
FaultInjection = fault_injection


def _is_index(value: Any) -> bool:
    """An integer (``int``, a NumPy integer, an integer 0-d tensor), not a bool."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _number(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PytorchfiArgumentError(f"{where} must be a number, got {value!r}.") from None


def _weight_index(weight: torch.Tensor, idx: tuple[Any, ...], where: str) -> tuple[int, ...]:
    """The element pytorchfi's ``weight[idx]`` picks, as a tuple index (it must be one element)."""
    try:
        picked = torch.empty(weight.shape, device="meta")[idx]
    except IndexError as exc:
        raise IndexError(
            f"declare_weight_fi() {where}: index {idx} is out of range for weight shape "
            f"{tuple(weight.shape)}: {exc}"
        ) from None
    except (TypeError, RuntimeError) as exc:
        raise PytorchfiArgumentError(
            f"declare_weight_fi() {where}: index {idx} is not an index of a weight of shape "
            f"{tuple(weight.shape)}: {exc}"
        ) from None
    if picked.numel() != 1:
        hint = " (5-d weights take dim4: torchfault's addition)" if weight.dim() == 5 else ""
        raise PytorchfiArgumentError(
            f"declare_weight_fi() {where}: index {idx} picks {picked.numel()} elements of a weight "
            f"of shape {tuple(weight.shape)}; give one integer per dimension (None for the "
            f"dimensions it lacks){hint}."
        )
    flat, out = int(picked.storage_offset()), []
    for n in reversed(weight.shape):
        out.append(flat % int(n))
        flat //= int(n)
    return tuple(reversed(out))


def _readonly_copy(weight: torch.Tensor) -> torch.Tensor:
    """What a custom weight function reads: a copy (pytorchfi passes its deep copy's weight)."""
    if weight.is_floating_point():
        return nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    return weight.detach().clone()


@torch.no_grad()
def _stored_value(weight: torch.Tensor, idx: tuple[Any, ...], value: Any) -> float:
    """The number ``weight[idx] = value`` stores (pytorchfi's assignment), as a float."""
    if weight.is_quantized:  # torchfault quantizes it with the weight's own quantizer
        return _number(value, "value")
    cell = weight.detach()[idx].clone()
    try:
        cell[...] = value
    except RuntimeError as exc:
        raise RuntimeError(
            f"declare_weight_fi(): value {value!r} does not fit a {weight.dtype} weight: {exc}"
        ) from None
    return float(cell.reshape(-1)[0])
