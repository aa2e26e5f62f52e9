"""`lpld squeeze`: the teacher and its class-wise BN statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.data.geometry import describe
from lpld_cli.data.presets import DATASETS, get_preset
from lpld_cli.models.zoo import model_choices
from lpld_cli.storage.requests import answered, remember, request_key
from lpld_cli.storage.store import Artifact


@common_options
def command(
    common: Common,
    dataset: Annotated[str, typer.Option(help=DATASETS.choices())] = "fashion-mnist",
    data: Annotated[str | None, typer.Option(
        help="Dataset folder [fashion-mnist: $LPLD_DATA, then "
             "/usr/share/datasets/fashion-mnist].", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        help=f"{model_choices()} [default: the dataset preset's].",
        show_default=False)] = None,
    width: Annotated[int, typer.Option(help="ConvNet width.")] = 64,
    depth: Annotated[int, typer.Option(help="ConvNet depth (conv blocks).")] = 3,
    weights: Annotated[Path | None, typer.Option(
        help="A trained teacher's state dict (safetensors, or a torch file loaded with "
             "weights_only=True); skips training.", show_default=False)] = None,
    teacher_epochs: Annotated[int | None, typer.Option(
        help="Teacher training epochs [default: the preset's].", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Teacher training batch size [default: the preset's].", show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        help="Teacher learning rate (SGD, Nesterov, cosine) [default: the preset's].",
        show_default=False)] = None,
    train_subset: Annotated[int | None, typer.Option(
        help="Use only N seeded random training images (a quick first try).",
        show_default=False)] = None,
    image_size: Annotated[int | None, typer.Option(
        help="imagefolder: resize every image to N×N [default: the images' own size, when "
             "they all share one].", show_default=False)] = None,
    channels: Annotated[int | None, typer.Option(
        help="imagefolder: 1 (grey) or 3 (RGB), converting every image [default: the "
             "images' own].", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        help="imagefolder: borrow this dataset preset's recipe (fashion-mnist, tiny-imagenet, "
             "imagenet-1k, …) [default: by image size: ≤32 px fashion-mnist's ConvNet recipe, "
             "≤64 px tiny-imagenet's, larger imagenet-1k's].", show_default=False)] = None,
    bn_stats: Annotated[str, typer.Option(
        help="Class-wise BN statistics: exact (pooled over the pass; exact integer sums, "
             "the same bits on any number of torchrun ranks) or ema (the authors' per-batch "
             "EMA, momentum 0.1: one ordered pass, so under torchrun rank 0 runs it alone).")
    ] = "exact",
) -> None:
    """Train (or load) the teacher, evaluate it, and compute class-wise BN statistics."""
    options = {k: v for k, v in locals().items() if k != "common"} | {"seed": common.seed}
    # files the id hashes (weights, a folder's images) may change under the same path
    key = (request_key("squeeze", options, [], common.device_name) if weights is None
           and dataset in ("fashion-mnist", "mnist") else None)
    hit = None if common.force or key is None else answered(common.store, key)
    if hit is not None:  # answered before: no torch, no data, no network
        return _report(common, hit)
    from lpld_cli.squeeze import SqueezeConfig, folder_config, squeeze

    # explicit values are checked before any work; unset ones (None) take the recipe's
    folder = SqueezeConfig(
        dataset=dataset, image_size=image_size, channels=channels, recipe=preset, model=model,
        width=width, depth=depth, teacher_epochs=teacher_epochs, batch_size=batch_size, lr=lr,
        bn_stats=bn_stats, train_subset=train_subset, seed=common.seed)
    folder.validate()
    if dataset == "imagefolder":  # geometry and recipe from the data, said before any work
        folder, found = folder_config(folder, data)
        info(describe(found, folder.recipe, borrowed=preset is not None))
    recipe = get_preset(folder.recipe or dataset)
    if dataset == "imagefolder":
        info(f"recipe: teacher {model or recipe.teacher_model} for {recipe.teacher_epochs} "
             f"epochs; recover {recipe.recover_iterations} iterations; relabel "
             f"{recipe.relabel_epochs} epochs of batch {recipe.relabel_batch_size}; student "
             f"{recipe.student_model} for {recipe.train_epochs} epochs")
    config = folder
    device = common.device
    with RichReporter(quiet=False) as reporter:
        artifact = squeeze(common.store, config, data_root=data, weights=weights,
                           device=device, force=common.force, reporter=reporter)
    if key is not None:
        remember(common.store, key, artifact)
    _report(common, artifact)


def _report(common: Common, artifact: Artifact) -> None:
    m = artifact.metrics
    info(f"teacher {artifact.short}{' (cached)' if artifact.cached else ''}")
    emit(common.result("squeeze", artifact, m), common.json,
         f"teacher {artifact.id}\n  top-1 {m['top1']:.4f}  top-5 {m.get('top5', float('nan')):.4f}"
         f"  images seen {m['images_seen']}\n  {artifact.path}")
