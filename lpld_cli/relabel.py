"""Relabel: the teacher's soft labels for every augmented batch, into the Zarr label store.

For E epochs a seeded sampler walks the synthetic images in batches of B. Each
batch ("row") draws its augmentation with `augment.draw_row` (RandomResizedCrop
boxes, flips, one CutMix) from its own generator seeded by (seed, epoch, batch), the
teacher sees the row's replayed pixels, and the row and its logits are stored
(DESIGN §5; paper §3.3.2, appendix E.2). Replay contract v2 (`augment`): pixels are a
per-slot function of the uint8 image and the stored numbers; logits come from forwards
of `rows_per_forward` (K) rows, row r always at block r mod K of a [K·B] batch.

The build, in three parts:
- open-or-resume (`open_or_resume`): the store in staging and the shards still to do.
  A shard (one file per array, `rows_per_shard` rows) is the unit of work and of
  resume: `relabel-shards/<k>.done` in staging (outside labels.zarr) marks a written
  one, so a rerun, or another rank, skips it. Under torchrun rank 0 alone opens or
  creates the store (the only writer of group and array metadata) and broadcasts the
  shards to do; rank r writes shards k ≡ r (mod N), whole shard files, so the arrays
  are the same for any N and an interrupted run resumes with any N.
- a shard buffer (`ShardBuffer`): a shard's rows and the logits of each forward, drawn
  ahead of the device by a background thread (`_Drawer`).
- the writer (`ShardWriter`): a thread that encodes whole shards and writes them while
  the teacher runs on the next.

`keep` > 1 (`relabel --keep 40x`) labels only the rows `prune --ratio 40x` (random,
batch granularity, same seed) would keep, into the very store that prune would write.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpld_cli import dist, stage_module
from lpld_cli.checks import at_least, fill, one_of, positive
from lpld_cli.data import augment
from lpld_cli.data.label_pool import put_until_stopped, random_pool_rows
from lpld_cli.data.presets import DATASETS, Preset, get_preset
from lpld_cli.device import PRECISIONS, check_precision, default_precision
from lpld_cli.errors import ConfigError
from lpld_cli.models.teacher import group_logits, load_teacher, slot_logits
from lpld_cli.progress import SILENT, Reporter
from lpld_cli.storage.encoding import Encoding, identity_dict
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.labels import (
    CODECS,
    LAYOUT_RULE,
    LabelRows,
    LabelStore,
    Layout,
    child_layout,
    pruned_attributes,
)
from lpld_cli.storage.store import Artifact, Store, folder_bytes

DONE_DIR = "relabel-shards"
# Shards waiting for the writer thread: bounds memory to a few shards whatever E is.
QUEUE_SHARDS = 2
# Groups drawn ahead of the device.
DRAW_AHEAD = 8
REPLAY_AHEAD = 2  # groups replayed ahead on CPU (float32 pixels: bounded memory)
DEFAULT_ROWS_PER_FORWARD = 4


@dataclass(frozen=True)
class RelabelConfig:
    # the schedule (paper Tables 12, 15, 18; Fashion-MNIST by measurement); None: the preset's
    epochs: int | None = None
    batch_size: int | None = None
    mix: str | None = None
    # storage
    logits_dtype: str = "float16"
    codec: str = "zstd"
    # None: ~4 MB of logits per chunk, ~256 MB per shard file, 16 to 512 shards
    rows_per_chunk: int | None = None
    rows_per_shard: int | None = None
    seed: int = 0
    # how the logits are computed (both change their last bits: part of the identity)
    rows_per_forward: int = DEFAULT_ROWS_PER_FORWARD
    precision: str | None = None  # None: the device's default (fp32 CPU, bf16 CUDA)
    # label only the rows random pruning at this ratio keeps (1: every row)
    keep: float = 1.0
    # label encoding (storage.encoding): top-k or q8/q4 instead of fp16 logits, written
    # directly from the teacher's float32 logits
    topk: int | None = None
    topk_fill: str = "none"
    fill_temperature: float | None = None  # lme only; None: the preset's training temperature

    @property
    def encoding(self) -> Encoding:
        return Encoding(logits_dtype=self.logits_dtype, topk=self.topk,
                        topk_fill=self.topk_fill, fill_temperature=self.fill_temperature)

    def validate(self) -> None:
        """Check every given value (None: unset, the preset decides)."""
        at_least("--epochs", self.epochs, 1)
        at_least("--batch-size", self.batch_size, 1)
        one_of("--mix", self.mix, augment.MIXES)
        one_of("--codec", self.codec, CODECS)
        at_least("--rows-per-chunk", self.rows_per_chunk, 1)
        at_least("--rows-per-shard", self.rows_per_shard, 1)
        at_least("--seed", self.seed, 0)
        chunk, shard = self.rows_per_chunk, self.rows_per_shard
        if chunk and shard and shard % chunk:
            raise ConfigError(f"--rows-per-shard {self.rows_per_shard} is not a multiple of "
                              f"--rows-per-chunk {self.rows_per_chunk}",
                              "a shard file holds whole chunks")
        at_least("--rows-per-forward", self.rows_per_forward, 1)
        one_of("--precision", self.precision, PRECISIONS)
        if not (math.isfinite(self.keep) and self.keep >= 1):
            raise ConfigError(f"--keep must be at least 1x (got {self.keep})",
                              "e.g. --keep 40x labels the 1/40 of the rows prune --ratio 40x "
                              "keeps")
        positive("--fill-temperature", self.fill_temperature)
        encoding = self.encoding
        if encoding.topk_fill == "lme" and encoding.fill_temperature is None:
            encoding = replace(encoding, fill_temperature=1.0)  # unset: the preset's
        encoding.validate()

    def resolved(self, preset: Preset | None) -> RelabelConfig:
        """Unset fields take the preset's value (validates first; None: nothing to fill)."""
        self.validate()
        if preset is None:
            return self
        lme = self.topk_fill == "lme"
        return fill(self, epochs=preset.relabel_epochs, batch_size=preset.relabel_batch_size,
                    mix=preset.mix, fill_temperature=preset.temperature if lme else None)

    def identity(self) -> dict[str, Any]:
        """What names the label store (resolve first: the preset is the images' dataset's).
        The encoding fields only when set, so ids of stores made without them hold; the
        default layout's rule always (it decides the files)."""
        if None in (self.epochs, self.batch_size, self.mix):
            raise ValueError("identity() of an unresolved RelabelConfig")
        return {**identity_dict(asdict(self), {"topk": None, "topk_fill": "none",
                                               "fill_temperature": None}),
                "layout_rule": LAYOUT_RULE}

    def with_precision(self, device: torch.device) -> RelabelConfig:
        """The config the identity records: the device's precision when none is given,
        checked against the device."""
        precision = self.precision or default_precision(device)
        check_precision(device, precision)
        return replace(self, precision=precision)

    def full(self) -> RelabelConfig:
        """The config of the unpruned relabel this one's rows come from."""
        return replace(self, keep=1.0)


