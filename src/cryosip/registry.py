"""Named registries: the extension points where a new model, discrepancy or projector plugs in.

A :class:`Registry` maps a name to an object (usually a class) and says, when a name is
not there, which names are. Each extension point owns one registry beside its abstract
type: :data:`cryosip.structures.factory.MODELS` (conformation models, read by
``load_model``), :data:`cryosip.discrepancies.DISCREPANCIES` and
:data:`cryosip.forward.PROJECTORS`. A new entry is one file that defines it and registers
it, usually with the registry's :meth:`Registry.register` as a class decorator; importing
that file is what registers it (see ``docs/extending.md``). The ``cryosip`` command
imports such files itself with :func:`load_plugins`: the modules of the entry-point group
``cryosip.plugins`` of installed packages and those named in ``CRYOSIP_PLUGINS``.

This module is part of the generic core: it imports only :mod:`cryosip.errors`.

>>> shapes = Registry("shape")
>>> @shapes.register("square")
... class Square:
...     pass
>>> shapes.get("square") is Square, shapes.names()
(True, ('square',))
>>> shapes.get("circle")
Traceback (most recent call last):
...
cryosip.errors.InputError: shape: field name: expected one of 'square', found 'circle'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from cryosip.errors import InputError

__all__ = ["PLUGIN_GROUP", "PLUGINS_VARIABLE", "Registry", "load_plugins"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects of one kind (``kind`` names it in errors: "conformation model").

    With ``base``, only subclasses of ``base`` may be registered.
    """

    def __init__(self, kind: str, base: type | None = None):
        self.kind, self.base = kind, base
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """A decorator that registers its argument under ``name`` and returns it unchanged.

        Registering a taken name raises ``ValueError`` unless ``replace=True`` or the new
        object is the same definition run again (same module and qualified name: a
        reloaded module, a notebook cell re-run), which replaces the old one.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if self.base is not None and not (isinstance(obj, type)
                                              and issubclass(obj, self.base)):
                raise TypeError(f"a {self.kind} registers a subclass of "
                                f"{self.base.__name__}, got {obj!r}")
            if name in self._entries and not replace and not _same(self._entries[name], obj):
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({self._entries[name]!r}); pass replace=True to replace it")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str, *, source: str | None = None, field: str = "name") -> T:
        """The entry of ``name``; an unknown name raises :class:`~cryosip.errors.InputError`
        from ``source`` (default: the kind) listing the registered names."""
        if name not in self._entries:
            raise InputError(source or self.kind, field, self.expected(), repr(name))
        return self._entries[name]

    def expected(self) -> str:
        """``"one of 'a', 'b'"``: the registered names, for error messages."""
        return "one of " + ", ".join(repr(n) for n in self.names())

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def _same(a: object, b: object) -> bool:
    """The same object, or the same definition run again (a module reloaded)."""
    key = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", None))
    return a is b or (key(a) == key(b) and key(a) != (None, None))


PLUGIN_GROUP = "cryosip.plugins"
"""Entry-point group whose modules :func:`load_plugins` imports (``pyproject.toml``:
``[project.entry-points."cryosip.plugins"] two_domain = "mypkg.two_domain"``)."""

PLUGINS_VARIABLE = "CRYOSIP_PLUGINS"
"""Environment variable: module names or ``.py`` files, separated by ``os.pathsep``."""


def load_plugins(environ: Mapping[str, str] | None = None) -> list[str]:
    """Import every plugin module (entry points of :data:`PLUGIN_GROUP`, then the entries of
    :data:`PLUGINS_VARIABLE` in ``environ``, default ``os.environ``), which registers what
    they define; returns their module names. A file or module that does not import raises
    :class:`~cryosip.errors.InputError`."""
    env = os.environ if environ is None else environ
    loaded = []
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        loaded.append(_import(entry.value, f"entry point {entry.name!r}"))
    for item in filter(None, env.get(PLUGINS_VARIABLE, "").split(os.pathsep)):
        loaded.append(_import(item.strip(), PLUGINS_VARIABLE))
    return loaded


def _import(target: str, source: str) -> str:
    """Import a module name or a ``.py`` file once; its module name."""
    if not target.endswith(".py"):
        try:
            return importlib.import_module(target).__name__
        except ImportError as err:
            raise InputError(source, None, "an importable module", f"{target!r}: {err}") from None
    path = Path(target).resolve()
    name = "cryosip_plugin_" + path.stem
    if name in sys.modules:
        return name
    if not path.is_file():
        raise InputError(source, None, "a Python file", f"{target!r}: no such file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return name
