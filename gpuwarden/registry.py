"""Name -> implementation tables, loaded lazily: the one registry pattern of gpuwarden.

Collectors (GPU sources and server kinds), detectors and receivers are each listed in
one table of ``"name": "module:attribute"`` strings. The config validates names against
the table without importing anything (so ``check-config`` and the daemon's first cycle
never load numpy, SQLAlchemy or a receiver's HTTP code for a name check), and the
implementation is imported the first time it is asked for. Adding a kind is one line in
its table (ARCHITECTURE.md, "where does my change go").
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``what`` names the kind of thing listed ("detector", "receiver"...) in errors."""

    def __init__(self, what: str, entries: Mapping[str, str]) -> None:
        for name, target in entries.items():
            if target.count(":") != 1:
                raise ValueError(f"{what} {name!r}: expected 'module:attribute', got {target!r}")
        self.what = what
        self._entries = dict(entries)
        self._loaded: dict[str, T] = {}

    def names(self) -> tuple[str, ...]:
        """Every registered name, in table order (the order documentation lists them)."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def unknown(self, name: str) -> str:
        """The error text for a name that is not registered."""
        return f"unknown {self.what} {name!r} (known: {', '.join(self._entries)})"

    def load(self, name: str) -> T:
        """The implementation registered as ``name``, imported on first use.

        ``KeyError`` with :meth:`unknown`'s text when the name is not registered.
        """
        found = self._loaded.get(name)
        if found is not None:
            return found
        target = self._entries.get(name)
        if target is None:
            raise KeyError(self.unknown(name))
        module_name, attribute = target.split(":")
        value: T = getattr(importlib.import_module(module_name), attribute)
        self._loaded[name] = value
        return value
