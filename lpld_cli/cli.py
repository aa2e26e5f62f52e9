"""The Typer app: registers every command; errors are mapped in commands/_ui.errors_to_exit."""

from __future__ import annotations

import typer

from lpld_cli import __version__
from lpld_cli.commands import (
    export,
    gc,
    ls,
    prune,
    recover,
    relabel,
    report,
    rm,
    show,
    squeeze,
    train,
    verify,
)

app = typer.Typer(
    name="lpld",
    help="Dataset distillation with label pruning (LPLD): squeeze → recover → relabel → "
         "prune → train → report, over a content-addressed artifact store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("squeeze")(squeeze.command)
app.command("recover")(recover.command)
app.command("relabel")(relabel.command)
app.command("prune")(prune.command)
app.command("train")(train.command)
app.add_typer(report.app, name="report")
app.command("verify")(verify.command)
app.command("ls")(ls.command)
app.command("show")(show.command)
app.command("rm")(rm.command)
app.command("gc")(gc.command)
app.command("export")(export.command)


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
