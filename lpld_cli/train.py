"""Train: a student from scratch on the synthetic images, validated on the real test split.

Three label modes (paper §4.1 "Validate", appendix C):
- "stored": each step replays one row of the label pool with `augment.replay`, so the
  student sees exactly the batch whose teacher logits are stored (DESIGN §5);
- "online": the teacher labels a fresh augmentation every step (no storage: the upper bound);
- "hard": cross-entropy on the images' classes, λ-mixed under CutMix (no teacher).

The pieces: a `LabelSource` per mode yields each epoch's rows and targets (`StoredLabels`,
`OnlineLabels`, `DrawnRows`; a distributed sampler replaces this object), `_Student.epoch`
runs one epoch of steps with the loss `models.losses.student_loss` builds from the config,
and `RowSplit.evaluate` is the one evaluation (progress probes and the final top-1).

The student checkpoint (model, optimizer, RNG, history) is saved in staging after every
epoch; an interrupted run resumes from it and ends with the same weights (every random
draw is a function of (seed, epoch), so nothing else carries over between epochs).

Under torchrun (`models.row_split`) every rank replays the same row and trains on its slice of
the slots with DDP; rank 0 checkpoints and writes the student. The world size changes the
student's numbers, so it is part of the identity (one process: the ids are unchanged).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from lpld_cli import dist, stage_module
from lpld_cli.checks import at_least, fill, one_of, positive
from lpld_cli.data.augment import CONTRACT, MIXES, ImageBank, Row, epoch_rows, replay
from lpld_cli.data.datasets import RealData, load_dataset
from lpld_cli.data.label_pool import LabelPool, Prefetcher
from lpld_cli.data.presets import DATASETS, Preset, get_preset
from lpld_cli.device import (
    PRECISIONS,
    check_precision,
    default_precision,
    precision_autocast,
    seed_everything,
)
from lpld_cli.errors import ArtifactNotFoundError, ConfigError, warn
from lpld_cli.faults import kill_point
from lpld_cli.models.factory import build_model, check_input, decay_groups, model_spec
from lpld_cli.models.losses import (
    LOSSES,
    TEMPERATURE_SCHEDULES,
    calibrate_student_temperature,
    student_loss,
    temperature_at,
)
from lpld_cli.models.row_split import RowSplit, check_sync_bn
from lpld_cli.models.schedule import cosine_decay
from lpld_cli.models.teacher import load_teacher, teacher_logits
from lpld_cli.models.zoo import model_key
from lpld_cli.progress import SILENT, Reporter
from lpld_cli.storage.encoding import SoftTarget, identity_dict
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.selection import select
from lpld_cli.storage.store import Artifact, Staging, Store, write_atomic
from lpld_cli.storage.weights import save_weights

LABEL_MODES = ("stored", "online", "hard")
ONLINE_STREAMS = ("fresh", "relabel")
OPTIMIZERS = ("adamw", "sgd")
CHECKPOINT = "checkpoint.pt"
# A checkpoint serialises the weights, the optimiser state and the history. With epochs of a
# tenth of a second (IPC10 on a CPU) one per epoch cost ~5% of the run; so one is written
# when this many seconds of training have passed since the last (every epoch when epochs
# are longer: ImageNet's). An interrupted run loses at most that much work.
CHECKPOINT_ENV = "LPLD_CHECKPOINT_SECONDS"
CHECKPOINT_SECONDS = 30.0
# Progress evaluations use the first test images only (the final top-1 uses all of them):
# on Fashion-MNIST a full test pass costs as much as ~70 training steps of IPC10.
PROBE_IMAGES = 2000


@dataclass(frozen=True)
class TrainConfig:
    # the student network (trained from scratch; model None: the preset's student)
    dataset: str = "fashion-mnist"
    model: str | None = None
    width: int = 64  # convnet only
    depth: int = 3  # convnet only
    # where the soft labels come from: the stored pool, the teacher online, or none (hard)
    labels: str = "stored"
    # the recipe; None: the preset's (batch size: the label store's row size, if stored)
    epochs: int | None = None
    batch_size: int | None = None
    loss: str = "kl"
    temperature: float | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None  # on parameters with more than one dimension only
    warmup_epochs: int | None = None  # linear warm-up, then cosine per epoch
    mix: str | None = None  # online/hard draw fresh rows with it; stored rows carry their own
    seed: int = 0
    precision: str | None = None  # autocast of the student; None: fp32 on CPU, bf16 on CUDA
    # --labels online only: "fresh" (None: the default) draws the online teacher's own
    # augmentation stream per seed, the upper bound; "relabel" replays relabel's stream of
    # the same seed (then online labels equal the unpruned store's: the equality check)
    online_stream: str | None = None
    # LPQLD's temperature schedule (DKR) from `temperature` down to `temperature_min`,
    # the student's temperature (same | a number | auto: LPQLD's CA calibration), and
    # `hard_epochs` of cross-entropy on the classes in the middle of training (HALD)
    temperature_schedule: str = "constant"
    temperature_min: float = 2.0
    temperature_step: int = 30
    temperature_gamma: float = 0.7
    student_temperature: str = "same"
    hard_epochs: int = 0
    # torchrun: the number of ranks (DDP, each a slice of every row) and whether BatchNorm
    # is synchronised across them (CUDA only); in the identity only when world_size > 1
    world_size: int = 1
    sync_bn: bool = False

    def __post_init__(self) -> None:
        # one spelling per number ("1", "1.0", "1e0" name the same student)
        if self.student_temperature not in ("same", "auto"):
            try:
                object.__setattr__(self, "student_temperature",
                                   repr(float(self.student_temperature)))
            except ValueError:
                pass  # validate() reports it

    def temperature_at(self, epoch: int) -> float:
        """The teacher temperature of (0-based) `epoch` (resolve first)."""
        if self.temperature is None or self.epochs is None:
            raise ValueError("temperature_at() of an unresolved TrainConfig")
        return temperature_at(self.temperature_schedule, epoch, self.epochs, self.temperature,
                              self.temperature_min, self.temperature_step,
                              self.temperature_gamma)

    def hard_epoch(self, epoch: int) -> bool:
        """Whether `epoch` is one of the `hard_epochs` in the middle of training."""
        if self.epochs is None:
            raise ValueError("hard_epoch() of an unresolved TrainConfig")
        first = (self.epochs - self.hard_epochs) // 2
        return first <= epoch < first + self.hard_epochs

    def validate(self) -> None:
        """Check every given value (None: unset, the preset decides)."""
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"unknown label mode {self.labels!r}",
                              "--labels takes a label store id, online or hard")
        DATASETS.check(self.dataset)
        if self.model is not None:
            model_key(self.model)
        at_least("--width", self.width, 1)
        at_least("--depth", self.depth, 1)
        at_least("--epochs", self.epochs, 1)
        at_least("--batch-size", self.batch_size, 1)
        one_of("--loss", self.loss, LOSSES)
        one_of("--optimizer", self.optimizer, OPTIMIZERS)
        positive("--temperature", self.temperature)
        positive("--lr", self.lr)
        at_least("--weight-decay", self.weight_decay, 0)
        at_least("--warmup-epochs", self.warmup_epochs, 0)
        if (self.warmup_epochs is not None and self.epochs is not None
                and not self.warmup_epochs < self.epochs):
            raise ConfigError(f"warm-up epochs must be in [0, --epochs) (got {self.warmup_epochs})")
        one_of("mix", self.mix, MIXES)
        at_least("--seed", self.seed, 0)
        one_of("--precision", self.precision, PRECISIONS)
        one_of("--temperature-schedule", self.temperature_schedule, TEMPERATURE_SCHEDULES)
        positive("--temperature-min", self.temperature_min)
        at_least("--temperature-step", self.temperature_step, 1)
        if not (math.isfinite(self.temperature_gamma) and 0 < self.temperature_gamma <= 1):
            raise ConfigError(f"--temperature-gamma must be in (0, 1] (got "
                              f"{self.temperature_gamma})")
        if self.student_temperature not in ("same", "auto"):
            try:
                value = float(self.student_temperature)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--student-temperature must be same, auto or a positive "
                                  f"number (got {self.student_temperature!r})")
        if self.loss == "mse-gt" and (self.student_temperature != "same"
                                      or self.temperature_schedule != "constant"):
            raise ConfigError("--student-temperature and --temperature-schedule apply to "
                              "--loss kl only", "mse-gt compares raw logits, at no temperature")
        at_least("--hard-epochs", self.hard_epochs, 0)
        if self.epochs is not None and not self.hard_epochs < self.epochs:
            raise ConfigError(f"--hard-epochs must be in [0, --epochs) (got {self.hard_epochs})")
        if self.online_stream is not None:
            if self.labels is not None and self.labels != "online":
                raise ConfigError("--online-stream applies to --labels online only")
            one_of("--online-stream", self.online_stream, ONLINE_STREAMS)
        if self.labels == "hard" and self.loss != "kl":
            raise ConfigError("--loss applies to soft labels only",
                              "--labels hard always uses cross-entropy on the classes")

    def resolved(self, preset: Preset | None = None, row_size: int | None = None
                 ) -> TrainConfig:
        """Unset fields take the preset's value; the batch size a label store's `row_size`."""
        self.validate()
        p = preset or get_preset(self.dataset)
        out = fill(self, model=p.student_model, epochs=p.train_epochs,
                   batch_size=row_size or p.train_batch_size, temperature=p.temperature,
                   optimizer=p.optimizer, lr=p.lr, weight_decay=p.weight_decay,
                   warmup_epochs=p.warmup_epochs, mix=p.mix)
        out.validate()  # the cross-field checks, now that every field is set
        return out

    def identity(self) -> dict[str, Any]:
        """The config that names the student (resolved): online students name their stream,
        the others carry no stream field (their ids are unchanged by it)."""
        out = asdict(self.resolved())
        if self.labels == "online":
            out["online_stream"] = self.online_stream or "fresh"
        else:
            out.pop("online_stream")
        # options still at their defaults are left out, so students made before the
        # temperature options existed keep their ids
        return identity_dict(out, {
            "temperature_schedule": "constant", "temperature_min": 2.0, "temperature_step": 30,
            "temperature_gamma": 0.7, "student_temperature": "same", "hard_epochs": 0,
            "world_size": 1, "sync_bn": False})


# --------------------------------------------------------------------- the pieces
def student_batch(images: ImageBank, row: Row, image_size: int | None = None,
                  contract: int = CONTRACT) -> torch.Tensor:
    """The student's input for a row: exactly the batch the teacher labelled (DESIGN §5),
    under the replay contract of the store it comes from."""
    return replay(images, row, image_size, contract)


def _lr_at(config: TrainConfig, epoch: int) -> float:
    """Linear warm-up, then cosine decay per epoch."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    span = config.epochs - config.warmup_epochs
    return cosine_decay(config.lr, epoch - config.warmup_epochs, span)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = decay_groups(model, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)


