"""`lpld rm ID…`: remove artifacts; never leaves another artifact without its parent."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit, info
from lpld_cli.reports.units import readable
from lpld_cli.storage.housekeeping import artifact_bytes, removal_plan, remove


@common_options
def command(
    common: Common,
    ids: Annotated[list[str], typer.Argument(help="Artifact ids (or unique prefixes).",
                                             show_default=False)],
    recursive: Annotated[bool, typer.Option(
        "--recursive", "-r", help="Also remove every artifact made from them.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would be removed; remove nothing.")] = False,
) -> None:
    """Remove artifacts; refused while others depend on them, unless --recursive."""
    plan = removal_plan(common.store, ids, recursive)
    total = sum(artifact_bytes(a) for a in plan)
    verb = "would remove" if dry_run else "removing"
    for artifact in plan:
        info(f"{verb} {artifact.kind:8s} {artifact.short}  {readable(artifact_bytes(artifact))}")
    if not dry_run:
        total = remove(common.store, plan)
    done = "would free" if dry_run else "freed"
    emit({"command": "rm", "dry_run": dry_run, "removed": [a.id for a in plan],
          "bytes": total}, common.json,
         f"{len(plan)} artifact(s) {'to remove' if dry_run else 'removed'}; {done} "
         f"{readable(total)}")
