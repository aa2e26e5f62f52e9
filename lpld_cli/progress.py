"""How core stages report progress without importing a UI library.

A stage calls `reporter.task(description, total)` and then `advance(n, **fields)` on
what it returns; the commands pass a rich implementation, the Python API a silent one.
"""

from __future__ import annotations

from typing import Any, Protocol


class Task(Protocol):
    def advance(self, n: float = 1, **fields: Any) -> None: ...

    def close(self) -> None: ...


class Reporter(Protocol):
    def task(self, description: str, total: float | None) -> Task: ...

    def log(self, message: str) -> None: ...


class _SilentTask:
    def advance(self, n: float = 1, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Silent:
    """The default reporter: says nothing."""

    def task(self, description: str, total: float | None) -> Task:
        return _SilentTask()

    def log(self, message: str) -> None:
        pass


SILENT = Silent()
