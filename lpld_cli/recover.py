"""Recover: synthesise IPC images per class from the teacher (paper §3.3.1, Eq. 6).

Every image starts as Gaussian noise in the normalised space and is optimised with
Adam (betas 0.5/0.9) under a cosine learning-rate schedule. Each iteration draws one
RandomResizedCrop + flip and one random roll (jitter) per *unit*, runs the teacher
(eval mode: its global running statistics only normalise), and minimises

    CE(teacher(x), y) + r_bn · Σ_l w_l (‖μ_l(x) − μ*_l‖₂ + ‖σ²_l(x) − σ²*_l‖₂)

with w_l = first_bn_multiplier for the first BN layer, 1 otherwise; μ_l, σ²_l are
the (biased) batch statistics of the BN layer's *input*, captured by forward
pre-hooks. Pixels are clamped to the valid range after each step; the last
iterate is kept.

A unit is what the authors optimise as one batch:

- `--batching class` (LPLD): the IPC images of one class;
- `--batching mixed` (SRe²L, CDA): one image of each class of a group of classes.

Its BN target is the class-wise statistics from squeeze (`--bn-target class`; for a
mixed unit, the mixture of its classes' statistics) or the global running
statistics (`--bn-target global`). In eval mode images never interact across units,
so `classes_per_step` units are stacked into one forward pass, each with its own
slice for the BN term, its own CE mean and its own seeded noise and augmentation
stream: the result equals one unit per step (the authors' loop), only faster.

Work is saved class by class (atomic class folders in the resumable staging
folder): an interrupted run resumes at the next unfinished class.

Under torchrun the jobs (the classes finished together, DESIGN §7 "step groups") are
dealt to the ranks, job j to rank j mod N; each rank saves its own classes. A unit's
result depends only on (seed, unit), so with an explicit `--classes-per-step` the PNG
bytes are the same for any world size, and a run resumes with any world size.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from lpld_cli import dist, stage_module
from lpld_cli.data.augment import CROP_SCALE, normalise, resized_crop, sample_crop_boxes
from lpld_cli.data.datasets import load_dataset
from lpld_cli.data.presets import Preset, get_preset
from lpld_cli.device import autocast
from lpld_cli.errors import ConfigError
from lpld_cli.models.bn_stats import bn_layers
from lpld_cli.models.evaluate import topk_correct
from lpld_cli.models.recover_methods import RECOVER_METHODS
from lpld_cli.models.schedule import cosine_decay
from lpld_cli.models.teacher import Teacher, load_teacher
from lpld_cli.progress import SILENT, Reporter
from lpld_cli.storage.images import (
    done_classes,
    load_image_set,
    save_class,
    to_uint8,
    write_class_names,
)
from lpld_cli.storage.store import Artifact, Store

BATCHINGS = ("class", "mixed")
BN_TARGETS = ("class", "global")
CROP_SCHEDULES = ("fixed", "cosine")
# Pixels per optimisation step when --classes-per-step is not given: ~330 images of
# 28 px on a CPU; ~100 images of 224 px (the authors' SRe²L batch) on a GPU.
_PIXEL_BUDGET = {"cpu": 1 << 18, "cuda": 100 * 224 * 224}


@dataclass(frozen=True)
class RecoverConfig:
    ipc: int = 10
    method: str = "lpld"
    # None: the method's default (models/recover_methods.py)
    batching: str | None = None
    bn_target: str | None = None
    crop_schedule: str | None = None
    # None: the dataset preset's value
    iterations: int | None = None
    lr: float | None = None
    r_bn: float | None = None
    first_bn_multiplier: float | None = None
    jitter: int | None = None
    # classes in one mixed batch (SRe²L/CDA use batches of 100 classes)
    mixed_batch: int = 100
    # the teacher's dataset (filled in by recover)
    dataset: str | None = None
    seed: int = 0
    # Units (classes under class batching, mixed batches under mixed batching) optimised
    # in one forward pass. Part of the identity: the forward's batch shape can change the
    # last bits, and so the PNG bytes. None: recover resolves it from the device's pixel
    # budget (`units_per_step`) before the id is made.
    classes_per_step: int | None = None

    def validate(self) -> None:
        if self.ipc < 1:
            raise ConfigError(f"--ipc must be at least 1 (got {self.ipc})",
                              "images per class, e.g. --ipc 10")
        RECOVER_METHODS.check(self.method)
        if self.batching is not None and self.batching not in BATCHINGS:
            raise ConfigError(f"unknown --batching {self.batching!r}", "choose class or mixed")
        if self.bn_target is not None and self.bn_target not in BN_TARGETS:
            raise ConfigError(f"unknown --bn-target {self.bn_target!r}",
                              "choose class or global")
        if self.crop_schedule is not None and self.crop_schedule not in CROP_SCHEDULES:
            raise ConfigError(f"unknown crop schedule {self.crop_schedule!r}",
                              "choose fixed or cosine")
        checks = [("--iterations", self.iterations, 1), ("--jitter", self.jitter, 0),
                  ("--classes-per-step", self.classes_per_step, 1),
                  ("--mixed-batch", self.mixed_batch, 1), ("--seed", self.seed, 0)]
        for name, value, low in checks:
            if value is not None and value < low:
                raise ConfigError(f"{name} must be at least {low} (got {value})")
        for name, value in (("--r-bn", self.r_bn),
                            ("--first-bn-multiplier", self.first_bn_multiplier)):
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number ≥ 0 (got {value})")
        if self.lr is not None and (self.lr <= 0 or not math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number (got {self.lr})")

    def resolved(self, preset: Preset, dataset: str) -> RecoverConfig:
        """Fill in the method's and the preset's defaults (validates first)."""
        self.validate()
        method = RECOVER_METHODS.get(self.method)
        if not method.synthesises:  # real images: the synthesis knobs do not apply
            return replace(self, batching=None, bn_target=None, crop_schedule=None,
                           iterations=None, lr=None, r_bn=None, first_bn_multiplier=None,
                           jitter=None, dataset=dataset)

        def pick(value, default):
            return default if value is None else value

        return replace(
            self, dataset=dataset,
            batching=pick(self.batching, method.batching),
            bn_target=pick(self.bn_target, method.bn_target),
            crop_schedule=pick(self.crop_schedule, method.crop_schedule),
            iterations=pick(self.iterations, preset.recover_iterations),
            lr=pick(self.lr, preset.recover_lr), r_bn=pick(self.r_bn, preset.r_bn),
            first_bn_multiplier=pick(self.first_bn_multiplier, preset.first_bn_multiplier),
            jitter=pick(self.jitter, preset.jitter))

    def identity(self) -> dict:
        """The config that names the artifact (recover resolves `classes_per_step` first)."""
        out = asdict(self)
        if self.batching != "mixed":
            out.pop("mixed_batch")
        if self.batching is None:  # real images: no forward pass
            out.pop("classes_per_step")
        return out


@dataclass
class Unit:
    """Images optimised as one batch of the authors' loop, with their BN targets."""

    key: str  # seeds the unit's own noise and augmentation stream
    labels: torch.Tensor  # int64 [n]: the class of each image
    target_mean: list[torch.Tensor]  # per BN layer: [C]
    target_var: list[torch.Tensor]

    @property
    def size(self) -> int:
        return len(self.labels)


