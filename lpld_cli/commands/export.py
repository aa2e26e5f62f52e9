"""`lpld export ID DIR`: an artifact as plain files to share (ImageFolder, Zarr + README)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpld_cli.commands._options import ArtifactRef, Common, common_options
from lpld_cli.commands._ui import emit
from lpld_cli.reports.units import readable
from lpld_cli.storage.export import export, summary


@common_options
def command(
    common: Common,
    artifact: ArtifactRef,
    folder: Annotated[Path, typer.Argument(help="A new (or empty) folder to write into.",
                                           show_default=False)],
) -> None:
    """Write an artifact as plain files: an image set as an ImageFolder with metadata.jsonl
    (Hugging Face imagefolder), a label store as its Zarr group with a README of its arrays."""
    found = common.store.get(artifact)  # verified: never share a damaged artifact
    info = summary(export(found, folder))
    emit({"command": "export", "artifact": found.to_json(), **info}, common.json,
         f"{found.kind} {found.short} exported to {info['path']}: {info['files']} files, "
         f"{readable(info['bytes'])}")
