"""`lpld report storage|diversity|accuracy|lineage`: tables and plots over the store."""

from __future__ import annotations

import typer

from lpld_cli.commands.report import accuracy, diversity, lineage, storage

app = typer.Typer(help="Tables and plots over the store: storage, diversity, accuracy, lineage.",
                  no_args_is_help=True, rich_markup_mode=None)
app.command("storage")(storage.command)
app.command("diversity")(diversity.command)
app.command("accuracy")(accuracy.command)
app.command("lineage")(lineage.command)
