"""lpld prune: row counts, byte-equal rows, the pool rules, the five scores, selection, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.errors import ConfigError
from lpld_cli.prune import (
    METRICS,
    SCORES,
    PruneConfig,
    parse_ratio,
    prune,
    row_scores,
)
from lpld_cli.storage.images import image_labels, save_image_set
from lpld_cli.storage.labels import SCHEMA, LabelRows, LabelStore, encode_logits
from lpld_cli.storage.store import Artifact, Store
from tests.conftest import run_lpld

# The hand-built store: 10 images of 3 classes, batch 4 ⇒ 3 batches per epoch (4, 4, 2 filled:
# the last one incomplete), 20 epochs ⇒ 60 rows, 40 complete. Chunks of 7 rows.
CLASSES = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
N_IMAGES, B, C, NB, E, CHUNK = 10, 4, 3, 3, 20, 7
R = NB * E
COMPLETE = R - E


def make_images(store: Store) -> Artifact:
    def build(staging) -> dict:
        gen = torch.Generator().manual_seed(1)
        pixels = torch.randint(0, 256, (N_IMAGES, 1, 8, 8), generator=gen, dtype=torch.uint8)
        save_image_set(staging.path, pixels, torch.tensor(CLASSES), ["a", "b", "c"])
        return {"images": N_IMAGES}

    return store.produce("images", {"test": "tiny-images"}, [], build,
                         selectors={"dataset": "fashion-mnist", "ipc": 3, "method": "lpld"})


def hand_rows(seed: int = 0, logits_dtype: str = "float16") -> LabelRows:
    """Known rows: a permutation of the images per epoch, CutMix on most rows, −1 padding."""
    rng = np.random.default_rng(seed)
    image_index = np.full((R, B), -1, dtype=np.int32)
    mix_index = np.tile(np.arange(B, dtype=np.int32), (R, 1))
    mix_lambda = np.ones(R, dtype=np.float32)
    for e in range(E):
        order = rng.permutation(N_IMAGES)
        for b in range(NB):
            row = e * NB + b
            part = order[b * B:(b + 1) * B]
            image_index[row, :len(part)] = part
            if row % 5 != 0 and len(part) > 1:  # every fifth row unmixed
                mix_index[row, :len(part)] = rng.permutation(len(part))
                mix_lambda[row] = np.float32(rng.uniform(0.05, 0.95))
    logits = torch.from_numpy(rng.normal(0, 3, (R, B, C)).astype(np.float32))
    return LabelRows(
        batch_id=np.arange(R, dtype=np.int32), image_index=image_index,
        crop=rng.uniform(0, 1, (R, B, 4)).astype(np.float32),
        flip=rng.uniform(0, 1, (R, B)) < 0.5, mix_index=mix_index, mix_lambda=mix_lambda,
        mix_box=rng.integers(0, 8, (R, 4)).astype(np.int32),
        logits=encode_logits(logits, logits_dtype))


def make_labels(store: Store, images: Artifact, seed: int = 0,
                logits_dtype: str = "float16") -> Artifact:
    rows = hand_rows(seed, logits_dtype)

    def build(staging) -> dict:
        labels = LabelStore.create(
            staging.path, rows=R, batch_size=B, num_classes=C, logits_dtype=logits_dtype,
            rows_per_chunk=CHUNK, attributes={
                "batches_per_epoch": NB, "epochs": E, "images_id": images.id,
                "teacher_id": "0" * 64, "mix": "cutmix", "image_size": 8})
        for start in range(0, R, CHUNK):
            labels.write(start, rows.take(slice(start, start + CHUNK)))
        return {"rows": R}

    return store.produce("labels", {"test": "hand-labels", "seed": seed, "dtype": logits_dtype},
                         [images.id], build, selectors={
                             "dataset": "fashion-mnist", "ipc": 3, "method": "lpld",
                             "ratio": 1.0, "granularity": None, "metric": None})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def parent(store: Store) -> Artifact:
    return make_labels(store, make_images(store))


def open_labels(artifact: Artifact) -> LabelStore:
    return LabelStore.open(artifact.path, artifact.id)


def kept_batch_ids(artifact: Artifact) -> list[int]:
    return open_labels(artifact).arrays["batch_id"][:].tolist()


# ------------------------------------------------------------------- the ratio
@pytest.mark.parametrize(("text", "value"), [
    ("40x", 40.0), ("40", 40.0), ("2.5x", 2.5), ("1x", 1.0), ("2.5X", 2.5), (" 10x ", 10.0)])
def test_parse_ratio_accepts(text: str, value: float) -> None:
    assert parse_ratio(text) == value


@pytest.mark.parametrize(("text", "message"), [
    ("0x", "at least 1x"), ("-3", "at least 1x"), ("0.5x", "at least 1x"),
    ("abc", "not a number"), ("", "not a number"), ("x", "not a number"),
    ("inf", "not a number"), ("nan", "not a number"), ("1e999x", "at least 1x")])
def test_parse_ratio_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_ratio(text)


# ---------------------------------------------------------------- row counts
@pytest.mark.parametrize(("ratio", "granularity", "rows"), [
    (1.0, "batch", COMPLETE),        # ⌊60/1⌋ capped at the 40 complete rows
    (2.5, "batch", 24),              # ⌊60/2.5⌋
    (40.0, "batch", 1),              # ⌊60/40⌋
    (1000.0, "batch", 1),            # larger than R: one row
    (2.5, "epoch", 8 * (NB - 1)),    # ⌊20/2.5⌋ = 8 epochs of 2 complete rows
    (40.0, "epoch", NB - 1),         # one epoch
])
def test_row_counts(store: Store, parent: Artifact, ratio: float, granularity: str,
                    rows: int) -> None:
    child = prune(store, PruneConfig(ratio=ratio, granularity=granularity), parent)
    assert child.metrics["rows"] == rows
    assert child.metrics["parent_rows"] == R
    assert open_labels(child).rows == rows
    if granularity == "epoch":
        epochs = {b // NB for b in kept_batch_ids(child)}
        assert len(epochs) == rows // (NB - 1)
        assert all(sum(b // NB == e for b in kept_batch_ids(child)) == NB - 1 for e in epochs)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("granularity", ["batch", "epoch"])
def test_incomplete_batches_never_kept(store: Store, parent: Artifact, metric: str,
                                       granularity: str) -> None:
    child = prune(store, PruneConfig(ratio=1.0, granularity=granularity, metric=metric), parent)
    index = open_labels(child).arrays["image_index"][:]
    assert (index >= 0).all()
    assert all((b + 1) % NB != 0 for b in kept_batch_ids(child))  # no last batch of an epoch
    assert child.metrics["rows"] == COMPLETE


# ------------------------------------------------------- rows, attrs, lineage
def test_pruned_rows_equal_parent_rows_in_every_array(store: Store, parent: Artifact) -> None:
    child = prune(store, PruneConfig(ratio=2.5, metric="confidence", select="uniform"), parent,
                  rows_per_chunk=5)
    src, dst = open_labels(parent), open_labels(child)
    kept = np.array(kept_batch_ids(child))  # batch_id == parent row here
    assert list(kept) == sorted(kept) and len(kept) == 24
    assert dst.rows_per_chunk == 5
    expected = src.read_rows(kept)
    got = dst.read(0, dst.rows)
    for name in SCHEMA:
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name
    attrs = dst.attrs
    assert attrs["parent_id"] == parent.id
    assert attrs["lineage"] == [parent.id]
    assert (attrs["ratio"], attrs["granularity"], attrs["metric"], attrs["select"]) == (
        2.5, "batch", "confidence", "uniform")
    assert (attrs["calibrate_easy"], attrs["calibrate_hard"], attrs["seed"]) == (0.0, 0.0, 0)
    assert attrs["rows"] == 24 and attrs["batches_per_epoch"] == NB and attrs["epochs"] == E
    assert attrs["images_id"] == src.attrs["images_id"]
    assert child.parents == [parent.id]
    assert child.selectors["ratio"] == 2.5 and child.selectors["ipc"] == 3
    assert child.selectors["metric"] == "confidence"
    assert child.selectors["granularity"] == "batch"


def test_bfloat16_rows_copied_bit_for_bit(store: Store) -> None:
    parent = make_labels(store, make_images(store), logits_dtype="bfloat16")
    child = prune(store, PruneConfig(ratio=4.0, metric="diff", select="easy"), parent)
    src, dst = open_labels(parent), open_labels(child)
    kept = np.array(kept_batch_ids(child))
    assert dst.attrs["logits_dtype"] == "bfloat16" and len(kept) == 15
    assert dst.arrays["logits"][:].tobytes() == src.read_rows(kept).logits.tobytes()


def test_pruning_a_pruned_store_composes(store: Store, parent: Artifact) -> None:
    mid = prune(store, PruneConfig(ratio=2.0), parent)
    leaf = prune(store, PruneConfig(ratio=2.0, metric="first"), mid)
    assert mid.metrics["rows"] == 30 and leaf.metrics["rows"] == 15
    assert open_labels(leaf).attrs["lineage"] == [parent.id, mid.id]
    assert open_labels(leaf).attrs["parent_id"] == mid.id
    assert leaf.parents == [mid.id]
    assert leaf.selectors["ratio"] == 4.0 and leaf.metrics["total_ratio"] == 4.0
    mid_ids = kept_batch_ids(mid)
    assert kept_batch_ids(leaf) == mid_ids[:15]  # `first` of the parent's (pruned) rows
    src = open_labels(parent)
    leaf_rows = open_labels(leaf).read(0, 15)
    assert leaf_rows.logits.tobytes() == src.read_rows(np.array(mid_ids[:15])).logits.tobytes()


def test_epoch_granularity_refuses_partial_epochs(store: Store, parent: Artifact) -> None:
    mid = prune(store, PruneConfig(ratio=2.0), parent)
    with pytest.raises(ConfigError, match="whole epochs"):
        prune(store, PruneConfig(ratio=2.0, granularity="epoch"), mid)
    # an epoch-pruned store is made of whole epochs: it can be pruned by epoch again
    mid_e = prune(store, PruneConfig(ratio=2.0, granularity="epoch"), parent)
    leaf = prune(store, PruneConfig(ratio=2.0, granularity="epoch"), mid_e)
    assert mid_e.metrics["rows"] == 10 * (NB - 1) and leaf.metrics["rows"] == 5 * (NB - 1)


def test_same_config_is_cached(store: Store, parent: Artifact) -> None:
    first = prune(store, PruneConfig(ratio=4.0), parent)
    again = prune(store, PruneConfig(ratio=4.0), parent)
    assert not first.cached and again.cached and again.id == first.id
    forced = prune(store, PruneConfig(ratio=4.0), parent, force=True)
    assert not forced.cached and kept_batch_ids(forced) == kept_batch_ids(first)


# ---------------------------------------------------------- random and first
def test_random_is_seeded(store: Store, parent: Artifact) -> None:
    runs = {seed: kept_batch_ids(prune(store, PruneConfig(ratio=4.0, seed=seed), parent))
            for seed in (0, 1, 2)}
    assert len({tuple(v) for v in runs.values()}) == 3  # seeds differ
    assert all(len(v) == 15 for v in runs.values())
    # reproducible: a fresh store, same seed, same rows
    other = Store(store.root.parent / "other")
    again = prune(other, PruneConfig(ratio=4.0, seed=1), make_labels(other, make_images(other)))
    assert kept_batch_ids(again) == runs[1]


def test_first_is_the_authors_rule(store: Store, parent: Artifact) -> None:
    # Their pool: global batch order, the last batch of each epoch excluded; keep the first n.
    n = math.floor(R / 2.5)
    authors = [b for b in range(E * NB) if (b + 1) % NB != 0][:n]
    child = prune(store, PruneConfig(ratio=2.5, metric="first"), parent)
    assert kept_batch_ids(child) == authors
    epochs = prune(store, PruneConfig(ratio=4.0, metric="first", granularity="epoch"), parent)
    assert kept_batch_ids(epochs) == [b for b in range(5 * NB) if (b + 1) % NB != 0]


# --------------------------------------------------------------- the scores
def _softmax(z: list[float]) -> list[float]:
    m = max(z)
    ex = [math.exp(v - m) for v in z]
    return [v / sum(ex) for v in ex]


def hand_score(metric: str, rows: LabelRows, r: int) -> float:
    """Appendix E.1's scores for row r, computed slot by slot in plain Python."""
    logits = rows.logits.astype(np.float64)
    lam = float(rows.mix_lambda[r])
    values = []
    for s in range(B):
        img = int(rows.image_index[r, s])
        if img < 0:
            continue
        partner_slot = int(rows.mix_index[r, s])
        w = 1.0 if partner_slot == s else lam  # the own image's share of this slot
        y, y2 = CLASSES[img], CLASSES[int(rows.image_index[r, partner_slot])]
        p = _softmax(list(logits[r, s]))
        ranked = sorted(range(C), key=lambda c: -p[c])
        if metric == "confidence":
            v = p[ranked[0]]
        elif metric == "diff":
            v = p[ranked[0]] - p[ranked[1]]
        elif metric == "correct":
            v = w * (ranked[0] == y) + (1 - w) * (ranked[0] == y2)
        elif metric == "signed-diff":
            def margin(c: int, p: list[float] = p) -> float:
                return p[c] - max(p[k] for k in range(C) if k != c)
            v = w * margin(y) + (1 - w) * margin(y2)
        elif metric == "cut-ratio":
            v = max(w, 1 - w)
        values.append(v)
    return sum(values) / len(values)


