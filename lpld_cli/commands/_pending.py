"""Commands whose issues have not landed yet: they say so and exit 2."""

from __future__ import annotations

from collections.abc import Callable

from lpld_cli.errors import LpldError


def pending(name: str) -> Callable[..., None]:
    def command() -> None:
        from lpld_cli.commands._ui import errors_to_exit

        with errors_to_exit():
            raise LpldError(f"lpld {name} is not implemented yet")

    command.__doc__ = f"(not implemented yet) lpld {name}."
    return command
