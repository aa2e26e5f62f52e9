"""`lpld verify`: check every folder under objects/ (or the named artifacts) and its manifest."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit, info
from lpld_cli.errors import LpldError


class StoreDamagedError(LpldError):
    """`lpld verify` found damaged artifacts (each already listed on stderr)."""

    exit_code = 1


@common_options
def command(
    common: Common,
    ids: Annotated[list[str] | None, typer.Argument(
        help="Artifact ids (or unique prefixes); every folder under objects/ when none "
             "are given.", show_default=False)] = None,
) -> None:
    """Re-hash payloads and check manifests (keys, id = hash of config and parents, file
    list); list every damaged artifact and exit 1 if there is one."""
    store = common.store
    store.check_root(must_exist=True)
    sound, damaged = store.audit(ids or None)
    for artifact in sound:
        info(f"ok       {artifact.kind:8s} {artifact.id}")
    for damage in damaged:
        info(f"damaged  {damage.path}: {damage.problem}")
    payload = {"command": "verify", "verified": [a.id for a in sound],
               "damaged": [{"path": d.path, "problem": d.problem} for d in damaged],
               "seconds": 0.0}
    if damaged:
        if common.json:
            emit(payload, True, "")
        first = damaged[0].error()
        more = len(damaged) - 1
        raise StoreDamagedError(
            first.message + (f"; {more} more damaged entr{'y' if more == 1 else 'ies'} listed "
                             "above" if more else "") + f"; {len(sound)} artifact(s) verified",
            "recompute a damaged artifact with its command and --force, or delete its folder")
    emit(payload, common.json, f"{len(sound)} artifact(s) verified")
