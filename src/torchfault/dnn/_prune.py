# SPDX-License-Identifier: MIT
"""Pruning with ``torch.nn.utils.prune``, and a per-layer sparsity report.

Methods (:data:`PRUNING_METHODS`):

- ``l1_unstructured``: zero the weights of smallest magnitude (per layer, or ``scope="global"``
  over all selected layers together);
- ``random_unstructured``: zero weights chosen at random (per layer or global);
- ``ln_structured``: zero whole output channels / filters (``dim=0``) of smallest Ln norm
  (``n``: 1, 2, ...);
- ``random_structured``: zero whole output channels chosen at random.

With ``amount`` a fraction, each step prunes that share of the weights still unpruned
(``torch.nn.utils.prune`` semantics); :func:`iterative_prune` reaches a final sparsity in several
steps of the same ratio, with an optional fine-tuning function between them. Masks are made
permanent (``prune.remove``) unless asked otherwise, so the result is a plain model whose pruned
weights are zeros.

Example:
    >>> from torchfault.dnn import create_model, prune_model, sparsity_report
    >>> model = create_model("lenet")
    >>> _ = prune_model(model, "l1_unstructured", amount=0.5)
    >>> round(sparsity_report(model)["fc1.weight"]["sparsity"], 3)
    0.5
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from torchfault.errors import TorchFaultError, suggest

__all__ = [
    "PRUNING_METHODS",
    "iterative_prune",
    "prune_model",
    "prunable_modules",
    "sparsity_report",
]

PRUNING_METHODS = ("l1_unstructured", "random_unstructured", "ln_structured", "random_structured")
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    for pat in patterns:
        if pat.startswith("re:"):
            if re.fullmatch(pat[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


def prunable_modules(
    model: nn.Module, modules: Sequence[str] | None = None, parameter: str = "weight"
) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs to prune: linear and convolution layers having
    ``parameter``, restricted to names matching ``modules`` (exact, wildcard or ``re:`` regex).

    Example:
        >>> from torchfault.dnn import create_model
        >>> [n for n, _ in prunable_modules(create_model("lenet"), ["conv*"])]
        ['conv1', 'conv2']
    """
    found: list[tuple[str, nn.Module]] = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, _PRUNABLE) and getattr(m, parameter, None) is not None
    ]
    if modules:
        chosen = [(n, m) for n, m in found if _matches(n, modules)]
        if not chosen:
            names = [n for n, _ in found]
            raise TorchFaultError(
                f"no prunable module matches {list(modules)}; prunable modules: "
                f"{', '.join(names) or 'none'}.{suggest(str(modules[0]), names)}"
            )
        found = chosen
    if not found:
        raise TorchFaultError("the model has no linear or convolution layer to prune.")
    return found


def prune_model(
    model: nn.Module,
    method: str = "l1_unstructured",
    amount: float = 0.5,
    *,
    scope: str = "layer",
    n: float = 2,
    dim: int = 0,
    modules: Sequence[str] | None = None,
    parameter: str = "weight",
    make_permanent: bool = True,
) -> nn.Module:
    """Prune ``model`` in place with ``torch.nn.utils.prune``; returns it.

    Args:
        model: the model.
        method: one of :data:`PRUNING_METHODS`.
        amount: fraction of the (still unpruned) weights to prune, in [0, 1], or a whole count.
        scope: ``layer`` (each layer loses ``amount``) or ``global`` (unstructured only: the
            ``amount`` is taken over all selected layers together).
        n: the norm order of ``ln_structured``.
        dim: the dimension of structured pruning (0: output channels / filters).
        modules: names to prune (exact, wildcard or ``re:`` regex); default all linear and
            convolution layers, except the last one (the classifier) for structured methods.
        parameter: which parameter to prune.
        make_permanent: remove the masks afterwards (the zeros stay in ``parameter``).

    Raises:
        TorchFaultError: unknown method or scope, bad amount, nothing to prune.

    Example:
        >>> import torch
        >>> lin = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> _ = prune_model(lin, "ln_structured", amount=0.5, n=1)
        >>> int((lin[0].weight.abs().sum(dim=1) == 0).sum())
        2
    """
    if method not in PRUNING_METHODS:
        raise TorchFaultError(
            f"unknown pruning method {method!r}; valid: {', '.join(PRUNING_METHODS)}."
            f"{suggest(str(method), PRUNING_METHODS)}"
        )
    if scope not in ("layer", "global"):
        raise TorchFaultError(f"pruning scope must be 'layer' or 'global', got {scope!r}.")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TorchFaultError(f"pruning amount must be a number, got {amount!r}.")
    if isinstance(amount, float) and not 0.0 <= amount <= 1.0:
        raise TorchFaultError(f"pruning amount must be a fraction in [0, 1], got {amount}.")
    if isinstance(amount, int) and amount < 0:
        raise TorchFaultError(f"pruning amount must be >= 0, got {amount}.")
    structured = method.endswith("_structured")
    if structured and scope == "global":
        raise TorchFaultError(
            f"scope='global' works with unstructured methods only, not {method!r}."
        )
    targets = prunable_modules(model, modules, parameter)
    if structured and not modules and len(targets) > 1:
        # removing output channels of the classifier would remove classes: spare it
        targets = targets[:-1]
    if scope == "global":
        cls = prune.L1Unstructured if method == "l1_unstructured" else prune.RandomUnstructured
        prune.global_unstructured(
            [(m, parameter) for _, m in targets], pruning_method=cls, amount=amount
        )
    else:
        for _, m in targets:
            if method == "l1_unstructured":
                prune.l1_unstructured(m, parameter, amount=amount)
            elif method == "random_unstructured":
                prune.random_unstructured(m, parameter, amount=amount)
            elif method == "ln_structured":
                prune.ln_structured(m, parameter, amount=amount, n=n, dim=dim)
            else:
                prune.random_structured(m, parameter, amount=amount, dim=dim)
    if make_permanent:
        for _, m in targets:
            prune.remove(m, parameter)
    return model


