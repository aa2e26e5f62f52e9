"""`lpld gc`: delete what dead processes left in staging/ (folders, lock files)."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit, info
from lpld_cli.reports.units import readable
from lpld_cli.storage.housekeeping import collect, garbage


@common_options
def command(
    common: Common,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete staging folders and lock files that no live process holds; report bytes freed.

    An interrupted recover/relabel/train run resumes from its staging folder: gc deletes
    that progress too (see it first with --dry-run)."""
    items = garbage(common.store)
    for item in items:
        info(f"{'would delete' if dry_run else 'deleting'} {item.path.name}  "
             f"{readable(item.bytes)}  ({item.why})")
    freed = sum(i.bytes for i in items) if dry_run else collect(common.store, items)
    emit({"command": "gc", "dry_run": dry_run, "removed": [str(i.path) for i in items],
          "bytes": freed}, common.json,
         f"{len(items)} item(s) {'to delete' if dry_run else 'deleted'} from staging; "
         f"{'would free' if dry_run else 'freed'} {readable(freed)}")
