"""The Typer app. Commands load lazily: `lpld --help`, `ls`, `show` (and every command that
does not compute) never import torch; a command module is imported when it runs.

Errors are mapped in commands/_ui.errors_to_exit.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

import lpld_cli.commands
from lpld_cli import __version__

# name -> module (holding `command`, or `app` for a sub-app), in the order --help lists them
COMMANDS: dict[str, str] = {
    name: f"{lpld_cli.commands.__name__}.{name}" for name in (
        "squeeze", "recover", "relabel", "prune", "train", "report", "verify", "ls", "show",
        "rm", "gc", "export")}


def _short_help(module: str) -> str:
    """The first paragraph of a command's docstring (or its sub-app's help), read with
    `ast`: listing the commands imports none of them."""
    spec = importlib.util.find_spec(module)
    path = Path(spec.origin)  # type: ignore[union-attr, arg-type]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "command":
            return " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for kw in node.value.keywords:
                if kw.arg == "help" and isinstance(kw.value, ast.Constant):
                    return " ".join(str(kw.value.value).split("\n\n")[0].split())
    return ""


class LazyGroup(TyperGroup):
    """A group whose commands are imported only when one is run (or its help is asked)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name])
        if hasattr(module, "app"):
            command = typer.main.get_group(module.app)
        else:
            one = typer.Typer(rich_markup_mode=None)
            one.command(name)(module.command)
            command = typer.main.get_command(one)
        command.name = name
        return command

    def format_commands(self, ctx: click.Context, formatter: Any) -> None:
        rows = [(name, _short_help(module)) for name, module in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="lpld",
    cls=LazyGroup,
    help="Dataset distillation with label pruning (LPLD): squeeze → recover → relabel → "
         "prune → train → report, over a content-addressed artifact store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lpld {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def main() -> None:
    app(prog_name="lpld")
