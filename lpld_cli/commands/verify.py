"""`lpld verify`: re-hash artifacts against their manifests."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit, info


@common_options
def command(
    common: Common,
    ids: Annotated[list[str] | None, typer.Argument(
        help="Artifact ids (or unique prefixes); all artifacts when none are given.",
        show_default=False)] = None,
) -> None:
    """Re-hash artifact payloads; exit 1 naming the first corrupted artifact and file."""
    store = common.store
    artifacts = [store.get(ref, verify=False) for ref in ids] if ids else store.list()
    for artifact in artifacts:
        store.verify(artifact)
        info(f"ok  {artifact.kind:8s} {artifact.id}")
    emit({"command": "verify", "verified": [a.id for a in artifacts],
          "seconds": 0.0}, common.json, f"{len(artifacts)} artifact(s) verified")
