"""Issue 15's options through the real `lpld` (subprocesses): --hard-epochs and a fixed
--student-temperature in training, the encodings in `report storage --plan`, and the tail
mass `prune --json` reports, each against what it must be by hand."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from safetensors.torch import load_file

from lpld_cli.data.presets import get_preset
from lpld_cli.relabel import RelabelConfig, relabel
from lpld_cli.reports.storage import plan_row
from lpld_cli.storage.labels import COMPONENTS, GROUP
from lpld_cli.storage.store import Store
from tests.conftest import make_real_images, needs_fmnist, run_lpld
from tests.test_prune import make_images, make_labels

# A tiny student, 4 epochs of 3 rows (30 real images, rows of 10): ~4 s a run.
STUDENT = ("--width", "8", "--depth", "2", "--epochs", "4", "--eval-every", "0")


def _json(*args: str, store: Path) -> dict[str, Any]:
    proc = run_lpld(*args, "--json", store=store)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ------------------------------------------------------------------ train options
@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, teacher_store: Store) -> dict[str, Any]:
    """The tiny real teacher, 30 real images and their float16 label store (12 rows);
    `runs` keeps each student trained so far (the baseline is shared)."""
    root = tmp_path_factory.mktemp("encoding-cli")
    shutil.copytree(teacher_store.root / "objects", root / "objects")
    store = Store(root)
    images = make_real_images(store, ipc=3)
    labels = relabel(store, RelabelConfig(epochs=4, batch_size=10, rows_per_chunk=4), images)
    return {"store": store, "labels": labels, "runs": {}}


def _train(pool: dict[str, Any], *extra: str) -> dict[str, Any]:
    """`lpld train --json` on the pool's labels (once per option set) and its history."""
    if extra not in pool["runs"]:
        result = _json("train", "--labels", pool["labels"].id, *STUDENT, *extra,
                       store=pool["store"].root)
        path = Path(result["artifact"]["path"])
        result["history"] = [json.loads(line) for line in
                             (path / "metrics.jsonl").read_text().splitlines()]
        result["weights"] = load_file(path / "weights.safetensors")
        pool["runs"][extra] = result
    return pool["runs"][extra]


def _same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["weights"].keys() == b["weights"].keys() and all(
        bool((a["weights"][k] == b["weights"][k]).all()) for k in a["weights"])


@needs_fmnist
def test_hard_epochs_replace_the_soft_labels_in_the_middle(pool: dict[str, Any]) -> None:
    base = _train(pool)
    hard = _train(pool, "--hard-epochs", "2")
    assert hard["config"]["hard_epochs"] == 2 and "hard_epochs" not in base["config"]
    assert hard["artifact"]["id"] != base["artifact"]["id"]
    # the middle of 4 epochs: ⌊(4 − 2) / 2⌋ = 1, so epochs 2 and 3 (1-based) are hard
    assert [h["hard"] for h in hard["history"]] == [False, True, True, False]
    assert [h["hard"] for h in base["history"]] == [False] * 4
    before, during = hard["history"][0], hard["history"][1:3]
    # the same seed: the soft epoch before the phase is the baseline's, bit for bit ...
    assert before["loss"] == base["history"][0]["loss"]
    # ... and the phase trains on cross-entropy of the classes (about ln 10 for a barely
    # trained 10-class student), not the KL at T = 20 (the soft epochs' ~0.01)
    soft = [h["loss"] for h in base["history"]] + [hard["history"][3]["loss"]]
    assert all(0.5 < h["loss"] < 5 for h in during) and max(soft) < 0.1
    assert hard["history"][3]["loss"] != base["history"][3]["loss"]
    assert not _same_weights(hard, base)
    assert hard["metrics"]["epochs"] == 4 and 0 <= hard["metrics"]["top1"] <= 1