@dataclass(frozen=True)
class Geometry:
    """Where row r of a relabel sits: epoch r // NB, batch r % NB."""

    num_images: int
    batch_size: int
    epochs: int
    image_size: int

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    @property
    def rows(self) -> int:
        return self.epochs * self.batches_per_epoch

    def complete(self) -> np.ndarray:
        """bool [rows]: every slot filled (only an epoch's last batch can fall short)."""
        full = self.num_images // self.batch_size
        return np.tile(np.arange(self.batches_per_epoch) < full, self.epochs)


def relabel(store: Store, config: RelabelConfig, images: Artifact,
            teacher: Artifact | None = None, *, device: torch.device | None = None,
            force: bool = False, reporter: Reporter = SILENT, threads: int | None = 1,
            draw_workers: int | None = None) -> Artifact:
    """Make (or find) the label store of `images` relabelled by `teacher` (default: the
    images' own teacher, their parent).

    `threads`: torch intra-op threads while relabelling on CPU (None: torch's default).
    Small batches of small images run ~10x faster on one thread than on two contended
    cores (measured on the 2-core dev machine), so one is the default.
    `draw_workers`: processes drawing the rows' crops and mixes ahead of the teacher (0: a
    thread of this process; None: `default_draw_workers(device)`). Every row is drawn
    from its own seeded generator, so the store is the same for any number.
    """
    config.validate()
    device = device or torch.device("cpu")
    workers = default_draw_workers(device) if draw_workers is None else draw_workers
    at_least("--draw-workers", workers, 0)
    config = config.with_precision(device)
    if images.kind != "images":
        raise ConfigError(f"artifact {images.short} is a {images.kind}, not an image set",
                          "pass an images id (made by `lpld recover`)")
    if teacher is None:
        if not images.parents:
            raise ConfigError(f"image set {images.short} has no teacher parent",
                              "pass --teacher ID")
        teacher = store.get(images.parents[0], kind="teacher")
    sel = images.selectors
    config = config.resolved(_preset_of(sel, config))
    classes = images.metrics.get("classes")
    config.encoding.validate(int(classes) if classes else None)  # before the teacher loads
    parents = [images.id, teacher.id]
    full_id = store.artifact_id("labels", config.full().identity(), parents)

    def build(staging) -> dict[str, Any]:
        with _cpu_threads(threads if device.type == "cpu" else None):
            w = dist.world()
            return _build(staging.path, config, images, teacher, device, reporter, full_id,
                          owns=lambda k: k % w.size == w.rank, draw_workers=workers)

    pruned = config.keep > 1
    return store.produce(
        "labels", config.identity(), parents, build, force=force, resumable=True,
        selectors={"dataset": sel.get("dataset"), "ipc": sel.get("ipc"),
                   "method": sel.get("method"), "ratio": config.keep,
                   "granularity": "batch" if pruned else None,
                   "metric": "random" if pruned else None, "epochs": config.epochs,
                   "batch_size": config.batch_size, "mix": config.mix,
                   "logits_dtype": config.logits_dtype, "relabel_seed": config.seed,
                   **({"recipe": sel["recipe"]} if sel.get("recipe") else {})})