@pytest.mark.parametrize("metric", SCORES)
def test_scores_match_hand_computation(parent: Artifact, metric: str) -> None:
    labels = open_labels(parent)
    classes = image_labels(Path(parent.path).parents[1] / "images"
                           / labels.attrs["images_id"]).numpy()
    assert classes.tolist() == CLASSES
    got = row_scores(labels, metric, classes)
    rows = labels.read(0, R)
    want = np.array([hand_score(metric, rows, r) for r in range(R)])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.ptp(want) > 0.1  # the hand-built store makes every score vary
    if metric == "correct":  # λ-weighting is exercised: some rows score strictly in (0, 1)
        assert ((want > 0) & (want < 1) & (np.abs(want * 4 - np.round(want * 4)) > 1e-3)).any()


def test_known_values_on_one_slot() -> None:
    from lpld_cli.prune import slot_scores

    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]]))
    own, partner = torch.tensor([[0, 0]]), torch.tensor([[2, 2]])
    mixed, lam = torch.tensor([[False, True]]), torch.tensor([0.25])
    score = {m: slot_scores(m, logits, own, partner, mixed, lam)[0].tolist() for m in SCORES}
    close = pytest.approx
    assert score["confidence"] == close([0.7, 0.6], abs=1e-6)
    assert score["diff"] == close([0.5, 0.3], abs=1e-6)
    assert score["correct"] == close([1.0, 0.75], abs=1e-6)  # slot 2: top-1 is the partner's
    # slot 2: 0.25·(0.1 − 0.6) + 0.75·(0.6 − 0.3)
    assert score["signed-diff"] == close([0.5, 0.25 * -0.5 + 0.75 * 0.3], abs=1e-6)
    assert score["cut-ratio"] == close([1.0, 0.75], abs=1e-6)


