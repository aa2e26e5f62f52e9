"""train: exact replay of stored rows, the label pool sampler, resume, label modes, bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import lpld_cli.train as train_module
from lpld_cli.cli import app
from lpld_cli.data import augment
from lpld_cli.data.label_pool import LabelPool, Prefetcher, RowSampler
from lpld_cli.errors import ConfigError
from lpld_cli.models.teacher import load_teacher, teacher_logits
from lpld_cli.prune import PruneConfig, prune
from lpld_cli.relabel import RelabelConfig, relabel
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.labels import LabelStore, decode_logits
from lpld_cli.storage.store import Artifact, Store
from lpld_cli.train import CHECKPOINT, CHECKPOINT_ENV, TrainConfig, train
from tests.conftest import make_real_images, needs_fmnist

pytestmark = needs_fmnist

# A tiny student: fast on 2 shared cores, still a real BN ConvNet.
TINY = TrainConfig(width=8, depth=2, epochs=3, batch_size=16, lr=1e-3)  # unset: the preset's 3e-3


def make_pipeline(root: Path, teacher_store: Store) -> dict[str, Artifact]:
    """teacher → 40 real images → relabel (4 epochs × 3 rows of 16, the last of 8) → prune 3x."""
    shutil.copytree(teacher_store.root / "objects", root / "objects")
    store = Store(root)
    images = make_real_images(store, ipc=4)
    full = relabel(store, RelabelConfig(epochs=4, batch_size=16, rows_per_chunk=5), images)
    pruned = prune(store, PruneConfig(ratio=3.0, granularity="batch", metric="random"), full)
    return {"store": store, "teacher": store.newest("teacher"), "images": images,
            "full": full, "pruned": pruned}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, teacher_store: Store) -> dict:
    return make_pipeline(tmp_path_factory.mktemp("train-pipeline"), teacher_store)


def _row_key(row: augment.Row) -> str:
    return json.dumps([row.image_index.tolist(), row.crop.tolist(), row.flip.tolist(),
                       row.mix_index.tolist(), round(row.mix_lambda, 6), row.mix_box.tolist()])


# ------------------------------------------------------------- exact replay, the pool
def test_student_input_is_the_batch_the_teacher_labelled(pipeline: dict,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store, pruned, images = pipeline["store"], pipeline["pruned"], pipeline["images"]
    seen: list[tuple[augment.Row, torch.Tensor]] = []
    real_batch = train_module.student_batch

    def recording(x_all, row, size=None, contract=2):
        x = real_batch(x_all, row, size, contract)
        seen.append((row, x.clone()))
        return x

    monkeypatch.setattr(train_module, "student_batch", recording)
    student = train(store, TINY, images, pruned, None, eval_every=0)
    pool_store = LabelStore.open(pruned.path, pruned.id)
    pool_rows = pool_store.read(0, pool_store.rows)
    pool = LabelPool.open(pruned)
    keys = {_row_key(pool.get(i)[0]): i for i in range(pool.rows)}
    assert pool.order == "batch" and pool.rows == 4  # ⌊12 / 3⌋ rows kept
    assert len(seen) == TINY.epochs * 3  # each epoch draws as many rows as an unpruned one

    # The rows the parent store holds but the pool does not: never drawn.
    full = LabelStore.open(pipeline["full"].path)
    full_rows = full.read(0, full.rows)
    dropped = set(full_rows.batch_id.tolist()) - set(pool_rows.batch_id.tolist())
    assert len(dropped) == 8

    teacher = load_teacher(pipeline["teacher"])
    pixels, _, _ = load_image_set(images.path)
    bank = augment.ImageBank(pixels, teacher.data["mean"], teacher.data["std"])
    k = pool.attrs["rows_per_forward"]
    for row, x in seen:
        index = keys.get(_row_key(row))
        assert index is not None, "a trained row is not in the label pool"
        r = int(pool_rows.batch_id[index])
        assert r not in dropped
        # the same tensor relabel fed the teacher: block r mod K of its forward of K rows
        group: list = [None] * k
        group[r % k] = row
        fed = augment.replay_rows(bank, group)[(r % k) * 16:(r % k) * 16 + row.valid]
        assert torch.equal(x, fed)
        # ... and the stored logits are the teacher's on it (up to float16 storage)
        stored = decode_logits(pool_rows.logits[index], "float16")[:row.valid]
        fresh = teacher_logits(teacher.model, bank, row, torch.device("cpu"),
                               rows_per_forward=k, block=r % k)[:row.valid]
        torch.testing.assert_close(stored, fresh.to(torch.float16).float(), rtol=0, atol=0)
        assert torch.allclose(teacher.model(x), stored, atol=5e-2)
    assert student.metrics["label_rows"] == 4
    assert 1 <= student.metrics["label_rows_used"] <= 4


def test_sampler_orders() -> None:
    batch_id = np.array([0, 1, 2, 3, 4, 9, 10, 11])  # stored epochs 0, 1 (minus one), 3
    batch = RowSampler(batch_id, 3, "batch", seed=0)
    first = batch.epoch_rows(0)
    assert len(first) == 3 and set(first.tolist()) <= set(range(8))
    np.testing.assert_array_equal(first, RowSampler(batch_id, 3, "batch", 0).epoch_rows(0))
    draws = np.concatenate([batch.epoch_rows(e) for e in range(200)])
    assert set(draws.tolist()) == set(range(8))  # uniform over the pool, with replacement
    assert any(len(set(batch.epoch_rows(e).tolist())) < 3 for e in range(200))
    assert not np.array_equal(batch.epoch_rows(0), batch.epoch_rows(1))

    epoch = RowSampler(batch_id, 3, "epoch", seed=0)
    groups = {(0, 1, 2), (3, 4), (5, 6, 7)}
    picked = {tuple(epoch.epoch_rows(e).tolist()) for e in range(60)}
    assert picked == groups  # always one whole stored epoch, in batch order

    sequential = RowSampler(np.arange(6), 2, "sequential", seed=0)
    assert [sequential.epoch_rows(e).tolist() for e in range(4)] == [[0, 1], [2, 3], [4, 5],
                                                                     [0, 1]]


def test_prefetcher_serves_the_sampled_rows(pipeline: dict) -> None:
    pool = LabelPool.open(pipeline["full"])
    sampler = pool.sampler(seed=3)
    direct = LabelStore.open(pipeline["full"].path)
    with Prefetcher(pool, sampler, start_epoch=1, epochs=3, depth=2) as prefetch:
        for epoch in (1, 2):
            got = list(prefetch.epoch(epoch))
            want = sampler.epoch_rows(epoch)
            assert [b.row_id for b in got] == want.tolist()
            rows = direct.read_rows(want)
            for j, b in enumerate(got):
                np.testing.assert_array_equal(b.row.image_index.numpy(), rows.image_index[j])
                assert torch.equal(b.logits, decode_logits(rows.logits[j], "float16"))
    assert prefetch.wait_seconds >= 0 and prefetch.used_rows == set(
        sampler.epoch_rows(1).tolist()) | set(sampler.epoch_rows(2).tolist())


def test_label_sources_yield_the_rows_and_targets_of_their_mode(pipeline: dict) -> None:
    """The three label sources against independent paths: the store read directly, the
    `epoch_rows` streams, and relabel's stored logits for the online teacher's targets."""
    from lpld_cli.train import DrawnRows, OnlineLabels, StoredLabels, label_source

    full, cpu = pipeline["full"], torch.device("cpu")
    net = load_teacher(pipeline["teacher"], cpu)
    pixels, _, _ = load_image_set(pipeline["images"].path)
    bank = augment.ImageBank(pixels, net.data["mean"], net.data["std"], cpu)
    config = replace(TINY, mix="cutmix", seed=0, precision="fp32").resolved(row_size=16)
    pool = LabelPool.open(full)

    stored = label_source(config, bank, 28, pool, None, cpu)
    assert isinstance(stored, StoredLabels)
    want = pool.sampler(0).epoch_rows(0)
    rows = LabelStore.open(full.path).read_rows(want)
    got = list(stored.epoch(0))
    assert len(got) == len(want) == 3
    for j, (row, target) in enumerate(got):
        np.testing.assert_array_equal(row.image_index.numpy(), rows.image_index[j])
        logits = decode_logits(rows.logits[j], "float16")[:row.valid]
        assert target is not None and torch.equal(target.logits, logits)
    assert stored.used_rows == set(want.tolist())
    stored.close()

    hard = label_source(replace(config, labels="hard"), bank, 28, None, None, cpu)
    assert type(hard) is DrawnRows
    assert [(_row_key(r), t) for r, t in hard.epoch(2)] == [
        (_row_key(r), None) for r in augment.epoch_rows(40, 16, 28, "cutmix", 0, 2)]
    assert hard.label_seconds == 0 and hard.used_rows == set()

    fresh = label_source(replace(config, labels="online"), bank, 28, None, net.model, cpu)
    assert isinstance(fresh, OnlineLabels)
    assert [_row_key(r) for r, _ in fresh.epoch(1)] == [
        _row_key(r) for r in augment.epoch_rows(40, 16, 28, "cutmix", 0, 1, "online")]
    replayed = label_source(replace(config, labels="online", online_stream="relabel"), bank,
                            28, None, net.model, cpu)
    for step, (row, target) in enumerate(replayed.epoch(1)):  # relabel's epoch 1: rows 3-5
        stored_row, stored_target = pool.get(3 + step)
        assert _row_key(row) == _row_key(stored_row) and target is not None
        assert target.logits.shape == (row.valid, 10)
        torch.testing.assert_close(target.logits, stored_target.logits[:row.valid],
                                   atol=2e-2, rtol=1e-2)  # stored as float16
    assert replayed.label_seconds > 0


# --------------------------------------------------------------------- the artifact
def test_student_artifact_and_cache(pipeline: dict) -> None:
    store, full, images = pipeline["store"], pipeline["full"], pipeline["images"]
    student = train(store, TINY, images, full, None, eval_every=1)
    assert student.kind == "student" and not student.cached
    assert student.parents == [images.id, full.id]
    assert student.selectors == {"dataset": "fashion-mnist", "ipc": 4, "method": "real",
                                 "ratio": 1.0, "granularity": None, "labels": "stored",
                                 "model": "convnet"}
    m = student.metrics
    assert m["epochs"] == 3 and m["steps"] == 9 and m["label_rows"] == 12
    assert m["label_rows_used"] == 9  # sequential: stored epochs 0, 1, 2
    assert m["label_pool_bytes"] == sum(f["bytes"] for f in full.manifest["files"].values())
    assert 0.0 <= m["label_wait_share"] < 1.0 and 0.0 <= m["top1"] <= m["top5"] <= 1.0
    assert set(student.manifest["files"]) == {"weights.safetensors", "metrics.jsonl",
                                              "model.json"}
    lines = [json.loads(x) for x in student.file("metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all(0 <= r["test_top1_subset"] <= 1 for r in lines[:2])  # progress probes
    assert lines[-1]["top1"] == m["top1"] and "test_top1_subset" not in lines[-1]
    assert lines[0]["lr"] == pytest.approx(1e-3) and lines[2]["lr"] < lines[1]["lr"]
    weights = load_file(str(student.file("weights.safetensors")))
    assert weights["classifier.weight"].shape == (10, 8 * 7 * 7)
    again = train(store, TINY, images, full, None)
    assert again.cached and again.id == student.id


def test_online_and_hard_labels(pipeline: dict) -> None:
    store, images, teacher = pipeline["store"], pipeline["images"], pipeline["teacher"]
    online = train(store, replace(TINY, labels="online", epochs=2), images, None, teacher)
    hard = train(store, replace(TINY, labels="hard", epochs=2), images, None, None)
    assert online.parents == [images.id, teacher.id] and hard.parents == [images.id]
    assert online.selectors["labels"] == "online" and hard.selectors["labels"] == "hard"
    for s in (online, hard):
        assert s.metrics["label_rows"] == 0 and s.metrics["label_pool_bytes"] == 0
        assert s.metrics["steps"] == 2 * 3 and 0 <= s.metrics["top1"] <= 1
    assert online.metrics["label_wait_share"] > 0  # the teacher's forward is the label cost
    assert hard.metrics["label_wait_share"] == 0
    with pytest.raises(ConfigError, match="needs the teacher"):
        train(store, replace(TINY, labels="online"), images, None, None)


def test_online_equals_the_unpruned_store_it_would_have_written(pipeline: dict) -> None:
    """Online labels with relabel's sampler see the very rows relabel stored (same seed)."""
    pool = LabelPool.open(pipeline["full"])
    rows = list(augment.epoch_rows(40, 16, 28, "cutmix", 0, 1))
    assert [_row_key(r) for r in rows] == [_row_key(pool.get(i)[0]) for i in (3, 4, 5)]


