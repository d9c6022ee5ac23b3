"""Components found by name, as in threestudio.

A `Registry` is an explicit object (no module-level mutable state beyond the one registry per component family
that modules register into at import time, which is how threestudio users expect `name: implicit-volume` to work).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, TypeVar

T = TypeVar("T")


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} '{name}' is already registered by {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} '{name}'; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


# One registry for every named component (threestudio has one too); names are unique across families.
components = Registry("component")
register = components.register


def find(name: str) -> Any:
    """Return the class registered under `name`. The registry imports no component module: components register when
    their package is imported (`import dreamdist3d.lift3d` registers the 3D ones; lift3d.system imports it)."""
    return components.get(name)
