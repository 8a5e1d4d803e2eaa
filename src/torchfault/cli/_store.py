# SPDX-License-Identifier: MIT
"""``torchfault store check PATH`` and ``torchfault store repair PATH --out NEW``.

``check`` says what a file is (a torchfault store, another application's SQLite file, not SQLite,
damaged) without writing to it, runs SQLite's integrity check and decodes every stored fault:
exit status 0 when the store is sound, 1 when it is not. ``repair`` copies every readable row of a
damaged store into a new store (``--out``, which must not exist); the campaign then resumes from
it with ``--store.path NEW`` and runs the lost runs again.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchfault.cli import command
from torchfault.errors import ConfigError, suggest

__all__ = ["StoreJobConfig", "store_job"]

_ACTIONS = ("check", "repair")


@dataclass
class StoreJobConfig:
    """Settings of ``torchfault store``.

    Attributes:
        action: ``check`` (read-only diagnosis) or ``repair`` (salvage into ``out``).
        path: the store file.
        out: ``repair`` only: the new store to write (must not exist).
    """

    action: str = ""
    path: str = ""
    out: str | None = None

    def __post_init__(self) -> None:
        if self.action and self.action not in _ACTIONS:
            raise ConfigError(
                f"action: {self.action!r} is not valid; choose check or repair "
                f"(torchfault store check PATH).{suggest(self.action, _ACTIONS)}",
                field="action",
            )


@command(
    "store",
    StoreJobConfig,
    "Check a results store (read-only), or repair a damaged one into a new store (--out).",
    positional=("action", "path"),
)
def store_job(cfg: StoreJobConfig) -> int:
    from torchfault.store import check_store, repair_store

    if not cfg.action:
        raise ConfigError(
            "action: give check or repair, e.g. torchfault store check runs/demo/campaign.sqlite.",
            field="action",
        )
    if not cfg.path:
        raise ConfigError(
            "path: give the store file, e.g. torchfault store check runs/demo/campaign.sqlite.",
            field="path",
        )
    if cfg.action == "repair" and not cfg.out:
        raise ConfigError(
            "out: repair writes a new store; give its path with --out NEW.sqlite.", field="out"
        )
    if cfg.action == "check":
        report = check_store(cfg.path)
        print(report.text())
        return 0 if report.ok else 1
    assert cfg.out is not None
    print(repair_store(cfg.path, cfg.out).text())
    return 0