def unit_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed from (seed, unit key): independent of the step layout."""
    digest = hashlib.sha256(f"lpld-recover:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def bn_targets(teacher: Teacher, classes: list[int], target: str
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The BN target of a unit holding `classes` (equal counts), per layer.

    `global`: the teacher's running statistics. `class`: the class-wise statistics;
    for several classes, the mixture's mean and variance (E[σ²] + Var[μ]).
    """
    layers = bn_layers(teacher.model)
    means, variances = [], []
    for name, bn in layers.items():
        if target == "global":
            means.append(bn.running_mean.detach().float())
            variances.append(bn.running_var.detach().float())
            continue
        stats = teacher.class_stats[name]
        empty = [c for c in classes if float(stats.count[c]) <= 0]
        if empty:  # its statistics are zeros, not a target
            raise ConfigError(
                f"class {empty[0]} has no samples in teacher {teacher.artifact_id[:12]}'s "
                f"class-wise BN statistics (layer {name})",
                "squeeze with more training images (--train-subset), or recover with "
                "--bn-target global")
        idx = torch.tensor(classes, device=stats.mean.device)
        mu, var = stats.mean[idx].float(), stats.var[idx].float()
        mean = mu.mean(0)
        means.append(mean)
        variances.append((var + mu.square()).mean(0) - mean.square())
    return means, variances


def class_unit(teacher: Teacher, c: int, ipc: int, target: str) -> Unit:
    mean, var = bn_targets(teacher, [c], target)
    return Unit(f"class:{c}", torch.full((ipc,), c, dtype=torch.int64), mean, var)