@needs_fmnist
def test_fixed_student_temperature_is_recorded_and_used(pool: dict[str, Any]) -> None:
    t = get_preset("fashion-mnist").temperature
    base = _train(pool)
    fixed = _train(pool, "--student-temperature", "0.5")
    assert fixed["config"]["student_temperature"] == "0.5"
    assert "student_temperature" not in base["config"]  # `same` keeps the old ids
    assert fixed["metrics"]["student_temperature_last"] == 0.5
    assert base["metrics"]["student_temperature_last"] == t
    assert all(h["student_temperature"] == 0.5 and h["temperature"] == t
               for h in fixed["history"])
    assert all(h["student_temperature"] == h["temperature"] == t for h in base["history"])
    assert fixed["history"][0]["loss"] != base["history"][0]["loss"]
    assert not _same_weights(fixed, base)
    # one spelling per number: 0.50 names the same student (served from the store)
    again = _json("train", "--labels", pool["labels"].id, *STUDENT, "--student-temperature",
                  "0.50", store=pool["store"].root)
    assert again["artifact"]["id"] == fixed["artifact"]["id"] and again["artifact"]["cached"]
    # a fixed T_s equal to the teacher's T trains exactly as `same`: the number is the
    # student's temperature and nothing else (only the id differs)
    equal = _train(pool, "--student-temperature", f"{t:g}")
    assert equal["artifact"]["id"] != base["artifact"]["id"]
    assert [h["loss"] for h in equal["history"]] == [h["loss"] for h in base["history"]]
    assert _same_weights(equal, base)


# ------------------------------------------------------------- report storage --plan
def _line(text: str, name: str, nth: int = 0) -> list[str]:
    """The `nth` table line of a component or label array: its name, then its numbers."""
    return [[name, *ln.strip()[len(name):].split()] for ln in text.splitlines()
            if ln.strip().startswith(name + " ")][nth]


