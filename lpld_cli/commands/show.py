"""`lpld show ID`: an artifact's manifest, config, metrics, and lineage up and down."""

from __future__ import annotations

import time
from typing import Any

from lpld_cli.commands._options import ArtifactRef, Common, common_options
from lpld_cli.commands._tree import tree
from lpld_cli.commands._ui import emit
from lpld_cli.reports.inventory import describe
from lpld_cli.reports.units import readable


def _pairs(values: dict[str, Any]) -> list[str]:
    return [f"  {k} = {v}" for k, v in sorted(values.items())] or ["  (none)"]


def human(info: dict[str, Any]) -> str:
    a, m = info["artifact"], info["manifest"]
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("created", 0)))
    lines = [f"{a['kind']} {a['id']}", f"  path {a['path']}",
             f"  created {created}  lpld {m.get('lpld_version')}  format "
             f"{m.get('format_version')}  {a['files']} files, {readable(a['bytes'])}",
             "config:", *_pairs(m.get("config", {})),
             "selectors:", *_pairs({k: v for k, v in m.get("selectors", {}).items()
                                    if v is not None}),
             "metrics:", *_pairs(m.get("metrics", {})),
             "lineage up (this artifact, then its parents):",
             *("  " + line for line in tree(info["lineage_up"]).splitlines()),
             "lineage down (artifacts made from it):"]
    down = info["lineage_down"]
    lines += [f"{'  ' * (r['depth'] + 1)}{r['kind']} {r['id'][:12]}" for r in down]
    if not down:
        lines.append("  (none)")
    return "\n".join(lines)


@common_options
def command(
    common: Common,
    artifact: ArtifactRef,
) -> None:
    """Everything about one artifact: manifest, config, metrics, parents and descendants."""
    info = describe(common.store, artifact)
    emit({"command": "show", **info}, common.json, human(info))
