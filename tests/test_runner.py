"""benchmarks/_runner.py: a phase of stage tasks in spawned workers, its results kept by key,
the same artifacts as the stages called in-process, and a finished student found cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._runner import Runner, run_stage
from lpld_cli.prune import PruneConfig, prune
from lpld_cli.relabel import RelabelConfig, relabel
from lpld_cli.storage.store import Store
from lpld_cli.train import TrainConfig, train
from tests.conftest import make_real_images, needs_fmnist

pytestmark = needs_fmnist


def test_a_phase_in_two_workers_makes_the_in_process_artifacts(store_with_teacher: Store
                                                               ) -> None:
    store = store_with_teacher
    images = make_real_images(store, ipc=2)
    labels = relabel(store, RelabelConfig(epochs=2, batch_size=10), images)
    tasks = {("prune", r): {"stage": "prune", "config": {"ratio": r}, "labels": labels.id}
             for r in (2.0, 4.0)}
    runner = Runner(store.root, "cpu", jobs=2, threads=1)
    runner.phase("prune", tasks, describe=lambda key, res: res["id"][:8])
    assert set(runner.results) == set(tasks)
    for (_, ratio), result in runner.results.items():
        direct = prune(store, PruneConfig(ratio=ratio), labels)  # the oracle: in-process
        assert direct.cached and result["id"] == direct.id and not result["cached"]
        assert result["metrics"]["rows"] == direct.metrics["rows"] == 4 // int(ratio)
    before = dict(runner.results)
    runner.phase("prune", tasks)  # keys already done are not run again
    assert runner.results == before


def test_a_finished_student_is_found_without_training(store_with_teacher: Store) -> None:
    store = store_with_teacher
    images = make_real_images(store, ipc=2)
    labels = relabel(store, RelabelConfig(epochs=2, batch_size=10), images)
    config = {"width": 8, "depth": 2, "epochs": 1, "batch_size": 10}
    task = {"stage": "train", "config": config, "images": images.id, "labels": labels.id,
            "store": str(store.root), "device": "cpu"}
    first = run_stage(task)
    again = run_stage(task)
    assert not first["cached"] and again["cached"] and again["id"] == first["id"]
    student = train(store, TrainConfig(**config), images, labels, None)
    assert student.cached and student.id == first["id"]
    assert again["metrics"]["top1"] == student.metrics["top1"]


def test_an_unknown_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage 'distil'"):
        run_stage({"stage": "distil", "config": {}, "store": str(tmp_path), "device": "cpu"})
