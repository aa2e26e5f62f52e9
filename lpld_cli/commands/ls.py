"""`lpld ls [KIND]`: one line per artifact in the store, newest first."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit
from lpld_cli.reports.inventory import check_kind, inventory
from lpld_cli.reports.units import readable

HEADER = ("id", "kind", "dataset", "method", "ipc", "ratio", "encoding", "top-1", "size",
          "created")


def cells(row: dict[str, Any]) -> tuple[str, ...]:
    """One inventory row as the table's text cells."""
    ratio = row["ratio"]
    ratio = f"{ratio:g}x" if isinstance(ratio, int | float) else ratio
    top1 = f"{row['top1']:.4f}" if isinstance(row["top1"], int | float) else None
    created = (time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created"]))
               if row["created"] else None)
    values = (row["id"][:12], row["kind"], row["dataset"], row["method"], row["ipc"], ratio,
              row["encoding"], top1, readable(row["bytes"]), created)
    return tuple("-" if v is None else str(v) for v in values)


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned plain-text table (numbers right-aligned)."""
    body = [cells(r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(HEADER, *body, strict=False)]
    right = {"ipc", "ratio", "top-1", "size"}
    lines = ["  ".join(c.rjust(w) if h in right else c.ljust(w)
                       for h, c, w in zip(HEADER, line, widths, strict=True)).rstrip()
             for line in [HEADER, *body]]
    return "\n".join(lines)


@common_options
def command(
    common: Common,
    kind: Annotated[str | None, typer.Argument(
        help="teacher | images | labels | student [default: every kind].",
        show_default=False)] = None,
) -> None:
    """List the store's artifacts, newest first: id, kind, dataset, method, IPC, ratio,
    label encoding, top-1, size and creation time."""
    rows = inventory(common.store, check_kind(kind))
    empty = f"no artifacts in store {common.store.root}"
    emit({"command": "ls", "rows": rows}, common.json, table(rows) if rows else empty)