# ------------------------------------------------------------------------ the API
def train(store: Store, config: TrainConfig, images: Artifact, labels: Artifact | None,
          teacher: Artifact | None, *, data_root: str | None = None,
          device: torch.device | None = None, force: bool = False,
          reporter: Reporter = SILENT, eval_every: int | None = None) -> Artifact:
    """Make (or find) the student artifact for `config`.

    `labels` is the label pool for `config.labels == "stored"`; `teacher` is needed for
    "online". `eval_every` (epochs; None: ten times per run, 0: only at the end) only
    changes how often the progress line shows a test top-1 (on the first PROBE_IMAGES test
    images), not the artifact.
    """
    device = device or torch.device("cpu")
    config.validate()
    checkpoint_every = checkpoint_seconds()  # a bad $LPLD_CHECKPOINT_SECONDS fails here
    config = replace(config, precision=check_precision(
        device, config.precision or default_precision(device)))
    w = dist.world()  # N ranks split every row: part of the identity when N > 1
    check_sync_bn(config.sync_bn and w.distributed, device)
    config = replace(config, world_size=w.size, sync_bn=config.sync_bn and w.distributed)
    if images.kind != "images":
        raise ConfigError(f"artifact {images.short} is a {images.kind}, not an image set")
    pool: LabelPool | None = None
    parents = [images.id]
    if config.labels == "stored":
        if labels is None:
            raise ConfigError("stored-label training needs a label store",
                              "pass --labels ID, or make one with `lpld relabel`")
        pool = LabelPool.open(labels)
        config = config.resolved(row_size=pool.batch_size)
        if pool.batch_size != config.batch_size:
            raise ConfigError(
                f"--batch-size {config.batch_size} differs from the label store's row size "
                f"{pool.batch_size}",
                f"stored rows replay whole batches: use --batch-size {pool.batch_size}, or "
                f"relabel with --batch-size {config.batch_size}")
        if pool.images_id != images.id:
            raise ConfigError(f"label store {labels.short} labels images "
                              f"{str(pool.images_id)[:12]}, not {images.short}",
                              "train on the label store's own images")
        if config.loss != "kl" and pool.encoding.is_topk:
            raise ConfigError(f"--loss {config.loss} needs full logits; label store "
                              f"{labels.short} holds {pool.encoding.describe()}",
                              "use --loss kl with top-k labels")
        config = replace(config, mix=pool.mix)  # stored rows carry their own augmentation
        stored_epochs = len(pool.sampler(config.seed).epochs)
        if pool.order == "sequential" and config.epochs > stored_epochs:
            warn(f"training runs {config.epochs} epochs over a label store of "
                 f"{stored_epochs} stored epoch(s): epoch e replays stored epoch "
                 f"e mod {stored_epochs}")
        parents.append(labels.id)
    elif config.labels == "online":
        if teacher is None:
            raise ConfigError("--labels online needs the teacher", "make one with `lpld squeeze`")
        if teacher.kind != "teacher":
            raise ConfigError(f"artifact {teacher.short} is a {teacher.kind}, not a teacher")
        parents.append(teacher.id)

    config = config.resolved()
    hit = None if force else store.cached("student", config.identity(), parents)
    if hit is not None:  # no need to load the dataset or build the network
        return hit
    dataset = images.selectors.get("dataset", config.dataset)
    if dataset != config.dataset:
        raise ConfigError(f"images {images.short} are {dataset}, not {config.dataset}")
    teacher_data = _teacher_data(store, pool, teacher, images)
    data = load_dataset(config.dataset, data_root, teacher_data)  # the teacher's geometry
    image_size = data.preset.image_size
    spec = model_spec(config.model, data.num_classes, data.preset.channels, image_size,
                      config.width, config.depth)
    check_input(build_model(spec), spec)
    norm = _normalisation(data, teacher_data)
    every = max(1, config.epochs // 10) if eval_every is None else eval_every

    def build(staging: Staging) -> dict[str, Any]:
        return _run(staging, config, spec, data, norm, images, pool, labels, teacher, device,
                    reporter, every, checkpoint_every)

    stored = labels is not None and pool is not None
    selectors = {"dataset": config.dataset, "ipc": images.selectors.get("ipc"),
                 "method": images.selectors.get("method"),
                 "ratio": labels.selectors.get("ratio", 1.0) if stored else None,
                 "granularity": labels.selectors.get("granularity") if stored else None,
                 "labels": config.labels, "model": config.model}
    return store.produce("student", config.identity(), parents, build, force=force,
                         resumable=True, selectors=selectors)


def _run(staging: Staging, config: TrainConfig, spec: dict[str, Any], data: Any,
         norm: dict[str, Any], images: Artifact, pool: LabelPool | None,
         labels: Artifact | None, teacher: Artifact | None, device: torch.device,
         reporter: Reporter, eval_every: int, checkpoint_every: float) -> dict[str, Any]:
    """Train the student in `staging` (resuming its checkpoint, writing one when
    `checkpoint_every` seconds have passed since the last); the manifest's metrics."""
    seed_everything(config.seed)
    student = _Student.build(config, spec, images, norm, pool, device)
    # before the checkpoint restores the RNG: building the teacher draws from it
    online = load_teacher(teacher, device).model if config.labels == "online" else None
    state = _load_checkpoint(staging, student.model, student.optimizer)
    start_epoch, history = state["epoch"], state["history"]
    step_seconds = state["step_seconds"]
    if start_epoch:
        reporter.log(f"resuming the student from epoch {start_epoch}/{config.epochs}")
    source = label_source(config, student.bank, spec["image_size"], pool, online, device,
                          start_epoch, state["label_seconds"], set(state["used_rows"]))
    student_t = _student_temperature(config, history)
    probe = _test_subset(data, PROBE_IMAGES)
    task = reporter.task("train student", config.epochs)
    task.advance(start_epoch)
    saved_at = time.perf_counter()
    student.model.train()
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            record, last = student.epoch(source, epoch, student_t)
            step_seconds += time.perf_counter() - started
            record["seconds"] = round(time.perf_counter() - started, 4)
            if config.student_temperature == "auto":
                if last is not None:  # LPQLD's CA on the epoch's last batch
                    student_t = calibrate_student_temperature(*last, record["temperature"])
                record["student_temperature_next"] = student_t
            if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < config.epochs:
                record["test_top1_subset"] = student.split.evaluate(probe, device)["top1"]
            history.append(record)
            if student.split.w.main and time.perf_counter() - saved_at >= checkpoint_every:
                _save_checkpoint(staging, student.model, student.optimizer, epoch + 1, history,
                                 source.used_rows, source.label_seconds, step_seconds)
                kill_point("train.checkpoint", epoch + 1)
                saved_at = time.perf_counter()
            fields = {"loss": record["loss"]}
            if "test_top1_subset" in record:
                fields["top1"] = record["test_top1_subset"]
            task.advance(1, **fields)
    finally:
        task.close()
        source.close()

    scores = student.split.evaluate(data, device)
    if not student.split.w.main:  # rank 0 writes the student
        return {}
    history[-1].update(scores)
    _write_student(staging, student.model, spec, history)
    reporter.log(f"student top-1 {scores['top1']:.4f} on {config.dataset} test")
    return {**scores, "epochs": config.epochs, "steps": sum(r["steps"] for r in history),
            "images": len(student.bank),
            "label_rows": pool.rows if pool is not None else 0,
            "label_rows_used": len(source.used_rows),
            "label_pool_bytes": (labels.payload_bytes
                                 if pool is not None and labels is not None else 0),
            "label_wait_share": (round(source.label_seconds / step_seconds, 4)
                                 if step_seconds else 0.0),
            "student_temperature_last": history[-1].get("student_temperature"),
            "train_seconds": round(step_seconds, 3),
            "epoch_seconds": [r.get("seconds") for r in history]}


def _student_temperature(config: TrainConfig, history: list[dict[str, Any]]) -> float | None:
    """The student's temperature at the next epoch (None: the teacher's). LPQLD's CA starts
    from t = 1 and re-calibrates after every epoch (a resumed run takes the last value)."""
    if config.student_temperature == "same":
        return None
    if config.student_temperature == "auto":
        return history[-1]["student_temperature_next"] if history else 1.0
    return float(config.student_temperature)


def _write_student(staging: Staging, model: nn.Module, spec: dict[str, Any],
                   history: list[dict[str, Any]]) -> None:
    """The student's payload: weights, architecture and per-epoch metrics (no timings)."""
    save_weights(staging.path / "weights.safetensors", model)
    (staging.path / "model.json").write_text(json.dumps(spec, indent=2))
    # timings go to the manifest's metrics, never into a hashed payload file (DESIGN §4)
    (staging.path / "metrics.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) + "\n"
        for r in history))
    (staging.path / CHECKPOINT).unlink(missing_ok=True)  # none when the run was short


