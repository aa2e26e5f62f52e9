"""The label pool at training time: which stored rows each epoch replays, read ahead of the step.

Paper §3.3.2 ("two random processes"): after pruning chose the pool (1st process),
training draws from it at random (2nd process). `RowSampler` is that 2nd process,
a pure function of (seed, epoch), so a resumed run draws exactly what an
uninterrupted one would, and a distributed sampler can later replace it (each rank
takes a slice of `epoch_rows`). `Prefetcher` reads and decodes the rows of upcoming
steps on a background thread, so the step only waits when the disk is slower than
the network.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from lpld_cli.data.augment import Row, crop_pixels
from lpld_cli.errors import ConfigError
from lpld_cli.storage.encoding import SoftTarget
from lpld_cli.storage.labels import LabelRows, LabelStore
from lpld_cli.storage.store import Artifact


def row_from_store(rows: LabelRows, i: int, image_size: int | None = None) -> Row:
    """Stored row `i` of a block as an `augment.Row`, ready for replay.

    v2 stores hold crop boxes as integer pixels; a v1 store's float32 fractions are
    turned back into the pixels they came from (`image_size` needed).
    """
    crop = np.asarray(rows.crop[i])
    if crop.dtype.kind == "f":
        if image_size is None:
            raise ValueError("a v1 row's crop fractions need the image size")
        pixels = crop_pixels(torch.from_numpy(crop.astype(np.float32)), image_size)
    else:
        pixels = torch.from_numpy(crop.astype(np.int32))
    return Row(image_index=torch.from_numpy(np.asarray(rows.image_index[i]).astype(np.int32)),
               crop=pixels,
               flip=torch.from_numpy(np.asarray(rows.flip[i]).astype(np.bool_)),
               mix_index=torch.from_numpy(np.asarray(rows.mix_index[i]).astype(np.int32)),
               mix_lambda=float(rows.mix_lambda[i]),
               mix_box=torch.from_numpy(np.asarray(rows.mix_box[i]).astype(np.int32)))


def keep_count(total: int, ratio: float) -> int:
    """⌊total / ratio⌋, at least one (exact for decimal ratios such as 2.5)."""
    return max(1, math.floor(Fraction(total) / Fraction(repr(float(ratio)))))


def choose_random(units: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random pool selection (paper's 1st random process): n of `units` candidates,
    without replacement, ascending."""
    return np.sort(rng.choice(units, size=min(n, units), replace=False))