def _pool_scores(parent: Artifact, metric: str) -> dict[int, float]:
    rows = open_labels(parent).read(0, R)
    return {r: hand_score(metric, rows, r) for r in range(R) if (r + 1) % NB != 0}


@pytest.mark.parametrize("metric", SCORES)
def test_easy_and_hard_pick_opposite_ends(store: Store, parent: Artifact, metric: str) -> None:
    scores = _pool_scores(parent, metric)
    by_score = sorted(scores, key=lambda r: (scores[r], r))
    picked = {}
    for select in ("easy", "hard", "uniform"):
        child = prune(store, PruneConfig(ratio=4.0, metric=metric, select=select), parent)
        picked[select] = kept_batch_ids(child)
        assert len(picked[select]) == 15
    easy = [scores[r] for r in picked["easy"]]
    hard = [scores[r] for r in picked["hard"]]
    uniform = [scores[r] for r in picked["uniform"]]
    # easy = the 15 highest scores, hard = the 15 lowest (ties aside)
    assert min(easy) >= sorted(scores.values())[-15] - 1e-5
    assert max(hard) <= sorted(scores.values())[14] + 1e-5
    assert min(easy) >= max(hard) - 1e-5
    assert set(picked["hard"]) == set(by_score[:15]) or metric in ("correct", "cut-ratio")
    # uniform: one row in each of 15 strata of the sorted scores (40 / 15: every ~2.7th)
    assert np.mean(hard) < np.mean(uniform) < np.mean(easy)
    assert min(uniform) <= scores[by_score[2]] + 1e-5
    assert max(uniform) >= scores[by_score[-3]] - 1e-5


