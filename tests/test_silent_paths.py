"""Silent paths made explicit (issue 16 deliverable 5): each either errors or warns saying
what it assumed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lpld_cli.data.datasets import load_dataset
from lpld_cli.errors import ArtifactCorruptedError, ConfigError, DataFormatError
from lpld_cli.models.bn_stats import ClassStats
from lpld_cli.models.teacher import Teacher
from lpld_cli.recover import bn_targets
from lpld_cli.storage.labels import LabelRows, LabelStore
from lpld_cli.storage.store import Staging
from lpld_cli.train import _load_checkpoint, _normalisation


def test_a_class_without_samples_is_an_error_not_a_zero_target() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    stats = {"1": ClassStats(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([4.0, 0.0, 2.0]))}
    teacher = Teacher(net, {"num_classes": 3}, {}, stats, "a" * 64)
    bn_targets(teacher, [0, 2], "class")
    with pytest.raises(ConfigError, match="class 1 has no samples"):
        bn_targets(teacher, [1], "class")
    bn_targets(teacher, [1], "global")  # the running statistics need no class counts


def _rows(start: int, n: int, b: int = 2, c: int = 3) -> LabelRows:
    return LabelRows(batch_id=np.arange(start, start + n, dtype=np.int32),
                     image_index=np.zeros((n, b), np.int32), crop=np.zeros((n, b, 4), np.float32),
                     flip=np.zeros((n, b), bool), mix_index=np.zeros((n, b), np.int32),
                     mix_lambda=np.ones(n, np.float32), mix_box=np.zeros((n, 4), np.int32),
                     logits=np.zeros((n, b, c), np.float16))


def test_unwritten_label_chunks_are_caught_before_promotion(tmp_path) -> None:
    store = LabelStore.create(tmp_path, rows=8, batch_size=2, num_classes=3, rows_per_chunk=2)
    for start in (0, 2, 6):  # rows 4-5 never written: they read as the fill value
        store.write(start, _rows(start, 2))
    with pytest.raises(ArtifactCorruptedError, match="2 of 8 rows unwritten"):
        store.check_batch_ids(np.arange(8))
    store.write(4, _rows(4, 2))
    store.check_batch_ids(np.arange(8))


def test_a_damaged_checkpoint_restarts_with_a_warning(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    model = torch.nn.Linear(2, 2)
    state = _load_checkpoint(Staging("student", "s" * 64, tmp_path, True), model,
                             torch.optim.SGD(model.parameters(), lr=0.1))
    assert state["epoch"] == 0
    err = capsys.readouterr().err
    assert "Warning:" in err and "unreadable" in err and "restarts from epoch 0" in err


def test_a_missing_labelling_teacher_warns_which_normalisation_it_assumes(
        capsys: pytest.CaptureFixture[str]) -> None:
    class _Data:
        name = "fashion-mnist"

        class preset:  # noqa: N801
            mean, std = (0.286,), (0.353,)

    assert _normalisation(_Data(), {"mean": [0.5], "std": [0.2]}) == {"mean": [0.5],
                                                                      "std": [0.2]}
    assert capsys.readouterr().err == ""
    norm = _normalisation(_Data(), None)
    assert norm == {"mean": [0.286], "std": [0.353]}
    assert "normalising them with the fashion-mnist preset's mean/std" in capsys.readouterr().err


def test_a_tiny_imagenet_val_line_that_does_not_match_is_an_error(tmp_path) -> None:
    for cls in ("n01", "n02"):
        (tmp_path / "train" / cls / "images").mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(tmp_path / "train" / cls / "images" / "a.JPEG")
    (tmp_path / "val" / "images").mkdir(parents=True)
    good = "val_0.JPEG\tn01\t0\t0\t10\t10\nval_1.JPEG\tn02\t0\t0\t10\t10\n"
    (tmp_path / "val" / "val_annotations.txt").write_text(good)
    assert len(load_dataset("tiny-imagenet", str(tmp_path)).test) == 2
    (tmp_path / "val" / "val_annotations.txt").write_text(good + "val_2.JPEG\tn99\t0\n")
    with pytest.raises(DataFormatError, match="val_annotations.txt:3"):
        load_dataset("tiny-imagenet", str(tmp_path))


def test_training_past_the_stored_epochs_says_it_replays_them(
        store_with_teacher, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from lpld_cli.relabel import RelabelConfig, relabel
    from lpld_cli.train import TrainConfig, train
    from tests.conftest import make_real_images

    store = store_with_teacher
    images = make_real_images(store, ipc=1)
    labels = relabel(store, RelabelConfig(epochs=2, batch_size=5), images,
                     store.newest("teacher"))
    tiny = TrainConfig(width=8, depth=2, epochs=2, batch_size=5)
    capsys.readouterr()
    train(store, tiny, images, labels, None, eval_every=0)
    assert "replays stored epoch" not in capsys.readouterr().err
    train(store, replace(tiny, epochs=3), images, labels, None, eval_every=0)
    assert ("Warning: training runs 3 epochs over a label store of 2 stored epoch(s): epoch e "
            "replays stored epoch e mod 2") in capsys.readouterr().err
