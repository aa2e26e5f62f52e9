"""`lpld relabel`: teacher soft labels for every augmented batch, into a Zarr label store."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.checks import at_least
from lpld_cli.commands._options import Common, common_options, resolve_parent
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.relabel import RelabelConfig, relabel


@common_options
def command(
    common: Common,
    ipc: Annotated[int | None, typer.Option(
        help="Use the newest image set with this many images per class.",
        show_default=False)] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="Image set id (or prefix) to relabel [default: newest matching].",
        show_default=False)] = None,
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
        help="float16 | bfloat16 | float32.")] = "float16",
    codec: Annotated[str, typer.Option(help="zstd | lz4 | gzip | none (Blosc zstd/lz4 with "
                                       "byte shuffle).")] = "zstd",
    rows_per_chunk: Annotated[int | None, typer.Option(
        help="Stored batches per Zarr chunk [default: ~4 MB of logits per chunk].",
        show_default=False)] = None,
    threads: Annotated[int, typer.Option(
        help="Torch CPU threads (0: torch's default); one is fastest for small batches.")
    ] = 1,
) -> None:
    """Run the teacher on E epochs of augmented batches of an image set and store every
    batch's augmentation and logits (resumable: rerun after an interruption)."""
    at_least("--ipc", ipc, 1)
    at_least("--threads", threads, 0)
    # Explicit values are checked before anything is looked up in the store; the stage fills
    # the unset ones from the image set's dataset preset.
    config = RelabelConfig(epochs=epochs, batch_size=batch_size, mix=mix,
                           logits_dtype=logits_dtype, codec=codec,
                           rows_per_chunk=rows_per_chunk, seed=common.seed)
    config.validate()
    images = resolve_parent(common, "images", from_, ipc=ipc, dataset=dataset, method=method)
    teacher_artifact = common.store.get(teacher, kind="teacher") if teacher else None
    with RichReporter() as reporter:
        artifact = relabel(common.store, config, images, teacher_artifact,
                           device=common.device, force=common.force, reporter=reporter,
                           threads=threads or None)
    m = artifact.metrics
    info(f"labels {artifact.short}{' (cached)' if artifact.cached else ''}")
    emit(common.result("relabel", artifact, m), common.json,
         f"labels {artifact.id}\n  {m['rows']} rows ({m['epochs']} epochs x "
         f"{m['batches_per_epoch']} batches), {m.get('rows_per_s', 0):.1f} rows/s\n"
         f"  {m['logical_bytes']:,} logical bytes, {m['disk_bytes']:,} on disk\n"
         f"  {artifact.path}")
