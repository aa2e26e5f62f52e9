"""`lpld recover`: synthesise IPC images per class from the teacher."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.commands._options import (
    Common,
    Newest,
    answered_request,
    common_options,
    resolve_parent,
)
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.models.recover_methods import RECOVER_METHODS
from lpld_cli.storage.requests import remember
from lpld_cli.storage.store import Artifact


@common_options
def command(
    common: Common,
    ipc: Annotated[int, typer.Option(help="Images per class.")] = 10,
    method: Annotated[str, typer.Option(
        help=f"{RECOVER_METHODS.choices()}. {RECOVER_METHODS.described()}.")] = "lpld",
    batching: Annotated[str | None, typer.Option(
        help="class (a batch holds one class's IPC images) | mixed (one image of each of "
             "many classes) [default: the method's].", show_default=False)] = None,
    bn_target: Annotated[str | None, typer.Option(
        help="class (class-wise statistics from squeeze) | global (running statistics) "
             "[default: the method's].", show_default=False)] = None,
    iterations: Annotated[int | None, typer.Option(
        help="Optimisation steps per image [default: the preset's].",
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        help="Adam learning rate on the pixels (cosine decay) [default: the preset's].",
        show_default=False)] = None,
    r_bn: Annotated[float | None, typer.Option(
        help="Weight of the BN-matching loss [default: the preset's].",
        show_default=False)] = None,
    first_bn_multiplier: Annotated[float | None, typer.Option(
        help="Extra weight of the first BN layer's term [default: the preset's].",
        show_default=False)] = None,
    jitter: Annotated[int | None, typer.Option(
        help="Maximum random roll in pixels per iteration [default: the preset's].",
        show_default=False)] = None,
    mixed_batch: Annotated[int, typer.Option(
        help="Classes per batch under --batching mixed.")] = 100,
    classes_per_step: Annotated[int | None, typer.Option(
        help="Classes (mixed: mixed batches) optimised in one forward pass: the images equal "
             "one per step up to the last bits of the forward, and the value is part of the "
             "image set's id [default: fill a batch of ~330 28-px images on CPU, more on "
             "CUDA].", show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Pick the teacher of this dataset [default: the store's only teacher; see --newest].",
        show_default=False)] = None,
    data: Annotated[str | None, typer.Option(
        help="Dataset folder (only --method real reads real images).",
        show_default=False)] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="Teacher artifact id (or prefix) [default: the one matching; see --newest].",
        show_default=False)] = None,
    newest: Newest = False,
) -> None:
    """Synthesise IPC images per class from the teacher (LPLD, SRe²L, CDA, or real)."""
    options = {k: v for k, v in locals().items() if k != "common"} | {"seed": common.seed}
    key, hit = answered_request(common, "recover", options, "teacher", from_, newest,
                                dataset=dataset)
    if hit is not None:  # answered before: no torch, no teacher, no data
        return _report(common, hit)
    from lpld_cli.recover import RecoverConfig, recover

    config = RecoverConfig(
        ipc=ipc, method=method, batching=batching, bn_target=bn_target,
        iterations=iterations, lr=lr, r_bn=r_bn, first_bn_multiplier=first_bn_multiplier,
        jitter=jitter, mixed_batch=mixed_batch, seed=common.seed,
        classes_per_step=classes_per_step)
    config.validate()  # bad options fail before the store is read
    teacher = resolve_parent(common, "teacher", from_, newest, dataset=dataset)
    with RichReporter() as reporter:
        artifact = recover(common.store, config, teacher, data_root=data, device=common.device,
                           force=common.force, reporter=reporter)
    if key is not None:
        remember(common.store, key, artifact)
    _report(common, artifact)


def _report(common: Common, artifact: Artifact) -> None:
    m = artifact.metrics
    info(f"images {artifact.short}{' (cached)' if artifact.cached else ''}")
    emit(common.result("recover", artifact, m), common.json,
         f"images {artifact.id}\n  method {artifact.config['method']}  ipc "
         f"{artifact.config['ipc']}  classes {m['classes']}  self top-1 {m['self_top1']:.4f}"
         f"  {m['seconds_per_class']:.1f} s/class\n  {artifact.path}")