# ------------------------------------------------------------------ the label sources
class LabelSource:
    """Where a student's rows and their targets come from, epoch by epoch: one interface
    for the three label modes (a distributed sampler replaces this object).

    `epoch(e)` yields `(row, target)` for each step of epoch `e`: the target is a
    `SoftTarget` over the row's valid slots on the training device, or None (hard labels).
    `label_seconds` is the time spent waiting for targets; `used_rows` the stored rows read.
    """

    def __init__(self, label_seconds: float = 0.0, used_rows: set[int] | None = None) -> None:
        self.label_seconds = label_seconds
        self.used_rows: set[int] = used_rows if used_rows is not None else set()

    def epoch(self, epoch: int) -> Iterator[tuple[Row, SoftTarget | None]]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop any background work."""


class StoredLabels(LabelSource):
    """Rows of the label pool in the sampler's order, read ahead by a `Prefetcher`."""

    def __init__(self, pool: LabelPool, seed: int, start_epoch: int, epochs: int,
                 device: torch.device, label_seconds: float = 0.0,
                 used_rows: set[int] | None = None) -> None:
        super().__init__(label_seconds, used_rows)
        self.device = device
        self.prefetch = Prefetcher(pool, pool.sampler(seed), start_epoch, epochs,
                                   pin=device.type == "cuda")

    def epoch(self, epoch: int) -> Iterator[tuple[Row, SoftTarget | None]]:
        wait_before = self.prefetch.wait_seconds
        for batch in self.prefetch.epoch(epoch):
            yield batch.row, batch.target[:batch.row.valid].to(self.device, non_blocking=True)
        self.label_seconds += self.prefetch.wait_seconds - wait_before
        self.used_rows |= self.prefetch.used_rows

    def close(self) -> None:
        self.prefetch.close()