def test_online_draws_its_own_stream_per_seed(pipeline: dict) -> None:
    """The default online stream is not relabel's: no row of it is a stored row, and each
    train seed draws another; `--online-stream relabel` replays the stored rows."""
    pool = LabelPool.open(pipeline["full"])
    stored = {_row_key(pool.get(i)[0]) for i in range(pool.rows)}
    for seed in (0, 1):
        fresh = [_row_key(r) for e in range(3)
                 for r in augment.epoch_rows(40, 16, 28, "cutmix", seed, e, "online")]
        assert not stored & set(fresh)
    a = [_row_key(r) for r in augment.epoch_rows(40, 16, 28, "cutmix", 0, 1, "online")]
    b = [_row_key(r) for r in augment.epoch_rows(40, 16, 28, "cutmix", 1, 1, "online")]
    assert a != b


def test_online_stream_names_the_student(pipeline: dict) -> None:
    store, images, teacher = pipeline["store"], pipeline["images"], pipeline["teacher"]
    base = replace(TINY, labels="online", epochs=1)
    fresh = train(store, base, images, None, teacher)
    replay = train(store, replace(base, online_stream="relabel"), images, None, teacher)
    assert fresh.config["online_stream"] == "fresh" and replay.config["online_stream"] == "relabel"
    assert fresh.id != replay.id
    w1 = load_file(str(fresh.file("weights.safetensors")))
    w2 = load_file(str(replay.file("weights.safetensors")))
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)  # other augmentations were seen
    explicit = train(store, replace(base, online_stream="fresh"), images, None, teacher)
    assert explicit.cached and explicit.id == fresh.id
    assert "online_stream" not in TINY.identity()  # stored / hard students keep their ids
    with pytest.raises(ConfigError, match="online only"):
        replace(TINY, online_stream="fresh").validate()
    with pytest.raises(ConfigError, match="unknown --online-stream"):
        replace(base, online_stream="stale").validate()


