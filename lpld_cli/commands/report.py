"""`lpld report storage|diversity|accuracy|lineage`: tables and plots over the store."""

from __future__ import annotations

import typer

from lpld_cli.commands._pending import pending

app = typer.Typer(help="Tables and plots over the store: storage, diversity, accuracy, lineage.",
                  no_args_is_help=True, rich_markup_mode=None)
app.command("storage")(pending("report storage"))
app.command("diversity")(pending("report diversity"))
app.command("accuracy")(pending("report accuracy"))
app.command("lineage")(pending("report lineage"))
