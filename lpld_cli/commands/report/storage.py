"""`lpld report storage`: bytes per component of every image set and label store, or a plan."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lpld_cli.checks import parse_ratio
from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import emit
from lpld_cli.errors import ConfigError
from lpld_cli.reports.units import check_unit, in_unit, pick_unit


@common_options
def command(
    common: Common,
    from_: Annotated[list[str] | None, typer.Option(
        "--from", help="Artifact ids (images or labels; repeat the option) [default: all].",
        show_default=False)] = None,
    plan: Annotated[str | None, typer.Option(
        help="Project a full-scale run for this dataset instead (runs nothing).",
        show_default=False)] = None,
    ipc: Annotated[int | None, typer.Option(help="Images per class (with --plan).",
                                            show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Relabel epochs (with --plan) [default: the dataset preset's].",
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Relabel batch size (with --plan) [default: the dataset preset's].",
        show_default=False)] = None,
    logits_dtype: Annotated[str, typer.Option(
        help="float16 | bfloat16 | float32 | q8 | q4 (with --plan).")] = "float16",
    topk: Annotated[int | None, typer.Option(
        help="Top-k labels: K fp16 values + K indices per slot (with --plan).",
        show_default=False)] = None,
    topk_fill: Annotated[str, typer.Option(
        help="none | min | lme: one fp16 fill per slot unless none (with --plan, --topk).")
    ] = "none",
    ratio: Annotated[str, typer.Option(
        help="Pruning ratio Nx: keep ⌊rows / N⌋ stored batches (with --plan).")] = "1x",
    classes: Annotated[int | None, typer.Option(
        help="Number of classes (with --plan; known for the built-in datasets).",
        show_default=False)] = None,
    unit: Annotated[str, typer.Option(
        help="auto (a readable unit per table) | B | KB | MB | GB (binary: KB = 2^10 bytes).")
                    ] = "auto",
    image_bytes: Annotated[int | None, typer.Option(
        help="Bytes per stored image (with --plan) [default: raw uint8 H*W*C, about what "
             "lossless PNG of synthetic images takes].", show_default=False, min=1)] = None,
) -> None:
    """Logical and on-disk bytes of the seven label components, totals, label-to-image
    ratio, and the size of the authors' per-batch torch.save layout for the same content."""
    from lpld_cli.reports.storage import (  # torch and zarr: only when it runs
        check_plan_options,
        plan_encoding,
        plan_row,
        storage_report,
    )

    forced = check_unit(unit)
    # checked with or without --plan: a given number is never silently ignored
    check_plan_options(ipc, epochs, batch_size, classes, image_bytes, topk)
    plan_encoding(logits_dtype, topk, topk_fill)
    plan_ratio = parse_ratio(ratio)
    if plan is not None:
        if ipc is None:
            raise ConfigError("--plan needs --ipc N", "e.g. lpld report storage --plan "
                              "imagenet-1k --ipc 50")
        rows = [plan_row(plan, ipc, epochs=epochs, batch_size=batch_size,
                         logits_dtype=logits_dtype, num_classes=classes,
                         image_bytes_per_image=image_bytes, topk=topk, topk_fill=topk_fill,
                         ratio=plan_ratio)]
    else:
        rows = storage_report(common.store, from_ or None)
    emit({"report": "storage", "rows": rows}, common.json, human(rows, forced))


def _unit(row: dict[str, Any], forced: str | None) -> str:
    """The unit of one table: forced, else readable for the largest number in it."""
    if forced:
        return forced
    values = [row.get("disk_bytes"), row.get("logical_bytes"), row.get("image_bytes"),
              row.get("torch_save_bytes")]
    values += [c[k] for c in row.get("components", {}).values()
               for k in ("logical_bytes", "disk_bytes")]
    return pick_unit(values)


def human(rows: list[dict[str, Any]], unit: str | None = None) -> str:
    if not rows:
        return "no image sets or label stores in the store"
    out = []
    for row in rows:
        u = _unit(row, unit)

        def b(n: int | None, u: str = u) -> str:
            return in_unit(n, u)

        if row["kind"] == "images":
            out.append(f"images {row['artifact'][:12]}  {row['dataset']} ipc {row['ipc']}: "
                       f"{row['images']} images, {b(row['disk_bytes'])} {u} PNG "
                       f"({b(row['logical_bytes'])} {u} pixels)")
            continue
        name = ("plan" if row["kind"] == "plan" else f"labels {row['artifact'][:12]}")
        ratio = f", {row['ratio']:g}x" if row.get("ratio") not in (None, 1, 1.0) else ""
        out.append(f"{name}  {row['dataset']} ipc {row['ipc']}{ratio}: {row['rows']} rows of "
                   f"{row['batch_size']} x {row['num_classes']} classes, "
                   f"{row.get('encoding', row['logits_dtype'])} labels")
        disk_head = f"disk {u} (uncompressed)" if row["kind"] == "plan" else f"disk {u}"
        out.append(f"  {'component':<16} {'logical ' + u:>12} {disk_head:>24}")
        for component, c in row["components"].items():  # storage.labels.COMPONENTS' order
            out.append(f"  {component:<16} {b(c['logical_bytes']):>12} "
                       f"{b(c['disk_bytes']):>24}")
            arrays = c.get("arrays", {})
            for name, a in arrays.items() if len(arrays) > 1 else ():  # an encoding's parts
                shape = " x ".join(str(n) for n in a["shape"])
                out.append(f"    {name:<14} {b(a['logical_bytes']):>12} "
                           f"{b(a['disk_bytes']):>24}  {a['dtype']} [{shape}] per row")
        out.append(f"  {'total':<16} {b(row['logical_bytes']):>12} "
                   f"{b(row['disk_bytes']):>24}")
        out.append(f"  {row['files']:,} files in the Zarr store")
        ratio = row.get("label_to_image")
        per = (f" (estimate: {row['image_bytes_per_image']:,} bytes/image)"
               if "image_bytes_per_image" in row else " (PNG)")
        out.append(f"  images {b(row['image_bytes'])} {u}{per}; label-to-image ratio "
                   + (f"{ratio:.1f}" if ratio is not None else "-"))
        ts = row["torch_save_bytes"]
        if ts is None:
            continue
        out.append(f"  torch.save layout (one file per batch, {row['torch_save_files']} files): "
                   f"{b(ts)} {u} ({ts / max(row['disk_bytes'], 1):.2f}x "
                   + ("the uncompressed Zarr arrays)" if row["kind"] == "plan"
                      else "this store on disk)"))
    out.append("KB, MB, GB = 2^10, 2^20, 2^30 bytes (GB as in the paper's tables); --unit picks "
               "one; --json gives exact bytes")
    return "\n".join(out)
