"""Same command, same machine, same threads: byte-identical payload files for every kind
(issue 16 deliverable 1). Two stores run the same tiny pipeline; their artifacts must have
the same ids and the same sha256 for every payload file, and no payload file may carry a
timing (those go to the manifest's metrics) while the manifest records the host."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.storage.store import Store
from tests.conftest import needs_fmnist

pytestmark = needs_fmnist

SQUEEZE = ["squeeze", "--width", "8", "--depth", "2", "--teacher-epochs", "1",
           "--train-subset", "600", "--batch-size", "64"]
PIPELINE = [
    ["recover", "--ipc", "2", "--iterations", "3", "--classes-per-step", "10"],
    ["relabel", "--epochs", "2", "--batch-size", "10"],
    ["prune", "--ratio", "2x", "--metric", "random"],
    ["train", "--ratio", "2x", "--epochs", "2", "--width", "8", "--depth", "2",
     "--eval-every", "1"],
    ["train", "--labels", "online", "--epochs", "1", "--width", "8", "--depth", "2"],
    ["train", "--labels", "hard", "--epochs", "1", "--width", "8", "--depth", "2"],
]


def _run(root: Path, args: list[str]) -> dict:
    result = CliRunner().invoke(app, [*args, "--json", "--store", str(root)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _payload(root: Path, artifact_id: str, kind: str) -> dict:
    return json.loads((root / "objects" / kind / artifact_id / "manifest.json").read_text())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, teacher_store: Store) -> list[dict]:
    """Each command's result in two separate stores holding the same teacher."""
    runs: list[list[dict]] = []
    for name in ("a", "b"):
        root = tmp_path_factory.mktemp(f"determinism-{name}") / "store"
        shutil.copytree(teacher_store.root / "objects", root / "objects")
        runs.append([{"result": _run(root, args), "root": root} for args in PIPELINE])
    return [{"a": a, "b": b} for a, b in zip(*runs, strict=True)]


@pytest.mark.parametrize("step", range(len(PIPELINE)),
                         ids=[" ".join(args[:3]) for args in PIPELINE])
def test_two_identical_runs_give_byte_identical_payloads(two_runs: list[dict],
                                                         step: int) -> None:
    a, b = two_runs[step]["a"], two_runs[step]["b"]
    art_a, art_b = a["result"]["artifact"], b["result"]["artifact"]
    assert art_a["id"] == art_b["id"] and not art_a["cached"] and not art_b["cached"]
    ma = _payload(a["root"], art_a["id"], art_a["kind"])
    mb = _payload(b["root"], art_b["id"], art_b["kind"])
    assert ma["files"] == mb["files"], [f for f in ma["files"]
                                        if ma["files"][f] != mb["files"].get(f)]
    for manifest in (ma, mb):
        assert manifest["host"]["threads"] >= 1 and manifest["host"]["torch"]
        assert manifest["host"]["deterministic"] is True


def test_no_timing_in_student_payload(two_runs: list[dict]) -> None:
    student = two_runs[3]["a"]
    path = Path(student["result"]["artifact"]["path"])
    for line in (path / "metrics.jsonl").read_text().splitlines():
        assert "seconds" not in json.loads(line)
    assert len(student["result"]["metrics"]["epoch_seconds"]) == 2


def test_squeeze_twice_gives_byte_identical_teachers(tmp_path: Path) -> None:
    results = [_run(tmp_path / name, SQUEEZE) for name in ("a", "b")]
    ids = {r["artifact"]["id"] for r in results}
    assert len(ids) == 1
    files = [_payload(tmp_path / name, r["artifact"]["id"], "teacher")["files"]
             for name, r in zip(("a", "b"), results, strict=True)]
    assert files[0] == files[1], [f for f in files[0] if files[0][f] != files[1].get(f)]
