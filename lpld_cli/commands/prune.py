"""`lpld prune`: keep a subset of a label store's rows (the label pool)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from lpld_cli.checks import at_least, parse_ratio, positive
from lpld_cli.commands._options import (
    Common,
    Newest,
    answered_request,
    common_options,
    resolve_parent,
)
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.data.presets import DATASETS, get_preset
from lpld_cli.data.scores import PRUNE_METRICS, SELECTIONS
from lpld_cli.storage.requests import remember
from lpld_cli.storage.store import Artifact


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
    topk: Annotated[int | None, typer.Option(
        help="Re-encode to the K largest logits per slot (fp16 values, LPQLD's top-k); "
             "1 ≤ K < classes, and K ≤ the parent's K. Re-encoding only narrows.",
        show_default=False)] = None,
    topk_fill: Annotated[str | None, typer.Option(
        help="none | min | lme (with --topk): what the other classes get [default: the "
             "parent's fill, none from full logits].", show_default=False)] = None,
    fill_temperature: Annotated[float | None, typer.Option(
        help="The temperature at which an lme fill is exact [default: the parent's, else "
             "--temperature].", show_default=False)] = None,
    logits_dtype: Annotated[str | None, typer.Option(
        help="Re-encode full logits to float16 | bfloat16 | float32 | q8 | q4 (fewer bits "
             "only) [default: the parent's].", show_default=False)] = None,
    temperature: Annotated[float | None, typer.Option(
        help="T₀ at which the reported tail mass (what top-k drops) is measured "
             "[default: the preset's training temperature].", show_default=False)] = None,
    temperature_min: Annotated[float, typer.Option(
        help="The schedule's lowest T, where the tail mass is measured too.")] = 2.0,
    from_: Annotated[str | None, typer.Option(
        "--from", help="The label store to prune (an id or prefix; may itself be pruned) "
                       "[default: the unpruned one matching --ipc/--dataset/--method].",
        show_default=False)] = None,
    newest: Newest = False,
) -> None:
    """Prune a label store: keep ⌊rows / N⌋ of its rows, byte for byte, in a new label store."""
    options = {k: v for k, v in locals().items() if k != "common"} | {"seed": common.seed}
    key, hit = answered_request(common, "prune", options, "labels", from_, newest, ipc=ipc,
                                dataset=dataset, method=method, ratio=1.0)
    if hit is not None and _measured_at(hit, temperature, temperature_min):
        return _report(common, hit)  # answered before: no torch, no label store read
    from lpld_cli.prune import PruneConfig, parent_attrs, prune  # torch: only when it runs

    at_least("--ipc", ipc, 1)
    positive("--temperature", temperature)
    positive("--temperature-min", temperature_min)
    config = PruneConfig(ratio=parse_ratio(ratio), granularity=granularity, metric=metric,
                         select=select, calibrate_easy=calibrate_easy,
                         calibrate_hard=calibrate_hard, seed=common.seed,
                         logits_dtype=logits_dtype, topk=topk, topk_fill=topk_fill,
                         fill_temperature=fill_temperature)
    config.validate()
    if from_ is not None:
        parent = resolve_parent(common, "labels", from_)
    else:
        parent = resolve_parent(common, "labels", None, newest, ipc=ipc, dataset=dataset,
                                method=method, ratio=1.0)
    tail_at = _tail_at(parent.selectors, temperature, temperature_min)
    if (config.topk_fill == "lme" and config.fill_temperature is None
            and parent_attrs(parent).get("topk_fill") != "lme"):
        config = replace(config, fill_temperature=tail_at["tail_mass_t0"])
    with RichReporter() as reporter:
        artifact = prune(common.store, config, parent, force=common.force, reporter=reporter,
                         tail_at=tail_at)
    if key is not None:
        remember(common.store, key, artifact)
    _report(common, artifact)


def _report(common: Common, artifact: Artifact) -> None:
    """The summary of a pruned store, from its manifest (config and metrics) alone."""
    m, c = artifact.metrics, artifact.config
    at = {k: f" = {t:g}" for k, t in (m.get("tail_temperatures") or {}).items()}
    info(f"labels {artifact.short}{' (cached)' if artifact.cached else ''}")
    how = c["metric"] + (f"/{c['select']}" if c.get("select") else "")
    emit(common.result("prune", artifact, m), common.json,
         f"labels {artifact.id}\n  kept {m['rows']} of {m['parent_rows']} rows "
         f"({c['ratio']:g}x, {c['granularity']}, {how}; {m['total_ratio']:g}x of the "
         f"unpruned store)" + (f"\n  {m['encoding']}" if "encoding" in m else "")
         + (f"; top-k drops {100 * m['tail_mass_t0']:.2f}% of the mass at T₀"
            f"{at.get('tail_mass_t0', '')}, {100 * m['tail_mass_tmin']:.2f}% at T_min"
            f"{at.get('tail_mass_tmin', '')}" if "tail_mass_t0" in m else "")
         + f"\n  {artifact.path}")


def _measured_at(artifact: Artifact, temperature: float | None, temperature_min: float
                 ) -> bool:
    """Whether a store's recorded tail masses (top-k only) are at the asked temperatures:
    a report, not part of its id: a store pruned before may hold them at other Ts."""
    if "tail_mass_t0" not in artifact.metrics:
        return True
    asked = _tail_at(artifact.selectors, temperature, temperature_min)
    return artifact.metrics.get("tail_temperatures") == asked


def _tail_at(selectors: dict, temperature: float | None, temperature_min: float
             ) -> dict[str, float]:
    """Where the top-k tail mass is measured: T₀ (`--temperature`, else the preset's) and
    `--temperature-min`."""
    return {"tail_mass_t0": temperature or _preset_temperature(selectors),
            "tail_mass_tmin": temperature_min}


def _preset_temperature(selectors: dict) -> float:
    """The training temperature of the store's recipe (or dataset) preset; 1 without one."""
    name = selectors.get("recipe") or selectors.get("dataset") or "fashion-mnist"
    return get_preset(name).temperature if name in DATASETS else 1.0
