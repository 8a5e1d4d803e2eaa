# SPDX-License-Identifier: MIT
"""Progress that shows when no progress bar can: one line per epoch on standard error.

Lightning's progress bar needs a terminal; when standard error is a pipe or a file (a job under
``nohup``, CI, ``2>&1 | tee log``) training used to say nothing until it ended. :class:`EpochLines`
prints ``epoch 3/30: train_loss 0.412, val_acc 0.871 (2.1 s)`` after each epoch instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from lightning.pytorch.callbacks import Callback

__all__ = ["EpochLines"]


class EpochLines(Callback):
    """A Lightning callback printing one line per finished epoch (for output that is no terminal).

    Args:
        prefix: the start of each line (``"epoch"``, ``"fine-tune step 2, epoch"``...).
        stream: where to write (default: standard error at the time of each line).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> cb = EpochLines(stream=out)
        >>> class T:
        ...     current_epoch, max_epochs, sanity_checking = 0, 3, False
        ...     callback_metrics = {"train_loss": 0.5, "val_acc": 0.75}
        >>> cb.on_train_epoch_start(T(), None)
        >>> cb.on_train_epoch_end(T(), None)
        >>> out.getvalue().split(" (")[0]
        'epoch 1/3: train_loss 0.5000, val_acc 0.7500'
    """

    def __init__(self, prefix: str = "epoch", stream: TextIO | None = None) -> None:
        super().__init__()
        self.prefix = prefix
        self.stream = stream
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = []
        for key, value in sorted(trainer.callback_metrics.items()):
            try:
                metrics.append(f"{key} {float(value):.4f}")
            except (TypeError, ValueError):
                continue
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        line = f"{self.prefix} {trainer.current_epoch + 1}/{total}"
        if metrics:
            line += ": " + ", ".join(metrics)
        line += f" ({time.perf_counter() - self._t0:.1f} s)"
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)
