"""Prune: keep a subset of a label store's rows (paper §3.3.2, Fig. 5, Table 5, appendix E.1).

A labels artifact stores one row per augmented batch the teacher saw. Pruning keeps
⌊R / N⌋ of its R stored rows (at least one) for `--ratio N`, copied byte for byte into
a new label store of the same schema, in the parent's row order. What training later
samples from is this "label pool".

The pool: only complete rows (every slot filled) are candidates; the incomplete last
batch of an epoch never enters it (paper §4.1, "Pruning Setting"). With `epoch`
granularity the candidates are whole epochs (their complete rows) instead of rows.

Which rows: `random` (seeded), `first` (global order, the authors' released rule), or
one of the five scores of appendix E.1 with `--select easy|hard|uniform`. Every score
is an *easiness*: higher = easier, so `easy` keeps the highest scores and `hard` the
lowest. All scores are per slot on the stored teacher logits (softmax at T = 1 where a
probability is meant), then averaged over a row's filled slots; an epoch's score is
the mean of its rows'. With CutMix a slot shows its own image (share λ) and its
partner's (share 1 − λ): `correct` and `signed-diff` weight the two classes by those
shares.

Calibration (Table 5b): before selecting, drop the ⌊e·U⌋ easiest and ⌊h·U⌋ hardest of
the U candidates by `confidence`; the metric then picks from what is left.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from lpld_cli import stage_module
from lpld_cli.checks import at_least, parse_ratio, positive
from lpld_cli.data.label_pool import choose_random, keep_count
from lpld_cli.data.scores import PRUNE_METRICS, SELECTIONS, Slots, scored
from lpld_cli.errors import ArtifactCorruptedError, ArtifactNotFoundError, ConfigError
from lpld_cli.faults import kill_point
from lpld_cli.progress import SILENT, Reporter
from lpld_cli.storage.encoding import (
    TOPK_FILLS,
    Encoding,
    dense_logits,
    identity_dict,
    reencode,
    tail_mass,
)
from lpld_cli.storage.images import image_labels
from lpld_cli.storage.labels import (
    GROUP,
    LAYOUT_RULE,
    LabelRows,
    LabelStore,
    child_layout,
    pruned_attributes,
)
from lpld_cli.storage.store import Artifact, Staging, Store

GRANULARITIES = ("batch", "epoch")
# The builtin metrics as tuples (snapshots for tests; the code reads PRUNE_METRICS).
METRICS = PRUNE_METRICS.keys()
SCORES = tuple(m for m in METRICS if scored(m))


@dataclass(frozen=True)
class PruneConfig:
    # how many: keep ⌊R / ratio⌋ rows (batch) or ⌊E / ratio⌋ epochs (epoch), at least one
    ratio: float = 1.0
    granularity: str = "batch"
    # which: random | first | one of SCORES, then easy | hard | uniform (scores only)
    metric: str = "random"
    select: str | None = None
    # Table 5b: fractions of the easiest / hardest candidates (by confidence) dropped first
    calibrate_easy: float = 0.0
    calibrate_hard: float = 0.0
    seed: int = 0
    # re-encoding while pruning (storage.encoding; narrowing only): None keeps the parent's
    logits_dtype: str | None = None
    topk: int | None = None
    topk_fill: str | None = None
    fill_temperature: float | None = None

    def encoding(self, parent: Encoding) -> Encoding:
        """The pruned store's encoding: the parent's, narrowed by the options given."""
        topk = self.topk if self.topk is not None else parent.topk
        fill = self.topk_fill or (parent.topk_fill if topk is not None else "none")
        temp = self.fill_temperature
        if fill == "lme" and temp is None:
            temp = parent.fill_temperature
        dtype = self.logits_dtype or ("float16" if topk is not None else parent.logits_dtype)
        return Encoding(logits_dtype=dtype, topk=topk, topk_fill=fill,
                        fill_temperature=temp if fill == "lme" else None)

    def __post_init__(self) -> None:
        # A score metric defaults to `uniform`; random/first have no selection.
        if self.metric in PRUNE_METRICS and scored(self.metric) and self.select is None:
            object.__setattr__(self, "select", "uniform")

    def validate(self) -> None:
        parse_ratio(self.ratio)
        # the encoding options on their own (against the parent: in `prune`)
        Encoding(logits_dtype=self.logits_dtype or "float16").validate()
        if self.topk_fill not in (None, *TOPK_FILLS):
            raise ConfigError(f"unknown --topk-fill {self.topk_fill!r}",
                              f"choose one of: {', '.join(TOPK_FILLS)}")
        if self.topk is not None and self.topk < 1:
            raise ConfigError(f"--topk must be at least 1 (got {self.topk})",
                              "keep K ≥ 1 logits per slot")
        positive("--fill-temperature", self.fill_temperature)
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown --granularity {self.granularity!r}",
                              f"choose one of: {', '.join(GRANULARITIES)}")
        PRUNE_METRICS.check(self.metric)
        if self.select is not None and self.select not in SELECTIONS:
            raise ConfigError(f"unknown --select {self.select!r}",
                              f"choose one of: {', '.join(SELECTIONS)}")
        if self.select is not None and not scored(self.metric):
            scores = [m for m in PRUNE_METRICS if scored(m)]
            raise ConfigError(f"--select applies to scored metrics only, not --metric "
                              f"{self.metric}", f"use it with one of: {', '.join(scores)}")
        for name, value in (("--calibrate-easy", self.calibrate_easy),
                            ("--calibrate-hard", self.calibrate_hard)):
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ConfigError(f"{name} must be a fraction in [0, 1) (got {value})",
                                  "e.g. 0.1 drops the 10% of rows with that extreme confidence")
        at_least("--seed", self.seed, 0)
        if self.calibrate_easy + self.calibrate_hard >= 1:
            raise ConfigError(
                f"--calibrate-easy + --calibrate-hard must be below 1 (got "
                f"{self.calibrate_easy} + {self.calibrate_hard})", "nothing would be left to keep")

    def resolved(self, preset: Any = None) -> PruneConfig:
        """Nothing comes from a preset: the config itself, validated (`select`: see above)."""
        self.validate()
        return self

    def identity(self) -> dict[str, Any]:
        """What names the pruned label store (the encoding fields only when given, so ids
        of stores pruned without them hold; the default layout's rule always: it sizes the
        shards)."""
        return {**identity_dict(asdict(self.resolved()),
                                {"logits_dtype": None, "topk": None, "topk_fill": None,
                                 "fill_temperature": None}),
                "layout_rule": LAYOUT_RULE}


# ---------------------------------------------------------------------- scores
def slot_scores(metric: str, logits: torch.Tensor, own: torch.Tensor, partner: torch.Tensor,
                mixed: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Per-slot easiness [r, B] of a scored metric (data/scores.py; higher = easier)."""
    score = PRUNE_METRICS.get(metric).score
    if score is None:
        raise ValueError(f"not a score metric: {metric!r}")
    return score(Slots(logits, own, partner, mixed, lam))