def mixed_unit(teacher: Teacher, group: list[int], k: int, target: str) -> Unit:
    mean, var = bn_targets(teacher, group, target)
    return Unit(f"mixed:{group[0]}-{group[-1]}:{k}", torch.tensor(group, dtype=torch.int64),
                mean, var)


def _roll(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """torch.roll by (dy[i], dx[i]) for each image i, batched (two gathers)."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None] - dy[:, None]) % h  # [n, h]
    cols = (torch.arange(w, device=x.device)[None] - dx[:, None]) % w  # [n, w]
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def bn_terms(captured: list[tuple[int, torch.Tensor]], k: int,
             target_mean: list[torch.Tensor], target_var: list[torch.Tensor]
             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The BN matching terms of Eq. 6 per layer and unit, before r_bn and the layer weight.

    captured: (layer index l, layer l's input [k·n, C, h, w]) in forward order, k units of
    n images; target_*[l]: [k, C]. Returns ([‖μ_l − μ*_l‖₂], [‖σ²_l − σ²*_l‖₂]), each a list
    of [k] tensors in captured order, μ_l / σ²_l the biased batch statistics of each
    unit's slice (as BN computes them).
    """
    means, variances = [], []
    for i, inp in captured:
        feats = inp.float().reshape(k, -1, inp.shape[1], inp[0, 0].numel())  # [k, n, C, h·w]
        var, mu = torch.var_mean(feats, dim=(1, 3), correction=0)
        means.append(torch.linalg.vector_norm(mu - target_mean[i], dim=1))
        variances.append(torch.linalg.vector_norm(var - target_var[i], dim=1))
    return means, variances


# on_terms(iteration, images, ce [k], mean terms [L][k], variance terms [L][k]): the
# objective's parts of every unit at each iteration (BN layers in forward order, the first
# one weighted by first_bn_multiplier in the loss), measured before the step (detached).
TermsHook = Callable[[int, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]],
                     None]