def iterative_prune(
    model: nn.Module,
    method: str = "l1_unstructured",
    amount: float = 0.5,
    steps: int = 3,
    finetune: Callable[[nn.Module, int], Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Reach a final sparsity ``amount`` in ``steps`` equal-ratio steps, fine-tuning between.

    Each step prunes ``1 - (1 - amount) ** (1 / steps)`` of the weights still unpruned, so after
    ``steps`` steps the share pruned is ``amount`` (up to rounding per layer). Masks stay in place
    during fine-tuning (pruned weights stay zero) and are made permanent at the end.

    Args:
        model: the model.
        method: one of :data:`PRUNING_METHODS`.
        amount: final fraction to prune.
        steps: number of pruning steps.
        finetune: called as ``finetune(model, step)`` after each step.
        **kwargs: options of :func:`prune_model` (``scope``, ``n``, ``modules``...).

    Example:
        >>> from torchfault.dnn import create_model, sparsity_report
        >>> m = iterative_prune(create_model("mlp"), amount=0.75, steps=2)
        >>> round(sparsity_report(m)["fc1.weight"]["sparsity"], 2)
        0.75
    """
    if int(steps) < 1:
        raise TorchFaultError(f"steps must be >= 1, got {steps}.")
    if not 0.0 <= float(amount) < 1.0:
        raise TorchFaultError(f"iterative pruning amount must lie in [0, 1), got {amount}.")
    kwargs = dict(kwargs)
    kwargs.pop("make_permanent", None)
    step_amount = 1.0 - (1.0 - float(amount)) ** (1.0 / int(steps))
    for step in range(int(steps)):
        prune_model(model, method, step_amount, make_permanent=False, **kwargs)
        if finetune is not None:
            finetune(model, step)
    parameter = kwargs.get("parameter", "weight")
    for _, m in model.named_modules():
        if hasattr(m, f"{parameter}_orig"):
            prune.remove(m, parameter)
    return model


@torch.no_grad()
def sparsity_report(model: nn.Module, parameters: Sequence[str] = ("weight",)) -> dict[str, dict]:
    """Per parameter: elements, zeros, sparsity, and zero output channels; plus ``"total"``.

    Works on pruned models with or without masks (it reads the effective parameter).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 2)
        >>> _ = lin.weight.data.zero_()
        >>> sparsity_report(torch.nn.Sequential(lin))["0.weight"]["sparsity"]
        1.0
    """
    report: dict[str, dict] = {}
    total = zeros = 0
    for name, m in model.named_modules():
        if not isinstance(m, _PRUNABLE):
            continue
        for p in parameters:
            t = getattr(m, p, None)
            if not isinstance(t, torch.Tensor):
                continue
            z = int((t == 0).sum())
            rows = t.reshape(t.shape[0], -1)
            report[f"{name}.{p}" if name else p] = {
                "numel": t.numel(),
                "zeros": z,
                "sparsity": z / max(t.numel(), 1),
                "zero_channels": int((rows == 0).all(dim=1).sum()),
                "channels": int(t.shape[0]),
            }
            total += t.numel()
            zeros += z
    report["total"] = {
        "numel": total,
        "zeros": zeros,
        "sparsity": zeros / max(total, 1),
        "zero_channels": sum(r["zero_channels"] for r in report.values()),
        "channels": sum(r["channels"] for r in report.values()),
    }
    return report
