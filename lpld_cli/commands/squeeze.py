"""`lpld squeeze`: the teacher and its class-wise BN statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.data.presets import DATASETS
from lpld_cli.models.zoo import model_choices
from lpld_cli.squeeze import SqueezeConfig, squeeze


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
    bn_stats: Annotated[str, typer.Option(
        help="Class-wise BN statistics: exact (pooled over the pass, float64) or ema "
             "(the authors' per-batch EMA, momentum 0.1).")] = "exact",
) -> None:
    """Train (or load) the teacher, evaluate it, and compute class-wise BN statistics."""
    config = SqueezeConfig(
        dataset=dataset, model=model, width=width, depth=depth, teacher_epochs=teacher_epochs,
        batch_size=batch_size, lr=lr, bn_stats=bn_stats, train_subset=train_subset,
        seed=common.seed)
    device = common.device
    with RichReporter(quiet=False) as reporter:
        artifact = squeeze(common.store, config, data_root=data, weights=weights,
                           device=device, force=common.force, reporter=reporter)
    m = artifact.metrics
    info(f"teacher {artifact.short}{' (cached)' if artifact.cached else ''}")
    emit(common.result("squeeze", artifact, m), common.json,
         f"teacher {artifact.id}\n  top-1 {m['top1']:.4f}  top-5 {m.get('top5', float('nan')):.4f}"
         f"  images seen {m['images_seen']}\n  {artifact.path}")
