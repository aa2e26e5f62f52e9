"""Registries: adding a prune metric or a dataset is one registration, and it shows up in
`--help`, validation and the command (issue 12, "one file to add ...")."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lpld_cli.cli
import lpld_cli.commands.prune
import lpld_cli.commands.squeeze
from lpld_cli.data.presets import DATASETS, DatasetEntry, get_preset
from lpld_cli.data.scores import PRUNE_METRICS, Slots, metric
from lpld_cli.errors import ConfigError
from lpld_cli.registry import Registry
from lpld_cli.storage.store import Store
from tests.test_prune import COMPLETE, R, hand_rows, make_images, make_labels


def _rebuild_cli() -> object:
    """The CLI built again, as at start-up after a registering import."""
    for module in (lpld_cli.commands.prune, lpld_cli.commands.squeeze, lpld_cli.cli):
        importlib.reload(module)
    return lpld_cli.cli.app


@pytest.fixture
def toy_metric() -> Iterator[object]:
    @metric("toy-class0", "the softmax probability of class 0 (a test metric)")
    def class0(s: Slots) -> torch.Tensor:
        return s.prob[..., 0]

    yield _rebuild_cli()
    PRUNE_METRICS.remove("toy-class0")
    _rebuild_cli()


def _toy_loader(name: str, data: str | None):
    """Three classes of 8×8 gray images told apart by brightness, in memory."""
    from lpld_cli.data.datasets import RealData

    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 3
        level = 40 + 80 * labels.float()
        pixels = level.view(-1, 1, 1, 1) + 10 * torch.randn(n, 1, 8, 8, generator=gen)
        return pixels.clamp(0, 255).to(torch.uint8), labels

    (xtr, ytr), (xte, yte) = split(300), split(90)
    return RealData(name, DATASETS.get(name).preset, ["dark", "mid", "bright"],
                    train_images=xtr, train_labels=ytr, test_images=xte, test_labels=yte)


@pytest.fixture
def toy_dataset() -> Iterator[object]:
    preset = replace(get_preset("fashion-mnist"), image_size=8, mean=(0.5,), std=(0.25,),
                     teacher_epochs=2, teacher_batch_size=16, teacher_lr=0.05)
    DATASETS.add("toy-squares", DatasetEntry(preset, 3, _toy_loader), help="a test dataset")
    yield _rebuild_cli()
    DATASETS.remove("toy-squares")
    _rebuild_cli()


def test_a_toy_metric_is_in_help_and_prunes_by_its_score(toy_metric, tmp_path: Path) -> None:
    app = toy_metric
    runner = CliRunner()
    help_text = runner.invoke(app, ["prune", "--help"], terminal_width=400).output
    assert "toy-class0" in help_text and "probability of class 0 (a test" in help_text

    store = Store(tmp_path / "store")
    parent = make_labels(store, make_images(store))
    result = runner.invoke(app, ["prune", "--from", parent.id, "--ratio", "2", "--metric",
                                 "toy-class0", "--select", "easy", "--store", str(store.root),
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["config"]["metric"] == "toy-class0"
    # Oracle: numpy softmax of the hand-made logits, mean over each complete row's slots.
    rows = hand_rows(0)
    logits = rows.logits.astype(np.float64)
    prob0 = np.exp(logits[..., 0]) / np.exp(logits).sum(-1)
    complete = (rows.image_index >= 0).all(1)
    score = np.where(complete, prob0.mean(1), -np.inf)
    want = sorted(np.argsort(-score, kind="stable")[:R // 2].tolist())
    assert COMPLETE >= R // 2
    kept = Store(store.root).get(out["artifact"]["id"])
    from lpld_cli.storage.labels import LabelStore

    got = LabelStore.open(kept.path, kept.id).arrays["batch_id"][:].tolist()
    assert got == want


def test_an_unknown_metric_names_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        PRUNE_METRICS.check("nope")
    assert "--metric" in str(err.value) and "confidence" in err.value.hint


def test_a_toy_dataset_is_in_help_and_squeezes(toy_dataset, tmp_path: Path) -> None:
    app = toy_dataset
    runner = CliRunner()
    assert "toy-squares" in runner.invoke(app, ["squeeze", "--help"], terminal_width=400).output
    result = runner.invoke(app, ["squeeze", "--dataset", "toy-squares", "--width", "4",
                                 "--depth", "1", "--store", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["config"]["dataset"] == "toy-squares" and out["config"]["teacher_epochs"] == 2
    assert out["metrics"]["images_seen"] == 600
    assert out["metrics"]["top1"] >= 0.6  # brightness separates the classes


def test_registry_basics() -> None:
    reg: Registry[int] = Registry("thing", "--thing")
    reg.add("a", 1, help="first")

    @reg.register("b", help="second")
    def _b() -> None: ...

    assert reg.keys() == ("a", "b") and reg.choices() == "a | b"
    assert reg.described() == "a: first; b: second"
    with pytest.raises(ValueError):
        reg.add("a", 2)
    with pytest.raises(ConfigError, match="unknown --thing 'c'"):
        reg.get("c")