class DrawnRows(LabelSource):
    """Fresh rows of `epoch_rows` (the `stream` of `seed`); hard labels: no target."""

    def __init__(self, config: TrainConfig, images: int, image_size: int, stream: str,
                 label_seconds: float = 0.0) -> None:
        super().__init__(label_seconds)
        self.config, self.images, self.image_size, self.stream = (config, images, image_size,
                                                                   stream)

    def rows(self, epoch: int) -> Iterator[Row]:
        c = self.config
        return epoch_rows(self.images, c.batch_size, self.image_size, c.mix, c.seed, epoch,
                          self.stream)

    def epoch(self, epoch: int) -> Iterator[tuple[Row, SoftTarget | None]]:
        return ((row, None) for row in self.rows(epoch))


class OnlineLabels(DrawnRows):
    """Fresh rows labelled by the teacher at every step (nothing stored: the upper bound)."""

    def __init__(self, config: TrainConfig, bank: ImageBank, image_size: int,
                 teacher: nn.Module, device: torch.device, label_seconds: float = 0.0) -> None:
        stream = "online" if (config.online_stream or "fresh") == "fresh" else "relabel"
        super().__init__(config, len(bank), image_size, stream, label_seconds)
        self.bank, self.teacher, self.device = bank, teacher, device

    def epoch(self, epoch: int) -> Iterator[tuple[Row, SoftTarget | None]]:
        for row in self.rows(epoch):
            t0 = time.perf_counter()
            logits = teacher_logits(self.teacher, self.bank, row, self.device,
                                    self.config.precision)
            self.label_seconds += time.perf_counter() - t0
            yield row, SoftTarget(logits=logits[:row.valid])


