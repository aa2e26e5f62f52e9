"""`lpld export`: an artifact as plain files anyone can use without lpld.

An image set becomes a plain ImageFolder (`train/<class:05d>/<k:05d>.png`, so
torchvision's sorted class index equals lpld's class id) with a `train/metadata.jsonl`
in the Hugging Face `imagefolder` convention (`file_name` relative to the metadata file,
plus `class_id` and `class_name`). A label store becomes a copy of its Zarr v3 group and
a README listing its arrays (read from the Zarr metadata, no lpld code needed).
Teachers and students are copied as they are (safetensors weights and JSON).

The copy is written beside DIR under a temporary name and renamed into place, so DIR
is either complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lpld_cli.errors import ConfigError
from lpld_cli.storage.store import Artifact, _rmtree, folder_bytes

IMAGE_README = """# {kind} {id}

Distilled images exported by lpld (LPLD, NeurIPS 2024): {count} images, {classes} classes,
{ipc} per class, {size} px, {mode}; dataset {dataset}, recover method {method}.

    train/<class:05d>/<k:05d>.png   lossless PNG; folder order = class id
    train/metadata.jsonl            one line per image: file_name, class_id, class_name
    classes.json                    class names, index = class id
    manifest.json                   lpld's manifest: config, parents, metrics, sha256 of files

Load it with torchvision: `torchvision.datasets.ImageFolder("{folder}/train")`, or with
Hugging Face datasets: `load_dataset("imagefolder", data_dir="{folder}")`.
"""

# What each array of a label store holds (DESIGN §5).
ARRAY_MEANING = {
    "batch_id": "global batch number: epoch x batches_per_epoch + batch",
    "image_index": "which synthetic image sits in each slot of the batch",
    "crop": "RandomResizedCrop box of each slot as fractions (top, left, height, width)",
    "crop_px": "RandomResizedCrop box of each slot in pixels (top, left, height, width)",
    "flip": "horizontal flip of each slot",
    "mix_index": "CutMix partner (slot index) of each slot",
    "mix_lambda": "CutMix strength of the batch",
    "mix_box": "CutMix box of the batch in pixels (y1, x1, y2, x2)",
    "logits": "teacher logits of each slot of the augmented batch",
    "logits_scale": "per-slot scale of quantised logits",
    "topk_values": "the k largest teacher logits of each slot, descending",
    "topk_index": "the classes of topk_values",
    "topk_fill": "per-slot value of the logits not kept",
    "topk_scale": "per-slot scale of quantised top-k values",
}


def export(artifact: Artifact, target: str | os.PathLike[str]) -> Path:
    """Write `artifact` (already verified) as plain files into the new folder `target`."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} already exists and is not empty",
                          "export into a new or empty folder")
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        if tmp.exists():
            _rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot write into {target.parent}: {exc.strerror}",
                          "export into a folder you can write") from None
    try:
        if artifact.kind == "images":
            _export_images(artifact, tmp, target)
        elif artifact.kind == "labels":
            _export_labels(artifact, tmp)
        else:
            _copy_payload(artifact, tmp)
        shutil.copyfile(artifact.path / "manifest.json", tmp / "manifest.json")
        for path in tmp.rglob("*"):  # the store's files are read-only; a user's copy is not
            path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        _rmtree(tmp)
        raise
    return target


def _copy_payload(artifact: Artifact, dest: Path) -> None:
    for rel in artifact.manifest["files"]:
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact.path / rel, out)


def _export_images(artifact: Artifact, dest: Path, final: Path) -> None:
    from PIL import Image  # only the first image is opened, for its size and mode

    _copy_payload(artifact, dest)
    names = json.loads((artifact.path / "classes.json").read_text())
    lines, first = [], None
    for rel in sorted(r for r in artifact.manifest["files"] if r.startswith("train/")):
        _, class_dir, _ = rel.split("/", 2)
        c = int(class_dir)
        first = first or artifact.path / rel
        lines.append(json.dumps({"file_name": rel.removeprefix("train/"), "class_id": c,
                                 "class_name": names[c]}))
    (dest / "train" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    size, mode = "-", "-"
    if first is not None:
        with Image.open(first) as img:
            size, mode = f"{img.width}x{img.height}", {"L": "grey"}.get(img.mode, img.mode)
    sel = artifact.selectors
    (dest / "README.md").write_text(IMAGE_README.format(
        kind=artifact.kind, id=artifact.id, count=len(lines), classes=len(names),
        ipc=sel.get("ipc", "-"), size=size, mode=mode, dataset=sel.get("dataset", "-"),
        method=sel.get("method", "-"), folder=final))


def _export_labels(artifact: Artifact, dest: Path) -> None:
    _copy_payload(artifact, dest)
    group = dest / "labels.zarr"
    attrs = json.loads((group / "zarr.json").read_text()).get("attributes", {})
    rows = []
    for meta_path in sorted(group.glob("*/zarr.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("node_type") != "array":
            continue
        name = meta_path.parent.name
        chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        dims = meta.get("dimension_names")
        shape = " x ".join(str(n) for n in meta["shape"])
        rows.append(f"| `{name}` | {meta['data_type']} | [{shape}]"
                    + (f" ({', '.join(d for d in dims if d)})" if dims else "")
                    + f" | {chunks} | {ARRAY_MEANING.get(name, '-')} |")
    images = attrs.get("images_id") or "-"
    text = [
        f"# labels {artifact.id}", "",
        "Soft labels exported by lpld (LPLD, NeurIPS 2024): one row per stored batch, the",
        "augmentation the teacher saw and its logits, in a Zarr v3 group readable by any Zarr",
        "v3 reader (`zarr.open_group('labels.zarr', mode='r')`, tensorstore).", "",
        f"Rows: {attrs.get('rows', '-')} stored batches of {attrs.get('batch_size', '-')} "
        f"slots; {attrs.get('num_classes', '-')} classes; logits "
        f"{attrs.get('logits_dtype', '-')}"
        + (" (raw bfloat16 bits in uint16)" if attrs.get("logits_dtype") == "bfloat16" else "")
        + f"; images {attrs.get('image_size', '-')} px, mix {attrs.get('mix', '-')}.",
        f"The images these labels index are the image set {images} "
        f"(`lpld export {images[:12]} DIR`).", "",
        "| array | dtype | shape | chunk | meaning |", "|---|---|---|---|---|", *rows, "",
        "Group attributes (labels.zarr/zarr.json):", "",
        *(f"- `{k}`: {json.dumps(v)}" for k, v in sorted(attrs.items())), "",
        "manifest.json holds lpld's config, parents and the sha256 of every file."]
    (dest / "README.md").write_text("\n".join(text) + "\n")


def summary(path: Path) -> dict[str, Any]:
    """Files and bytes written by an export."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"path": str(path), "files": len(files), "bytes": folder_bytes(path)}
