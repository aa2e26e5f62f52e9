"""`lpld report lineage ID`: an artifact's chain back to the teacher, with its key config."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit
from lpld_cli.reports.lineage import lineage_rows


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and len(v) == 64:  # an id or a sha256
        return v[:12]
    return str(v)


def tree(rows: list[dict[str, Any]]) -> str:
    """Lineage rows as an indented tree, one artifact a line (also used by `lpld show`)."""
    lines = []
    for r in rows:
        pad = "  " * r["depth"]
        if r.get("missing"):
            lines.append(f"{pad}? {r['id'][:12]}  (not in this store)")
            continue
        if r.get("seen"):
            lines.append(f"{pad}{r['kind']} {r['id'][:12]}  (see above)")
            continue
        config = " ".join(f"{k}={_value(v)}" for k, v in r["config"].items())
        metrics = " ".join(f"{k}={_value(v)}" for k, v in r["metrics"].items())
        lines.append(f"{pad}{r['kind']} {r['id'][:12]}  {config}" + (f"  | {metrics}"
                                                                       if metrics else ""))
    return "\n".join(lines)


@common_options
def command(
    common: Common,
    artifact: Annotated[str, typer.Argument(help="An artifact id (or a unique prefix).",
                                            show_default=False)],
) -> None:
    """The artifact's chain back to the teacher, with each step's key config and metrics."""
    rows = lineage_rows(common.store, artifact)
    emit({"report": "lineage", "rows": rows}, common.json, tree(rows))