def label_source(config: TrainConfig, bank: ImageBank, image_size: int,
                 pool: LabelPool | None, teacher: nn.Module | None, device: torch.device,
                 start_epoch: int = 0, label_seconds: float = 0.0,
                 used_rows: set[int] | None = None) -> LabelSource:
    """The label source of `config.labels` (resuming at `start_epoch` with its counters)."""
    if config.labels == "stored":
        if pool is None:
            raise ValueError("stored labels need the label pool")
        return StoredLabels(pool, config.seed, start_epoch, config.epochs, device,
                            label_seconds, used_rows)
    if config.labels == "online":
        if teacher is None:
            raise ValueError("online labels need the teacher")
        return OnlineLabels(config, bank, image_size, teacher, device, label_seconds)
    return DrawnRows(config, len(bank), image_size, "relabel", label_seconds)


# ------------------------------------------------------------------- one epoch
@dataclass
class _Student:
    """The student network with its optimizer, loss and images: what a step needs."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    split: RowSplit  # this rank's slots of each row (DDP); the whole row on one process
    loss: Any  # models.losses.student_loss(config.loss)
    bank: ImageBank
    classes: torch.Tensor
    contract: int  # the replay contract of the rows' label store
    image_size: int
    device: torch.device

    @classmethod
    def build(cls, config: TrainConfig, spec: dict[str, Any], images: Artifact,
              norm: dict[str, Any], pool: LabelPool | None, device: torch.device) -> _Student:
        model = build_model(spec).to(device)
        optimizer = _optimizer(model, config)
        pixels, classes, _ = load_image_set(images.path)
        if pixels.shape[-1] != spec["image_size"] or pixels.shape[1] != spec["in_chans"]:
            raise ConfigError(f"images {images.short} are {pixels.shape[1]}×"
                              f"{pixels.shape[-1]}px, the dataset's are {spec['in_chans']}×"
                              f"{spec['image_size']}px")
        # uint8, normalised per batch (as relabel does: the teacher's mean/std)
        bank = ImageBank(pixels, norm["mean"], norm["std"], device)
        return cls(config, model, optimizer, RowSplit(model, device, config.sync_bn),
                   student_loss(config.loss), bank, classes.to(device),
                   pool.replay if pool is not None else CONTRACT, spec["image_size"], device)

    def epoch(self, source: LabelSource, epoch: int, student_t: float | None
              ) -> tuple[dict[str, Any], tuple[torch.Tensor, SoftTarget] | None]:
        """One epoch of steps over `source`: its record, and the last step's (student
        logits, target) for LPQLD's calibration (None without soft targets)."""
        config, split = self.config, self.split
        lr = _lr_at(config, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        temperature = config.temperature_at(epoch)
        hard = config.hard_epoch(epoch)  # HALD's hard-label phase
        total_loss, steps = 0.0, 0
        last: tuple[torch.Tensor, SoftTarget] | None = None
        for row, target in source.epoch(epoch):
            x = (split.pixels(self.bank, row, self.image_size, self.contract)
                 if split.w.distributed
                 else student_batch(self.bank, row, self.image_size, self.contract))
            with precision_autocast(self.device, config.precision):
                out = split.net(x)
            out = split.whole(out.float(), row.valid)  # every rank's slots: the whole row
            y = self.classes[row.image_index[:row.valid].to(self.device, torch.long)]
            loss = self.loss(out, None if hard else target, y, row, temperature, student_t)
            if not hard and target is not None and config.loss == "kl":
                last = (out.detach(), target)
            self.optimizer.zero_grad(set_to_none=True)
            split.backward(loss)
            self.optimizer.step()
            total_loss += float(loss.detach())
            steps += 1
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total_loss / max(steps, 1),
                                  "lr": lr, "steps": steps}
        if config.labels != "hard":
            record.update(temperature=temperature, hard=hard,
                          student_temperature=student_t or temperature)
        return record, last