def random_pool_rows(complete: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """The rows random batch-level pruning keeps (ascending), given which rows are complete:
    what `prune --metric random --granularity batch --seed S` picks, computable before any
    row is labelled (relabel --keep)."""
    candidates = np.flatnonzero(complete)
    n = keep_count(len(complete), ratio)
    return candidates[choose_random(len(candidates), n, np.random.default_rng(seed))]


# How training epochs draw rows: "batch" (improved label pool: NB rows uniformly with
# replacement), "epoch" (one stored epoch at random), "sequential" (an unpruned store:
# training epoch e replays stored epoch e mod E, as the authors' full-label training does).
ORDERS = ("batch", "epoch", "sequential")
# Decoded chunks kept in memory: a whole Fashion-MNIST or pruned ImageNet pool fits.
CACHE_BYTES = 1 << 30


@dataclass
class PoolBatch:
    """One training step's labels: the stored row (augmentation) and its teacher signal."""

    epoch: int
    step: int
    row_id: int
    row: Row
    target: SoftTarget  # float32 (CPU, pinned on CUDA runs): full logits or top-k

    @property
    def logits(self) -> torch.Tensor | None:
        """Full logits [B, C] (None for a top-k store)."""
        return self.target.logits


class LabelPool:
    """A label store opened for training: its geometry and chunk-cached, decoded reads."""

    def __init__(self, store: LabelStore, artifact_id: str = "?",
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.store = store
        self.artifact_id = artifact_id
        attrs = store.attrs
        self.attrs = attrs
        for key in ("batches_per_epoch", "image_size", "images_id"):
            if key not in attrs:
                raise ConfigError(f"label store {artifact_id[:12]} lacks the attribute {key!r}",
                                  "make it with `lpld relabel` (and `lpld prune`)")
        self.batch_size = store.batch_size
        self.num_classes = store.num_classes
        self.rows = store.rows
        self.batches_per_epoch = int(attrs["batches_per_epoch"])
        self.image_size = int(attrs["image_size"])
        self.mix = attrs.get("mix", "none")
        self.images_id = attrs["images_id"]
        self.teacher_id = attrs.get("teacher_id")
        self.logits_dtype = attrs.get("logits_dtype", "float16")
        self.replay = store.replay  # the replay contract the rows were labelled under
        self.encoding = store.encoding
        granularity = attrs.get("granularity")
        self.order = granularity if granularity in ("batch", "epoch") else "sequential"
        self.batch_id = np.asarray(store.arrays["batch_id"][:], dtype=np.int64)
        self._cache: OrderedDict[int, tuple[LabelRows, SoftTarget, int]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes

    @classmethod
    def open(cls, artifact: Artifact) -> LabelPool:
        if artifact.kind != "labels":
            raise ConfigError(f"artifact {artifact.short} is a {artifact.kind}, not labels",
                              "pass the id of a label store (made by lpld relabel / prune)")
        return cls(LabelStore.open(artifact.path, artifact.id), artifact.id)

    def sampler(self, seed: int) -> RowSampler:
        return RowSampler(self.batch_id, self.batches_per_epoch, self.order, seed)

    def _chunk(self, k: int) -> tuple[LabelRows, SoftTarget]:
        """Chunk `k`: its rows and its labels decoded to float32 (LRU-cached)."""
        if k in self._cache:
            self._cache.move_to_end(k)
            rows, target, _ = self._cache[k]
            return rows, target
        chunk = self.store.rows_per_chunk
        rows = self.store.read(k * chunk, min((k + 1) * chunk, self.rows))
        target = self.store.target(rows)
        size = sum(t.numel() * t.element_size() for t in
                   (target.logits, target.values, target.index, target.fill) if t is not None)
        size += rows.crop.nbytes + rows.image_index.nbytes
        self._cache[k] = (rows, target, size)
        self._cache_bytes += size
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, (_rows, _target, old) = self._cache.popitem(last=False)
            self._cache_bytes -= old
        return rows, target

    def get(self, row_id: int) -> tuple[Row, SoftTarget]:
        """One stored row: its augmentation and its float32 teacher signal [B, …]."""
        if not 0 <= row_id < self.rows:
            raise IndexError(f"row {row_id} outside the pool of {self.rows}")
        chunk = self.store.rows_per_chunk
        rows, target = self._chunk(row_id // chunk)
        j = row_id % chunk
        return row_from_store(rows, j, self.image_size), target[j]


class RowSampler:
    """Which pool rows training epoch `epoch` replays: a pure function of (seed, epoch)."""

    def __init__(self, batch_id: np.ndarray, batches_per_epoch: int, order: str,
                 seed: int) -> None:
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}")
        self.batch_id = np.asarray(batch_id, dtype=np.int64)
        self.batches_per_epoch = batches_per_epoch
        self.order = order
        self.seed = seed
        stored_epoch = self.batch_id // batches_per_epoch
        self.epochs = np.unique(stored_epoch)
        # rows of each stored epoch, in their stored batch order
        self._epoch_rows = {int(e): np.flatnonzero(stored_epoch == e)[
            np.argsort(self.batch_id[stored_epoch == e], kind="stable")] for e in self.epochs}

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Pool row indices (int64) for training epoch `epoch`, in step order."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.order == "batch":
            return rng.integers(0, len(self.batch_id), self.batches_per_epoch)
        if self.order == "epoch":
            return self._epoch_rows[int(self.epochs[rng.integers(0, len(self.epochs))])]
        return self._epoch_rows[int(self.epochs[epoch % len(self.epochs)])]


def put_until_stopped(q: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    """Put `item` on a producer thread's bounded queue, giving up once `stop` is set (the
    consumer left): True if it was put. Shared by the label prefetcher and relabel's drawer."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class Prefetcher:
    """Reads and decodes the rows of upcoming steps on a background thread.

    `epoch(e)` yields that epoch's `PoolBatch`es in order; the thread already works on
    the next ones (up to `depth` steps ahead, across epoch boundaries). `wait_seconds`
    is the time the consumer spent blocked on labels.
    """

    _END = object()

    def __init__(self, pool: LabelPool, sampler: RowSampler, start_epoch: int, epochs: int,
                 depth: int = 16, pin: bool = False) -> None:
        self.pool, self.sampler = pool, sampler
        self.start_epoch, self.epochs = start_epoch, epochs
        self.pin = pin
        self.wait_seconds = 0.0
        self.used_rows: set[int] = set()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lpld-label-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for epoch in range(self.start_epoch, self.epochs):
                for step, row_id in enumerate(self.sampler.epoch_rows(epoch)):
                    row, target = self.pool.get(int(row_id))
                    if self.pin:
                        target = target.pin_memory()
                    batch = PoolBatch(epoch, step, int(row_id), row, target)
                    if not put_until_stopped(self._queue, self._stop, batch):
                        return
            put_until_stopped(self._queue, self._stop, self._END)
        except BaseException as exc:  # hand any reader error to the training loop
            put_until_stopped(self._queue, self._stop, exc)

    def _get(self) -> Any:
        start = time.perf_counter()
        item = self._queue.get()
        self.wait_seconds += time.perf_counter() - start
        if isinstance(item, BaseException):
            raise item
        return item

    def epoch(self, epoch: int) -> Iterator[PoolBatch]:
        """This epoch's batches, in the sampler's order."""
        for _ in range(len(self.sampler.epoch_rows(epoch))):
            item = self._get()
            if item is self._END or item.epoch != epoch:
                raise RuntimeError(f"label prefetch out of step at epoch {epoch}")
            self.used_rows.add(item.row_id)
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