def test_calibration_drops_extremes_by_confidence(store: Store, parent: Artifact) -> None:
    conf = _pool_scores(parent, "confidence")
    ranked = sorted(conf, key=lambda r: (conf[r], r))  # least confident first
    # drop ⌊0.25·40⌋ = 10 least and ⌊0.1·40⌋ = 4 most confident, keep all the rest (1x)
    child = prune(store, PruneConfig(ratio=1.0, calibrate_hard=0.25, calibrate_easy=0.1),
                  parent)
    assert kept_batch_ids(child) == sorted(ranked[10:-4])
    # then random pruning from what is left
    small = prune(store, PruneConfig(ratio=6.0, calibrate_hard=0.25, calibrate_easy=0.1),
                  parent)
    assert small.metrics["rows"] == 10
    assert set(kept_batch_ids(small)) <= set(ranked[10:-4])


def test_selection_is_refused_without_a_score(parent: Artifact, store: Store) -> None:
    with pytest.raises(ConfigError, match="--select applies to scored metrics"):
        prune(store, PruneConfig(ratio=2.0, metric="random", select="easy"), parent)
    assert PruneConfig(metric="diff").select == "uniform"


@pytest.mark.parametrize(("config", "message"), [
    (PruneConfig(ratio=0.5), "at least 1x"),
    (PruneConfig(metric="loss"), "unknown --metric 'loss'"),
    (PruneConfig(metric="diff", select="middle"), "unknown --select 'middle'"),
    (PruneConfig(granularity="row"), "unknown --granularity 'row'"),
    (PruneConfig(calibrate_easy=1.0), r"--calibrate-easy must be a fraction in \[0, 1\)"),
    (PruneConfig(calibrate_hard=-0.1), r"--calibrate-hard must be a fraction in \[0, 1\)"),
    (PruneConfig(calibrate_easy=0.5, calibrate_hard=0.5), "must be below 1"),
])
def test_config_validation(config: PruneConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.validate()


# ------------------------------------------------------------------------ CLI
runner = CliRunner()


def cli(store: Store, *args: str):
    return runner.invoke(app, ["prune", *args, "--store", str(store.root)])


@pytest.mark.parametrize(("args", "message"), [
    (["--ratio", "0x"], "--ratio must be at least 1x"),
    (["--ratio", "-3"], "--ratio must be at least 1x"),
    (["--ratio=-3"], "--ratio must be at least 1x"),
    (["--ratio", "abc"], "is not a number"),
    (["--ratio", "0.5x"], "--ratio must be at least 1x"),
    (["--ratio", "4x", "--metric", "loss"], "unknown --metric 'loss'"),
    (["--ratio", "4x", "--metric", "diff", "--select", "mid"], "unknown --select 'mid'"),
    (["--ratio", "4x", "--calibrate-easy", "1"], "--calibrate-easy must be a fraction"),
    (["--ratio", "4x", "--calibrate-hard", "-0.2"], "--calibrate-hard must be a fraction"),
    (["--ratio", "4x", "--calibrate-easy", "0.6", "--calibrate-hard", "0.4"],
     "must be below 1"),
])
def test_cli_bad_input(store: Store, parent: Artifact, args: list[str], message: str) -> None:
    result = cli(store, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_from_a_non_label_artifact(store: Store, parent: Artifact) -> None:
    images_id = open_labels(parent).attrs["images_id"]
    result = cli(store, "--ratio", "4x", "--from", images_id[:12])
    assert result.exit_code == 2
    assert "is a images, not a labels" in result.stderr


def test_cli_no_label_store(tmp_path: Path) -> None:
    empty = Store(tmp_path / "empty")
    result = cli(empty, "--ratio", "40x")
    assert result.exit_code == 2
    assert "Error: no labels in store" in result.stderr and "lpld relabel" in result.stderr


def test_cli_only_unpruned_parents_by_default(store: Store, parent: Artifact) -> None:
    pruned = prune(store, PruneConfig(ratio=2.0), parent)  # newer, but pruned
    result = cli(store, "--ratio", "4x", "--ipc", "3", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["parents"] == [parent.id] != [pruned.id]
    assert payload["metrics"]["rows"] == 15 and payload["metrics"]["parent_rows"] == R
    assert payload["artifact"]["kind"] == "labels" and payload["config"]["ratio"] == 4.0
    again = json.loads(cli(store, "--ratio", "4", "--ipc", "3", "--json").stdout)
    assert again["artifact"]["cached"] is True and again["artifact"]["id"] == \
        payload["artifact"]["id"]
    other_ipc = cli(store, "--ratio", "4x", "--ipc", "50")
    assert other_ipc.exit_code == 2 and "ipc=50" in other_ipc.stderr


@pytest.mark.slow  # a real `python -m lpld_cli` process: ~8 s of imports on a busy machine
def test_cli_end_to_end_subprocess(store: Store, parent: Artifact) -> None:
    proc = run_lpld("prune", "--ratio", "2.5x", "--metric", "correct", "--select", "hard",
                    "--from", parent.id[:10], "--json", store=store.root)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["metrics"]["rows"] == 24 and payload["command"] == "prune"
    assert payload["config"]["metric"] == "correct" and payload["config"]["select"] == "hard"
    assert "using labels" in proc.stderr


def test_cli_help_names_every_option() -> None:
    help_text = runner.invoke(app, ["prune", "--help"], terminal_width=200).stdout
    for word in ("--ratio", "--granularity", "--metric", "--select", "--calibrate-easy",
                 "--calibrate-hard", "--from", "UNPRUNED", "signed-diff", "softmax"):
        assert word in help_text, word


def test_damaged_chunk_is_reported_as_corruption(store: Store, parent: Artifact) -> None:
    from lpld_cli.errors import ArtifactCorruptedError

    chunk = next(p for p in (parent.path / "labels.zarr" / "logits" / "c").rglob("*")
                 if p.is_file())
    chunk.chmod(0o644)
    chunk.write_bytes(b"not a blosc frame")
    with pytest.raises(ArtifactCorruptedError, match="labels.zarr/logits"):
        prune(store, PruneConfig(ratio=2.0, metric="confidence"), parent)
    result = cli(store, "--ratio", "2x", "--from", parent.id)  # the CLI re-hashes first
    assert result.exit_code == 1 and "is corrupted" in result.stderr