@pytest.mark.parametrize(("plan", "encoding", "arrays"), [
    # fashion-mnist: 10 classes, 300 epochs × ⌈100 / 50⌉ rows of 50; 4x keeps 150 rows.
    # top-3: 3 fp16 values + 3 uint8 indices (10 ≤ 256 classes) per slot
    ({"dataset": "fashion-mnist", "ipc": 10, "ratio": 4.0}, ["--topk", "3"],
     {"topk_values": ("float16", 150 * 50 * 3 * 2), "topk_index": ("uint8", 150 * 50 * 3)}),
    # top-5 with a min fill: one more fp16 per slot
    ({"dataset": "fashion-mnist", "ipc": 10}, ["--topk", "5", "--topk-fill", "min"],
     {"topk_values": ("float16", 600 * 50 * 5 * 2), "topk_index": ("uint8", 600 * 50 * 5),
      "topk_fill": ("float16", 600 * 50 * 2)}),
    # fashion-mnist-pairs IPC1: 100 images, 600 rows of 50 x 100 classes; q8: one byte per
    # logit and one fp16 scale per slot; q4: two codes per byte
    ({"dataset": "fashion-mnist-pairs", "ipc": 1}, ["--logits-dtype", "q8"],
     {"logits": ("uint8", 600 * 50 * 100), "logits_scale": ("float16", 600 * 50 * 2)}),
    ({"dataset": "fashion-mnist-pairs", "ipc": 1, "ratio": 40.0}, ["--logits-dtype", "q4"],
     {"logits": ("uint8", 15 * 50 * 50), "logits_scale": ("float16", 15 * 50 * 2)}),
    # more than 256 classes: uint16 indices (imagefolder: 300 images, 3 rows of 128 an epoch)
    ({"dataset": "imagefolder", "ipc": 1, "num_classes": 300, "epochs": 2}, ["--topk", "5"],
     {"topk_values": ("float16", 2 * 3 * 128 * 5 * 2),
      "topk_index": ("uint16", 2 * 3 * 128 * 5 * 2)}),
], ids=["top-3 4x", "top-5 min", "q8 pairs", "q4 pairs 40x", "top-5 300 classes"])
def test_plan_prints_each_component_of_an_encoding(plan: dict[str, Any], encoding: list[str],
                                                   arrays: dict, tmp_path: Path) -> None:
    option = {"ipc": "--ipc", "ratio": "--ratio", "num_classes": "--classes",
              "epochs": "--epochs"}
    args = [x for k, v in plan.items() if k != "dataset" for x in (option[k], f"{v:g}")]
    proc = run_lpld("report", "storage", "--plan", plan["dataset"], *args, *encoding,
                    "--unit", "B", store=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    # each label array on its own line under `logits`: exact bytes, then its stored dtype
    logits = _line(table, "logits")
    assert logits[1] == logits[2] == f"{sum(b for _, b in arrays.values()):,}"
    for name, (dtype, logical) in arrays.items():
        line = _line(table, name, nth=1 if name == "logits" else 0)
        assert line[1] == f"{logical:,}" and line[3] == dtype, line
    # the encoding changes the label arrays only: every other component is float16's
    plain = plan_row(**plan)
    for name in COMPONENTS:
        if name != "logits":
            assert _line(table, name)[1] == f"{plain['components'][name]['logical_bytes']:,}"
    total = sum(int(_line(table, n)[1].replace(",", "")) for n in COMPONENTS)
    assert _line(table, "total")[1] == f"{total:,}"


# ------------------------------------------------------------------ prune --json
def _hand_tail_mass(parent: Path, child: Path, k: int, t: float) -> float:
    """Mean over the kept rows' filled slots of 1 − Σ top-k softmax(z / T), read from the
    parent's float16 logits with zarr (not lpld's reader)."""
    src, kept = zarr.open_group(str(parent / GROUP), mode="r"), zarr.open_group(
        str(child / GROUP), mode="r")
    rows = np.isin(src["batch_id"][:], kept["batch_id"][:])
    z = src["logits"][:][rows].astype(np.float64) / t
    valid = src["image_index"][:][rows] >= 0
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tail = 1 - np.sort(p, -1)[..., ::-1][..., :k].sum(-1)
    return float(tail[valid].mean())


def test_prune_json_reports_the_tail_mass_topk_drops(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    parent = make_labels(store, make_images(store))  # 3 classes, float16, 60 rows
    t0 = get_preset("fashion-mnist").temperature
    args = ("prune", "--from", parent.id, "--ratio", "2x", "--topk", "2")
    first = _json(*args, store=store.root)
    child = Path(first["artifact"]["path"])
    m = first["metrics"]
    assert m["encoding"] == "top-2" and m["rows"] == 30  # ⌊60 / 2⌋ of the 40 complete
    assert m["tail_temperatures"] == {"tail_mass_t0": t0, "tail_mass_tmin": 2.0}
    for key, t in m["tail_temperatures"].items():
        assert math.isclose(m[key], _hand_tail_mass(parent.path, child, 2, t), rel_tol=1e-9)
    assert m["tail_mass_t0"] > m["tail_mass_tmin"] > 0  # a hotter T spreads more mass out
    # other temperatures: the same store (cached), its tail mass measured at those Ts
    other = _json(*args, "--temperature", "4", "--temperature-min", "1", store=store.root)
    assert other["artifact"]["id"] == first["artifact"]["id"] and other["artifact"]["cached"]
    m = other["metrics"]
    assert m["tail_temperatures"] == {"tail_mass_t0": 4.0, "tail_mass_tmin": 1.0}
    for key, t in m["tail_temperatures"].items():
        assert math.isclose(m[key], _hand_tail_mass(parent.path, child, 2, t), rel_tol=1e-9)
    # the first request again (answered from the store's record): T₀ again, and the human
    # line names the temperatures it measured at
    human = run_lpld(*args, store=store.root)
    assert human.returncode == 0, human.stderr
    expect = (f"top-k drops {100 * first['metrics']['tail_mass_t0']:.2f}% of the mass at "
              f"T₀ = {t0:g}, {100 * first['metrics']['tail_mass_tmin']:.2f}% at T_min = 2")
    assert expect in human.stdout, human.stdout
    # report storage of the pruned store: 2 fp16 values + 2 uint8 indices per slot
    (row,) = _json("report", "storage", "--from", first["artifact"]["id"],
                   store=store.root)["rows"]
    arrays = row["components"]["logits"]["arrays"]
    assert {n: (a["dtype"], a["logical_bytes"]) for n, a in arrays.items()} == {
        "topk_values": ("float16", 30 * 4 * 2 * 2), "topk_index": ("uint8", 30 * 4 * 2)}
    for name, a in arrays.items():
        assert a["disk_bytes"] == sum(p.stat().st_size for p in
                                      (child / GROUP / name).rglob("*") if p.is_file())
