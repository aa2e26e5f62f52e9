"""`lpld train`: a student from the label pool (or online / hard labels), validated on real data."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated

import typer

from lpld_cli import dist
from lpld_cli.checks import at_least, parse_ratio
from lpld_cli.commands._options import Common, Newest, answered_request, common_options
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.data.presets import get_preset
from lpld_cli.models.recover_methods import RECOVER_METHODS
from lpld_cli.models.zoo import model_choices
from lpld_cli.storage.requests import remember
from lpld_cli.storage.selection import select
from lpld_cli.storage.store import Artifact


@common_options
def command(
    common: Common,
    ipc: Annotated[int | None, typer.Option(
        help="Images per class of the image set / label store to use [default: any].",
        show_default=False)] = None,
    ratio: Annotated[str | None, typer.Option(
        help="Label pruning ratio of the label store to use: Nx or N (1x: the unpruned "
             "store) [default: 1x].", show_default=False)] = None,
    labels: Annotated[str | None, typer.Option(
        help="A label store id; `online` (the teacher labels a fresh augmentation every "
             "step: the no-storage upper bound); or `hard` (cross-entropy on the classes, "
             "λ-mixed under CutMix; no teacher) [default: the newest label store matching "
             "--ipc/--ratio].", show_default=False)] = None,
    online_stream: Annotated[str | None, typer.Option(
        help="With --labels online: fresh (the teacher labels its own augmentation stream "
             "per --seed: the upper bound) or relabel (relabel's stream of the same seed: "
             "equals the unpruned store's labels) [default: fresh].",
        show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Only consider artifacts of this dataset [default: any].",
        show_default=False)] = None,
    method: Annotated[str | None, typer.Option(
        help=f"Only consider images made by this method ({RECOVER_METHODS.choices()}) "
             "[default: any].", show_default=False)] = None,
    images: Annotated[str | None, typer.Option(
        "--images", help="Image set id for --labels online|hard [default: the newest "
        "matching --ipc/--method]; stored labels always use their own images.",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        help=f"Student: {model_choices()} [default: the preset's].",
        show_default=False)] = None,
    width: Annotated[int, typer.Option(help="ConvNet width (student).")] = 64,
    depth: Annotated[int, typer.Option(help="ConvNet depth (student).")] = 3,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs; each draws as many rows from the pool as an unpruned epoch "
             "has [default: the preset's].", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Batch size; with stored labels it must equal the store's row size (rows are "
             "replayed whole) [default: the store's, else the preset's].",
        show_default=False)] = None,
    temperature: Annotated[float | None, typer.Option(
        help="Softmax temperature T of --loss kl; no T² factor is applied (as the authors "
             "on ImageNet-1K) [default: the preset's].", show_default=False)] = None,
    temperature_schedule: Annotated[str, typer.Option(
        help="constant | step | cosine (LPQLD's DKR): step T(e) = max(T_min, T·γ^⌊e/s⌋); "
             "cosine from T to T_min over the run.")] = "constant",
    temperature_min: Annotated[float, typer.Option(
        help="The schedule's floor T_min (LPQLD: 2 for step).")] = 2.0,
    temperature_step: Annotated[int, typer.Option(
        help="Epochs s between two steps of the step schedule (LPQLD: 30 of 300).")] = 30,
    temperature_gamma: Annotated[float, typer.Option(
        help="Factor γ of each step (LPQLD: 0.7).")] = 0.7,
    student_temperature: Annotated[str, typer.Option(
        help="same (the teacher's T) | a number | auto (LPQLD's CA: after each epoch the t "
             "in linspace(0.01, 1, 100) minimising the KL on the last batch; recorded per "
             "epoch in the student's metrics).")] = "same",
    hard_epochs: Annotated[int, typer.Option(
        help="Epochs of cross-entropy on the classes in the middle of training (HALD) "
             "instead of the soft labels.")] = 0,
    loss: Annotated[str, typer.Option(
        help="kl: KL(softmax(t/T) ‖ softmax(s/T)), batch mean; mse-gt: MSE on logits + "
             "0.1 × CE on the true labels (G-VBSM, Table 9).")] = "kl",
    optimizer: Annotated[str | None, typer.Option(
        help="adamw (weight decay on >1-dim parameters only) | sgd (momentum 0.9); cosine "
             "per epoch after --warmup-epochs [default: the preset's].",
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate [default: the preset's].", show_default=False)] = None,
    weight_decay: Annotated[float | None, typer.Option(
        help="Weight decay [default: the preset's].", show_default=False)] = None,
    warmup_epochs: Annotated[int | None, typer.Option(
        help="Linear warm-up epochs [default: the preset's].", show_default=False)] = None,
    eval_every: Annotated[int | None, typer.Option(
        help="Show top-1 on the first 2,000 test images every N epochs (0: never; the "
             "final top-1 always uses the whole test split) "
             "[default: ten times per run].", show_default=False, min=0)] = None,
    data: Annotated[str | None, typer.Option(
        help="Real dataset folder for the test split [fashion-mnist: $LPLD_DATA, then "
             "/usr/share/datasets/fashion-mnist].", show_default=False)] = None,
    newest: Newest = False,
    sync_bn: Annotated[bool, typer.Option(
        "--sync-bn", help="Under torchrun on GPUs: SyncBatchNorm (BatchNorm statistics of "
        "the whole row). Without it each rank normalises with its own slice of the row "
        "(the authors' behaviour) and rank 0's running statistics are kept; on CPU always. "
        "With N > 1 ranks the student's id records N and this choice.")] = False,
) -> None:
    """Train a student from scratch on the synthetic images; report top-1 on the real test set."""
    options = {k: v for k, v in locals().items() if k != "common"} | {"seed": common.seed}
    if dist.launched().distributed:  # N ranks make another student (its id records N)
        options["world_size"] = dist.launched().size
    store = common.store
    teacher = label_store = None
    choice = (labels or "").strip().lower()
    mode = choice if choice in ("online", "hard") else "stored"
    at_least("--eval-every", eval_every, 0)
    at_least("--ipc", ipc, 1)
    if mode == "stored":
        key, hit = answered_request(
            common, "train", options, "labels", labels, newest, ipc=ipc, dataset=dataset,
            method=method, where=lambda a: math.isclose(
                float(a.selectors.get("ratio") or 1.0), parse_ratio(ratio or "1x")))
    else:
        key, hit = answered_request(common, "train", options, "images", images, newest,
                                    ipc=ipc, dataset=dataset, method=method)
    if hit is not None:  # answered before: no torch, no data, no network
        return _report(common, hit, mode)
    from lpld_cli.data.label_pool import LabelPool
    from lpld_cli.train import TrainConfig, image_teacher, label_images, resolve_labels, train

    # Explicit values are checked before the labels or images are looked up.
    given = TrainConfig(
        model=model, width=width, depth=depth, labels=mode, epochs=epochs,
        batch_size=batch_size, loss=loss, temperature=temperature, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=common.seed,
        online_stream=online_stream, temperature_schedule=temperature_schedule,
        temperature_min=temperature_min, temperature_step=temperature_step,
        temperature_gamma=temperature_gamma, student_temperature=student_temperature,
        hard_epochs=hard_epochs, sync_bn=sync_bn)
    given.validate()
    if mode == "stored":
        if labels is not None:
            label_store = store.get(labels, kind="labels")
            info(f"using labels {label_store.short} (--labels)")
        else:
            label_store = resolve_labels(store, parse_ratio(ratio or "1x"), newest, ipc=ipc,
                                         dataset=dataset, method=method)
            info(f"using labels {label_store.short} (newest matching)")
        image_set = label_images(store, label_store)
    else:
        if images is not None:
            image_set = store.get(images, kind="images")
        else:
            image_set = select(store, "images", newest=newest, ipc=ipc, dataset=dataset,
                               method=method)
        info(f"using images {image_set.short}")
        if mode == "online":
            teacher = image_teacher(store, image_set)
            info(f"using teacher {teacher.short}")
    name = image_set.selectors.get("dataset", dataset or "fashion-mnist")
    preset = get_preset(image_set.selectors.get("recipe") or name)
    row_size = LabelPool.open(label_store).batch_size if label_store is not None else None
    config = replace(given, dataset=name).resolved(preset, row_size=row_size)
    with RichReporter() as reporter:
        artifact = train(store, config, image_set, label_store, teacher, data_root=data,
                         device=common.device, force=common.force, reporter=reporter,
                         eval_every=eval_every)
    if key is not None:
        remember(store, key, artifact)
    _report(common, artifact, mode)


def _report(common: Common, artifact: Artifact, mode: str) -> None:
    m = artifact.metrics
    info(f"student {artifact.short}{' (cached)' if artifact.cached else ''}")
    pool = (f"pool {m['label_rows']} rows, {m['label_pool_bytes']:,} bytes on disk, "
            f"waited {100 * m['label_wait_share']:.1f}% of step time for labels"
            if mode == "stored" else f"labels {mode}")
    top5 = f"  top-5 {m['top5']:.4f}" if "top5" in m else ""
    emit(common.result("train", artifact, m), common.json,
         f"student {artifact.id}\n  top-1 {m['top1']:.4f}{top5}  after {m['epochs']} epochs\n"
         f"  {pool}\n  {artifact.path}")
