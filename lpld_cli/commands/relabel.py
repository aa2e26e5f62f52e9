"""`lpld relabel`: teacher soft labels for every augmented batch, into a Zarr label store."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.checks import at_least, parse_ratio
from lpld_cli.commands._options import (
    Common,
    Newest,
    answered_request,
    common_options,
    resolve_parent,
)
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.data.presets import get_preset
from lpld_cli.storage.requests import remember
from lpld_cli.storage.store import Artifact


@common_options
def command(
    common: Common,
    ipc: Annotated[int | None, typer.Option(
        help="Use the image set with this many images per class.",
        show_default=False)] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="Image set id (or prefix) to relabel [default: the one matching; see "
        "--newest].",
        show_default=False)] = None,
    newest: Newest = False,
    teacher: Annotated[str | None, typer.Option(
        help="Teacher id [default: the image set's own teacher].", show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Only consider image sets of this dataset.", show_default=False)] = None,
    method: Annotated[str | None, typer.Option(
        help="Only consider image sets made by this recover method.", show_default=False)
    ] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Relabel epochs [default: the dataset preset's].", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per stored batch [default: the dataset preset's].", show_default=False)
    ] = None,
    mix: Annotated[str | None, typer.Option(
        help="cutmix | none [default: the dataset preset's].", show_default=False)] = None,
    logits_dtype: Annotated[str, typer.Option(
        help="float16 | bfloat16 | float32 | q8 | q4 (q8/q4: codes from each slot's maximum "
             "with one fp16 scale per slot; with --topk the values are float16).")
    ] = "float16",
    topk: Annotated[int | None, typer.Option(
        help="Store only the K largest logits of each slot (fp16) and their classes "
             "(LPQLD's label quantization); 1 ≤ K < classes [default: full logits].",
        show_default=False)] = None,
    topk_fill: Annotated[str, typer.Option(
        help="none | min | lme: what the other classes get (with --topk). none: no mass "
             "(LPQLD's MR); min: the slot's minimum logit (LPQLD's MRS); lme: one fill logit "
             "reproducing FKD's marginal smoothing at --fill-temperature.")] = "none",
    fill_temperature: Annotated[float | None, typer.Option(
        help="The temperature at which an lme fill is exact [default: the preset's training "
             "temperature].", show_default=False)] = None,
    codec: Annotated[str, typer.Option(help="zstd | lz4 | gzip | none (Blosc zstd/lz4 with "
                                       "byte shuffle).")] = "zstd",
    rows_per_chunk: Annotated[int | None, typer.Option(
        help="Stored batches per Zarr chunk [default: ~4 MB of logits per chunk, at most "
             "1/16 of the rows but 8 or more].",
        show_default=False)] = None,
    rows_per_shard: Annotated[int | None, typer.Option(
        help="Stored batches per shard file, a multiple of --rows-per-chunk: the unit of "
             "work and of resume, and what torchrun ranks share [default: ~256 MB per file, "
             "16 to 512 files per array as the rows allow].",
        show_default=False)] = None,
    rows_per_forward: Annotated[int, typer.Option(
        help="Stored batches per teacher forward (part of the artifact's identity: the "
             "forward's shape can change the logits' last bits).")] = 4,
    precision: Annotated[str | None, typer.Option(
        help="fp32 | bf16 | fp16: the teacher's autocast (part of the identity) "
             "[default: fp32 on CPU, bf16 on CUDA].", show_default=False)] = None,
    keep: Annotated[str, typer.Option(
        help="Label only the rows `lpld prune --ratio N` (random, batch granularity, same "
             "--seed) would keep: the same store, N times cheaper (e.g. 40x).")] = "1x",
    threads: Annotated[int, typer.Option(
        help="Torch CPU threads (0: torch's default); one is fastest for small batches.")
    ] = 1,
    draw_workers: Annotated[int | None, typer.Option(
        help="Processes drawing the augmentations ahead of the teacher (0: a thread; the "
             "labels are the same for any number) [default: 0 on CPU; on CUDA this rank's "
             "share of the cores − 1, at most 4].", show_default=False)] = None,
) -> None:
    """Run the teacher on E epochs of augmented batches of an image set and store every
    batch's augmentation and logits (resumable: rerun after an interruption)."""
    options = {k: v for k, v in locals().items() if k != "common"} | {"seed": common.seed}
    key, hit = answered_request(common, "relabel", options, "images", from_, newest, ipc=ipc,
                                dataset=dataset, method=method)
    if hit is not None:  # answered before: no torch, no teacher, no images read
        return _report(common, hit)
    from lpld_cli.relabel import RelabelConfig, relabel

    at_least("--ipc", ipc, 1)
    at_least("--threads", threads, 0)
    at_least("--draw-workers", draw_workers, 0)
    keep_ratio = parse_ratio(keep, "--keep")
    # Explicit values are checked before anything is looked up in the store; unset ones
    # (None) take the image set's recipe preset.
    given = RelabelConfig(epochs=epochs, batch_size=batch_size, mix=mix,
                          logits_dtype=logits_dtype, codec=codec,
                          rows_per_chunk=rows_per_chunk, rows_per_shard=rows_per_shard,
                          rows_per_forward=rows_per_forward, precision=precision,
                          keep=keep_ratio, seed=common.seed, topk=topk, topk_fill=topk_fill,
                          fill_temperature=fill_temperature)
    given.validate()
    given.with_precision(common.device)  # a precision this device cannot run
    images = resolve_parent(common, "images", from_, newest, ipc=ipc, dataset=dataset,
                            method=method)
    config = given.resolved(get_preset(images.selectors.get("recipe")
                                       or images.selectors.get("dataset") or "fashion-mnist"))
    teacher_artifact = common.store.get(teacher, kind="teacher") if teacher else None
    with RichReporter() as reporter:
        artifact = relabel(common.store, config, images, teacher_artifact,
                           device=common.device, force=common.force, reporter=reporter,
                           threads=threads or None, draw_workers=draw_workers)
    if key is not None:
        remember(common.store, key, artifact)
    _report(common, artifact)


def _report(common: Common, artifact: Artifact) -> None:
    m = artifact.metrics
    info(f"labels {artifact.short}{' (cached)' if artifact.cached else ''}")
    emit(common.result("relabel", artifact, m), common.json,
         f"labels {artifact.id}\n  {m['rows']} rows ({m['epochs']} epochs x "
         f"{m['batches_per_epoch']} batches), {m.get('rows_per_s', 0):.1f} rows/s, "
         f"{m.get('files', 0)} files\n"
         f"  {m['logical_bytes']:,} logical bytes, {m['disk_bytes']:,} on disk\n"
         f"  {artifact.path}")