def test_temperature_options_are_refused_with_mse_gt() -> None:
    """mse-gt compares raw logits: a student temperature or a schedule would be silently
    ignored, so each is an error; with kl both are accepted."""
    for extra in ({"student_temperature": "auto"}, {"student_temperature": "0.5"},
                  {"temperature_schedule": "step"}):
        with pytest.raises(ConfigError, match="apply to --loss kl only"):
            replace(TINY, loss="mse-gt", **extra).validate()
        replace(TINY, loss="kl", **extra).validate()
    replace(TINY, loss="mse-gt").validate()


# ------------------------------------------------------------------------- resume
class _StopAfter:
    """A reporter whose epoch task raises after `n` epochs (an interrupted run)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.logs: list[str] = []

    def task(self, description, total):
        outer = self

        class _Task:
            done = 0

            def advance(self, k=1, **fields):
                self.done += k
                if self.done >= outer.n and fields:
                    raise KeyboardInterrupt

            def close(self):
                pass

        return _Task()

    def log(self, message: str) -> None:
        self.logs.append(message)


def test_resumed_run_ends_with_the_same_weights(pipeline: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_ENV, "0")  # a checkpoint after every epoch
    config = replace(TINY, epochs=4)
    root = pipeline["store"].root
    stores = []
    for name in ("whole", "cut"):
        shutil.copytree(root / "objects", tmp_path / name / "objects")
        stores.append(Store(tmp_path / name))
    whole_store, cut_store = stores
    images = whole_store.get(pipeline["images"].id)
    pruned = whole_store.get(pipeline["pruned"].id)
    whole = train(whole_store, config, images, pruned, None, eval_every=0)

    images = cut_store.get(pipeline["images"].id)
    pruned = cut_store.get(pipeline["pruned"].id)
    with pytest.raises(KeyboardInterrupt):
        train(cut_store, config, images, pruned, None, eval_every=0, reporter=_StopAfter(2))
    staging = cut_store.staging / whole.id
    assert (staging / CHECKPOINT).is_file()
    assert torch.load(staging / CHECKPOINT, weights_only=True)["epoch"] == 2
    reporter = _StopAfter(10**6)
    resumed = train(cut_store, config, images, pruned, None, eval_every=0, reporter=reporter)
    assert resumed.id == whole.id and "resuming the student from epoch 2/4" in reporter.logs
    a = load_file(str(whole.file("weights.safetensors")))
    b = load_file(str(resumed.file("weights.safetensors")))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["top1"] == whole.metrics["top1"]
    assert resumed.metrics["label_rows_used"] == whole.metrics["label_rows_used"]
    assert len(resumed.file("metrics.jsonl").read_text().splitlines()) == 4


def test_checkpoints_wait_for_their_interval(pipeline: dict, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs of a fraction of a second write no checkpoint before the interval has passed
    (one per epoch cost ~5% of an IPC10 run): an interrupted run starts again from epoch 0
    and ends on the same weights as an uninterrupted run checkpointing every epoch."""
    stores = []
    for name in ("every", "rare"):
        shutil.copytree(pipeline["store"].root / "objects", tmp_path / name / "objects")
        stores.append(Store(tmp_path / name))
    config = replace(TINY, epochs=4, seed=5)

    def parents(store: Store) -> tuple[Artifact, Artifact]:
        return store.get(pipeline["images"].id), store.get(pipeline["pruned"].id)

    monkeypatch.setenv(CHECKPOINT_ENV, "0")
    every = train(stores[0], config, *parents(stores[0]), None, eval_every=0)
    monkeypatch.setenv(CHECKPOINT_ENV, "3600")
    store = stores[1]
    with pytest.raises(KeyboardInterrupt):
        train(store, config, *parents(store), None, eval_every=0, reporter=_StopAfter(3))
    staging = store.staging / every.id
    assert staging.is_dir() and not (staging / CHECKPOINT).exists()  # 3 epochs, none written
    reporter = _StopAfter(10**6)
    again = train(store, config, *parents(store), None, eval_every=0, reporter=reporter)
    assert not any("resuming" in line for line in reporter.logs)
    assert again.id == every.id
    a = load_file(str(every.file("weights.safetensors")))
    b = load_file(str(again.file("weights.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.file("metrics.jsonl").read_text() == every.file("metrics.jsonl").read_text()


@pytest.mark.parametrize("value,message", [
    ("soon", r"LPLD_CHECKPOINT_SECONDS must be a number of seconds \(got 'soon'\)"),
    ("-1", r"LPLD_CHECKPOINT_SECONDS must be at least 0 \(got -1.0\)"),
    ("inf", r"LPLD_CHECKPOINT_SECONDS must be at least 0 \(got inf\)"),
    ("nan", r"LPLD_CHECKPOINT_SECONDS must be at least 0 \(got nan\)")])
def test_a_bad_checkpoint_interval_is_refused_before_any_work(
        pipeline: dict, monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv(CHECKPOINT_ENV, value)
    store = pipeline["store"]
    before = sorted(store.staging.glob("*"))
    with pytest.raises(ConfigError, match=message):
        train(store, replace(TINY, seed=6), pipeline["images"], pipeline["pruned"], None)
    assert sorted(store.staging.glob("*")) == before  # no staging, no lock


# --------------------------------------------------------------------- bad input
def test_batch_size_must_match_the_stored_rows(pipeline: dict) -> None:
    with pytest.raises(ConfigError) as err:
        train(pipeline["store"], replace(TINY, batch_size=32), pipeline["images"],
              pipeline["full"], None)
    assert err.value.message == "--batch-size 32 differs from the label store's row size 16"
    assert "--batch-size 16" in err.value.hint


def _cli(store: Store, *args: str):
    return CliRunner().invoke(app, ["train", *args, "--store", str(store.root), "--width", "8",
                                    "--depth", "2"])


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "Error: --epochs must be at least 1 (got 0)"),
    (["--temperature", "0"], "Error: --temperature must be a positive number (got 0.0)"),
    (["--loss", "huber"], "Error: unknown --loss 'huber'"),
    (["--optimizer", "lamb"], "Error: unknown --optimizer 'lamb'"),
    (["--batch-size", "32"], "Error: --batch-size 32 differs from the label store's row size 16"),
    (["--ratio", "40x"], "Error: no label store pruned to 40x"),
    (["--ratio", "0x"], "Error: --ratio must be at least 1x"),
    (["--model", "timm:vit_tiny_patch16_224"],
     "Error: model timm:vit_tiny_patch16_224 does not accept 28px 1-channel images"),
])
def test_bad_input_is_one_line(pipeline: dict, args: list[str], message: str) -> None:
    result = _cli(pipeline["store"], "--epochs", "1", *args)
    assert result.exit_code == 2, result.output
    # the error is the last line, or the one before its hint
    assert any(line.startswith(message) for line in result.stderr.splitlines()[-2:]), \
        result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    if args[0] == "--ratio" and args[1] == "40x":
        assert "Hint: make one with `lpld prune --ratio 40x`" in result.stderr


def test_labels_of_the_wrong_kind(pipeline: dict) -> None:
    teacher = pipeline["teacher"]
    result = _cli(pipeline["store"], "--labels", teacher.id[:12])
    assert result.exit_code == 2
    assert f"Error: artifact {teacher.short} is a teacher, not a labels" in result.stderr


def test_train_command_json(pipeline: dict) -> None:
    pruned = pipeline["pruned"]
    result = _cli(pipeline["store"], "--ratio", "3x", "--epochs", "2", "--json",
                  "--eval-every", "0")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["command"] == "train" and payload["artifact"]["kind"] == "student"
    assert payload["parents"] == [pipeline["images"].id, pruned.id]
    assert {"top1", "top5", "epochs", "label_rows"} <= set(payload["metrics"])
    assert payload["metrics"]["label_rows"] == 4 and payload["config"]["batch_size"] == 16
    assert f"using labels {pruned.short} (newest matching)" in result.stderr
