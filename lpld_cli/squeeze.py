"""Squeeze: train (or load) the teacher, evaluate it, compute class-wise BN statistics.

Every random draw is keyed by the seed: the network's initialisation, each epoch's
batch order and each batch's augmentation (`RealData.batches`), so the same command
gives the same teacher bytes on one machine. Under torchrun the teacher trains with
DistributedDataParallel, each rank taking its slice of every batch (the world size is
then part of the identity: BatchNorm sees per-rank batches); the `exact` class-wise
statistics are the same bits for any world size (models/bn_stats.py), `ema` runs on
rank 0 alone (one ordered pass).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpld_cli import dist, stage_module
from lpld_cli.checks import at_least, fill, fraction, one_of, positive
from lpld_cli.data.datasets import RealData, load_dataset, load_imagefolder
from lpld_cli.data.geometry import FolderInfo, inspect_folder, recipe_for
from lpld_cli.data.presets import DATASETS, Preset, get_preset
from lpld_cli.device import autocast, seed_everything
from lpld_cli.errors import ConfigError, DataNotFoundError
from lpld_cli.models.bn_stats import BN_STATS_MODES, bn_layers, class_bn_stats
from lpld_cli.models.evaluate import evaluate, topk_correct
from lpld_cli.models.factory import (
    build_model,
    check_input,
    decay_groups,
    load_weights,
    model_spec,
)
from lpld_cli.models.schedule import cosine_decay
from lpld_cli.models.teacher import save_teacher
from lpld_cli.models.zoo import model_key
from lpld_cli.progress import SILENT, Reporter
from lpld_cli.storage.store import Artifact, Store, sha256_file


@dataclass(frozen=True)
class SqueezeConfig:
    # data and network (model None: the dataset preset's teacher)
    dataset: str = "fashion-mnist"
    model: str | None = None
    width: int = 64  # convnet only
    depth: int = 3  # convnet only
    # a given teacher (sha256 of --weights) replaces training
    weights_sha256: str | None = None
    # the teacher's training recipe (SGD + Nesterov, cosine per step); None: the preset's
    teacher_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None  # ImageNet-21K-P: 0.2 (paper Table 16)
    # class-wise statistics: "exact" (pooled) or "ema" (the authors' per-batch EMA)
    bn_stats: str = "exact"
    # only this many (seeded, random) training images: quick first tries and tests
    train_subset: int | None = None
    seed: int = 0
    # ranks the teacher trained on (DDP splits every batch; BatchNorm sees each slice)
    world_size: int = 1
    # imagefolder only: the geometry used, the preset whose recipe runs, the data's hash
    image_size: int | None = None
    channels: int | None = None
    recipe: str | None = None
    data_sha256: str | None = None

    def validate(self) -> None:
        """Check every given value (None: unset, the preset decides)."""
        DATASETS.check(self.dataset)
        if self.model is not None:
            model_key(self.model)
        at_least("--width", self.width, 1)
        at_least("--depth", self.depth, 1)
        if self.teacher_epochs is not None and self.teacher_epochs < 1 and (
                self.weights_sha256 is None):
            raise ConfigError(f"--teacher-epochs must be at least 1 (got {self.teacher_epochs})",
                              "or pass --weights to use a trained teacher")
        at_least("--teacher-epochs", self.teacher_epochs, 0)
        at_least("--batch-size", self.batch_size, 1)
        positive("--lr", self.lr)
        at_least("weight decay", self.weight_decay, 0)
        fraction("label smoothing", self.label_smoothing)
        one_of("--bn-stats", self.bn_stats, BN_STATS_MODES)
        at_least("--train-subset", self.train_subset, 1)
        at_least("--seed", self.seed, 0)
        if (self.weights_sha256 is None and self.batch_size is not None
                and self.batch_size < self.world_size):
            raise ConfigError(f"--batch-size {self.batch_size} is smaller than the "
                              f"{self.world_size} ranks that split each batch")
        folder = (self.image_size, self.channels, self.recipe)
        if self.dataset != "imagefolder" and any(v is not None for v in folder):
            raise ConfigError("--image-size, --channels and --preset are for --dataset "
                              "imagefolder", "the built-in datasets have their own preset")
        if self.recipe is not None:
            get_preset(self.recipe)  # an unknown name is a ConfigError

    def resolved(self, preset: Preset | None = None) -> SqueezeConfig:
        """Unset fields take the preset's value (the imagefolder recipe's; validates first)."""
        self.validate()
        p = preset or get_preset(self.recipe or self.dataset)
        out = fill(self, model=p.teacher_model, teacher_epochs=p.teacher_epochs,
                   batch_size=p.teacher_batch_size, lr=p.teacher_lr,
                   weight_decay=p.teacher_weight_decay, label_smoothing=p.label_smoothing)
        out.validate()  # the cross-field checks, now that every field is set
        return out

    def identity(self) -> dict[str, Any]:
        """What names the teacher: the resolved config; the world size only where it changes
        it, label smoothing and the imagefolder fields only when set (the ids of the
        built-in datasets stay as they were)."""
        out = asdict(self.resolved())
        if self.world_size == 1 or self.weights_sha256 is not None:
            out.pop("world_size")  # one process, or given weights: exact stats, any N
        if not out["label_smoothing"]:
            out.pop("label_smoothing")
        for key in ("image_size", "channels", "recipe", "data_sha256"):
            if out[key] is None:
                out.pop(key)
        return out


def squeeze(store: Store, config: SqueezeConfig, *, data_root: str | None = None,
            weights: str | Path | None = None, device: torch.device | None = None,
            force: bool = False, reporter: Reporter = SILENT) -> Artifact:
    """Make (or find) the teacher artifact for `config`."""
    device = device or torch.device("cpu")
    w = dist.world()
    if weights is not None:
        if not Path(weights).is_file():
            raise ConfigError(f"--weights {weights} does not exist", "pass a local weights file")
        config = replace(config, weights_sha256=sha256_file(Path(weights)))
    config = replace(config, world_size=1 if weights is not None else w.size)
    config.validate()
    info = None
    if config.dataset == "imagefolder" and config.data_sha256 is None:
        config, info = folder_config(config, data_root)
    config = config.resolved()
    if not force and (hit := store.cached("teacher", config.identity(), [])) is not None:
        return hit  # same inputs: skip loading data and building the network
    if config.dataset == "imagefolder":
        data = load_imagefolder(data_root, {"image_size": config.image_size,
                                            "channels": config.channels,
                                            "recipe": config.recipe}, info)
    else:
        data = load_dataset(config.dataset, data_root)
    if config.train_subset is not None:
        data = data.subset(config.train_subset, config.seed)
    spec = model_spec(config.model, data.num_classes, data.preset.channels,
                      data.preset.image_size, config.width, config.depth)
    seed_everything(config.seed)  # the initialisation is part of what the seed fixes
    model = build_model(spec)
    check_input(model, spec)
    if not bn_layers(model):
        raise ConfigError(f"model {config.model} has no BatchNorm2d layers",
                          "squeeze needs a network with BN layers")
    if weights is not None:
        load_weights(model, weights)

    def build(staging) -> dict:
        model.to(device)
        seen = 0
        if weights is None:
            seen = _train_teacher(model, data, config, device, reporter, w)
        scores = evaluate(model, data, device, reporter=reporter, world=w)
        reporter.log(f"teacher top-1 {scores['top1']:.4f} on {data.name} test")
        stats = _class_stats(model, data, config, device, reporter, w)
        if not w.main:
            return {}
        save_teacher(staging.path, model, spec, _data_info(data, config.recipe, data_root),
                     stats)
        bn_images = int(next(iter(stats.values())).count.sum())
        return {**scores, "images_seen": seen, "bn_images": bn_images}

    recipe = {"recipe": config.recipe} if config.recipe else {}
    return store.produce("teacher", config.identity(), [], build, force=force,
                         selectors={"dataset": config.dataset, "model": config.model,
                                    "bn_stats": config.bn_stats, **recipe})


def folder_config(config: SqueezeConfig, data_root: str | None
                  ) -> tuple[SqueezeConfig, FolderInfo]:
    """An imagefolder config completed from the data: geometry, recipe, content hash."""
    if data_root is None:
        raise DataNotFoundError("--data is required for imagefolder",
                                "pass the folder holding train/ and val/")
    info = inspect_folder(data_root, config.image_size, config.channels)
    return replace(config, image_size=info.image_size, channels=info.channels,
                   recipe=config.recipe or recipe_for(info.image_size),
                   data_sha256=info.sha256), info


def _data_info(data: RealData, recipe: str | None = None, root: str | None = None) -> dict:
    p = data.preset
    info = {"dataset": data.name, "class_names": data.class_names, "image_size": p.image_size,
            "channels": p.channels, "mean": list(p.mean), "std": list(p.std)}
    if recipe:  # an imagefolder: later stages read the folder from here unless given --data
        info.update(recipe=recipe, root=str(Path(root).resolve()) if root else None)
    return info


STATS_BATCH = 256  # the class-statistics pass: fixed, so its batches never change


def _class_stats(model: nn.Module, data: RealData, config: SqueezeConfig,
                 device: torch.device, reporter: Reporter, w: dist.World):
    """The class-wise statistics pass over the seeded, augmented training batches."""
    if config.bn_stats == "ema" and w.distributed:
        w_pass = dist.SINGLE  # the EMA is defined by one ordered pass: rank 0 runs it
        if not w.main:
            return None
    else:
        w_pass = w
    batches = data.batches("train", STATS_BATCH, device, augment=True, shuffle=True,
                           seed=config.seed, stream="bn-stats", rank=w_pass.rank,
                           world=w_pass.size)
    total = -(-data.num_batches("train", STATS_BATCH) // w_pass.size)
    return class_bn_stats(model, batches, data.num_classes, config.bn_stats, total=total,
                          reporter=reporter, world=w_pass)


def _train_teacher(model: nn.Module, data: RealData, config: SqueezeConfig,
                   device: torch.device, reporter: Reporter, w: dist.World) -> int:
    """SGD with Nesterov momentum and a per-step cosine schedule; returns images seen.

    Under N ranks each takes its slice of every batch; each rank's loss is its slice's
    summed cross-entropy × N / batch, so DDP's averaged gradient is the whole batch's.
    """
    steps_per_epoch = data.num_batches("train", config.batch_size)
    total = config.teacher_epochs * steps_per_epoch
    net: nn.Module = model
    if w.distributed:
        # harmless for 1-channel inputs (a [C, 1, k, k] grad's strides): not for users
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(decay_groups(model, config.weight_decay),
                                lr=config.lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_decay(1.0, step, total))
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=config.label_smoothing)
    seen = 0
    model.train()
    task = reporter.task("train teacher", total)
    start = time.perf_counter()
    for epoch in range(config.teacher_epochs):
        correct = 0
        count = 0
        sizes = [len(b) for b in data.batch_plan("train", config.batch_size, False, 0)
                 if len(b) >= w.size]  # batch sizes (any order); slices skip smaller ones
        for (x, y), size in zip(data.batches(
                "train", config.batch_size, device, augment=True, shuffle=True,
                seed=config.seed, stream="teacher", epoch=epoch, rank=w.rank, world=w.size,
                slices=True), sizes, strict=True):
            with autocast(device):
                logits = net(x)
                loss = loss_fn(logits.float(), y) * (w.size / size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += size
            correct += topk_correct(logits, y, 1)
            count += len(y)
            task.advance(1, loss=float(loss.detach()) / w.size, acc=correct / count,
                         epoch=epoch + 1)
        reporter.log(f"teacher epoch {epoch + 1}/{config.teacher_epochs}: train acc "
                     f"{correct / count:.4f} ({time.perf_counter() - start:.0f}s)")
    task.close()
    if w.distributed:  # every rank continues with rank 0's running statistics
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)
    return seen


stage_module(__name__)  # `lpld_cli.squeeze(...)` calls squeeze() above