def _preset_of(selectors: dict[str, Any], config: RelabelConfig) -> Preset | None:
    """The preset that fills unset fields: the image set's recipe or dataset. An image set
    of an unregistered dataset (e.g. the benchmarks' synthetic sets) has none: then every
    schedule field must be given."""
    name = selectors.get("recipe") or selectors.get("dataset") or "fashion-mnist"
    if name in DATASETS:
        return get_preset(name)
    if None in (config.epochs, config.batch_size, config.mix):
        raise ConfigError(f"image set of dataset {name!r} has no preset",
                          "give --epochs, --batch-size and --mix")
    return None


# --------------------------------------------------------------- open-or-resume
def plan_store(config: RelabelConfig, geometry: Geometry, num_classes: int,
               attributes: dict[str, Any], full_id: str
               ) -> tuple[Layout, dict[str, Any], np.ndarray]:
    """The layout and attributes of the store to write, and which relabel rows it holds.

    With `keep` > 1 these are exactly what `prune --ratio keep` (random, batch, same
    seed) writes from the full store: its child layout, its attributes (the full store's
    id as parent), the rows random pruning picks.
    """
    full = Layout(geometry.rows, config.batch_size, num_classes, config.logits_dtype,
                  config.codec, augment.CONTRACT, geometry.num_images, geometry.image_size,
                  config.rows_per_chunk, config.rows_per_shard).with_encoding(config.encoding)
    if config.keep <= 1:
        return full, attributes, np.arange(geometry.rows)
    rows = random_pool_rows(geometry.complete(), config.keep, config.seed)
    parent_attrs = {**full.attributes(), **attributes}
    fields = {"ratio": config.keep, "total_ratio": config.keep, "granularity": "batch",
              "metric": "random", "select": None, "calibrate_easy": 0.0,
              "calibrate_hard": 0.0, "seed": config.seed}
    return (child_layout(full, len(rows)), pruned_attributes(parent_attrs, full_id, fields),
            rows)


