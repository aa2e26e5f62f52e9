"""`lpld report storage`: what image sets and label stores take, component by component.

For a label store, each of the seven components (`labels.COMPONENTS`: the paper's
six of Table 21 plus the sampler order) gets its logical bytes (uncompressed array
bytes) and its bytes on disk (the array's folder: compressed chunks and metadata).
Beside them: the label-to-image ratio (paper Table 24) and the size the authors'
layout — one `torch.save` file per batch — would take for the same content.

`plan_row` projects a full-scale run from the same byte layout relabel writes
(`labels.Layout`: array types, chunks, shards, file count), without running anything.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from lpld_cli.checks import at_least
from lpld_cli.data.augment import CONTRACT
from lpld_cli.data.presets import DATASETS
from lpld_cli.errors import ConfigError
from lpld_cli.storage.encoding import LABEL_ARRAYS, Encoding
from lpld_cli.storage.labels import COMPONENTS, GROUP, LabelStore, Layout, child_layout
from lpld_cli.storage.store import Artifact, Store, folder_bytes

# A file occupies whole filesystem blocks: the torch.save layout writes one file per batch.
FS_BLOCK = 4096
# The logits dtypes the authors' torch.save layout can hold (one logit per class).
_TORCH_DTYPES = ("float16", "bfloat16", "float32")


# ------------------------------------------------------------------ the authors' layout
@lru_cache(maxsize=64)
def torch_save_batch_bytes(batch: int, num_classes: int, logits_dtype: str = "float16",
                           image_size: int = 224) -> int:
    """Bytes of one batch file in the authors' layout, measured by really `torch.save`-ing it.

    The file holds [crop fractions (B, 4) float32, flip (B,) bool, CutMix permutation
    (B,) int64, λ (a Python float), the CutMix box (4 Python ints), logits (B, C)].
    torch.save writes an uncompressed zip, so the size depends on the shapes only
    (box values at their largest, `image_size`, for the widest pickled ints).
    """
    dtype = getattr(torch, logits_dtype)
    content = [torch.zeros(batch, 4, dtype=torch.float32), torch.zeros(batch, dtype=torch.bool),
               torch.zeros(batch, dtype=torch.int64), 0.5, [image_size] * 4,
               torch.zeros(batch, num_classes, dtype=dtype)]
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.tell()


def torch_save_layout(epochs: int, num_images: int, batch_size: int, num_classes: int,
                      logits_dtype: str = "float16", image_size: int = 224) -> dict[str, int]:
    """The authors' per-batch files for a whole run: bytes in the files and on 4 KiB blocks.

    Exact: every full batch file has the same size, and so has each epoch's last one.
    """
    full, last = divmod(num_images, batch_size)
    sizes = [(full, torch_save_batch_bytes(batch_size, num_classes, logits_dtype, image_size))]
    if last:
        sizes.append((1, torch_save_batch_bytes(last, num_classes, logits_dtype, image_size)))
    files = epochs * sum(n for n, _ in sizes)
    content = epochs * sum(n * s for n, s in sizes)
    blocks = epochs * sum(n * math.ceil(s / FS_BLOCK) * FS_BLOCK for n, s in sizes)
    return {"files": files, "bytes": content, "block_bytes": blocks}


# ------------------------------------------------------------------------ rows
def _array_logical(layout: Layout, name: str) -> int:
    """Uncompressed bytes of one array (0 for an array this encoding does not write)."""
    spec = layout.specs().get(name)
    if spec is None:
        return 0
    return int(layout.rows * math.prod(spec.trailing) * np.dtype(spec.dtype).itemsize)


def _components(layout: Layout, disk_bytes: Callable[[str], int]) -> dict[str, Any]:
    """Logical and disk bytes of each of `COMPONENTS`; the label component also array by
    array (`arrays`: stored dtype, per-row shape, bytes), since an encoding splits it."""
    specs = layout.specs()
    out: dict[str, Any] = {}
    for component, arrays in COMPONENTS.items():
        out[component] = {"logical_bytes": sum(_array_logical(layout, a) for a in arrays),
                          "disk_bytes": sum(disk_bytes(a) for a in arrays)}
        if arrays == LABEL_ARRAYS:
            out[component]["arrays"] = {
                a: {"dtype": specs[a].dtype, "shape": list(specs[a].trailing),
                    "logical_bytes": _array_logical(layout, a), "disk_bytes": disk_bytes(a)}
                for a in arrays if a in specs}
    return out


def image_bytes(artifact: Artifact) -> int:
    """The PNG bytes of an image set."""
    return int(sum(p.stat().st_size for p in (artifact.path / "train").rglob("*.png")))


def image_row(artifact: Artifact) -> dict[str, Any]:
    """One image set: PNG bytes on disk and uint8 pixel bytes."""
    pngs = sorted((artifact.path / "train").rglob("*.png"))
    logical = 0
    if pngs:
        from PIL import Image

        with Image.open(pngs[0]) as img:
            per_image = img.width * img.height * len(img.getbands())
        logical = per_image * len(pngs)
    sel = artifact.selectors
    return {"artifact": artifact.id, "kind": "images", "dataset": sel.get("dataset"),
            "ipc": sel.get("ipc"), "images": len(pngs), "logical_bytes": int(logical),
            "disk_bytes": int(sum(p.stat().st_size for p in pngs))}


def label_row(store: Store, artifact: Artifact) -> dict[str, Any]:
    """One label store: per-component and total bytes, label-to-image ratio, torch.save size."""
    labels = LabelStore.open(artifact.path, artifact.id)
    attrs = labels.attrs
    rows, batch, classes = labels.rows, labels.batch_size, labels.num_classes
    encoding = labels.encoding
    dtype = encoding.logits_dtype
    group = artifact.path / GROUP
    components = _components(labels.layout, lambda a: folder_bytes(group / a)
                             if (group / a).is_dir() else 0)
    logical = sum(c["logical_bytes"] for c in components.values())
    disk = folder_bytes(group)  # components plus the group's own metadata
    images_id = attrs.get("images_id") or (artifact.parents[0] if artifact.parents else None)
    images = store.find("images", images_id) if images_id else None
    img_bytes = image_bytes(images) if images is not None else None
    sel = artifact.selectors
    row = {"artifact": artifact.id, "kind": "labels", "dataset": sel.get("dataset"),
           "ipc": sel.get("ipc"), "ratio": sel.get("ratio"), "rows": rows,
           "batch_size": batch, "num_classes": classes, "logits_dtype": dtype,
           "encoding": encoding.describe(), "topk": encoding.topk,
           "components": components, "logical_bytes": logical, "disk_bytes": disk,
           "files": labels.files(), "image_bytes": img_bytes,
           "label_to_image": round(disk / img_bytes, 4) if img_bytes else None}
    epochs, num_images = attrs.get("epochs"), attrs.get("num_images")
    if encoding.is_topk or dtype not in _TORCH_DTYPES:  # the authors' layout has no such labels
        row.update(torch_save_bytes=None, torch_save_block_bytes=None, torch_save_files=None)
    elif epochs and num_images and rows == epochs * attrs.get("batches_per_epoch", 0):
        layout = torch_save_layout(int(epochs), int(num_images), batch, classes, dtype,
                                   int(attrs.get("image_size", 224)))
        row.update(torch_save_bytes=layout["bytes"], torch_save_block_bytes=layout["block_bytes"],
                   torch_save_files=layout["files"])
    else:  # a pruned store: its rows are whole batches of the parent's layout
        per = torch_save_batch_bytes(batch, classes, dtype, int(attrs.get("image_size", 224)))
        row.update(torch_save_bytes=rows * per,
                   torch_save_block_bytes=rows * math.ceil(per / FS_BLOCK) * FS_BLOCK,
                   torch_save_files=rows)
    return row


def check_plan_options(ipc: int | None, epochs: int | None, batch_size: int | None,
                       num_classes: int | None, image_bytes_per_image: int | None,
                       topk: int | None = None) -> None:
    """Every given --plan number is at least 1."""
    for option, value in (("--ipc", ipc), ("--epochs", epochs), ("--batch-size", batch_size),
                          ("--classes", num_classes), ("--image-bytes", image_bytes_per_image),
                          ("--topk", topk)):
        at_least(option, value, 1)


def plan_encoding(logits_dtype: str, topk: int | None, topk_fill: str) -> Encoding:
    """The encoding a plan counts (an lme fill is one fp16 per slot at any temperature)."""
    encoding = Encoding(logits_dtype=logits_dtype, topk=topk, topk_fill=topk_fill,
                        fill_temperature=1.0 if topk_fill == "lme" else None)
    encoding.validate()
    return encoding


def plan_row(dataset: str, ipc: int, *, epochs: int | None = None,
             batch_size: int | None = None, logits_dtype: str = "float16",
             num_classes: int | None = None, image_bytes_per_image: int | None = None,
             topk: int | None = None, topk_fill: str = "none", ratio: float = 1.0
             ) -> dict[str, Any]:
    """Project a full-scale relabel's storage from the exact byte layout relabel writes.

    `topk`/`topk_fill`/`logits_dtype` choose the label encoding, `ratio` the pruning
    (⌊rows / ratio⌋ stored batches, as prune keeps).
    Logical bytes are exact (preallocated arrays, the last batch of each epoch padded);
    `disk_bytes` is the uncompressed upper bound (compression depends on the logits).
    Image bytes: `image_bytes_per_image`, else the raw uint8 size H·W·C (lossless PNG of
    synthetic images compresses little).
    """
    entry = DATASETS.get(dataset)
    preset = entry.preset
    check_plan_options(ipc, epochs, batch_size, num_classes, image_bytes_per_image, topk)
    encoding = plan_encoding(logits_dtype, topk, topk_fill)
    classes = num_classes or entry.num_classes
    if not classes:
        raise ConfigError(f"--plan {dataset} needs --classes", "how many classes the data has")
    encoding.validate(classes)
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ConfigError(f"--ratio must be at least 1x (got {ratio})")
    epochs = preset.relabel_epochs if epochs is None else epochs
    batch = preset.relabel_batch_size if batch_size is None else batch_size
    num_images = ipc * classes
    batches_per_epoch = math.ceil(num_images / batch)
    all_rows = epochs * batches_per_epoch
    rows = max(1, math.floor(all_rows / ratio))
    full = Layout(all_rows, batch, classes, logits_dtype, replay=CONTRACT,
                  num_images=num_images, image_size=preset.image_size).with_encoding(encoding)
    zarr_layout = full if rows == all_rows else child_layout(full, rows)
    components = _components(zarr_layout, lambda a: _array_logical(zarr_layout, a))
    logical = sum(c["logical_bytes"] for c in components.values())
    per_image = image_bytes_per_image or preset.image_size ** 2 * preset.channels
    img = per_image * num_images
    row = {"artifact": None, "kind": "plan", "dataset": dataset, "ipc": ipc, "ratio": ratio,
           "epochs": epochs, "rows": rows, "batches_per_epoch": batches_per_epoch,
           "batch_size": batch, "num_classes": classes, "logits_dtype": logits_dtype,
           "encoding": encoding.describe(), "topk": topk,
           "components": components, "logical_bytes": logical, "disk_bytes": logical,
           "files": zarr_layout.files(), "disk_estimate": "uncompressed", "image_bytes": img,
           "image_bytes_per_image": per_image,
           "label_to_image": round(logical / img, 4),
           "torch_save_bytes": None, "torch_save_block_bytes": None, "torch_save_files": None}
    if not encoding.is_topk and logits_dtype in _TORCH_DTYPES and rows == all_rows:
        layout = torch_save_layout(epochs, num_images, batch, classes, logits_dtype,
                                   preset.image_size)
        row.update(torch_save_bytes=layout["bytes"], torch_save_block_bytes=layout["block_bytes"],
                   torch_save_files=layout["files"])
    elif not encoding.is_topk and logits_dtype in _TORCH_DTYPES:
        per = torch_save_batch_bytes(batch, classes, logits_dtype, preset.image_size)
        row.update(torch_save_bytes=rows * per,
                   torch_save_block_bytes=rows * math.ceil(per / FS_BLOCK) * FS_BLOCK,
                   torch_save_files=rows)
    return row


def storage_report(store: Store, refs: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows for the named artifacts (images or labels), else every image set and label store."""
    if refs:
        artifacts = [store.get(ref) for ref in refs]
        bad = [a for a in artifacts if a.kind not in ("images", "labels")]
        if bad:
            raise ConfigError(f"artifact {bad[0].short} is a {bad[0].kind}",
                              "report storage covers image sets and label stores")
    else:
        artifacts = store.list("images") + store.list("labels")
    return [image_row(a) if a.kind == "images" else label_row(store, a) for a in artifacts]
