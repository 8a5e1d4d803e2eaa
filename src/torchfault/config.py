# SPDX-License-Identifier: MIT
"""Configuration: YAML files plus dotted command-line overrides, into validated dataclasses.

Every job of the ``torchfault`` command takes one dataclass config. A YAML file (read with
``yaml.safe_load``) gives the values, ``--a.b value`` overrides any field, and
:func:`from_dict` builds the dataclass, naming the field (``sampler.margin``) of every unknown
key or bad value.

Why not jsonargparse (which DESIGN.md names): its messages for nested dataclass errors do not
name our fields the way we want, and a hundred lines here give exact control over the error
text, the override syntax and ``--print_config`` with no extra dependency.

Example:
    >>> from torchfault.campaign import CampaignConfig
    >>> cfg = from_dict(CampaignConfig, apply_overrides({}, ["--sampler.margin", "0.05"]))
    >>> cfg.sampler.margin
    0.05
    >>> from_dict(CampaignConfig, {"sampler": {"margn": 1}})
    Traceback (most recent call last):
    ...
    torchfault.errors.ConfigError: sampler.margn: unknown field. Valid fields of sampler: ... Did you mean 'margin'?
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from torchfault.errors import ConfigError, suggest

__all__ = [
    "load_yaml",
    "apply_overrides",
    "from_dict",
    "to_dict",
    "dump_yaml",
    "check_seed",
    "check_selectors",
    "is_factory_spec",
    "load_factory",
    "safe_text",
    "ConfigError",
]

C = TypeVar("C")

#: Integers in a config must fit a signed 64-bit word: what torch, numpy and SQLite store.
INT_MAX = 2**63 - 1


#: The most nodes (mappings, sequences and scalars, counted with every alias expanded) a config
#: file may hold. Real configs hold a few hundred; ten lines of nested aliases (a "billion
#: laughs" file) expand to 10^8 and more, which would take minutes and gigabytes to walk.
MAX_CONFIG_NODES = 100_000


def _expanded_size(data: Any, limit: int) -> int:
    """Nodes of ``data`` counted as if every alias were expanded, stopping past ``limit``.

    YAML aliases load as shared objects, so the walk memoizes each container's size by identity:
    its cost is the number of distinct containers, however large the expansion.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:  # a recursive alias (``&a [*a]``) expands without end
            return limit + 1
        active.add(key)
        total = 1
        items = [x for kv in obj.items() for x in kv] if isinstance(obj, dict) else obj
        for item in items:
            total += size(item)
            if total > limit:
                break
        active.discard(key)
        sizes[key] = total
        return total

    return size(data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; a missing, unreadable, non-UTF-8, oversized or
    non-mapping file is a ConfigError naming the file.

    A file whose tree, with every YAML alias expanded, would hold more than
    :data:`MAX_CONFIG_NODES` values is refused before anything walks it (aliases load as shared
    objects, which is cheap; expanding them is not).

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "c.yaml")
        >>> _ = open(p, "w").write("a: &x [1, 2]\\nb: *x\\n")
        >>> load_yaml(p)
        {'a': [1, 2], 'b': [1, 2]}
    """
    p = Path(path)
    shown = _shown(p)
    if not p.is_file():
        raise ConfigError(f"config: no such file {shown}.", field="config")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {shown}: {exc.strerror}.", field="config") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config: {shown} is not UTF-8 text (byte {raw[exc.start : exc.start + 1]!r} at "
            f"offset {exc.start}, line {line}); save it as UTF-8.",
            field="config",
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {shown} is not valid YAML: {exc}", field="config") from None
    except RecursionError:
        raise ConfigError(f"config: {shown} is nested too deeply.", field="config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config: {shown} must hold a mapping at the top, got {type(data).__name__}.",
            field="config",
        )
    if _expanded_size(data, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(
            f"config: {shown} holds more than {MAX_CONFIG_NODES:,} values once its YAML aliases "
            "(*name) are expanded; a config this large is refused (write the values out, or "
            "use fewer nested aliases).",
            field="config",
        )
    return data


def _shown(path: str | Path) -> str:
    """A file name as printable text, quoted (undecodable bytes of the name escaped)."""
    return safe_text(repr(str(path)))


def safe_text(text: str) -> str:
    """``text`` with lone surrogates (the undecodable bytes of a file name, as Python reads
    them from the command line) written as ``\\xNN`` escapes, so it can always be printed and
    logged.

    Example:
        >>> safe_text("runs/\\udcff.sqlite")
        'runs/\\\\xff.sqlite'
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_seed(value: Any, field: str = "seed", maximum: int = INT_MAX) -> int:
    """``value`` if it is an integer seed in ``[0, maximum]``, else a ConfigError naming
    ``field`` (a seed of 2**64 would otherwise fail deep in torch, naming nothing).

    Example:
        >>> check_seed(7)
        7
        >>> check_seed(2**64)
        Traceback (most recent call last):
        ...
        torchfault.errors.ConfigError: seed: must be an integer in [0, 2**63 - 1] (it seeds torch and numpy and is stored in SQLite), got 18446744073709551616.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0**64:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        bound = "2**63 - 1" if maximum == INT_MAX else f"{maximum:,}"
        why = (
            " (it seeds torch and numpy and is stored in SQLite)"
            if maximum == INT_MAX
            else " (Lightning seeds numpy with 32 bits)"
            if maximum < 2**32
            else ""
        )
        raise ConfigError(
            f"{field}: must be an integer in [0, {bound}]{why}, got {_short(value)}.", field=field
        )
    return value


def check_selectors(selectors: Any, field: str) -> None:
    """Compile every ``re:<regex>`` of a list of module selectors; a bad one is a ConfigError
    naming ``field[i]`` (instead of an ``re.error`` traceback when the model is searched).

    Example:
        >>> check_selectors(["conv1", "re:layer[12]"], "targets.modules")
        >>> check_selectors(["re:["], "targets.modules")
        Traceback (most recent call last):
        ...
        torchfault.errors.ConfigError: targets.modules[0]: 're:[' is not a valid regular expression (unterminated character set at position 0); write re:<Python regex>, e.g. 're:layer1\\..*'.
    """
    import re

    for i, selector in enumerate(selectors or ()):
        if isinstance(selector, str) and selector.startswith("re:"):
            try:
                re.compile(selector[3:])
            except re.error as exc:
                raise ConfigError(
                    f"{field}[{i}]: {selector!r} is not a valid regular expression ({exc}); "
                    "write re:<Python regex>, e.g. 're:layer1\\..*'.",
                    field=f"{field}[{i}]",
                ) from None


def is_factory_spec(name: Any) -> bool:
    """Whether a name is a factory of your own, ``path/to/file.py:function`` or
    ``package.module:function``, rather than a registered name.

    Example:
        >>> is_factory_spec("examples/my_model.py:build"), is_factory_spec("lenet")
        (True, False)
    """
    return isinstance(name, str) and ":" in name


def load_factory(spec: str, field: str = "model.name") -> Any:
    """The function ``spec`` names (``package.module:function`` or ``path/to/file.py:function``),
    imported: a config that names one runs that code, so a config is trusted like code.

    The import is logged (logger ``torchfault.config``, which the command line prints), and a
    function of Python's standard library (``subprocess:run``, ``os:system``) is refused: none
    builds a model or a dataset, and a config naming one is hostile or mistaken. Errors are
    ConfigErrors naming ``field``.

    Example:
        >>> load_factory("torchfault.dnn:create_model").__name__
        'create_model'
        >>> load_factory("subprocess:run")
        Traceback (most recent call last):
        ...
        torchfault.errors.ConfigError: model.name: 'subprocess:run' is a function of Python's standard library, not a model factory; name a function of your own ('path/to/file.py:function' or 'package.module:function').
    """
    import importlib
    import importlib.util
    import logging
    import sys

    mod_name, _, fn_name = str(spec).rpartition(":")
    if not mod_name or not fn_name:
        raise ConfigError(
            f"{field}: {_short(spec)} is not 'path/to/file.py:function' or "
            "'package.module:function'.",
            field=field,
        )
    top = mod_name.split(".")[0]
    if not mod_name.endswith(".py") and (top in sys.stdlib_module_names or top == "builtins"):
        raise ConfigError(
            f"{field}: {_short(spec)} is a function of Python's standard library, not a model "
            "factory; name a function of your own ('path/to/file.py:function' or "
            "'package.module:function').",
            field=field,
        )
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            where = (
                ""
                if path.is_absolute()
                else f" (relative paths start from the current directory, {_shown(Path.cwd())})"
            )
            raise ConfigError(f"{field}: no such file {_shown(mod_name)}{where}.", field=field)
        origin = str(path.resolve())
        logging.getLogger("torchfault.config").info(
            "%s: running %s from %s (a config runs the code it names: trust it like code)",
            field,
            fn_name,
            safe_text(origin),
        )
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"{field}: cannot import {_shown(mod_name)}.", field=field)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise ConfigError(
                f"{field}: {_shown(mod_name)} is not valid Python: {exc}", field=field
            ) from None
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ConfigError(f"{field}: cannot import {mod_name!r}: {exc}", field=field) from None
        logging.getLogger("torchfault.config").info(
            "%s: running %s from module %s (%s; a config runs the code it names: trust it "
            "like code)",
            field,
            fn_name,
            mod_name,
            safe_text(str(getattr(module, "__file__", None) or "built in")),
        )
    try:
        fn = getattr(module, fn_name)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"{field}: {mod_name!r} has no {fn_name!r}.{suggest(fn_name, names)}", field=field
        ) from None
    if not callable(fn):
        raise ConfigError(
            f"{field}: {_short(spec)} is a {type(fn).__name__}, not a function.", field=field
        )
    return fn


def _set_dotted(data: dict[str, Any], key: str, value: Any, copied: set[int]) -> None:
    """Set ``a.b.c`` in ``data``, copying each mapping on the way (once) instead of changing it."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
        elif id(child) not in copied:
            child = dict(child)
        copied.add(id(child))
        node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``["--a.b", "1", "--c=x"]`` to a nested dict (values parsed as YAML scalars).

    ``data`` is left unchanged: only the mappings on the path of an override are copied, so the
    cost does not grow with the rest of the tree (YAML aliases stay shared, never expanded).

    Example:
        >>> apply_overrides({"a": {"b": 1}}, ["--a.b", "2", "--c=x"])
        {'a': {'b': 2}, 'c': 'x'}
    """
    out: dict[str, Any] = dict(data)
    copied: set[int] = {id(out)}
    i = 0
    while i < len(overrides):
        tok = overrides[i]
        if not tok.startswith("--") or len(tok) <= 2:
            raise ConfigError(
                f"override {tok!r}: expected '--field.path VALUE' or '--field.path=VALUE'."
            )
        key = tok[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        else:
            if i + 1 >= len(overrides):
                raise ConfigError(f"override --{key}: missing value.", field=key)
            i += 1
            raw = overrides[i]
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key.replace("-", "_"), value, copied)
        i += 1
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message never echoes a whole tree)."""
    text = safe_text(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [arg for arg in args if arg is not type(None)]
        if len(real) == 1:  # an optional value: the one type's own error is the clearest
            return _convert(real[0], value, where)
        for arg in real:
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_short(value)}.", field=where)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{where}: {_short(value)} is not valid; choose one of "
                f"{', '.join(map(repr, allowed))}.{suggest(str(value), [str(a) for a in allowed])}",
                field=where,
            )
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping of {tp.__name__} fields, got {_short(value)}.",
                field=where,
            )
        return from_dict(tp, value, prefix=where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(
                    f"{where}: expected {len(args)} items, got {len(value)}.", field=where
                )
            return tuple(
                _convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))
            )
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_short(value)}.", field=where)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_short(value)}.", field=where)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(
                    f"{where}: expected an integer, got {_short(value)}.", field=where
                )
        if not -INT_MAX - 1 <= value <= INT_MAX:
            raise ConfigError(
                f"{where}: {value:.4g} does not fit a 64-bit integer (valid: -2**63 to 2**63 - 1).",
                field=where,
            )
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            number = None
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    number = float(value)
            if number is None:
                raise ConfigError(f"{where}: expected a number, got {_short(value)}.", field=where)
            value = number
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(
                f"{where}: {_short(value)} is too large for a float.", field=where
            ) from None
        if math.isnan(value):
            raise ConfigError(
                f"{where}: expected a number, got NaN (no setting is NaN).", field=where
            )
        return value
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where}: expected a string, got {_short(value)}.", field=where)
        return value
    return value


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad values name their field.

    A ``ValueError`` or ``TypeError`` raised by the dataclass's ``__post_init__`` is re-raised
    as a ConfigError that keeps its message (which names the field) and carries the field: the
    error's own ``field`` (under ``prefix``) where it has one, else ``prefix``.
    A class with a ``_translate_keys(data, prefix)`` static method (the DNN jobs' old flat keys,
    :func:`torchfault.dnn.legacy_job_keys`) gets ``data`` through it first.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{prefix or 'config'}: expected a mapping, got {_short(data)}.", field=prefix or None
        )
    translate = getattr(cls, "_translate_keys", None)
    if translate is not None:  # a config that still reads its old keys (with a warning)
        data = translate(data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown field. Valid fields of {prefix or 'the config'}: "
                f"{', '.join(fields)}.{suggest(str(key), fields)}",
                field=where,
            )
        kwargs[key] = _convert(hints[key], value, where)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        own = getattr(exc, "field", None)
        if prefix and not msg.startswith(prefix):
            msg = f"{prefix}: {msg}"
        if own is None:
            field = prefix or None
        elif prefix and not own.startswith(prefix + "."):
            field = f"{prefix}.{own}"
        else:
            field = own
        if isinstance(exc, ConfigError) and own == field and msg == str(exc):
            raise
        raise ConfigError(msg, field=field) from None


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts, lists and scalars, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    """YAML text of a config (dataclass or dict), keys in declaration order."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def _field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` sections of a dataclass and its bases, one joined line per field (a
    subclass documents only the fields it changes; its lines win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s own docstring, one joined line per field."""
    docs: dict[str, str] = {}
    lines = (vars(cls).get("__doc__") or "").splitlines()
    inside, current, indent = False, None, None
    for line in lines:
        text = line.strip()
        if text == "Attributes:":
            inside, current, indent = True, None, None
            continue
        if not inside:
            continue
        if not text:
            current = None
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        name, sep, rest = text.partition(":")
        if depth == indent and sep and name.isidentifier():
            current = name
            docs[name] = rest.strip()
        elif current is not None:
            docs[current] = f"{docs[current]} {text}".strip()
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted field, default as YAML, description)`` for every field of dataclass ``cls``.

    Nested dataclass fields are listed field by field; descriptions come from the ``Attributes:``
    section of each dataclass's docstring.

    Example:
        >>> from torchfault.campaign import CampaignConfig
        >>> [row for row in describe(CampaignConfig) if row[0] == "sampler.margin"][0][1]
        '0.01'
    """
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    default = cls()
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        where = f"{prefix}{f.name}"
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, where + "."))
            continue
        value = yaml.safe_dump(to_dict(getattr(default, f.name)), default_flow_style=True)
        value = value.strip().removesuffix("...").strip()
        rows.append((where, value, docs.get(f.name, "")))
    return rows