def open_or_resume(folder: Path, layout: Layout, attributes: dict[str, Any],
                   reporter: Reporter = SILENT) -> tuple[LabelStore, list[int]]:
    """The label store in staging and the shards not yet written (a fresh store when
    none is there, or the one there does not have this layout)."""
    done_dir = folder / DONE_DIR
    label_store = None
    if done_dir.is_dir():
        with contextlib.suppress(Exception):
            label_store = LabelStore.open(folder, mode="r+")
            if label_store.layout.attributes() != layout.attributes():
                label_store = None
    if label_store is None:
        if done_dir.exists():
            shutil.rmtree(done_dir)
        label_store = LabelStore.create_layout(folder, layout, attributes)
        done_dir.mkdir()
    # a write killed mid-way leaves zarr's temporary `<chunk>.<uuid>.partial` file beside
    # the chunks: never data, and never to be promoted with the payload (rank 0 clears them
    # here, before any rank writes again)
    for stray in folder.rglob("*.partial"):
        stray.unlink(missing_ok=True)
    todo = [k for k in range(label_store.num_shards) if not (done_dir / f"{k}.done").exists()]
    if len(todo) < label_store.num_shards:
        reporter.log(f"resuming relabel: {label_store.num_shards - len(todo)} of "
                     f"{label_store.num_shards} shards already written")
    return label_store, todo


# ------------------------------------------------------------------ the build
def _build(folder: Path, config: RelabelConfig, images: Artifact, teacher_artifact: Artifact,
           device: torch.device, reporter: Reporter, full_id: str,
           owns: Callable[[int], bool] = lambda k: True, draw_workers: int = 0
           ) -> dict[str, Any]:
    """Label every shard still to do that `owns(k)` (all of them on one process)."""
    teacher = load_teacher(teacher_artifact, device)
    if device.type == "cuda":
        teacher.model.to(memory_format=torch.channels_last)
    pixels, _labels, _names = load_image_set(images.path)
    bank = augment.ImageBank(pixels, teacher.data["mean"], teacher.data["std"], device)
    del pixels
    geometry = Geometry(len(bank), config.batch_size, config.epochs, bank.image_size)
    attributes = {
        "batches_per_epoch": geometry.batches_per_epoch, "epochs": config.epochs,
        "image_size": geometry.image_size, "mix": config.mix, "images_id": images.id,
        "teacher_id": teacher_artifact.id, "num_images": geometry.num_images,
        "seed": config.seed, "rows_per_forward": config.rows_per_forward,
        "precision": config.precision}
    layout, attributes, source_rows = plan_store(config, geometry, teacher.num_classes,
                                                 attributes, full_id)
    w = dist.world()
    label_store, todo = (open_or_resume(folder, layout, attributes, reporter) if w.main
                         else (None, None))
    todo = dist.broadcast(todo, w)  # decided by rank 0 before any rank writes
    if label_store is None:
        label_store = LabelStore.open(folder, mode="r+")
    todo = [k for k in todo if owns(k)]
    units = [(k, source_rows[slice(*label_store.shard_range(k))]) for k in todo]
    total = int(sum(len(rows) for _k, rows in units))
    task = reporter.task("relabel rows", total)
    start_time = time.perf_counter()
    # On CPU the drawing thread also replays each group's pixels (torch releases the GIL:
    # the pixels of the next forward are made on another core while this one runs).
    drawer = _Drawer(units, geometry, config, draw_workers,
                     bank if device.type == "cpu" and draw_workers == 0 else None)
    writer = ShardWriter(label_store, folder / DONE_DIR)
    labelled = 0
    try:
        buffer: ShardBuffer | None = None
        for item in drawer:
            if buffer is None or buffer.shard != item.shard:
                if buffer is not None:
                    writer.put(buffer)
                buffer = ShardBuffer(item.shard, label_store, item.shard_rows, device)
            logits = (group_logits(teacher.model, bank, item.rows, config.batch_size, device,
                                   config.precision) if item.pixels is None else
                      slot_logits(teacher.model, item.pixels, item.slots, device,
                                  config.precision))
            buffer.add(item.places, item.rows, logits, config.batch_size)
            labelled += len(item.places)
            elapsed = time.perf_counter() - start_time
            task.advance(len(item.places), rows_per_s=labelled / max(elapsed, 1e-9))
        if buffer is not None:
            writer.put(buffer)
        writer.close()
    except BaseException:
        drawer.close()
        writer.abort()
        raise
    finally:
        task.close()
    dist.barrier(w)  # every rank's shards are written
    labelled = sum(dist.gather(labelled, w))
    seconds = time.perf_counter() - start_time
    done_dir = folder / DONE_DIR
    if not w.main or len(list(done_dir.glob("*.done"))) < label_store.num_shards:
        return {}  # rank 0 finishes (its metrics are the artifact's); or another's turn
    label_store.check_batch_ids(source_rows)  # every row written before promotion
    shutil.rmtree(done_dir)
    return {"rows": label_store.rows, "batches_per_epoch": geometry.batches_per_epoch,
            "epochs": config.epochs, "num_images": geometry.num_images,
            "rows_per_chunk": label_store.rows_per_chunk,
            "rows_per_shard": label_store.rows_per_shard, "files": label_store.files(),
            "rows_labelled": labelled, "relabel_rows": geometry.rows,
            "logical_bytes": logical_bytes(label_store),
            "disk_bytes": folder_bytes(label_store.path),
            "seconds": round(seconds, 3),
            "rows_per_s": round(labelled / max(seconds, 1e-9), 2)}


