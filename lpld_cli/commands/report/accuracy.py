"""`lpld report accuracy`: every student's top-1/top-5 beside its label storage; --plot Fig. 1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit, info
from lpld_cli.reports.accuracy import accuracy_rows, plot_accuracy


def _table(rows: list[dict]) -> str:
    if not rows:
        return "no students in the store (make one with `lpld train`)"
    head = ("student", "dataset", "method", "ipc", "labels", "ratio", "encoding", "model",
            "epochs", "top-1", "top-5", "label bytes")
    lines = [head]
    for r in rows:
        lines.append((r["id"][:12], str(r["dataset"]), str(r["method"]), str(r["ipc"]),
                      str(r["labels"]), f"{r['ratio']:g}x" if r["ratio"] else "-",
                      r.get("encoding") or "-", str(r["model"]), str(r["epochs"]),
                      f"{r['top1']:.4f}",
                      f"{r['top5']:.4f}" if r["top5"] is not None else "-",
                      f"{r['label_bytes']:,}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) if i < 8 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
                     for line in lines)


@common_options
def command(
    common: Common,
    plot: Annotated[Path | None, typer.Option(
        help="Also draw top-1 against label storage (log scale, one line per method, "
             "online/hard as reference lines) into this PNG file.", show_default=False)] = None,
) -> None:
    """Every student: images method, IPC, label ratio and mode, top-1/top-5, label bytes."""
    rows = accuracy_rows(common.store)
    if plot is not None:
        info(f"plot written to {plot_accuracy(rows, plot)}")
    emit({"report": "accuracy", "rows": rows}, common.json, _table(rows))
