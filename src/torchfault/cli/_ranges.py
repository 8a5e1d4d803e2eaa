# SPDX-License-Identifier: MIT
"""``torchfault profile-ranges``: golden range profiles of a model's layers.

Builds the model and data as a campaign does (:func:`torchfault.dnn.build_model`,
:func:`torchfault.dnn.build_dataset`), streams the data through the model once
(:func:`torchfault.injectors.profile_ranges`) and writes the profile as JSON to ``out``, which
protections (``ranger``, ``clip``, ``detect``) and campaigns (``protection.profile``) read back.
Every setting is checked before the model is built; nothing is written when one is bad.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from torchfault.cli import command
from torchfault.dnn import DataSpec, ModelSpec
from torchfault.errors import ConfigError, TorchFaultError

__all__ = ["ProfileRangesConfig", "profile_ranges_job"]


@dataclass
class ProfileRangesConfig:
    """Settings of ``torchfault profile-ranges``.

    Attributes:
        out: the profile file to write (JSON).
        model: the model (as a campaign's ``model``).
        data: the data streamed through it (as a campaign's ``data``).
        num_inputs: inputs to stream (0: the whole split).
        layers: module names or ``re:`` patterns (default: every leaf module).
        percentiles: percentiles to record, each in [0, 100].
        per_channel: also record per-channel min/max (dim 1).
        batch_size: rows per forward pass.
        sample_size: values per layer the percentiles are computed from (exact below it).
        seed: seed of that sample.
        overwrite: replace ``out`` if it exists.
        progress: progress bar (default: when stderr is a terminal).
    """

    out: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    num_inputs: int = 0
    layers: list[str] | None = None
    percentiles: list[float] = field(default_factory=lambda: [0.1, 1.0, 50.0, 99.0, 99.9])
    per_channel: bool = False
    batch_size: int = 256
    sample_size: int = 100_000
    seed: int = 0
    overwrite: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        for p in self.percentiles:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 <= p <= 100):
                raise ConfigError(
                    f"percentiles: {p!r} is not a percentile; each must be a number in [0, 100].",
                    field="percentiles",
                )
        for name in ("num_inputs", "batch_size", "sample_size"):
            v = getattr(self, name)
            lo = 0 if name == "num_inputs" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name}: must be an integer >= {lo}, got {v!r}.", field=name)


@command(
    "profile-ranges",
    ProfileRangesConfig,
    "Golden range profile (min/max, percentiles, mean/std per layer) of a model on a dataset.",
    positional=("out",),
)
def profile_ranges_job(cfg: ProfileRangesConfig) -> int:
    import torch

    from torchfault.dnn import build_dataset, build_model
    from torchfault.injectors import profile_ranges

    if not cfg.out:
        raise ConfigError(
            "out: give the profile file to write, e.g. torchfault profile-ranges "
            "runs/lenet-ranges.json.",
            field="out",
        )
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"out: {str(out)!r} exists; pass --overwrite to replace it.", field="out")
    if not out.parent.exists():
        raise ConfigError(f"out: folder {str(out.parent)!r} does not exist.", field="out")
    model = build_model(cfg.model, cfg.data)
    ds = build_dataset(cfg.data)
    n = len(ds) if cfg.num_inputs == 0 else min(cfg.num_inputs, len(ds))
    if n < len(ds):
        ds = torch.utils.data.Subset(ds, range(n))
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    try:
        prof = profile_ranges(
            model,
            ds,
            cfg.layers,
            percentiles=cfg.percentiles,
            per_channel=cfg.per_channel,
            batch_size=cfg.batch_size,
            sample_size=cfg.sample_size,
            seed=cfg.seed,
            progress=progress,
        )
    except TorchFaultError as exc:
        raise ConfigError(str(exc), field=exc.field) from None
    prof = type(prof)(
        **{
            **prof.__dict__,
            "meta": {"model": cfg.model.name, "data": cfg.data.dataset, "split": cfg.data.split},
        }
    )
    prof.save(out)
    print(f"profiled {len(prof.layers)} layers on {prof.num_inputs} inputs -> {out}")
    for r in prof.layers.values():
        print(
            f"  {r.name:<16} {r.type:<12} min {r.min:+.4g}  max {r.max:+.4g}  mean {r.mean:+.4g}  std {r.std:.4g}"
        )
    return 0