def _test_subset(data: RealData, n: int) -> RealData:
    """The same dataset with only its first `n` test images."""
    if data.in_memory:
        return replace(data, test_images=data.test_images[:n], test_labels=data.test_labels[:n])
    return replace(data, test=Subset(data.test, range(min(n, len(data.test)))))


def _teacher_data(store: Store, pool: LabelPool | None, teacher: Artifact | None,
                  images: Artifact) -> dict[str, Any] | None:
    """The labelling teacher's data.json (dataset geometry, mean/std), if it is in the store."""
    candidates = [teacher.id if teacher is not None else None,
                  pool.teacher_id if pool is not None else None, *images.parents]
    for ref in candidates:
        found = store.find("teacher", ref) if ref else None
        if found is not None:
            return json.loads(found.file("data.json").read_text())
    return None


def _normalisation(data: Any, teacher_data: dict[str, Any] | None) -> dict[str, Any]:
    """The mean/std relabel normalised these images with: the labelling teacher's."""
    if teacher_data is not None:
        return {"mean": teacher_data["mean"], "std": teacher_data["std"]}
    warn(f"the teacher that labelled these images is not in the store: normalising them "
         f"with the {data.name} preset's mean/std {list(data.preset.mean)}/"
         f"{list(data.preset.std)} instead")
    return {"mean": list(data.preset.mean), "std": list(data.preset.std)}


