"""`lpld report storage|diversity|accuracy|lineage`: tables and plots over the store."""

from __future__ import annotations

import typer

from lpld_cli.commands import report_accuracy, report_diversity, report_lineage, report_storage

app = typer.Typer(help="Tables and plots over the store: storage, diversity, accuracy, lineage.",
                  no_args_is_help=True, rich_markup_mode=None)
app.command("storage")(report_storage.command)
app.command("diversity")(report_diversity.command)
app.command("accuracy")(report_accuracy.command)
app.command("lineage")(report_lineage.command)