def needs_classes(metric: str) -> bool:
    return PRUNE_METRICS.get(metric).needs_classes


def row_scores(labels: LabelStore, metric: str, classes: np.ndarray | None = None,
               on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """Every row's score [R] (float64): the mean of its filled slots' `slot_scores`.

    Reads the store chunk by chunk and only the arrays the metric needs.
    """
    if needs_classes(metric) and classes is None:
        raise ValueError(f"metric {metric} needs the images' classes")
    out = np.empty(labels.rows, dtype=np.float64)
    step = labels.rows_per_chunk
    for start in range(0, labels.rows, step):
        stop = min(start + step, labels.rows)
        index = torch.from_numpy(_read(labels, "image_index", start, stop).astype(np.int64))
        mix_index = torch.from_numpy(_read(labels, "mix_index", start, stop).astype(np.int64))
        lam = torch.from_numpy(_read(labels, "mix_lambda", start, stop).astype(np.float32))
        valid = index >= 0
        slots = torch.arange(index.shape[1]).expand_as(index)
        partner_slot = mix_index.clamp(0, index.shape[1] - 1)
        mixed = (mix_index != slots) & valid
        if needs_classes(metric):
            cls = torch.from_numpy(np.asarray(classes, dtype=np.int64))
            own = torch.where(valid, cls[index.clamp(min=0)], -1)
            partner_img = index.gather(1, partner_slot)
            partner = torch.where(partner_img >= 0, cls[partner_img.clamp(min=0)], own)
        else:
            own = partner = torch.full_like(index, -1)
        if not PRUNE_METRICS.get(metric).reads_logits:  # e.g. cut-ratio: λ only
            logits = torch.zeros(*index.shape, 1)
        else:
            logits = _dense(labels, start, stop)
        score = slot_scores(metric, logits, own, partner, mixed, lam).double()
        count = valid.sum(1).clamp(min=1)
        out[start:stop] = ((score * valid).sum(1) / count).numpy()
        if on_chunk is not None:
            on_chunk(stop - start)
    return out


# ------------------------------------------------------------------- selection
def select_units(score: np.ndarray | None, n: int, how: str, order: np.ndarray,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Positions (into the candidate list) of the `n` kept candidates.

    `order` is each candidate's global position (ties and `first` follow it); `how`:
    random | first | easy (highest scores) | hard (lowest) | uniform (an even spread
    over the scores sorted from hardest to easiest: the middle of each of n strata).
    """
    u = len(order)
    n = min(n, u)
    if how == "random":
        assert rng is not None
        return choose_random(u, n, rng)
    if how == "first":
        return np.sort(np.argsort(order, kind="stable")[:n])
    assert score is not None
    # Ascending score, ties by global order: hardest first.
    ranked = np.lexsort((order, score))
    if how == "hard":
        picked = ranked[:n]
    elif how == "easy":
        ranked = np.lexsort((order, -score))
        picked = ranked[:n]
    elif how == "uniform":
        picked = ranked[((np.arange(n) + 0.5) * u / n).astype(np.int64)]
    else:
        raise ValueError(how)
    return np.sort(picked)


def calibrate(confidence: np.ndarray, order: np.ndarray, easy: float, hard: float) -> np.ndarray:
    """Positions of the candidates left after dropping ⌊easy·U⌋ most and ⌊hard·U⌋ least
    confident ones (Table 5b)."""
    u = len(confidence)
    ranked = np.lexsort((order, confidence))  # least confident (hardest) first
    n_hard, n_easy = math.floor(hard * u), math.floor(easy * u)
    return np.sort(ranked[n_hard:u - n_easy])


@dataclass
class Plan:
    """What a prune keeps: parent row indices (ascending) and how they were chosen."""

    rows: np.ndarray
    pool_units: int
    units: int
    kept_units: int
    score: np.ndarray | None  # per candidate unit (None for random/first)
    kept_score: np.ndarray | None


def plan(labels: LabelStore, config: PruneConfig, classes: np.ndarray | None = None,
         reporter: Reporter = SILENT) -> Plan:
    """Decide which parent rows to keep (reads only what the metric needs, chunk by chunk)."""
    attrs = labels.attrs
    batch_id = _read(labels, "batch_id", 0, labels.rows).astype(np.int64)
    complete = np.zeros(labels.rows, dtype=bool)
    for start, stop in _chunks(labels):
        complete[start:stop] = (_read(labels, "image_index", start, stop) >= 0).all(axis=1)
    if not complete.any():
        raise ConfigError(
            "the label store has no complete row: every stored batch has empty slots",
            "relabel with a --batch-size no larger than the number of images")

    # Candidate units: single rows, or epochs (groups of rows).
    if config.granularity == "batch":
        unit_of_row = np.where(complete, np.cumsum(complete) - 1, -1)
        unit_order = batch_id[complete]
        total_units = labels.rows
    else:
        nb = attrs.get("batches_per_epoch")
        if not nb:
            raise ConfigError("epoch granularity needs the store's batches_per_epoch attribute",
                              "use --granularity batch")
        epoch = batch_id // int(nb)
        present, counts = np.unique(epoch, return_counts=True)
        # An unpruned store holds every batch of its epochs; an epoch-pruned one holds the
        # complete rows of whole epochs (its parent was whole by this same rule).
        partial = (attrs.get("granularity") == "batch" if "parent_id" in attrs
                   else (counts != int(nb)).any())
        if partial:
            raise ConfigError(
                "epoch granularity needs whole epochs, but this label store holds partial "
                "epochs (it was pruned at batch granularity)",
                "prune the unpruned store instead, or use --granularity batch")
        # Epochs with at least one complete row, numbered in epoch order.
        unit_order = np.unique(epoch[complete])
        unit_of_row = np.where(complete, np.searchsorted(unit_order, epoch), -1)
        total_units = len(present)

    n = keep_count(total_units, config.ratio)
    need_score = scored(config.metric)
    need_conf = config.calibrate_easy > 0 or config.calibrate_hard > 0
    metrics = ([config.metric] if need_score else []) + (
        ["confidence"] if need_conf and config.metric != "confidence" else [])
    per_row: dict[str, np.ndarray] = {}
    if metrics:
        task = reporter.task("scoring rows", total=labels.rows * len(metrics))
        for m in metrics:
            per_row[m] = row_scores(labels, m, classes, on_chunk=task.advance)
        task.close()

    def unit_score(m: str) -> np.ndarray:
        candidate = unit_of_row >= 0
        sums = np.bincount(unit_of_row[candidate], per_row[m][candidate], len(unit_order))
        return sums / np.bincount(unit_of_row[candidate], minlength=len(unit_order))

    candidates = np.arange(len(unit_order))
    if need_conf:
        candidates = calibrate(unit_score("confidence"), unit_order, config.calibrate_easy,
                               config.calibrate_hard)
    score = unit_score(config.metric)[candidates] if need_score else None
    how = config.select if need_score else config.metric
    rng = np.random.default_rng(config.seed)
    picked = candidates[select_units(score, n, how, unit_order[candidates], rng)]
    rows = np.flatnonzero(np.isin(unit_of_row, picked))
    kept_score = unit_score(config.metric)[picked] if need_score else None
    return Plan(rows, len(unit_order), total_units, len(picked), score, kept_score)


def _dense(labels: LabelStore, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) as float32 logits [r, B, C], whatever the store's encoding
    (top-k: the kept values over the fill, −inf — no mass — without one)."""
    enc = labels.encoding
    arrays = {name: _read(labels, name, start, stop) for name in enc.schema(1, 1)}
    return dense_logits(arrays, enc, labels.num_classes)


def _read(labels: LabelStore, name: str, start: int, stop: int) -> np.ndarray:
    """One array's rows [start, stop); a chunk that does not decode is corruption."""
    try:
        return labels.arrays[name][start:stop]
    except Exception:  # codec or shape errors from a damaged chunk file
        raise ArtifactCorruptedError(getattr(labels, "artifact_id", "?"),
                                     f"{GROUP}/{name}") from None


def _chunks(labels: LabelStore):
    step = labels.rows_per_chunk
    for start in range(0, labels.rows, step):
        yield start, min(start + step, labels.rows)


# --------------------------------------------------------------------- writing
def copy_rows(source: LabelStore, rows: np.ndarray, target: LabelStore,
              on_chunk: Callable[[int], None] | None = None) -> None:
    """Copy source rows `rows` (ascending) into `target`, chunk-aligned, one chunk in memory;
    the label arrays are re-encoded when the target's encoding is narrower."""
    pending: list[LabelRows] = []
    buffered = written = 0
    out_chunk = target.rows_per_shard  # whole shard files
    same = source.encoding == target.encoding
    for start, stop in _chunks(source):
        lo, hi = np.searchsorted(rows, [start, stop])
        if hi > lo:
            block = source.read(start, stop).take(rows[lo:hi] - start)
            if not same:
                block = block.with_labels(reencode(block.labels, source.encoding,
                                                   target.encoding, source.num_classes))
            pending.append(block)
            buffered += int(hi - lo)
        while buffered >= out_chunk or (buffered and written + buffered == len(rows)):
            block = LabelRows.concat(pending)
            size = min(out_chunk, buffered)
            target.write(written, block.take(slice(0, size)))
            written += size
            kill_point("prune.copy", written)
            rest = block.take(slice(size, None))
            pending, buffered = ([rest] if len(rest) else []), len(rest)
        if on_chunk is not None:
            on_chunk(stop - start)
    assert written == len(rows), (written, len(rows))


def _image_classes(store: Store, labels: LabelStore, parent: Artifact) -> np.ndarray:
    images_id = labels.attrs.get("images_id")
    images = store.find("images", images_id) if images_id else None
    if images is None:
        raise ArtifactNotFoundError(
            f"label store {parent.short} names images {images_id} that are not in the store",
            "scores that need the true class (correct, signed-diff) read it from the images")
    return image_labels(images.path).numpy()


def parent_attrs(parent: Artifact) -> dict[str, Any]:
    """A label store's group attributes (zarr.json) without opening its arrays."""
    import json

    try:
        return json.loads((parent.path / GROUP / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        raise ArtifactCorruptedError(parent.id, f"{GROUP}/zarr.json") from None


def _tail_masses(source: LabelStore, rows: np.ndarray, k: int,
                 temperatures: dict[str, float]) -> dict[str, float]:
    """Mean over the kept rows' filled slots of 1 − Σ top-k softmax(z/T), for each T."""
    sums = dict.fromkeys(temperatures, 0.0)
    count = 0
    for start, stop in _chunks(source):
        lo, hi = np.searchsorted(rows, [start, stop])
        if hi == lo:
            continue
        pick = rows[lo:hi] - start
        logits = _dense(source, start, stop)[pick]
        valid = torch.from_numpy(_read(source, "image_index", start, stop)[pick] >= 0)
        count += int(valid.sum())
        for key, t in temperatures.items():
            sums[key] += float(tail_mass(logits, k, t)[valid].sum())
    return {key: total / max(count, 1) for key, total in sums.items()}


def _remeasured_tails(store: Store, artifact: Artifact, tail_at: dict[str, float]
                      ) -> dict[str, Any]:
    """A top-k `artifact`'s tail masses at `tail_at` ({metric name: T}) and
    `tail_temperatures` (those Ts), measured again on its parent's labels over the rows it
    kept (a cached store pruned with other Ts)."""
    parent = store.get(artifact.parents[0], kind="labels")
    source = LabelStore.open(parent.path, parent.id)
    child = LabelStore.open(artifact.path, artifact.id)
    rows = np.flatnonzero(np.isin(_read(source, "batch_id", 0, source.rows),
                                  _read(child, "batch_id", 0, child.rows)))
    return {**_tail_masses(source, rows, int(child.encoding.topk), tail_at),
            "tail_temperatures": dict(tail_at)}


def prune(store: Store, config: PruneConfig, parent: Artifact, *, force: bool = False,
          reporter: Reporter = SILENT, rows_per_chunk: int | None = None,
          tail_at: dict[str, float] | None = None) -> Artifact:
    """Make (or find) the pruned `labels` artifact of `parent` for `config`.

    `tail_at` ({metric name: T}) adds, when the result is top-k, the mean probability mass
    its top-k drops at each temperature (measured on the source's labels) and the Ts as
    `tail_temperatures`. A reporting choice, not part of the artifact's identity: a cached
    store measured at other Ts is measured again, and those metrics are returned, not
    stored. Default: T = 1.
    """
    tail_at = tail_at or {"tail_mass_t1": 1.0}
    config.validate()
    if parent.kind != "labels":
        raise ConfigError(f"artifact {parent.short} is a {parent.kind}, not a labels store",
                          "pass the id of a label store (made by lpld relabel or lpld prune)")
    parent_ratio = float(parent.selectors.get("ratio") or 1.0)
    selectors = {**parent.selectors, "ratio": parent_ratio * config.ratio,
                 "granularity": config.granularity, "metric": config.metric}

    source_encoding = Encoding.from_attributes(parent_attrs(parent))
    encoding = config.encoding(source_encoding)
    encoding.validate(parent_attrs(parent).get("num_classes"))
    source_encoding.check_narrowing(encoding)
    if encoding != source_encoding:
        selectors["encoding"] = encoding.describe()

    def build(staging: Staging) -> dict[str, Any]:
        source = LabelStore.open(parent.path, parent.id)
        classes = _image_classes(store, source, parent) if needs_classes(config.metric) else None
        chosen = plan(source, config, classes, reporter)
        fields = {"ratio": config.ratio, "total_ratio": selectors["ratio"],
                  "granularity": config.granularity, "metric": config.metric,
                  "select": config.select, "calibrate_easy": config.calibrate_easy,
                  "calibrate_hard": config.calibrate_hard, "seed": config.seed}
        if encoding != source.encoding:
            fields["source_id"] = parent.id  # the store whose labels these re-encode
        layout = child_layout(source.layout, len(chosen.rows), rows_per_chunk)
        target = LabelStore.create_layout(staging.path, layout.with_encoding(encoding),
                                          pruned_attributes(source.attrs, parent.id, fields))
        task = reporter.task("copying kept rows", total=source.rows)
        copy_rows(source, chosen.rows, target, on_chunk=task.advance)
        task.close()
        target.check_batch_ids(source.arrays["batch_id"][:][np.asarray(chosen.rows)])
        metrics: dict[str, Any] = {
            "rows": int(len(chosen.rows)), "parent_rows": source.rows, "ratio": config.ratio,
            "total_ratio": selectors["ratio"], "pool_units": chosen.pool_units,
            "kept_units": chosen.kept_units, "kept_fraction": len(chosen.rows) / source.rows,
            "encoding": encoding.describe()}
        if encoding.is_topk:
            metrics.update(_tail_masses(source, chosen.rows, int(encoding.topk), tail_at),
                           tail_temperatures=dict(tail_at))
        if chosen.score is not None and chosen.kept_score is not None:
            metrics["score_candidates_mean"] = float(chosen.score.mean())
            metrics["score_kept_mean"] = float(chosen.kept_score.mean())
        return metrics

    artifact = store.produce("labels", config.identity(), [parent.id], build, force=force,
                             selectors=selectors)
    if encoding.is_topk and artifact.metrics.get("tail_temperatures") != tail_at:
        stale = artifact.metrics.get("tail_temperatures") or {}
        metrics = {k: v for k, v in artifact.metrics.items() if k not in stale}
        metrics.update(_remeasured_tails(store, artifact, tail_at))
        artifact = replace(artifact, manifest={**artifact.manifest, "metrics": metrics})
    return artifact


stage_module(__name__)  # `lpld_cli.prune(...)` calls prune() above
