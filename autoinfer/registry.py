"""A tiny name -> object registry that answers unknown names with "did you mean", and the engines' one.

This module imports nothing from autoinfer at run time, so the lowest layer (autoinfer.config) can
check engine names against ENGINES without importing a single engine.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from autoinfer.engines.base import EngineSpec

T = TypeVar("T")


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {name!r}{hint} (known: {', '.join(sorted(known))})"


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"{self.kind}: {did_you_mean(name, list(self._items))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        return list(self._items)


# Every engine by name. Each engine package registers its EngineSpec here when it is imported:
# autoinfer.engines imports the built-in ones and the modules AUTOINFER_PLUGINS names, and
# autoinfer/__init__.py imports autoinfer.engines, so importing any autoinfer module fills this
# before the importer's next line runs.
ENGINES: Registry[EngineSpec] = Registry("engine")
