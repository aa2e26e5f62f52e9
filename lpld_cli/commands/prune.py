"""`lpld prune`: keep a subset of a label store's rows (the label pool)."""

from __future__ import annotations

from typing import Annotated

import typer

from lpld_cli.checks import at_least, parse_ratio
from lpld_cli.commands._options import Common, Newest, common_options, resolve_parent
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.data.scores import PRUNE_METRICS
from lpld_cli.prune import SELECTIONS, PruneConfig, prune


@common_options
def command(
    common: Common,
    ratio: Annotated[str, typer.Option(
        help="Reduction factor N (Nx or N, N ≥ 1, real, e.g. 40x, 2.5x): keep ⌊rows / N⌋ "
             "stored batches (at least one), or ⌊epochs / N⌋ epochs with --granularity epoch. "
             "The new store's `ratio` selector is relative to the UNPRUNED store (parent "
             "ratio × N), so pruning a 10x store by 4x gives a 40x store.")],
    ipc: Annotated[int | None, typer.Option(
        help="Prune the unpruned label store with this IPC (without --from).",
        show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Prune the unpruned label store of this dataset (without --from).",
        show_default=False)] = None,
    method: Annotated[str | None, typer.Option(
        help="Prune the unpruned label store of this recover method (without --from).",
        show_default=False)] = None,
    granularity: Annotated[str, typer.Option(
        help="batch: choose rows one by one (the paper's improved label pool); epoch: keep "
             "whole epochs. Incomplete last batches of an epoch are never kept.")] = "batch",
    metric: Annotated[str, typer.Option(
        help=f"{PRUNE_METRICS.choices()}. Scores are easiness (higher = easier), per slot on the "
             f"stored teacher logits (softmax at T=1), averaged over a row's slots (an epoch: "
             f"over its rows). {PRUNE_METRICS.described()}.")] = "random",
    select: Annotated[str | None, typer.Option(
        help=f"{' | '.join(SELECTIONS)} (scored metrics only): keep the highest scores "
             "(easy), the lowest (hard), or an even spread over the sorted scores (uniform) "
             "[default: uniform].", show_default=False)] = None,
    calibrate_easy: Annotated[float, typer.Option(
        help="First drop this fraction [0, 1) of the most confident rows (Table 5b); "
             "--metric then picks from the rest (the paper: random).")] = 0.0,
    calibrate_hard: Annotated[float, typer.Option(
        help="First drop this fraction [0, 1) of the least confident rows (Table 5b).")] = 0.0,
    from_: Annotated[str | None, typer.Option(
        "--from", help="The label store to prune (an id or prefix; may itself be pruned) "
                       "[default: the unpruned one matching --ipc/--dataset/--method].",
        show_default=False)] = None,
    newest: Newest = False,
) -> None:
    """Prune a label store: keep ⌊rows / N⌋ of its rows, byte for byte, in a new label store."""
    at_least("--ipc", ipc, 1)
    config = PruneConfig(ratio=parse_ratio(ratio), granularity=granularity, metric=metric,
                         select=select, calibrate_easy=calibrate_easy,
                         calibrate_hard=calibrate_hard, seed=common.seed)
    config.validate()
    if from_ is not None:
        parent = resolve_parent(common, "labels", from_)
    else:
        parent = resolve_parent(common, "labels", None, newest, ipc=ipc, dataset=dataset,
                                method=method, ratio=1.0)
    with RichReporter() as reporter:
        artifact = prune(common.store, config, parent, force=common.force, reporter=reporter)
    m = artifact.metrics
    info(f"labels {artifact.short}{' (cached)' if artifact.cached else ''}")
    how = config.metric + (f"/{config.select}" if config.select else "")
    emit(common.result("prune", artifact, m), common.json,
         f"labels {artifact.id}\n  kept {m['rows']} of {m['parent_rows']} rows "
         f"({config.ratio:g}x, {config.granularity}, {how}; {m['total_ratio']:g}x of the "
         f"unpruned store)\n  {artifact.path}")
