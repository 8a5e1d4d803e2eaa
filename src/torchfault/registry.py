# SPDX-License-Identifier: MIT
"""One registry type for every pluggable family of torchfault.

Fault models, injectors, samplers, executors, models and datasets each own a :class:`Registry`.
Entries register with a decorator (or, for the DNN zoo, through ``__init_subclass__``), are
listed with wildcards, described by a frozen :class:`EntryInfo`, and created by name. Third-party
packages add entries through the ``torchfault.plugins`` entry-point group: each entry point names
a module or a callable that, when loaded, registers its entries.

Example:
    >>> from torchfault.registry import Registry
    >>> colours = Registry("colour")
    >>> @colours.register("red", description="The colour red.", warm=True)
    ... def make_red(shade=1):
    ...     return ("red", shade)
    >>> colours.list("r*")
    ['red']
    >>> colours.create("red", shade=2)
    ('red', 2)
    >>> colours.info("red").capabilities["warm"]
    True

A family's module-level functions (``register_colour``, ``list_colours``, ``is_colour``,
``create_colour``, ``get_colour``) come from :meth:`Registry.functions`, one generic way instead
of four hand-written wrappers per family:

    >>> register_colour, list_colours, is_colour, create_colour, get_colour = colours.functions()
    >>> list_colours(), is_colour("blue"), create_colour("red")
    (['red'], False, ('red', 1))
"""

from __future__ import annotations

import builtins
import fnmatch
import importlib.metadata
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from torchfault.errors import suggest

__all__ = [
    "Capabilities",
    "EntryInfo",
    "Registry",
    "RegistryFunctions",
    "all_registries",
    "load_plugins",
    "PLUGIN_GROUP",
]

log = logging.getLogger(__name__)

PLUGIN_GROUP = "torchfault.plugins"
T = TypeVar("T")
C = TypeVar("C", bound="Capabilities")

_REGISTRIES: dict[str, Registry[Any]] = {}
_plugins_loaded = False
_plugin_lock = threading.RLock()


HIDE_DEFAULT: Mapping[str, Any] = MappingProxyType({"hide_default": True})
"""Field metadata of a :class:`Capabilities` field left out of the mapping view (and so of
``torchfault list``) while it holds its default."""


@dataclass(frozen=True)
class Capabilities(Mapping[str, Any]):
    """Base of a family's typed, frozen capability record.

    A family declares a frozen dataclass subclass (``FaultModelCapabilities``,
    ``SamplerCapabilities``) and passes it to its :class:`Registry`; keyword flags given at
    registration are validated into it (an unknown name is a ``TypeError`` naming the valid
    ones). Code reads the capabilities as attributes; the record is also a read-only mapping of
    its fields (those marked :data:`HIDE_DEFAULT` only when not at their default), which is what
    ``torchfault list`` and :meth:`EntryInfo.to_dict` show.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class PaintCapabilities(Capabilities):
        ...     warm: bool = False
        >>> paints = Registry("paint", capabilities=PaintCapabilities)
        >>> _ = paints.add("red", "red", warm=True)
        >>> paints.capabilities_of("red", PaintCapabilities).warm
        True
        >>> paints.add("blue", "blue", cold=True)
        Traceback (most recent call last):
        ...
        TypeError: Unknown paint capability 'cold' for 'blue'; valid capabilities: warm.
    """

    family: ClassVar[str] = "entry"

    def _listed(self) -> tuple[str, ...]:
        return tuple(
            f.name
            for f in fields(self)
            if not (f.metadata.get("hide_default") and getattr(self, f.name) == f.default)
        )

    def __getitem__(self, key: str) -> Any:
        if key not in self._listed():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed())

    def __len__(self) -> int:
        return len(self._listed())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The valid capability names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_flags(cls: type[C], kind: str, name: str, flags: Mapping[str, Any]) -> C:
        """Validate registration keyword ``flags`` into the record (unknown names refused)."""
        valid = cls.names()
        unknown = [k for k in flags if k not in valid]
        if unknown:
            raise TypeError(
                f"Unknown {kind} capabilit{'ies' if len(unknown) > 1 else 'y'} "
                f"{', '.join(repr(k) for k in unknown)} for {name!r}; valid capabilities: "
                f"{', '.join(valid) or '(none)'}.{suggest(unknown[0], list(valid))}"
            )
        return cls(**flags)


