"""`lpld report storage`: exact bytes per component, the torch.save layout, and --plan."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.relabel import RelabelConfig, relabel
from lpld_cli.reports.storage import (
    plan_row,
    storage_report,
    torch_save_batch_bytes,
    torch_save_layout,
)
from lpld_cli.storage.labels import COMPONENTS, GROUP
from lpld_cli.storage.store import Store
from tests.conftest import make_real_images, needs_fmnist

GIB = 1 << 30


def invoke(*args: str):
    return CliRunner().invoke(app, ["report", "storage", *args])


# ------------------------------------------------------------------------ --plan
def test_plan_imagenet_ipc50_matches_the_paper() -> None:
    row = plan_row("imagenet-1k", 50)
    # 50,000 images in batches of 128: 390 full + 1 of 80 per epoch, 300 epochs.
    assert (row["rows"], row["batches_per_epoch"], row["batch_size"]) == (117300, 391, 128)
    # replay v2's lossless narrow types: batch_id int32, image_index int32 (50,000 images),
    # crop boxes uint8 pixels (224 px), flip, CutMix partner uint8 (< 128), λ float32,
    # CutMix box uint8, float16 logits
    per_row = 4 + 128 * 4 + 128 * 4 * 1 + 128 + 128 * 1 + 4 + 4 * 1 + 128 * 1000 * 2
    assert row["logical_bytes"] == 117300 * per_row == 30_180_351_600
    assert row["components"]["logits"]["logical_bytes"] == 117300 * 128 * 1000 * 2
    assert row["components"]["sampler order"]["logical_bytes"] == 117300 * (128 * 4 + 4)
    assert sum(c["logical_bytes"] for c in row["components"].values()) == row["logical_bytes"]
    assert set(row["components"]) == set(COMPONENTS)
    # Paper Table 24: 28.33 GB of labels at IPC50 (GB = 2^30 bytes there), in the authors'
    # torch.save layout; the compact augmentation arrays take ~0.2 GB less.
    assert abs(row["logical_bytes"] / GIB - 28.11) < 0.01
    assert abs(row["torch_save_bytes"] / GIB - 28.33) < 0.3
    # Sharded: 8 arrays x ⌈117300 / rows per shard⌉ files + metadata, a few thousand at most
    assert 8 * 2 < row["files"] <= 8 * (512 + 1) + 1
    result = invoke("--plan", "imagenet-1k", "--ipc", "50")
    assert result.exit_code == 0, result.output
    assert "28.11" in result.stdout and "117300 rows" in result.stdout
    assert f"{row['files']:,} files" in result.stdout


def test_plan_json_has_exact_integer_bytes() -> None:
    result = invoke("--plan", "tiny-imagenet", "--ipc", "50", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["report"] == "storage" and len(payload["rows"]) == 1
    row = payload["rows"][0]
    assert row["kind"] == "plan" and row["epochs"] == 100 and row["batch_size"] == 64
    assert all(isinstance(c[k], int) for c in row["components"].values()
               for k in ("logical_bytes", "disk_bytes"))
    # Tiny-ImageNet IPC50: 10,000 images, batch 64 -> 157 rows/epoch, 200 classes.
    assert row["components"]["logits"]["logical_bytes"] == 100 * 157 * 64 * 200 * 2
    # Paper Table 24 reports 449 MB of Tiny-ImageNet IPC50 labels.
    assert abs(row["torch_save_bytes"] / (1 << 20) - 449) < 25


def test_plan_options_change_the_projection() -> None:
    base = plan_row("imagenet-1k", 10)
    f32 = plan_row("imagenet-1k", 10, logits_dtype="float32")
    assert f32["components"]["logits"]["logical_bytes"] == 2 * base["components"]["logits"][
        "logical_bytes"]
    short = plan_row("imagenet-1k", 10, epochs=30, batch_size=100)
    assert short["rows"] == 30 * 100 and short["batch_size"] == 100
    assert plan_row("imagenet-1k", 10, image_bytes_per_image=16_000)["image_bytes"] == 16e7


@pytest.mark.parametrize(("args", "text"), [
    (["--plan", "imagenet-1k"], "--plan needs --ipc"),
    (["--plan", "cifar", "--ipc", "5"], "unknown dataset 'cifar'"),
    (["--plan", "mnist", "--ipc", "0"], "--ipc must be at least 1"),
    (["--plan", "mnist", "--ipc", "5", "--logits-dtype", "int4"], "unknown --logits-dtype"),
    (["--plan", "imagefolder", "--ipc", "5"], "needs --classes"),
])
def test_plan_errors(args: list[str], text: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert text in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------- torch.save layout
def test_torch_save_size_depends_on_shapes_only() -> None:
    b, c = 16, 10
    content = [torch.rand(b, 4), torch.rand(b) < 0.5, torch.randperm(b), 0.37, [3, 1, 27, 28],
               torch.randn(b, c).half()]
    buffer = io.BytesIO()
    torch.save(content, buffer)
    assert abs(buffer.tell() - torch_save_batch_bytes(b, c, "float16", 28)) <= 8
    raw = b * 16 + b + b * 8 + b * c * 2
    assert torch_save_batch_bytes(b, c) > raw


def test_torch_save_layout_counts_every_batch_file() -> None:
    layout = torch_save_layout(3, 30, 8, 10, "float16", 28)  # 3 full + 1 of 6 per epoch
    assert layout["files"] == 12
    full, last = torch_save_batch_bytes(8, 10, "float16", 28), torch_save_batch_bytes(
        6, 10, "float16", 28)
    assert layout["bytes"] == 3 * (3 * full + last)
    assert layout["block_bytes"] == 12 * 4096


# -------------------------------------------------------------- a real store
@needs_fmnist
def test_report_of_a_real_store(store_with_teacher: Store, tmp_path: Path) -> None:
    images = make_real_images(store_with_teacher, ipc=3)
    art = relabel(store_with_teacher, RelabelConfig(epochs=4, batch_size=8, rows_per_chunk=4),
                  images)
    rows = {r["artifact"]: r for r in storage_report(store_with_teacher)}
    img, lab = rows[images.id], rows[art.id]
    pngs = list((images.path / "train").rglob("*.png"))
    assert img["kind"] == "images" and img["images"] == 30 == len(pngs)
    assert img["disk_bytes"] == sum(p.stat().st_size for p in pngs)
    assert img["logical_bytes"] == 30 * 28 * 28
    assert lab["logical_bytes"] == art.metrics["logical_bytes"]
    assert lab["disk_bytes"] == art.metrics["disk_bytes"]
    assert sum(c["logical_bytes"] for c in lab["components"].values()) == lab["logical_bytes"]
    group = art.path / GROUP
    disk_parts = sum(c["disk_bytes"] for c in lab["components"].values())
    assert lab["disk_bytes"] == disk_parts + (group / "zarr.json").stat().st_size
    assert lab["components"]["logits"]["logical_bytes"] == 16 * 8 * 10 * 2
    assert lab["components"]["logits"]["disk_bytes"] == sum(
        p.stat().st_size for p in (group / "logits").rglob("*") if p.is_file())
    assert lab["image_bytes"] == img["disk_bytes"]
    assert lab["label_to_image"] == round(lab["disk_bytes"] / img["disk_bytes"], 4)
    # The torch.save layout, measured for real: write every batch file and add them up.
    stored = 0
    for _epoch in range(4):
        for b in range(4):
            n = 8 if b < 3 else 6
            buffer = io.BytesIO()
            torch.save([torch.rand(n, 4), torch.rand(n) < 0.5, torch.randperm(n), 0.5,
                        [28, 28, 28, 28], torch.randn(n, 10).half()], buffer)
            stored += buffer.tell()
    assert lab["torch_save_bytes"] == stored and lab["torch_save_files"] == 16
    # Only the named artifact with --from; human output in GB; JSON of the same rows.
    result = invoke("--from", art.short, "--json", "--store", str(store_with_teacher.root))
    assert result.exit_code == 0, result.output
    (only,) = json.loads(result.stdout)["rows"]
    assert only == json.loads(json.dumps(lab))
    human = invoke("--store", str(store_with_teacher.root))
    assert human.exit_code == 0, human.output
    assert f"labels {art.short}" in human.stdout and f"images {images.short}" in human.stdout
    assert "crop coords" in human.stdout and "GB" in human.stdout
    assert math.isfinite(lab["label_to_image"])


def test_empty_store_says_so(tmp_path: Path) -> None:
    result = invoke("--store", str(tmp_path / "empty"))
    assert result.exit_code == 0, result.output
    assert "no image sets or label stores" in result.stdout
