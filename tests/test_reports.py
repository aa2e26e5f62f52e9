"""report accuracy (table, JSON, Fig. 1 plot) and report lineage (the chain back to the teacher)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.errors import ConfigError
from lpld_cli.reports.accuracy import accuracy_rows, disk_bytes, plot_accuracy
from lpld_cli.reports.lineage import lineage_rows
from lpld_cli.storage.store import Store
from lpld_cli.train import train
from tests.conftest import needs_fmnist
from tests.test_train import TINY, make_pipeline

pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory, teacher_store: Store) -> dict:
    p = make_pipeline(tmp_path_factory.mktemp("report-pipeline"), teacher_store)
    one = replace(TINY, epochs=1)
    store, images = p["store"], p["images"]
    p["s_pruned"] = train(store, one, images, p["pruned"], None, eval_every=0)
    p["s_full"] = train(store, one, images, p["full"], None, eval_every=0)
    p["s_hard"] = train(store, replace(one, labels="hard"), images, None, None, eval_every=0)
    return p


def test_accuracy_rows(students: dict) -> None:
    rows = accuracy_rows(students["store"])
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {students[k].id for k in ("s_pruned", "s_full", "s_hard")}
    pruned, full, hard = (by_id[students[k].id] for k in ("s_pruned", "s_full", "s_hard"))
    assert (pruned["labels"], pruned["ratio"], pruned["granularity"]) == ("stored", 3.0, "batch")
    assert (full["labels"], full["ratio"]) == ("stored", 1.0)
    assert (hard["labels"], hard["ratio"], hard["label_bytes"]) == ("hard", None, 0)
    assert pruned["label_bytes"] == disk_bytes(students["pruned"])
    assert full["label_bytes"] == disk_bytes(students["full"]) > pruned["label_bytes"]
    assert pruned["label_rows"] == 4 and full["label_rows"] == 12
    for r in rows:
        assert (r["method"], r["ipc"], r["dataset"]) == ("real", 4, "fashion-mnist")
        assert r["top1"] == students["store"].get(r["id"]).metrics["top1"]
        assert r["image_bytes"] == disk_bytes(students["images"])
    # hard before stored (label mode), then the larger pool first
    assert [r["id"] for r in rows] == [students[k].id for k in ("s_hard", "s_full", "s_pruned")]


def test_accuracy_plot(students: dict, tmp_path: Path) -> None:
    out = plot_accuracy(accuracy_rows(students["store"]), tmp_path / "fig" / "acc.png")
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (660, 1080)  # 9 × 5.5 in at 120 dpi
    assert image.std() > 0.05  # something was drawn
    with pytest.raises(ConfigError, match="must be a .png file"):
        plot_accuracy(accuracy_rows(students["store"]), tmp_path / "acc.pdf")
    with pytest.raises(ConfigError, match="no students"):
        plot_accuracy([], tmp_path / "empty.png")


def test_lineage_of_a_pruned_student(students: dict) -> None:
    rows = lineage_rows(students["store"], students["s_pruned"].id[:10])
    shape = [(r["depth"], r["kind"], bool(r.get("seen"))) for r in rows]
    assert shape == [(0, "student", False), (1, "images", False), (2, "teacher", False),
                     (1, "labels", False), (2, "labels", False), (3, "images", True),
                     (3, "teacher", True)]
    student, images, teacher, pruned, full = rows[:5]
    assert student["id"] == students["s_pruned"].id and pruned["id"] == students["pruned"].id
    assert full["id"] == students["full"].id and teacher["id"] == students["teacher"].id
    assert pruned["config"]["ratio"] == 3.0 and pruned["config"]["granularity"] == "batch"
    assert pruned["config"]["metric"] == "random" and full["config"]["epochs"] == 4
    assert student["config"]["labels"] == "stored" and student["config"]["epochs"] == 1
    assert images["config"]["method"] == "real" and images["config"]["ipc"] == 4
    assert teacher["config"]["width"] == 16 and "top1" in teacher["metrics"]
    assert student["metrics"]["label_rows"] == 4


def test_report_commands(students: dict, tmp_path: Path) -> None:
    store = str(students["store"].root)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "accuracy", "--json", "--store", store,
                                 "--plot", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["report"] == "accuracy" and len(payload["rows"]) == 3
    assert (tmp_path / "a.png").stat().st_size > 10_000
    table = runner.invoke(app, ["report", "accuracy", "--store", store])
    assert table.stdout.splitlines()[0].split()[:3] == ["student", "dataset", "method"]
    assert len(table.stdout.splitlines()) == 4

    sid = students["s_full"].id
    result = runner.invoke(app, ["report", "lineage", sid[:12], "--json", "--store", store])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["kind"] for r in rows] == ["student", "images", "teacher", "labels", "images",
                                         "teacher"]
    tree = runner.invoke(app, ["report", "lineage", sid[:12], "--store", store]).stdout
    assert tree.splitlines()[0].startswith(f"student {sid[:12]}  model=convnet labels=stored")
    assert tree.splitlines()[3].startswith(f"  labels {students['full'].short}")
    missing = runner.invoke(app, ["report", "lineage", "abcdef12", "--store", store])
    assert missing.exit_code == 2 and "Error: no artifact abcdef12" in missing.stderr
