"""`lpld report lineage ID`: an artifact's chain back to the teacher, with its key config."""

from __future__ import annotations

from lpld_cli.commands._options import ArtifactRef, Common, common_options
from lpld_cli.commands._tree import tree
from lpld_cli.commands._ui import emit
from lpld_cli.reports.lineage import lineage_rows


@common_options
def command(
    common: Common,
    artifact: ArtifactRef,
) -> None:
    """The artifact's chain back to the teacher, with each step's key config and metrics."""
    rows = lineage_rows(common.store, artifact)
    emit({"report": "lineage", "rows": rows}, common.json, tree(rows))
