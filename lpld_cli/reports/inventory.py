"""What a store holds (`lpld ls`) and everything about one artifact (`lpld show`).

Both read manifests only (no payload, no torch), so they answer at once on any store.
"""

from __future__ import annotations

from typing import Any

from lpld_cli.errors import ConfigError
from lpld_cli.reports.lineage import lineage_rows
from lpld_cli.storage.housekeeping import artifact_bytes, children
from lpld_cli.storage.store import KINDS, Artifact, Store

COLUMNS = ("id", "kind", "dataset", "method", "ipc", "ratio", "encoding", "top1", "bytes",
           "created")


def check_kind(kind: str | None) -> str | None:
    """A kind name (plural accepted: `students`), or None for all; else a one-line error."""
    if kind is None:
        return None
    name = kind.strip().lower()
    name = {"teachers": "teacher", "students": "student"}.get(name, name)
    if name not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}", f"choose one of: {', '.join(KINDS)}")
    return name


def encoding(artifact: Artifact, by_id: dict[str, Artifact]) -> str | None:
    """How a label store holds its logits (a pruned store: as its unpruned ancestor)."""
    if artifact.kind != "labels":
        return None
    config = artifact.config
    if config.get("encoding"):
        return str(config["encoding"])
    if config.get("topk"):
        return f"top-{config['topk']}"
    if config.get("logits_dtype"):
        return str(config["logits_dtype"])
    parent = next((by_id[p] for p in artifact.parents if p in by_id
                   and by_id[p].kind == "labels"), None)
    return encoding(parent, by_id) if parent is not None else None


def row(artifact: Artifact, by_id: dict[str, Artifact]) -> dict[str, Any]:
    """One artifact as a row of COLUMNS (None where a column does not apply)."""
    sel, metrics = artifact.selectors, artifact.metrics
    ratio = sel.get("ratio") if artifact.kind in ("labels", "student") else None
    if artifact.kind == "student" and sel.get("ratio") is None:
        ratio = artifact.config.get("labels")  # online / hard: no stored labels
    return {"id": artifact.id, "kind": artifact.kind, "dataset": sel.get("dataset"),
            "method": sel.get("method"), "ipc": sel.get("ipc"), "ratio": ratio,
            "encoding": encoding(artifact, by_id),
            "top1": metrics.get("top1") if artifact.kind in ("teacher", "student") else None,
            "bytes": artifact_bytes(artifact), "created": artifact.manifest.get("created")}


def inventory(store: Store, kind: str | None = None) -> list[dict[str, Any]]:
    """Every complete artifact (of `kind`), newest first, as rows of COLUMNS."""
    everything = store.list()
    by_id = {a.id: a for a in everything}
    return [row(a, by_id) for a in everything if kind is None or a.kind == kind]


def describe(store: Store, ref: str) -> dict[str, Any]:
    """One artifact: its manifest (without the file list), lineage up and down."""
    artifact = store.get(ref, verify=False)
    manifest = dict(artifact.manifest)
    files = manifest.pop("files", {})
    kids = children(store)

    def down(artifact_id: str, depth: int) -> list[dict[str, Any]]:
        out = []
        for child in kids.get(artifact_id, []):
            out.append({"depth": depth, "kind": child.kind, "id": child.id,
                        "created": child.manifest.get("created")})
            out += down(child.id, depth + 1)
        return out

    return {"artifact": {**artifact.to_json(), "bytes": artifact_bytes(artifact),
                         "files": len(files)},
            "manifest": manifest, "lineage_up": lineage_rows(store, artifact.id, verify=False),
            "lineage_down": down(artifact.id, 1)}
