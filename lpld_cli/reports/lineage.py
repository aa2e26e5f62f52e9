"""An artifact's lineage: its chain of parents back to the teacher, with key config."""

from __future__ import annotations

from typing import Any

from lpld_cli.storage.store import Store

# The key config of each kind, shown by `report lineage` (selectors first, then config).
KEY_CONFIG: dict[str, tuple[str, ...]] = {
    "teacher": ("dataset", "model", "width", "depth", "teacher_epochs", "bn_stats",
                "weights_sha256", "train_subset"),
    "images": ("dataset", "method", "ipc", "batching", "bn_target", "iterations", "lr", "r_bn",
               "first_bn_multiplier"),
    "labels": ("ratio", "granularity", "metric", "select", "epochs", "batch_size", "mix",
               "logits_dtype", "codec"),
    "student": ("model", "labels", "epochs", "batch_size", "loss", "temperature", "optimizer",
                "lr"),
}
HEADLINE: dict[str, tuple[str, ...]] = {
    "teacher": ("top1", "top5"),
    "images": ("self_top1", "images"),
    "labels": ("rows", "disk_bytes"),
    "student": ("top1", "top5", "label_rows", "label_pool_bytes"),
}


def lineage_rows(store: Store, ref: str, verify: bool = True) -> list[dict[str, Any]]:
    """The artifact `ref` and its ancestors back to the teacher, depth-first.

    Each row: depth, kind, id, key config, headline metrics; an ancestor reached twice
    (images are a parent of both the labels and the student) is listed once and then
    marked `seen`. `verify` re-hashes the named artifact's payload first.
    """
    root = store.get(ref, verify=verify)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(artifact_id: str, depth: int) -> None:
        artifact = next((a for k in ("student", "labels", "images", "teacher")
                         if (a := store.find(k, artifact_id)) is not None), None)
        if artifact is None:
            rows.append({"depth": depth, "kind": None, "id": artifact_id, "missing": True})
            return
        if artifact.id in seen:
            rows.append({"depth": depth, "kind": artifact.kind, "id": artifact.id, "seen": True})
            return
        seen.add(artifact.id)
        merged = {**artifact.config, **artifact.selectors}
        key = {k: merged[k] for k in KEY_CONFIG.get(artifact.kind, ()) if merged.get(k)
               is not None}
        headline = {k: artifact.metrics[k] for k in HEADLINE.get(artifact.kind, ())
                    if k in artifact.metrics}
        rows.append({"depth": depth, "kind": artifact.kind, "id": artifact.id,
                     "parents": artifact.parents, "config": key, "metrics": headline,
                     "created": artifact.manifest.get("created")})
        for parent in artifact.parents:
            visit(parent, depth + 1)

    visit(root.id, 0)
    return rows
