"""The whole pipeline on real Fashion-MNIST with the preset, through the real `lpld` command.

Slow (about 15 minutes on 2 CPU cores): it checks the acceptance floors of every stage
on one store, in the order the README's first command runs them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import needs_fmnist, run_lpld

pytestmark = [pytest.mark.slow, needs_fmnist]


def _json(*args: str, store: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = run_lpld(*args, "--json", store=store, timeout=1800)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), seconds


def test_preset_pipeline(tmp_path: Path) -> None:
    store = tmp_path / "store"
    squeeze, seconds = _json("squeeze", "--dataset", "fashion-mnist", store=store)
    assert squeeze["metrics"]["top1"] >= 0.90, squeeze["metrics"]
    assert seconds <= 600
    again, seconds = _json("squeeze", "--dataset", "fashion-mnist", store=store)
    assert again["artifact"]["cached"] is True and seconds < 5

    recover, seconds = _json("recover", "--ipc", "10", store=store)
    assert recover["parents"] == [squeeze["artifact"]["id"]]
    assert recover["metrics"]["images"] == 100 and recover["metrics"]["classes"] == 10
    assert recover["metrics"]["self_top1"] >= 0.90
    assert seconds <= 300

    relabel, seconds = _json("relabel", "--ipc", "10", store=store)
    assert relabel["metrics"]["rows"] == relabel["metrics"]["epochs"] * relabel["metrics"][
        "batches_per_epoch"]
    assert 0 < relabel["metrics"]["disk_bytes"] < relabel["metrics"]["logical_bytes"]
    assert seconds <= 120

    prune, _ = _json("prune", "--ipc", "10", "--ratio", "40x", store=store)
    assert prune["metrics"]["rows"] == relabel["metrics"]["rows"] // 40

    student, seconds = _json("train", "--ipc", "10", "--ratio", "40x", store=store)
    assert student["metrics"]["top1"] >= 0.76, student["metrics"]
    assert student["metrics"]["label_rows"] == prune["metrics"]["rows"]
    assert seconds <= 300

    storage, _ = _json("report", "storage", store=store)
    kinds = {row.get("kind") for row in storage["rows"]}
    assert {"images", "labels"} <= kinds
    accuracy, _ = _json("report", "accuracy", store=store)
    assert any(row.get("top1") == student["metrics"]["top1"] for row in accuracy["rows"])
