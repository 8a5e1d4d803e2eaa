# SPDX-License-Identifier: MIT
"""What :func:`torchfault.inject` can do with TorchScript modules and exported programs.

- ``torch.jit.script`` and ``torch.jit.trace`` modules keep their parameters and buffers as
  ordinary tensors, so *permanent* weight, bias and buffer faults are written into them and
  restored exactly as for eager modules. Their compiled ``forward`` runs no Python hooks
  (``register_forward_pre_hook`` raises on a scripted module; a traced module accepts hooks on
  its submodules and never calls them), so activation faults and transient faults (restored after
  one forward pass, counted by a hook) are refused with an error that says so and what to use.
- A ``torch.export`` ``ExportedProgram`` is not an ``nn.Module``. ``program.module()`` is a
  ``GraphModule`` sharing the program's parameters, with every operation inlined: its submodules
  hold parameters but are never called, so weight, bias and buffer faults work and activation
  faults are refused (no hook would see them). ``torch.export.unflatten(program)`` calls its
  submodules as modules (on copies of the parameters): weights and activations both work.
  The same check holds for any ``torch.fx.GraphModule``: an activation fault needs its module
  called by a ``call_module`` node (or inside one).

:func:`check_model` is called by :func:`torchfault.inject` before anything is touched;
:func:`is_script` tells it to leave out its per-pass hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError
from torchfault.faults import Fault

__all__ = ["check_model", "is_script"]


def is_script(model: nn.Module) -> bool:
    """Whether ``model`` is a TorchScript module (scripted or traced).

    Example:
        >>> is_script(torch.jit.script(nn.Linear(2, 2))), is_script(nn.Linear(2, 2))
        (True, False)
    """
    return isinstance(model, torch.jit.ScriptModule)


def check_model(model: object, faults: Sequence[Fault]) -> None:
    """Refuse a model that :func:`~torchfault.inject` cannot fault as asked, naming what is not
    supported and what to do instead.

    Example:
        >>> sm = torch.jit.script(nn.Sequential(nn.Linear(2, 2)))
        >>> check_model(sm, [Fault("0", "weight", index=(0, 0), bits=(3,))])   # supported
        >>> check_model(sm, [Fault("0", "output", index=(0,), bits=(3,))])
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: fault on 0:output: activation faults need forward hooks, ...
    """
    if isinstance(model, torch.export.ExportedProgram):
        raise TorchFaultError(
            "inject() takes an nn.Module, got a torch.export ExportedProgram: pass "
            "torch.export.unflatten(program) (submodules called as modules: weight and activation "
            "faults) or program.module() (operations inlined: weight, bias and buffer faults)."
        )
    if not isinstance(model, nn.Module):
        raise TorchFaultError(f"inject() takes an nn.Module, got {type(model).__name__}.")
    if isinstance(model, torch.fx.GraphModule):
        _check_graph(model, faults)
    if not is_script(model):
        return
    kind = "traced" if isinstance(model, torch.jit.TopLevelTracedModule) else "scripted"
    for f in faults:
        where = f"fault on {f.module or '<model>'}:{f.target}"
        if f.is_activation:
            raise TorchFaultError(
                f"{where}: activation faults need forward hooks, which a {kind} TorchScript "
                f"module ({type(model).__name__}) does not run. Weight, bias and buffer faults "
                "(permanent) are supported; for activations use the eager model or "
                "torch.export.unflatten(torch.export.export(...))."
            )
        if f.persistence == "transient":
            raise TorchFaultError(
                f"{where}: a transient fault is restored after one forward pass, counted by a "
                f"forward hook that a {kind} TorchScript module does not run; use "
                "persistence='permanent' (the fault lasts until the with block ends)."
            )


def _check_graph(model: torch.fx.GraphModule, faults: Sequence[Fault]) -> None:
    """Activation faults on a GraphModule need their module called (``call_module``)."""
    called = {str(n.target) for n in model.graph.nodes if n.op == "call_module"}
    for f in faults:
        if not f.is_activation or f.module == "":
            continue
        if not any(f.module == t or f.module.startswith(t + ".") for t in called):
            raise TorchFaultError(
                f"fault on {f.module}:{f.target}: module {f.module!r} is not called as a module "
                "in this GraphModule (its operations are inlined, as in torch.export's "
                "program.module()), so no hook sees its activations. Weight, bias and buffer "
                "faults work; for activations use torch.export.unflatten(program) or the eager "
                f"model. Modules called here: {sorted(called) or 'none'}."
            )
