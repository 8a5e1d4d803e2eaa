# SPDX-License-Identifier: MIT
"""The ``torchfault`` command: one subcommand per job, each a dataclass config.

Usage::

    torchfault JOB [POSITIONAL...] [--config FILE.yaml] [--field.path VALUE ...] [--print_config]

Jobs register with :func:`command`; each takes a dataclass whose fields are the job's settings.
The YAML file gives values, dotted options override them, ``--print_config`` prints the merged
config as YAML and exits. A bad value is reported with the name of its field, and exit status 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torchfault.config import apply_overrides, describe, dump_yaml, from_dict, load_yaml
from torchfault.errors import ConfigError, TorchFaultError
from torchfault.registry import Registry

__all__ = ["Command", "command", "main", "COMMANDS"]

log = logging.getLogger("torchfault")

COMMANDS: Registry[Command] = Registry("command")

# Modules that define jobs; imported when the command line starts.
_JOB_MODULES = (
    "torchfault.cli._jobs",
    "torchfault.cli._dnn",
    "torchfault.cli._campaign",
    "torchfault.cli._report",
    "torchfault.cli._store",
    "torchfault.cli._ranges",
)


@dataclass(frozen=True)
class Command:
    """One job of the command line.

    Attributes:
        name: the subcommand.
        config: dataclass type of its settings.
        run: called with the built config; returns an exit status (``None`` means 0).
        help: one line.
        positional: config fields that may be given as positional arguments, in order.
    """

    name: str
    config: type
    run: Callable[[Any], int | None]
    help: str
    positional: tuple[str, ...] = ()


def command(
    name: str, config: type, help: str, positional: Sequence[str] = ()
) -> Callable[[Callable[[Any], int | None]], Callable[[Any], int | None]]:
    """Decorator registering ``fn(cfg)`` as the job ``name`` with settings dataclass ``config``."""

    def deco(fn: Callable[[Any], int | None]) -> Callable[[Any], int | None]:
        COMMANDS.add(name, Command(name, config, fn, help, tuple(positional)), description=help)
        return fn

    return deco


def _load_jobs() -> None:
    for mod in _JOB_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def _usage() -> str:
    lines = [
        "usage: torchfault JOB [ARGS] [--config FILE.yaml] [--field.path VALUE ...] [--print_config]",
        "       torchfault --version",
        "",
        "jobs:",
    ]
    for name in COMMANDS.list():
        lines.append(f"  {name:<10} {COMMANDS.get(name).help}")
    return "\n".join(lines)


def _switches(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of the ``bool`` (or ``bool | None``) fields of a config dataclass."""
    import dataclasses
    import typing

    out: set[str] = set()
    for name, tp in typing.get_type_hints(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out |= _switches(tp, f"{prefix}{name}.")
        elif tp is bool or set(typing.get_args(tp)) == {bool, type(None)}:
            out.add(prefix + name)
    return out


def build_config(cmd: Command, args: Sequence[str]) -> tuple[Any, bool]:
    """Parse one job's arguments into its config; returns ``(config, print_config)``."""
    args = list(args)
    print_config = False
    config_files: list[str] = []
    positional: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok in ("--print_config", "--print-config"):
            print_config = True
        elif tok == "--config":
            if i + 1 >= len(args):
                raise TorchFaultError("--config needs a file name.")
            config_files.append(args[i + 1])
            i += 1
        elif tok.startswith("--config="):
            config_files.append(tok.split("=", 1)[1])
        elif tok.startswith("--"):
            rest.append(tok)
            if "=" not in tok:
                key = tok[2:].replace("-", "_")
                if i + 1 < len(args) and not args[i + 1].startswith("--"):
                    rest.append(args[i + 1])
                    i += 1
                elif key in _switches(cmd.config):
                    rest.append("true")  # a bare switch (``--html``, ``--per_element``)
                else:
                    raise ConfigError(f"--{key}: missing value.", field=key)
        else:
            positional.append(tok)
        i += 1
    data: dict[str, Any] = {}
    for f in config_files:
        data.update(load_yaml(f))
    if len(positional) > len(cmd.positional):
        raise TorchFaultError(
            f"torchfault {cmd.name}: unexpected argument(s) {positional[len(cmd.positional) :]}; "
            f"positional arguments: {', '.join(cmd.positional) or 'none'}."
        )
    for name, value in zip(cmd.positional, positional):
        rest += [f"--{name}", value]
    data = apply_overrides(data, rest)
    return from_dict(cmd.config, data), print_config


def _job_help(cmd: Command) -> str:
    """Usage of one job: its positional arguments, then every field with default and meaning."""
    pos = " ".join(f"[{p.upper()}]" for p in cmd.positional)
    lines = [
        f"usage: torchfault {cmd.name} {pos + ' ' if pos else ''}[--config FILE.yaml] [--FIELD VALUE ...] [--print_config]",
        "",
        cmd.help,
        "",
        "settings (--FIELD VALUE; default in brackets):",
    ]
    width = 72
    for where, default, doc in describe(cmd.config):
        lines.append(f"  --{where} [{default}]")
        words, line = doc.replace("``", "`").split(), "      "
        for word in words:
            if len(line) + len(word) > width:
                lines.append(line.rstrip())
                line = "      "
            line += word + " "
        if line.strip():
            lines.append(line.rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchfault`` command."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (``torchfault list | head``): stop quietly, as Unix tools do;
        # stdout goes to devnull so that the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1  # as rich's console does for the tables (and the Python docs suggest)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever ``sys.stderr`` is when a record comes."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _show_trust_log() -> None:
    """Print, on stderr, which code a config makes torchfault import (``module:function``
    factories, logger ``torchfault.config``), unless a job logs it already."""
    logger = logging.getLogger("torchfault.config")
    if any(getattr(h, "_torchfault_trust", False) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("torchfault: %(message)s"))

    def unlogged(record: logging.LogRecord) -> bool:
        # a job that sets up its own logging (campaign) prints the record through it instead
        return not any(
            getattr(h, "_torchfault", False) for h in logging.getLogger("torchfault").handlers
        )

    handler.addFilter(unlogged)
    handler._torchfault_trust = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _show_trust_log()
    _load_jobs()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        from torchfault import __version__

        print(f"torchfault {__version__}")
        return 0
    name, args = argv[0], argv[1:]
    try:
        cmd: Command = COMMANDS.get(name)
    except ValueError as exc:
        print(f"torchfault: {exc}", file=sys.stderr)
        return 2
    if "-h" in args or "--help" in args:
        print(_job_help(cmd))
        return 0
    try:
        cfg, print_config = build_config(cmd, args)
        if print_config:
            print(dump_yaml(cfg), end="")
            return 0
        status = cmd.run(cfg)
    except TorchFaultError as exc:
        print(f"torchfault {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"torchfault {name}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