# ---------------------------------------------------------------- checkpoints
def checkpoint_seconds() -> float:
    """Seconds of training between two student checkpoints: `$LPLD_CHECKPOINT_SECONDS`
    (0: after every epoch), else CHECKPOINT_SECONDS."""
    raw = os.environ.get(CHECKPOINT_ENV, "").strip()
    if not raw:
        return CHECKPOINT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{CHECKPOINT_ENV} must be a number of seconds (got {raw!r})",
                          "0 writes a checkpoint after every epoch; unset it for "
                          f"{CHECKPOINT_SECONDS:g} s") from None
    at_least(CHECKPOINT_ENV, value, 0)  # finite: inf and nan are refused too
    return value


def _save_checkpoint(staging: Staging, model: nn.Module, optimizer: torch.optim.Optimizer,
                     epoch: int, history: list[dict[str, Any]], used_rows: set[int],
                     label_seconds: float, step_seconds: float) -> None:
    """The state after `epoch` epochs, written atomically (temp file, then rename)."""
    buffer = io.BytesIO()  # serialised first: a full disk then raises OSError, not RuntimeError
    torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
                "used_rows": sorted(used_rows), "label_seconds": label_seconds,
                "step_seconds": step_seconds}, buffer)
    write_atomic(staging.path / CHECKPOINT, buffer.getvalue())