@dataclass(frozen=True)
class EntryInfo:
    """What a registry knows of one entry.

    Attributes:
        name: the registered name.
        kind: the family ("fault model", "sampler", ...).
        obj: the registered class or function.
        description: one line.
        capabilities: flags and values describing what the entry supports.
    """

    name: str
    kind: str
    obj: Any = field(repr=False, compare=False)
    description: str = ""
    capabilities: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        obj_name = getattr(self.obj, "__qualname__", type(self.obj).__name__)
        module = getattr(self.obj, "__module__", "")
        return {
            "name": self.name,
            "kind": self.kind,
            "object": f"{module}.{obj_name}" if module else obj_name,
            "description": self.description,
            "capabilities": dict(self.capabilities),
        }


def load_plugins(force: bool = False) -> list[str]:
    """Load every entry point of the ``torchfault.plugins`` group once; return their names.

    A plugin that fails to load is logged and skipped: one broken plugin does not break torchfault.
    """
    global _plugins_loaded
    with _plugin_lock:
        if _plugins_loaded and not force:
            return []
        _plugins_loaded = True
        loaded = []
        for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj()
                loaded.append(ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the library
                log.warning("torchfault plugin %r failed to load: %s", ep.name, exc)
        return loaded


class RegistryFunctions(NamedTuple):
    """The module-level functions of one family, made by :meth:`Registry.functions` (unpack them
    in this order: ``register, list, is_, create, get``)."""

    register: Callable[..., Callable[[Any], Any]]
    list: Callable[..., list[str]]
    is_registered: Callable[[str], bool]
    create: Callable[..., Any]
    get: Callable[[str], Any]


class Registry(Generic[T]):
    """A named family of pluggable entries.

    Args:
        kind: the family's name in messages ("fault model").
        plural: the attribute-style plural used by ``torchfault list`` ("fault_models").
        capabilities: the family's typed :class:`Capabilities` record; registration keywords
            are validated into it. ``None``: free keywords kept as a read-only mapping.

    Attributes:
        Info: the family's frozen record type, a subclass of :class:`EntryInfo` named after the
            kind (``FaultModelInfo`` for "fault model"); :meth:`info` returns instances of it.
    """

    def __init__(
        self,
        kind: str,
        plural: str | None = None,
        capabilities: type[Capabilities] | None = None,
    ) -> None:
        self.kind = kind
        self.capability_type = capabilities
        self.plural = plural or kind.replace(" ", "_") + "s"
        self._entries: dict[str, EntryInfo] = {}
        name = "".join(w[:1].upper() + w[1:] for w in kind.replace("_", " ").split()) + "Info"
        self.Info: type[EntryInfo] = type(
            name,
            (EntryInfo,),
            {"__doc__": f"What the {kind} registry knows of one entry.", "__module__": __name__},
        )
        _REGISTRIES[self.plural] = self

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    def register(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        overwrite: bool = False,
        **capabilities: Any,
    ) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            self.add(
                name or getattr(obj, "__name__"),  # noqa: B009 - T is any class or function
                obj,
                description=description,
                overwrite=overwrite,
                **capabilities,
            )
            return obj

        return deco

    def add(
        self,
        name: str,
        obj: T,
        *,
        description: str | None = None,
        overwrite: bool = False,
        **capabilities: Any,
    ) -> EntryInfo:
        """Register ``obj`` under ``name``; a second entry of the same name needs ``overwrite``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string, got {name!r}.")
        if name in self._entries and not overwrite and self._entries[name].obj is not obj:
            raise ValueError(
                f"A {self.kind} named {name!r} is already registered "
                f"({self._entries[name].to_dict()['object']}); pass overwrite=True to replace it."
            )
        if description is None:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        caps: Mapping[str, Any]
        if self.capability_type is not None:
            caps = self.capability_type.from_flags(self.kind, name, capabilities)
        else:
            caps = MappingProxyType(dict(capabilities))
        info = self.Info(name, self.kind, obj, description, caps)
        self._entries[name] = info
        return info

    def remove(self, name: str) -> None:
        """Remove an entry (mostly for tests)."""
        self._check(name)
        del self._entries[name]

    def _check(self, name: str) -> EntryInfo:
        load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = sorted(self._entries)
            raise ValueError(
                f"Unknown {self.kind} {name!r}. Valid {self.plural.replace('_', ' ')}: "
                f"{', '.join(valid) or '(none registered)'}.{suggest(str(name), valid)}"
            ) from None

    def list(self, filter: str | None = None, **capabilities: Any) -> list[str]:
        """Sorted names matching the wildcard ``filter`` and having the given capability values."""
        load_plugins()
        names = sorted(self._entries)
        if filter:
            names = [n for n in names if fnmatch.fnmatchcase(n, filter)]
        if self.capability_type is not None:
            valid = self.capability_type.names()
            bad = [k for k in capabilities if k not in valid]
            if bad:
                raise TypeError(
                    f"Unknown {self.kind} capability {bad[0]!r} to list by; valid "
                    f"capabilities: {', '.join(valid)}.{suggest(bad[0], list(valid))}"
                )
        for key, want in capabilities.items():
            names = [n for n in names if _capability(self._entries[n], key) == want]
        return names

    def is_registered(self, name: str) -> bool:
        load_plugins()
        return name in self._entries

    __contains__ = is_registered

    def get(self, name: str) -> T:
        """The registered object (class or function) for ``name``."""
        return self._check(name).obj

    def info(self, name: str) -> EntryInfo:
        return self._check(name)

    def capabilities_of(self, name: str, cls: type[C]) -> C:
        """The typed capabilities of the entry ``name`` (``cls``: the family's record type)."""
        if self.capability_type is not cls:
            raise TypeError(
                f"The {self.kind} registry's capabilities are "
                f"{getattr(self.capability_type, '__name__', 'untyped')}, not {cls.__name__}."
            )
        caps = self._check(name).capabilities
        assert isinstance(caps, cls)
        return caps

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the registered object with ``kwargs``; unknown keywords are named in the error."""
        obj: Any = self.get(name)
        try:
            return obj(**kwargs)
        except TypeError as exc:
            if "unexpected keyword" in str(exc) or "got an unexpected" in str(exc):
                raise ValueError(f"Bad arguments for {self.kind} {name!r}: {exc}") from None
            raise

    def functions(self, noun: str | None = None, plural: str | None = None) -> RegistryFunctions:
        """The family's module-level functions: ``register_<noun>(name, **capabilities)`` (a
        decorator), ``list_<plural>(filter=None, **capabilities)``, ``is_<noun>(name)``,
        ``create_<noun>(name, **kwargs)`` and ``get_<noun>(name)``; each delegates to this
        registry (same errors), is named and documented after the family and belongs to the
        calling module.

        Args:
            noun: the word in the functions' names (default: the kind, spaces as ``_``).
            plural: the word in ``list_<plural>`` (default: the registry's plural).
        """
        noun = noun or self.kind.replace(" ", "_")
        plural = plural or self.plural
        module = sys._getframe(1).f_globals.get("__name__", __name__)
        kind = self.kind

        def register(
            name: str | None = None,
            *,
            description: str | None = None,
            overwrite: bool = False,
            **capabilities: Any,
        ) -> Callable[[Any], Any]:
            return self.register(name, description=description, overwrite=overwrite, **capabilities)

        def list_(filter: str | None = None, **capabilities: Any) -> list[str]:
            return self.list(filter, **capabilities)

        def is_(name: str) -> bool:
            return self.is_registered(name)

        def create(name: str, **kwargs: Any) -> Any:
            return self.create(name, **kwargs)

        def get(name: str) -> Any:
            return self.get(name)

        docs = {
            register: (
                f"register_{noun}",
                f"Decorator registering a {kind} under ``name`` (default: its ``__name__``), "
                "with a description and capability flags.",
            ),
            list_: (
                f"list_{plural}",
                f"Sorted names of the registered {plural.replace('_', ' ')} matching the "
                "wildcard ``filter`` and the given capability values.",
            ),
            is_: (f"is_{noun}", f"Whether ``name`` is a registered {kind}."),
            create: (
                f"create_{noun}",
                f"Build the {kind} ``name`` with ``kwargs`` (an unknown name or keyword is "
                "an error naming the valid ones).",
            ),
            get: (f"get_{noun}", f"The class or function registered as the {kind} ``name``."),
        }
        for fn, (fn_name, doc) in docs.items():
            fn.__name__ = fn.__qualname__ = fn_name
            fn.__doc__ = doc
            fn.__module__ = module
        return RegistryFunctions(register, list_, is_, create, get)

    def infos(self, filter: str | None = None) -> builtins.list[EntryInfo]:
        return [self._entries[n] for n in self.list(filter)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)


def _capability(info: EntryInfo, key: str) -> Any:
    caps = info.capabilities
    return getattr(caps, key, None) if isinstance(caps, Capabilities) else caps.get(key)


def all_registries() -> dict[str, Registry[Any]]:
    """Every registry created so far, by plural name (import the families first)."""
    load_plugins()
    return dict(sorted(_REGISTRIES.items()))