def synthesize(teacher: Teacher, config: RecoverConfig, units: list[Unit],
               device: torch.device,
               on_iteration: Callable[[int, float], None] | None = None,
               on_terms: TermsHook | None = None) -> torch.Tensor:
    """Optimise `units` (all the same size) together; their normalised images, in order.

    Each unit's result does not depend on which units share its step. `on_terms`
    (measurement only: benchmarks/mechanism.py) sees each iteration's loss terms.
    """
    if len({u.size for u in units}) != 1:
        raise ValueError("units in one step must have the same size")
    model, data = teacher.model, teacher.data
    k, n = len(units), units[0].size
    channels, size = data["channels"], data["image_size"]
    generators = [torch.Generator().manual_seed(unit_seed(config.seed, u.key)) for u in units]
    x = torch.cat([torch.randn(n, channels, size, size, generator=g) for g in generators])
    x = x.to(device).requires_grad_(True)
    labels = torch.cat([u.labels for u in units]).to(device)
    layers = list(bn_layers(model).values())
    target_mean = [torch.stack([u.target_mean[i] for u in units]).to(device)
                   for i in range(len(layers))]
    target_var = [torch.stack([u.target_var[i] for u in units]).to(device)
                  for i in range(len(layers))]
    mean = torch.tensor(data["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(data["std"], device=device).view(1, -1, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std

    # (layer index, input) in the order the forward pass reaches the BN layers: targets are
    # matched by layer, the first-layer weight goes to the first layer reached
    captured: list[tuple[int, torch.Tensor]] = []
    hooks = [bn.register_forward_pre_hook(
        lambda _m, inp, i=i: captured.append((i, inp[0]))) for i, bn in enumerate(layers)]
    names = list(bn_layers(model))
    optimizer = torch.optim.Adam([x], lr=config.lr, betas=(0.5, 0.9), eps=1e-8)
    iterations = config.iterations
    try:
        for it in range(iterations):
            cosine = cosine_decay(1.0, it, iterations)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * cosine
            min_scale = (CROP_SCALE[0] + (1 - CROP_SCALE[0]) * cosine
                         if config.crop_schedule == "cosine" else CROP_SCALE[0])
            boxes, flips, shifts = [], [], []
            for g in generators:  # one crop, flip and roll per unit, from its own stream
                boxes.append(sample_crop_boxes(1, size, size, g, scale=(min_scale, 1.0)))
                flips.append(torch.rand(1, generator=g) < 0.5)
                shifts.append(torch.randint(0, config.jitter + 1, (2,), generator=g))
            box = torch.cat(boxes).repeat_interleave(n, 0)
            flip = torch.cat(flips).repeat_interleave(n, 0)
            shift = torch.stack(shifts).repeat_interleave(n, 0).to(device)
            view = _roll(resized_crop(x, box, flip, size), shift[:, 0], shift[:, 1])
            captured.clear()
            with autocast(device):
                logits = model(view)
            ce = F.cross_entropy(logits.float(), labels, reduction="none").view(k, n).mean(1)
            mean_terms, var_terms = bn_terms(captured, k, target_mean, target_var)
            bn_loss = torch.zeros(k, device=device)
            check_forward_order(captured, names)
            for position in range(len(captured)):
                weight = config.first_bn_multiplier if position == 0 else 1.0
                bn_loss = bn_loss + weight * (mean_terms[position] + var_terms[position])
            if on_terms is not None:
                on_terms(it, x.detach(), ce.detach(), [t.detach() for t in mean_terms],
                         [t.detach() for t in var_terms])
            loss = (ce + config.r_bn * bn_loss).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
            if on_iteration is not None:
                on_iteration(it, float(loss.detach()) / k)
    finally:
        for hook in hooks:
            hook.remove()
    return x.detach()


def check_forward_order(captured: list[tuple[int, torch.Tensor]], names: list[str]) -> None:
    """Every BN layer ran exactly once in the forward pass, else the targets cannot match."""
    counts = [0] * len(names)
    for i, _ in captured:
        counts[i] += 1
    wrong = [f"{names[i]} ran {c} times" for i, c in enumerate(counts) if c != 1]
    if wrong:
        raise ConfigError(f"the teacher's BN layers do not each run once per forward pass "
                          f"({'; '.join(wrong[:3])}), so recover cannot match their targets",
                          "use a teacher whose BatchNorm2d layers are each applied once")


def default_classes_per_step(unit_size: int, image_size: int, device: torch.device) -> int:
    """As many units as fill the device's pixel budget (at least one)."""
    budget = _PIXEL_BUDGET["cuda" if device.type == "cuda" else "cpu"]
    return max(1, budget // (unit_size * image_size * image_size))


def units_per_step(config: RecoverConfig, num_classes: int, image_size: int,
                   device: torch.device) -> int:
    """`--classes-per-step`, or the device's default: units of IPC images (class batching)
    or of one image per class of a group (mixed batching) per forward pass."""
    if config.classes_per_step is not None:
        return config.classes_per_step
    unit = config.ipc if config.batching == "class" else min(config.mixed_batch, num_classes)
    return default_classes_per_step(unit, image_size, device)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def self_top1(teacher: Teacher, folder, device: torch.device) -> float:
    """Teacher top-1 on the saved (uint8) images, no augmentation."""
    images, labels, _ = load_image_set(folder)
    correct = 0
    for start in range(0, len(images), 500):
        x = normalise(images[start:start + 500].to(device), teacher.data["mean"],
                      teacher.data["std"])
        with autocast(device):
            logits = teacher.model(x).float()
        correct += topk_correct(logits.cpu(), labels[start:start + 500], 1)
    return correct / len(images)


def recover(store: Store, config: RecoverConfig, teacher: Artifact, *,
            data_root: str | None = None, device: torch.device | None = None,
            force: bool = False, reporter: Reporter = SILENT) -> Artifact:
    """Make (or find) the images artifact for `config` from `teacher`."""
    device = device or torch.device("cpu")
    config.validate()
    if teacher.kind != "teacher":
        raise ConfigError(f"artifact {teacher.short} is a {teacher.kind}, not a teacher",
                          "pass the id of a teacher (made by lpld squeeze)")
    net = load_teacher(teacher, device)
    dataset = net.data["dataset"]
    recipe = net.data.get("recipe")  # an imagefolder teacher names the preset it follows
    config = config.resolved(get_preset(recipe or dataset), dataset)
    if config.batching is not None:  # synthesis: the forward's shape is part of the id
        config = replace(config, classes_per_step=units_per_step(
            config, net.num_classes, net.data["image_size"], device))
    if config.bn_target == "class" and net.class_stats is None:
        raise ConfigError(f"teacher {teacher.short} has no class-wise BN statistics, which "
                          "--bn-target class needs", "use --bn-target global, or a teacher "
                          "made by `lpld squeeze`")

    def build(staging) -> dict:
        start = time.perf_counter()
        num_classes = net.num_classes
        w = dist.world()
        # rank 0 reads what is done before any rank writes, so every rank plans alike
        done = dist.broadcast(done_classes(staging.path) if w.main else None, w)
        if not RECOVER_METHODS.get(config.method).synthesises:
            computed = (_save_real(config, staging.path, data_root, num_classes, done,
                                   net.data) if w.main else 0)
        else:
            computed = _save_synthetic(net, config, staging.path, device, done, reporter, w)
        dist.barrier(w)  # every rank's classes are on disk
        if not w.main:
            return {}
        write_class_names(staging.path, net.data["class_names"])
        seconds = time.perf_counter() - start
        top1 = self_top1(net, staging.path, device)
        reporter.log(f"self top-1 {top1:.4f} on {num_classes * config.ipc} images")
        return {"self_top1": top1, "images": num_classes * config.ipc, "classes": num_classes,
                "classes_resumed": len(done), "seconds_per_class":
                    round(seconds / computed, 3) if computed else 0.0}

    identity = config.identity()
    # the key configuration too: two image sets of one IPC are told apart by it (parents)
    key = {k: identity.get(k) for k in ("batching", "bn_target", "iterations", "r_bn", "seed")}
    return store.produce("images", identity, [teacher.id], build, force=force,
                         resumable=True, selectors={"dataset": dataset, "ipc": config.ipc,
                                                    "method": config.method,
                                                    "teacher": teacher.id, **key,
                                                    **({"recipe": recipe} if recipe else {})})


def _save_real(config: RecoverConfig, folder, data_root: str | None, num_classes: int,
               done: set[int], geometry: dict) -> int:
    """`--method real`: `ipc` seeded random training images per class, as they are."""
    data = load_dataset(config.dataset, data_root, geometry)
    pixels, labels = data.sample_train_images(config.ipc, config.seed)
    todo = [c for c in range(num_classes) if c not in done]
    for c in todo:
        save_class(folder, c, pixels[labels == c])
    return len(todo)


def _save_synthetic(net: Teacher, config: RecoverConfig, folder, device: torch.device,
                    done: set[int], reporter: Reporter, w: dist.World = dist.SINGLE) -> int:
    """Optimise every unfinished class (this rank's jobs); save each as soon as it is final."""
    num_classes, ipc, size = net.num_classes, config.ipc, net.data["image_size"]
    mean, std = net.data["mean"], net.data["std"]
    todo = [c for c in range(num_classes) if c not in done]
    task = reporter.task("recover classes" + (f" (rank 0 of {w.size})" if w.distributed else ""),
                         num_classes)
    task.advance(len(done))
    # A job: classes finished together, and the steps (lists of units) that make them.
    jobs: list[tuple[list[int], list[list[Unit]]]] = []
    per_step = units_per_step(config, num_classes, size, device)
    if config.batching == "class":
        for chunk in _chunks(todo, per_step):
            jobs.append((chunk, [[class_unit(net, c, ipc, config.bn_target) for c in chunk]]))
    else:  # mixed: a group's classes are finished only when all its IPC batches are
        for group in _chunks(list(range(num_classes)), config.mixed_batch):
            if all(c in done for c in group):
                continue
            units = [mixed_unit(net, group, k, config.bn_target) for k in range(ipc)]
            jobs.append((group, _chunks(units, per_step)))

    for classes, steps in dist.shard(jobs, w):
        units_total = sum(len(step) for step in steps)
        outputs = []
        for step in steps:
            tick = _Ticker(task, len(classes) * len(step) / units_total / config.iterations)
            outputs.append(synthesize(net, config, step, device, tick))
            tick.flush()
        x = torch.cat(outputs)
        if config.batching == "mixed":  # image k of class c comes from mixed batch k
            x = x.view(ipc, len(classes), *x.shape[1:]).transpose(0, 1).flatten(0, 1)
        for i, c in enumerate(classes):
            save_class(folder, c, to_uint8(x[i * ipc:(i + 1) * ipc], mean, std))
        reporter.log(f"classes {classes[0]}-{classes[-1]} saved (loss {tick.loss:.4f})")
    task.close()
    return len(todo)


class _Ticker:
    """Advances the class progress bar by a share of a class per iteration (every 10)."""

    def __init__(self, task, share: float) -> None:
        self.task, self.share, self.pending, self.loss = task, share, 0.0, float("nan")

    def __call__(self, it: int, loss: float) -> None:
        self.pending += self.share
        self.loss = loss
        if it % 10 == 9:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.task.advance(self.pending, loss=self.loss)
            self.pending = 0.0


stage_module(__name__)  # `lpld_cli.recover(...)` calls recover() above
