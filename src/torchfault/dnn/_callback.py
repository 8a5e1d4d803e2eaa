# SPDX-License-Identifier: MIT
"""``FaultInjectionCallback``: faulty metrics beside the clean ones, from ``Trainer.test``.

During ``validate``/``test`` (and the validation loop of ``fit``) the callback takes each batch
the module has just evaluated and runs it again under faults: a given fault list, a sampler's
faults, or bit errors at one or several rates (a ``ber`` sampler over the module's weights and
biases). The faulty pass runs inside :func:`torchfault.inject`, so every parameter and buffer is
bit for bit what it was after each batch, and the clean metrics the module logs are its own,
untouched. The callback logs, per stage and per fault setting:

- ``{stage}_faulty_acc`` (or ``{stage}_acc@ber=1e-06`` per rate): accuracy of the faulty pass;
- ``{stage}_sdc`` (or ``{stage}_sdc@ber=...``): the fraction of inputs whose top-1 class the
  faults changed (outputs all finite), against the clean pass of the same batch;
- ``{stage}_due`` (or ``{stage}_due@ber=...``): the fraction whose faulty output holds a NaN or
  an infinity (counted as wrong in the accuracy);

and keeps the totals in :attr:`FaultInjectionCallback.results` (rate or ``"faults"`` ->
``{"acc", "sdc", "due", "n", "faults"}``) for plots (:func:`plot_accuracy_vs_ber`).

When faults change: ``per="batch"`` draws new faults for every batch (fault ``k`` of the sampler
for the ``k``-th batch of the run), ``per="epoch"`` once per epoch (fault ``k`` for epoch ``k``),
``permanent`` once for the whole run (fault 0). Faults are a pure function of ``seed`` and ``k``,
so a run is repeatable. A batch is ``(inputs, labels, ...)`` (``labels`` optional: the SDC rate
needs none); inputs may be a tensor, a tuple or a dict (keyword arguments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn

from torchfault.errors import TorchFaultError, suggest
from torchfault.faults import Fault, fault_space
from torchfault.injectors import inject

__all__ = ["FaultInjectionCallback", "plot_accuracy_vs_ber"]

_PER = ("batch", "epoch", "permanent")
_STAGES = ("validate", "test")


def _call(module: nn.Module, x: Any) -> Any:
    if isinstance(x, Mapping):
        return module(**x)
    if isinstance(x, (tuple, list)):
        return module(*x)
    return module(x)


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TorchFaultError(
        f"FaultInjectionCallback: the module returned {type(out).__name__}; it needs class "
        "scores (a tensor, or an output with `logits`)."
    )


def _rate_key(rate: float) -> str:
    return f"ber={rate:.0e}".replace("e-0", "e-").replace("e+0", "e+")


class FaultInjectionCallback(pl.Callback):
    """Injects faults into a second pass of every validation/test batch and logs its metrics.

    Args:
        faults: faults to inject (each batch's faulty pass holds all of them).
        sampler: a torchfault sampler (``create_sampler(...)``): its fault ``k`` is injected, ``k``
            counted per batch, per epoch or 0 (see ``per``).
        ber: one bit-error rate or several (``[1e-7, 1e-6, 1e-5]``): each batch runs once per
            rate under a ``ber`` sampler over ``kinds`` of ``modules`` (all weights and biases).
        per: ``"batch"``, ``"epoch"`` or ``"permanent"`` (when new faults are drawn).
        stages: ``"validate"`` and/or ``"test"`` (``validate`` covers ``fit``'s validation too).
        seed: seed of the drawn faults.
        modules, kinds: where ``ber`` faults land (module selectors; ``weights``, ``biases``...).

    Give exactly one of ``faults``, ``sampler`` and ``ber``.

    Example:
        >>> import torch
        >>> from torchfault import Fault
        >>> cb = FaultInjectionCallback(faults=[Fault("fc3", "weight", (0, 0), (30,))])
        >>> cb.per, cb.stages
        ('batch', ('validate', 'test'))
        >>> FaultInjectionCallback(ber=[1e-6], per="step")
        Traceback (most recent call last):
        ...
        torchfault.errors.TorchFaultError: FaultInjectionCallback: per must be one of batch, epoch, permanent, got 'step'...
    """

    def __init__(
        self,
        faults: Sequence[Fault] | None = None,
        *,
        sampler: Any = None,
        ber: float | Sequence[float] | None = None,
        per: str = "batch",
        stages: Sequence[str] = _STAGES,
        seed: int = 0,
        modules: Sequence[str] | None = None,
        kinds: Sequence[str] = ("weights", "biases"),
    ) -> None:
        given = [
            name
            for name, v in (("faults", faults), ("sampler", sampler), ("ber", ber))
            if v is not None
        ]
        if len(given) != 1:
            raise TorchFaultError(
                "FaultInjectionCallback: give exactly one of faults, sampler and ber, got "
                f"{', '.join(given) or 'none'}."
            )
        if per not in _PER:
            raise TorchFaultError(
                f"FaultInjectionCallback: per must be one of {', '.join(_PER)}, got {per!r}."
                f"{suggest(str(per), _PER)}"
            )
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        bad = [s for s in stages if s not in _STAGES]
        if bad or not stages:
            raise TorchFaultError(
                f"FaultInjectionCallback: stages must be among validate, test, got {list(stages)}."
            )
        if faults is not None:
            faults = tuple(faults)
            if not all(isinstance(f, Fault) for f in faults):
                raise TorchFaultError("FaultInjectionCallback: faults must be Fault objects.")
        rates: tuple[float, ...] = ()
        if ber is not None:
            rates = (ber,) if isinstance(ber, (int, float)) else tuple(ber)
            for r in rates:
                if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 1.0:
                    raise TorchFaultError(
                        f"FaultInjectionCallback: ber must hold bit-error rates in (0, 1], got {r!r}."
                    )
            if not rates:
                raise TorchFaultError("FaultInjectionCallback: ber holds no rate.")
        if sampler is not None and not hasattr(sampler, "draw"):
            raise TorchFaultError(
                "FaultInjectionCallback: sampler must be a torchfault sampler (with draw(k)), got "
                f"{type(sampler).__name__}."
            )
        self.faults = faults
        self.sampler = sampler
        self.rates = tuple(float(r) for r in rates)
        self.per = per
        self.stages = stages
        self.seed = int(seed)
        self.modules = list(modules) if modules else None
        self.kinds = tuple(kinds)
        self._ber_samplers: dict[float, Any] = {}
        self._batch = 0
        self._epoch = 0
        self._totals: dict[str, dict[str, float]] = {}
        #: key (``"faults"`` or a rate) -> ``{"acc", "sdc", "n", "faults"}`` of the last run
        self.results: dict[Any, dict[str, float]] = {}

    # ------------------------------------------------------------------ which faults
    def _k(self) -> int:
        return {"batch": self._batch, "epoch": self._epoch, "permanent": 0}[self.per]

    def _settings(self, module: nn.Module) -> list[tuple[Any, tuple[Fault, ...]]]:
        k = self._k()
        if self.faults is not None:
            return [("faults", self.faults)]
        if self.sampler is not None:
            return [("faults", tuple(self.sampler.draw(k % len(self.sampler))))]
        out = []
        for rate in self.rates:
            s = self._ber_samplers.get(rate)
            if s is None:
                from torchfault.samplers import create_sampler

                sites = fault_space(module, None, modules=self.modules, kinds=list(self.kinds))
                if not len(sites):
                    raise TorchFaultError(
                        f"FaultInjectionCallback: the module holds no {'/'.join(self.kinds)} "
                        "to fault."
                    )
                s = create_sampler("ber", sites=list(sites), seed=self.seed, rate=rate, n=1 << 30)
                self._ber_samplers[rate] = s
            out.append((rate, tuple(s.draw(k))))
        return out

    # ------------------------------------------------------------------ hooks
    def _start(self) -> None:
        self._batch = 0
        self._totals = {}

    def _end(self, pl_module: pl.LightningModule) -> None:
        self.results = {}
        for key, t in self._totals.items():
            n = t["n"]
            self.results[key if key == "faults" else float(key)] = {
                "acc": t["correct"] / t["labelled"] if t["labelled"] else float("nan"),
                "sdc": t["changed"] / n if n else float("nan"),
                "due": t["due"] / n if n else float("nan"),
                "n": n,
                "faults": t["faults"],
            }
        self._epoch += 1

    @torch.no_grad()
    def _batch_end(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> None:
        if isinstance(batch, (tuple, list)) and len(batch) >= 1:
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        was_training = pl_module.training
        pl_module.eval()
        try:
            clean = _logits(_call(pl_module, x)).argmax(dim=-1)
            for key, faults in self._settings(pl_module):
                with inject(pl_module, faults):
                    out = _logits(_call(pl_module, x))
                finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
                pred = torch.where(finite, out.argmax(dim=-1), torch.full_like(clean, -1))
                changed = float(((pred != clean) & finite).sum())
                due = float((~finite).sum())
                n = float(pred.numel())
                t = self._totals.setdefault(
                    str(key),
                    {
                        "n": 0.0,
                        "changed": 0.0,
                        "due": 0.0,
                        "correct": 0.0,
                        "labelled": 0.0,
                        "faults": 0.0,
                    },
                )
                t["n"] += n
                t["changed"] += changed
                t["due"] += due
                t["faults"] += len(faults)
                name = f"{stage}_faulty" if key == "faults" else f"{stage}_{{}}@{_rate_key(key)}"
                if y is not None and torch.is_tensor(y) and y.shape == pred.shape:
                    correct = float((pred == y.to(pred.device)).sum())
                    t["correct"] += correct
                    t["labelled"] += n
                    acc_name = f"{name}_acc" if key == "faults" else name.format("acc")
                    pl_module.log(
                        acc_name, correct / n, on_step=False, on_epoch=True, batch_size=int(n)
                    )
                sdc_name = f"{name}_sdc" if key == "faults" else name.format("sdc")
                pl_module.log(
                    sdc_name, changed / n, on_step=False, on_epoch=True, batch_size=int(n)
                )
                due_name = f"{name}_due" if key == "faults" else name.format("due")
                pl_module.log(due_name, due / n, on_step=False, on_epoch=True, batch_size=int(n))
        finally:
            pl_module.train(was_training)
        self._batch += 1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "validate" in self.stages:
            self._start()

    def on_validation_batch_end(  # type: ignore[override]
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "validate" in self.stages and not trainer.sanity_checking:
            self._batch_end("val", pl_module, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "validate" in self.stages and not trainer.sanity_checking:
            self._end(pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "test" in self.stages:
            self._start()

    def on_test_batch_end(  # type: ignore[override]
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "test" in self.stages:
            self._batch_end("test", pl_module, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "test" in self.stages:
            self._end(pl_module)


def plot_accuracy_vs_ber(
    results: Mapping[Any, Mapping[str, float]],
    path: str | Path,
    clean_acc: float | None = None,
    title: str = "Accuracy under bit errors",
) -> Path:
    """A PNG of accuracy (and SDC rate) against the bit-error rate (log x axis); needs matplotlib
    (the ``plot`` extra). ``results``: :attr:`FaultInjectionCallback.results`.

    Example:
        >>> import tempfile, os
        >>> out = plot_accuracy_vs_ber({1e-6: {"acc": 0.9, "sdc": 0.01}, 1e-5: {"acc": 0.5, "sdc": 0.4}},
        ...                            os.path.join(tempfile.mkdtemp(), "ber.png"), clean_acc=0.95)
        >>> out.suffix
        '.png'
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TorchFaultError(
            "plot_accuracy_vs_ber needs matplotlib, which is not installed; install the 'plot' "
            "extra: pip install 'torchfault[plot]'."
        ) from None
    rates = sorted(float(k) for k in results if k != "faults")
    if not rates:
        raise TorchFaultError("plot_accuracy_vs_ber: the results hold no bit-error rate.")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(rates, [results[r]["acc"] for r in rates], "o-", label="accuracy under faults")
    ax.plot(rates, [results[r]["sdc"] for r in rates], "s--", label="SDC (top-1 changed)")
    if all("due" in results[r] for r in rates):
        ax.plot(rates, [results[r]["due"] for r in rates], "^:", label="DUE (NaN or inf output)")
    if clean_acc is not None:
        ax.axhline(clean_acc, color="grey", lw=1, ls=":", label="clean accuracy")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("bit-error rate (weights and biases)")
    ax.set_ylabel("fraction of inputs")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
