"""Name -> factory registries: adding an env or a policy is one file plus one registry line."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a string name to a factory, with a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; ``"package.module:attr"`` imports a plug-in instead
        (a user's own module, importable on every worker), with no registry line at all."""
        if name not in self._factories and ":" in name:
            module, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise KeyError(f"{self.kind} plug-in {name!r} cannot be imported: {e}") from None
        try:
            return self._factories[name]
        except KeyError:
            allowed = ", ".join(sorted(self._factories)) or "(none)"
            raise KeyError(
                f"unknown {self.kind} {name!r}; registered: {allowed} (or a plug-in, package.module:attr)"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