def _load_checkpoint(staging: Staging, model: nn.Module,
                     optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the last epoch checkpoint left in staging, if any."""
    fresh = {"epoch": 0, "history": [], "used_rows": [], "label_seconds": 0.0,
             "step_seconds": 0.0}
    path = Path(staging.path) / CHECKPOINT
    if not staging.resumed or not path.is_file():
        return fresh
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:  # written atomically, so only outside damage gets here
        warn(f"the student checkpoint {path} is unreadable ({exc.__class__.__name__}): "
             "training restarts from epoch 0")
        path.unlink(missing_ok=True)
        return fresh
    torch.set_rng_state(state["torch_rng"])
    return {"epoch": int(state["epoch"]), "history": json.loads(state["history"]),
            "used_rows": list(state["used_rows"]), "label_seconds": state["label_seconds"],
            "step_seconds": state["step_seconds"]}


# ------------------------------------------------------------- resolving the inputs
def resolve_labels(store: Store, ratio: float, newest: bool = False,
                   **selectors: Any) -> Artifact:
    """The label store at `ratio` (1.0: unpruned) matching `selectors`.

    None at a pruned ratio: the error names `lpld prune`, not `lpld relabel`. Several:
    an error listing them, unless `newest` takes the newest.
    """
    wanted = {k: v for k, v in selectors.items() if v is not None}
    try:
        return select(store, "labels", newest=newest, where=lambda a: math.isclose(
            float(a.selectors.get("ratio") or 1.0), ratio, rel_tol=1e-9), **wanted)
    except ArtifactNotFoundError:
        if math.isclose(ratio, 1.0):
            raise
        what = ", ".join(f"{k}={v}" for k, v in wanted.items())
        raise ArtifactNotFoundError(
            f"no label store pruned to {ratio:g}x in store {store.root}"
            + (f" with {what}" if what else ""),
            f"make one with `lpld prune --ratio {ratio:g}x`") from None


def label_images(store: Store, labels: Artifact) -> Artifact:
    """The image set a label store labels (its `images_id` attribute)."""
    pool = LabelPool.open(labels)
    found = store.find("images", str(pool.images_id))
    if found is None:
        raise ArtifactNotFoundError(
            f"label store {labels.short} labels images {str(pool.images_id)[:12]}, which are "
            f"not in store {store.root}", "recover them again with `lpld recover`")
    return store.get(found.id, kind="images")


def image_teacher(store: Store, images: Artifact) -> Artifact:
    """The teacher an image set was recovered from (its `teacher` selector or parent)."""
    for ref in (images.selectors.get("teacher"), *images.parents):
        if ref and store.find("teacher", ref) is not None:
            return store.get(ref, kind="teacher")
    raise ArtifactNotFoundError(f"the teacher of images {images.short} is not in store "
                                f"{store.root}", "make one with `lpld squeeze`")


stage_module(__name__)  # `lpld_cli.train(...)` calls train() above
