"""`lpld export`: an image set as a plain ImageFolder + metadata.jsonl, a label store as Zarr +
README; checked with torchvision and zarr-python, not with lpld."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torchvision.datasets import ImageFolder
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.storage.images import save_image_set
from lpld_cli.storage.labels import LabelStore
from lpld_cli.storage.store import Store

runner = CliRunner()
NAMES = ["T-shirt/top", "Trouser", "Pullover"]


@pytest.fixture
def store(tmp_path: Path) -> dict:
    store = Store(tmp_path / "store")
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def images(staging) -> dict:
        save_image_set(staging.path, pixels, labels, NAMES)
        return {}

    img = store.produce("images", {"x": 1}, [], images,
                        selectors={"dataset": "fashion-mnist", "ipc": 2, "method": "lpld"})
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 3, 3)).astype(np.float16)

    def label_store(staging) -> dict:
        ls = LabelStore.create(staging.path, rows=4, batch_size=3, num_classes=3,
                               rows_per_chunk=2, attributes={"images_id": img.id})
        group = zarr.open_group(staging.path / "labels.zarr", mode="r+")
        group["logits"][:] = logits
        group["batch_id"][:] = np.arange(4, dtype=np.int32)
        del ls
        return {}

    lab = store.produce("labels", {"y": 1}, [img.id], label_store,
                        selectors={"dataset": "fashion-mnist", "ipc": 2, "ratio": 1.0})
    return {"store": store, "images": img, "labels": lab, "pixels": pixels, "targets": labels,
            "logits": logits}


def _export(store: Store, ref: str, folder: Path):
    return runner.invoke(app, ["export", ref, str(folder), "--store", str(store.root)])


def test_image_set_is_a_plain_imagefolder(store: dict, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    result = _export(store["store"], store["images"].id[:10], out)
    assert result.exit_code == 0, result.output
    folder = ImageFolder(str(out / "train"))  # torchvision, no lpld
    assert folder.classes == ["00000", "00001", "00002"]
    assert [t for _, t in folder.samples] == store["targets"].tolist()
    for (path, _), want in zip(folder.samples, store["pixels"], strict=True):
        got = torch.from_numpy(np.array(folder.loader(path).convert("L")))
        assert torch.equal(got, want[0])
    lines = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text()
             .splitlines()]
    assert len(lines) == 6
    for line, (path, target) in zip(lines, folder.samples, strict=True):
        assert (out / "train" / line["file_name"]).resolve() == Path(path).resolve()
        assert line["class_id"] == target and line["class_name"] == NAMES[target]
    assert "12x12 px, grey" in (out / "README.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["id"] == store["images"].id


def test_label_store_copy_and_readme(store: dict, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    result = _export(store["store"], store["labels"].id, out)
    assert result.exit_code == 0, result.output
    group = zarr.open_group(out / "labels.zarr", mode="r")
    np.testing.assert_array_equal(group["logits"][:], store["logits"])
    readme = (out / "README.md").read_text()
    for name, array in group.arrays():
        shape = " x ".join(str(n) for n in array.shape)
        assert f"| `{name}` | {array.dtype} | [{shape}]" in readme
    assert store["images"].id in readme


def test_export_refuses_a_non_empty_folder_and_damage(store: dict, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("mine")
    result = _export(store["store"], store["images"].id, out)
    assert result.exit_code == 2 and result.output.startswith(f"Error: {out} already exists")
    assert (out / "x").read_text() == "mine"
    png = next((store["images"].path / "train" / "00000").glob("*.png"))
    png.chmod(0o644)
    png.write_bytes(png.read_bytes()[:-1] + b"\0")
    damaged = _export(store["store"], store["images"].id, tmp_path / "new")
    assert damaged.exit_code != 0 and "is corrupted" in damaged.output
    assert not (tmp_path / "new").exists()
