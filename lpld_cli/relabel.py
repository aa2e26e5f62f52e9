"""Relabel: the teacher's soft labels for every augmented batch, into the Zarr label store.

For E epochs a seeded sampler walks the synthetic images in batches of B. Each
batch ("row") draws its augmentation with `augment.draw_row` (RandomResizedCrop
boxes, flips, one CutMix), the teacher sees `augment.replay(images, row)`, and the
row and its logits are stored (DESIGN §5; paper §3.3.2, appendix E.2).

Each epoch's randomness comes from its own generator seeded by (seed, epoch), so any
epoch can be regenerated on its own: that is what makes a resumed run equal to an
uninterrupted one without saving RNG state. Rows are buffered into whole chunks and
handed to a writer thread (bounded queue) that compresses and writes them while the
teacher runs on the next batches; a progress file in staging (outside labels.zarr)
records how many rows are on disk, chunk by chunk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpld_cli import stage_module
from lpld_cli.data import augment
from lpld_cli.errors import ConfigError
from lpld_cli.models.teacher import load_teacher, teacher_logits
from lpld_cli.progress import SILENT, Reporter
from lpld_cli.storage.encoding import Encoding, encode, identity_dict
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.labels import (
    CODECS,
    GROUP,
    LabelRows,
    LabelStore,
    rows_per_chunk_for,
    store_schema,
)
from lpld_cli.storage.store import Artifact, Store

PROGRESS_FILE = "relabel-progress.json"
# Chunks waiting for the writer thread: bounds memory to a few chunks whatever E is.
QUEUE_CHUNKS = 2


@dataclass(frozen=True)
class RelabelConfig:
    # the schedule (paper Tables 12, 15, 18; Fashion-MNIST by measurement)
    epochs: int = 300
    batch_size: int = 50
    mix: str = "cutmix"
    # storage
    logits_dtype: str = "float16"
    codec: str = "zstd"
    rows_per_chunk: int | None = None  # None: ~4 MB of logits per chunk
    seed: int = 0
    # label encoding (storage.encoding): top-k instead of full logits, written directly
    topk: int | None = None
    topk_fill: str = "none"
    fill_temperature: float | None = None  # lme only

    @property
    def encoding(self) -> Encoding:
        return Encoding(logits_dtype=self.logits_dtype, topk=self.topk,
                        topk_fill=self.topk_fill, fill_temperature=self.fill_temperature)

    def identity(self) -> dict[str, Any]:
        """The canonical config (encoding fields only when set: ids of older stores hold)."""
        return identity_dict(asdict(self), {"topk": None, "topk_fill": "none",
                                            "fill_temperature": None})

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.mix not in augment.MIXES:
            raise ConfigError(f"unknown --mix {self.mix!r}",
                              f"choose one of: {', '.join(augment.MIXES)}")
        self.encoding.validate()
        if self.codec not in CODECS:
            raise ConfigError(f"unknown --codec {self.codec!r}",
                              f"choose one of: {', '.join(CODECS)}")
        if self.rows_per_chunk is not None and self.rows_per_chunk < 1:
            raise ConfigError(f"--rows-per-chunk must be at least 1 (got {self.rows_per_chunk})")


def relabel(store: Store, config: RelabelConfig, images: Artifact,
            teacher: Artifact | None = None, *, device: torch.device | None = None,
            force: bool = False, reporter: Reporter = SILENT, threads: int | None = 1
            ) -> Artifact:
    """Make (or find) the label store of `images` relabelled by `teacher` (default: the
    images' own teacher, their parent).

    `threads`: torch intra-op threads while relabelling on CPU (None: torch's default).
    Small batches of small images run ~10x faster on one thread than on two contended
    cores (measured on the 2-core dev machine), so one is the default.
    """
    config.validate()
    device = device or torch.device("cpu")
    classes = images.metrics.get("classes")
    if classes:
        config.encoding.validate(int(classes))
    if images.kind != "images":
        raise ConfigError(f"artifact {images.short} is a {images.kind}, not an image set",
                          "pass an images id (made by `lpld recover`)")
    if teacher is None:
        if not images.parents:
            raise ConfigError(f"image set {images.short} has no teacher parent",
                              "pass --teacher ID")
        teacher = store.get(images.parents[0], kind="teacher")
    sel = images.selectors

    def build(staging) -> dict[str, Any]:
        with _cpu_threads(threads if device.type == "cpu" else None):
            return _build(staging.path, config, images, teacher, device, reporter)

    return store.produce(
        "labels", config.identity(), [images.id, teacher.id], build, force=force, resumable=True,
        selectors={"dataset": sel.get("dataset"), "ipc": sel.get("ipc"),
                   "method": sel.get("method"), "ratio": 1.0, "granularity": None,
                   "metric": None, "epochs": config.epochs, "batch_size": config.batch_size,
                   "mix": config.mix, "logits_dtype": config.logits_dtype,
                   "relabel_seed": config.seed,
                   **({"recipe": sel["recipe"]} if sel.get("recipe") else {})})


def _build(folder: Path, config: RelabelConfig, images: Artifact, teacher_artifact: Artifact,
           device: torch.device, reporter: Reporter) -> dict[str, Any]:
    teacher = load_teacher(teacher_artifact, device)
    pixels, _labels, _names = load_image_set(images.path)
    num_images = len(pixels)
    image_size = int(pixels.shape[-1])
    stack = augment.normalise(pixels, teacher.data["mean"], teacher.data["std"]).to(device)
    num_classes = teacher.num_classes
    b = config.batch_size
    batches_per_epoch = math.ceil(num_images / b)
    rows = config.epochs * batches_per_epoch
    encoding = config.encoding
    encoding.validate(num_classes)
    chunk = config.rows_per_chunk or rows_per_chunk_for(b, num_classes, encoding)
    chunk = min(chunk, rows)
    attributes = {
        "batches_per_epoch": batches_per_epoch, "epochs": config.epochs,
        "image_size": image_size, "mix": config.mix, "images_id": images.id,
        "teacher_id": teacher_artifact.id, "num_images": num_images, "seed": config.seed}

    progress_path = folder / PROGRESS_FILE
    done = _read_progress(progress_path) if (folder / GROUP).is_dir() else 0
    if done:
        label_store = LabelStore.open(folder, mode="r+")
        done -= done % label_store.rows_per_chunk  # whole chunks only
        reporter.log(f"resuming relabel at row {done} of {rows}")
    else:
        label_store = LabelStore.create(folder, rows, b, num_classes, codec=config.codec,
                                        rows_per_chunk=chunk, attributes=attributes,
                                        encoding=encoding)
        _write_progress(progress_path, 0)
    chunk = label_store.rows_per_chunk

    writer = _ChunkWriter(label_store, progress_path)
    task = reporter.task("relabel rows", rows)
    if done:
        task.advance(done)
    start_time = time.perf_counter()
    buffer = _empty_block(chunk, b, num_classes, encoding)
    filled = 0
    pending: list[torch.Tensor] = []
    block_start = done
    first_epoch = done // batches_per_epoch
    try:
        for epoch in range(first_epoch, config.epochs):
            for batch, row in enumerate(augment.epoch_rows(num_images, b, image_size, config.mix,
                                                   config.seed, epoch)):
                r = epoch * batches_per_epoch + batch
                if r < done:  # redrawn only to advance this epoch's generator
                    continue
                # Logits stay on the device until the chunk is full: one transfer per
                # chunk, so the accelerator never waits on a per-batch copy.
                pending.append(teacher_logits(teacher.model, stack, row, device))
                _fill(buffer, filled, r, row)
                filled += 1
                if filled == chunk or r == rows - 1:
                    # encoded straight from the teacher's float32 logits: a top-k or
                    # quantized store never holds full-precision logits on disk
                    for name, array in encode(torch.stack(pending), encoding).items():
                        getattr(buffer, name)[:filled] = array
                    pending = []
                    writer.put(block_start, buffer.take(slice(0, filled)))
                    buffer = _empty_block(chunk, b, num_classes, encoding)
                    block_start += filled
                    filled = 0
                elapsed = time.perf_counter() - start_time
                task.advance(1, rows_per_s=(r + 1 - done) / max(elapsed, 1e-9),
                             epoch=epoch + 1)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        task.close()
    seconds = time.perf_counter() - start_time
    progress_path.unlink()
    return {"rows": rows, "batches_per_epoch": batches_per_epoch, "epochs": config.epochs,
            "num_images": num_images, "rows_per_chunk": chunk,
            "logical_bytes": logical_bytes(label_store),
            "disk_bytes": disk_bytes(folder / GROUP),
            "seconds": round(seconds, 3),
            "rows_per_s": round((rows - done) / max(seconds, 1e-9), 2)}


def logical_bytes(label_store: LabelStore) -> int:
    """Uncompressed bytes of every array."""
    return int(sum(a.nbytes for a in label_store.arrays.values()))


def disk_bytes(folder: Path) -> int:
    """Bytes on disk under a folder (chunks and metadata)."""
    return int(sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()))


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _empty_block(rows: int, b: int, c: int, encoding: Encoding) -> LabelRows:
    return LabelRows(**{name: np.zeros((rows, *trailing), dtype=dtype)
                        for name, (dtype, trailing, _d) in store_schema(encoding, b, c).items()})


def _fill(block: LabelRows, i: int, row_number: int, row: augment.Row) -> None:
    block.batch_id[i] = row_number
    block.image_index[i] = row.image_index.numpy()
    block.crop[i] = row.crop.numpy()
    block.flip[i] = row.flip.numpy()
    block.mix_index[i] = row.mix_index.numpy()
    block.mix_lambda[i] = row.mix_lambda
    block.mix_box[i] = row.mix_box.numpy()


def _read_progress(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["rows_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _write_progress(path: Path, rows_done: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"rows_done": rows_done}))
    os.replace(tmp, path)


class _ChunkWriter:
    """Compresses and writes whole chunks on a thread while the teacher runs.

    Chunks arrive in row order; after each write the progress file says how many
    rows are complete, so a crash loses at most the chunks still in flight.
    """

    def __init__(self, label_store: LabelStore, progress_path: Path) -> None:
        self.store = label_store
        self.progress_path = progress_path
        self.queue: queue.Queue[tuple[int, LabelRows] | None] = queue.Queue(QUEUE_CHUNKS)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lpld-label-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            start, block = item
            try:
                self.store.write(start, block)
                _write_progress(self.progress_path, start + len(block))
            except BaseException as exc:  # handed to the main thread
                self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, start: int, block: LabelRows) -> None:
        self._check()
        self.queue.put((start, block))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._check()

    def abort(self) -> None:
        """Stop after the chunks already queued (they are complete), then return."""
        self.queue.put(None)
        self.thread.join()


stage_module(__name__)  # `lpld_cli.relabel(...)` calls relabel() above
