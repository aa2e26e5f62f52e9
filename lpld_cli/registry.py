"""One typed registry per extension point (datasets, models, recover methods, prune metrics).

As timm's `register_model`: a module-level `Registry` filled by a decorator (or `add`) where
the thing is defined. `--help` choices and texts, validation and the benchmark tables read
the registry's keys, so adding an entry touches one file. Registries import no torch: an
entry's heavy part is a function that imports what it needs when called (`lazy`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from lpld_cli.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order."""

    def __init__(self, kind: str, option: str) -> None:
        self.kind = kind  # e.g. "prune metric"
        self.option = option  # how errors name it: "--metric", "dataset"
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def add(self, name: str, entry: T, help: str = "") -> T:  # noqa: A002 - the option's word
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        self._help[name] = help
        return entry

    def register(self, name: str, help: str = "") -> Callable[[T], T]:  # noqa: A002
        """Decorator: `@METRICS.register("confidence", help="...")` above the entry."""
        return lambda entry: self.add(name, entry, help)

    def remove(self, name: str) -> None:
        """Drop an entry (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)
        self._help.pop(name, None)

    def get(self, name: str) -> T:
        """The entry, or a ConfigError naming the option and the choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.option} {name!r}",
                              f"choose one of: {', '.join(self._entries)}") from None

    def check(self, name: str) -> str:
        self.get(name)
        return name

    def keys(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def help(self, name: str) -> str:
        return self._help[name]

    def choices(self) -> str:
        """`a | b | c` for a --help text."""
        return " | ".join(self._entries)

    def described(self) -> str:
        """`a: what a does; b: …` for a --help text."""
        return "; ".join(f"{k}: {v}" if v else k for k, v in self._help.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def lazy(module: str, attr: str) -> Callable[..., Any]:
    """A function that imports `module.attr` when first called (keeps registries torch-free)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"lazy({module}.{attr})"
    return call
