"""Encoded label stores end to end: relabel writes them, prune narrows them, train reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts
import torch
import zarr
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.data import augment
from lpld_cli.data.label_pool import row_from_store
from lpld_cli.data.presets import get_preset
from lpld_cli.errors import ConfigError
from lpld_cli.models.teacher import load_teacher, teacher_logits
from lpld_cli.prune import PruneConfig, prune, row_scores
from lpld_cli.relabel import RelabelConfig, relabel
from lpld_cli.reports.storage import label_row, plan_row
from lpld_cli.storage.encoding import LABEL_ARRAYS
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.labels import GROUP, LabelStore, decode_logits
from lpld_cli.storage.store import Store
from lpld_cli.train import TrainConfig, train
from tests.conftest import make_real_images, needs_fmnist
from tests.test_prune import C, R, make_images, make_labels


@pytest.fixture
def parent(tmp_path):
    store = Store(tmp_path / "store")
    return store, make_labels(store, make_images(store))


def _group(artifact):
    return zarr.open_group(str(artifact.path / GROUP), mode="r")


def _label_arrays(artifact) -> set[str]:
    return {n for n in _group(artifact).array_keys() if n in LABEL_ARRAYS}


def _tensorstore(artifact, name: str) -> np.ndarray:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file",
                                           "path": str(artifact.path / GROUP / name)}}
    return ts.open(spec, read=True).result().read().result()


def test_prune_reencodes_full_logits_to_topk(parent):
    store, labels = parent
    art = prune(store, PruneConfig(ratio=1.0, topk=2, topk_fill="lme", fill_temperature=2.0),
                labels, tail_at={"t": 2.0})
    assert _label_arrays(art) == {"topk_values", "topk_index", "topk_fill"}  # no logits
    attrs = dict(_group(art).attrs)
    assert (attrs["topk"], attrs["topk_fill"], attrs["fill_temperature"]) == (2, "lme", 2.0)
    assert attrs["source_id"] == labels.id and attrs["values_dtype"] == "float16"
    src = LabelStore.open(labels.path).read(0, R)
    full = decode_logits(src.logits, "float16").numpy()
    kept = np.flatnonzero((src.image_index >= 0).all(1))
    order = np.argsort(-full, axis=-1, kind="stable")[kept, :, :2]
    values = _tensorstore(art, "topk_values")
    np.testing.assert_array_equal(_tensorstore(art, "topk_index"), order)
    np.testing.assert_array_equal(values, np.take_along_axis(full[kept], order, -1))
    # the lme fill by hand: T·log(mean over the one dropped class of exp(z/T)) = that logit
    dropped = np.sort(full[kept], -1)[..., 0]
    np.testing.assert_allclose(_tensorstore(art, "topk_fill").astype(np.float32), dropped,
                               atol=2e-3)
    # the tail mass it reports: mean over slots of the dropped class's softmax at T = 2
    p = torch.softmax(torch.from_numpy(full[kept]).double() / 2, -1).numpy()
    assert abs(art.metrics["t"] - float(np.sort(p, -1)[..., 0].mean())) < 1e-9
    assert art.metrics["encoding"] == "top-2 lme@T2"


def test_prune_to_q8_bounds_and_tensorstore(parent):
    store, labels = parent
    art = prune(store, PruneConfig(ratio=1.0, logits_dtype="q8"), labels)
    assert _label_arrays(art) == {"logits", "logits_scale"}
    codes, scale = _tensorstore(art, "logits"), _tensorstore(art, "logits_scale")
    assert codes.dtype == np.uint8 and scale.dtype == np.float16
    src = LabelStore.open(labels.path).read(0, R)
    kept = np.flatnonzero((src.image_index >= 0).all(1))
    full = decode_logits(src.logits, "float16").numpy()[kept].astype(np.float64)
    shifted = full - full.max(-1, keepdims=True)
    err = np.abs(-codes.astype(np.float64) * scale.astype(np.float64)[..., None] - shifted)
    assert (err <= scale.astype(np.float64)[..., None] / 2 + 1e-6).all()
    row = label_row(store, art)
    assert row["components"]["logits"]["logical_bytes"] == len(kept) * 4 * (C + 2)


def test_widening_and_bad_encodings_are_refused(parent):
    store, labels = parent
    top1 = prune(store, PruneConfig(ratio=1.0, topk=1), labels)
    q4 = prune(store, PruneConfig(ratio=1.0, logits_dtype="q4"), labels)
    for art, config, why in [
            (top1, PruneConfig(ratio=2.0, topk=2), "below the number of classes|widening"),
            (top1, PruneConfig(ratio=2.0, logits_dtype="q8"), "values are stored as float16"),
            (top1, PruneConfig(ratio=2.0, topk=1, topk_fill="min"), "no min fill"),
            (q4, PruneConfig(ratio=2.0, logits_dtype="q8"), "widening"),
            (labels, PruneConfig(ratio=2.0, topk=3), "below the number of classes")]:
        with pytest.raises(ConfigError, match=why):
            prune(store, config, art)
    runner = CliRunner()
    for args, message in [(["--topk", "0"], "--topk must be at least 1"),
                          (["--topk", "3"], "below the number of classes"),
                          (["--logits-dtype", "int2"], "unknown --logits-dtype"),
                          (["--from", q4.id, "--logits-dtype", "float32"], "widening")]:
        if "--from" not in args:
            args = [*args, "--from", labels.id]
        result = runner.invoke(app, ["prune", "--ratio", "1x", *args,
                                     "--store", str(store.root)])
        assert result.exit_code != 0
        errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and message in errors[0], result.output
        assert "Traceback" not in result.output


def test_prune_metrics_score_topk_stores(parent):
    store, labels = parent
    top2 = prune(store, PruneConfig(ratio=1.0, topk=2), labels)
    pruned = LabelStore.open(top2.path)
    got = row_scores(pruned, "confidence")
    rows = pruned.read(0, pruned.rows)
    # hand: softmax over the two kept values only (the third class has no mass)
    v = rows.topk_values.astype(np.float64)
    p1 = 1 / (1 + np.exp(v[..., 1] - v[..., 0]))
    valid = rows.image_index >= 0
    np.testing.assert_allclose(got, (p1 * valid).sum(1) / valid.sum(1), rtol=1e-6)
    # and a pruned top-k store can be pruned again, by a score, narrowing K
    again = prune(store, PruneConfig(ratio=2.0, metric="diff", select="easy", topk=1), top2)
    assert _label_arrays(again) == {"topk_values", "topk_index"}
    np.testing.assert_array_equal(
        LabelStore.open(again.path).read(0, again.metrics["rows"]).topk_index[..., 0],
        rows.topk_index[np.isin(rows.batch_id, LabelStore.open(again.path).arrays[
            "batch_id"][:]), :, 0])


def test_plan_counts_every_component_of_an_encoding():
    base = plan_row("imagenet-1k", 10)
    top = plan_row("imagenet-1k", 10, topk=10, topk_fill="min", ratio=40)
    rows = top["rows"]
    assert rows == base["rows"] // 40
    # per slot: 10 fp16 values + 10 uint16 indices + one fp16 fill
    assert top["components"]["logits"]["logical_bytes"] == rows * 128 * (10 * 2 + 10 * 2 + 2)
    q4 = plan_row("imagenet-1k", 10, logits_dtype="q4")
    assert q4["components"]["logits"]["logical_bytes"] == base["rows"] * 128 * (500 + 2)
    assert q4["components"]["crop coords"] == base["components"]["crop coords"]
    with pytest.raises(ConfigError, match="below the number of classes"):
        plan_row("fashion-mnist", 10, topk=10)


@needs_fmnist
def test_relabel_topk_and_train_with_schedule_and_auto_student(store_with_teacher):
    store = store_with_teacher
    images = make_real_images(store, ipc=3)
    art = relabel(store, RelabelConfig(epochs=2, batch_size=10, topk=3, topk_fill="min"),
                  images)
    assert _label_arrays(art) == {"topk_values", "topk_index", "topk_fill"}
    labels = LabelStore.open(art.path)
    rows = labels.read(0, labels.rows)
    # relabel stored exactly the top-3 of the teacher's logits on the replayed row
    teacher = load_teacher(store.newest("teacher"))
    pixels, _, _ = load_image_set(images.path)
    bank = augment.ImageBank(pixels, teacher.data["mean"], teacher.data["std"])
    k = RelabelConfig().rows_per_forward  # recomputed as relabel did: block i mod K
    for i in (0, labels.rows - 1):
        fresh = teacher_logits(teacher.model, bank, row_from_store(rows, i),
                               torch.device("cpu"), rows_per_forward=k, block=i % k).float()
        top = torch.topk(fresh, 3, -1)
        np.testing.assert_array_equal(rows.topk_index[i], top.indices.numpy())
        np.testing.assert_array_equal(rows.topk_values[i], top.values.half().numpy())
        np.testing.assert_array_equal(rows.topk_fill[i], fresh.min(-1).values.half().numpy())
    config = TrainConfig(width=8, depth=2, epochs=3, batch_size=10, temperature=8.0,
                         temperature_schedule="step", temperature_step=1,
                         temperature_gamma=0.5, temperature_min=1.5,
                         student_temperature="auto")
    student = train(store, config, images, art, None, eval_every=0)
    history = [json.loads(line) for line in
               (student.path / "metrics.jsonl").read_text().splitlines()]
    assert [h["temperature"] for h in history] == [8.0, 4.0, 2.0]
    assert history[0]["student_temperature"] == 1.0  # LPQLD's CA starts at t = 1
    for before, after in zip(history, history[1:], strict=False):
        assert after["student_temperature"] == before["student_temperature_next"]
    assert all(0.01 <= h["student_temperature_next"] <= 1.0 for h in history)
    assert 0 <= student.metrics["top1"] <= 1
    # report accuracy names the pool's encoding
    from lpld_cli.reports.accuracy import accuracy_rows

    shown = {r["id"]: r["encoding"] for r in accuracy_rows(store)}
    assert shown[student.id] == "top-3 min"
    result = CliRunner().invoke(app, ["report", "accuracy", "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    assert any(student.id[:12] in ln and "top-3 min" in ln for ln in result.output.splitlines())
    # a config without the new options keeps the id it had before they existed
    assert "temperature_schedule" not in TrainConfig().identity()
    fmnist = get_preset("fashion-mnist")
    plain = RelabelConfig().resolved(fmnist).identity()
    assert "topk" not in plain and "topk_fill" not in plain
    # every encoding option changes the label store's id (its payload bytes differ)
    ids = {json.dumps(RelabelConfig(**kw).resolved(fmnist).identity(), sort_keys=True)
           for kw in ({}, {"logits_dtype": "q8"}, {"logits_dtype": "q4"}, {"topk": 3},
                      {"topk": 3, "topk_fill": "min"}, {"topk": 3, "topk_fill": "lme"},
                      {"topk": 3, "topk_fill": "lme", "fill_temperature": 2.0})}
    assert len(ids) == 7
    assert "topk" not in PruneConfig(ratio=2.0).identity()
    assert PruneConfig(ratio=2.0, topk=3).identity()["topk"] == 3
