"""Name -> class tables for the pluggable pieces (models, fusions, heads, loss terms, crowd filters).

A piece is a small class decorated with its registry's ``register(name)`` and providing a
``from_config`` classmethod; the configuration names it (``model.name``, ``model.fusion``, ``data.crowd``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from bst_search.config import ConfigError

T = TypeVar("T", bound=type)


class Registry(dict[str, type]):
    """A dict of registered classes that knows which config key selects from it."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key  # e.g. "model.name"

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class buildable as ``<key>: <name>``."""

        def deco(cls: T) -> T:
            if name in self and self[name] is not cls:
                raise ValueError(f"{self.key} {name!r} is already registered by {self[name].__qualname__}")
            if not hasattr(cls, "from_config"):
                raise TypeError(f"{self.key} {name!r}: {cls.__qualname__} has no from_config classmethod")
            self[name] = cls
            return cls

        return deco

    def lookup(self, name: str) -> type:
        """The class registered as ``name``; a ConfigError naming the key otherwise."""
        if name not in self:
            raise ConfigError(f"{self.key}: unknown {name!r}; registered: {', '.join(sorted(self))}")
        return self[name]
