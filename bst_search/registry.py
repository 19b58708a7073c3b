"""Name tables for the pluggable pieces.

* :class:`Registry`: classes the configuration names (``model.name``, ``model.fusion``,
  ``data.crowd``, loss terms): a small class decorated with ``register(name)`` that provides a
  ``from_config`` classmethod;
* :class:`Options`: factories a command-line flag names (``--sampler``, ``--scheduler``): a
  function decorated with ``register(name)``; the flag's choices are the table's names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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


F = TypeVar("F", bound=Callable[..., Any])


class Options(dict[str, Callable[..., Any]]):
    """A dict of registered factories that knows which flag selects from it."""

    def __init__(self, flag: str) -> None:
        super().__init__()
        self.flag = flag  # e.g. "--sampler"

    def register(self, name: str) -> Callable[[F], F]:
        """Function decorator: make the factory selectable as ``<flag> <name>``."""

        def deco(fn: F) -> F:
            self[name] = fn
            return fn

        return deco

    def build(self, name: str, *args: Any) -> Any:
        """What the factory registered as ``name`` makes of ``args``; a ValueError naming the
        flag otherwise."""
        if name not in self:
            raise ValueError(f"{self.flag}: unknown {name!r}; one of {', '.join(self)}")
        return self[name](*args)