def logical_bytes(label_store: LabelStore) -> int:
    """Uncompressed bytes of every array."""
    return int(sum(a.nbytes for a in label_store.arrays.values()))


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


# ------------------------------------------------------------- drawing ahead
@dataclass
class _Group:
    """One forward's worth of rows: block i holds rows[i] (None: empty)."""

    shard: int
    shard_rows: int  # rows of the shard being filled
    rows: list[augment.Row | None]
    places: list[tuple[int, int, int]]  # (block, place in the shard, relabel row number)
    slots: augment.Slots | None = None  # with `pixels`: the group replayed ahead (CPU)
    pixels: torch.Tensor | None = None


def pack_groups(source_rows: Sequence[int], k: int) -> list[list[tuple[int, int]]]:
    """Forwards for these relabel rows: each row r at block r mod K, as few forwards as
    the blocks allow; consecutive aligned rows give the aligned groups of K.
    Each forward: [(block, index into source_rows)]."""
    buckets: list[list[int]] = [[] for _ in range(k)]
    for i, r in enumerate(source_rows):
        buckets[int(r) % k].append(i)
    groups = []
    for g in range(max(len(b) for b in buckets)):
        groups.append([(block, b[g]) for block, b in enumerate(buckets) if g < len(b)])
    return groups


def default_draw_workers(device: torch.device) -> int:
    """Drawing processes: none on CPU (the forward dominates: ~0.5 ms of drawing per row
    against ~20 ms of forward at the Fashion-MNIST ConvNet); on CUDA, where a row's
    forward can take less than its drawing, this rank's share of the cores, at most 4."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))  # torchrun sets it
    return max(0, min(4, cores // ranks_here - 1))


class _Groups(torch.utils.data.Dataset):
    """The forwards to draw, in order: item g is the g-th _Group (row r drawn from its own
    generator, so any process draws it the same)."""

    def __init__(self, units: list[tuple[int, np.ndarray]], geometry: Geometry,
                 config: RelabelConfig) -> None:
        self.geometry, self.config = geometry, config
        k = config.rows_per_forward
        self.items = [(shard, rows, group) for shard, rows in units
                      for group in pack_groups(rows, k)]
        self.orders: dict[int, torch.Tensor] = {}  # per process: the last epoch's order

    def __len__(self) -> int:
        return len(self.items)

    def _row(self, r: int) -> augment.Row:
        g, c = self.geometry, self.config
        epoch, batch = divmod(int(r), g.batches_per_epoch)
        if epoch not in self.orders:
            self.orders.clear()
            self.orders[epoch] = augment.epoch_order(g.num_images, c.seed, epoch)
        return augment.row_at(self.orders[epoch], batch, c.batch_size, g.image_size, c.mix,
                              c.seed, epoch)

    def __getitem__(self, index: int) -> _Group:
        shard, rows, group = self.items[index]
        blocks: list[augment.Row | None] = [None] * self.config.rows_per_forward
        places = []
        for block, i in group:
            blocks[block] = self._row(int(rows[i]))
            places.append((block, i, int(rows[i])))
        return _Group(shard, len(rows), blocks, places)


class _Drawer:
    """Draws each forward's rows (the host's share: torchvision's box sampling) ahead of
    the device, DRAW_AHEAD forwards ahead: on a background thread, or in `workers`
    processes (a DataLoader over the forwards, in order)."""

    _END = object()

    def __init__(self, units: list[tuple[int, np.ndarray]], geometry: Geometry,
                 config: RelabelConfig, workers: int = 0,
                 replay: augment.ImageBank | None = None) -> None:
        self.groups = _Groups(units, geometry, config)
        self.stop = threading.Event()
        self.loader = None
        self.replay = replay  # the thread also replays each group's pixels from this bank
        if workers > 0:
            self.loader = torch.utils.data.DataLoader(
                self.groups, batch_size=None, shuffle=False, num_workers=workers,
                prefetch_factor=max(2, -(-DRAW_AHEAD // workers)), collate_fn=_as_is)
            return
        # replayed pixels are float32 batches: keep only a few in flight
        self.queue: queue.Queue[Any] = queue.Queue(REPLAY_AHEAD if replay else DRAW_AHEAD)
        self.thread = threading.Thread(target=self._run, name="lpld-relabel-draw", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for g in range(len(self.groups)):
                item = self.groups[g]
                if self.replay is not None:
                    item.slots = augment.Slots.of(item.rows, self.groups.config.batch_size)
                    item.pixels = augment.replay_slots(self.replay, item.slots)
                if not put_until_stopped(self.queue, self.stop, item):
                    return
            put_until_stopped(self.queue, self.stop, self._END)
        except BaseException as exc:  # handed to the main thread
            put_until_stopped(self.queue, self.stop, exc)

    def __iter__(self) -> Iterator[_Group]:
        if self.loader is not None:
            yield from self.loader
            return
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        if self.loader is None:
            self.thread.join(timeout=5)


def _as_is(item: Any) -> Any:
    return item


# ----------------------------------------------------------------- shard buffer
class ShardBuffer:
    """One shard in host memory: its augmentation arrays and float32 logits, filled
    forward by forward (on CUDA the logits land in pinned memory by asynchronous
    copies; `ready()` waits for the last)."""

    def __init__(self, shard: int, label_store: LabelStore, rows: int,
                 device: torch.device) -> None:
        self.shard = shard
        self.start = label_store.shard_range(shard)[0]
        self.block = LabelRows.empty(label_store.layout, rows)
        self.store = label_store
        b, c = label_store.batch_size, label_store.num_classes
        self.logits = torch.zeros(rows, b, c, dtype=torch.float32,
                                  pin_memory=device.type == "cuda")
        self.event = torch.cuda.Event() if device.type == "cuda" else None

    def add(self, places: list[tuple[int, int, int]], rows: list[augment.Row | None],
            logits: torch.Tensor, batch_size: int) -> None:
        for block, i, r in places:
            row = rows[block]
            assert row is not None
            a = self.block.arrays
            a["batch_id"][i] = r
            a["image_index"][i] = row.image_index.numpy()
            a["crop"][i] = row.crop.numpy()
            a["flip"][i] = row.flip.numpy()
            a["mix_index"][i] = row.mix_index.numpy()
            a["mix_lambda"][i] = row.mix_lambda
            a["mix_box"][i] = row.mix_box.numpy()
            self.logits[i].copy_(logits[block * batch_size:(block + 1) * batch_size],
                                 non_blocking=True)
        if self.event is not None:
            self.event.record()

    def ready(self) -> LabelRows:
        """The shard's rows with their logits encoded (called on the writer thread)."""
        if self.event is not None:
            self.event.synchronize()
        # encoded straight from the teacher's float32 logits: a top-k or quantized store
        # never holds full-precision logits on disk
        self.block.arrays.update(self.store.encode(self.logits))
        return self.block


# ------------------------------------------------------------------------ writer
class ShardWriter:
    """Encodes and writes whole shards on a thread while the teacher runs; after each
    shard its done marker is written (a crash loses at most the shards in flight)."""

    def __init__(self, label_store: LabelStore, done_dir: Path) -> None:
        self.store = label_store
        self.done_dir = done_dir
        self.queue: queue.Queue[ShardBuffer | None] = queue.Queue(QUEUE_SHARDS)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lpld-label-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.store.write(item.start, item.ready())
                (self.done_dir / f"{item.shard}.done").touch()
            except BaseException as exc:  # handed to the main thread
                self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, buffer: ShardBuffer) -> None:
        self._check()
        self.queue.put(buffer)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._check()

    def abort(self) -> None:
        """Stop after the shards already queued (they are complete), then return."""
        self.queue.put(None)
        self.thread.join()


stage_module(__name__)  # `lpld_cli.relabel(...)` calls relabel() above
